"""Shared timing helpers of the benchmarks: compile, time, FLOPs, the matmul reference."""

from __future__ import annotations

import functools
import json
import pathlib
import random
import statistics
import time

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from charjax.nn import conv
from charjax.nn import models
from charjax.nn import native_conv
from charjax import optim
from charjax.runtime import sharding
from charjax import train

IMAGE_SIZE = 36
# Batches in the timed 'epoch' (charjax's compiled `train.train_epoch`).
EPOCH_STEPS = 4
# Idle seconds before each call timed in turns. Whatever ran right after an exp-3 epoch
# (batch 400) ran slower here for a while: numpy's 2048^3 matmul at 68, 133 and 170
# GFLOP/s after pauses of 0.05, 0.5 and 2 s.
PAUSE = 2.0
# The study's two networks at the study's input size: (module class, classes, learning rate).
MODELS = {
    'exp2': (models.SubsetCNN, 36, 5e-4),
    'exp3': (models.AllClassesCNN, 58, 1e-3),
}


def make_model(name: str, conv_impl: str = 'auto', dtype=jnp.float32):
  """The Flax module of benchmark model `name` ('exp2' or 'exp3')."""
  cls, classes, _ = MODELS[name]
  return cls(num_classes=classes, conv_impl=conv_impl, dtype=dtype)


def timed(fn, *args, repeats: int) -> float:
  """Median seconds of `repeats` calls of `fn(*args)` after one warm-up call, synchronised."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def round_orders(names, rounds: int, seed: int = 0) -> list[list]:
  """The order of each of `rounds` rounds of calls timed in turns: `names`, shuffled.

  Each round is a fresh (seeded) permutation, so that no call always comes first or always
  follows the same other call: what ran just before a call can slow it (see `PAUSE`).
  """
  rng = random.Random(seed)
  return [rng.sample(list(names), len(names)) for _ in range(rounds)]


def interleaved(calls: dict, rounds: int, pause: float = PAUSE) -> dict[str, list[float]]:
  """Seconds of each call in `calls` ({name: no-argument callable}), timed in turns.

  Every call runs once as a warm-up, then `rounds` rounds each time every call once, in
  the orders of `round_orders`, synchronised, with `pause` idle seconds before each (so
  that the machine settles after the previous call: see `PAUSE`). Timing in turns lets
  every call see the same drift of a shared machine; compare calls round by round.
  """
  for call in calls.values():
    jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for order in round_orders(calls, rounds):
    for name in order:
      time.sleep(pause)
      start = time.perf_counter()
      jax.block_until_ready(calls[name]())
      times[name].append(time.perf_counter() - start)
  return times


def compile_and_flops(fn, *args):
  """(compiled, compile seconds, FLOPs per call from XLA's cost analysis)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, seconds, float(cost.get('flops', 0.0)) if cost else 0.0


def matmul_call(size: int, dtype=jnp.float32):
  """(no-argument callable, FLOPs per call): a jitted (size x size) @ (size x size)."""
  a = jax.random.normal(jax.random.key(0), (size, size)).astype(dtype)
  compiled, _, _ = compile_and_flops(lambda a, b: a @ b, a, a)
  return (lambda: compiled(a, a)), 2 * size ** 3


def fraction_of_matmul(seconds, matmul_seconds, flops: float, matmul_flops: float) -> float:
  """Median over rounds of (FLOP/s of a call) / (FLOP/s of the matmul timed in that round)."""
  return statistics.median(t_mm * flops / (t * matmul_flops)
                           for t, t_mm in zip(seconds, matmul_seconds))


def matmul_reference(size: int, repeats: int) -> dict:
  """GFLOP/s of a jitted float32 (size x size) @ (size x size): the machine's reference."""
  call, flops = matmul_call(size)
  seconds = timed(call, repeats=repeats)
  return {'size': size, 'seconds': seconds, 'gflops': flops / seconds / 1e9}


def conv_layer_passes(batch: int, side: int, cin: int, cout: int, input_grad: bool,
                      impl: str = 'xla'):
  """{pass name: (function, arguments)}: a 3x3 valid convolution's forward pass and gradients.

  `batch` images of `side` x `side` x `cin` into `cout` channels; 'input grad' only where
  `input_grad` (a first layer's input is the data). `impl` is 'xla' (`conv.conv_xla`) or
  'native' (`native_conv.conv` with a zero bias; its weight grad includes the bias grad).
  """
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, side, side, cin))
  kernel = jax.random.normal(keys[1], (3, 3, cin, cout))
  grad = jax.random.normal(keys[2], (batch, side - 2, side - 2, cout))
  if impl == 'native':
    bias = jnp.zeros((cout,))
    fn = lambda x, k: native_conv.conv(x, k, bias)
  elif impl == 'xla':
    fn = conv.conv_xla
  else:
    raise ValueError(f'impl must be "xla" or "native", got {impl!r}')
  passes = {'forward': (fn, (x, kernel)),
            'weight grad': (lambda x, k, g: jax.vjp(lambda k: fn(x, k), k)[1](g)[0],
                            (x, kernel, grad))}
  if input_grad:
    passes['input grad'] = (
        lambda x, k, g: jax.vjp(lambda x: fn(x, k), x)[1](g)[0], (x, kernel, grad))
  return passes


