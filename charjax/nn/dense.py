"""A dense layer whose ReLU and dropout are part of it, computing only what dropout keeps.

Dropout at rate r after a dense layer zeroes a fraction r of its outputs, and their
gradients: exp 2's 256-unit layer (dropout 0.8) keeps a fifth of its products, exp 3's
(0.7) under a third. `Dense(relu=True, dropout_rate=r)` draws its mask first and, with
charjax's native CPU kernels (`native/dense.cc`) and a keep probability of at most
`SPARSE_MAX_KEEP`, computes the forward product only where the mask keeps and the backward
products skipping the gradient's zeros (those of dropped and of ReLU-clipped outputs):
`masked_matmul`. The result is the unfused layer's:
`dropout.Dropout(r)(relu(x @ kernel + bias), rng=rng)` with the same mask (`keep_mask`),
the products summed in another order. Elsewhere (higher keep probabilities, GPU, bfloat16,
`impl='xla'`, `SPARSE_DROPOUT` off) the layer is exactly that unfused computation.

`Dense` keeps `nn.Dense`'s parameter names and shapes (and, being named `Dense`, its
auto-generated module names), so checkpoints do not depend on which layer made them.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from charjax.nn import conv
from charjax.nn import dropout
from charjax.nn import native_conv

# Whether `Dense` computes only the products its dropout keeps (read when a model is traced;
# `benchmarks.ablations --choices=dense` times both).
SPARSE_DROPOUT = True
# The largest keep probability for which the layer computes only the kept products. Each kept
# product is a dot product streaming the kernel from cache, several times slower per
# multiply-add than XLA's dense product, and the gradients' row sums are slower per
# multiply-add too: on 2 CPU cores (`benchmarks.ablations --choices=dense`) exp 2's train step
# (keep 0.2) is 1.32x faster with the sparse layer, exp 3's (keep 0.3) no faster.
SPARSE_MAX_KEEP = 0.25


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def masked_matmul(x: jax.Array, kernel: jax.Array, mask: jax.Array,
                  native_forward: bool = True) -> jax.Array:
  """`where(mask, x @ kernel, 0)` for x [n, K], kernel [K, m], mask [n, m] (bool), float32,
  on CPU with the native kernels. The forward computes only the kept products
  (`native_forward`), or all of them with XLA's product and then masks them; the gradients
  skip the output gradient's zeros (with dropout at rate r, a fraction r at least)."""
  _check(x, kernel, mask)
  return _masked_matmul(x, kernel.T, mask, native_forward)


def _check(x, kernel, mask):
  if x.ndim != 2 or kernel.ndim != 2 or x.shape[1] != kernel.shape[0]:
    raise ValueError(f'masked_matmul needs x [n, K] and kernel [K, m]; got {x.shape}, '
                     f'{kernel.shape}')
  if mask.shape != (x.shape[0], kernel.shape[1]):
    raise ValueError(f'mask {mask.shape} is not the product\'s shape '
                     f'{(x.shape[0], kernel.shape[1])}')
  if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
    raise TypeError(f'masked_matmul takes float32, got {x.dtype}, {kernel.dtype}')


def _masked_matmul(x, kernel_t, mask, native_forward):
  """The forward from the transposed kernel [m, K] (the native kernels read its rows)."""
  if not native_forward:
    return jnp.where(mask, jnp.dot(x, kernel_t.T), 0)
  return native_conv._call(  # pylint: disable=protected-access
      'masked_matmul', lambda x, w, m: [(x.shape[0], w.shape[0])],
      x, kernel_t, mask.astype(jnp.int8), batched=(True, False, True))[0]


def _masked_matmul_forward(x, kernel, mask, native_forward):
  _check(x, kernel, mask)
  kernel_t = kernel.T  # once, for the forward and the input gradient
  return _masked_matmul(x, kernel_t, mask, native_forward), (x, kernel_t, mask)


def _masked_matmul_backward(native_forward, residuals, g):
  del native_forward
  x, kernel_t, mask = residuals
  g = jnp.where(mask, g, 0)  # the dropped outputs are constants
  call = native_conv._call  # pylint: disable=protected-access
  dx = call('sparse_input_grad', lambda g, w: [(g.shape[0], w.shape[1])], g, kernel_t,
            batched=(True, False))[0]
  dkernel = call('sparse_kernel_grad', lambda x, g: [(x.shape[1], g.shape[1])], x, g,
                 batched=(True, True), summed=True)[0]
  return dx, dkernel, None


masked_matmul.defvjp(_masked_matmul_forward, _masked_matmul_backward)


class Dense(nn.Module):
  """`nn.Dense` with an optional ReLU and dropout after it, in one layer.

  With `relu`, a ReLU follows the product; with `dropout_rate` > 0 and not `deterministic`,
  `dropout.Dropout(dropout_rate)`, its key from the 'dropout' rng collection. On CPU with
  charjax's native kernels (`impl`: as `conv.resolve_impl`), float32, `SPARSE_DROPOUT` and a
  keep probability up to `SPARSE_MAX_KEEP`, only the kept outputs of [n, features] inputs
  are computed (`masked_matmul`); otherwise all of them, then the dropout.
  """
  features: int
  relu: bool = False
  dropout_rate: float = 0.0
  deterministic: bool | None = None
  impl: str = 'auto'
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    if not 0 <= self.dropout_rate < 1:
      raise ValueError(f'Dense: dropout_rate={self.dropout_rate} not in [0, 1)')
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    drop = bool(self.dropout_rate) and not nn.merge_param(
        'deterministic', self.deterministic, deterministic)
    if not drop:
      y = jnp.dot(x, kernel) + bias
      return nn.relu(y) if self.relu else y
    rng = self.make_rng('dropout')
    keep = 1.0 - self.dropout_rate
    sparse = (SPARSE_DROPOUT and x.ndim == 2 and keep <= SPARSE_MAX_KEEP
              and conv.resolve_impl(self.impl, dtype=self.dtype) == 'native')
    if not sparse:
      y = jnp.dot(x, kernel) + bias
      y = nn.relu(y) if self.relu else y
      return dropout.Dropout(self.dropout_rate)(y, deterministic=False, rng=rng)
    mask, keep_prob = dropout.keep_mask(rng, keep, (x.shape[0], self.features))
    y = masked_matmul(x, kernel, mask) + bias
    y = nn.relu(y) if self.relu else y
    return jnp.where(mask, y / jnp.asarray(keep_prob, y.dtype), jnp.zeros_like(y))

