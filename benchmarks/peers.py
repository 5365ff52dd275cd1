"""charjax's train step side by side with the same models in Keras 3 (TensorFlow) and PyTorch.

Same architectures (parameter counts are checked equal), same RMSprop settings, same batch,
timed the same way: each framework in its own process, in turns (`time_in_isolation`:
after a warm-up, each of `--repeats` rounds times every framework once, synchronised, in
a shuffled order, after `--pause` idle seconds), so that all of them see the same drift
of a shared machine. Four charjax rows: the lone jitted `train_step`; `(epoch)`, the
per-batch time of `train.train_epoch` over `timing.EPOCH_STEPS` batches (what
`charjax.train` runs: shuffle, gather and steps compiled together); `(bound)`, the time
the train step's FLOPs (XLA's cost analysis) would take at the rate of a float32 matmul
timed in the same rounds, i.e. the step's time if every operation in it ran as fast as
XLA multiplies large matrices; and `(bound-numpy)`, the same at the rate of numpy's BLAS.
Times are medians over rounds; the speedup column is the median over rounds of the peer's
time divided by charjax's step, then by its epoch and bound rows. The peers are
optional: `pip install -e '.[peers]'`; a missing one is reported and skipped.

  python -m benchmarks.peers --models=exp2,exp3 --batch_sizes=400,800 --out=runs/bench/peers.json
"""

from __future__ import annotations

import multiprocessing
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import peer_workers
from benchmarks import timing
from charjax import cli

