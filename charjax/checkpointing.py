"""Orbax checkpoints of a run: the best-validation-loss state and the latest state.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
run killed while saving leaves the previous checkpoint intact (the unfinished temporary
folder is removed when the manager next opens the directory). Checkpoints are arrays and
JSON metadata: restoring one never executes code.
"""

from __future__ import annotations

import errno
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint could not be written, or does not fit the model it is restored into."""


def manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  """A synchronous manager that keeps one checkpoint (the newest saved) in `directory`."""
  return ocp.CheckpointManager(
      directory.absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True))


def _disk_full(err: BaseException) -> bool:
  while err is not None:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    err = err.__cause__ or err.__context__
  return False


def save(mngr: ocp.CheckpointManager, epoch: int, state, metrics: dict | None = None) -> None:
  """Saves `state` (any pytree) under `epoch`, with optional scalar metrics.

  An epoch already saved is left as it is (a resumed run recomputes the same state).
  A full disk raises `CheckpointError`; the checkpoints saved before stay usable.
  """
  if epoch in mngr.all_steps():
    return
  try:
    mngr.save(epoch, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
    mngr.wait_until_finished()
  except Exception as e:  # Orbax wraps I/O errors in its own types.
    if _disk_full(e):
      raise CheckpointError(
          f'No space left on the disk of {mngr.directory} while saving epoch {epoch}; '
          'the checkpoints saved before are intact. Free some space and rerun the same '
          'command to resume.') from e
    raise


def restore(mngr: ocp.CheckpointManager, target, epoch: int | None = None):
  """Restores the checkpoint at `epoch` (default: the newest) into the structure of `target`.

  Raises `CheckpointError` when there is none, or when its arrays do not match `target`
  (a checkpoint of another model or config).
  """
  epoch = mngr.latest_step() if epoch is None else epoch
  if epoch is None:
    raise CheckpointError(f'No checkpoint in {mngr.directory}.')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    restored = mngr.restore(epoch, args=ocp.args.StandardRestore(abstract))
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f'The checkpoint in {mngr.directory} (epoch {epoch}) does not fit this model and '
        f'config: {str(e)[:300]}') from e
  shapes = lambda tree: jax.tree.map(
      lambda x: (np.shape(x), str(getattr(x, 'dtype', type(x).__name__))), tree)
  if shapes(restored) != shapes(abstract):
    raise CheckpointError(f'The checkpoint in {mngr.directory} (epoch {epoch}) has arrays of '
                          'other shapes than this model and config: refused.')
  return restored
