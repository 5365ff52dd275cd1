"""Training and evaluation: `train_and_evaluate(config, workdir)`.

Command line (a thin absl main):

  python -m charjax.train --config consonants --workdir runs/consonants \
      [--config.num_epochs=5 --config.model.dense_features=128 ...]

The workdir receives `config.json`, `splits.json`, `data.json`, `metrics.jsonl` (one line
per epoch), `checkpoints/<epoch>` (the lowest-validation-loss epoch and the latest),
TensorBoard events in `tensorboard/`, and `results.json`. Rerunning the same command after
a kill resumes from the latest checkpoint; SIGTERM or Ctrl-C saves it first and exits with
128 + the signal's number; `--restart` starts over. The workdir's bookkeeping lives in
`charjax.rundir`, the display in `charjax.progress`.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import sys
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
import optax

from charjax import checkpointing
from charjax import cli
from charjax import configuration
from charjax import optim
from charjax import progress as progress_lib
from charjax import rundir
from charjax import transfer
from charjax.data import augment
from charjax.data import input_pipeline
from charjax.data import mix_in
from charjax.data import splits as splits_lib
from charjax.nn import conv
from charjax.nn import models
from charjax.runtime import distributed
from charjax.runtime import sharding

TrainingInterrupted = rundir.TrainingInterrupted


class TrainingDiverged(RuntimeError):
  """The loss or a gradient became NaN or infinite."""


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """`Model(num_classes=..., **config.model)` (see `charjax.nn.models.create`)."""
  try:
    return models.create(config.model, num_classes=num_classes, conv_impl=config.conv_impl,
                         dtype=jnp.dtype(config.dtype))
  except models.ModelConfigError as e:
    raise configuration.ConfigError(f'model: {e}') from None


def create_train_state(config: ml_collections.ConfigDict, model, rng: jax.Array,
                       image_size: int, steps_per_epoch: int = 1) -> train_state.TrainState:
  """Initialised parameters and the state of `config.optimizer`."""
  params = model.init(rng, jnp.zeros((1, image_size, image_size, 1)), train=False)['params']
  tx = optim.create(config.optimizer, steps_per_epoch=steps_per_epoch,
                    num_epochs=config.num_epochs)
  return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def initial_state(config: ml_collections.ConfigDict, model, rng: jax.Array,
                  steps_per_epoch: int) -> tuple[train_state.TrainState, dict | None]:
  """The state a run starts from: fresh, or with `config.init_from`'s trained parameters
  where they fit (`charjax.transfer`); and the record of that transfer (None if fresh)."""
  state = create_train_state(config, model, rng, config.image_size, steps_per_epoch)
  if not config.init_from:
    return state, None
  params, record = transfer.init_from(config.init_from, state.params)
  return state.replace(params=params), record


def check_model(config: ml_collections.ConfigDict, model) -> None:
  """Raises `ConfigError` when `model` cannot take `config.image_size` inputs (shapes only)."""
  try:
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(
        (1, config.image_size, config.image_size, 1)), train=False))
  except Exception as e:  # any shape error: too small an image for the layers, ...
    raise configuration.ConfigError(
        f'model {config.model.name} cannot be built for image_size={config.image_size} with '
        f'{dict(config.model)}: {type(e).__name__}: '
        f'{str(e).splitlines()[0][:200] if str(e) else ""}') from None


def _batch_metrics(logits, labels, mask, label_smoothing: float = 0.0, mixed_with=None):
  logits = logits.astype(jnp.float32)  # the loss in float32 whatever the model computes in
  if mixed_with is None and not label_smoothing:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  else:
    one_hot = lambda y: jax.nn.one_hot(y, logits.shape[-1])
    targets = one_hot(labels)
    if mixed_with is not None:  # w * one_hot(labels) + (1 - w) * one_hot(other labels)
      other_labels, weights = mixed_with
      targets = weights[:, None] * targets + (1 - weights[:, None]) * one_hot(other_labels)
      # The label with the larger weight is the one a prediction is counted right for.
      labels = jnp.where(weights >= 0.5, labels, other_labels)
    ce = optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing))
  correct = (jnp.argmax(logits, -1) == labels) & mask
  return {'loss': jnp.sum(ce * mask), 'correct': jnp.sum(correct), 'count': jnp.sum(mask)}


@functools.partial(jax.jit, static_argnames=('label_smoothing',))
def train_step(state: train_state.TrainState, images, labels, mask, rng, *,
               label_smoothing: float = 0.0, mixed_with=None):
  """One optimiser step on the masked mean cross-entropy; returns summed batch metrics.

  `mask` marks the examples that count (all of them in `train_epoch`); dropout draws
  from `fold_in(rng, state.step)`. With `label_smoothing` = e, the targets are
  `(1 - e) * one_hot + e / classes` (the reported training loss is that objective;
  evaluation's loss is always the plain cross-entropy). `mixed_with` = (other labels,
  weights w), for images mixed in pairs (`augment.mix_pairs`), makes the targets
  `w * one_hot(labels) + (1 - w) * one_hot(other labels)` before the smoothing; a
  prediction counts as correct for the label of larger weight.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, images, train=True,
                            rngs={'dropout': dropout_rng})
    metrics = _batch_metrics(logits, labels, mask, label_smoothing, mixed_with)
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
  """Summed loss and correct count, and the predicted classes, of one batch (with the
  parameters' moving average where the optimiser keeps one: `optim.evaluation_params`)."""
  params = optim.evaluation_params(state.params, state.opt_state)
  logits = state.apply_fn({'params': params}, images, train=False)
  return {**_batch_metrics(logits, labels, mask), 'predictions': jnp.argmax(logits, -1)}


