"""2x2 max-pooling with a one-pass gradient (Keras's 'valid' pooling)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _windows(x):
  n, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling, stride 2, odd edges dropped (Keras's 'valid'): `nn.max_pool`'s result.

  Forward is a reshape and a max; the gradient (a custom VJP) is one elementwise pass that
  routes each output's gradient to the first maximum of its window in row-major order
  (TF/Keras's and `nn.max_pool`'s choice where a window has ties). XLA:CPU's
  select-and-scatter gradient of `nn.max_pool` is a large part of an exp-2 train step
  (`python -m benchmarks.ablations`; docs/benchmarks.md), and autodiff of the
  reshape-max takes several passes (equality mask, tie counts, division).
  """
  return _windows(x).max(axis=(2, 4))


def _max_pool_forward(x):
  y = max_pool_2x2(x)
  return y, (x, y)


# Each window position's index in row-major order, broadcast against `_windows` (numpy:
# a jnp constant here would start JAX's backend when charjax is imported).
_POSITION = (2 * np.arange(2).reshape(1, 1, 2, 1, 1, 1)
             + np.arange(2).reshape(1, 1, 1, 1, 2, 1)).astype(np.int8)


def unpool(dy: jax.Array, positions: jax.Array, shape) -> jax.Array:
  """`max_pool_2x2`'s gradient from the pooled gradient and each window's maximum.

  `positions` (same shape as `dy`, int8 0-3) names the window element, in row-major
  order, that each pooled gradient goes to; every other element of the result, of
  `shape` (the pooled input's), is zero, including odd edges that pooling dropped.
  """
  positions = positions.reshape(dy.shape[0], dy.shape[1], 1, dy.shape[2], 1, dy.shape[3])
  dx = jnp.where(_POSITION == positions, dy[:, :, None, :, None], 0).reshape(
      dy.shape[0], dy.shape[1] * 2, dy.shape[2] * 2, dy.shape[3])
  if dx.shape != tuple(shape):
    dx = jnp.pad(dx, ((0, 0), (0, shape[1] - dx.shape[1]), (0, shape[2] - dx.shape[2]), (0, 0)))
  return dx


def _max_pool_backward(residuals, dy):
  x, y = residuals
  is_max = _windows(x) == y[:, :, None, :, None]
  first = jnp.where(is_max, _POSITION, 4).min(axis=(2, 4))
  return (unpool(dy, first, x.shape),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)
