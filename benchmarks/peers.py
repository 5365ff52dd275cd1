"""charjax's train step side by side with the same models in Keras 3 (TensorFlow) and PyTorch.

Same architectures (parameter counts are checked equal), same RMSprop settings, same batch,
timed the same way and in turns (`timing.interleaved`: after a warm-up, each of `--repeats`
rounds times every framework once, synchronised), so that all of them see the same drift
of a shared machine. Two charjax rows: the lone jitted `train_step`, and `(epoch)`, the
per-batch time of `train.train_epoch` over `timing.EPOCH_STEPS` batches (what
`charjax.train` runs: shuffle, gather and steps compiled together). Times are medians over
rounds; the speedup column is the median over rounds of the peer's time divided by
charjax's step, then by its epoch row. The peers are optional: `pip install -e
'.[peers]'`; a missing one is reported and skipped.

  python -m benchmarks.peers --models=exp2,exp3 --batch_sizes=400,800 --out=runs/bench/peers.json
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import timing

_MODELS = flags.DEFINE_list('models', ['exp2', 'exp3'], 'Models: exp2 and/or exp3.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['400', '800'], 'Batch sizes.')
_PEERS = flags.DEFINE_list('peers', ['keras', 'torch'], 'Peer frameworks to time.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement (median taken).')
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
  layers = [keras.Input((SIZE, SIZE, 1))]
  for kind, *arg in LAYERS[name]:
    layers.append({'conv': lambda: keras.layers.Conv2D(arg[0], 3, activation='relu'),
                   'pool': lambda: keras.layers.MaxPooling2D(2),
                   'drop': lambda: keras.layers.Dropout(arg[0]),
                   'flat': keras.layers.Flatten,
                   'dense': lambda: keras.layers.Dense(arg[0], activation='relu')}[kind]())
  model = keras.Sequential(layers + [keras.layers.Dense(classes, activation='softmax')])
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
  layers, channels, side = [], 1, SIZE
  for kind, *arg in LAYERS[name]:
    if kind == 'conv':
      layers += [nn.Conv2d(channels, arg[0], 3), nn.ReLU()]
      channels, side = arg[0], side - 2
    elif kind == 'pool':
      layers.append(nn.MaxPool2d(2))
      side //= 2
    elif kind == 'drop':
      layers.append(nn.Dropout(arg[0]))
    elif kind == 'flat':
      layers.append(nn.Flatten())
      channels = channels * side * side
    else:
      layers += [nn.Linear(channels, arg[0]), nn.ReLU()]
      channels = arg[0]
  model = nn.Sequential(*layers, nn.Linear(channels, classes))
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


def main(argv):
  del argv
  rows = []
  print(f'{"model":<7}{"framework":<10}{"batch":>6}{"ms":>10}{"img/s":>10}{"params":>11}'
        f'{"charjax speedup":>17}')
  for name in _MODELS.value:
    for batch in map(int, _BATCH_SIZES.value):
      fns = timing.model_functions(name, batch)
      step_fn, step_args, _ = fns['train_step']
      step = timing.compile_and_flops(step_fn, *step_args)[0]
      # charjax's training loop, per batch: what `train.train_epoch` achieves per step.
      epoch_fn, epoch_args, images = fns['epoch']
      epoch = timing.compile_and_flops(epoch_fn, *epoch_args)[0]
      calls = {'charjax': lambda: step(*step_args), 'charjax-epoch': lambda: epoch(*epoch_args)}
      scale = {'charjax-epoch': batch / images}
      params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(step_args[0].params))
      for peer in _PEERS.value:
        try:
          calls[peer], peer_params = PEERS[peer](name, batch)
        except ImportError as e:
          print(f'{name:<7}{peer:<10} not installed ({e}); pip install -e ".[peers]"')
          continue
        if peer_params != params:
          raise AssertionError(f'{peer} {name} has {peer_params} parameters, charjax {params}.')
      times = timing.interleaved(calls, rounds=_REPEATS.value)
      times = {k: np.asarray(v) * scale.get(k, 1.0) for k, v in times.items()}
      for framework, seconds in times.items():
        median = float(np.median(seconds))
        row = {'model': name, 'framework': framework, 'batch': batch, 'ms': median * 1e3,
               'images_per_s': batch / median, 'params': params,
               'ms_per_round': (seconds * 1e3).round(1).tolist()}
        label = '(epoch)' if framework == 'charjax-epoch' else framework
        line = (f'{name:<7}{label:<10}{batch:>6}'
                f'{median * 1e3:>10.1f}{batch / median:>10.1f}{params:>11}')
        if not framework.startswith('charjax'):
          # Round by round: both sides of each ratio saw the same state of the machine.
          row['charjax_speedup'] = float(np.median(seconds / times['charjax']))
          row['charjax_epoch_speedup'] = float(np.median(seconds / times['charjax-epoch']))
          line += f'{row["charjax_speedup"]:>16.2f}x (epoch {row["charjax_epoch_speedup"]:.2f}x)'
        rows.append(row)
        print(line, flush=True)
  timing.write_json(_OUT.value, {'backend': jax.default_backend(),
                                 'device_kind': jax.devices()[0].device_kind, 'rows': rows})


if __name__ == '__main__':
  app.run(main)
