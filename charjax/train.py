"""Training and evaluation: `train_and_evaluate(config, workdir)`.

Command line (a thin absl main):

  python -m charjax.train --config configs/consonants.py --workdir runs/consonants \
      [--config.num_epochs=5 ...]

The workdir receives `config.json`, `splits.json`, `metrics.jsonl` (one line per epoch),
`checkpoints/best` (lowest validation loss), `checkpoints/latest` and `results.json`.
Rerunning the same command after a kill resumes from `checkpoints/latest`; SIGTERM or
Ctrl-C saves it first and exits with 128 + the signal's number; `--restart` starts over.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging as std_logging
import os
import pathlib
import signal
import sys
import threading
import time

from absl import app
from absl import flags
from absl import logging
from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from charjax import augment
from charjax import checkpointing
from charjax import cli
from charjax import configuration
from charjax import conv
from charjax import distributed
from charjax import input_pipeline
from charjax import models
from charjax import optim
from charjax import rundir
from charjax import sharding
from charjax import splits as splits_lib


MODELS = {'SubsetCNN': models.SubsetCNN, 'AllClassesCNN': models.AllClassesCNN}


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """The Flax module named by `config.model` (one of `MODELS`)."""
  if config.model not in MODELS:
    raise configuration.ConfigError(
        f'model={config.model!r} is not one of {", ".join(MODELS)}.')
  model_cls = MODELS[config.model]
  extra = ({'bottleneck_features': config.bottleneck_features,
            'bottleneck_activation': config.bottleneck_activation}
           if config.bottleneck_features else {})
  return model_cls(num_classes=num_classes, conv_features=tuple(config.conv_features),
                   dense_features=config.dense_features, conv_dropout=config.conv_dropout,
                   dense_dropout=config.dense_dropout, conv_impl=config.conv_impl,
                   dtype=jnp.dtype(config.dtype), **extra)


def create_train_state(config: ml_collections.ConfigDict, model, rng: jax.Array,
                       image_size: int) -> train_state.TrainState:
  """Initialised parameters and Keras-style RMSprop state."""
  params = model.init(rng, jnp.zeros((1, image_size, image_size, 1)), train=False)['params']
  tx = optim.keras_rmsprop(config.learning_rate, config.rmsprop_rho, config.rmsprop_epsilon)
  return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def check_model(config: ml_collections.ConfigDict, model) -> None:
  """Raises `ConfigError` when `model` cannot take `config.image_size` inputs (shapes only)."""
  try:
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(
        (1, config.image_size, config.image_size, 1)), train=False))
  except Exception as e:  # any shape error: too small an image for the layers, ...
    raise configuration.ConfigError(
        f'model={config.model} cannot be built for image_size={config.image_size} with '
        f'conv_features={tuple(config.conv_features)}: {type(e).__name__}: '
        f'{str(e).splitlines()[0][:200] if str(e) else ""}') from None


def _batch_metrics(logits, labels, mask):
  logits = logits.astype(jnp.float32)  # the loss in float32 whatever the model computes in
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels) & mask
  return {'loss': jnp.sum(ce * mask), 'correct': jnp.sum(correct), 'count': jnp.sum(mask)}


@jax.jit
def train_step(state: train_state.TrainState, images, labels, mask, rng):
  """One RMSprop step on the masked mean cross-entropy; returns summed batch metrics.

  `mask` marks the examples that count (all of them in `train_epoch`); dropout draws
  from `fold_in(rng, state.step)`.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, images, train=True,
                            rngs={'dropout': dropout_rng})
    metrics = _batch_metrics(logits, labels, mask)
    return metrics['loss'] / metrics['count'], metrics

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  finite = jnp.isfinite(metrics['loss']) & jnp.all(
      jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  # The run's 1-based number of this step if its loss or a gradient is NaN/inf, else a
  # sentinel: `train_epoch` keeps the minimum, `train_and_evaluate` stops on it.
  metrics['first_bad_step'] = jnp.where(finite, _NO_BAD_STEP, state.step + 1)
  return state.apply_gradients(grads=grads), metrics


@jax.jit
def eval_step(state: train_state.TrainState, images, labels, mask):
  """Summed loss and correct count, and the predicted classes, of one batch."""
  logits = state.apply_fn({'params': state.params}, images, train=False)
  return {**_batch_metrics(logits, labels, mask), 'predictions': jnp.argmax(logits, -1)}


def _batches(order: jax.Array, batch_size: int):
  """(steps, batch) gather indices covering `order` once, and the mask of real entries."""
  n = order.shape[0]
  steps = -(-n // batch_size)
  padded = jnp.concatenate([order, jnp.zeros(steps * batch_size - n, order.dtype)])
  mask = jnp.arange(steps * batch_size) < n
  return padded.reshape(steps, batch_size), mask.reshape(steps, batch_size)


_NO_BAD_STEP = jnp.iinfo(jnp.int32).max


def _sum(metrics):
  """Sums stacked per-batch metrics; `first_bad_step` takes the minimum."""
  return {k: (jnp.min(v, axis=0) if k == 'first_bad_step' else jnp.sum(v, axis=0))
          for k, v in metrics.items()}


@functools.partial(jax.jit, static_argnames=('batch_size', 'unroll', 'augmentation'),
                   donate_argnums=0)
def train_epoch(state, images, labels, rng, epoch, *, batch_size: int,
                unroll: int | bool = 1, augmentation: augment.Augmentation | None = None):
  """One epoch as a single compiled loop: shuffle on device, then every batch in turn.

  With an `augmentation`, each training batch is randomly rotated and zoomed on the device
  (draws from `fold_in(rng, state.step)`); evaluation never is.

  Like Keras, the last batch is smaller when the set does not divide evenly: the full
  batches run in a `lax.scan`, the remainder as one more step of its own size (padded to a
  multiple of the mesh's devices and masked, so every example counts exactly once).
  Returns the new state and metrics summed over the epoch. `unroll` is the scan's (see
  `conv.loop_unroll`: True on CPU with XLA's convolution).

  Inside a mesh (`jax.set_mesh`), each batch is split along its `data` axis. The random
  draws (dropout masks, augmentation) are made for the whole batch with JAX's
  partitionable threefry, in which each element's bits depend only on its position, so
  they are the same on any number of devices and for a padded last batch.
  """
  shuffle_rng, dropout_rng, augment_rng = jax.random.split(rng, 3)
  order = jax.random.permutation(jax.random.fold_in(shuffle_rng, epoch), images.shape[0])
  full, rest = divmod(images.shape[0], batch_size)
  devices = sharding.data_parallel_size()

  def step(state, batch_index):
    idx, mask = batch_index
    if devices > 1:
      idx, mask = (jax.lax.with_sharding_constraint(a, P(sharding.DATA_AXIS))
                   for a in (idx, mask))
    batch = images[idx]
    if augmentation is not None:
      batch = augment.random_augment(jax.random.fold_in(augment_rng, state.step), batch,
                                     augmentation)
    return train_step(state, batch, labels[idx], mask, dropout_rng)

  index = order[:full * batch_size].reshape(full, batch_size)
  state, metrics = jax.lax.scan(step, state, (index, jnp.ones(index.shape, bool)),
                                unroll=unroll)
  if rest:
    pad = -rest % devices
    last_index = jnp.concatenate([order[full * batch_size:], jnp.zeros(pad, order.dtype)])
    state, last = step(state, (last_index, jnp.arange(rest + pad) < rest))
    metrics = jax.tree.map(lambda m, l: jnp.concatenate([m, l[None]]), metrics, last)
  return state, _sum(metrics)


@functools.partial(jax.jit, static_argnames=('batch_size', 'unroll'))
def evaluate(state, images, labels, *, batch_size: int, unroll: int | bool = 1):
  """Summed loss, correct count and per-image predictions over a whole split.

  One compiled loop over padded, masked batches; `unroll` as in `train_epoch`. Inside a
  mesh, `batch_size` must be a multiple of its devices (each evaluates its part).
  """
  index, mask = _batches(jnp.arange(images.shape[0]), batch_size)
  if sharding.data_parallel_size() > 1:
    index, mask = (jax.lax.with_sharding_constraint(a, P(None, sharding.DATA_AXIS))
                   for a in (index, mask))
  _, metrics = jax.lax.scan(
      lambda _, b: (None, eval_step(state, images[b[0]], labels[b[0]], b[1])),
      None, (index, mask), unroll=unroll)
  predictions = metrics.pop('predictions').reshape(-1)[:images.shape[0]]
  return {**_sum(metrics), 'predictions': predictions}


def _summarise(sums) -> dict[str, float]:
  count = float(sums['count'])
  return {'loss': float(sums['loss']) / count, 'accuracy': float(sums['correct']) / count}


def _device_info(mesh) -> dict:
  device = mesh.devices.flat[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'device_count': jax.device_count(), 'mesh_devices': int(mesh.size),
          'process_count': jax.process_count(), 'jax_version': jax.__version__}


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts [true, predicted]."""
  return np.bincount(labels * num_classes + predictions,
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class TrainingDiverged(RuntimeError):
  """The loss or a gradient became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
  """SIGTERM or Ctrl-C arrived: the latest checkpoint was saved and the run stopped."""

  def __init__(self, message: str, signum: signal.Signals):
    super().__init__(message)
    self.signum = signum


class _StopSignals:
  """Within the block, SIGTERM and SIGINT set `requested` instead of killing the process."""

  def __init__(self):
    self.requested = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum)
    logging.warning('%s received: finishing this epoch, saving a checkpoint, then stopping '
                    '(send it again to stop at once).', self.requested.name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _read_metrics(path: pathlib.Path, upto: int) -> list[dict]:
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut by a kill
      break
    if record['epoch'] <= upto:
      records.append(record)
  return records


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       restart: bool = False) -> dict:
  """Trains `config`'s model, keeps the best-validation checkpoint, evaluates it on test.

  A workdir holding an unfinished run of the same config resumes from its latest
  checkpoint and ends exactly as an uninterrupted run would (same seed, same machine);
  one holding a run of another config is refused unless `restart`. SIGTERM and Ctrl-C
  stop after the current epoch with the latest state saved (`TrainingInterrupted`); a
  NaN or infinite loss or gradient stops the run (`TrainingDiverged`) with the
  checkpoints of the last good epoch kept. Returns the dict written to `results.json`.
  """
  configuration.validate(config)
  start = time.time()
  num_classes = input_pipeline.num_classes(config.dataset, config.subset)
  model = create_model(config, num_classes)
  check_model(config, model)
  mesh = make_mesh(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # One writer: in a multi-process run, process 0 holds the lock and writes the files;
  # every process reads and checks the same ones.
  writer = distributed.is_writer()
  with rundir.RunLock(workdir) if writer else contextlib.nullcontext():
    if not (workdir / 'config.json').exists():
      rundir.check_workdir(workdir)  # empty, or another tool's files: refused
    elif restart:
      if writer:
        rundir.clear_run(workdir)
    else:
      rundir.check_same_config(workdir, config)
    with jax.set_mesh(mesh):
      return _train(config, workdir, model, num_classes, mesh, start)


def make_mesh(config) -> jax.sharding.Mesh:
  """The data-parallel mesh of `config.num_devices` devices (0: all); `ConfigError` if the
  machine lacks them or `batch_size` does not split evenly over them."""
  try:
    mesh = sharding.make_mesh(config.num_devices)
  except sharding.MeshError as e:
    raise configuration.ConfigError(str(e)) from None
  if config.batch_size % mesh.size:
    raise configuration.ConfigError(
        f'batch_size={config.batch_size} does not split evenly over {mesh.size} devices; '
        f'use a multiple of {mesh.size} or set num_devices.')
  return mesh


def _train(config, workdir: pathlib.Path, model, num_classes: int, mesh, start: float) -> dict:
  """`train_and_evaluate` once the workdir is locked and known to fit this config."""
  examples, data = input_pipeline.load_splits(config)
  configuration.check_against_data(config, len(data.labels['train']))
  record = rundir.fingerprint(examples.file_names, examples.labels, examples.images,
                              data.indices)
  rundir.check_data(workdir, record)
  splits = splits_lib.named(data.indices, examples.file_names)
  rundir.check_splits(workdir, splits)
  writer = distributed.is_writer()
  if writer:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
    splits_lib.save(workdir / 'splits.json', data.indices, examples.file_names)
    rundir.bind_data(workdir, record)
  split_sizes = {name: int(len(y)) for name, y in data.labels.items()}
  logging.info('%s/%s split sizes: %s', config.dataset, config.subset, split_sizes)

  # Data, parameters and optimizer state on every device of the mesh; batches are split.
  whole = sharding.replicated(mesh)
  images = {k: jax.device_put(v, whole) for k, v in data.images.items()}
  labels = {k: jax.device_put(v, whole) for k, v in data.labels.items()}
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = create_train_state(config, model, init_rng, config.image_size)
  state = jax.device_put(state.replace(**distributed.to_host(
      {'step': state.step, 'params': state.params, 'opt_state': state.opt_state})), whole)
  eval_bs = {k: -(-min(config.eval_batch_size, n) // mesh.size) * mesh.size
             for k, n in split_sizes.items()}
  unroll = conv.loop_unroll(config.conv_impl, dtype=config.dtype)
  augmentation = augment.from_config(config)
  steps_per_epoch = -(-split_sizes['train'] // config.batch_size)

  # Closed on the way out, so that no Orbax thread outlives the run.
  with checkpointing.manager(workdir / 'checkpoints' / 'best') as best, \
       checkpointing.manager(workdir / 'checkpoints' / 'latest') as latest:
    done = latest.latest_step() or 0
    if done:
      state = checkpointing.restore(latest, state, done)
      logging.info('Resuming %s from its checkpoint of epoch %d.', workdir, done)
    records = _read_metrics(workdir / 'metrics.jsonl', done)
    best_records = [r for r in records if r['best']]
    best_val_loss = best_records[-1]['val_loss'] if best_records else float('inf')
    best_epoch = best_records[-1]['epoch'] if best_records else 0
    with open(workdir / 'metrics.jsonl' if writer else os.devnull, 'w') as metrics_file, \
         _StopSignals() as stop:
      for record in records:
        metrics_file.write(json.dumps(record) + '\n')
      metrics_file.flush()
      for epoch in range(done + 1, config.num_epochs + 1):
        tick = time.perf_counter()
        state, train_sums = train_epoch(state, images['train'], labels['train'], train_rng,
                                        epoch, batch_size=config.batch_size, unroll=unroll,
                                        augmentation=augmentation)
        train_sums = distributed.to_host(train_sums)
        bad_step = int(train_sums.pop('first_bad_step'))
        if bad_step != _NO_BAD_STEP:
          raise TrainingDiverged(
              f'The loss or a gradient became NaN or infinite in epoch {epoch}, at step '
              f'{bad_step} of the run (batch {bad_step - (epoch - 1) * steps_per_epoch} of '
              f'the epoch). The run stopped; its checkpoints of epoch {epoch - 1} and earlier '
              f'are kept in {workdir / "checkpoints"}. Try a lower learning_rate.')
        train = _summarise(train_sums)
        seconds = time.perf_counter() - tick
        val = _summarise(distributed.to_host(evaluate(
            state, images['validation'], labels['validation'],
            batch_size=eval_bs['validation'], unroll=unroll)))
        improved = val['loss'] < best_val_loss
        if improved:
          best_val_loss, best_epoch = val['loss'], epoch
          checkpointing.save(best, epoch, state, {'val_loss': val['loss']})
        record = {'epoch': epoch, 'train_loss': train['loss'], 'train_accuracy': train['accuracy'],
                  'val_loss': val['loss'], 'val_accuracy': val['accuracy'],
                  'epoch_seconds': seconds, 'images_per_s': split_sizes['train'] / seconds,
                  'best': improved}
        records.append(record)
        metrics_file.write(json.dumps(record) + '\n')
        metrics_file.flush()
        # After the metrics line: a resume drops lines past the latest checkpoint.
        stopping = stop.requested  # read once: a signal may land between the two uses
        if (epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs
            or stopping):
          checkpointing.save(latest, epoch, state)
        logging.info('epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  '
                     '%.0f img/s%s', epoch, config.num_epochs, train['loss'], train['accuracy'],
                     val['loss'], val['accuracy'], record['images_per_s'],
                     '  *best*' if improved else '')
        if stopping and epoch < config.num_epochs:
          raise TrainingInterrupted(
              f'{stopping.name}: stopped after epoch {epoch} with its checkpoint saved in '
              f'{workdir / "checkpoints" / "latest"}; rerun the same command to resume.',
              stopping)

    state = checkpointing.restore(best, state, best_epoch)
    test = evaluate(state, images['test'], labels['test'], batch_size=eval_bs['test'],
                    unroll=unroll)
    test = distributed.to_host(test)
    predictions = test.pop('predictions')
    test = _summarise(test)
    confusion = confusion_matrix(data.labels['test'], predictions, num_classes)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    throughput = [r['images_per_s'] for r in records]
    results = {
        'dataset': config.dataset, 'subset': config.subset, 'model': config.model,
        'test_accuracy': test['accuracy'], 'test_loss': test['loss'],
        'best_epoch': best_epoch, 'best_val_loss': best_val_loss, 'epochs_run': config.num_epochs,
        'split_sizes': split_sizes, 'class_names': data.class_names,
        'per_class_accuracy': dict(zip(data.class_names, per_class.tolist())),
        'confusion_matrix': confusion.tolist(),
        'train_images_per_s': float(np.median(throughput[1:] or throughput)),
        'train_seconds': float(sum(r['epoch_seconds'] for r in records)),
        'resumed_from_epoch': done,
        'wall_clock_s': time.time() - start, 'device': _device_info(mesh),
    }
    if writer:
      (workdir / 'results.json').write_text(json.dumps(results, indent=2, ensure_ascii=False))
    logging.info('test accuracy %.4f (best epoch %d); results in %s', test['accuracy'],
                 best_epoch, workdir / 'results.json')
    return results


def quiet_library_logs(record) -> bool:
  """Keeps Orbax's and TFDS's INFO chatter out of the progress display."""
  noisy = ('orbax', 'tensorflow_datasets', 'jax/_src')
  return record.levelno > std_logging.INFO or not any(n in record.pathname for n in noisy)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().python_handler.addFilter(quiet_library_logs)
  distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                         flags.FLAGS.process_id, auto=flags.FLAGS.distributed)
  try:
    cli.exit_on_error(train_and_evaluate, flags.FLAGS.config, flags.FLAGS.workdir,
                      restart=flags.FLAGS.restart, errors=(TrainingDiverged,))
  except TrainingInterrupted as e:
    print(f'charjax: {e}', file=sys.stderr)
    sys.exit(128 + int(e.signum))


if __name__ == '__main__':
  # Flags are defined here, not at import, so that importing this library defines none.
  config_flags.DEFINE_config_file('config', None, 'Experiment config (configs/*.py).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
  flags.DEFINE_bool('restart', False, 'Delete the run in --workdir (only the files charjax '
                    'wrote) and start over (by default a run of the same config resumes, '
                    'another is refused).')
  flags.DEFINE_integer('num_processes', 0, 'Processes (hosts) of a multi-process run.')
  flags.DEFINE_integer('process_id', -1, "This process's index (0 writes the run's files).")
  flags.DEFINE_string('coordinator_address', '', 'host:port of process 0, for '
                      '--num_processes > 1.')
  flags.DEFINE_bool('distributed', False, 'Join a multi-process run described by the '
                    "cluster's environment (JAX detects Slurm and others).")
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
