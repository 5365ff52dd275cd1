"""A run's directory: one writer, readers that change nothing, no foreign files touched,
and a run bound to its data."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from charjax.data import input_pipeline
from charjax import rundir
from charjax import runs
from charjax import train
from tests.conftest import nhcd_files
from tests.conftest import write_archive
from tests.test_train import REPO
from tests.test_train import tiny_config


def _snapshot(folder):
  """{relative path: (size, mtime)} of everything under `folder`."""
  return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(folder.rglob('*'))}


def test_a_second_writer_is_refused_while_the_first_holds_the_workdir(reference_run, tmp_path):
  config, _ = reference_run
  with rundir.RunLock(tmp_path):
    with pytest.raises(rundir.RunDirError, match=f'in use by another charjax training .pid {os.getpid()}'):
      train.train_and_evaluate(config.copy_and_resolve_references(), str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.LOCK_FILE]


def test_a_lock_left_by_a_killed_process_is_not_held(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time, pathlib; from charjax import rundir; '
       f'rundir.RunLock(pathlib.Path({str(tmp_path)!r})).__enter__(); print("held", flush=True); '
       'time.sleep(60)'], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(rundir.RunDirError, match='in use'):
    rundir.RunLock(tmp_path).__enter__()
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert (tmp_path / rundir.LOCK_FILE).exists()  # the file stays, the lock does not
  with rundir.RunLock(tmp_path):
    pass


@pytest.mark.slow
def test_two_trainings_in_one_workdir_the_second_is_refused(reference_run, tmp_path):
  from tests.test_resilience import _cli_args
  config, _ = reference_run
  cmd = _cli_args(config, tmp_path)
  cmd[cmd.index('--config.num_epochs=5')] = '--config.num_epochs=200'
  first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / 'metrics.jsonl').exists():
      time.sleep(0.05)
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stderr[-2000:]
    assert 'charjax: ' in second.stderr and 'in use by another charjax training' in second.stderr
    assert 'Traceback' not in second.stderr
    assert first.poll() is None  # the first run goes on
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()


def test_readers_change_nothing_in_a_run_being_written(reference_run, tmp_path):
  """predict / report / evaluate open the best checkpoint read-only: another process's
  save in progress (a temporary folder) is left alone, nothing is created or deleted."""
  _, workdir = reference_run
  live = tmp_path / 'live'
  shutil.copytree(workdir, live)
  in_progress = live / 'checkpoints' / '9.orbax-checkpoint-tmp-1234'
  in_progress.mkdir()
  (in_progress / 'partial').write_bytes(b'being written')
  before = _snapshot(live)
  for _ in range(2):
    runs.restore_best(live)
  assert _snapshot(live) == before


def test_a_folder_of_another_tool_is_refused_and_left_as_it_is(reference_run, tmp_path):
  config, _ = reference_run
  (tmp_path / 'results.json').write_text('{"theirs": 1}')
  (tmp_path / 'metrics.jsonl').write_text('{"theirs": 1}\n')
  before = _snapshot(tmp_path)
  for restart in (False, True):
    with pytest.raises(rundir.RunDirError, match='not a charjax run'):
      train.train_and_evaluate(config.copy_and_resolve_references(), str(tmp_path),
                               restart=restart)
  after = _snapshot(tmp_path)
  after.pop(rundir.LOCK_FILE)
  assert after == before


def test_restart_deletes_only_what_charjax_wrote(reference_run, tmp_path):
  config, workdir = reference_run
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  (run / 'notes.txt').write_text('mine')
  (run / 'checkpoints' / 'mine').mkdir()
  (run / 'checkpoints' / 'mine' / 'keep.txt').write_text('mine too')
  rundir.clear_run(run)
  left = sorted(str(p.relative_to(run)) for p in run.rglob('*'))
  assert left == [rundir.LOCK_FILE, 'checkpoints', 'checkpoints/mine', 'checkpoints/mine/keep.txt',
                  'notes.txt']


def test_model_errors_write_nothing(reference_run, tmp_path):
  """config.json is written only once the config and model are known to be valid, so the
  corrected command is not refused as 'another config'."""
  config, _ = reference_run
  bad = config.copy_and_resolve_references()
  bad.model.name = 'Bogus'
  with pytest.raises(train.configuration.ConfigError, match="model.name='Bogus'"):
    train.train_and_evaluate(bad, str(tmp_path / 'run'))
  bad = config.copy_and_resolve_references()
  bad.model.name, bad.image_size, bad.model.conv_features = 'AllClassesCNN', 8, (16, 16, 16)
  with pytest.raises(train.configuration.ConfigError, match='cannot be built for image_size=8'):
    train.train_and_evaluate(bad, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'config.json').exists()


def test_resuming_on_changed_data_is_refused_naming_what_changed(tmp_path):
  files = nhcd_files(writers=3, samples=4)
  write_archive(files, tmp_path / 'a' / 'nhcd.zip')
  config = tiny_config(tmp_path / 'a', tmp_path / 'tfds_a')
  config.num_epochs = 1
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  splits_before = (workdir / 'splits.json').read_text()
  record = json.loads((workdir / rundir.DATA_FILE).read_text())
  assert record['examples'] == 120 and len(record['sha256']) == 64

  gone = 'nhcd/numerals/3/002_03.jpg'
  write_archive({n: b for n, b in files.items() if n != gone}, tmp_path / 'b' / 'nhcd.zip')
  moved = config.copy_and_resolve_references()
  moved.data_dir, moved.tfds_dir = str(tmp_path / 'b'), str(tmp_path / 'tfds_b')
  with pytest.raises(rundir.RunDirError, match=f'data changed.*1 images no longer in the data '
                     f'.e.g. {gone}'):
    train.train_and_evaluate(moved, str(workdir))
  assert (workdir / 'splits.json').read_text() == splits_before

  # Same names, other pixels: also refused.
  changed = dict(files)
  changed[gone] = files['nhcd/numerals/3/001_01.jpg']
  write_archive(changed, tmp_path / 'c' / 'nhcd.zip')
  moved.data_dir, moved.tfds_dir = str(tmp_path / 'c'), str(tmp_path / 'tfds_c')
  with pytest.raises(rundir.RunDirError, match='1 images with other pixels or label'):
    train.train_and_evaluate(moved, str(workdir))

  # The original data, elsewhere: accepted (data_dir and tfds_dir may change).
  moved.data_dir, moved.tfds_dir = str(tmp_path / 'a'), str(tmp_path / 'tfds_a')
  assert train.train_and_evaluate(moved, str(workdir))['epochs_run'] == 1


def test_a_run_saved_before_data_json_is_checked_against_its_splits(reference_run, tmp_path):
  config, workdir = reference_run
  old = tmp_path / 'old'
  shutil.copytree(workdir, old)
  (old / rundir.DATA_FILE).unlink()
  splits = json.loads((old / 'splits.json').read_text())
  splits['test'], splits['train'] = splits['train'][:3], splits['test'] + splits['train'][3:]
  (old / 'splits.json').write_text(json.dumps(splits))
  with pytest.raises(rundir.RunDirError, match='splits changed'):
    train.train_and_evaluate(config.copy_and_resolve_references(), str(old))


def test_prepared_data_left_unchecked_by_a_kill_are_checked_on_next_use(tmp_path):
  write_archive(nhcd_files(writers=2, samples=2), tmp_path / 'a' / 'nhcd.zip')
  builder = input_pipeline.prepare('nhcd', 'numerals', data_dir=tmp_path / 'a',
                                   tfds_dir=tmp_path / 'tfds')
  record = pathlib.Path(builder.data_dir) / input_pipeline.SOURCE_RECORD
  assert record.exists()
  record.unlink()  # as if killed between TFDS finishing and the check
  input_pipeline.prepare('nhcd', 'numerals', data_dir=tmp_path / 'a', tfds_dir=tmp_path / 'tfds')
  assert record.exists()  # checked and recorded now

  record.unlink()  # killed again, and the archive is now another one: the check catches it
  files = nhcd_files(writers=2, samples=2)
  write_archive({n: b for n, b in files.items() if n != 'nhcd/numerals/4/001_01.jpg'},
                tmp_path / 'a' / 'nhcd.zip')
  with pytest.raises(input_pipeline.archives.ArchiveError, match='does not match'):
    input_pipeline.prepare('nhcd', 'numerals', data_dir=tmp_path / 'a',
                           tfds_dir=tmp_path / 'tfds')
  assert not record.exists()


def test_subset_accuracy_scores_each_named_subset_of_the_run_classes():
  # Classes a, b (subset 'ab') and c (subset 'c'); rows are true classes, columns predicted.
  confusion = np.array([[3, 1, 0],    # a: 3 right, 1 read as b (inside its subset, still wrong)
                        [0, 2, 2],    # b: 2 right, 2 read as c
                        [1, 0, 5]])   # c: 5 right, 1 read as a
  subsets = {'all': ['a', 'b', 'c'], 'ab': ['a', 'b'], 'c': ['c'], 'other': ['a', 'z']}
  accuracy = rundir.subset_accuracy(confusion, ['a', 'b', 'c'], subsets)
  assert accuracy == pytest.approx({'ab': 5 / 8, 'c': 5 / 6})
  # A run on one subset: nothing smaller is named, so nothing is reported.
  assert rundir.subset_accuracy(confusion[:2, :2], ['a', 'b'], subsets) == {}


def test_subset_accuracy_of_nhcds_58_classes_partitions_the_test_images():
  from charjax.data import registry
  subsets = registry.get('nhcd').subsets
  names = list(subsets['all'])
  confusion = np.diag(np.arange(1, 59))
  confusion[0, 57] = 4  # a numeral read as a consonant
  accuracy = rundir.subset_accuracy(confusion, names, subsets)
  assert set(accuracy) == {'numerals', 'vowels', 'consonants'}
  assert accuracy['numerals'] == pytest.approx(55 / 59)
  assert accuracy['vowels'] == accuracy['consonants'] == 1.0
