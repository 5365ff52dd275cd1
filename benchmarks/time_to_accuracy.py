"""Wall-clock time for a training run to reach a test accuracy, and for the whole run.

Trains with charjax's compiled epoch (the same `train_epoch` / `evaluate` as
`charjax.train`) and, after every epoch, evaluates the test split off the clock to see when
it first reaches `--target` (the study's 85.9% for experiment 2 on the consonants). Also
reports the test accuracy of the best-validation-loss epoch, the study's rule.

  python -m benchmarks.time_to_accuracy --config charjax/configs/consonants.py --target=0.859 \
      --out=runs/bench/time_to_accuracy.json
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from benchmarks import timing
from charjax import cli
from charjax import configuration
from charjax.nn import conv
from charjax.data import input_pipeline
from charjax import train

_CONFIG = config_flags.DEFINE_config_file('config', 'charjax/configs/consonants.py', 'Experiment config.',
                                          lock_config=True)
_TARGET = flags.DEFINE_float('target', 0.859, 'Test accuracy to reach.')
_OUT = flags.DEFINE_string('out', '', 'JSON output path (default: print only).')


def accuracy(state, images, labels, batch_size, unroll):
  sums = train.evaluate(state, images, labels, batch_size=min(batch_size, images.shape[0]),
                        unroll=unroll)
  return {'loss': float(sums['loss']) / images.shape[0],
          'accuracy': float(sums['correct']) / images.shape[0]}


def main(argv):
  del argv
  config = _CONFIG.value
  configuration.validate(config)
  _, data = input_pipeline.load_splits(config)
  configuration.check_against_data(config, len(data.labels['train']))
  images = {k: jax.device_put(v) for k, v in data.images.items()}
  labels = {k: jax.device_put(v) for k, v in data.labels.items()}
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = train.create_train_state(config, train.create_model(config, len(data.class_names)),
                                   init_rng, config.image_size)
  unroll = conv.loop_unroll(config.conv_impl, dtype=config.dtype)
  clock, reached, best, curve = 0.0, None, None, []
  for epoch in range(1, config.num_epochs + 1):
    start = time.perf_counter()
    state, sums = train.train_epoch(state, images['train'], labels['train'], train_rng, epoch,
                                    batch_size=config.batch_size, unroll=unroll)
    val = accuracy(state, images['validation'], labels['validation'], config.eval_batch_size,
                   unroll)
    clock += time.perf_counter() - start
    test = accuracy(state, images['test'], labels['test'], config.eval_batch_size, unroll)
    curve.append({'epoch': epoch, 'seconds': clock, 'val_loss': val['loss'],
                  'test_accuracy': test['accuracy']})
    if best is None or val['loss'] < best['val_loss']:
      best = curve[-1]
    if reached is None and test['accuracy'] >= _TARGET.value:
      reached = curve[-1]
    print(f'epoch {epoch:4d}  {clock:8.1f} s  val_loss {val["loss"]:.4f}  '
          f'test_acc {test["accuracy"]:.4f}', flush=True)
  result = {
      'dataset': config.dataset, 'subset': config.subset, 'epochs': config.num_epochs,
      'batch_size': config.batch_size, 'target': _TARGET.value,
      'seconds_to_target': reached and reached['seconds'],
      'epoch_reached': reached and reached['epoch'],
      'seconds_total': clock, 'best_val_epoch': best['epoch'],
      'test_accuracy_at_best_val': best['test_accuracy'],
      'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
      'curve': curve,
  }
  print(f'target {_TARGET.value:.3f}: ' + (
      f'reached at epoch {reached["epoch"]} after {reached["seconds"]:.1f} s' if reached
      else 'not reached') + f'; {config.num_epochs} epochs: {clock:.1f} s; test accuracy at the '
      f'best-validation epoch ({best["epoch"]}): {best["test_accuracy"]:.4f}')
  timing.write_json(_OUT.value, result)


if __name__ == '__main__':
  cli.run(main)  # applies charjax.runtime.cpu_settings on CPU, as charjax's commands do
