"""A training run's directory: who may write it, what it holds, and which data it is bound to.

`charjax.train` writes a run into one workdir. This module keeps the bookkeeping that
makes that safe, apart from the training loop:

- `open_run`: locks the workdir and checks it against the config (new, resumed or
  `--restart`ed); `bind_run`: checks the data against the run's record and writes
  `config.json`, `splits.json` and `data.json`.
- `MetricsLog`: `metrics.jsonl`, one line per epoch; a resumed run keeps the lines up to
  its checkpoint and knows the best epoch so far.
- `StopSignals`: SIGTERM and Ctrl-C finish the epoch, save, and stop (`TrainingInterrupted`).
- `results` / `write_results`: what `results.json` holds.

- `RunLock`: one writer per workdir. An exclusive `flock` on `<workdir>/.charjax.lock`,
  held for the run's life; the kernel drops it when the process ends, however it ends, so
  a lock left by a killed run is never mistaken for a live one.
- `check_workdir`: a workdir is either empty, or a charjax run (it has `config.json`);
  anything else is refused, so another tool's files are never overwritten.
- `check_same_config` / `clear_run`: a rerun resumes only the same config; `--restart`
  deletes only the files charjax writes.
- `check_data` / `bind_data`: a run records a fingerprint of its examples (names, labels
  and pixels) and of its splits in `data.json`; resuming on other data is refused, naming
  what changed, so that images trained on can never move into the test split.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import signal
import threading
import time

from absl import logging
import jax
import numpy as np

from charjax import checkpointing
from charjax import configuration
from charjax.data import registry
from charjax.runtime import distributed

LOCK_FILE = '.charjax.lock'
DATA_FILE = 'data.json'
# Every file and folder `charjax.train` writes into a workdir (all that `--restart` deletes).
RUN_FILES = ('config.json', 'splits.json', DATA_FILE, 'metrics.jsonl', 'results.json')
CHECKPOINTS = 'checkpoints'     # <epoch>/ folders (and best/, latest/ in older runs)
TENSORBOARD = 'tensorboard'     # events.out.tfevents.* files
# Fields that say where data lives or on how many devices a run computes, not what it
# computes: they may change between resumes.
LOCATION_FIELDS = ('data_dir', 'tfds_dir', 'num_devices')


class RunDirError(configuration.ConfigError):
  """A workdir cannot be used for this run (locked, foreign, another config, other data)."""


class RunLock:
  """Holds `<workdir>/.charjax.lock` exclusively, or raises `RunDirError` naming the holder."""

  def __init__(self, workdir: pathlib.Path):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._fd = None

  def __enter__(self):
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'another process'
      os.close(fd)
      raise RunDirError(
          f'{self.path.parent} is in use by another charjax training ({holder}). Wait for it '
          'to finish, or use another --workdir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on {os.uname().nodename}\n'.encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc):
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      os.close(self._fd)  # closing releases the lock; the empty file stays (harmless)
      self._fd = None


def check_workdir(workdir: pathlib.Path) -> None:
  """Refuses a workdir that is neither empty nor a charjax run (no `config.json`)."""
  if (workdir / 'config.json').exists():
    return
  foreign = sorted(p.name for p in workdir.iterdir() if p.name != LOCK_FILE)
  if foreign:
    raise RunDirError(
        f'{workdir} is not empty and is not a charjax run (no config.json; it holds '
        f'{", ".join(foreign[:5])}{", ..." if len(foreign) > 5 else ""}). charjax does not '
        'write into folders of other tools: choose an empty or new --workdir.')


def clear_run(workdir: pathlib.Path) -> None:
  """Deletes what charjax wrote into `workdir` (`RUN_FILES`, checkpoints, TensorBoard
  events), nothing else."""
  checkpoints = workdir / CHECKPOINTS
  if checkpoints.is_dir():
    for path in checkpoints.iterdir():
      if path.is_dir() and (path.name.isdigit() or path.name in ('best', 'latest')
                            or 'orbax-checkpoint-tmp' in path.name):
        shutil.rmtree(path, ignore_errors=True)
  events = workdir / TENSORBOARD
  if events.is_dir():
    for path in events.glob('events.out.tfevents.*'):
      path.unlink(missing_ok=True)
  for folder in (checkpoints, events):
    try:
      folder.rmdir()  # only if nothing else is in it
    except OSError:
      pass
  for name in RUN_FILES:
    (workdir / name).unlink(missing_ok=True)


def check_same_config(workdir: pathlib.Path, config) -> None:
  """Refuses to resume a run of another config in `workdir` (naming the fields that differ)."""
  path = workdir / 'config.json'
  if not path.exists():
    return
  try:
    old = configuration.from_saved(json.loads(path.read_text()))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RunDirError(f'{path} is not a readable charjax config ({e}). Use another --workdir, '
                      'or pass --restart to start over.') from None
  old, new = _flatten(old), _flatten(json.loads(config.to_json_best_effort()))
  differ = sorted(k for k in set(old) | set(new)
                  if k not in LOCATION_FIELDS and old.get(k) != new.get(k))
  if differ:
    raise RunDirError(
        f'{workdir} holds a run with another config (differs in {", ".join(differ)}). '
        'Use another --workdir, or pass --restart to delete that run and start over.')


def _flatten(tree: dict, prefix: str = '') -> dict:
  """{'optimizer.learning_rate': 0.001, ...}: sub-configs' fields by dotted name."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def fingerprint(file_names, labels, images, splits: dict[str, np.ndarray]) -> dict:
  """What `data.json` records: a digest of every example and of the split it falls in."""
  digests = []
  for name, label, image in zip(file_names, labels, images):
    h = hashlib.sha256(str(name).encode() + b'\0' + str(int(label)).encode() + b'\0')
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    digests.append(h.hexdigest()[:16])
  split_of = {}
  for split, idx in splits.items():
    for i in idx:
      split_of[str(file_names[i])] = split
  whole = hashlib.sha256('\n'.join(f'{n} {d} {split_of.get(str(n), "-")}' for n, d in
                                   zip(file_names, digests)).encode()).hexdigest()
  return {'sha256': whole, 'examples': len(digests),
          'files': {str(n): [d, split_of.get(str(n), '-')] for n, d in zip(file_names, digests)}}


