"""The study's networks as Flax linen modules (Keras layer semantics and initialisers)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from charjax import conv

# Keras's defaults: Glorot-uniform kernels, zero biases.
_KERNEL_INIT = nn.initializers.glorot_uniform()


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

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for features in self.conv_features:
      x = conv.Conv2D(features, (3, 3), impl=self.conv_impl, kernel_init=_KERNEL_INIT)(x)
      x = nn.relu(x)
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(self.conv_dropout, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense_features, kernel_init=_KERNEL_INIT)(x))
    x = nn.Dropout(self.dense_dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=_KERNEL_INIT)(x)
