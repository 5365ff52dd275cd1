"""2-D convolution as XLA's native op or as matrix products over image patches.

Expressing a valid convolution as `patches @ kernel` turns forward and backward passes into
GEMMs; it is the fallback where XLA's own convolution is slow. Measured on 2 CPU cores, XLA's
convolution (Eigen, once `charjax.cpu_flags` keeps it away from YNNPACK) is the faster of the
two at the top level of a compiled function, but XLA:CPU runs a convolution inside a `while`
loop (`lax.scan`, `lax.map`) pathologically slowly (jax-ml/jax#12868); so on CPU the compiled
loops of `charjax.train` are unrolled (see `loop_unroll`).
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
  """'auto' -> 'xla' on every backend ('xla' and 'patches' are returned as given).

  Measured on 2 CPU cores, whole epochs of 4 batches, loops unrolled for 'xla':
  exp-2 at batch 800, 411 img/s with 'xla' vs 281 with 'patches';
  exp-3 at batch 400, 133 vs 72 img/s. On GPU, XLA's convolution calls cuDNN.
  `platform` is accepted so the choice can be made per backend.
  """
  if impl not in IMPLS:
    raise ValueError(f'Unknown conv implementation {impl!r}: expected one of {IMPLS}.')
  del platform
  return 'xla' if impl == 'auto' else impl


def loop_unroll(impl: str, platform: str | None = None) -> int | bool:
  """How `train.train_epoch` and `train.evaluate` unroll their loops for conv `impl`.

  True (fully unrolled, no XLA `while`) for XLA's convolution on CPU, where a convolution
  inside a loop body runs orders of magnitude slower (an exp-2 epoch of two steps did not
  finish in 300 s); 1 (a real loop, fast compiles) everywhere else.
  """
  platform = platform or jax.default_backend()
  return True if platform == 'cpu' and resolve_impl(impl, platform) == 'xla' else 1


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
