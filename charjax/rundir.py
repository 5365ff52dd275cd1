"""A training run's directory: who may write it, what it holds, and which data it is bound to.

`charjax.train` writes a run into one workdir. This module keeps the bookkeeping that
makes that safe, apart from the training loop:

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

import fcntl
import hashlib
import json
import os
import pathlib
import shutil

import numpy as np

from charjax import configuration

LOCK_FILE = '.charjax.lock'
DATA_FILE = 'data.json'
# Every file and folder `charjax.train` writes into a workdir (all that `--restart` deletes).
RUN_FILES = ('config.json', 'splits.json', DATA_FILE, 'metrics.jsonl', 'results.json')
CHECKPOINT_DIRS = ('checkpoints/best', 'checkpoints/latest')
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
  """Deletes what charjax wrote into `workdir` (`RUN_FILES`, `CHECKPOINT_DIRS`), nothing else."""
  for name in CHECKPOINT_DIRS:
    shutil.rmtree(workdir / name, ignore_errors=True)
  try:
    (workdir / 'checkpoints').rmdir()  # only if nothing else is in it
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
  new = json.loads(config.to_json_best_effort())
  differ = sorted(k for k in set(old) | set(new)
                  if k not in LOCATION_FIELDS and old.get(k) != new.get(k))
  if differ:
    raise RunDirError(
        f'{workdir} holds a run with another config (differs in {", ".join(differ)}). '
        'Use another --workdir, or pass --restart to delete that run and start over.')


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
