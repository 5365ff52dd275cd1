"""The dense layer that computes only what its dropout keeps: parity with the dense product
(values and gradients), the unfused layer, vmap, a split batch, reproducibility."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charjax.nn import dense
from charjax.nn import dropout
from charjax.nn import models
from charjax.nn import native_conv

needs_native = pytest.mark.skipif(
    native_conv._cpu_problem() is not None, reason=f'{native_conv._cpu_problem()}')


def _case(n, K, m, keep, seed=0):
  kx, kw, km, kg = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(kx, (n, K))
  kernel = jax.random.normal(kw, (K, m)) / np.sqrt(K)
  mask = jax.random.uniform(km, (n, m)) < keep
  g = jax.random.normal(kg, (n, m))
  return x, kernel, mask, g


def _reference(x, kernel, mask):
  return jnp.where(mask, jnp.dot(x, kernel, precision='highest'), 0)


# (n, K, m, keep): K and m off every vector and block size (tails of 1-63 floats, one or
# several K blocks), a row with nothing kept (keep 0), everything kept, exp 2's layer.
CASES = [(5, 37, 3, 0.5), (9, 200, 24, 0.3), (3, 1000, 17, 0.0), (4, 70, 8, 1.0),
         (64, 16384, 256, 0.2), (41, 6272, 512, 0.3)]


@needs_native
@pytest.mark.parametrize('n,K,m,keep', CASES)
@pytest.mark.parametrize('native_forward', [True, False])
def test_masked_matmul_equals_the_masked_product_and_its_gradients(n, K, m, keep,
                                                                   native_forward):
  x, kernel, mask, g = _case(n, K, m, keep)
  f = jax.jit(lambda x, k: dense.masked_matmul(x, k, mask, native_forward))
  got, want = f(x, kernel), _reference(x, kernel, mask)
  np.testing.assert_array_equal(np.asarray(got)[~np.asarray(mask)], 0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * (float(jnp.abs(want).max()) + 1))
  # gradients: g is dense, including where the mask drops (those must not count)
  grads = jax.jit(lambda x, k: jax.vjp(f, x, k)[1](g))(x, kernel)
  grads_ref = jax.vjp(lambda x, k: _reference(x, k, mask), x, kernel)[1](g)
  for a, b in zip(grads, grads_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * (float(jnp.abs(b).max()) + 1))


@needs_native
def test_masked_matmul_gradients_are_bitwise_reproducible():
  """The kernel gradient sums over images; its order must not depend on the threads."""
  x, kernel, mask, g = _case(37, 3000, 40, 0.3, seed=4)
  grads = jax.jit(lambda x, k: jax.vjp(lambda x, k: dense.masked_matmul(x, k, mask), x, k)[1](g))
  first = [np.asarray(a) for a in grads(x, kernel)]
  for _ in range(20):
    for a, b in zip(first, grads(x, kernel)):
      assert a.tobytes() == np.asarray(b).tobytes()


def test_masked_matmul_rejects_shapes_it_cannot_multiply():
  x, kernel, mask, _ = _case(4, 10, 6, 0.5)
  with pytest.raises(ValueError, match='mask'):
    dense.masked_matmul(x, kernel, mask[:, :5])
  with pytest.raises(ValueError, match='x \\[n, K\\]'):
    dense.masked_matmul(x[:, :9], kernel, mask)
  with pytest.raises(TypeError, match='float32'):
    dense.masked_matmul(x.astype(jnp.bfloat16), kernel, mask)


@needs_native
@pytest.mark.parametrize('rate', [0.8, 0.7, 0.25])
def test_dense_layer_skips_dropped_products_without_changing_the_layer(monkeypatch, rate):
  x = jax.random.normal(jax.random.key(1), (16, 300))
  layer = dense.Dense(64, relu=True, dropout_rate=rate)
  params = layer.init(jax.random.key(0), x, deterministic=True)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, nn.Dense(64).init(jax.random.key(0), x))  # nn.Dense's parameters
  monkeypatch.setattr(dense, 'SPARSE_MAX_KEEP', 1.0)  # every rate here takes the sparse path
  results = {}
  for sparse in (True, False):
    monkeypatch.setattr(dense, 'SPARSE_DROPOUT', sparse)
    f = lambda p: layer.apply(p, x, deterministic=False, rngs={'dropout': jax.random.key(3)})
    hlo = jax.jit(jax.grad(lambda p: jnp.sum(jnp.cos(f(p))))).lower(params).as_text()
    assert ('charjax_conv_sparse_kernel_grad' in hlo) == sparse
    y, vjp = jax.vjp(f, params)
    results[sparse] = (y, vjp(jnp.cos(y))[0])
  (y, grads), (y_ref, grads_ref) = results[True], results[False]
  np.testing.assert_array_equal(np.asarray(y) == 0, np.asarray(y_ref) == 0)  # the same mask
  assert 0.05 < float(jnp.mean(y != 0)) < 0.6
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))
  evaluation = layer.apply(params, x, deterministic=True)
  np.testing.assert_allclose(evaluation, jax.nn.relu(x @ params['params']['kernel']
                                                     + params['params']['bias']), rtol=1e-5)


@needs_native
def test_dense_layer_is_sparse_only_up_to_its_keep_probability():
  x = jnp.ones((4, 40))
  for rate, sparse in ((0.8, True), (0.75, True), (0.7, False), (0.25, False)):
    layer = dense.Dense(16, relu=True, dropout_rate=rate)
    params = layer.init(jax.random.key(0), x, deterministic=True)
    f = lambda p: jnp.sum(layer.apply(p, x, deterministic=False,
                                      rngs={'dropout': jax.random.key(1)}))
    hlo = jax.jit(jax.grad(f)).lower(params).as_text()
    assert ('charjax_conv_masked_matmul' in hlo) == sparse, rate


@needs_native
def test_models_use_the_sparse_layer_with_the_same_parameters():
  """The models' hidden dense layers are `Dense` (parameters as before: `Dense_0`, ...)."""
  model = models.SubsetCNN(num_classes=10, conv_impl='native')
  x = jnp.zeros((2, 36, 36, 1))
  params = model.init(jax.random.key(0), x, train=False)['params']
  assert sorted(params) == ['Conv2D_0', 'Conv2D_1', 'Dense_0', 'Dense_1']
  step = lambda p: jnp.sum(model.apply({'params': p}, x, train=True,
                                       rngs={'dropout': jax.random.key(1)}))
  assert 'charjax_conv_sparse_input_grad' in jax.jit(jax.grad(step)).lower(params).as_text()


