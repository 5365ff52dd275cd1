"""The recipe beyond the study: label smoothing, parameter averaging, shifts, the ResNet."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charjax import optim
from charjax import runs
from charjax import train
from charjax.data import input_pipeline
from tests.test_train import tiny_config


def test_label_smoothing_loss_matches_hand_computation():
  logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
  labels = jnp.array([0, 2])
  mask = jnp.array([True, True])
  e = 0.1
  log_p = np.log(np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(1, keepdims=True))
  targets = np.full((2, 3), e / 3) + (1 - e) * np.eye(3)[[0, 2]]
  expected = -(targets * log_p).sum()
  got = train._batch_metrics(logits, labels, mask, label_smoothing=e)  # pylint: disable=protected-access
  assert float(got['loss']) == pytest.approx(expected, rel=1e-6)
  plain = train._batch_metrics(logits, labels, mask)  # pylint: disable=protected-access
  assert float(plain['loss']) == pytest.approx(-log_p[[0, 1], [0, 2]].sum(), rel=1e-6)
  assert int(got['correct']) == int(plain['correct']) == 1


def test_mixed_targets_loss_matches_hand_computation():
  logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0], [1.0, 0.0, -1.0]])
  labels, others = jnp.array([0, 2, 1]), jnp.array([1, 1, 2])
  weights = jnp.array([0.7, 0.2, 1.0])
  mask = jnp.array([True, True, True])
  e = 0.1
  log_p = np.log(np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(1, keepdims=True))
  eye = np.eye(3)
  w = np.asarray(weights)[:, None]
  targets = (1 - e) * (w * eye[[0, 2, 1]] + (1 - w) * eye[[1, 1, 2]]) + e / 3
  got = train._batch_metrics(logits, labels, mask, e, (others, weights))  # pylint: disable=protected-access
  assert float(got['loss']) == pytest.approx(-(targets * log_p).sum(), rel=1e-6)
  # Correct for the label of larger weight: 0 (w 0.7; predicted 0), 1 (w 0.2; predicted 1);
  # the third keeps its own label 1 (w 1; predicted 0).
  assert int(got['correct']) == 2
  # Weights of 1 are the plain (smoothed) objective.
  same = train._batch_metrics(logits, labels, mask, e, (others, jnp.ones(3)))  # pylint: disable=protected-access
  plain = train._batch_metrics(logits, labels, mask, label_smoothing=e)  # pylint: disable=protected-access
  assert float(same['loss']) == pytest.approx(float(plain['loss']), rel=1e-6)


def recipe_config(data_dir, tfds_dir):
  config = tiny_config(data_dir, tfds_dir)
  config.model = {'name': 'ResNet', 'stage_features': (16, 32), 'blocks_per_stage': 1,
                  'groups': 8, 'dropout': 0.1}
  config.optimizer = {'name': 'adamw', 'learning_rate': 3e-3, 'schedule': 'cosine',
                      'warmup_epochs': 1.0, 'weight_decay': 1e-4, 'ema_decay': 0.9}
  config.label_smoothing = 0.1
  config.augment = True
  config.augment_translate = 0.1
  config.augment_erase = 0.5
  config.augment_elastic_alpha = 8.0
  return config


def test_recipe_run_is_evaluated_with_the_parameters_average(prepared_dirs, tmp_path):
  config = recipe_config(*prepared_dirs)
  results = train.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert all(np.isfinite(l['train_loss']) and np.isfinite(l['val_loss']) for l in lines)
  # Warm-up then cosine: the rate rises over epoch 1 and decays after.
  assert lines[0]['learning_rate'] == 0.0 and lines[1]['learning_rate'] > lines[2]['learning_rate']

  _, _, state, _ = runs.restore_best(tmp_path)
  cfg = runs.load_config(tmp_path)
  model = train.create_model(cfg, 10)
  raw = train.create_train_state(cfg, model, jax.random.key(0), cfg.image_size)
  from charjax import checkpointing
  with checkpointing.manager(tmp_path / 'checkpoints', read_only=True) as mngr:
    raw = checkpointing.restore(mngr, raw, results['best_epoch'])
  average = optim.evaluation_params(raw.params, raw.opt_state)
  # restore_best hands out the average, which is not the raw parameters ...
  jax.tree.map(np.testing.assert_array_equal, state.params, average)
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(average), jax.tree.leaves(raw.params))) > 1e-4
  # ... and the run's test figures are the average's.
  _, data = input_pipeline.load_splits(cfg)
  sums = train.evaluate(raw, data.images['test'], data.labels['test'], batch_size=20)
  n = results['split_sizes']['test']
  assert float(sums['loss']) / n == pytest.approx(results['test_loss'], rel=1e-5)
  logits = model.apply({'params': state.params}, data.images['test'], train=False)
  assert float(jnp.mean(jnp.argmax(logits, -1) == data.labels['test'])) == pytest.approx(
      results['test_accuracy'])


@pytest.mark.slow
def test_a_resnet_on_all_58_classes_scores_each_subset_and_feeds_the_svcs(prepared_dirs,
                                                                           tmp_path):
  """The recipe on NHCD's 58 classes: per-subset accuracy in results.json, and experiment
  3's SVCs fitted on the ResNet's pooled features (the study's pipeline, modern network)."""
  from charjax.study import specialise
  config = recipe_config(*prepared_dirs)
  config.subset, config.num_epochs = 'all', 1
  results = train.train_and_evaluate(config, str(tmp_path / 'cnn'))
  per_subset = results['per_subset_accuracy']
  assert list(per_subset) == ['numerals', 'vowels', 'consonants']
  svcs = specialise.run(tmp_path / 'cnn', tmp_path / 'svc', C=(10.0,), gamma=(0.1,), folds=2)
  assert svcs['feature_dim'] == 32  # the last stage's width: the pooled features
  sizes = {name: s['test_size'] for name, s in svcs['subsets'].items()}
  assert sum(sizes.values()) == results['split_sizes']['test']
  for name, s in svcs['subsets'].items():
    # The same 58-way decisions on the same test images, counted by two pieces of code.
    assert s['cnn_test_accuracy'] == pytest.approx(per_subset[name])
    assert 0.0 <= s['test_accuracy'] <= 1.0
  overall = sum(per_subset[n] * sizes[n] for n in sizes) / sum(sizes.values())
  assert overall == pytest.approx(results['test_accuracy'])
