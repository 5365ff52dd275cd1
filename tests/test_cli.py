"""Command-line mistakes end in one `charjax: ...` line and a non-zero exit, no traceback."""

import errno
import subprocess
import sys

import pytest

from charjax import cli
from tests.test_train import REPO


def _train(*args, cwd=REPO):
  return subprocess.run([sys.executable, '-m', 'charjax.train', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def broken_config(tmp_path_factory):
  path = tmp_path_factory.mktemp('configs') / 'broken.py'
  path.write_text('import a_module_that_does_not_exist\n')
  return path


slow = pytest.mark.slow  # each case is a process of its own: the rest run with -m slow


@pytest.mark.parametrize('args,message', [
    pytest.param(['--config.bogus=1'], 'unknown config field bogus', marks=slow),
    pytest.param(['--config.model.name=Bogus'], "model.name='Bogus' is not one of", marks=slow),
    pytest.param(['--config.num_epochs=abc'], 'flag --config.num_epochs=abc', marks=slow),
    (['--config.model.conv_features=(8,16)', '--config.model.conv_features=(8,16)'],
     '--config.model.conv_features is given more than once'),
    pytest.param(['--config.model.name=AllClassesCNN', '--config.image_size=8',
                  '--config.model.conv_features=(16,16,16)'], 'cannot be built for image_size=8',
                 marks=slow),
    pytest.param(['--config.optimizer.learning_rate=-1'], 'learning_rate=-1', marks=slow),
])
def test_config_mistakes(prepared_dirs, tmp_path, args, message):
  data_dir, tfds_dir = prepared_dirs
  proc = _train('--config', 'charjax/configs/numerals.py', f'--workdir={tmp_path / "run"}',
                f'--config.data_dir={data_dir}', f'--config.tfds_dir={tfds_dir}', *args)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith('charjax: ')
  assert message in proc.stderr and 'Traceback' not in proc.stderr
  assert not (tmp_path / 'run' / 'config.json').exists()


@slow
def test_test_fraction_that_leaves_nothing_to_train_on(prepared_dirs, tmp_path):
  data_dir, tfds_dir = prepared_dirs
  proc = _train('--config', 'charjax/configs/numerals.py', f'--workdir={tmp_path / "run"}',
                f'--config.data_dir={data_dir}', f'--config.tfds_dir={tfds_dir}',
                '--config.test_fraction=0.99')
  assert proc.returncode == 1 and 'charjax: Cannot split nhcd/numerals' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'run' / 'config.json').exists()


@slow
def test_missing_and_broken_config_files(broken_config, tmp_path):
  for config, message in ((tmp_path / 'nope.py', 'does not exist'),
                          (broken_config, 'cannot load the config: ModuleNotFoundError')):
    proc = _train('--config', str(config), f'--workdir={tmp_path / "run"}')
    assert proc.returncode == 2 and f'charjax: ' in proc.stderr and message in proc.stderr
    assert 'Traceback' not in proc.stderr


@slow
def test_a_workdir_that_cannot_be_created(tmp_path):
  (tmp_path / 'a_file').write_text('')
  proc = _train('--config', 'charjax/configs/numerals.py', f'--workdir={tmp_path / "a_file" / "run"}')
  assert proc.returncode == 1 and 'charjax: Not a directory' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_repeated_overrides_are_found():
  argv = ['x', '--config.a=1', '--config.b=2', '--config.a=(1,2)', '--', '--config.b=3']
  assert cli.repeated_overrides(argv) == ['a']


@pytest.mark.parametrize('err,words', [
    (OSError(errno.ENOSPC, 'No space left on device', '/w/metrics.jsonl'), 'disk is full'),
    (OSError(errno.EROFS, 'Read-only file system', '/w'), 'read-only file system'),
    (PermissionError(errno.EACCES, 'Permission denied', '/w'), 'no permission'),
])
def test_os_errors_become_one_line(capsys, err, words):
  def fail():
    raise err
  with pytest.raises(SystemExit) as stopped:
    cli.exit_on_error(fail)
  assert stopped.value.code == 1
  line = capsys.readouterr().err.strip()
  assert line.startswith('charjax: ') and words in line and err.filename in line


def test_packaged_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
  from charjax import cli
  monkeypatch.chdir(tmp_path)  # outside the repository
  argv = cli.resolve_config_names(['train', '--config', 'consonants:quick', '--workdir', 'w'])
  assert argv[2] == f'{REPO / "charjax" / "configs" / "consonants.py"}:quick'
  argv = cli.resolve_config_names(['train', '--config=all_classes'])
  assert argv[1] == f'--config={REPO / "charjax" / "configs" / "all_classes.py"}'
  (tmp_path / 'mine.py').write_text('')
  assert cli.resolve_config_names(['t', '--config', 'mine.py'])[2] == 'mine.py'
  assert cli.resolve_config_names(['t', '--config', 'nope'])[2] == 'nope'  # reported later


def test_commands_keep_library_chatter_out_but_not_real_warnings():
  import logging
  from charjax import progress

  def record(path, level, msg):
    return logging.LogRecord('absl', level, path, 1, msg, None, None)

  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not progress.quiet_library_logs(record(orbax, logging.INFO, 'Found 2 checkpoint steps'))
  assert not progress.quiet_library_logs(
      record(orbax, logging.WARNING, 'Given directory is read only=/runs/x/checkpoints'))
  assert progress.quiet_library_logs(record(orbax, logging.WARNING, 'Checkpoint is corrupt'))
  assert progress.quiet_library_logs(record('/charjax/train.py', logging.INFO, 'epoch 1'))
