"""The study's networks as Flax linen modules, and the registry models are found in.

A run builds its network as `create(config.model, num_classes=..., conv_impl=..., dtype=...)`:
`config.model.name` names a registered module (`@register`, e.g. `'SubsetCNN'`) or gives a
module path (`'mylab.nets.WideCNN'`), and the other fields of `config.model` are passed to it
as keyword arguments; the module's own dataclass fields say which are accepted, and its
`__post_init__` checks their values. The run-wide `conv_impl` and `dtype` are passed to the
modules that declare them. A new model therefore takes two files: its module and its config.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from charjax.nn import conv
from charjax.nn import dense as dense_lib

MODELS: dict[str, type[nn.Module]] = {}


class ModelConfigError(ValueError):
  """`config.model` names no known module, or gives it fields or values it does not take."""


def register(cls: type[nn.Module]) -> type[nn.Module]:
  """Class decorator: makes `cls` available as `config.model.name = cls.__name__`."""
  MODELS[cls.__name__] = cls
  return cls


def get(name: str) -> type[nn.Module]:
  """The registered module `name`, or the class at the module path `name` (`pkg.mod.Cls`)."""
  if name in MODELS:
    return MODELS[name]
  module_name, _, attr = name.rpartition('.')
  cls = None
  if module_name:
    try:
      cls = getattr(importlib.import_module(module_name), attr, None)
    except ModuleNotFoundError as e:
      if not (e.name and module_name.startswith(e.name)):
        raise  # the model's module imports something missing: say so as it is
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ModelConfigError(
        f'model.name={name!r} is not one of {", ".join(MODELS)} nor the import path of a '
        'flax.linen.Module (package.module.Class).')
  return cls


def create(model_config: Mapping[str, Any], *, num_classes: int, **run_wide) -> nn.Module:
  """`Model(num_classes=..., **model_config)` for the module `model_config['name']`.

  `run_wide` settings (`conv_impl`, `dtype`) are passed only to modules that declare them.
  Sequences become tuples (Flax modules are hashable). Raises `ModelConfigError` naming
  the fields the module accepts when `model_config` gives another, or a value it refuses.
  """
  fields = dict(model_config)
  if 'name' not in fields:
    raise ModelConfigError('config.model has no name (a registered model or a module path).')
  cls = get(fields.pop('name'))
  accepted = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(fields) - accepted)
  if unknown:
    raise ModelConfigError(
        f'{cls.__name__} has no field {", ".join(unknown)}; its fields are '
        f'{", ".join(sorted(accepted - {"num_classes"} - set(run_wide)))}.')
  kwargs = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in fields.items()}
  kwargs.update({k: v for k, v in run_wide.items() if k in accepted})
  try:
    return cls(num_classes=num_classes, **kwargs)
  except (TypeError, ValueError) as e:
    raise ModelConfigError(f'{cls.__name__}: {e}') from None


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def _check_cnn_fields(module) -> None:
  _check(len(module.conv_features) > 0 and all(f > 0 for f in module.conv_features),
         f'conv_features={module.conv_features} must be positive')
  _check(module.dense_features > 0, f'dense_features={module.dense_features} must be positive')
  for key in ('conv_dropout', 'dense_dropout'):
    _check(0 <= getattr(module, key) < 1, f'{key}={getattr(module, key)} not in [0, 1)')


# Keras's defaults: Glorot-uniform kernels, zero biases.
_KERNEL_INIT = nn.initializers.glorot_uniform()
BOTTLENECK_ACTIVATIONS = {'relu': nn.relu, 'softplus': nn.softplus}


@register
class SubsetCNN(nn.Module):
  """Experiment 2: one CNN per character subset.

  conv 3x3 (valid) 32, ReLU -> conv 3x3 (valid) 64, ReLU -> max-pool 2 -> dropout 0.25 ->
  flatten -> dense 256, ReLU -> dropout 0.8 -> dense `num_classes` (logits).
  `conv_impl` picks the convolution's implementation (see `charjax.nn.conv`).
  """
  num_classes: int
  conv_features: Sequence[int] = (32, 64)
  dense_features: int = 256
  conv_dropout: float = 0.25
  dense_dropout: float = 0.8
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32  # activations and products; parameters stay float32

  def __post_init__(self):
    _check_cnn_fields(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.astype(self.dtype)
    for i, features in enumerate(self.conv_features):
      last = i == len(self.conv_features) - 1
      # The last layer pools, then applies its ReLU (relu(max_pool(x)) == max_pool(relu(x)),
      # ReLU being monotone: a quarter of the work) and the dropout.
      x = conv.Conv2D(features, (3, 3), impl=self.conv_impl, kernel_init=_KERNEL_INIT,
                      pool=last, relu=True, dropout_rate=self.conv_dropout if last else 0.0,
                      dtype=self.dtype)(x, deterministic=not train)
    x = x.reshape((x.shape[0], -1))
    dense = functools.partial(dense_lib.Dense, impl=self.conv_impl, kernel_init=_KERNEL_INIT,
                              dtype=self.dtype)
    # ReLU and dropout in the layer: only the products dropout keeps are computed.
    x = dense(self.dense_features, relu=True, dropout_rate=self.dense_dropout)(
        x, deterministic=not train)
    return dense(self.num_classes)(x)


@register
class AllClassesCNN(nn.Module):
  """Experiment 3: one CNN for all 58 classes (its 512-unit features feed the SVCs).

  conv 128, ReLU -> dropout 0.25 -> conv 64, ReLU -> max-pool 2 -> conv 32, ReLU ->
  dropout 0.25 -> flatten -> dense 512, ReLU -> dropout 0.7 -> dense 512, ReLU ->
  dropout 0.7 -> dense `num_classes` (logits). All convolutions 3x3, valid.

  `bottleneck_features` > 0 inserts a dense layer of that width before the classifier,
  activated by `bottleneck_activation` ('relu' or 'softplus'): the study's 2-unit variant
  whose activations are plotted as a feature map.
  With `features=True` the call returns the input of the last dense layer (the 512 ReLU
  features of the SVCs, or the bottleneck's activations) instead of the logits.
  """
  num_classes: int = 58
  conv_features: Sequence[int] = (128, 64, 32)
  dense_features: int = 512
  conv_dropout: float = 0.25
  dense_dropout: float = 0.7
  conv_impl: str = 'auto'
  bottleneck_features: int = 0
  bottleneck_activation: str = 'relu'
  dtype: Any = jnp.float32  # activations and products; parameters stay float32

  def __post_init__(self):
    _check_cnn_fields(self)
    _check(len(self.conv_features) == 3,
           f'conv_features={self.conv_features} must give 3 layers')
    _check(self.bottleneck_features >= 0,
           f'bottleneck_features={self.bottleneck_features} is negative')
    _check(self.bottleneck_activation in BOTTLENECK_ACTIVATIONS,
           f'bottleneck_activation={self.bottleneck_activation!r} is not one of '
           f'{sorted(BOTTLENECK_ACTIVATIONS)}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, features: bool = False) -> jax.Array:
    first, second, third = self.conv_features
    conv2d = functools.partial(conv.Conv2D, kernel_size=(3, 3), impl=self.conv_impl,
                               kernel_init=_KERNEL_INIT, dtype=self.dtype)
    dense = functools.partial(dense_lib.Dense, impl=self.conv_impl, kernel_init=_KERNEL_INIT,
                              dtype=self.dtype)
    x = x.astype(self.dtype)
    x = conv2d(first, relu=True, dropout_rate=self.conv_dropout)(x, deterministic=not train)
    # ReLU after the pooling: == max_pool(relu(x)), a quarter of the ReLU's work.
    x = conv2d(second, pool=True, relu=True)(x)
    x = conv2d(third, relu=True, dropout_rate=self.conv_dropout)(x, deterministic=not train)
    x = x.reshape((x.shape[0], -1))
    for i in range(2):
      if features and i == 1 and not self.bottleneck_features:
        return dense(self.dense_features, relu=True)(x)  # the SVCs' features: no dropout
      x = dense(self.dense_features, relu=True, dropout_rate=self.dense_dropout)(
          x, deterministic=not train)
    if self.bottleneck_features:
      activation = BOTTLENECK_ACTIVATIONS[self.bottleneck_activation]
      x = activation(dense(self.bottleneck_features)(x))
      if features:
        return x
    return dense(self.num_classes)(x)


# Modules defined in their own files register themselves on import.
from charjax.nn import resnet  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401
