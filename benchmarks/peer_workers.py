"""The study's networks trained as Keras and PyTorch users train them, one epoch at a time.

A standalone script (numpy and the framework only: no charjax, no JAX, no absl), run by
`benchmarks.end_to_end` in a process of its own, with any Python that has the framework:

  python benchmarks/peer_workers.py --framework keras --spec spec.json

`spec.json` gives the data (`.npz` with x_train, y_train, x_val, y_val: NHWC float32 in
[0, 1], int labels), the layers, classes, batch size, epochs, RMSprop settings and,
optionally, `augment` ({max_rotation_degrees, max_zoom}: experiment 3's random rotation
and zoom of every training image, drawn per image, bilinear, zero outside). Each
framework trains for `epochs` epochs with validation after each, and prints one JSON line:
the wall-clock seconds of every epoch (training and validation), the parameter count and
the final losses. Frameworks:

- `keras`: Keras 3 `model.fit` on the in-memory arrays with `validation_data`, as the
  study trains (`jit_compile='auto'`, Keras's default); `keras_jit`: `jit_compile=True`;
  `keras_eager`: `jit_compile=False`.
  With `augment`, Keras's preprocessing layers `RandomRotation` and `RandomZoom` lead the
  model (active in training only, as Keras users add them).
- `torch`: a standard PyTorch loop (shuffled index batches, `zero_grad`, `backward`,
  `step`; validation under `no_grad`), eager; `torch_cl`: the same in channels_last;
  `torch_compile`: the model wrapped in `torch.compile`; `torch_compile_cl`: both.
  With `augment`, each training batch is warped on the fly by `affine_grid` +
  `grid_sample` with a rotation and zoom drawn per image (what torchvision's v2
  `RandomAffine` computes for a tensor, but with per-image draws; torchvision itself is
  not used because its wheels are built for one exact torch release).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def keras_model(layers: list, classes: int, image_size: int, augment: dict | None = None):
  """The network of `layers` (see `spec`) as a Keras 3 Sequential, softmax output."""
  os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
  import keras  # pylint: disable=g-import-not-at-top
  stack = [keras.Input((image_size, image_size, 1))]
  if augment:
    stack += [keras.layers.RandomRotation(augment['max_rotation_degrees'] / 360.0,
                                          fill_mode='constant', fill_value=0.0),
              keras.layers.RandomZoom(augment['max_zoom'], fill_mode='constant',
                                      fill_value=0.0)]
  for kind, *arg in layers:
    stack.append({'conv': lambda: keras.layers.Conv2D(arg[0], 3, activation='relu'),
                  'pool': lambda: keras.layers.MaxPooling2D(2),
                  'drop': lambda: keras.layers.Dropout(arg[0]),
                  'flat': keras.layers.Flatten,
                  'dense': lambda: keras.layers.Dense(arg[0], activation='relu')}[kind]())
  return keras.Sequential(stack + [keras.layers.Dense(classes, activation='softmax')])


def torch_model(layers: list, classes: int, image_size: int):
  """The network of `layers` as a PyTorch `nn.Sequential` returning logits."""
  from torch import nn  # pylint: disable=g-import-not-at-top
  modules, channels, side = [], 1, image_size
  for kind, *arg in layers:
    if kind == 'conv':
      modules += [nn.Conv2d(channels, arg[0], 3), nn.ReLU()]
      channels, side = arg[0], side - 2
    elif kind == 'pool':
      modules.append(nn.MaxPool2d(2))
      side //= 2
    elif kind == 'drop':
      modules.append(nn.Dropout(arg[0]))
    elif kind == 'flat':
      modules.append(nn.Flatten())
      channels = channels * side * side
    else:
      modules += [nn.Linear(channels, arg[0]), nn.ReLU()]
      channels = arg[0]
  return nn.Sequential(*modules, nn.Linear(channels, classes))


def keras_run(spec: dict, data, jit_compile) -> dict:
  os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = keras_model(spec['layers'], spec['classes'], spec['image_size'], spec.get('augment'))
  model.compile(optimizer=keras.optimizers.RMSprop(spec['learning_rate'], rho=spec['rho'],
                                                   epsilon=spec['epsilon']),
                loss='sparse_categorical_crossentropy', metrics=['accuracy'],
                jit_compile=jit_compile)
  seconds = []

  class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):  # after the epoch's validation
      seconds.append(time.perf_counter() - self.start)

  history = model.fit(data['x_train'], data['y_train'], batch_size=spec['batch_size'],
                      epochs=spec['epochs'], validation_data=(data['x_val'], data['y_val']),
                      shuffle=True, verbose=0, callbacks=[EpochTimes()])
  return {'epoch_seconds': seconds, 'params': int(model.count_params()),
          'train_loss': float(history.history['loss'][-1]),
          'val_loss': float(history.history['val_loss'][-1])}


def torch_augment(images, max_rotation_degrees: float, max_zoom: float):
  """Each NCHW image rotated and zoomed about its centre by its own random draw."""
  import math  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  n = images.shape[0]
  angle = (torch.rand(n) * 2 - 1) * math.radians(max_rotation_degrees)
  scale = 1 + (torch.rand(n) * 2 - 1) * max_zoom
  cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
  zero = torch.zeros(n)
  theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
  grid = F.affine_grid(theta, list(images.shape), align_corners=False)
  return F.grid_sample(images, grid, mode='bilinear', padding_mode='zeros',
                       align_corners=False)


def torch_run(spec: dict, data, compiled: bool, channels_last: bool) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_model(spec['layers'], spec['classes'], spec['image_size'])
  params = sum(p.numel() for p in model.parameters())
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(memory_format=fmt)
  # torch's RMSprop adds eps outside the square root, as Keras does.
  opt = torch.optim.RMSprop(model.parameters(), lr=spec['learning_rate'], alpha=spec['rho'],
                            eps=spec['epsilon'])
  net = torch.compile(model) if compiled else model
  to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  x_train = to_nchw(data['x_train']).contiguous(memory_format=fmt)
  x_val = to_nchw(data['x_val']).contiguous(memory_format=fmt)
  y_train = torch.from_numpy(data['y_train'].astype(np.int64))
  y_val = torch.from_numpy(data['y_val'].astype(np.int64))
  batch, seconds, augment = spec['batch_size'], [], spec.get('augment')
  for _ in range(spec['epochs']):
    start = time.perf_counter()
    model.train()
    total = 0.0
    for idx in torch.randperm(len(y_train)).split(batch):
      opt.zero_grad(set_to_none=True)
      xb = x_train[idx]
      if augment:
        xb = torch_augment(xb, **augment).contiguous(memory_format=fmt)
      loss = nn.functional.cross_entropy(net(xb), y_train[idx])
      loss.backward()
      opt.step()
      total += loss.item() * len(idx)
    model.eval()
    val = 0.0
    with torch.no_grad():
      for start_i in range(0, len(y_val), batch):
        xb, yb = x_val[start_i:start_i + batch], y_val[start_i:start_i + batch]
        val += nn.functional.cross_entropy(net(xb), yb, reduction='sum').item()
    seconds.append(time.perf_counter() - start)
  return {'epoch_seconds': seconds, 'params': int(params),
          'train_loss': total / len(y_train), 'val_loss': val / len(y_val)}


FRAMEWORKS = {
    'keras': lambda s, d: keras_run(s, d, 'auto'),
    'keras_jit': lambda s, d: keras_run(s, d, True),
    'keras_eager': lambda s, d: keras_run(s, d, False),
    'torch': lambda s, d: torch_run(s, d, compiled=False, channels_last=False),
    'torch_cl': lambda s, d: torch_run(s, d, compiled=False, channels_last=True),
    'torch_compile': lambda s, d: torch_run(s, d, compiled=True, channels_last=False),
    'torch_compile_cl': lambda s, d: torch_run(s, d, compiled=True, channels_last=True),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--framework', choices=sorted(FRAMEWORKS), required=True)
  parser.add_argument('--spec', required=True)
  args = parser.parse_args()
  spec = json.loads(open(args.spec).read())
  with np.load(spec['data']) as npz:
    data = {k: npz[k] for k in npz.files}
  try:
    result = FRAMEWORKS[args.framework](spec, data)
  except ImportError as e:
    result = {'missing': str(e)}
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
