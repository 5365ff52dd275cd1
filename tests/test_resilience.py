"""Runs that survive interruption: kill and resume, signals, guards, refusals, determinism."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from charjax import checkpointing
from charjax import configuration
from charjax import runs
from charjax import train
from tests.test_train import REPO
from tests.test_train import tiny_config

_TIMING = ('epoch_seconds', 'val_seconds', 'images_per_s')


def _curve(workdir):
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [{k: v for k, v in l.items() if k not in _TIMING} for l in lines]


def _outcome(workdir):
  results = json.loads((workdir / 'results.json').read_text())
  keep = ('test_accuracy', 'test_loss', 'best_epoch', 'best_val_loss', 'confusion_matrix')
  return {k: results[k] for k in keep}


def _checkpoint_bytes(workdir):
  """{'best/params/...': bytes} of every array in the run's checkpoints."""
  config = runs.load_config(workdir)
  template = train.create_train_state(config, train.create_model(config, 10),
                                      jax.random.key(0), config.image_size)
  out = {}
  with checkpointing.manager(workdir / 'checkpoints', read_only=True) as mngr:
    for epoch in mngr.all_steps():
      state = checkpointing.restore(mngr, template, epoch)
      for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        out[f'{epoch}{jax.tree_util.keystr(path)}'] = np.asarray(leaf).tobytes()
  return out


def _cli_args(config, workdir):
  args = ['--config', 'charjax/configs/numerals.py', '--workdir', str(workdir)]
  for key in ('data_dir', 'tfds_dir', 'image_size', 'model.dense_features',
              'model.dense_dropout', 'optimizer.learning_rate', 'batch_size', 'eval_batch_size',
              'num_epochs', 'checkpoint_every_epochs'):
    section, _, field = key.rpartition('.')
    args.append(f'--config.{key}={(config[section] if section else config)[field]}')
  args.append(f'--config.model.conv_features=({config.model.conv_features[0]}, '
              f'{config.model.conv_features[1]})')
  return [sys.executable, '-m', 'charjax.train', *args]


@pytest.fixture
def reference(reference_run):
  return reference_run


def test_same_config_and_seed_give_the_same_run(reference, tmp_path):
  config, workdir = reference
  config = config.copy_and_resolve_references()
  train.train_and_evaluate(config, str(tmp_path))
  assert _curve(tmp_path) == _curve(workdir)
  assert _outcome(tmp_path) == _outcome(workdir)
  assert (tmp_path / 'splits.json').read_text() == (workdir / 'splits.json').read_text()
  assert _checkpoint_bytes(tmp_path) == _checkpoint_bytes(workdir)


def test_the_reference_run_uses_the_native_kernels_threaded(reference):
  """The determinism tests mean something only if the threaded native kernels ran."""
  from charjax.nn import conv
  from charjax.nn import native_conv
  config, _ = reference
  if native_conv._cpu_problem() is not None:
    pytest.skip(native_conv._cpu_problem())
  assert conv.resolve_impl(config.conv_impl) == 'native'
  assert all(f % native_conv.LANES == 0 for f in config.model.conv_features)
  assert config.batch_size > 1 and jax.devices()[0].platform == 'cpu'