_MODELS = flags.DEFINE_list('models', ['exp2', 'exp3'], 'Models: exp2 and/or exp3.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['400', '800'], 'Batch sizes.')
_PEERS = flags.DEFINE_list('peers', ['keras', 'torch'], 'Peer frameworks to time.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement (median taken).')
_PAUSE = flags.DEFINE_float('pause', timing.PAUSE, 'Idle seconds before each timed call.')
_MATMUL = flags.DEFINE_integer('matmul_size', 2048, 'Side of the reference matrix product.')
_OUT = flags.DEFINE_string('out', '', 'JSON output path (default: print only).')

SIZE, RHO, EPS = timing.IMAGE_SIZE, 0.9, 1e-8
# Layer lists of the study's networks: ('conv', filters) | ('pool',) | ('drop', rate) |
# ('flat',) | ('dense', units); the last dense layer is the classifier.
LAYERS = {
    'exp2': [('conv', 32), ('conv', 64), ('pool',), ('drop', 0.25), ('flat',), ('dense', 256),
             ('drop', 0.8)],
    'exp3': [('conv', 128), ('drop', 0.25), ('conv', 64), ('pool',), ('conv', 32),
             ('drop', 0.25), ('flat',), ('dense', 512), ('drop', 0.7), ('dense', 512),
             ('drop', 0.7)],
}


def keras_step(name: str, batch: int):
  """(train-step closure, parameter count) in Keras 3 on TensorFlow."""
  os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
  import keras
  _, classes, lr = timing.MODELS[name]
  model = peer_workers.keras_model(LAYERS[name], classes, SIZE)
  model.compile(optimizer=keras.optimizers.RMSprop(lr, rho=RHO, epsilon=EPS),
                loss='sparse_categorical_crossentropy', metrics=['accuracy'])
  rng = np.random.default_rng(0)
  x = rng.random((batch, SIZE, SIZE, 1), np.float32)
  y = rng.integers(0, classes, batch)
  return (lambda: model.train_on_batch(x, y)), model.count_params()


def torch_step(name: str, batch: int):
  """(train-step closure, parameter count) in PyTorch (eager)."""
  import torch
  from torch import nn
  _, classes, lr = timing.MODELS[name]
  model = peer_workers.torch_model(LAYERS[name], classes, SIZE)
  # torch's RMSprop adds eps outside the square root, as Keras 2 does.
  opt = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=RHO, eps=EPS)
  x = torch.rand(batch, 1, SIZE, SIZE)
  y = torch.randint(0, classes, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()

  return step, sum(p.numel() for p in model.parameters())


PEERS = {'keras': keras_step, 'torch': torch_step}


def _serve(conn, framework: str, name: str, batch: int, matmul_size: int) -> None:
  """Worker process: builds `framework`'s calls, warms them up, then times one per request."""
  try:
    if framework == 'charjax':
      calls, params = timing.charjax_calls(name, batch, matmul_size)
    else:
      step, params = PEERS[framework](name, batch)
      calls = {framework: (step, 1.0)}
  except ImportError as e:
    conn.send(('missing', str(e)))
    return
  for call, _ in calls.values():
    jax.block_until_ready(call())
  conn.send(('ready', params, list(calls)))
  for label in iter(conn.recv, None):
    call, per_batch = calls[label]
    start = time.perf_counter()
    jax.block_until_ready(call())
    conn.send((time.perf_counter() - start) * per_batch)


def time_in_isolation(frameworks, name: str, batch: int, rounds: int,
                      pause: float = timing.PAUSE, matmul_size: int = 2048):
  """({label: seconds per batch, one per round}, {framework: parameter count}).

  Every framework runs in its own process (loading TensorFlow and PyTorch beside JAX slowed
  charjax's epoch by ~20% here), built and warmed up one after another; then each round
  asks every process in turn (in the orders of `timing.round_orders`) for one timed call
  while the others wait idle, so that all of them see the same drift of a shared machine,
  `pause` idle seconds before each.
  """
  context = multiprocessing.get_context('spawn')
  workers, params, times = [], {}, {}
  try:
    for framework in frameworks:
      conn, child = context.Pipe()
      process = context.Process(
          target=_serve, args=(child, framework, name, batch, matmul_size), daemon=True)
      process.start()
      workers.append((conn, process))
      reply = conn.recv()
      if reply[0] == 'missing':
        print(f'{name:<7}{framework:<10} not installed ({reply[1]}); pip install -e ".[peers]"')
        continue
      params[framework] = reply[1]
      times.update({label: (conn, []) for label in reply[2]})
    for order in timing.round_orders(times, rounds):
      for label in order:
        conn, seconds = times[label]
        time.sleep(pause)
        conn.send(label)
        seconds.append(conn.recv())
    return {label: seconds for label, (_, seconds) in times.items()}, params
  finally:
    for conn, process in workers:
      if process.is_alive():
        conn.send(None)
      process.join(timeout=30)


def main(argv):
  del argv
  unknown = set(_PEERS.value) - set(PEERS)
  if unknown:
    raise app.UsageError(f'Unknown --peers {sorted(unknown)}: expected some of {list(PEERS)}.')
  rows = []
  print(f'{"model":<7}{"framework":<14}{"batch":>6}{"ms":>10}{"img/s":>10}{"params":>11}'
        f'{"charjax speedup":>17}')
  for name in _MODELS.value:
    for batch in map(int, _BATCH_SIZES.value):
      times, params = time_in_isolation(['charjax', *_PEERS.value], name, batch,
                                        _REPEATS.value, pause=_PAUSE.value,
                                        matmul_size=_MATMUL.value)
      for framework, count in params.items():
        if count != params['charjax']:
          raise AssertionError(f'{framework} {name} has {count} parameters, '
                               f'charjax {params["charjax"]}.')
      times = {label: np.asarray(seconds) for label, seconds in times.items()}
      for label, seconds in times.items():
        median = float(np.median(seconds))
        row = {'model': name, 'framework': label, 'batch': batch, 'ms': median * 1e3,
               'images_per_s': batch / median, 'params': params['charjax'],
               'ms_per_round': (seconds * 1e3).round(1).tolist()}
        shown = f'({label.removeprefix("charjax-")})' if label.startswith('charjax-') else label
        line = (f'{name:<7}{shown:<14}{batch:>6}'
                f'{median * 1e3:>10.1f}{batch / median:>10.1f}{params["charjax"]:>11}')
        if not label.startswith('charjax'):
          # Round by round: both sides of each ratio saw the same state of the machine.
          for key, ours in [('charjax_speedup', 'charjax'),
                            ('charjax_epoch_speedup', 'charjax-epoch'),
                            ('bound_speedup', 'charjax-bound'),
                            ('bound_numpy_speedup', 'charjax-bound-numpy')]:
            row[key] = float(np.median(seconds / times[ours]))
          line += (f'{row["charjax_speedup"]:>16.2f}x (epoch {row["charjax_epoch_speedup"]:.2f}x,'
                   f' bounds {row["bound_speedup"]:.2f}x, {row["bound_numpy_speedup"]:.2f}x)')
        rows.append(row)
        print(line, flush=True)
  timing.write_json(_OUT.value, {'backend': jax.default_backend(),
                                 'device_kind': jax.devices()[0].device_kind,
                                 'matmul_size': _MATMUL.value, 'rows': rows})


if __name__ == '__main__':
  cli.run(main)  # applies charjax.runtime.cpu_settings on CPU, as charjax's commands do
