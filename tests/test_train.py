"""One short training run on generated data, checkpoint restore, and config errors."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from charjax import checkpointing
from charjax import configuration
from charjax import evaluate
from charjax.data import augment
from charjax.data import input_pipeline
from charjax import runs
from charjax import train
from charjax import configs
from charjax.configs import all_classes
from charjax.configs import default

REPO = __import__('pathlib').Path(__file__).resolve().parents[1]


def tiny_config(data_dir, tfds_dir):
  config = default.get_config()
  config.subset = 'numerals'
  config.data_dir, config.tfds_dir = str(data_dir), str(tfds_dir)
  config.image_size = 16
  config.model.conv_features = (16, 32)  # multiples of 16: the native kernels, threaded, on CPU
  config.model.dense_features = 16
  config.model.dense_dropout = 0.2
  config.optimizer.learning_rate = 3e-3
  config.batch_size = 32
  config.eval_batch_size = 20
  config.num_epochs = 3
  config.checkpoint_every_epochs = 2
  return config


@pytest.fixture(scope='module')
def tiny_run(prepared_dirs, tmp_path_factory):
  config = tiny_config(*prepared_dirs)
  workdir = tmp_path_factory.mktemp('run')
  return config, workdir, train.train_and_evaluate(config, str(workdir))


def test_run_writes_config_metrics_splits_and_results(tiny_run):
  config, workdir, results = tiny_run
  assert json.loads((workdir / 'results.json').read_text()) == json.loads(json.dumps(results))
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [l['epoch'] for l in lines] == [1, 2, 3]
  assert all(np.isfinite(l['train_loss']) and l['images_per_s'] > 0 for l in lines)
  assert json.loads((workdir / 'config.json').read_text())['image_size'] == 16
  saved = json.loads((workdir / 'splits.json').read_text())
  assert {k: len(v) for k, v in saved.items()} == results['split_sizes']
  assert sum(results['split_sizes'].values()) == 120
  confusion = np.array(results['confusion_matrix'])
  assert confusion.shape == (10, 10) and confusion.sum() == results['split_sizes']['test']
  assert results['test_accuracy'] == pytest.approx(np.trace(confusion) / confusion.sum())
  assert results['best_epoch'] == min(lines, key=lambda l: l['val_loss'])['epoch']
  assert results['device']['platform'] == jax.default_backend()
  assert len(results['per_class_accuracy']) == 10 and results['wall_clock_s'] > 0
  assert results['per_subset_accuracy'] == {}  # a numerals run: no smaller named subset


def test_best_checkpoint_restores_to_the_same_test_evaluation(tiny_run):
  config, workdir, results = tiny_run
  _, data = input_pipeline.load_splits(config)
  model = train.create_model(config, 10)
  fresh = train.create_train_state(config, model, jax.random.key(123), config.image_size)
  mngr = checkpointing.manager(workdir / 'checkpoints', read_only=True)
  # One manager keeps the best-validation epoch and the latest (the last, 3).
  assert mngr.all_steps() == sorted({results['best_epoch'], 3})
  restored = checkpointing.restore(mngr, fresh, results['best_epoch'])
  sums = train.evaluate(restored, data.images['test'], data.labels['test'], batch_size=20)
  n = results['split_sizes']['test']
  assert float(sums['correct']) / n == pytest.approx(results['test_accuracy'])
  assert float(sums['loss']) / n == pytest.approx(results['test_loss'], rel=1e-5)


def test_evaluate_counts_every_image_once_whatever_the_batch_size(prepared_dirs):
  config = tiny_config(*prepared_dirs)
  model = train.create_model(config, 10)
  state = train.create_train_state(config, model, jax.random.key(0), 16)
  images = jax.random.uniform(jax.random.key(0), (45, 16, 16, 1))
  labels = jax.numpy.arange(45) % 10
  logits = model.apply({'params': state.params}, images, train=False)
  loss = -jax.nn.log_softmax(logits)[jax.numpy.arange(45), labels]
  for batch_size in (7, 15, 45, 1000):  # a remainder batch, whole batches, one, only a remainder
    sums = jax.device_get(train.evaluate(state, images, labels, batch_size=batch_size))
    assert int(sums['count']) == 45
    np.testing.assert_array_equal(sums['predictions'], np.argmax(logits, -1))
    assert float(sums['loss']) == pytest.approx(float(loss.sum()), rel=1e-5)
    assert int(sums['correct']) == int((np.argmax(logits, -1) == labels).sum())


def test_train_epoch_is_deterministic_and_covers_every_example(prepared_dirs):
  config = tiny_config(*prepared_dirs)
  model = train.create_model(config, 10)
  images = jax.random.uniform(jax.random.key(0), (50, 16, 16, 1))
  labels = jax.numpy.arange(50) % 10
  outs = []
  for _ in range(2):
    state = train.create_train_state(config, model, jax.random.key(0), 16)
    state, sums = train.train_epoch(state, images, labels, jax.random.key(1), 1, batch_size=32)
    outs.append((jax.device_get(sums), jax.device_get(state.params)))
  assert int(outs[0][0]['count']) == 50 and int(state.step) == 2
  assert float(outs[0][0]['loss']) == float(outs[1][0]['loss'])
  jax.tree.map(np.testing.assert_array_equal, outs[0][1], outs[1][1])


@pytest.mark.parametrize('mix', augment.MIXES)
def test_train_epoch_trains_on_mixed_pairs(prepared_dirs, mix):
  config = tiny_config(*prepared_dirs)
  model = train.create_model(config, 10)
  no_mix = augment.Augmentation(0.0, 0.0)
  mixing = dataclasses.replace(no_mix, mix=mix, mix_alpha=0.5)

  def epoch(images, labels, augmentation):
    state = train.create_train_state(config, model, jax.random.key(0), 16)
    state, sums = train.train_epoch(state, images, labels, jax.random.key(1), 1, batch_size=32,
                                    augmentation=augmentation)
    return jax.device_get(sums), jax.device_get(state.params)

  # Pairs of the same image and label: mixing changes neither images nor targets.
  same = jnp.tile(jax.random.uniform(jax.random.key(0), (1, 16, 16, 1)), (50, 1, 1, 1))
  same_labels = jnp.full((50,), 3)
  (plain, _), (mixed, _) = (epoch(same, same_labels, a) for a in (no_mix, mixing))
  # (up to rounding: w x + (1 - w) x is x only within float32's last bits)
  assert float(mixed['loss']) == pytest.approx(float(plain['loss']), rel=1e-5)
  assert int(mixed['correct']) == int(plain['correct'])
  # Different images and labels: a different objective, every example counted once.
  images = jax.random.uniform(jax.random.key(0), (50, 16, 16, 1))
  labels = jnp.arange(50) % 10
  (plain, _), (mixed, _) = (epoch(images, labels, a) for a in (no_mix, mixing))
  assert int(mixed['count']) == 50 and np.isfinite(float(mixed['loss']))
  assert abs(float(mixed['loss']) - float(plain['loss'])) > 1e-3


@pytest.mark.parametrize('field, value, message', [
    ('optimizer.learning_rate', -1e-3, 'learning_rate=-0.001 must be positive'),
    ('optimizer.rho', 1.5, 'rho=1.5 not in'),
    ('optimizer.name', 'lamb', "optimizer.name='lamb' is not one of"),
    ('batch_size', 0, 'batch_size=0 must be positive'),
    ('subset', 'letters', "subset='letters' is not one of"),
    ('dataset', 'no_such_dataset', "dataset='no_such_dataset' is not one of"),
    ('model.conv_dropout', 1.5, 'conv_dropout=1.5 not in'),
    ('model.bottleneck_features', 2, 'SubsetCNN has no field bottleneck_features'),
])
def test_impossible_values_are_refused(field, value, message):
  config = default.get_config()
  section, _, key = field.rpartition('.')
  (config[section] if section else config)[key] = value
  with pytest.raises(configuration.ConfigError, match=message):
    configuration.validate(config)


def test_model_fields_are_checked_by_the_module():
  config = all_classes.get_config()
  config.model.bottleneck_activation = 'tanh'
  with pytest.raises(configuration.ConfigError,
                     match="bottleneck_activation='tanh' is not one of"):
    configuration.validate(config)


def test_unknown_field_is_refused():
  config = default.get_config()
  config.num_epoch = 3
  with pytest.raises(configuration.ConfigError, match=r"unknown fields \['num_epoch'\]"):
    configuration.validate(config)


def test_default_config_declares_exactly_the_known_fields():
  assert set(default.get_config().keys()) == set(configuration.FIELDS)
  configuration.validate(default.get_config())


def test_batch_larger_than_training_set_is_refused(prepared_dirs, tmp_path):
  config = tiny_config(*prepared_dirs)
  config.batch_size = 1000
  with pytest.raises(configuration.ConfigError, match='larger than the training set'):
    train.train_and_evaluate(config, str(tmp_path))


def run_cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, '-m', 'charjax.train', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_cli_reports_missing_data_without_traceback(tmp_path):
  proc = run_cli('--config', 'charjax/configs/numerals.py', '--workdir', str(tmp_path / 'run'),
                 f'--config.data_dir={tmp_path}/nowhere', f'--config.tfds_dir={tmp_path}/tfds')
  assert proc.returncode == 1
  assert 'No NHCD data found' in proc.stderr and 'Traceback' not in proc.stderr


def test_cli_trains_shows_progress_and_writes_results(prepared_dirs, tmp_path):
  data_dir, tfds_dir = prepared_dirs
  proc = run_cli('--config', 'charjax/configs/numerals.py', '--workdir', str(tmp_path / 'run'),
                 f'--config.data_dir={data_dir}', f'--config.tfds_dir={tfds_dir}',
                 '--config.num_epochs=1', '--config.image_size=16', '--config.batch_size=32',
                 '--config.model.conv_features=(16, 32)', '--config.model.dense_features=8')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'epoch 1/1  loss' in proc.stderr and 'img/s' in proc.stderr
  assert 'checkpoint_manager' not in proc.stderr  # library chatter kept out of the progress
  assert json.loads((tmp_path / 'run' / 'results.json').read_text())['epochs_run'] == 1


@pytest.mark.parametrize('name', ['default', 'numerals', 'vowels', 'consonants', 'dhcd',
                                  'all_classes', 'feature_map', 'dhcd_pretrain', 'from_dhcd',
                                  'recipe', 'recipe_pretrain', 'recipe_from_dhcd'])
def test_experiment_configs_are_valid(name):
  import importlib
  module = importlib.import_module(f'charjax.configs.{name}')
  config = module.get_config()
  configuration.validate(config)
  assert set(config.keys()) == set(configuration.FIELDS)
  quick = module.get_config('quick')
  configuration.validate(quick)
  assert quick.num_epochs == 2 and config.num_epochs > 2
  with pytest.raises(ValueError, match='unknown config variant'):
    module.get_config('huge')


def test_every_packaged_config_is_listed():
  assert set(configs.names()) == {'default', 'numerals', 'vowels', 'consonants', 'dhcd',
                                  'all_classes', 'feature_map', 'pca_svc', 'dhcd_pretrain',
                                  'from_dhcd', 'recipe', 'recipe_pretrain', 'recipe_from_dhcd'}


@pytest.mark.slow  # XLA's convolution (bf16) in unrolled loops: a long compile on CPU
def test_bfloat16_computes_in_bf16_keeps_float32_parameters_and_learns(reference_run, tmp_path):
  """dtype='bfloat16': activations in bf16, parameters, optimizer state and loss in float32.
  Margin: on this tiny set, within 0.15 of float32's test accuracy and 15% of its
  validation loss after 5 epochs."""
  config, reference = reference_run
  config = config.copy_and_resolve_references()
  config.dtype = 'bfloat16'
  model = train.create_model(config, 10)
  state = train.create_train_state(config, model, jax.random.key(0), config.image_size)
  logits = model.apply({'params': state.params}, np.zeros((2, 16, 16, 1), np.float32),
                       train=False)
  assert logits.dtype == jax.numpy.bfloat16
  assert all(p.dtype == np.float32 for p in jax.tree.leaves((state.params, state.opt_state)))
  results = train.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert all(np.isfinite(l['train_loss']) and np.isfinite(l['val_loss']) for l in lines)
  ref = json.loads((reference / 'results.json').read_text())
  ref_lines = [json.loads(l) for l in (reference / 'metrics.jsonl').read_text().splitlines()]
  assert abs(results['test_accuracy'] - ref['test_accuracy']) <= 0.15
  assert lines[-1]['val_loss'] == pytest.approx(ref_lines[-1]['val_loss'], rel=0.15)
  _, _, restored, _ = runs.restore_best(tmp_path)
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(restored.params))


def test_recipe_cnn_variant_trains_the_study_network_with_the_recipe():
  from charjax.configs import recipe
  config, cnn = recipe.get_config(), recipe.get_config('cnn')
  configuration.validate(cnn)
  assert cnn.model.name == 'SubsetCNN' and config.model.name == 'ResNet'
  assert dict(cnn.optimizer) == dict(config.optimizer) and cnn.augment_translate > 0


def test_wide_variant_widens_the_resnet_for_pretraining_and_fine_tuning():
  from charjax.configs import recipe
  from charjax.configs import recipe_from_dhcd
  from charjax.configs import recipe_pretrain
  for module in (recipe, recipe_pretrain, recipe_from_dhcd):
    wide, base = module.get_config('wide'), module.get_config()
    configuration.validate(wide)
    assert tuple(wide.model.stage_features) == (48, 96, 192)
    assert tuple(base.model.stage_features) == (32, 64, 128)
    assert {k: v for k, v in wide.items() if k not in ('model', 'init_from')} == {
        k: v for k, v in base.items() if k not in ('model', 'init_from')}
  assert recipe_pretrain.get_config('wide').dataset == 'dhcd'
  assert recipe_pretrain.get_config('wide').num_epochs == 20
  assert recipe_from_dhcd.get_config('wide').init_from == 'runs/recipe_pretrain_wide'
  assert recipe_from_dhcd.get_config().init_from == 'runs/recipe_pretrain'
  assert recipe_pretrain.get_config('quick').num_epochs == 2


def test_sgd_variant_swaps_only_the_optimiser_and_combines_with_the_others():
  from charjax.configs import recipe
  from charjax.configs import recipe_from_dhcd
  from charjax.configs import recipe_pretrain
  for module in (recipe, recipe_pretrain, recipe_from_dhcd):
    sgd, wide = module.get_config('wide,sgd'), module.get_config('wide')
    configuration.validate(sgd)
    assert dict(sgd.optimizer) == dict(
        name='sgd', learning_rate=0.1, momentum=0.9, nesterov=True, schedule='cosine',
        warmup_epochs=2.0, weight_decay=5e-4, ema_decay=0.99)
    assert {k: v for k, v in sgd.items() if k not in ('optimizer', 'init_from')} == {
        k: v for k, v in wide.items() if k not in ('optimizer', 'init_from')}
    # The order of the parts does not matter; 'quick' still applies.
    assert module.get_config('sgd,wide,quick').to_dict() == {
        **sgd.to_dict(), 'num_epochs': 2, 'checkpoint_every_epochs': 1}
    assert tuple(module.get_config('sgd').model.stage_features) == (32, 64, 128)
    for bad in ('wide,cnn', 'sgd,adamw', 'quick,huge', 'wide,huge'):
      with pytest.raises(ValueError):
        module.get_config(bad)
  assert recipe_from_dhcd.get_config('wide,sgd').init_from == 'runs/recipe_pretrain_wide_sgd'
  from charjax import optim
  # The config's fields are the ones optim.sgd takes.
  tx = optim.create(recipe_pretrain.get_config('wide,sgd').optimizer,
                    steps_per_epoch=3, num_epochs=2)
  params = {'w': np.ones(2, np.float32)}
  updates, _ = tx.update({'w': np.ones(2, np.float32)}, tx.init(params), params)
  assert np.all(np.isfinite(updates['w']))


def test_train_on_validation_trains_on_both_splits_and_keeps_the_last_epoch(
    prepared_dirs, tmp_path):
  config = tiny_config(*prepared_dirs)
  config.train_on_validation = True
  results = train.train_and_evaluate(config, str(tmp_path))
  examples, held_out = input_pipeline.load_splits(tiny_config(*prepared_dirs))
  names = lambda split: examples.file_names[held_out.indices[split]].tolist()
  saved = json.loads((tmp_path / 'splits.json').read_text())
  # Training holds the plain run's training and validation images; test is unchanged.
  assert sorted(saved['train']) == sorted(names('train') + names('validation'))
  assert saved['test'] == names('test')
  assert set(saved['validation']) <= set(saved['train'])
  assert not set(saved['test']) & set(saved['train'])
  assert results['split_sizes']['train'] == (len(held_out.labels['train'])
                                             + len(held_out.labels['validation']))
  assert results['split_sizes']['test'] == len(held_out.labels['test'])
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert all(l['best'] for l in lines) and results['best_epoch'] == config.num_epochs
  assert results['model_selection'].startswith('the last epoch')
  assert 'train_on_validation' in results['test_protocol_detail']
  mngr = checkpointing.manager(tmp_path / 'checkpoints', read_only=True)
  assert mngr.all_steps() == [config.num_epochs]
  assert evaluate.evaluate(str(tmp_path), 'validation')['trained_on'] is True
  assert evaluate.evaluate(str(tmp_path), 'test')['trained_on'] is False


def test_load_splits_reads_a_data_only_config(prepared_dirs):
  """The study's report and users' own code pass only the data fields."""
  full = tiny_config(*prepared_dirs)
  fields = ('dataset', 'subset', 'data_dir', 'tfds_dir', 'image_size', 'split', 'test_split',
            'test_fraction', 'val_fraction', 'split_seed')
  _, data = input_pipeline.load_splits(ml_collections.ConfigDict({k: full[k] for k in fields}))
  _, same = input_pipeline.load_splits(full)
  assert {k: v.tolist() for k, v in data.indices.items()} == {
      k: v.tolist() for k, v in same.indices.items()}