_NO_BAD_STEP = jnp.iinfo(jnp.int32).max
# `fold_in` data deriving the random stream of `config.mix_in`'s draws from the seed, apart
# from the initialisation's and training's (`jax.random.split` of the same key).
_MIX_IN_STREAM = 0x6D6978


def _sum(metrics):
  """Sums stacked per-batch metrics; `first_bad_step` takes the minimum."""
  return {k: (jnp.min(v, axis=0) if k == 'first_bad_step' else jnp.sum(v, axis=0))
          for k, v in metrics.items()}


@functools.partial(jax.jit, static_argnames=('batch_size', 'unroll', 'augmentation', 'progress',
                                             'label_smoothing'), donate_argnums=0)
def train_epoch(state, images, labels, rng, epoch, *, batch_size: int,
                unroll: int | bool = 1, augmentation: augment.Augmentation | None = None,
                progress: bool = False, label_smoothing: float = 0.0):
  """One epoch as a single compiled loop: shuffle on device, then every batch in turn.

  With an `augmentation`, each training batch is randomly rotated, zoomed, shifted and
  erased on the device (draws from `fold_in(rng, state.step)`), then its images mixed in
  pairs if it says so (`augment.mix_pairs`); evaluation never is.
  `label_smoothing` as in `train_step`.

  Like Keras, the last batch is smaller when the set does not divide evenly: the full
  batches run in a `lax.scan`, the remainder as one more step of its own size (padded to a
  multiple of the mesh's devices and masked, so every example counts exactly once).
  Returns the new state and metrics summed over the epoch. `unroll` is the scan's (see
  `conv.loop_unroll`: True on CPU with XLA's convolution).

  Inside a mesh (`jax.set_mesh`), each batch is split along its `data` axis. The random
  draws are made for the whole batch, each element's bits depending only on its position
  (augmentation: JAX's partitionable threefry; dropout masks: a hash of the element's
  index, `charjax.nn.dropout`), so they are the same on any number of devices and for a
  padded last batch.

  With `progress`, each step reports its number to `charjax.progress.tick` (a host
  callback that moves the terminal's progress bar); the computed values are the same.
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
    batch, batch_labels, mixed_with = images[idx], labels[idx], None
    if augmentation is not None:
      step_rng = jax.random.fold_in(augment_rng, state.step)
      batch = augment.random_augment(step_rng, batch, augmentation)
      if augmentation.mix:  # its own key: the other draws stay those made without it
        batch, other_labels, weights = augment.mix_pairs(
            jax.random.fold_in(step_rng, 4), batch, batch_labels, mask, augmentation)
        mixed_with = (other_labels, weights)
    if progress:
      jax.debug.callback(progress_lib.tick, state.step)
    return train_step(state, batch, batch_labels, mask, dropout_rng,
                      label_smoothing=label_smoothing, mixed_with=mixed_with)

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

  One compiled function: the full batches in a loop (`unroll` as in `train_epoch`), then,
  as in training, the remainder as one smaller batch of its own (padded to a multiple of
  the mesh's devices and masked) rather than a padded full batch: a 1,105-image split in
  batches of 1,000 computes 1,105 images, not 2,000. Inside a mesh, `batch_size` must be a
  multiple of its devices (each evaluates its part).
  """
  n = images.shape[0]
  if not n:
    raise ValueError('evaluate: the split holds no images')
  full, rest = divmod(n, batch_size)
  devices = sharding.data_parallel_size()

  def split(spec, *arrays):  # each device evaluates its part of every batch
    if devices == 1:
      return arrays
    return tuple(jax.lax.with_sharding_constraint(a, spec) for a in arrays)

  step = lambda index, mask: eval_step(state, images[index], labels[index], mask)
  sums, predictions = None, []
  if full:
    index = jnp.arange(full * batch_size).reshape(full, batch_size)
    batches = split(P(None, sharding.DATA_AXIS), index, jnp.ones(index.shape, bool))
    _, metrics = jax.lax.scan(lambda _, b: (None, step(*b)), None, batches, unroll=unroll)
    predictions.append(metrics.pop('predictions').reshape(-1))
    sums = _sum(metrics)
  if rest:
    pad = -rest % devices
    index = jnp.concatenate([jnp.arange(full * batch_size, n), jnp.zeros(pad, jnp.int32)])
    last = step(*split(P(sharding.DATA_AXIS), index, jnp.arange(rest + pad) < rest))
    predictions.append(last.pop('predictions')[:rest])
    sums = last if sums is None else jax.tree.map(jnp.add, sums, last)
  return {**sums, 'predictions': jnp.concatenate(predictions)}


