"""charjax against Keras `fit` and a PyTorch loop, whole epochs, as each one's users train.

Each framework trains the config's network on the same arrays (the config's training and
validation splits, written once to an `.npz`), batch size, RMSprop settings and epochs,
with validation after every epoch, in a process of its own:

- charjax: `python -m charjax.train --config ... --config.num_epochs=E`, black-box; an
  epoch's time is its `epoch_seconds` + `val_seconds` from `metrics.jsonl` (training and
  validation; the checkpoint saves, which the peers do not make, are left out);
- the peers: `benchmarks/peer_workers.py` (Keras 3 `model.fit` with `validation_data`,
  default and `jit_compile=True`; a standard PyTorch loop, eager and `torch.compile`,
  contiguous and channels_last), run by `--peer_python`, a Python with TensorFlow/Keras
  and PyTorch that need not have charjax or JAX (nothing of charjax's settings reaches
  them: their environment drops `XLA_FLAGS` and charjax's variables).

With `config.augment` on (experiment 3), every framework applies the study's random
rotation and zoom to each training image (see `peer_workers`).

Runs are interleaved: every round starts each framework once, in a shuffled order, with
`--pause` idle seconds before each. A run's speed is the median over its epochs after the
first (which holds compilation) of training images per second. Per round, charjax's speed
is divided by the fastest peer's; the summary is the median of those ratios. The JSON
keeps every round's raw per-epoch seconds.

  python -m benchmarks.end_to_end --config consonants --epochs 3 --rounds 3 \\
      --peer_python /path/to/peers-venv/bin/python --out runs/bench/end_to_end.json
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from benchmarks import timing
from charjax import cli
from charjax import train
from charjax.data import augment
from charjax.data import input_pipeline

_EPOCHS = flags.DEFINE_integer('epochs', 3, 'Epochs per run (the first is not timed).')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds; each starts every framework once.')
_PAUSE = flags.DEFINE_float('pause', 10.0, 'Idle seconds before each run.')
_PEERS = flags.DEFINE_list('peers', ['keras', 'keras_jit', 'torch', 'torch_compile'],
                           'Peer variants (benchmarks/peer_workers.py FRAMEWORKS).')
_PEER_PYTHON = flags.DEFINE_string('peer_python', sys.executable,
                                   'Python that runs the peers (has keras/torch).')
_OUT = flags.DEFINE_string('out', '', 'JSON output path (a .md table is written beside it).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the rounds\' orders.')

WORKER = pathlib.Path(__file__).with_name('peer_workers.py')
REPO = pathlib.Path(__file__).resolve().parents[1]


def _peer_augmentation(config) -> dict | None:
  """The rotation and zoom ranges every framework applies (None: augmentation off); the
  peers implement the study's rotation and zoom only, so shifts, elastic distortion and
  erasing are refused."""
  aug = augment.from_config(config)
  if aug is None:
    return None
  if aug.max_translate or aug.erase_probability or aug.elastic_alpha:
    raise SystemExit('charjax: the peers implement rotation and zoom only; run the '
                     'comparison with --config.augment_translate=0 --config.augment_erase=0 '
                     '--config.augment_elastic_alpha=0.')
  return {'max_rotation_degrees': aug.max_rotation_degrees, 'max_zoom': aug.max_zoom}


def layers_of(model_config) -> list:
  """The network of `config.model` as peer_workers' layer list."""
  m = model_config
  if m.name == 'SubsetCNN':
    return ([('conv', f) for f in m.conv_features] + [('pool',), ('drop', m.conv_dropout),
            ('flat',), ('dense', m.dense_features), ('drop', m.dense_dropout)])
  if m.name == 'AllClassesCNN' and not m.get('bottleneck_features'):
    a, b, c = m.conv_features
    return [('conv', a), ('drop', m.conv_dropout), ('conv', b), ('pool',), ('conv', c),
            ('drop', m.conv_dropout), ('flat',), ('dense', m.dense_features),
            ('drop', m.dense_dropout), ('dense', m.dense_features), ('drop', m.dense_dropout)]
  raise app.UsageError(f'No peer version of model {m.name} (SubsetCNN, AllClassesCNN).')


def config_args(argv: list[str]) -> list[str]:
  """The `--config` and `--config.*` arguments of this command, for charjax's own run."""
  out, take_next = [], False
  for arg in argv[1:]:
    if take_next:
      out.append(arg)
      take_next = False
    elif arg == '--config':
      out.append(arg)
      take_next = True
    elif arg.startswith('--config'):
      if arg.startswith('--config.num_epochs'):
        raise app.UsageError('Give the number of epochs with --epochs.')
      out.append(arg)
  return out


def _peer_env() -> dict:
  keep = {k: v for k, v in os.environ.items()
          if k != 'XLA_FLAGS' and not k.startswith(('CHARJAX_', 'JAX_'))}
  keep.pop('PYTHONPATH', None)
  return keep