@functools.cache
def model_flops(name: str, batch: int) -> dict[str, float]:
  """FLOPs per call of model `name`'s 'forward', 'gradients' and 'train_step' at `batch`.

  From XLA's cost analysis of the functions built with XLA's convolution, for every
  implementation alike: XLA counts no FLOPs in custom calls such as charjax's native
  convolution, and the arithmetic is the same.
  """
  fns = model_functions(name, batch, 'xla')
  return {fn: compile_and_flops(fns[fn][0], *fns[fn][1])[2]
          for fn in ('forward', 'gradients', 'train_step')}


def model_functions(name: str, batch: int, conv_impl: str = 'auto', dtype=jnp.float32,
                    mesh=None):
  """The functions timed for model `name`: {name: (function, example arguments, images)}.

  'forward', 'gradients' and 'train_step' process one batch; 'epoch' is charjax's training
  loop (`train.train_epoch`: on-device shuffle and `EPOCH_STEPS` train steps, compiled as
  one function, unrolled as `conv.loop_unroll` says). With a `mesh` (call them inside
  `jax.set_mesh(mesh)`), batches are split over its `data` axis and everything else is
  replicated, as `charjax.train` does.
  """
  model = make_model(name, conv_impl, dtype)
  _, classes, learning_rate = MODELS[name]
  rng = jax.random.key(0)
  x = jax.random.uniform(rng, (batch * EPOCH_STEPS, IMAGE_SIZE, IMAGE_SIZE, 1))
  y = jax.random.randint(rng, (batch * EPOCH_STEPS,), 0, classes)
  epoch_x, epoch_y, x, y = x, y, x[:batch], y[:batch]
  mask = jnp.ones((batch,), bool)
  params = model.init(rng, x[:1], train=False)['params']
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=optim.keras_rmsprop(learning_rate))

  def forward(params, x):
    return model.apply({'params': params}, x, train=False)

  def gradients(params, x, y):
    def loss(p):
      logits = model.apply({'params': p}, x, train=True, rngs={'dropout': rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return jax.grad(loss)(params)

  unroll = conv.loop_unroll(conv_impl, dtype=dtype)
  if mesh is not None:
    whole = sharding.replicated(mesh)
    params, state, epoch_x, epoch_y = jax.device_put((params, state, epoch_x, epoch_y), whole)
    x, y, mask = (jax.device_put(a, sharding.batch_sharded(mesh, a.ndim)) for a in (x, y, mask))

  def epoch(state, x, y):
    return train.train_epoch(state, x, y, rng, 1, batch_size=batch, unroll=unroll)

  return {
      'forward': (forward, (params, x), batch),
      'gradients': (gradients, (params, x, y), batch),
      'train_step': (lambda s, x, y, m: train.train_step(s, x, y, m, rng), (state, x, y, mask),
                     batch),
      'epoch': (epoch, (state, epoch_x, epoch_y), batch * EPOCH_STEPS),
  }


def charjax_calls(name: str, batch: int, matmul_size: int = 2048):
  """(calls, parameter count): charjax's lone train step, an epoch's batch and their bounds.

  Each call is (no-argument callable, factor turning its seconds into seconds per batch):
  'charjax' is the jitted train step, 'charjax-epoch' one batch of `train.train_epoch`;
  'charjax-bound' is a jitted float32 matmul of side `matmul_size`, scaled to the time
  the train step's FLOPs (XLA's cost analysis) would take at that matmul's rate: the
  step's time if every operation in it ran as fast as XLA multiplies large matrices.
  'charjax-bound-numpy' is the same with numpy's matmul (its BLAS, OpenBLAS in PyPI's
  numpy).
  """
  fns = model_functions(name, batch)
  step_fn, step_args, _ = fns['train_step']
  step = compile_and_flops(step_fn, *step_args)[0]
  step_flops = model_flops(name, batch)['train_step']
  matmul, matmul_flops = matmul_call(matmul_size)
  a = np.random.default_rng(0).standard_normal((matmul_size, matmul_size), np.float32)
  epoch_fn, epoch_args, images = fns['epoch']
  epoch = compile_and_flops(epoch_fn, *epoch_args)[0]
  params = sum(p.size for p in jax.tree.leaves(step_args[0].params))
  return {'charjax': (lambda: step(*step_args), 1.0),
          'charjax-epoch': (lambda: epoch(*epoch_args), batch / images),
          'charjax-bound': (matmul, step_flops / matmul_flops),
          'charjax-bound-numpy': (lambda: a @ a, step_flops / matmul_flops)}, params


def write_json(path: str, data: dict) -> None:
  """Writes `data` to `path` (parents created) when a path is given."""
  if path:
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    print(f'wrote {out}')
