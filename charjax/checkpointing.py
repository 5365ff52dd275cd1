"""Orbax checkpoints of a run: the best-validation-loss state and the latest state.

One `CheckpointManager` per run, in `<workdir>/checkpoints/<epoch>`, keeps both: its
preservation policy holds the newest checkpoint and the newest one saved as an
improvement (`improved_epoch` in its metrics), i.e. the epoch of lowest validation loss
under the study's rule (a strictly lower loss replaces the best). The metrics are written
beside each checkpoint, so a resumed run goes on keeping the same two. Runs saved by charjax
before this layout have `checkpoints/best` and `checkpoints/latest`; they still load for
prediction and evaluation (`legacy_dir`).

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
run killed while saving leaves the previous checkpoint intact (the unfinished temporary
folder is removed when the manager next opens the directory). Checkpoints are arrays and
JSON metadata: restoring one never executes code.
"""

from __future__ import annotations

import errno
import logging
import pathlib
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointError(RuntimeError):
  """A checkpoint could not be written, or is damaged, or does not fit its model."""


def _improved_epoch(metrics) -> float:
  return float(metrics.get('improved_epoch', 0))


def manager(directory: pathlib.Path, *, read_only: bool = False) -> ocp.CheckpointManager:
  """A synchronous manager of a run's checkpoints in `directory`.

  The writer (`read_only=False`, the training run holding the workdir's lock) keeps the
  newest checkpoint and the best one (see the module docstring), creates the folder and
  removes leftovers of its own killed saves. Readers (`read_only=True`: predict, report,
  evaluate) change nothing on disk: they neither create folders nor delete the temporary
  folders of a save that another process has in progress.
  """
  directory = pathlib.Path(directory).absolute()
  if read_only and not directory.is_dir():
    raise CheckpointError(f'No checkpoint folder {directory}.')
  # `best_fn` makes Orbax write each checkpoint's metrics to disk and read them back when
  # a resumed run reopens the folder; without it they live only in the process that saved
  # them, and the first save after a resume would delete the best checkpoint. Checkpoints
  # without metrics on disk (saved by charjax before it wrote them) are kept, never deleted.
  keep = None if read_only else policies.AnyPreservationPolicy([
      policies.LatestN(n=1),
      policies.BestN(get_metric_fn=_improved_epoch, n=1,
                     keep_checkpoints_without_metrics=True)])
  return ocp.CheckpointManager(
      directory, item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(
          preservation_policy=keep, best_fn=None if read_only else _improved_epoch,
          best_mode='max', save_interval_steps=0 if read_only else 1,
          create=not read_only, read_only=read_only, enable_async_checkpointing=False,
          cleanup_tmp_directories=not read_only))


def legacy_dir(workdir: pathlib.Path, which: str) -> pathlib.Path | None:
  """`<workdir>/checkpoints/<which>` ('best' or 'latest') of a run saved in the layout of
  two managers, if it has one."""
  path = pathlib.Path(workdir) / 'checkpoints' / which
  return path if path.is_dir() else None


def _messages(err: BaseException):
  while err is not None:
    yield err
    err = err.__cause__ or err.__context__


def _disk_full(err: BaseException) -> bool:
  # OSError from Python's own writes; tensorstore reports ENOSPC as a ValueError whose
  # message starts with its status code.
  return any((isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
             or 'RESOURCE_EXHAUSTED' in str(e) or 'No space left' in str(e)
             or 'Disk quota exceeded' in str(e) for e in _messages(err))


def _not_writable(err: BaseException) -> bool:
  return any((isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS))
             or 'PERMISSION_DENIED' in str(e) or 'Read-only file system' in str(e)
             for e in _messages(err))


_CHECKPOINT_IO = ('orbax', 'tensorstore', 'zarr', 'OCDBT')


def _orbax_leftover(record: logging.LogRecord) -> bool:
  """Whether `record` is asyncio's report of a failed checkpoint read nobody awaited.

  The future it names is Orbax's or asyncio's own wrapper (`_wrap_awaitable`), so the
  exception's text, where tensorstore names its driver, is read too.
  """
  message = record.getMessage()
  if 'never retrieved' not in message:
    return False
  error = record.exc_info[1] if record.exc_info else None
  text = message + (f' {type(error).__name__}: {error}' if error is not None else '')
  return any(word in text for word in _CHECKPOINT_IO)


