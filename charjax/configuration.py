"""The fields every experiment config declares, and checks of their values."""

from __future__ import annotations

import ml_collections

from charjax import conv
from charjax import models

# Field name -> accepted Python types. configs/default.py declares exactly these.
FIELDS = {
    'dataset': str, 'subset': str, 'data_dir': str, 'tfds_dir': str, 'image_size': int,
    'split': str, 'test_fraction': float, 'val_fraction': float, 'split_seed': int,
    'model': str, 'conv_features': tuple, 'dense_features': int, 'conv_dropout': float,
    'dense_dropout': float, 'conv_impl': str, 'bottleneck_features': int,
    'bottleneck_activation': str,
    'learning_rate': float, 'rmsprop_rho': float, 'rmsprop_epsilon': float,
    'batch_size': int, 'eval_batch_size': int, 'num_epochs': int, 'seed': int,
    'checkpoint_every_epochs': int, 'num_devices': int, 'dtype': str,
    'augment': bool, 'augment_rotation_degrees': float, 'augment_zoom': float,
}

# Fields added after runs had been saved without them, each with the value that reproduces
# how those runs were trained (no bottleneck, no augmentation).
ADDED_LATER = {'bottleneck_features': 0, 'bottleneck_activation': 'relu', 'augment': False,
               'augment_rotation_degrees': 15.0, 'augment_zoom': 0.2, 'num_devices': 0,
               'dtype': 'float32'}

# What the networks compute in: float32 (the study's), or bfloat16 activations and products
# with float32 parameters, optimizer state and loss.
DTYPES = ('float32', 'bfloat16')

SUBSETS = {'nhcd': ('numerals', 'vowels', 'consonants', 'all'), 'dhcd': ('all',)}


class ConfigError(ValueError):
  """A config has unknown fields or impossible values."""


def from_saved(saved: dict) -> dict:
  """A run's saved `config.json` content, with fields added since it was saved filled in."""
  return {**ADDED_LATER, **saved}


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` listing every unknown field and impossible value of `config`."""
  problems = []
  unknown = sorted(set(config.keys()) - set(FIELDS))
  missing = sorted(set(FIELDS) - set(config.keys()))
  if unknown:
    problems.append(f'unknown fields {unknown}')
  if missing:
    problems.append(f'missing fields {missing}')
  for key, kind in FIELDS.items():
    if key not in config:
      continue
    value = config[key]
    accepted = (int, float) if kind is float else ((tuple, list) if kind is tuple else kind)
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, accepted):
      problems.append(f'{key}={value!r} should be of type {kind.__name__}')
  if problems:
    raise ConfigError('Invalid config: ' + '; '.join(problems))

  def need(condition, message):
    if not condition:
      problems.append(message)

  need(config.dataset in SUBSETS, f'dataset={config.dataset!r} is not one of {list(SUBSETS)}')
  need(config.subset in SUBSETS.get(config.dataset, ()),
       f'subset={config.subset!r} is not one of {SUBSETS.get(config.dataset)}')
  need(config.split in ('stratified', 'writer'), f'split={config.split!r} is not '
       '"stratified" or "writer"')
  need(config.image_size >= 8, f'image_size={config.image_size} must be at least 8')
  need(0 < config.test_fraction < 1, f'test_fraction={config.test_fraction} not in (0, 1)')
  need(0 < config.val_fraction < 1, f'val_fraction={config.val_fraction} not in (0, 1)')
  need(config.learning_rate > 0, f'learning_rate={config.learning_rate} must be positive')
  need(0 <= config.rmsprop_rho < 1, f'rmsprop_rho={config.rmsprop_rho} not in [0, 1)')
  need(config.rmsprop_epsilon >= 0, f'rmsprop_epsilon={config.rmsprop_epsilon} is negative')
  need(config.batch_size > 0, f'batch_size={config.batch_size} must be positive')
  need(config.eval_batch_size > 0, f'eval_batch_size={config.eval_batch_size} must be positive')
  need(config.num_epochs > 0, f'num_epochs={config.num_epochs} must be positive')
  need(config.dtype in DTYPES, f'dtype={config.dtype!r} is not one of {", ".join(DTYPES)}')
  need(config.num_devices >= 0, f'num_devices={config.num_devices} is negative (0: all)')
  need(config.checkpoint_every_epochs > 0,
       f'checkpoint_every_epochs={config.checkpoint_every_epochs} must be positive')
  need(len(config.conv_features) > 0 and all(f > 0 for f in config.conv_features),
       f'conv_features={config.conv_features} must be positive')
  need(config.conv_impl in conv.IMPLS,
       f'conv_impl={config.conv_impl!r} is not one of {", ".join(conv.IMPLS)}')
  need(config.bottleneck_features >= 0,
       f'bottleneck_features={config.bottleneck_features} is negative')
  need(config.bottleneck_features == 0 or config.model == 'AllClassesCNN',
       'bottleneck_features is only available for model="AllClassesCNN"')
  need(config.bottleneck_activation in models.BOTTLENECK_ACTIVATIONS,
       f'bottleneck_activation={config.bottleneck_activation!r} is not one of '
       f'{sorted(models.BOTTLENECK_ACTIVATIONS)}')
  need(config.dense_features > 0, f'dense_features={config.dense_features} must be positive')
  need(0 <= config.augment_rotation_degrees <= 180,
       f'augment_rotation_degrees={config.augment_rotation_degrees} not in [0, 180]')
  need(0 <= config.augment_zoom < 1, f'augment_zoom={config.augment_zoom} not in [0, 1)')
  for key in ('conv_dropout', 'dense_dropout'):
    need(0 <= config[key] < 1, f'{key}={config[key]} not in [0, 1)')
  if problems:
    raise ConfigError('Invalid config: ' + '; '.join(problems))


def check_against_data(config: ml_collections.ConfigDict, num_train: int) -> None:
  """Raises `ConfigError` when the config cannot work with a training set of `num_train`."""
  if config.batch_size > num_train:
    raise ConfigError(f'batch_size={config.batch_size} is larger than the training set '
                      f'({num_train} images of {config.dataset}/{config.subset}).')