@needs_native
def test_masked_matmul_under_vmap_multiplies_each_member():
  x, kernel, _, g = _case(6, 50, 16, 0.5)
  masks = jax.random.uniform(jax.random.key(9), (3, 6, 16)) < 0.3
  kernels = jnp.stack([kernel, 2 * kernel, -kernel])
  f = lambda k, m: dense.masked_matmul(x, k, m)
  together = jax.jit(jax.vmap(f))(kernels, masks)
  grads = jax.jit(jax.vmap(lambda k, m: jax.grad(lambda k: jnp.sum(f(k, m) * g))(k)))(
      kernels, masks)
  for i in range(3):
    np.testing.assert_allclose(together[i], _reference(x, kernels[i], masks[i]), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(
        grads[i], jax.grad(lambda k: jnp.sum(_reference(x, k, masks[i]) * g))(kernels[i]),
        rtol=1e-4, atol=1e-5)


_SPLIT_SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from charjax.nn import dense
from charjax.runtime import sharding
mesh = sharding.make_mesh(2)
x = jax.random.normal(jax.random.key(0), (6, 300))
kernel = jax.random.normal(jax.random.key(1), (300, 32)) / 17
mask = jax.random.uniform(jax.random.key(2), (6, 32)) < 0.3
for native_forward in (True, False):
  f = lambda x, k: dense.masked_matmul(x, k, mask, native_forward)
  run = jax.jit(lambda x, k: (f(x, k), jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))),
                                                argnums=(0, 1))(x, k)))
  whole = run(x, kernel)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(x, sharding.batch_sharded(mesh, 2))
    split = run(sharded, kernel)
    text = run.lower(sharded, kernel).compile().as_text()
  assert 'f32[3,300]' in text, 'each device should multiply its 3 rows'
  np.testing.assert_allclose(np.asarray(split[0]), np.asarray(whole[0]), rtol=1e-6)
  for a, b in zip(split[1], whole[1]):  # the kernel gradient summed over devices
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
print('ok')
'''


@needs_native
def test_masked_matmul_splits_the_batch_over_devices():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run([sys.executable, '-c', _SPLIT_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-3000:]


def test_dense_layer_without_dropout_is_a_plain_dense_layer():
  x = jax.random.normal(jax.random.key(1), (3, 7))
  layer = dense.Dense(5, relu=True, dropout_rate=0.5, impl='xla')
  params = layer.init(jax.random.key(0), x, deterministic=True)
  p = params['params']
  np.testing.assert_allclose(layer.apply(params, x, deterministic=True),
                             jax.nn.relu(x @ p['kernel'] + p['bias']), rtol=1e-6)
  # with dropout through XLA: the dropout module's mask for the layer's key
  y = layer.apply(params, x, deterministic=False, rngs={'dropout': jax.random.key(2)})
  assert float(jnp.mean(y == 0)) > float(jnp.mean(jax.nn.relu(x @ p['kernel'] + p['bias']) == 0))
  with pytest.raises(ValueError, match='dropout_rate'):
    dense.Dense(5, dropout_rate=1.0).init(jax.random.key(0), x)