def _drop_async_leftovers() -> None:
  """Keeps the aftermath of a failed Orbax read off stderr.

  When one of Orbax's concurrent tensorstore reads fails, the others fail too and report
  from their threads, sometimes after the event loop is gone: 'Event loop is closed'
  (through `sys.unraisablehook`) and asyncio's 'Task exception was never retrieved'. The
  `CheckpointError` raised says what happened; these say nothing more. Installed before
  each restore, it filters exactly those two kinds and passes everything else on.
  """
  asyncio_logger = logging.getLogger('asyncio')
  if not any(getattr(f, '__name__', '') == '_orbax_leftover' for f in asyncio_logger.filters):
    asyncio_logger.addFilter(lambda record: not _orbax_leftover(record))
    asyncio_logger.filters[-1].__name__ = '_orbax_leftover'
  previous = sys.unraisablehook
  if getattr(previous, '_charjax_filter', False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and 'Event loop is closed' in str(unraisable.exc_value)):
      previous(unraisable)
  hook._charjax_filter = True
  sys.unraisablehook = hook


def save(mngr: ocp.CheckpointManager, epoch: int, state, metrics: dict | None = None) -> None:
  """Saves `state` (any pytree) under `epoch`, with optional scalar metrics.

  An epoch already saved is left as it is (a resumed run recomputes the same state).
  A full disk or an unwritable folder raises `CheckpointError`; the checkpoints saved
  before stay usable (Orbax writes into a temporary folder and renames it when complete).
  """
  if epoch in mngr.all_steps():
    return
  try:
    mngr.save(epoch, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
    mngr.wait_until_finished()
  except Exception as e:  # Orbax wraps I/O errors in its own types.
    _drop_async_leftovers()
    if _disk_full(e):
      why = 'No space left on the disk of'
    elif _not_writable(e):
      why = 'No permission to write (or a read-only file system) in'
    else:
      why = f'{type(e).__name__}: {str(e)[:200]} while writing to'
    raise CheckpointError(
        f'{why} {mngr.directory} while saving epoch {epoch}; the checkpoints saved before are '
        'intact. Fix that and rerun the same command to resume.') from e


def _shapes(tree):
  return jax.tree.map(
      lambda x: (tuple(np.shape(x)), str(getattr(x, 'dtype', type(x).__name__))), tree)


def _path(keys) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in keys)


def _flat(shapes) -> dict:
  """{'params/Dense_0/kernel': (shape, dtype)} of a tree of (shape, dtype) pairs."""
  is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str)
  return {_path(k): v for k, v in jax.tree_util.tree_leaves_with_path(shapes, is_leaf=is_pair)}


def restore(mngr: ocp.CheckpointManager, target, epoch: int | None = None):
  """Restores the checkpoint at `epoch` (default: the newest) into the structure of `target`.

  Raises `CheckpointError` when there is none; when its arrays do not match `target` (a
  checkpoint of another model or config); when its files are damaged (unreadable,
  truncated, missing); or when it holds NaN or infinite values.
  """
  epoch = mngr.latest_step() if epoch is None else epoch
  if epoch is None:
    raise CheckpointError(f'No checkpoint in {mngr.directory}.')
  kept = mngr.all_steps()
  if epoch not in kept:
    raise CheckpointError(f'{mngr.directory} holds no checkpoint of epoch {epoch} (it holds '
                          f'epochs {", ".join(map(str, kept)) or "none"}).')
  where = f'The checkpoint in {mngr.directory} (epoch {epoch})'
  _drop_async_leftovers()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    stored = mngr.item_metadata(epoch)
    stored_shapes = jax.tree.map(lambda m: (tuple(getattr(m, 'shape', ())), ''), stored)
  except Exception as e:  # missing or unreadable metadata files
    _drop_async_leftovers()
    raise CheckpointError(f'{where} is damaged: its metadata cannot be read '
                          f'({type(e).__name__}: {str(e)[:200]}).') from None
  wanted = _shapes(abstract)
  flat_stored = _flat(stored_shapes)
  flat_wanted = {k: (shape, '') for k, (shape, _) in _flat(wanted).items()}
  if flat_stored != flat_wanted:
    differ = sorted(k for k in set(flat_stored) | set(flat_wanted)
                    if flat_stored.get(k) != flat_wanted.get(k))
    raise CheckpointError(f'{where} does not fit this model and config (arrays that differ: '
                          f'{", ".join(differ[:4])}): refused.')
  try:
    restored = mngr.restore(epoch, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # tensorstore errors for truncated, missing or corrupt files
    _drop_async_leftovers()
    raise CheckpointError(f'{where} is damaged: its arrays cannot be read '
                          f'({type(e).__name__}: {str(e).splitlines()[0][:200]}).') from None
  if _shapes(restored) != wanted:
    raise CheckpointError(f'{where} has arrays of other shapes than this model and config: '
                          'refused.')
  bad = [_path(k) for k, x in jax.tree_util.tree_leaves_with_path(restored)
         if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.all(np.isfinite(x))]
  if bad:
    raise CheckpointError(f'{where} holds NaN or infinite values (in {", ".join(bad[:4])}): '
                          'it is damaged, refused.')
  return restored