def _summarise(sums) -> dict[str, float]:
  count = float(sums['count'])
  return {'loss': float(sums['loss']) / count, 'accuracy': float(sums['correct']) / count}


def _check_finite(train_sums, epoch: int, steps_per_epoch: int, workdir) -> None:
  bad_step = int(train_sums.pop('first_bad_step'))
  if bad_step != _NO_BAD_STEP:
    raise TrainingDiverged(
        f'The loss or a gradient became NaN or infinite in epoch {epoch}, at step '
        f'{bad_step} of the run (batch {bad_step - (epoch - 1) * steps_per_epoch} of '
        f'the epoch). The run stopped; its checkpoints of epoch {epoch - 1} and earlier '
        f'are kept in {workdir / rundir.CHECKPOINTS}. Try a lower learning rate.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       restart: bool = False, show_progress: bool | None = None) -> dict:
  """Trains `config`'s model, keeps the best-validation checkpoint, evaluates it on test.

  With `config.train_on_validation` the validation images are trained on too and the last
  epoch is kept instead (the schedule having been chosen on validation beforehand).

  A workdir holding an unfinished run of the same config resumes from its latest
  checkpoint and ends exactly as an uninterrupted run would (same seed, same machine);
  one holding a run of another config is refused unless `restart`. SIGTERM and Ctrl-C
  stop after the current epoch with the latest state saved (`TrainingInterrupted`); a
  NaN or infinite loss or gradient stops the run (`TrainingDiverged`) with the
  checkpoints of the last good epoch kept. `show_progress` (default: on a terminal) draws
  a bar within each epoch. Returns the dict written to `results.json`.
  """
  started = time.time()
  configuration.validate(config)
  model = create_model(config, input_pipeline.num_classes(config.dataset, config.subset))
  check_model(config, model)
  mesh = make_mesh(config)
  show = progress_lib.interactive() if show_progress is None else show_progress
  with rundir.open_run(workdir, config, restart=restart) as workdir, jax.set_mesh(mesh):
    examples, data = input_pipeline.load_splits(config)
    configuration.check_against_data(config, len(data.labels['train']))
    rundir.bind_run(workdir, config, examples, data,
                    splits_lib.named(data.indices, examples.file_names))
    images, labels = (sharding.put_replicated(mesh, d) for d in (data.images, data.labels))
    mixed = mix_in.load(config, data.class_names, len(data.labels['train']))
    training_set = lambda epoch: (images['train'], labels['train'])
    if mixed:
      extra = sharding.put_replicated(mesh, (mixed.images, mixed.labels))
      mix_rng = jax.random.fold_in(jax.random.key(config.seed), _MIX_IN_STREAM)
      training_set = lambda epoch: mix_in.epoch_training_set(
          images['train'], labels['train'], *extra, mix_rng, epoch, per_epoch=mixed.per_epoch)
    num_train = len(data.labels['train']) + (mixed.per_epoch if mixed else 0)
    batch_size = config.batch_size
    steps_per_epoch = -(-num_train // batch_size)
    eval_bs = {k: _eval_batch_size(config, len(y), mesh) for k, y in data.labels.items()}
    unroll = conv.loop_unroll(config.conv_impl, dtype=config.dtype)
    augmentation = augment.from_config(config)
    learning_rate = optim.schedule(config.optimizer, steps_per_epoch=steps_per_epoch,
                                   num_epochs=config.num_epochs)
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
    state, pretrained = initial_state(config, model, init_rng, steps_per_epoch)
    state = sharding.put_replicated(mesh, state)

    with checkpointing.manager(workdir / rundir.CHECKPOINTS) as checkpoints:
      done = checkpoints.latest_step() or 0
      if done:
        state = checkpointing.restore(checkpoints, state, done)
        logging.info('Resuming %s from its checkpoint of epoch %d.', workdir, done)
      keep_last = config.train_on_validation  # validation is trained on: it selects nothing
      with rundir.MetricsLog(workdir, done, keep_last=keep_last) as log, \
           rundir.StopSignals(workdir) as stop, \
           progress_lib.Summaries(workdir, done, enabled=distributed.is_writer()) as events:
        for epoch in range(done + 1, config.num_epochs + 1):
          tick = time.perf_counter()
          with progress_lib.EpochBar(epoch, config.num_epochs, (epoch - 1) * steps_per_epoch,
                                     steps_per_epoch) if show else contextlib.nullcontext():
            state, train = train_epoch(state, *training_set(epoch), train_rng,
                                       epoch, batch_size=batch_size, unroll=unroll,
                                       augmentation=augmentation, progress=show,
                                       label_smoothing=config.label_smoothing)
            train = distributed.to_host(train)
          _check_finite(train, epoch, steps_per_epoch, workdir)
          seconds = time.perf_counter() - tick
          val = _summarise(distributed.to_host(evaluate(
              state, images['validation'], labels['validation'],
              batch_size=eval_bs['validation'], unroll=unroll)))
          val_seconds = time.perf_counter() - tick - seconds
          record = _epoch_record(epoch, _summarise(train), val, seconds, val_seconds, num_train,
                                 float(learning_rate((epoch - 1) * steps_per_epoch)),
                                 best=log.improves(val['loss']))
          # The line first: a resume keeps the lines up to its checkpoint, so a kill between
          # the two leaves a line that is dropped, never a checkpoint without its line.
          log.append(record)
          if record['best']:
            checkpointing.save(checkpoints, epoch, state, _checkpoint_metrics(record))
          events.write(record)
          stopping = stop.requested  # read once: a signal may land between the two uses
          if (epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs
              or stopping):
            checkpointing.save(checkpoints, epoch, state, _checkpoint_metrics(record))
          logging.info(progress_lib.epoch_line(record, config.num_epochs))
          stop.stop_if_requested(epoch, config.num_epochs, stopping)

        state = checkpointing.restore(checkpoints, state, log.best_epoch)
        test = distributed.to_host(evaluate(state, images['test'], labels['test'],
                                            batch_size=eval_bs['test'], unroll=unroll))
        predictions = test.pop('predictions')
        results = rundir.results(config, log, _summarise(test), predictions, data,
                                 resumed_from=done, started=started, mesh=mesh)
        if pretrained:
          results['initialised_from'] = pretrained
        if mixed:
          results['mix_in'] = mixed.record
    rundir.write_results(workdir, results)
    logging.info('test accuracy %.2f%% (best epoch %d); results in %s',
                 100 * results['test_accuracy'], log.best_epoch, workdir / 'results.json')
    if results.get('per_subset_accuracy'):
      logging.info('test accuracy by subset: %s', ', '.join(
          f'{name} {100 * a:.2f}%' for name, a in results['per_subset_accuracy'].items()))
    return results


def _epoch_record(epoch, train, val, seconds, val_seconds, num_train, learning_rate, *,
                  best) -> dict:
  return {'epoch': epoch, 'train_loss': train['loss'], 'train_accuracy': train['accuracy'],
          'val_loss': val['loss'], 'val_accuracy': val['accuracy'],
          'epoch_seconds': seconds, 'val_seconds': val_seconds,
          'images_per_s': num_train / seconds,
          'learning_rate': learning_rate, 'best': best}


def _checkpoint_metrics(record) -> dict:
  """What the checkpoint manager keeps the best by (see `charjax.checkpointing`)."""
  return {'val_loss': record['val_loss'], 'improved_epoch': record['epoch'] * record['best']}


def _eval_batch_size(config, split_size: int, mesh) -> int:
  """`config.eval_batch_size`, at most the split, rounded up to a multiple of the devices."""
  return -(-min(config.eval_batch_size, split_size) // mesh.size) * mesh.size


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  progress_lib.plain_logs()
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
  config_flags.DEFINE_config_file('config', None, 'Experiment config: a name in charjax/configs (consonants, all_classes, ...) '
                                  'or a file, optionally :variant (e.g. consonants:quick).',
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
