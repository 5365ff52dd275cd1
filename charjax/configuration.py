"""The fields of an experiment config, checks of their values, and old runs' configs.

A config (`charjax/configs/*.py`) has run-wide fields (data, batch sizes, epochs, seed,
devices, dtype, augmentation) and two sub-configs handed on as they are:
`config.model` (`name` plus the module's own fields; see `charjax.nn.models`) and
`config.optimizer` (`name`, `learning_rate`, the schedule and the optimiser's own fields;
see `charjax.optim`). The sub-configs are checked by what receives them (the module's
dataclass, the optimiser's signature), so a new model or optimiser needs no entry here.
"""

from __future__ import annotations

import ml_collections

from charjax import optim
from charjax.data import augment
from charjax.data import registry
from charjax.nn import conv
from charjax.nn import models

# Run-wide field name -> accepted Python type. charjax/configs/default.py declares these.
FIELDS = {
    'dataset': str, 'subset': str, 'data_dir': str, 'tfds_dir': str, 'image_size': int,
    'split': str, 'test_split': str, 'test_fraction': float, 'val_fraction': float, 'split_seed': int,
    'train_on_validation': bool,
    'model': dict, 'optimizer': dict, 'conv_impl': str, 'dtype': str,
    'batch_size': int, 'eval_batch_size': int, 'num_epochs': int, 'seed': int,
    'checkpoint_every_epochs': int, 'num_devices': int, 'init_from': str,
    'augment': bool, 'augment_rotation_degrees': float, 'augment_zoom': float,
    'augment_translate': float, 'augment_erase': float, 'augment_elastic_alpha': float,
    'augment_elastic_sigma': float, 'augment_mix': str, 'augment_mix_alpha': float,
    'augment_mix_probability': float, 'label_smoothing': float,
    'mix_in': str, 'mix_in_per_epoch': float,
}

# Run-wide fields added after runs had been saved without them, each with the value that
# reproduces how those runs were trained.
ADDED_LATER = {'augment': False, 'augment_rotation_degrees': 15.0, 'augment_zoom': 0.2,
               'num_devices': 0, 'dtype': 'float32',
               # Older runs carved their test split; 'auto' does so too on the data they
               # had (data.json refuses a resume on data with an official test split).
               'test_split': 'auto', 'init_from': '', 'augment_translate': 0.0,
               'label_smoothing': 0.0, 'augment_erase': 0.0, 'augment_elastic_alpha': 0.0,
               'augment_elastic_sigma': 4.0, 'train_on_validation': False,
               'mix_in': '', 'mix_in_per_epoch': 1.0, 'augment_mix': '',
               'augment_mix_alpha': 1.0, 'augment_mix_probability': 1.0}

# Runs saved before `config.model` and `config.optimizer` were sub-configs kept these
# fields at the top level.
_FLAT_MODEL_FIELDS = ('conv_features', 'dense_features', 'conv_dropout', 'dense_dropout')
_FLAT_BOTTLENECK_FIELDS = {'bottleneck_features': 0, 'bottleneck_activation': 'relu'}
_FLAT_OPTIMIZER_FIELDS = {'learning_rate': 'learning_rate', 'rmsprop_rho': 'rho',
                          'rmsprop_epsilon': 'epsilon'}

# What the networks compute in: float32 (the study's), or bfloat16 activations and products
# with float32 parameters, optimizer state and loss.
DTYPES = ('float32', 'bfloat16')


class ConfigError(ValueError):
  """A config has unknown fields or impossible values."""


