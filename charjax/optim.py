"""Optimisers with the update rules of the study's Keras stack."""

from __future__ import annotations

import optax


def keras_rmsprop(learning_rate: float, rho: float = 0.9,
                  epsilon: float = 1e-8) -> optax.GradientTransformation:
  """RMSprop as Keras 2 applies it (the study's 2019 stack).

    v <- rho * v + (1 - rho) * g**2      (v starts at 0)
    p <- p - lr * g / (sqrt(v) + epsilon)

  optax's default puts epsilon inside the square root (`eps_in_sqrt=True`); Keras adds it
  outside, which matters early in training, when v is tiny.
  """
  return optax.rmsprop(learning_rate, decay=rho, eps=epsilon, initial_scale=0.0,
                       eps_in_sqrt=False, centered=False, momentum=None)
