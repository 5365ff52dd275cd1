"""charjax extended as its users do: a model and a dataset in two files each, outside the
repository; runs of older charjax versions still loading; progress and TensorBoard output."""

import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from charjax import configuration
from charjax import runs
from charjax import train
from tests.conftest import character_image
from tests.conftest import encode
from tests.conftest import write_archive

REPO = pathlib.Path(__file__).resolve().parents[1]
SAVED_RUN = REPO / 'tests' / 'data' / 'run_saved_by_e40967b'

# The two files of a new model: its module and its config.
MODEL_MODULE = '''
"""A small MLP, to show that a model needs only its module and its config."""
import flax.linen as nn
from charjax.nn import models


class TinyMLP(nn.Module):
  num_classes: int
  hidden: int = 32
  dropout: float = 0.1

  def __post_init__(self):
    if self.hidden <= 0:
      raise ValueError(f'hidden={self.hidden} must be positive')
    super().__post_init__()

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)
'''

# The two files of a new dataset: its module (TFDS builder + DatasetSpec) and its config.
DATASET_MODULE = '''
"""Shapes: 4 classes of generated 20x20 PNGs in shapes/<class>/<n>.png inside shapes.zip."""
import posixpath
import numpy as np
import tensorflow_datasets as tfds
from charjax.data import archives, registry, sources

CLASSES = ('bar', 'box', 'dot', 'cross')


def layout(names, subset):
  del subset
  return {n: CLASSES.index(n.split('/')[-2]) for n in names
          if n.endswith('.png') and n.split('/')[-2] in CLASSES}


class Shapes(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put shapes.zip in the manual directory.'

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(None, None, 1), dtype=np.uint8, encoding='zlib'),
        'label': tfds.features.ClassLabel(names=CLASSES),
        'file_name': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    source = sources.find_source(DATASET, dl_manager.manual_dir)
    return {'train': self._generate_examples(source)}

  def _generate_examples(self, source):
    labelled = layout(archives.list_files(source), 'all')
    for name, data in archives.iter_files(source, labelled):
      yield name, {'image': sources.decode_grayscale(name, data), 'label': labelled[name],
                   'file_name': name}


DATASET = registry.DatasetSpec(
    name='shapes', builder=Shapes, subsets={'all': CLASSES}, layout=layout,
    source_names=('shapes.zip',), download_url='https://example.org/shapes',
    ink_is_dark=False)
'''

CONFIG = '''
"""TinyMLP on the shapes dataset (both from outside charjax)."""
from charjax.configs import default
import ml_collections


def get_config(variant=''):
  config = default.get_config()
  config.dataset, config.subset, config.image_size = '{dataset}', 'all', 20
  config.model = ml_collections.ConfigDict(dict(name='{model}', hidden=16, dropout=0.1))
  config.optimizer = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=3e-3, schedule='cosine', warmup_epochs=1.0, b1=0.9))
  config.batch_size, config.eval_batch_size, config.num_epochs = 16, 32, 3
  return config
'''


def _shapes_archive(path: pathlib.Path) -> None:
  rng = np.random.default_rng(0)
  files = {}
  for label, name in enumerate(('bar', 'box', 'dot', 'cross')):
    for i in range(30):
      files[f'shapes/{name}/{i}.png'] = encode(character_image(label * 9, 20, rng, False), 'PNG')
  write_archive(files, path)


