"""A small residual network for the recipe beyond the study (issue: state-of-the-art accuracy).

Three stages at 36x36, 18x18 and 9x9 (2x2 max-pooling between them), each of
`blocks_per_stage` residual blocks of two 3x3 convolutions; global average pooling, dropout
and the classifier. Convolutions keep their input's size ('SAME': zero padding, then
charjax's valid `Conv2D`, so the native CPU kernels still compute them); a block whose
width changes adds a 1x1 projection to its shortcut.

Normalisation is GroupNorm, not BatchNorm: it has no running statistics, so the model's
whole state is its parameters, and everything built on `{'params': ...}` (data-parallel
steps, seeds trained together under `vmap`, transfer, export) works unchanged; it also does
not depend on the batch, which is split over devices.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from charjax.nn import conv
from charjax.nn import dropout
from charjax.nn import models
from charjax.nn import pooling


class SameConv(nn.Module):
  """3x3 stride-1 convolution whose output has its input's height and width."""
  features: int
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return conv.Conv2D(self.features, (3, 3), impl=self.impl, dtype=self.dtype,
                       kernel_init=nn.initializers.he_normal())(x)


class ResidualBlock(nn.Module):
  """relu(shortcut(x) + norm(conv(relu(norm(conv(x)))))); the shortcut is x, or a 1x1
  projection where the width changes. The second norm's scale starts at 0, so each block
  starts as the identity (Goyal et al., 2017)."""
  features: int
  groups: int = 8
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    norm = lambda **kw: nn.GroupNorm(num_groups=self.groups, dtype=self.dtype, **kw)
    y = nn.relu(norm()(SameConv(self.features, self.impl, self.dtype)(x)))
    y = norm(scale_init=nn.initializers.zeros_init())(
        SameConv(self.features, self.impl, self.dtype)(y))
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, use_bias=False, dtype=self.dtype, name='projection')(x)
    return nn.relu(x + y)


@models.register
class ResNet(nn.Module):
  """stem conv -> stages of residual blocks (max-pool 2x2 before every stage but the
  first) -> global average pool -> dropout -> dense `num_classes` (logits).

  With `features=True` the call returns the pooled features (the classifier's input).
  """
  num_classes: int
  stage_features: Sequence[int] = (32, 64, 128)
  blocks_per_stage: int = 1
  groups: int = 8
  dropout: float = 0.3
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32  # activations and products; parameters stay float32

  def __post_init__(self):
    if not self.stage_features or any(f <= 0 for f in self.stage_features):
      raise ValueError(f'stage_features={self.stage_features} must be positive')
    if any(f % self.groups for f in self.stage_features):
      raise ValueError(f'stage_features={self.stage_features} must be multiples of '
                       f'groups={self.groups}')
    if self.blocks_per_stage < 1:
      raise ValueError(f'blocks_per_stage={self.blocks_per_stage} must be at least 1')
    if not 0 <= self.dropout < 1:
      raise ValueError(f'dropout={self.dropout} not in [0, 1)')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, features: bool = False) -> jax.Array:
    x = x.astype(self.dtype)
    x = SameConv(self.stage_features[0], self.conv_impl, self.dtype, name='stem')(x)
    x = nn.relu(nn.GroupNorm(num_groups=self.groups, dtype=self.dtype, name='stem_norm')(x))
    for stage, width in enumerate(self.stage_features):
      if stage:
        x = pooling.max_pool_2x2(x)
      for _ in range(self.blocks_per_stage):
        x = ResidualBlock(width, self.groups, self.conv_impl, self.dtype)(x)
    x = jnp.mean(x, axis=(1, 2))
    if features:
      return x
    x = dropout.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
