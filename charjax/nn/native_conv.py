"""charjax's own CPU convolution: `native/conv.cc`, built on first use, called via XLA FFI.

XLA:CPU's convolution runs the three passes of exp 2's second layer at 90-160 GFLOP/s on 2
cores; the kernels in `native/conv.cc` (Winograd F(4x4, 3x3) or F(2x2, 3x3) for 3x3 layers,
register-tiled direct convolutions elsewhere) do the same work in much less time (see
`benchmarks.conv_layers`). The source is compiled once per machine with the system's C++
compiler (`$CXX`, else `g++`) and `-march=native` into a cache directory
(`$CHARJAX_NATIVE_CACHE`, else `~/.cache/charjax`), keyed by a hash of the source, the
flags and the jaxlib headers. Where that is impossible (no compiler, no x86-64 CPU with
AVX2 and FMA, a failed build) `available()` is False, `unavailable_reason()` says why,
and `conv.resolve_impl('auto')` picks XLA's convolution instead.

`conv(x, kernel, bias)` is a valid, stride-1 NHWC x HWIO convolution plus bias with a
custom VJP: the input gradient and the kernel and bias gradients are native kernels too
(the input gradient falls back to XLA where the input channels are not a multiple of 16).
`conv_pool(x, kernel, bias)` is the same convolution followed by 2x2 max-pooling, fused.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from charjax.nn import dropout
from charjax.nn import pooling
from charjax.runtime import sharding

NATIVE_DIR = Path(__file__).with_name('native')
# Compiled together into one library; parallel.h is included by both.
SOURCES = (NATIVE_DIR / 'conv.cc', NATIVE_DIR / 'dense.cc')
HEADERS = (NATIVE_DIR / 'parallel.h',)
FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w')
LANES = 16  # output channels per register tile: channel counts must be multiples of this
_TARGETS = {'forward': 'CharjaxConvForward', 'input_grad': 'CharjaxConvInputGrad',
            'kernel_grad': 'CharjaxConvKernelGrad', 'pool_forward': 'CharjaxConvPoolForward',
            'pool_input_grad': 'CharjaxConvPoolInputGrad',
            'pool_kernel_grad': 'CharjaxConvPoolKernelGrad',
            'act_forward': 'CharjaxConvActForward', 'act_input_grad': 'CharjaxConvActInputGrad',
            'act_kernel_grad': 'CharjaxConvActKernelGrad',
            'act_pool_forward': 'CharjaxConvActPoolForward',
            'act_pool_input_grad': 'CharjaxConvActPoolInputGrad',
            'act_pool_kernel_grad': 'CharjaxConvActPoolKernelGrad',
            # native/dense.cc (`charjax.nn.dense`)
            'masked_matmul': 'CharjaxMaskedMatmul',
            'sparse_input_grad': 'CharjaxSparseInputGrad',
            'sparse_kernel_grad': 'CharjaxSparseKernelGrad'}
_FFI_PREFIX = 'charjax_conv_'
# Whether `conv.Conv2D` computes a following ReLU (and dropout) in the convolution's pass
# (`conv_relu_dropout`) rather than as XLA operations after it (read when a model is traced;
# `benchmarks.ablations --choices=activation` times both).
FUSE_ACTIVATION = True
# The largest Winograd tile `conv.Conv2D` asks for (read when a model is traced;
# `benchmarks.ablations --choices=winograd` times each): 4 = F(4x4, 3x3) where the output's
# sizes are multiples of 4, else F(2x2, 3x3) where they are even; 2 = F(2x2, 3x3) only;
# 0 = the direct kernels only.
WINOGRAD = 4
WINOGRAD_TILES = (0, 2, 4)


def winograd_tile(winograd: int | bool) -> int:
  """The tile of a `winograd` argument: 0, 2 or 4 (True means 4, False 0)."""
  if isinstance(winograd, bool):
    return 4 if winograd else 0
  if winograd not in WINOGRAD_TILES:
    raise ValueError(f'winograd={winograd!r} is not one of {WINOGRAD_TILES} (or a bool)')
  return int(winograd)


def _tile_attribute(winograd):
  return np.int32(winograd_tile(winograd))  # the kernels' int32 `winograd` attribute


def cache_dir() -> Path:
  """Where built libraries are kept: `$CHARJAX_NATIVE_CACHE`, else `~/.cache/charjax`."""
  return Path(os.environ.get('CHARJAX_NATIVE_CACHE') or Path.home() / '.cache' / 'charjax')


def _cpu_problem() -> str | None:
  if platform.machine().lower() not in ('x86_64', 'amd64'):
    return f'needs an x86-64 CPU, this is {platform.machine()}'
  try:
    cpuinfo = Path('/proc/cpuinfo').read_text()
  except OSError:
    return 'cannot read /proc/cpuinfo to check for AVX2 and FMA'
  flags = next((line.split(':', 1)[1].split() for line in cpuinfo.splitlines()
                if line.startswith('flags')), [])
  missing = [f for f in ('avx2', 'fma') if f not in flags]
  return f'CPU lacks {", ".join(missing)}' if missing else None


def build(directory: Path | None = None) -> Path:
  """Compiles `native/*.cc` into one library unless an identical build is cached; returns it.

  Raises RuntimeError (with the compiler's output) when the build fails.
  """
  compiler = os.environ.get('CXX', 'g++')
  if shutil.which(compiler) is None:
    raise RuntimeError(f'no C++ compiler: {compiler!r} is not on PATH (set $CXX)')
  include = jax.ffi.include_dir()
  key = hashlib.sha256(b''.join(p.read_bytes() for p in SOURCES + HEADERS)
                       + ' '.join((compiler,) + FLAGS).encode()
                       + (Path(include) / 'xla' / 'ffi' / 'api' / 'ffi.h').read_bytes())
  directory = Path(directory or cache_dir())
  library = directory / f'charjax_conv_{key.hexdigest()[:16]}.so'
  if library.exists():
    return library
  directory.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=directory) as tmp:
    partial = Path(tmp) / library.name
    done = subprocess.run([compiler, *FLAGS, '-I', include, *map(str, SOURCES), '-o',
                           str(partial)], capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f'building {", ".join(p.name for p in SOURCES)} failed:\n'
                         f'{done.stderr[-4000:]}')
    os.replace(partial, library)  # atomic: concurrent builders never see half a file
  return library


@functools.cache
def _load() -> str | None:
  """Builds, loads and registers the kernels once; returns why not, or None on success."""
  if os.environ.get('CHARJAX_NATIVE_CONV', '1') == '0':
    return 'disabled by CHARJAX_NATIVE_CONV=0'
  problem = _cpu_problem()
  if problem:
    return problem
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
  except (RuntimeError, OSError) as error:
    return str(error)
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(_FFI_PREFIX + name, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform='cpu')
  return None


def available() -> bool:
  """Whether the native kernels are built and registered (building them on first call)."""
  return _load() is None


def unavailable_reason() -> str | None:
  """Why `available()` is False, or None when it is True."""
  return _load()


def supports(x_shape, kernel_shape) -> bool:
  """Whether `conv` takes these shapes: NHWC x HWIO, output channels a multiple of 16."""
  return len(x_shape) == 4 and len(kernel_shape) == 4 and kernel_shape[3] % LANES == 0


def supports_pool(x_shape, kernel_shape) -> bool:
  """Whether `conv_pool` takes these shapes: `supports` them, and the convolution's output
  height and width are even."""
  return (supports(x_shape, kernel_shape) and (x_shape[1] - kernel_shape[0] + 1) % 2 == 0
          and (x_shape[2] - kernel_shape[1] + 1) % 2 == 0)


def _call(name, shapes, *args, batched, summed=False, dtypes=None, **attributes):
  """Calls kernel `name`; `shapes(*args)` gives its output shapes from its arguments.

  Inside a mesh with a `data` axis of several devices, each device calls it on its own
  images (`sharding.per_device`: `batched` says which arguments are split by image;
  `summed` outputs, the kernel and bias gradients, are added over devices).
  """
  problem = _load()
  if problem:
    raise RuntimeError(f'charjax native convolution unavailable: {problem}')

  def local(*args):
    out_shapes = shapes(*args)
    kinds = dtypes or [jnp.float32] * len(out_shapes)
    results = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in zip(out_shapes, kinds)]
    # Under `jax.vmap` (several seeds trained together) the kernel runs once per member.
    return jax.ffi.ffi_call(_FFI_PREFIX + name, results, vmap_method='sequential')(
        *args, **attributes)
  return sharding.per_device(local, batched, summed)(*args)


def _conv_shape(x_shape, kernel_shape):
  n, h, w, _ = x_shape
  kh, kw, _, cout = kernel_shape
  return (n, h - kh + 1, w - kw + 1, cout)


def _input_shape(dy_shape, kernel_shape):
  n, ho, wo, _ = dy_shape
  kh, kw, cin, _ = kernel_shape
  return (n, ho + kh - 1, wo + kw - 1, cin)


def _check(x, kernel, bias):
  if any(a.dtype != jnp.float32 for a in (x, kernel, bias)):
    raise TypeError(f'native conv takes float32, got {x.dtype}, {kernel.dtype}, {bias.dtype}')
  if not supports(x.shape, kernel.shape) or bias.shape != kernel.shape[3:]:
    raise ValueError(f'native conv needs NHWC x HWIO with output channels a multiple of '
                     f'{LANES} and a bias per output channel; got {x.shape}, {kernel.shape}, '
                     f'{bias.shape}')


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, winograd: int | bool = 4
         ) -> jax.Array:
  """Valid, stride-1 NHWC x HWIO float32 convolution plus bias, in one pass.

  Equals `lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', ...) + bias` to float32
  rounding; differentiable in `x`, `kernel` and `bias`. `winograd` is the largest
  Winograd tile the three passes of a 3x3 kernel may use where the channels summed over
  (the input's; the output gradient's for the input gradient) are a multiple of 8:
  4 (the default) = F(4x4, 3x3), 36 instead of 144 multiplications per 4x4 output tile and
  channel pair, where the output's height and width are multiples of 4 (the input
  gradient: any size), else F(2x2, 3x3), 16 instead of 36 per 2x2 tile, where they are
  even; 2 = F(2x2, 3x3) only; 0 (or False) = register-tiled direct convolutions, which
  also run wherever Winograd does not apply.
  """
  _check(x, kernel, bias)
  return _call('forward', lambda x, k, b: [_conv_shape(x.shape, k.shape)], x, kernel, bias,
               batched=(True, False, False), winograd=_tile_attribute(winograd))[0]


def _forward(x, kernel, bias, winograd):
  return conv(x, kernel, bias, winograd), (x, kernel)


def _backward(winograd, residuals, dy):
  x, kernel = residuals
  if kernel.shape[2] % LANES == 0:
    dx = _call('input_grad', lambda dy, k: [_input_shape(dy.shape, k.shape)], dy, kernel,
               batched=(True, False), winograd=_tile_attribute(winograd))[0]
  else:
    dx = _xla_input_grad(x, kernel, dy)
  dkernel, dbias = _call('kernel_grad', lambda x, dy: [kernel.shape, kernel.shape[3:]], x, dy,
                         batched=(True, True), summed=True, winograd=_tile_attribute(winograd))
  return dx, dkernel, dbias


conv.defvjp(_forward, _backward)


def _xla_input_grad(x, kernel, dy):
  # e.g. a first layer on 1-channel images, whose input gradient goes unused
  xla_conv = lambda x: jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jax.vjp(xla_conv, x)[1](dy)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array,
              winograd: int | bool = 4) -> jax.Array:
  """`pooling.max_pool_2x2(conv(x, kernel, bias, winograd))` in one pass.

  Each 2x2 window of the convolution's output is pooled as it is computed (with Winograd,
  a window is one output tile), so the full-size output never reaches memory: the kernel
  writes the pooled values and each window's first maximum (int8, row-major), and the
  gradients route the pooled gradient through those positions inside the native input
  and kernel gradients. Needs `supports_pool(x.shape, kernel.shape)`.
  """
  return _conv_pool(x, kernel, bias, winograd)[0]


def _conv_pool(x, kernel, bias, winograd):
  _check(x, kernel, bias)
  if not supports_pool(x.shape, kernel.shape):
    raise ValueError(f'conv_pool needs an even convolution output; got {x.shape}, {kernel.shape}')
  def shapes(x, k, b):
    n, ho, wo, cout = _conv_shape(x.shape, k.shape)
    return [(n, ho // 2, wo // 2, cout)] * 2
  return _call('pool_forward', shapes, x, kernel, bias, batched=(True, False, False),
               dtypes=[jnp.float32, jnp.int8],
               winograd=_tile_attribute(winograd))


def _conv_pool_forward(x, kernel, bias, winograd):
  pooled, positions = _conv_pool(x, kernel, bias, winograd)
  return pooled, (x, kernel, positions)


def _conv_pool_backward(winograd, residuals, dy):
  x, kernel, positions = residuals
  if kernel.shape[2] % LANES == 0:
    dx = _call('pool_input_grad',
               lambda dy, p, k: [_input_shape((dy.shape[0], 2 * dy.shape[1], 2 * dy.shape[2],
                                               dy.shape[3]), k.shape)],
               dy, positions, kernel, batched=(True, True, False),
               winograd=_tile_attribute(winograd))[0]
  else:
    full = (x.shape[0], x.shape[1] - kernel.shape[0] + 1, x.shape[2] - kernel.shape[1] + 1,
            kernel.shape[3])
    dx = _xla_input_grad(x, kernel, pooling.unpool(dy, positions, full))
  dkernel, dbias = _call('pool_kernel_grad', lambda x, dy, p: [kernel.shape, kernel.shape[3:]],
                         x, dy, positions, batched=(True, True, True), summed=True,
                         winograd=_tile_attribute(winograd))
  return dx, dkernel, dbias


conv_pool.defvjp(_conv_pool_forward, _conv_pool_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def conv_relu_dropout(x: jax.Array, kernel: jax.Array, bias: jax.Array, key: jax.Array,
                      rate: float = 0.0, winograd: int | bool = 4, pool: bool = False
                      ) -> jax.Array:
  """`dropout(relu(conv(x, kernel, bias)))` with the ReLU and dropout done in the kernel's pass.

  With `pool`, the convolution is max-pooled 2x2 first (as `conv_pool`; needs
  `supports_pool`). Each image's output is activated while it is still in cache, instead
  of by an XLA pass over the whole batch's output; the gradients need only the output
  (kept and positive elements pass `g / keep_prob`, the others 0), which the native input-
  and kernel-gradient passes apply image by image. `key` is `dropout.hash_key(rng)`: the
  mask is exactly `dropout.keep_mask(rng, 1 - rate, y.shape)`'s (generator 'hash'), so the
  fused layer computes what `dropout.Dropout(rate)(nn.relu(conv(...)), rng=rng)` does.
  `rate` 0: ReLU alone.
  """
  return _conv_act(x, kernel, bias, key, rate, winograd, pool)[0]


def _act_attributes(rate):
  if not 0 <= rate < 1:
    raise ValueError(f'dropout rate {rate} not in [0, 1)')
  if rate == 0:
    return dict(threshold=np.int32(0), bits=np.int32(8), keep_prob=np.float32(1))
  bits, threshold, keep_prob = dropout.lane_threshold(1.0 - rate)
  return dict(threshold=np.int32(threshold), bits=np.int32(bits),
              keep_prob=np.float32(keep_prob))


def _conv_act(x, kernel, bias, key, rate, winograd, pool):
  """(output, positions or None)."""
  _check(x, kernel, bias)
  if key.shape != (2,) or key.dtype != jnp.uint32:
    raise TypeError(f'key must be dropout.hash_key(rng), uint32[2]; got {key.dtype}{key.shape}')
  if pool and not supports_pool(x.shape, kernel.shape):
    raise ValueError(f'pooling needs an even convolution output; got {x.shape}, {kernel.shape}')
  n, ho, wo, cout = _conv_shape(x.shape, kernel.shape)
  out_shape = (n, ho // 2, wo // 2, cout) if pool else (n, ho, wo, cout)
  attributes = _act_attributes(rate)
  words = math.prod(out_shape) // (32 // int(attributes['bits']))
  if words > 2 ** 32:
    raise ValueError(f'{words} random words exceed the hash counter\'s 2**32')
  index = jnp.arange(n, dtype=jnp.int32)  # each image's counter offset
  shapes = lambda x, *_: [(x.shape[0], *out_shape[1:])] * (2 if pool else 1)
  outputs = _call('act_pool_forward' if pool else 'act_forward', shapes, x, kernel, bias, key,
                  index, batched=(True, False, False, False, True),
                  dtypes=[jnp.float32, jnp.int8] if pool else None,
                  winograd=_tile_attribute(winograd), **attributes)
  return outputs[0], (outputs[1] if pool else None)


def _conv_act_forward(x, kernel, bias, key, rate, winograd, pool):
  y, positions = _conv_act(x, kernel, bias, key, rate, winograd, pool)
  return y, (x, kernel, y, positions)


def _conv_act_backward(rate, winograd, pool, residuals, g):
  x, kernel, y, positions = residuals
  keep_prob = _act_attributes(rate)['keep_prob']
  tile = _tile_attribute(winograd)
  gradient_of = lambda name, shapes, *args, batched, summed=False: _call(
      name, shapes, *args, batched=batched, summed=summed, winograd=tile, keep_prob=keep_prob)
  if kernel.shape[2] % LANES == 0:
    # shapes from the arguments: per device, they hold its images only
    if pool:
      dx = gradient_of('act_pool_input_grad',
                       lambda g, y, p, k: [_input_shape((g.shape[0], 2 * g.shape[1],
                                                         2 * g.shape[2], g.shape[3]), k.shape)],
                       g, y, positions, kernel, batched=(True, True, True, False))[0]
    else:
      dx = gradient_of('act_input_grad', lambda g, y, k: [_input_shape(g.shape, k.shape)],
                       g, y, kernel, batched=(True, True, False))[0]
  else:  # e.g. a first layer on 1-channel images, whose input gradient goes unused
    dpre = jnp.where(y > 0, g / keep_prob, 0)
    if pool:
      dpre = pooling.unpool(dpre, positions, _conv_shape(x.shape, kernel.shape))
    dx = _xla_input_grad(x, kernel, dpre)
  dw_shapes = lambda *_: [kernel.shape, kernel.shape[3:]]
  if pool:
    dkernel, dbias = gradient_of('act_pool_kernel_grad', dw_shapes, x, g, y, positions,
                                 batched=(True, True, True, True), summed=True)
  else:
    dkernel, dbias = gradient_of('act_kernel_grad', dw_shapes, x, g, y,
                                 batched=(True, True, True), summed=True)
  return dx, dkernel, dbias, None


conv_relu_dropout.defvjp(_conv_act_forward, _conv_act_backward)
