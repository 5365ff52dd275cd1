"""RMSprop parity with Keras's update rule, computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from charjax import optim


def keras_rmsprop_reference(params, grads_per_step, lr, rho, eps):
  """Keras 2: v = rho v + (1 - rho) g^2; p -= lr g / (sqrt(v) + eps)."""
  p, v = params.astype(np.float64), np.zeros_like(params, np.float64)
  for g in grads_per_step:
    v = rho * v + (1 - rho) * g ** 2
    p = p - lr * g / (np.sqrt(v) + eps)
  return p


def run_optax(tx, params, grads_per_step):
  p, state = jnp.asarray(params), tx.init(jnp.asarray(params))
  for g in grads_per_step:
    updates, state = tx.update(jnp.asarray(g), state, p)
    p = optax.apply_updates(p, updates)
  return np.asarray(p)


def test_rmsprop_matches_keras_update():
  rng = np.random.default_rng(0)
  params = rng.normal(size=(6,)).astype(np.float32)
  # Tiny gradients make eps's placement matter; large ones check the main term.
  grads = [np.array([1e-6, -3e-7, 2e-8, 0.5, -1.2, 3.0], np.float32) * s for s in (1.0, 0.7)]
  lr, rho, eps = 5e-4, 0.9, 1e-8
  expected = keras_rmsprop_reference(params, grads, lr, rho, eps)
  got = run_optax(optim.keras_rmsprop(lr, rho, eps), params, grads)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  # optax's default (eps inside the square root) is measurably different here.
  default = run_optax(optax.rmsprop(lr, decay=rho, eps=eps), params, grads)
  assert np.max(np.abs(default - expected)) > 1e-4


def test_params_ema_matches_hand_computation_and_leaves_updates_alone():
  rng = np.random.default_rng(1)
  params = rng.normal(size=(5,)).astype(np.float32)
  grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(4)]
  decay, lr = 0.9, 0.1
  tx = optim.create({'name': 'sgd', 'learning_rate': lr, 'ema_decay': decay},
                    steps_per_epoch=1, num_epochs=4)
  p, state = jnp.asarray(params), tx.init(jnp.asarray(params))
  ema = params.astype(np.float64)
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update(jnp.asarray(g), state, p)
    p = optax.apply_updates(p, updates)
    d = min(decay, (1 + t) / (10 + t))
    ema = d * ema + (1 - d) * np.asarray(p, np.float64)
  # The parameters follow plain SGD; the average is kept beside them.
  np.testing.assert_allclose(p, params - lr * np.sum(grads, 0), rtol=1e-5)
  np.testing.assert_allclose(optim.evaluation_params(p, state), ema, rtol=1e-5)
  plain = optim.create({'name': 'sgd', 'learning_rate': lr}, steps_per_epoch=1, num_epochs=4)
  assert optim.evaluation_params(p, plain.init(p)) is p


def test_ema_decay_out_of_range_is_refused():
  import pytest
  with pytest.raises(optim.OptimizerConfigError, match='ema_decay'):
    optim.create({'name': 'adamw', 'learning_rate': 1e-3, 'ema_decay': 1.0},
                 steps_per_epoch=1, num_epochs=1)


def torch_sgd_reference(params, grads_per_step, lr, momentum, weight_decay, nesterov):
  """torch.optim.SGD's documented update: g += wd p; b = m b + g (b = g at the first
  step); g = g + m b if nesterov else b; p -= lr g."""
  p, buf = params.astype(np.float64), None
  for g in grads_per_step:
    g = g + weight_decay * p
    buf = g if buf is None else momentum * buf + g
    p = p - lr * (g + momentum * buf if nesterov else buf)
  return p


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_matches_torch_update_with_coupled_weight_decay(nesterov):
  rng = np.random.default_rng(2)
  params = rng.normal(size=(6,)).astype(np.float32)
  grads = [rng.normal(size=(6,)).astype(np.float32) for _ in range(4)]
  lr, momentum, wd = 0.1, 0.9, 5e-3
  expected = torch_sgd_reference(params, grads, lr, momentum, wd, nesterov)
  tx = optim.create({'name': 'sgd', 'learning_rate': lr, 'momentum': momentum,
                     'nesterov': nesterov, 'weight_decay': wd},
                    steps_per_epoch=1, num_epochs=4)
  np.testing.assert_allclose(run_optax(tx, params, grads), expected, rtol=1e-5, atol=1e-6)
  # The decay is applied: without it the parameters end measurably elsewhere.
  no_decay = torch_sgd_reference(params, grads, lr, momentum, 0.0, nesterov)
  assert np.max(np.abs(no_decay - expected)) > 1e-3


def test_sgd_without_weight_decay_is_optax_sgd_and_negative_decay_is_refused():
  tx = optim.sgd(0.1, momentum=0.9)
  params = jnp.zeros(3)
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(
      optax.sgd(0.1, momentum=0.9).init(params))
  with pytest.raises(optim.OptimizerConfigError, match='weight_decay'):
    optim.create({'name': 'sgd', 'learning_rate': 0.1, 'weight_decay': -1.0},
                 steps_per_epoch=1, num_epochs=1)