def from_saved(saved: dict) -> dict:
  """A run's saved `config.json` content in today's form (any charjax version's run)."""
  saved = {**ADDED_LATER, **saved}
  if isinstance(saved.get('model'), str):  # flat: model and optimizer fields at the top
    model = {'name': saved['model']}
    model.update({k: saved.pop(k) for k in _FLAT_MODEL_FIELDS if k in saved})
    bottleneck = {k: saved.pop(k, default) for k, default in _FLAT_BOTTLENECK_FIELDS.items()}
    if model['name'] == 'AllClassesCNN':
      model.update(bottleneck)
    saved['model'] = model
    optimizer = {'name': 'keras_rmsprop'}
    optimizer.update({new: saved.pop(old) for old, new in _FLAT_OPTIMIZER_FIELDS.items()
                      if old in saved})
    saved['optimizer'] = {**optimizer, 'schedule': 'constant', 'warmup_epochs': 0.0}
  return saved


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
    accepted = {float: (int, float), dict: (dict, ml_collections.ConfigDict)}.get(kind, kind)
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, accepted):
      problems.append(f'{key}={value!r} should be of type {kind.__name__}')
  if problems:
    raise ConfigError('Invalid config: ' + '; '.join(problems))

  def need(condition, message):
    if not condition:
      problems.append(message)

  try:
    registry.get(config.dataset).class_names(config.subset)
  except registry.UnknownDatasetError as e:
    problems.append(str(e))
  need(config.split in ('stratified', 'writer'), f'split={config.split!r} is not '
       '"stratified" or "writer"')
  need(config.test_split in ('auto', 'official', 'carved'),
       f'test_split={config.test_split!r} is not "auto", "official" or "carved"')
  need(config.image_size >= 8, f'image_size={config.image_size} must be at least 8')
  need(0 < config.test_fraction < 1, f'test_fraction={config.test_fraction} not in (0, 1)')
  need(0 < config.val_fraction < 1, f'val_fraction={config.val_fraction} not in (0, 1)')
  need(config.batch_size > 0, f'batch_size={config.batch_size} must be positive')
  need(config.eval_batch_size > 0, f'eval_batch_size={config.eval_batch_size} must be positive')
  need(config.num_epochs > 0, f'num_epochs={config.num_epochs} must be positive')
  need(config.dtype in DTYPES, f'dtype={config.dtype!r} is not one of {", ".join(DTYPES)}')
  need(config.num_devices >= 0, f'num_devices={config.num_devices} is negative (0: all)')
  need(config.checkpoint_every_epochs > 0,
       f'checkpoint_every_epochs={config.checkpoint_every_epochs} must be positive')
  need(config.conv_impl in conv.IMPLS,
       f'conv_impl={config.conv_impl!r} is not one of {", ".join(conv.IMPLS)}')
  need(0 <= config.augment_rotation_degrees <= 180,
       f'augment_rotation_degrees={config.augment_rotation_degrees} not in [0, 180]')
  need(0 <= config.augment_zoom < 1, f'augment_zoom={config.augment_zoom} not in [0, 1)')
  need(0 <= config.augment_translate < 0.5,
       f'augment_translate={config.augment_translate} not in [0, 0.5)')
  need(0 <= config.augment_erase <= 1,
       f'augment_erase={config.augment_erase} not in [0, 1]')
  need(not config.augment_erase or config.augment,
       f'augment_erase={config.augment_erase} needs augment=True (erasing is part of the '
       'training augmentation)')
  need(config.augment_elastic_alpha >= 0,
       f'augment_elastic_alpha={config.augment_elastic_alpha} is negative (0: off)')
  need(config.augment_elastic_sigma > 0,
       f'augment_elastic_sigma={config.augment_elastic_sigma} must be positive')
  need(not config.augment_elastic_alpha or config.augment,
       f'augment_elastic_alpha={config.augment_elastic_alpha} needs augment=True (the '
       'distortion is part of the training augmentation)')
  need(config.augment_mix in ('',) + augment.MIXES,
       f'augment_mix={config.augment_mix!r} is not one of \'\', {", ".join(augment.MIXES)}')
  need(config.augment_mix_alpha > 0,
       f'augment_mix_alpha={config.augment_mix_alpha} must be positive')
  need(0 < config.augment_mix_probability <= 1,
       f'augment_mix_probability={config.augment_mix_probability} not in (0, 1]')
  need(not config.augment_mix or config.augment,
       f'augment_mix={config.augment_mix!r} needs augment=True (mixing is part of the '
       'training augmentation)')
  need(0 <= config.label_smoothing < 1,
       f'label_smoothing={config.label_smoothing} not in [0, 1)')
  need(config.mix_in_per_epoch > 0,
       f'mix_in_per_epoch={config.mix_in_per_epoch} must be positive')
  need(config.mix_in != config.dataset, f'mix_in={config.mix_in!r} is the run\'s own dataset')
  if config.mix_in:
    try:
      registry.get(config.mix_in)
    except registry.UnknownDatasetError as e:
      problems.append(f'mix_in: {e}')
  try:
    models.create(config.model, num_classes=2, conv_impl=config.conv_impl)
  except models.ModelConfigError as e:
    problems.append(f'model: {e}')
  try:
    optim.create(config.optimizer, steps_per_epoch=1, num_epochs=max(config.num_epochs, 1))
  except optim.OptimizerConfigError as e:
    problems.append(str(e))
  if problems:
    raise ConfigError('Invalid config: ' + '; '.join(problems))


def check_against_data(config: ml_collections.ConfigDict, num_train: int) -> None:
  """Raises `ConfigError` when the config cannot work with a training set of `num_train`."""
  if config.batch_size > num_train:
    raise ConfigError(f'batch_size={config.batch_size} is larger than the training set '
                      f'({num_train} images of {config.dataset}/{config.subset}).')
