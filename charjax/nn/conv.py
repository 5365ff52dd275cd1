"""2-D convolution as XLA's op, as matrix products over image patches, or charjax's CPU kernels.

Expressing a valid convolution as `patches @ kernel` turns forward and backward passes into
GEMMs; it is the fallback where XLA's own convolution is slow. Measured on 2 CPU cores, XLA's
convolution (Eigen, once `charjax.runtime.cpu_flags` keeps it away from YNNPACK) is the faster of the
two at the top level of a compiled function, but XLA:CPU runs a convolution inside a `while`
loop (`lax.scan`, `lax.map`) pathologically slowly (jax-ml/jax#12868); so on CPU the compiled
loops of `charjax.train` are unrolled (see `loop_unroll`).
On x86-64 CPUs with AVX2 and FMA, `charjax.nn.native_conv` (register-tiled kernels called
through XLA FFI) is faster than both and runs fine inside loops.
`Conv2D` keeps `nn.Conv`'s parameter names and shapes, so checkpoints do not depend on the
implementation chosen.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from charjax.nn import dropout
from charjax.nn import native_conv
from charjax.nn import pooling

IMPLS = ('auto', 'xla', 'patches', 'native')
# Rows of the patch matrix per chunk: bounds the patches' memory, keeps GEMMs large.
_CHUNK_ROWS = 50_000


def resolve_impl(impl: str, platform: str | None = None, dtype=jnp.float32) -> str:
  """'auto' -> 'native' on CPU where `native_conv.available()`, else 'xla'.

  Other names are returned as given ('native' raises if the kernels cannot be built). The
  native kernels compute in float32: for another `dtype` (bfloat16), 'auto' and 'native'
  give 'xla'.
  Measured on 2 CPU cores (see docs/benchmarks.md): whole epochs with
  'native' beat 'xla', which beats 'patches'. On GPU, XLA's convolution calls cuDNN.
  """
  if impl not in IMPLS:
    raise ValueError(f'Unknown conv implementation {impl!r}: expected one of {IMPLS}.')
  if impl in ('auto', 'native') and jnp.dtype(dtype) != jnp.float32:
    return 'xla'
  platform = platform or jax.default_backend()
  if impl == 'native' and platform != 'cpu':
    raise ValueError(f'conv_impl="native" runs on CPU only, not on {platform!r}')
  if impl == 'native' and not native_conv.available():
    raise RuntimeError('conv_impl="native" but charjax\'s native convolution is unavailable: '
                       f'{native_conv.unavailable_reason()}')
  if impl != 'auto':
    return impl
  return 'native' if platform == 'cpu' and native_conv.available() else 'xla'


def loop_unroll(impl: str, platform: str | None = None, dtype=jnp.float32) -> int | bool:
  """How `train.train_epoch` and `train.evaluate` unroll their loops for conv `impl`.

  True (fully unrolled, no XLA `while`) for XLA's convolution on CPU, where a convolution
  inside a loop body runs orders of magnitude slower (jax-ml/jax#12868); 1 (a real loop,
  fast compiles) everywhere else, charjax's native
  kernels included.
  """
  platform = platform or jax.default_backend()
  return True if platform == 'cpu' and resolve_impl(impl, platform, dtype) == 'xla' else 1


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
  """Valid, stride-1 convolution with bias; `impl` is one of `IMPLS`.

  With `pool`, the output is max-pooled 2x2 (`pooling.max_pool_2x2`); with 'native', as
  one fused pass (`native_conv.conv_pool`) where the output's height and width are even.
  With `relu`, a ReLU follows (after the pooling, where it gives the same result on a
  quarter of the values), then, with `dropout_rate` > 0 and not `deterministic`,
  `dropout.Dropout(dropout_rate)` with a key from the 'dropout' rng collection. With
  'native', both are done in the convolution's own pass (`native_conv.conv_relu_dropout`,
  the same masks; see `native_conv.FUSE_ACTIVATION`).
  With 'native', shapes `native_conv.supports` rejects use XLA's convolution.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  impl: str = 'auto'
  kernel_init: nn.initializers.Initializer = nn.initializers.glorot_uniform()
  pool: bool = False
  relu: bool = False
  dropout_rate: float = 0.0
  deterministic: bool | None = None
  dtype: jnp.dtype = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    if self.dropout_rate and not self.relu:
      raise ValueError('Conv2D: dropout_rate is for a ReLU layer (relu=True)')
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    drop = bool(self.dropout_rate) and not nn.merge_param(
        'deterministic', self.deterministic, deterministic)
    rng = self.make_rng('dropout') if drop else None
    impl = resolve_impl(self.impl, dtype=self.dtype)
    supported = (native_conv.supports_pool if self.pool else native_conv.supports)(
        x.shape, kernel.shape)
    if impl == 'native' and self.relu and native_conv.FUSE_ACTIVATION and supported:
      key = dropout.hash_key(rng) if drop else jnp.zeros((2,), jnp.uint32)
      return native_conv.conv_relu_dropout(x, kernel, bias, key,
                                           self.dropout_rate if drop else 0.0,
                                           native_conv.WINOGRAD, self.pool)
    if impl == 'native' and self.pool and native_conv.supports_pool(x.shape, kernel.shape):
      y = native_conv.conv_pool(x, kernel, bias, native_conv.WINOGRAD)
    else:
      if impl == 'native' and native_conv.supports(x.shape, kernel.shape):
        y = native_conv.conv(x, kernel, bias, native_conv.WINOGRAD)
      else:
        y = (conv_patches if impl == 'patches' else conv_xla)(x, kernel) + bias
      if self.pool:
        y = pooling.max_pool_2x2(y)
    if self.relu:
      y = nn.relu(y)
    if drop:
      y = dropout.Dropout(self.dropout_rate)(y, deterministic=False, rng=rng)
    return y