def test_a_model_and_a_dataset_added_in_two_files_each_train_from_outside_the_repo(tmp_path):
  """Four new files (model module + config, dataset module + config), nothing in charjax
  changed; `python -m charjax.train` run from another directory trains them."""
  lab = tmp_path / 'lab'
  lab.mkdir()
  (lab / 'tiny_mlp.py').write_text(MODEL_MODULE)
  (lab / 'shapes.py').write_text(DATASET_MODULE)
  (lab / 'shapes_config.py').write_text(
      CONFIG.replace('{dataset}', 'shapes').replace('{model}', 'tiny_mlp.TinyMLP'))
  _shapes_archive(tmp_path / 'data' / 'shapes.zip')
  env = {**os.environ, 'PYTHONPATH': str(lab), 'CHARJAX_DATA_DIR': str(tmp_path / 'data'),
         'CHARJAX_TFDS_DIR': str(tmp_path / 'tfds')}
  proc = subprocess.run(
      [sys.executable, '-m', 'charjax.train', '--config', str(lab / 'shapes_config.py'),
       '--workdir', str(tmp_path / 'run')], cwd=tmp_path, env=env, capture_output=True,
      text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert results['dataset'] == 'shapes' and results['model'] == 'tiny_mlp.TinyMLP'
  assert results['class_names'] == ['bar', 'box', 'dot', 'cross']
  assert sum(results['split_sizes'].values()) == 120
  lines = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert lines[-1]['train_loss'] < lines[0]['train_loss']
  # Warm-up then cosine: the rate rises over the first epoch, then decays.
  assert lines[0]['learning_rate'] == 0 and lines[1]['learning_rate'] > lines[2]['learning_rate']
  # The epoch lines are plain (no absl prefix).
  assert any(l.startswith('epoch 3/3  loss ') for l in proc.stderr.splitlines())


def test_a_model_field_the_module_does_not_have_is_named(tmp_path, monkeypatch):
  (tmp_path / 'tiny_mlp2.py').write_text(MODEL_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  from charjax.configs import default
  import ml_collections
  config = default.get_config()
  config.model = ml_collections.ConfigDict(dict(name='tiny_mlp2.TinyMLP', hiden=8))
  with pytest.raises(configuration.ConfigError, match='TinyMLP has no field hiden; its fields '
                     'are dropout, hidden'):
    configuration.validate(config)
  config.model = ml_collections.ConfigDict(dict(name='tiny_mlp2.TinyMLP', hidden=0))
  with pytest.raises(configuration.ConfigError, match='hidden=0 must be positive'):
    configuration.validate(config)
  config.model.name = 'tiny_mlp2.Missing'
  with pytest.raises(configuration.ConfigError, match="model.name='tiny_mlp2.Missing'"):
    configuration.validate(config)


def test_a_run_saved_by_older_charjax_still_loads_and_predicts_the_same():
  """`tests/data/run_saved_by_e40967b`: flat config fields, two checkpoint managers."""
  saved = json.loads((SAVED_RUN / 'config.json').read_text())
  assert isinstance(saved['model'], str) and 'learning_rate' in saved  # the old form
  config, model, state, names = runs.restore_best(SAVED_RUN)
  assert config.model.name == 'SubsetCNN' and config.model.dense_features == 8
  assert config.optimizer.name == 'keras_rmsprop' and config.optimizer.rho == 0.9
  assert len(names) == 10
  expected = json.loads((SAVED_RUN / 'expected_logits.json').read_text())
  x = np.random.default_rng(expected['inputs_seed']).random(expected['shape']).astype(np.float32)
  logits = model.apply({'params': state.params}, x, train=False)
  np.testing.assert_allclose(logits, expected['logits'], rtol=1e-5, atol=1e-5)


def test_training_an_older_run_further_asks_for_restart(tmp_path):
  import shutil
  shutil.copytree(SAVED_RUN, tmp_path / 'old')
  config = runs.load_config(tmp_path / 'old')
  with pytest.raises(configuration.ConfigError, match='older charjax.*--restart'):
    train.train_and_evaluate(config, str(tmp_path / 'old'))


def _tensorboard_scalars(folder: pathlib.Path) -> dict:
  """{tag: [(step, value)]} read from TensorBoard event files (TFRecord framing)."""
  from tensorboardX.proto import event_pb2
  scalars = {}
  for path in sorted(folder.glob('events.out.tfevents.*')):
    data = path.read_bytes()
    at = 0
    while at < len(data):
      (length,) = struct.unpack('<Q', data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_progress_bar_changes_no_result_and_tensorboard_has_every_epoch(tiny_run_for_progress):
  config, workdir, results, capsys_err = tiny_run_for_progress
  from tests.test_train import tiny_config  # noqa: F401  (the same config as test_train's)
  assert 'epoch 1/3' in capsys_err and 'step' in capsys_err  # the bar drawn on stderr
  plain = json.loads((workdir.parent / 'plain' / 'results.json').read_text())
  for key in ('test_loss', 'test_accuracy', 'best_val_loss', 'best_epoch', 'confusion_matrix'):
    assert results[key] == plain[key], key
  scalars = _tensorboard_scalars(workdir / 'tensorboard')
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [s for s, _ in scalars['loss/validation']] == [1, 2, 3]
  np.testing.assert_allclose([v for _, v in scalars['loss/validation']],
                             [l['val_loss'] for l in lines], rtol=1e-6)
  assert {'loss/train', 'accuracy/train', 'accuracy/validation', 'learning_rate',
          'images_per_s'} <= set(scalars)


@pytest.fixture(scope='module')
def tiny_run_for_progress(prepared_dirs, tmp_path_factory):
  """The same tiny config trained twice: with the progress bar, and without."""
  import contextlib
  import io
  from tests.test_train import tiny_config
  config = tiny_config(*prepared_dirs)
  root = tmp_path_factory.mktemp('progress')
  train.train_and_evaluate(config, str(root / 'plain'), show_progress=False)
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    results = train.train_and_evaluate(config, str(root / 'bar'), show_progress=True)
  return config, root / 'bar', results, err.getvalue()
