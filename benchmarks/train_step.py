"""Times charjax's compiled forward pass, gradients and full train step.

For each model, convolution implementation and batch size: compile time, then the median
of `--repeats` timed calls (after a warm-up call, each ending in `block_until_ready`);
ms per call, images/s, achieved GFLOP/s (FLOPs from XLA's cost analysis of the compiled
function) and that as a fraction of a plain jitted matrix product timed in the same run.
Prints a table and writes JSON (backend and device recorded). Works on CPU and GPU.

  python -m benchmarks.train_step --batch_sizes=1,128,400,800 --out=runs/bench/train_step.json
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from charjax import models
from charjax import optim
from charjax import train
from flax.training import train_state

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '128', '400', '800'], 'Batch sizes.')
_IMPLS = flags.DEFINE_list('conv_impls', ['xla', 'patches'], 'Convolution implementations.')
_FNS = flags.DEFINE_list('fns', ['forward', 'gradients', 'train_step'], 'What to time.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement (median taken).')
_MATMUL = flags.DEFINE_integer('matmul_size', 2048, 'Side of the reference matrix product.')
_OUT = flags.DEFINE_string('out', '', 'JSON output path (default: print only).')

IMAGE_SIZE = 36
NUM_CLASSES = 36


def timed(compiled, *args, repeats: int) -> float:
  """Median seconds of `repeats` calls after one warm-up call."""
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def compile_and_flops(fn, *args):
  """(compiled, compile seconds, FLOPs per call from XLA's cost analysis)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, seconds, float(cost.get('flops', 0.0)) if cost else 0.0


def matmul_reference(size: int, repeats: int) -> dict:
  """GFLOP/s of a jitted float32 (size x size) @ (size x size): the machine's reference."""
  a = jax.random.normal(jax.random.key(0), (size, size))
  compiled, _, _ = compile_and_flops(lambda a, b: a @ b, a, a)
  seconds = timed(compiled, a, a, repeats=repeats)
  return {'size': size, 'seconds': seconds, 'gflops': 2 * size ** 3 / seconds / 1e9}


def model_functions(model, batch: int):
  """The three functions timed, each with example arguments."""
  rng = jax.random.key(0)
  x = jax.random.uniform(rng, (batch, IMAGE_SIZE, IMAGE_SIZE, 1))
  y = jax.random.randint(rng, (batch,), 0, NUM_CLASSES)
  mask = jnp.ones((batch,), bool)
  params = model.init(rng, x[:1], train=False)['params']
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=optim.keras_rmsprop(5e-4))

  def forward(params, x):
    return model.apply({'params': params}, x, train=False)

  def gradients(params, x, y):
    def loss(p):
      logits = model.apply({'params': p}, x, train=True, rngs={'dropout': rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return jax.grad(loss)(params)

  return {
      'forward': (forward, (params, x)),
      'gradients': (gradients, (params, x, y)),
      'train_step': (lambda s, x, y, m: train.train_step(s, x, y, m, rng), (state, x, y, mask)),
  }


def main(argv):
  del argv
  device = jax.devices()[0]
  reference = matmul_reference(_MATMUL.value, _REPEATS.value)
  print(f'backend {jax.default_backend()}  device {device.device_kind}  '
        f'matmul {reference["size"]}^3 reference: {reference["gflops"]:.1f} GFLOP/s')
  rows = []
  header = f'{"model":<10}{"conv":<9}{"function":<12}{"batch":>6}{"ms":>10}{"img/s":>10}' \
           f'{"GFLOP/s":>9}{"of mm":>7}{"compile s":>10}'
  print(header)
  for impl in _IMPLS.value:
    model = models.SubsetCNN(num_classes=NUM_CLASSES, conv_impl=impl)
    for batch in map(int, _BATCH_SIZES.value):
      fns = model_functions(model, batch)
      for name in _FNS.value:
        fn, args = fns[name]
        compiled, compile_s, flops = compile_and_flops(fn, *args)
        seconds = timed(compiled, *args, repeats=_REPEATS.value)
        row = {'model': 'exp2', 'conv_impl': impl, 'function': name, 'batch': batch,
               'ms': seconds * 1e3, 'images_per_s': batch / seconds,
               'gflops': flops / seconds / 1e9, 'compile_s': compile_s}
        row['fraction_of_matmul'] = row['gflops'] / reference['gflops']
        rows.append(row)
        print(f'{"exp2":<10}{impl:<9}{name:<12}{batch:>6}{row["ms"]:>10.1f}'
              f'{row["images_per_s"]:>10.1f}{row["gflops"]:>9.1f}'
              f'{row["fraction_of_matmul"]:>7.2f}{compile_s:>10.2f}', flush=True)
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        'backend': jax.default_backend(), 'device_kind': device.device_kind,
        'jax_version': jax.__version__, 'matmul_reference': reference, 'rows': rows}, indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
