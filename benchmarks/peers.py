"""charjax's train step side by side with the same model in Keras 3 (TensorFlow) and PyTorch.

Same architecture (parameter counts are checked equal), same RMSprop settings, same batch,
timed the same way (median of `--repeats` calls after a warm-up, synchronised). The peers
are optional: `pip install -e '.[peers]'`; a missing one is reported and skipped.

  python -m benchmarks.peers --batch_sizes=800 --out=runs/bench/peers.json
"""

from __future__ import annotations

import json
import pathlib

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import timing as bench
from charjax import models

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['128', '800'], 'Batch sizes.')
_PEERS = flags.DEFINE_list('peers', ['keras', 'torch'], 'Peer frameworks to time.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement (median taken).')
_OUT = flags.DEFINE_string('out', '', 'JSON output path (default: print only).')

SIZE, CLASSES, LR, RHO, EPS = bench.IMAGE_SIZE, bench.NUM_CLASSES, 5e-4, 0.9, 1e-8


def keras_step(batch: int):
  """(train-step closure, parameter count) for experiment 2 in Keras 3 on TensorFlow."""
  import os
  os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
  import keras
  model = keras.Sequential([
      keras.Input((SIZE, SIZE, 1)),
      keras.layers.Conv2D(32, 3, activation='relu'),
      keras.layers.Conv2D(64, 3, activation='relu'),
      keras.layers.MaxPooling2D(2),
      keras.layers.Dropout(0.25),
      keras.layers.Flatten(),
      keras.layers.Dense(256, activation='relu'),
      keras.layers.Dropout(0.8),
      keras.layers.Dense(CLASSES, activation='softmax'),
  ])
  model.compile(optimizer=keras.optimizers.RMSprop(LR, rho=RHO, epsilon=EPS),
                loss='sparse_categorical_crossentropy', metrics=['accuracy'])
  rng = np.random.default_rng(0)
  x = rng.random((batch, SIZE, SIZE, 1), np.float32)
  y = rng.integers(0, CLASSES, batch)
  return (lambda: model.train_on_batch(x, y)), model.count_params()


def torch_step(batch: int):
  """(train-step closure, parameter count) for experiment 2 in PyTorch (eager)."""
  import torch
  from torch import nn
  model = nn.Sequential(
      nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Dropout(0.25), nn.Flatten(), nn.Linear(64 * ((SIZE - 4) // 2) ** 2, 256), nn.ReLU(),
      nn.Dropout(0.8), nn.Linear(256, CLASSES))
  # torch's RMSprop adds eps outside the square root, as Keras 2 does.
  opt = torch.optim.RMSprop(model.parameters(), lr=LR, alpha=RHO, eps=EPS)
  x = torch.rand(batch, 1, SIZE, SIZE)
  y = torch.randint(0, CLASSES, (batch,))

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
  model = models.SubsetCNN(num_classes=CLASSES)
  rows = []
  print(f'{"framework":<10}{"batch":>6}{"ms":>10}{"img/s":>10}{"params":>11}{"charjax x":>11}')
  for batch in map(int, _BATCH_SIZES.value):
    fn, args = bench.model_functions(model, batch)['train_step']
    compiled, _, _ = bench.compile_and_flops(fn, *args)
    ours = bench.timed(compiled, *args, repeats=_REPEATS.value)
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(args[0].params))
    rows.append({'framework': 'charjax', 'batch': batch, 'ms': ours * 1e3,
                 'images_per_s': batch / ours, 'params': params})
    print(f'{"charjax":<10}{batch:>6}{ours * 1e3:>10.1f}{batch / ours:>10.1f}{params:>11}')
    for peer in _PEERS.value:
      try:
        step, peer_params = PEERS[peer](batch)
      except ImportError as e:
        print(f'{peer:<10} not installed ({e}); pip install -e ".[peers]"')
        continue
      if peer_params != params:
        raise AssertionError(f'{peer} model has {peer_params} parameters, charjax {params}.')
      seconds = bench.timed(step, repeats=_REPEATS.value)
      rows.append({'framework': peer, 'batch': batch, 'ms': seconds * 1e3,
                   'images_per_s': batch / seconds, 'params': peer_params,
                   'charjax_speedup': seconds / ours})
      print(f'{peer:<10}{batch:>6}{seconds * 1e3:>10.1f}{batch / seconds:>10.1f}'
            f'{peer_params:>11}{seconds / ours:>10.2f}x', flush=True)
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'backend': jax.default_backend(),
                               'device_kind': jax.devices()[0].device_kind, 'rows': rows},
                              indent=2))


if __name__ == '__main__':
  app.run(main)