def _describe_change(old: dict, new: dict) -> str:
  gone = sorted(set(old) - set(new))
  added = sorted(set(new) - set(old))
  changed = sorted(n for n in set(old) & set(new) if old[n][0] != new[n][0])
  moved = sorted(n for n in set(old) & set(new) if old[n][1] != new[n][1])
  parts = []
  for what, names in (('no longer in the data', gone), ('new', added),
                      ('with other pixels or label', changed), ('in another split', moved)):
    if names:
      parts.append(f'{len(names)} images {what} (e.g. {", ".join(names[:3])})')
  return '; '.join(parts) or 'the fingerprint differs'


def check_data(workdir: pathlib.Path, record: dict) -> None:
  """Refuses to go on with a run whose recorded data differ from `record` (`fingerprint`)."""
  path = workdir / DATA_FILE
  if not path.exists():
    return
  old = json.loads(path.read_text())
  if old['sha256'] != record['sha256']:
    raise RunDirError(
        f'The data changed since the run in {workdir} started: '
        f'{_describe_change(old["files"], record["files"])}. Resuming would mix two datasets '
        '(images trained on could now be test images). Restore the original data, use '
        'another --workdir, or pass --restart to start over on the new data.')


def check_splits(workdir: pathlib.Path, splits: dict[str, list[str]]) -> None:
  """For runs saved before `data.json` existed: refuses if `splits.json` differs."""
  path = workdir / 'splits.json'
  if (workdir / DATA_FILE).exists() or not path.exists():
    return
  old = json.loads(path.read_text())
  if old != splits:
    moved = sum(len(set(old.get(k, ())) ^ set(v)) for k, v in splits.items())
    raise RunDirError(
        f'The data or splits changed since the run in {workdir} started ({moved} file names '
        'differ from its splits.json). Restore the original data, use another --workdir, or '
        'pass --restart to start over.')


def bind_data(workdir: pathlib.Path, record: dict) -> None:
  """Writes `data.json` (atomically) unless it is already there."""
  path = workdir / DATA_FILE
  if path.exists():
    return
  partial = path.with_suffix('.json.tmp')
  partial.write_text(json.dumps(record))
  os.replace(partial, path)


@contextlib.contextmanager
def open_run(workdir, config, *, restart: bool = False):
  """The workdir of a new, resumed or restarted run of `config`, locked for the block.

  A workdir holding a run of another config is refused unless `restart` (which deletes
  only charjax's files); a folder of another tool is refused. In a multi-process run,
  process 0 holds the lock and writes the files; every process checks the same ones.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  writer = distributed.is_writer()
  with RunLock(workdir) if writer else contextlib.nullcontext():
    if not (workdir / 'config.json').exists():
      check_workdir(workdir)  # empty, or another tool's files: refused
    elif restart:
      if writer:
        clear_run(workdir)
    else:
      check_same_config(workdir, config)
      if any(checkpointing.legacy_dir(workdir, which) for which in ('best', 'latest')):
        raise RunDirError(
            f'{workdir} holds a run saved by an older charjax (checkpoints/best and '
            'checkpoints/latest): it loads for prediction and evaluation, but training it '
            'further needs --restart.')
    yield workdir


def bind_run(workdir: pathlib.Path, config, examples, data, named_splits: dict) -> None:
  """Checks that the data are the run's own, then records config, splits and data."""
  record = fingerprint(examples.file_names, examples.labels, examples.images, data.indices)
  check_data(workdir, record)
  check_splits(workdir, named_splits)
  if distributed.is_writer():
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
    (workdir / 'splits.json').write_text(json.dumps(named_splits, indent=0))
    bind_data(workdir, record)


