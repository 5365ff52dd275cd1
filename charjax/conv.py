"""2-D convolution as XLA's native op or as matrix products over image patches.

Expressing a valid convolution as `patches @ kernel` turns forward and backward passes into
GEMMs. On XLA:CPU that beats XLA's convolution handed to YNNPACK (jaxlib 0.10's default)
and XLA's convolution inside a compiled loop (see `resolve_impl`).
`Conv2D` keeps `nn.Conv`'s parameter names and shapes, so checkpoints do not depend on the
implementation chosen.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ('auto', 'xla', 'patches')
# Rows of the patch matrix per chunk: bounds the patches' memory, keeps GEMMs large.
_CHUNK_ROWS = 50_000


def resolve_impl(impl: str, platform: str | None = None) -> str:
  """'auto' -> 'patches' on CPU, 'xla' on GPU/TPU.

  Measured on 2 CPU cores (exp-2, batch 800): inside a compiled loop (`lax.scan`, as in
  `train.train_epoch`) XLA:CPU's convolution takes minutes per step while patches run at
  ~310 img/s; a lone train step with `cpu_flags` applied is about as fast with either.
  """
  if impl not in IMPLS:
    raise ValueError(f'Unknown conv implementation {impl!r}: expected one of {IMPLS}.')
  if impl != 'auto':
    return impl
  platform = platform or jax.default_backend()
  return 'patches' if platform == 'cpu' else 'xla'


def conv_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Valid, stride-1 NHWC x HWIO convolution with `lax.conv_general_dilated`."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _patch_matmul(x, kernel):
  kh, kw, cin, cout = kernel.shape
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  patches = jnp.concatenate(
      [x[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
  out = patches.reshape(-1, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
  return out.reshape(x.shape[0], h, w, cout)


def conv_patches(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Same result as `conv_xla`, as (patches @ kernel) over chunks of the batch."""
  kh, kw = kernel.shape[:2]
  n = x.shape[0]
  chunk = min(n, max(1, _CHUNK_ROWS // ((x.shape[1] - kh + 1) * (x.shape[2] - kw + 1))))
  if chunk == n:
    return _patch_matmul(x, kernel)
  chunks = -(-n // chunk)
  x = jnp.pad(x, ((0, chunks * chunk - n), (0, 0), (0, 0), (0, 0)))
  out = jax.lax.map(lambda xc: _patch_matmul(xc, kernel),
                    x.reshape(chunks, chunk, *x.shape[1:]))
  return out.reshape(chunks * chunk, *out.shape[2:])[:n]


class Conv2D(nn.Module):
  """Valid, stride-1 convolution with bias; `impl` is 'auto', 'xla' or 'patches'."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  impl: str = 'auto'
  kernel_init: nn.initializers.Initializer = nn.initializers.glorot_uniform()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    conv = conv_patches if resolve_impl(self.impl) == 'patches' else conv_xla
    return conv(x, kernel) + bias