@pytest.mark.parametrize('sig', [signal.SIGKILL,
                                 pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_killed_mid_run_then_same_command_ends_identically(reference, tmp_path, sig):
  config, workdir = reference
  cmd = _cli_args(config, tmp_path)
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  metrics = tmp_path / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run ended before it could be killed'
  proc.send_signal(sig)
  proc.wait()
  assert proc.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM)
  killed_at = len(metrics.read_text().splitlines())
  assert killed_at < config.num_epochs and not (tmp_path / 'results.json').exists()
  resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'Resuming' in resumed.stderr
  assert _curve(tmp_path) == _curve(workdir)  # bitwise: same compiled code, same inputs
  assert _outcome(tmp_path) == _outcome(workdir)
  assert _checkpoint_bytes(tmp_path) == _checkpoint_bytes(workdir)
  results = json.loads((tmp_path / 'results.json').read_text())
  assert 0 < results['resumed_from_epoch'] <= killed_at
  epoch_seconds = [json.loads(l)['epoch_seconds'] for l in metrics.read_text().splitlines()]
  assert results['train_seconds'] == pytest.approx(sum(epoch_seconds))
  assert json.loads((workdir / 'results.json').read_text())['resumed_from_epoch'] == 0


@pytest.mark.parametrize('sig', [signal.SIGTERM,
                                 pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_sigterm_and_ctrl_c_save_a_checkpoint_and_exit_cleanly(reference, tmp_path, sig):
  config, _ = reference
  cmd = _cli_args(config, tmp_path)
  cmd[cmd.index('--config.num_epochs=5')] = '--config.num_epochs=200'
  cmd[cmd.index('--config.checkpoint_every_epochs=1')] = '--config.checkpoint_every_epochs=100'
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  metrics = tmp_path / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('\n') >= 1):
    time.sleep(0.05)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + sig, err[-2000:]
  assert 'rerun the same command to resume' in err and 'Traceback' not in err
  epochs = len(metrics.read_text().splitlines())
  latest = checkpointing.manager(tmp_path / 'checkpoints', read_only=True)
  assert latest.latest_step() == epochs < 100  # saved at once, not at epoch 100


def test_signal_landing_after_the_epochs_checkpoint_decision_still_saves(reference, tmp_path,
                                                                         monkeypatch):
  """A signal between the 'save latest?' check and the 'stop?' check must not skip the save."""
  config, _ = reference
  config = config.copy_and_resolve_references()
  config.num_epochs, config.checkpoint_every_epochs = 4, 100
  real_info = train.logging.info
  sent = []

  def info(msg, *args, **kwargs):
    if isinstance(msg, str) and msg.startswith('epoch ') and not sent:  # the epoch line sits between the two checks
      sent.append(True)
      os.kill(os.getpid(), signal.SIGTERM)
    return real_info(msg, *args, **kwargs)

  monkeypatch.setattr(train.logging, 'info', info)
  with pytest.raises(train.TrainingInterrupted) as stopped:
    train.train_and_evaluate(config, str(tmp_path))
  assert stopped.value.signum == signal.SIGTERM
  epochs = len((tmp_path / 'metrics.jsonl').read_text().splitlines())
  latest = checkpointing.manager(tmp_path / 'checkpoints', read_only=True)
  assert latest.latest_step() == epochs == 2


class _Killed(BaseException):
  """Stands for SIGKILL at an exact point: nothing after it runs."""


@pytest.mark.parametrize('when', ['before', 'after'])
def test_a_kill_next_to_a_checkpoint_save_resumes_to_the_same_run(reference, tmp_path,
                                                                 monkeypatch, when):
  """A kill just before or just after epoch 3's first checkpoint write (a best one in the
  reference run) leaves a metrics log and checkpoints from which the resumed run is the
  uninterrupted one, line for line."""
  config, workdir = reference
  config = config.copy_and_resolve_references()
  real_save = checkpointing.save

  def save(mngr, epoch, *args, **kwargs):
    if epoch == 3 and when == 'before':
      raise _Killed
    real_save(mngr, epoch, *args, **kwargs)
    if epoch == 3:
      raise _Killed

  monkeypatch.setattr(checkpointing, 'save', save)
  with pytest.raises(_Killed):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.setattr(checkpointing, 'save', real_save)
  train.train_and_evaluate(config, str(tmp_path))
  assert _curve(tmp_path) == _curve(workdir)
  assert _outcome(tmp_path) == _outcome(workdir)
  resumed = json.loads((tmp_path / 'results.json').read_text())['resumed_from_epoch']
  assert resumed == (2 if when == 'before' else 3)


def test_another_config_in_the_same_workdir_is_refused_unless_restart(reference, tmp_path):
  config, workdir = reference
  config = config.copy_and_resolve_references()
  config.num_epochs = 1
  train.train_and_evaluate(config, str(tmp_path))
  config.optimizer.learning_rate = 1e-3
  with pytest.raises(configuration.ConfigError, match=r'differs in optimizer\.learning_rate.*--restart'):
    train.train_and_evaluate(config, str(tmp_path))
  results = train.train_and_evaluate(config, str(tmp_path), restart=True)
  assert results['epochs_run'] == 1
  assert json.loads((tmp_path / 'config.json').read_text())['optimizer']['learning_rate'] == 1e-3


def test_nan_stops_the_run_naming_epoch_and_step_and_keeps_checkpoints(prepared_dirs, tmp_path):
  config = tiny_config(*prepared_dirs)
  config.num_epochs, config.checkpoint_every_epochs = 4, 1
  config.optimizer.learning_rate = 1e9  # diverges within a few steps
  with pytest.raises(train.TrainingDiverged, match=r'NaN or infinite in epoch (\d+), at step'):
    train.train_and_evaluate(config, str(tmp_path))
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert all(np.isfinite(json.loads(l)['train_loss']) for l in lines)
  latest = checkpointing.manager(tmp_path / 'checkpoints', read_only=True)
  assert (latest.latest_step() or 0) == len(lines)


def test_nan_in_a_batch_is_caught_at_its_step(prepared_dirs):
  config = tiny_config(*prepared_dirs)
  model = train.create_model(config, 10)
  state = train.create_train_state(config, model, jax.random.key(0), 16)
  images = jnp.zeros((96, 16, 16, 1)).at[50].set(jnp.nan)
  state, sums = train.train_epoch(state, images, jnp.zeros(96, jnp.int32), jax.random.key(1),
                                  1, batch_size=32)
  assert 1 <= int(sums['first_bad_step']) <= 3


@pytest.mark.parametrize('error,message', [
    (OSError(errno.ENOSPC, 'No space left on device'), 'No space left'),
    # what tensorstore raises for ENOSPC
    (ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": [OS error: No space left '
                'on device]'), 'No space left'),
    (OSError(errno.EROFS, 'Read-only file system'), 'read-only file system'),
    (ValueError('PERMISSION_DENIED: Error opening file "x": [OS error: Permission denied]'),
     'No permission'),
])
def test_full_or_read_only_disk_fails_clearly_and_keeps_earlier_checkpoints(
    reference, tmp_path, monkeypatch, error, message):
  config, _ = reference
  config = config.copy_and_resolve_references()
  config.num_epochs = 3
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step >= 3:
      raise error
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(checkpointing.CheckpointError, match=f'{message}.*intact'):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  latest = checkpointing.manager(tmp_path / 'checkpoints', read_only=True)
  assert latest.latest_step() == 2
  template = train.create_train_state(config, train.create_model(config, 10),
                                      jax.random.key(0), config.image_size)
  restored = checkpointing.restore(latest, template)
  assert int(restored.step) > 0


def test_checkpoint_of_another_model_is_refused(reference):
  config, workdir = reference
  other = config.copy_and_resolve_references()
  other.model.dense_features = 32
  template = train.create_train_state(other, train.create_model(other, 10), jax.random.key(0),
                                      other.image_size)
  best = checkpointing.manager(workdir / 'checkpoints', read_only=True)
  with pytest.raises(checkpointing.CheckpointError, match='does not fit|other shapes'):
    checkpointing.restore(best, template)


def test_restore_best_of_a_finished_run(reference):
  config, workdir = reference
  loaded, model, state, names = runs.restore_best(workdir)
  assert json.loads(loaded.to_json()) == json.loads(config.to_json()) and len(names) == 10
  assert int(state.step) > 0


def test_a_run_saved_before_later_fields_existed_still_loads(reference, tmp_path):
  config, workdir = reference
  old = tmp_path / 'old'
  shutil.copytree(workdir, old)
  saved = json.loads((old / 'config.json').read_text())
  for key in configuration.ADDED_LATER:
    del saved[key]
  (old / 'config.json').write_text(json.dumps(saved))
  loaded, _, state, _ = runs.restore_best(old)
  assert json.loads(loaded.to_json()) == json.loads(config.to_json())
  assert int(state.step) > 0


@pytest.mark.slow  # a process of its own; predict's damaged-checkpoint test is in the fast suite
def test_resuming_from_a_damaged_checkpoint_is_one_clear_line(reference, tmp_path):
  from tests.test_predict import _damage
  config, workdir = reference
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  _damage(run / 'checkpoints', 'truncated')
  proc = subprocess.run(_cli_args(config, run), cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('charjax: ') and 'is damaged' in last
  assert 'Traceback' not in proc.stderr and 'Event loop is closed' not in proc.stderr


def test_asyncio_reports_of_failed_checkpoint_reads_are_recognised():
  import logging
  err = ValueError('OUT_OF_RANGE: Error opening "zarr" driver: Error reading "step/.zarray"')
  record = logging.LogRecord('asyncio', logging.ERROR, __file__, 1,
                             "Task exception was never retrieved\nfuture: <Task finished "
                             "coro=<_wrap_awaitable() done> exception=%r>", (err,),
                             (ValueError, err, None))
  assert checkpointing._orbax_leftover(record)  # pylint: disable=protected-access
  other = logging.LogRecord('asyncio', logging.ERROR, __file__, 1,
                            'Task exception was never retrieved', (), (KeyError, KeyError('x'), None))
  assert not checkpointing._orbax_leftover(other)  # pylint: disable=protected-access


def _save_epochs(directory, epochs):
  """Saves a small state at each (epoch, improved) with the train loop's metrics."""
  state = {'w': np.arange(3, dtype=np.float32)}
  with checkpointing.manager(directory) as mngr:
    for epoch, improved in epochs:
      record = {'epoch': epoch, 'val_loss': 1.0 / epoch, 'best': improved}
      checkpointing.save(mngr, epoch, state, train._checkpoint_metrics(record))  # pylint: disable=protected-access
    return mngr.all_steps()


def test_a_resumed_run_keeps_its_best_checkpoint(tmp_path):
  # Best at epoch 1, then a worse epoch 2; the run stops and resumes, and saves a worse
  # epoch 3: epoch 1 must stay as the best, beside the newest. A later new best replaces it.
  assert _save_epochs(tmp_path, [(1, True), (2, False)]) == [1, 2]
  assert _save_epochs(tmp_path, [(3, False)]) == [1, 3]
  assert _save_epochs(tmp_path, [(4, False), (5, True)]) == [5]
  with checkpointing.manager(tmp_path, read_only=True) as mngr:
    restored = checkpointing.restore(mngr, {'w': np.zeros(3, np.float32)}, 5)
  np.testing.assert_array_equal(restored['w'], np.arange(3))


def test_checkpoints_saved_without_metrics_on_disk_are_never_deleted(tmp_path):
  # charjax's earlier checkpoints kept their metrics only in memory: a resume must not
  # take them for checkpoints that can go.
  _save_epochs(tmp_path, [(1, True), (2, False)])
  for epoch in (1, 2):
    shutil.rmtree(tmp_path / str(epoch) / 'metrics')
  assert _save_epochs(tmp_path, [(3, False)]) == [1, 2, 3]


def test_restoring_an_epoch_without_a_checkpoint_names_the_kept_ones(tmp_path):
  _save_epochs(tmp_path, [(1, True), (2, False), (3, False)])
  with checkpointing.manager(tmp_path, read_only=True) as mngr:
    with pytest.raises(checkpointing.CheckpointError,
                       match=r'holds no checkpoint of epoch 2 \(it holds epochs 1, 3\)'):
      checkpointing.restore(mngr, {'w': np.zeros(3, np.float32)}, 2)