class MetricsLog:
  """`metrics.jsonl` of a run that resumes after epoch `resumed_from` (0: a new run).

  Lines past `resumed_from` (epochs run after the last checkpoint, or a line cut by a
  kill) are dropped. `best_epoch` and `best_val_loss` follow the study's rule: a strictly
  lower validation loss makes a new best. With `keep_last` (a run trained on its validation
  split too, which then selects nothing) every epoch is the new best: the last one is kept.
  """

  def __init__(self, workdir: pathlib.Path, resumed_from: int, *, keep_last: bool = False):
    self.keep_last = keep_last
    self.records = read_metrics(workdir / 'metrics.jsonl', resumed_from)
    best = [r for r in self.records if r['best']]
    self.best_val_loss = best[-1]['val_loss'] if best else float('inf')
    self.best_epoch = best[-1]['epoch'] if best else 0
    self._file = open(workdir / 'metrics.jsonl' if distributed.is_writer() else os.devnull,
                      'w')
    for record in self.records:
      self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def improves(self, val_loss: float) -> bool:
    return self.keep_last or val_loss < self.best_val_loss

  def append(self, record: dict) -> None:
    if record['best']:
      self.best_val_loss, self.best_epoch = record['val_loss'], record['epoch']
    self.records.append(record)
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._file.close()


def read_metrics(path: pathlib.Path, upto: int) -> list[dict]:
  """The records of epochs 1..`upto` in `path` (none if it does not exist)."""
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut by a kill
      break
    if record['epoch'] <= upto:
      records.append(record)
  return records


class TrainingInterrupted(RuntimeError):
  """SIGTERM or Ctrl-C arrived: the latest checkpoint was saved and the run stopped."""

  def __init__(self, message: str, signum: signal.Signals):
    super().__init__(message)
    self.signum = signum


class StopSignals:
  """Within the block, SIGTERM and SIGINT set `requested` instead of killing the process."""

  def __init__(self, workdir: pathlib.Path):
    self.requested = None
    self._workdir = workdir
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum)
    logging.warning('%s received: finishing this epoch, saving a checkpoint, then stopping '
                    '(send it again to stop at once).', self.requested.name)

  def stop_if_requested(self, epoch: int, last_epoch: int, stopping) -> None:
    """Raises `TrainingInterrupted` if `stopping` (a signal read once) and epochs remain."""
    if stopping and epoch < last_epoch:
      raise TrainingInterrupted(
          f'{stopping.name}: stopped after epoch {epoch} with its checkpoint saved in '
          f'{self._workdir / CHECKPOINTS}; rerun the same command to resume.', stopping)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts [true, predicted]."""
  return np.bincount(labels * num_classes + predictions,
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def subset_accuracy(confusion: np.ndarray, class_names: list[str],
                    subsets: dict[str, list[str]]) -> dict[str, float]:
  """Accuracy on the images of each named subset of the run's classes, the decision still
  taken among all of them: how a network trained on NHCD's 58 classes does on its numerals,
  vowels and consonants. Subsets not wholly among `class_names`, or equal to all of them,
  are left out; so is a subset with no images."""
  index = {name: i for i, name in enumerate(class_names)}
  accuracy = {}
  for name, members in subsets.items():
    if len(members) >= len(class_names) or not all(m in index for m in members):
      continue
    rows = [index[m] for m in members]
    images = confusion[rows].sum()
    if images:
      accuracy[name] = float(confusion[rows, rows].sum() / images)
  return accuracy


def device_info(mesh) -> dict:
  device = mesh.devices.flat[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'device_count': jax.device_count(), 'mesh_devices': int(mesh.size),
          'process_count': jax.process_count(), 'jax_version': jax.__version__}


def results(config, log: MetricsLog, test: dict, predictions: np.ndarray, data, *,
            resumed_from: int, started: float, mesh) -> dict:
  """What `results.json` holds: test figures, per-class accuracy, confusion, timings."""
  num_classes = len(data.class_names)
  confusion = confusion_matrix(data.labels['test'], predictions, num_classes)
  per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
  throughput = [r['images_per_s'] for r in log.records]
  return {
      'dataset': config.dataset, 'subset': config.subset, 'model': config.model.name,
      'test_accuracy': test['accuracy'], 'test_loss': test['loss'],
      'best_epoch': log.best_epoch, 'best_val_loss': log.best_val_loss,
      'model_selection': ('the last epoch (validation trained on)' if log.keep_last
                          else 'the epoch of lowest validation loss'),
      'epochs_run': config.num_epochs,
      'split_sizes': {name: int(len(y)) for name, y in data.labels.items()},
      'test_protocol': data.test_protocol, 'test_protocol_detail': data.test_protocol_detail,
      'class_names': data.class_names,
      'per_class_accuracy': dict(zip(data.class_names, per_class.tolist())),
      'confusion_matrix': confusion.tolist(),
      'per_subset_accuracy': subset_accuracy(confusion, data.class_names,
                                             registry.get(config.dataset).subsets),
      'train_images_per_s': float(np.median(throughput[1:] or throughput)),
      'train_seconds': float(sum(r['epoch_seconds'] for r in log.records)),
      'resumed_from_epoch': resumed_from,
      'wall_clock_s': time.time() - started, 'device': device_info(mesh),
  }


def write_results(workdir: pathlib.Path, record: dict) -> None:
  if distributed.is_writer():
    (workdir / 'results.json').write_text(json.dumps(record, indent=2, ensure_ascii=False))
