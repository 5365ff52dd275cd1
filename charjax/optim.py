"""Optimisers and learning-rate schedules, built from `config.optimizer`.

`create(config.optimizer, steps_per_epoch=..., num_epochs=...)` looks `name` up in
`OPTIMIZERS` and passes the remaining fields to it, except the schedule's own:
`learning_rate` (the peak rate), `schedule` ('constant' or 'cosine': decay to 0 at the last
step), `warmup_epochs` (linear ramp from 0, in epochs, fractional allowed) and `ema_decay`
(0: off; else an exponential moving average of the parameters is kept in the optimiser's
state, `params_ema`, and runs are evaluated, checkpointed for use and exported with it:
see `evaluation_params`). The study's optimiser, RMSprop with Keras's update rule, is the
default; Adam and AdamW are optax's; SGD (`sgd`) is optax's with optional momentum and
PyTorch's coupled weight decay. A constant rate without warm-up is passed to the optimiser
as a number, so its state is exactly the study's (no step counter for a schedule).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
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


def sgd(learning_rate, momentum: float | None = None, nesterov: bool = False,
        weight_decay: float = 0.0) -> optax.GradientTransformation:
  """SGD with optional (Nesterov) momentum and PyTorch's coupled weight decay.

  The decay is added to the gradient before the momentum (`g + weight_decay * p`), as
  `torch.optim.SGD(weight_decay=...)` does, not decoupled as in AdamW; without it the
  transformation is optax's `sgd` itself, so its state is unchanged.
  """
  if weight_decay < 0:
    raise ValueError(f'weight_decay={weight_decay} is negative')
  tx = optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
  return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    'keras_rmsprop': keras_rmsprop,
    'adam': optax.adam,
    'adamw': optax.adamw,
    'sgd': sgd,
}
SCHEDULES = ('constant', 'cosine')
_SCHEDULE_FIELDS = ('learning_rate', 'schedule', 'warmup_epochs', 'ema_decay')


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
  ema_decay = fields.get('ema_decay', 0.0)
  if not 0 <= ema_decay < 1:
    raise OptimizerConfigError(f'optimizer.ema_decay={ema_decay} not in [0, 1) (0: off)')
  for key in _SCHEDULE_FIELDS:
    fields.pop(key, None)
  try:
    tx = OPTIMIZERS[name](learning_rate=lr, **fields)
  except (TypeError, ValueError) as e:
    raise OptimizerConfigError(f'optimizer {name}: {e}') from None
  return optax.chain(tx, params_ema(ema_decay)) if ema_decay else tx


class ParamsEmaState(NamedTuple):
  """`params_ema`'s state: updates seen, and the average of the parameters after each."""
  count: jax.Array
  ema: Any


def params_ema(decay: float) -> optax.GradientTransformation:
  """Keeps an exponential moving average of the parameters; leaves the updates unchanged.

  Placed last in a chain, it sees the final updates, so the parameters after a step are
  `params + updates`, and the average becomes `d * ema + (1 - d) * (params + updates)`
  with `d = min(decay, (1 + t) / (10 + t))` at the t-th update (1-based): the usual
  warm-up, so that the average is not dominated by the initialisation in short runs.
  The average starts at the initial parameters.
  """
  def init(params):
    return ParamsEmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.asarray, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('params_ema needs the parameters: call update(updates, state, params)')
    count = state.count + 1
    t = count.astype(jnp.float32)
    d = jnp.minimum(decay, (1 + t) / (10 + t))
    ema = jax.tree.map(lambda e, p, u: d * e + (1 - d) * (p + u).astype(e.dtype),
                       state.ema, params, updates)
    return updates, ParamsEmaState(count, ema)

  return optax.GradientTransformation(init, update)


def evaluation_params(params, opt_state):
  """The parameters a run is evaluated with: the moving average where the optimiser keeps
  one (`ema_decay` > 0), else `params`."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ParamsEmaState))
           if isinstance(s, ParamsEmaState)]
  return found[0].ema if found else params
