"""The study's networks as Flax linen modules (Keras layer semantics and initialisers)."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from charjax import conv
from charjax import dropout

# Keras's defaults: Glorot-uniform kernels, zero biases.
_KERNEL_INIT = nn.initializers.glorot_uniform()
BOTTLENECK_ACTIVATIONS = {'relu': nn.relu, 'softplus': nn.softplus}


class SubsetCNN(nn.Module):
  """Experiment 2: one CNN per character subset.

  conv 3x3 (valid) 32, ReLU -> conv 3x3 (valid) 64, ReLU -> max-pool 2 -> dropout 0.25 ->
  flatten -> dense 256, ReLU -> dropout 0.8 -> dense `num_classes` (logits).
  `conv_impl` picks the convolution's implementation (see `charjax.conv`).
  """
  num_classes: int
  conv_features: Sequence[int] = (32, 64)
  dense_features: int = 256
  conv_dropout: float = 0.25
  dense_dropout: float = 0.8
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32  # activations and products; parameters stay float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.astype(self.dtype)
    for i, features in enumerate(self.conv_features):
      last = i == len(self.conv_features) - 1
      x = conv.Conv2D(features, (3, 3), impl=self.conv_impl, kernel_init=_KERNEL_INIT,
                      pool=last, dtype=self.dtype)(x)
      if not last:
        x = nn.relu(x)
    # relu(max_pool(x)) == max_pool(relu(x)) (ReLU is monotone); pooling first quarters
    # the ReLU's work.
    x = nn.relu(x)
    x = dropout.Dropout(self.conv_dropout, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense_features, kernel_init=_KERNEL_INIT, dtype=self.dtype)(x))
    x = dropout.Dropout(self.dense_dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=_KERNEL_INIT, dtype=self.dtype)(x)


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

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, features: bool = False) -> jax.Array:
    first, second, third = self.conv_features
    conv2d = functools.partial(conv.Conv2D, kernel_size=(3, 3), impl=self.conv_impl,
                               kernel_init=_KERNEL_INIT, dtype=self.dtype)
    dense = functools.partial(nn.Dense, kernel_init=_KERNEL_INIT, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = nn.relu(conv2d(first)(x))
    x = dropout.Dropout(self.conv_dropout, deterministic=not train)(x)
    x = conv2d(second, pool=True)(x)
    x = nn.relu(x)  # after the pooling: == max_pool(relu(x)), a quarter of the ReLU's work
    x = nn.relu(conv2d(third)(x))
    x = dropout.Dropout(self.conv_dropout, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    for i in range(2):
      x = nn.relu(dense(self.dense_features)(x))
      if features and i == 1 and not self.bottleneck_features:
        return x
      x = dropout.Dropout(self.dense_dropout, deterministic=not train)(x)
    if self.bottleneck_features:
      activation = BOTTLENECK_ACTIVATIONS[self.bottleneck_activation]
      x = activation(dense(self.bottleneck_features)(x))
      if features:
        return x
    return dense(self.num_classes)(x)
