"""Optimisers and learning-rate schedules, built from `config.optimizer`.

`create(config.optimizer, steps_per_epoch=..., num_epochs=...)` looks `name` up in
`OPTIMIZERS` and passes the remaining fields to it, except the schedule's own:
`learning_rate` (the peak rate), `schedule` ('constant' or 'cosine': decay to 0 at the last
step) and `warmup_epochs` (linear ramp from 0, in epochs, fractional allowed). The study's
optimiser, RMSprop with Keras's update rule, is the default; Adam, AdamW and SGD with
momentum are optax's. A constant rate without warm-up is passed to the optimiser as a
number, so its state is exactly the study's (no step counter for a schedule).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import optax


class OptimizerConfigError(ValueError):
  """`config.optimizer` names no known optimiser or gives it fields it does not take."""


def keras_rmsprop(learning_rate, rho: float = 0.9,
                  epsilon: float = 1e-8) -> optax.GradientTransformation:
  """RMSprop as Keras 2 applies it (the study's 2019 stack).

    v <- rho * v + (1 - rho) * g**2      (v starts at 0)
    p <- p - lr * g / (sqrt(v) + epsilon)

  optax's default puts epsilon inside the square root (`eps_in_sqrt=True`); Keras adds it
  outside, which matters early in training, when v is tiny.
  """
  if not 0 <= rho < 1:
    raise ValueError(f'rho={rho} not in [0, 1)')
  if epsilon < 0:
    raise ValueError(f'epsilon={epsilon} is negative')
  return optax.rmsprop(learning_rate, decay=rho, eps=epsilon, initial_scale=0.0,
                       eps_in_sqrt=False, centered=False, momentum=None)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    'keras_rmsprop': keras_rmsprop,
    'adam': optax.adam,
    'adamw': optax.adamw,
    'sgd': optax.sgd,  # momentum=..., nesterov=...
}
SCHEDULES = ('constant', 'cosine')
_SCHEDULE_FIELDS = ('learning_rate', 'schedule', 'warmup_epochs')


def schedule(optimizer_config: Mapping[str, Any], *, steps_per_epoch: int,
             num_epochs: int) -> optax.Schedule:
  """The learning rate at each step (0-based) that `optimizer_config` describes."""
  peak = optimizer_config['learning_rate']
  kind = optimizer_config.get('schedule', 'constant')
  warmup = round(optimizer_config.get('warmup_epochs', 0) * steps_per_epoch)
  total = steps_per_epoch * num_epochs
  if peak <= 0:
    raise OptimizerConfigError(f'optimizer.learning_rate={peak} must be positive')
  if kind not in SCHEDULES:
    raise OptimizerConfigError(
        f'optimizer.schedule={kind!r} is not one of {", ".join(SCHEDULES)}')
  if not 0 <= warmup <= total:
    raise OptimizerConfigError(
        f'optimizer.warmup_epochs={optimizer_config.get("warmup_epochs")} not in [0, '
        f'num_epochs]')
  if kind == 'constant':
    main = optax.constant_schedule(peak)
  else:
    main = optax.cosine_decay_schedule(peak, max(total - warmup, 1))
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def create(optimizer_config: Mapping[str, Any], *, steps_per_epoch: int,
           num_epochs: int) -> optax.GradientTransformation:
  """The optax transformation `optimizer_config` describes (see the module docstring)."""
  fields = dict(optimizer_config)
  name = fields.pop('name', None)
  if name not in OPTIMIZERS:
    raise OptimizerConfigError(
        f'optimizer.name={name!r} is not one of {", ".join(OPTIMIZERS)}')
  lr = schedule(fields, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
  if fields.get('schedule', 'constant') == 'constant' and not fields.get('warmup_epochs', 0):
    lr = fields['learning_rate']  # a number: the optimiser's state has no schedule counter
  for key in _SCHEDULE_FIELDS:
    fields.pop(key, None)
  try:
    return OPTIMIZERS[name](learning_rate=lr, **fields)
  except (TypeError, ValueError) as e:
    raise OptimizerConfigError(f'optimizer {name}: {e}') from None
