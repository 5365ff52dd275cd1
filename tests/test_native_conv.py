"""charjax's native CPU convolution: build, parity with XLA (values and gradients), dispatch."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charjax.nn import conv
from charjax.nn import dropout
from charjax.runtime import host_memory
from charjax.nn import models
from charjax.nn import native_conv
from charjax.nn import pooling

needs_native = pytest.mark.skipif(
    native_conv._cpu_problem() is not None, reason=f'{native_conv._cpu_problem()}')


@needs_native
def test_native_conv_builds_on_an_x86_cpu_with_avx2():
  assert native_conv.available(), native_conv.unavailable_reason()
  assert native_conv.unavailable_reason() is None


def _reference(x, kernel, bias):
  return conv.conv_xla(x, kernel) + bias


# (x shape, kernel shape): tiles of 6 pixels plus every remainder width, native and XLA
# input gradients (input channels a multiple of 16 or not), non-square inputs and kernels;
# direct kernels (odd output sizes, other kernel sizes) and Winograd ones (3x3, even sizes).
SHAPES = [
    ((2, 9, 9, 16), (3, 3, 16, 32)),     # 7 wide: a 6-pixel tile and a 1-pixel one
    ((3, 8, 13, 32), (3, 3, 32, 16)),    # 11 wide: 6 + 5
    ((2, 10, 10, 1), (3, 3, 1, 16)),     # one input channel: input gradient by XLA
    ((1, 7, 12, 48), (2, 4, 48, 16)),    # a 2x4 kernel
    ((2, 6, 6, 16), (3, 3, 16, 64)),     # 4 wide, four channel blocks (all by Winograd)
    ((2, 16, 18, 32), (3, 3, 32, 32)),   # Winograd: 56 tiles per image, a 30-tile chunk + 26
    ((1, 32, 32, 40), (3, 3, 40, 16)),   # Winograd: 225 tiles; 40 channels = 6 x 6 + 4
    # F(4x4, 3x3): outputs multiples of 4; 64 tiles = 18-tile chunks 18 + 18 + 18 + 10, the
    # input gradient's 34x34 output in partial tiles; 15 tiles of a non-square output.
    ((2, 34, 34, 32), (3, 3, 32, 64)),
    ((2, 14, 22, 24), (3, 3, 24, 16)),
]


@needs_native
@pytest.mark.parametrize('x_shape,kernel_shape', SHAPES)
def test_native_conv_equals_xla_conv_and_its_gradients(x_shape, kernel_shape):
  kx, kk, kb, kg = jax.random.split(jax.random.key(sum(x_shape)), 4)
  x = jax.random.normal(kx, x_shape)
  kernel = jax.random.normal(kk, kernel_shape) / 4
  bias = jax.random.normal(kb, kernel_shape[3:])
  y, vjp = jax.vjp(jax.jit(native_conv.conv), x, kernel, bias)
  y_ref, vjp_ref = jax.vjp(_reference, x, kernel, bias)
  assert y.shape == y_ref.shape
  g = jax.random.normal(kg, y.shape)
  for got, want in zip((y, *vjp(g)), (y_ref, *vjp_ref(g))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


# (x shape, kernel shape, the tiles each pass runs: forward, input gradient, kernel gradient)
WINOGRAD_CASES = [
    ((2, 16, 18, 32), (3, 3, 32, 32), (2, 4, 2)),    # 14x16 output; input gradient 16x18
    ((1, 32, 32, 48), (3, 3, 48, 16), (2, 4, 2)),    # 30x30; 32x32
    ((2, 34, 34, 32), (3, 3, 32, 64), (4, 4, 4)),    # 32x32; 34x34 in partial tiles
    ((2, 14, 22, 32), (3, 3, 32, 16), (4, 4, 4)),    # 12x20; 14x22 in partial tiles
    ((3, 9, 11, 16), (3, 3, 16, 16), (0, 4, 0)),     # odd 7x9: direct, but the input gradient
]


def _conv_and_gradients(x_shape, kernel_shape, settings):
  """{setting: (y, dx, dkernel, dbias)} of `native_conv.conv(..., winograd=setting)` on the
  same random input, kernel, bias and output gradient."""
  kx, kk, kb, kg = jax.random.split(jax.random.key(7), 4)
  x = jax.random.normal(kx, x_shape)
  kernel = jax.random.normal(kk, kernel_shape) / 4
  bias = jax.random.normal(kb, kernel_shape[3:])
  g = jax.random.normal(kg, (x_shape[0], x_shape[1] - 2, x_shape[2] - 2, kernel_shape[3]))
  results = {}
  for setting in settings:
    y, vjp = jax.vjp(lambda x, k, b: native_conv.conv(x, k, b, setting), x, kernel, bias)
    results[setting] = (y, *vjp(g))
  return results


@needs_native
@pytest.mark.parametrize('x_shape,kernel_shape,tiles', WINOGRAD_CASES)
def test_winograd_tiles_and_direct_kernels_agree(x_shape, kernel_shape, tiles):
  """F(4x4, 3x3), F(2x2, 3x3) and the direct kernels compute the same convolution and
  gradients, and each pass that can take a larger tile rounds differently (it ran)."""
  results = _conv_and_gradients(x_shape, kernel_shape, (0, 2, 4))
  for i, name in enumerate(('y', 'dx', 'dkernel')):
    direct = results[0][i]
    for tile in (2, 4):
      got = results[tile][i]
      # F(4x4)'s larger transform coefficients round a little more than F(2x2)'s.
      np.testing.assert_allclose(got, direct, rtol=1e-5,
                                 atol=(2e-6 if tile == 2 else 1e-5) * float(jnp.abs(direct).max()),
                                 err_msg=f'{name} tile {tile}')
    expected = tiles[i]
    # Which algorithm ran shows in the rounding: a pass whose shapes take tile 4 differs
    # from F(2x2), one that takes only tile 2 equals it, and no tile equals direct.
    assert np.array_equal(results[4][i], results[2][i]) == (expected != 4), name
    assert np.array_equal(results[4][i], direct) == (expected == 0), name


def test_winograd_tile_argument():
  assert [native_conv.winograd_tile(w) for w in (True, False, 0, 2, 4)] == [4, 0, 0, 2, 4]
  with pytest.raises(ValueError, match='winograd=3'):
    native_conv.winograd_tile(3)


@needs_native
@pytest.mark.parametrize('x_shape,kernel_shape', SHAPES[-5:-2])
def test_winograd_and_direct_kernels_agree(x_shape, kernel_shape):
  results = _conv_and_gradients(x_shape, kernel_shape, (True, False))
  for name, got, want in zip(('y', 'dx', 'dkernel', 'dbias'), results[True], results[False]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()),
                               err_msg=name)
    # The two algorithms round differently, so inequality shows both ran (the bias
    # gradient is one sum either way; an input gradient with input channels not a
    # multiple of 16 is XLA's either way).
    if name != 'dbias' and not (name == 'dx' and kernel_shape[2] % native_conv.LANES):
      assert not np.array_equal(got, want), name


# (x shape, kernel shape, winograd, ties): the fused convolution and pooling by Winograd
# and by direct kernels (winograd=False; a 2x4 kernel), on one-channel input (input
# gradient by XLA from the unpooled gradient), and on windows of equal values.
POOL_CASES = [
    ((2, 10, 12, 16), (3, 3, 16, 32), True, False),   # 8x10 output: F(2x2)
    ((2, 10, 12, 16), (3, 3, 16, 32), True, True),
    ((2, 18, 14, 32), (3, 3, 32, 16), 4, False),      # 16x12: F(4x4), 4 windows per tile
    ((2, 18, 14, 32), (3, 3, 32, 16), 4, True),
    ((2, 18, 14, 32), (3, 3, 32, 16), 2, False),
    ((2, 10, 12, 16), (3, 3, 16, 32), False, False),
    ((1, 7, 13, 48), (2, 4, 48, 16), True, True),
    ((2, 10, 10, 1), (3, 3, 1, 16), True, False),
]


@needs_native
@pytest.mark.parametrize('x_shape,kernel_shape,winograd,ties', POOL_CASES)
def test_conv_pool_equals_conv_then_max_pool_and_its_gradients(x_shape, kernel_shape, winograd,
                                                                ties):
  kx, kk, kb, kg = jax.random.split(jax.random.key(3), 4)
  # With ties, every output equals its bias: the gradient goes to each window's first element.
  x = jnp.zeros(x_shape) if ties else jax.random.normal(kx, x_shape)
  kernel = jax.random.normal(kk, kernel_shape) / 4
  bias = jax.random.normal(kb, kernel_shape[3:])
  fused = jax.jit(lambda x, k, b: native_conv.conv_pool(x, k, b, winograd))
  y, vjp = jax.vjp(fused, x, kernel, bias)
  y_ref, vjp_ref = jax.vjp(lambda x, k, b: pooling.max_pool_2x2(_reference(x, k, b)),
                           x, kernel, bias)
  assert y.shape == y_ref.shape
  g = jax.random.normal(kg, y.shape)
  for name, got, want in zip(('y', 'dx', 'dkernel', 'dbias'), (y, *vjp(g)), (y_ref, *vjp_ref(g))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()),
                               err_msg=name)


@needs_native
def test_conv_pool_needs_an_even_output():
  assert native_conv.supports_pool((1, 10, 12, 16), (3, 3, 16, 16))
  assert not native_conv.supports_pool((1, 9, 12, 16), (3, 3, 16, 16))
  with pytest.raises(ValueError, match='even'):
    native_conv.conv_pool(jnp.ones((1, 9, 12, 16)), jnp.ones((3, 3, 16, 16)), jnp.ones((16,)))


@needs_native
def test_native_conv_runs_inside_a_compiled_loop():
  x = jax.random.normal(jax.random.key(0), (4, 2, 8, 8, 16))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 16, 16))
  bias = jnp.zeros((16,))

  def total(kernel):
    def body(carry, xb):
      return carry + jnp.sum(native_conv.conv(xb, kernel, bias) ** 2), None
    return jax.lax.scan(body, 0.0, x)[0]

  def total_ref(kernel):
    return sum(jnp.sum(_reference(xb, kernel, bias) ** 2) for xb in x)

  got, grad = jax.jit(jax.value_and_grad(total))(kernel)
  want, grad_ref = jax.value_and_grad(total_ref)(kernel)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(grad_ref).max()))


@needs_native
def test_native_conv_rejects_what_it_cannot_compute():
  x = jnp.ones((1, 5, 5, 16))
  with pytest.raises(ValueError, match='multiple of 16'):
    native_conv.conv(x, jnp.ones((3, 3, 16, 8)), jnp.ones((8,)))
  with pytest.raises(ValueError, match='bias'):
    native_conv.conv(x, jnp.ones((3, 3, 16, 16)), jnp.ones((3,)))
  with pytest.raises(TypeError, match='float32'):
    native_conv.conv(x.astype(jnp.bfloat16), jnp.ones((3, 3, 16, 16)), jnp.ones((16,)))
  assert native_conv.supports((1, 5, 5, 3), (3, 3, 3, 32))
  assert not native_conv.supports((1, 5, 5, 3), (3, 3, 3, 24))


@needs_native
def test_build_caches_by_source_and_flags(tmp_path):
  first = native_conv.build(tmp_path)
  assert first.parent == tmp_path and first.suffix == '.so'
  mtime = first.stat().st_mtime_ns
  assert native_conv.build(tmp_path) == first and first.stat().st_mtime_ns == mtime
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no leftover temp files


def test_build_without_a_compiler_says_so(tmp_path, monkeypatch):
  monkeypatch.setenv('CXX', 'no-such-compiler-here')
  with pytest.raises(RuntimeError, match='no C\\+\\+ compiler'):
    native_conv.build(tmp_path)


def test_auto_falls_back_to_xla_when_native_is_unavailable(monkeypatch):
  monkeypatch.setattr(native_conv, '_load', lambda: 'no compiler (test)')
  assert conv.resolve_impl('auto', 'cpu') == 'xla'
  assert conv.loop_unroll('auto', 'cpu') is True
  with pytest.raises(RuntimeError, match='no compiler \\(test\\)'):
    conv.resolve_impl('native', 'cpu')


def test_native_is_for_cpu_only():
  with pytest.raises(ValueError, match='CPU only'):
    conv.resolve_impl('native', 'gpu')
  assert conv.resolve_impl('auto', 'gpu') == 'xla'


def test_native_conv_can_be_switched_off():
  code = ('from charjax.nn import conv, native_conv; '
          'print(native_conv.unavailable_reason(), conv.resolve_impl("auto", "cpu"))')
  env = {**os.environ, 'CHARJAX_NATIVE_CONV': '0'}
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
  assert out.stdout.strip() == 'disabled by CHARJAX_NATIVE_CONV=0 xla', out.stderr[-2000:]


@needs_native
def test_auto_is_native_on_cpu_with_real_loops():
  assert conv.resolve_impl('auto', 'cpu') == 'native'
  assert conv.loop_unroll('auto', 'cpu') == 1
  assert conv.loop_unroll('native', 'cpu') == 1


@needs_native
def test_subset_cnn_with_native_conv_equals_xla_conv():
  x = jax.random.uniform(jax.random.key(1), (3, 12, 12, 1))
  y = jnp.array([0, 1, 2])
  outputs = {}
  for impl in ('native', 'xla'):
    model = models.SubsetCNN(num_classes=5, conv_features=(16, 32), dense_features=8,
                             conv_impl=impl)
    params = model.init(jax.random.key(0), x, train=False)['params']

    def loss(params):
      logits = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(2)})
      return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), y])

    outputs[impl] = (model.apply({'params': params}, x, train=False), jax.grad(loss)(params))
  (logits, grads), (logits_ref, grads_ref) = outputs['native'], outputs['xla']
  np.testing.assert_allclose(logits, logits_ref, rtol=1e-5, atol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_host_memory_settings_apply_on_glibc_linux_unless_opted_out(monkeypatch):
  import platform
  glibc_linux = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'
  assert host_memory.apply() == glibc_linux
  monkeypatch.setenv(host_memory.OPT_OUT_ENV, '1')
  assert host_memory.apply() is False


@needs_native
@pytest.mark.parametrize('pool', [False, True])
@pytest.mark.parametrize('winograd', [0, 2, 4])
def test_native_kernel_gradient_is_bitwise_reproducible(pool, winograd):
  """The kernel and bias gradients sum over images: the order of those additions must not
  depend on which thread took which image (the threaded path runs for any batch > 1)."""
  kx, kk, kg = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(kx, (37, 14 if winograd != 4 else 18, 14, 16))
  kernel = jax.random.normal(kk, (3, 3, 16, 32)) / 4
  bias = jnp.zeros(32)
  op = native_conv.conv_pool if pool else native_conv.conv
  f = jax.jit(lambda x, k, b: op(x, k, b, winograd))
  g = jax.random.normal(kg, f(x, kernel, bias).shape)
  grads = jax.jit(lambda x, k, b: jax.vjp(f, x, k, b)[1](g))
  first = [np.asarray(a) for a in grads(x, kernel, bias)]
  for _ in range(30):
    again = [np.asarray(a) for a in grads(x, kernel, bias)]
    for a, b in zip(first, again):
      assert a.tobytes() == b.tobytes()


def _relu_dropout_reference(x, kernel, bias, rng, rate, pool=False):
  y = _reference(x, kernel, bias)
  y = jax.nn.relu(pooling.max_pool_2x2(y) if pool else y)
  if rate == 0:
    return y
  mask, keep_prob = dropout.keep_mask(rng, 1 - rate, y.shape)
  return jnp.where(mask, y / keep_prob, 0)


# (x shape, kernel shape, dropout rate, pool): native input gradients (16 input channels)
# or XLA's (one), 8-bit lanes (0.25, 0.5), 16-bit lanes (0.3), ReLU alone (0); without and
# with pooling (Winograd F(4x4) and F(2x2) tiles, direct kernels).
ACT_CASES = [((3, 12, 12, 1), (3, 3, 1, 32), 0.25, False),
             ((2, 9, 9, 16), (3, 3, 16, 32), 0.3, False),
             ((2, 10, 10, 1), (3, 3, 1, 16), 0.0, False),
             ((2, 8, 8, 16), (3, 3, 16, 16), 0.5, False),
             ((3, 10, 10, 16), (3, 3, 16, 32), 0.25, True),
             ((2, 8, 12, 16), (3, 3, 16, 16), 0.0, True),
             ((2, 12, 12, 1), (3, 3, 1, 16), 0.3, True)]


@needs_native
@pytest.mark.parametrize('x_shape,kernel_shape,rate,pool', ACT_CASES)
def test_conv_relu_dropout_equals_relu_then_dropout_and_its_gradients(x_shape, kernel_shape,
                                                                     rate, pool):
  kx, kk, kb, kg = jax.random.split(jax.random.key(11), 4)
  x = jax.random.normal(kx, x_shape)
  kernel = jax.random.normal(kk, kernel_shape) / 3
  bias = jax.random.normal(kb, kernel_shape[3:]) / 10
  rng = jax.random.key(5)
  key = dropout.hash_key(rng)
  fused = jax.jit(lambda x, k, b: native_conv.conv_relu_dropout(x, k, b, key, rate, 4, pool))
  reference = lambda x, k, b: _relu_dropout_reference(x, k, b, rng, rate, pool)
  got, want = fused(x, kernel, bias), reference(x, kernel, bias)
  # the same mask, element for element; values to float32 rounding
  np.testing.assert_array_equal(np.asarray(got) == 0, np.asarray(want) == 0)
  assert 0.2 < float(jnp.mean(got != 0)) < 0.97  # some zeros, many values
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
  g = jax.random.normal(kg, want.shape)
  grads = jax.jit(lambda *a: jax.vjp(fused, *a)[1](g))(x, kernel, bias)
  grads_ref = jax.vjp(reference, x, kernel, bias)[1](g)
  for a, b in zip(grads, grads_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


@needs_native
def test_conv_layer_fuses_its_relu_and_dropout_without_changing_them(monkeypatch):
  x = jax.random.uniform(jax.random.key(1), (4, 10, 10, 1))
  layer = conv.Conv2D(32, impl='native', relu=True, dropout_rate=0.25)
  params = layer.init(jax.random.key(0), x, deterministic=True)
  results = {}
  for fuse in (True, False):
    monkeypatch.setattr(native_conv, 'FUSE_ACTIVATION', fuse)
    f = lambda p: layer.apply(p, x, deterministic=False, rngs={'dropout': jax.random.key(3)})
    hlo = jax.jit(f).lower(params).as_text()
    assert ('charjax_conv_act_forward' in hlo) == fuse
    y, vjp = jax.vjp(f, params)
    results[fuse] = (y, vjp(jnp.cos(y))[0], layer.apply(params, x, deterministic=True))
  (y, grads, eval_y), (y_ref, grads_ref, eval_ref) = results[True], results[False]
  np.testing.assert_array_equal(np.asarray(y) == 0, np.asarray(y_ref) == 0)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6)
  np.testing.assert_allclose(eval_y, eval_ref, rtol=1e-6)
  assert float(jnp.mean(eval_y == 0)) < float(jnp.mean(y == 0))  # no dropout in evaluation
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@needs_native
def test_conv_relu_dropout_draws_one_mask_per_key_under_vmap():
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
  kernel = jax.random.normal(jax.random.key(3), (3, 3, 1, 16))
  bias = jnp.zeros(16)
  keys = jnp.stack([dropout.hash_key(jax.random.key(s)) for s in range(3)])
  f = lambda key: native_conv.conv_relu_dropout(x, kernel, bias, key, 0.25)
  together = jax.jit(jax.vmap(f))(keys)
  for i in range(3):
    np.testing.assert_array_equal(together[i], f(keys[i]))
  assert not np.array_equal(np.asarray(together[0]) == 0, np.asarray(together[1]) == 0)


_SPLIT_SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from charjax.nn import dropout, native_conv
from charjax.runtime import sharding
key = dropout.hash_key(jax.random.key(2))
mesh = sharding.make_mesh(2)
for cin in (1, 16):  # the input gradient by XLA, or native
  x = jax.random.normal(jax.random.key(0), (6, 10, 10, cin))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, cin, 16))
  bias = jnp.zeros(16)
  for pool in (False, True):
    f = lambda x, k: native_conv.conv_relu_dropout(x, k, bias, key, 0.25, 4, pool)
    run = jax.jit(lambda x, k: (f(x, k), jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))),
                                                  argnums=(0, 1))(x, k)))
    whole = run(x, kernel)
    with jax.set_mesh(mesh):
      sharded = jax.device_put(x, sharding.batch_sharded(mesh, 4))
      split = run(sharded, kernel)
      text = run.lower(sharded, kernel).compile().as_text()
    assert f'f32[3,10,10,{cin}]' in text, 'each device should convolve its 3 images'
    np.testing.assert_array_equal(np.asarray(split[0]), np.asarray(whole[0]))
    for a, b in zip(split[1], whole[1]):  # the kernel gradient summed over devices
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                 atol=1e-5 * float(np.abs(b).max()))
print('ok')
'''


@needs_native
def test_conv_relu_dropout_masks_do_not_depend_on_how_the_batch_is_split():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run([sys.executable, '-c', _SPLIT_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-3000:]


@needs_native
def test_conv_relu_dropout_rejects_a_key_that_is_not_hash_words():
  x, kernel, bias = jnp.zeros((1, 5, 5, 1)), jnp.zeros((3, 3, 1, 16)), jnp.zeros(16)
  with pytest.raises(TypeError, match='hash_key'):
    native_conv.conv_relu_dropout(x, kernel, bias, jax.random.key(0), 0.25)
  with pytest.raises(ValueError, match='rate'):
    native_conv.conv_relu_dropout(x, kernel, bias, jnp.zeros(2, jnp.uint32), 1.0)