def _run_charjax(args: list[str], workdir: pathlib.Path, epochs: int) -> dict:
  cmd = [sys.executable, '-m', 'charjax.train', *args, f'--workdir={workdir}',
         f'--config.num_epochs={epochs}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f'charjax run failed: {proc.stderr[-2000:]}')
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {'epoch_seconds': [r['epoch_seconds'] + r['val_seconds'] for r in records],
          'train_loss': records[-1]['train_loss'], 'val_loss': records[-1]['val_loss']}


def _run_peer(framework: str, spec_path: pathlib.Path) -> dict:
  proc = subprocess.run([_PEER_PYTHON.value, str(WORKER), '--framework', framework,
                         '--spec', str(spec_path)], capture_output=True, text=True,
                        env=_peer_env())
  if proc.returncode:
    raise RuntimeError(f'{framework} failed: {proc.stderr[-2000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def speed(run: dict, num_train: int) -> float:
  """Training images per second: the median over the epochs after the first."""
  timed = run['epoch_seconds'][1:] or run['epoch_seconds']
  return num_train / float(np.median(timed))


def main(argv):
  config = flags.FLAGS.config
  if _EPOCHS.value < 2:
    raise app.UsageError('--epochs must be at least 2 (the first holds compilation).')
  if config.optimizer.name != 'keras_rmsprop' or config.optimizer.schedule != 'constant':
    raise app.UsageError('The peers train with RMSprop at a constant rate.')
  _, data = input_pipeline.load_splits(config)
  num_train, num_val = len(data.labels['train']), len(data.labels['validation'])
  peer_augment = _peer_augmentation(config)  # refuses what the peers cannot do, first
  model = train.create_model(config, len(data.class_names))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros(
      (1, config.image_size, config.image_size, 1)), train=False))
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  tmp = pathlib.Path(tempfile.mkdtemp(prefix='charjax-e2e-'))
  np.savez(tmp / 'data.npz', x_train=data.images['train'], y_train=data.labels['train'],
           x_val=data.images['validation'], y_val=data.labels['validation'])
  spec = {'data': str(tmp / 'data.npz'), 'layers': layers_of(config.model),
          'classes': len(data.class_names), 'image_size': config.image_size,
          'batch_size': config.batch_size, 'epochs': _EPOCHS.value,
          'learning_rate': config.optimizer.learning_rate, 'rho': config.optimizer.rho,
          'epsilon': config.optimizer.epsilon,
          'augment': peer_augment}
  (tmp / 'spec.json').write_text(json.dumps(spec))
  args = config_args(sys.argv)
  frameworks = ['charjax', *_PEERS.value]
  rng = random.Random(_SEED.value)
  try:
    rounds = []
    for r in range(_ROUNDS.value):
      order = frameworks[:]
      rng.shuffle(order)
      runs = {}
      for framework in order:
        time.sleep(_PAUSE.value)
        if framework == 'charjax':
          run = _run_charjax(args, tmp / f'charjax-{r}', _EPOCHS.value)
          run['params'] = params
        else:
          run = _run_peer(framework, tmp / 'spec.json')
          if 'missing' in run:
            print(f'{framework}: not installed for {_PEER_PYTHON.value} ({run["missing"]})')
            continue
          if run['params'] != params:
            raise AssertionError(f'{framework} has {run["params"]} parameters, charjax {params}.')
        run['images_per_s'] = speed(run, num_train)
        runs[framework] = run
        print(f'round {r + 1}  {framework:<18}{run["images_per_s"]:>9.0f} img/s  epochs (s): '
              + ' '.join(f'{s:.2f}' for s in run['epoch_seconds']), flush=True)
      peers = {k: v['images_per_s'] for k, v in runs.items() if k != 'charjax'}
      fastest = max(peers, key=peers.get) if peers else None
      rounds.append({'order': order, 'runs': runs, 'fastest_peer': fastest,
                     'ratio_to_fastest_peer': (runs['charjax']['images_per_s'] / peers[fastest]
                                               if fastest else None)})
  finally:  # the arrays and the runs' workdirs
    shutil.rmtree(tmp, ignore_errors=True)
  summary = {f: float(np.median([r['runs'][f]['images_per_s'] for r in rounds
                                 if f in r['runs']]))
             for f in frameworks if any(f in r['runs'] for r in rounds)}
  ratios = [r['ratio_to_fastest_peer'] for r in rounds if r['ratio_to_fastest_peer']]
  per_peer = {f: float(np.median([r['runs']['charjax']['images_per_s'] /
                                  r['runs'][f]['images_per_s'] for r in rounds
                                  if f in r['runs']]))
              for f in summary if f != 'charjax'}
  result = {
      'config': json.loads(config.to_json_best_effort()), 'params': params,
      'train_images': num_train, 'validation_images': num_val, 'epochs': _EPOCHS.value,
      'machine': {'platform': platform.platform(), 'cpus': os.cpu_count(),
                  'jax': jax.__version__, 'backend': jax.default_backend()},
      'peer_python': _PEER_PYTHON.value,
      'peer_spec': {k: v for k, v in spec.items() if k != 'data'}, 'rounds': rounds,
      'median_images_per_s': summary, 'charjax_over_peer': per_peer,
      'charjax_over_fastest_peer': float(np.median(ratios)) if ratios else None,
      'ratios_per_round': ratios,
  }
  lines = ['| framework | images/s (median of rounds) | charjax / it (median of per-round ratios) |',
           '|---|---:|---:|']
  for f, v in summary.items():
    lines.append(f'| {f} | {v:,.0f} | {"" if f == "charjax" else f"{per_peer[f]:.2f}x"} |')
  if ratios:
    lines.append(f'\ncharjax / fastest peer per round: '
                 + ', '.join(f'{x:.2f}' for x in ratios)
                 + f'; median {result["charjax_over_fastest_peer"]:.2f}x.')
  table = '\n'.join(lines)
  print(table)
  timing.write_json(_OUT.value, result)
  if _OUT.value:
    pathlib.Path(_OUT.value).with_suffix('.md').write_text(table + '\n')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'charjax config (name or file).',
                                  lock_config=True)
  flags.mark_flags_as_required(['config'])
  cli.run(main)
