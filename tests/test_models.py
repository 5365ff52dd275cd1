"""Model shapes, exact parameter counts, and the patch convolution's parity with XLA's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charjax.nn import conv
from charjax.nn import models
from charjax.nn import pooling


def param_count(model, image_size):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, image_size, image_size, 1)),
                                             train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def test_subset_cnn_matches_keras_parameter_count():
  # Keras: conv 320 + conv 18,496 + dense 4,194,560 + dense 9,252.
  assert param_count(models.SubsetCNN(num_classes=36), 36) == 4_222_628
  assert param_count(models.SubsetCNN(num_classes=10), 28) == (
      320 + 18_496 + (12 * 12 * 64 * 256 + 256) + (256 * 10 + 10))


def test_all_classes_cnn_matches_keras_parameter_count():
  # conv 1,280 + 73,792 + 18,464; dense 3,211,776 + 262,656 + 29,754.
  assert param_count(models.AllClassesCNN(num_classes=58), 36) == 3_597_722
  out = models.AllClassesCNN(num_classes=58).apply(
      models.AllClassesCNN(num_classes=58).init(jax.random.key(0), jnp.zeros((2, 36, 36, 1)),
                                                train=False),
      jnp.zeros((3, 36, 36, 1)), train=False)
  assert out.shape == (3, 58)


@pytest.mark.parametrize('activation', ['relu', 'softplus'])
def test_bottleneck_variant_features_and_parameter_count(activation):
  model = models.AllClassesCNN(num_classes=58, bottleneck_features=2,
                               bottleneck_activation=activation)
  # The 2-unit layer adds 512 * 2 + 2 weights; the classifier shrinks to 2 * 58 + 58.
  assert param_count(model, 36) == 3_597_722 - (512 * 58 + 58) + (512 * 2 + 2) + (2 * 58 + 58)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)), train=False)
  x = jax.random.uniform(jax.random.key(1), (4, 12, 12, 1))
  feats, captured = model.apply(variables, x, train=False, features=True,
                                capture_intermediates=True)
  pre = captured['intermediates']['Dense_2']['__call__'][0]  # the 2-unit layer's input sum
  assert feats.shape == (4, 2)
  np.testing.assert_allclose(feats, models.BOTTLENECK_ACTIVATIONS[activation](pre), rtol=1e-6)
  assert bool(jnp.all(feats > 0)) if activation == 'softplus' else bool(jnp.all(feats >= 0))
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (4, 58)


@pytest.mark.parametrize('impl', ['xla', 'patches'])
def test_subset_cnn_output_shape_and_dropout(impl):
  model = models.SubsetCNN(num_classes=12, conv_features=(4, 8), dense_features=16,
                           conv_impl=impl)
  x = jax.random.uniform(jax.random.key(1), (5, 20, 20, 1))
  params = model.init(jax.random.key(0), x, train=False)['params']
  assert params['Conv2D_0']['kernel'].shape == (3, 3, 1, 4)
  eval_out = model.apply({'params': params}, x, train=False)
  assert eval_out.shape == (5, 12)
  np.testing.assert_array_equal(eval_out, model.apply({'params': params}, x, train=False))
  train_out = [model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(s)})
               for s in (1, 2)]
  assert not np.allclose(train_out[0], train_out[1])


@pytest.mark.parametrize('shape', [(2, 9, 9, 1), (5, 110, 110, 2)])  # one chunk; padded chunks
def test_patch_conv_equals_xla_forward_and_gradients(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  k = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], 4))
  np.testing.assert_allclose(conv.conv_patches(x, k), conv.conv_xla(x, k), rtol=1e-5, atol=1e-5)
  loss = lambda f: (lambda x, k: jnp.sum(jnp.sin(f(x, k))))
  gx_p, gk_p = jax.grad(loss(conv.conv_patches), argnums=(0, 1))(x, k)
  gx_x, gk_x = jax.grad(loss(conv.conv_xla), argnums=(0, 1))(x, k)
  np.testing.assert_allclose(gx_p, gx_x, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gk_p, gk_x, rtol=1e-4, atol=1e-3)


def test_conv_impl_resolution_and_loop_unrolling():
  assert conv.resolve_impl('auto', 'gpu') == 'xla'
  assert conv.resolve_impl('patches', 'cpu') == 'patches'
  assert conv.resolve_impl('xla', 'cpu') == 'xla'
  with pytest.raises(ValueError, match='Unknown conv'):
    conv.resolve_impl('fft')
  assert conv.loop_unroll('xla', 'cpu') is True
  assert conv.loop_unroll('patches', 'cpu') == 1
  assert conv.loop_unroll('auto', 'gpu') == 1


def test_max_pool_2x2_matches_flax_max_pool_and_its_gradient():
  x = jax.random.normal(jax.random.key(0), (3, 7, 6, 4))  # odd height: last row dropped
  np.testing.assert_array_equal(pooling.max_pool_2x2(x),
                                nn.max_pool(x, (2, 2), strides=(2, 2)))
  loss = lambda pool: (lambda x: jnp.sum(jnp.sin(pool(x))))
  np.testing.assert_allclose(jax.grad(loss(pooling.max_pool_2x2))(x),
                             jax.grad(loss(lambda x: nn.max_pool(x, (2, 2), (2, 2))))(x),
                             rtol=1e-6)


def test_cpu_flag_is_added_unless_told_not_to(monkeypatch):
  import os
  from charjax.runtime import cpu_flags
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  monkeypatch.delenv(cpu_flags.OPT_OUT_ENV, raising=False)
  assert cpu_flags.apply() and cpu_flags.YNN_CONVOLUTION_OFF in os.environ['XLA_FLAGS']
  monkeypatch.delenv('XLA_FLAGS')
  monkeypatch.setenv(cpu_flags.OPT_OUT_ENV, '1')
  assert not cpu_flags.apply() and 'XLA_FLAGS' not in os.environ
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=')
  monkeypatch.delenv(cpu_flags.OPT_OUT_ENV)
  assert not cpu_flags.apply()  # the user's own choice about YNNPACK is kept


def test_max_pool_gradient_goes_to_the_first_maximum_of_a_window_like_flax():
  x = jnp.array([[1., 3., 0., 0.], [3., 2., 0., 0.]]).reshape(1, 2, 4, 1)  # two tied windows
  pooled, vjp = jax.vjp(pooling.max_pool_2x2, x)
  np.testing.assert_array_equal(pooled.ravel(), [3., 0.])
  got = vjp(jnp.array([10., 20.]).reshape(1, 1, 2, 1))[0]
  np.testing.assert_array_equal(got.reshape(2, 4), [[0., 10., 20., 0.], [0., 0., 0., 0.]])
  ref = jax.vjp(lambda x: nn.max_pool(x, (2, 2), (2, 2)), x)[1](
      jnp.array([10., 20.]).reshape(1, 1, 2, 1))[0]
  np.testing.assert_array_equal(got, ref)


def test_relu_after_pooling_equals_relu_before_pooling():
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 5))
  np.testing.assert_array_equal(nn.relu(pooling.max_pool_2x2(x)),
                                pooling.max_pool_2x2(nn.relu(x)))


def test_resnet_shapes_parameter_count_and_same_padding():
  model = models.create({'name': 'ResNet'}, num_classes=36, conv_impl='auto')
  # stem 3*3*1*32+32, its norm 2*32; block 32->32: two convs (9*32*32+32) and norms 2*(2*32);
  # block 32->64: 9*32*64+64, 9*64*64+64, norms 2*(2*64), projection 32*64; block 64->128:
  # 9*64*128+128, 9*128*128+128, norms 2*(2*128), projection 64*128; dense 128*36+36.
  expected = ((320 + 64) + (2 * 9_248 + 128) + (18_496 + 36_928 + 256 + 2_048)
              + (73_856 + 147_584 + 512 + 8_192) + (128 * 36 + 36))
  assert param_count(model, 36) == expected == 311_524
  variables = model.init(jax.random.key(0), jnp.zeros((1, 36, 36, 1)), train=False)
  x = jax.random.uniform(jax.random.key(1), (3, 36, 36, 1))
  assert model.apply(variables, x, train=False).shape == (3, 36)
  assert model.apply(variables, x, train=False, features=True).shape == (3, 128)
  # 'SAME': the stem keeps 36x36; blocks start as the identity (zero-initialised last scale).
  stem = model.apply(variables, x, train=False, capture_intermediates=True,
                     mutable=['intermediates'])[1]['intermediates']['stem']['__call__'][0]
  assert stem.shape == (3, 36, 36, 32)


def test_wide_resnet_parameter_count():
  from charjax.configs import recipe
  model = models.create(recipe.NETWORKS['wide'], num_classes=46, conv_impl='auto')
  # stem 9*48+48, its norm 2*48; block 48->48: two convs (9*48*48+48), norms 2*(2*48);
  # block 48->96: 9*48*96+96, 9*96*96+96, norms 2*(2*96), projection 48*96; block 96->192:
  # 9*96*192+192, 9*192*192+192, norms 2*(2*192), projection 96*192; dense 192*46+46.
  expected = ((480 + 96) + (2 * 20_784 + 192) + (41_568 + 83_040 + 384 + 4_608)
              + (166_080 + 331_968 + 768 + 18_432) + (192 * 46 + 46))
  assert param_count(model, 36) == expected == 698_062
  variables = model.init(jax.random.key(0), jnp.zeros((1, 36, 36, 1)), train=False)
  x = jnp.zeros((2, 36, 36, 1))
  assert model.apply(variables, x, train=False, features=True).shape == (2, 192)


def test_resnet_refuses_widths_groupnorm_cannot_split():
  with pytest.raises(models.ModelConfigError, match='multiples of groups'):
    models.create({'name': 'ResNet', 'stage_features': (12, 24)}, num_classes=10)
