"""Train one config with several seeds and report test accuracy as mean ± standard deviation.

  python -m charjax.seeds --config consonants --num_seeds 3 --workdir runs/consonants_seeds

Seed k trains `config` with `config.seed = first_seed + k` in `<workdir>/seed_<k>`, a
normal run (resumable, its own `results.json`); the data split (`split_seed`) is the same
for every seed, so the seeds differ only in initialisation, shuffling, dropout and
augmentation. A seed whose `results.json` exists is not trained again, so rerunning the
command resumes.

With `--together`, the seeds train at once in one compiled program: their states are
stacked and every step is `jax.vmap`ped over the seed (the data are shared), so one
program, one compilation and one dispatch per epoch serve all seeds. Each seed still gets
its own run folder (metrics, best and latest checkpoints, results), with exactly the
draws it would have alone; its `epoch_seconds` are the joint epoch's. charjax's native CPU
convolution runs the seeds one after another inside the program; XLA's convolution batches
them. Resumable when every seed has the same latest checkpoint (as `together` leaves them). `<workdir>/seeds.json` then holds every seed's test accuracy, best
validation loss and epoch, and their mean and sample standard deviation (n - 1), the way
papers report them; model selection is each run's own (best validation loss), never test.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import statistics
import time

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from charjax import checkpointing
from charjax import cli
from charjax import configuration
from charjax import optim
from charjax import progress as progress_lib
from charjax import rundir
from charjax import train
from charjax.data import augment
from charjax.data import input_pipeline
from charjax.data import splits as splits_lib
from charjax.nn import conv
from charjax.runtime import sharding


def summarise(values: list[float]) -> dict:
  """Mean and sample standard deviation (0 for one value)."""
  return {'mean': statistics.fmean(values),
          'std': statistics.stdev(values) if len(values) > 1 else 0.0, 'n': len(values)}


def summarise_subsets(all_results: list[dict]) -> dict:
  """Mean ± std over the seeds of each subset's test accuracy (a run on all of a dataset's
  classes scored on each named subset of them); empty unless every run reports the same."""
  per_run = [r.get('per_subset_accuracy') or {} for r in all_results]
  names = list(per_run[0]) if per_run else []
  if not names or any(list(p) != names for p in per_run):
    return {}
  return {name: summarise([p[name] for p in per_run]) for name in names}


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.seed = seed
  return out


def train_seeds(config: ml_collections.ConfigDict, workdir: str, *, num_seeds: int,
                first_seed: int = 0, together: bool = False) -> dict:
  """Trains (or resumes) `num_seeds` runs of `config`; returns what `seeds.json` holds."""
  if num_seeds < 1:
    raise ValueError(f'num_seeds must be at least 1, got {num_seeds}.')
  root = pathlib.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  configs = [seed_config(config, first_seed + k) for k in range(num_seeds)]
  dirs = [root / f'seed_{k}' for k in range(num_seeds)]
  started = time.time()
  if together and not all((d / 'results.json').exists() for d in dirs):
    all_results = train_together(configs, dirs)
  else:
    all_results = []
    for run_config, run_dir in zip(configs, dirs):
      done = run_dir / 'results.json'
      if done.exists():
        rundir.check_same_config(run_dir, run_config)  # a finished run of this very config
        all_results.append(json.loads(done.read_text()))
        logging.info('seed %d: done before (%s)', run_config.seed, done)
      else:
        all_results.append(train.train_and_evaluate(run_config, str(run_dir)))
  runs = [{'seed': c.seed, 'workdir': str(d), 'test_accuracy': r['test_accuracy'],
           'best_val_loss': r['best_val_loss'], 'best_epoch': r['best_epoch'],
           'train_seconds': r['train_seconds']}
          for c, d, r in zip(configs, dirs, all_results)]
  report = {
      'config': json.loads(config.to_json_best_effort()), 'together': together,
      'this_call_seconds': time.time() - started, 'runs': runs,
      'test_accuracy': summarise([r['test_accuracy'] for r in runs]),
      'best_val_loss': summarise([r['best_val_loss'] for r in runs]),
      'per_subset_test_accuracy': summarise_subsets(all_results),
      'test_protocol': json.loads((root / 'seed_0' / 'results.json').read_text()).get(
          'test_protocol', 'carved'),
  }
  (root / 'seeds.json').write_text(json.dumps(report, indent=2, ensure_ascii=False))
  return report


def _stack(trees):
  """The trees' leaves stacked, in the first tree's structure (the states' optimizers are
  equal but distinct objects, which `jax.tree.map` would refuse)."""
  leaves = [jax.tree.leaves(t) for t in trees]
  return jax.tree.unflatten(jax.tree.structure(trees[0]),
                            [jnp.stack(xs) for xs in zip(*leaves)])


def _unstack(tree, k: int):
  return jax.tree.map(lambda x: x[k], tree)


def train_together(configs: list, dirs: list[pathlib.Path]) -> list[dict]:
  """Trains the runs of `configs` (equal but for `seed`) at once, vmapped over the seed."""
  started = time.time()
  config = configs[0]
  configuration.validate(config)
  if config.mix_in:
    raise configuration.ConfigError(
        f'mix_in={config.mix_in!r} is not supported with --together (each seed would draw '
        'its own training set); train the seeds one after another.')
  model = train.create_model(config, input_pipeline.num_classes(config.dataset, config.subset))
  train.check_model(config, model)
  mesh = train.make_mesh(config)
  with contextlib.ExitStack() as stack:
    stack.enter_context(jax.set_mesh(mesh))
    dirs = [stack.enter_context(rundir.open_run(d, c)) for d, c in zip(dirs, configs)]
    examples, data = input_pipeline.load_splits(config)
    configuration.check_against_data(config, len(data.labels['train']))
    for d, c in zip(dirs, configs):
      rundir.bind_run(d, c, examples, data, splits_lib.named(data.indices, examples.file_names))
    images, labels = (sharding.put_replicated(mesh, x) for x in (data.images, data.labels))
    num_train, batch_size = len(data.labels['train']), config.batch_size
    steps_per_epoch = -(-num_train // batch_size)
    eval_bs = {k: train._eval_batch_size(config, len(y), mesh) for k, y in data.labels.items()}  # pylint: disable=protected-access
    unroll = conv.loop_unroll(config.conv_impl, dtype=config.dtype)
    augmentation = augment.from_config(config)
    learning_rate = optim.schedule(config.optimizer, steps_per_epoch=steps_per_epoch,
                                   num_epochs=config.num_epochs)
    keys = [jax.random.split(jax.random.key(c.seed)) for c in configs]
    started_from = [train.initial_state(c, model, k[0], steps_per_epoch)
                    for c, k in zip(configs, keys)]
    states = [state for state, _ in started_from]
    train_rngs = jnp.stack([k[1] for k in keys])
    managers = [stack.enter_context(checkpointing.manager(d / rundir.CHECKPOINTS)) for d in dirs]
    latest = {m.latest_step() or 0 for m in managers}
    if len(latest) > 1:
      raise rundir.RunDirError(f'The seeds\' latest checkpoints differ ({sorted(latest)}): '
                               'resume them one by one (without --together).')
    done = latest.pop()
    if done:
      states = [checkpointing.restore(m, s, done) for m, s in zip(managers, states)]
    states = sharding.put_replicated(mesh, _stack(states))
    logs = [stack.enter_context(
        rundir.MetricsLog(d, done, keep_last=config.train_on_validation)) for d in dirs]

    epoch_fn = jax.jit(jax.vmap(lambda s, r, e: train.train_epoch(
        s, images['train'], labels['train'], r, e, batch_size=batch_size, unroll=unroll,
        augmentation=augmentation, label_smoothing=config.label_smoothing),
        in_axes=(0, 0, None)), donate_argnums=0)
    eval_fn = {k: jax.jit(jax.vmap(lambda s, k=k: train.evaluate(
        s, images[k], labels[k], batch_size=eval_bs[k], unroll=unroll))) for k in images}
    for epoch in range(done + 1, config.num_epochs + 1):
      tick = time.perf_counter()
      states, sums = epoch_fn(states, train_rngs, epoch)
      sums = jax.device_get(sums)
      seconds = time.perf_counter() - tick
      val_sums = jax.device_get(eval_fn['validation'](states))
      val_seconds = time.perf_counter() - tick - seconds
      rate = float(learning_rate((epoch - 1) * steps_per_epoch))
      for k, (log, manager) in enumerate(zip(logs, managers)):
        mine = _unstack(sums, k)
        train._check_finite(mine, epoch, steps_per_epoch, dirs[k])  # pylint: disable=protected-access
        val = train._summarise(_unstack(val_sums, k))  # pylint: disable=protected-access
        record = train._epoch_record(epoch, train._summarise(mine), val, seconds, val_seconds,  # pylint: disable=protected-access
                                     num_train, rate, best=log.improves(val['loss']))
        log.append(record)  # before the checkpoint, as in train.train_and_evaluate
        if record['best'] or epoch % config.checkpoint_every_epochs == 0 or (
            epoch == config.num_epochs):
          checkpointing.save(manager, epoch, _unstack(states, k),
                             train._checkpoint_metrics(record))  # pylint: disable=protected-access
      logging.info('epoch %d/%d of %d seeds together: %.1f s; val accuracy %s', epoch,
                   config.num_epochs, len(configs), seconds + val_seconds,
                   ' '.join(f'{l.records[-1]["val_accuracy"]:.4f}' for l in logs))
    results = []
    for k, (c, d, log, manager) in enumerate(zip(configs, dirs, logs, managers)):
      best = checkpointing.restore(manager, _unstack(states, k), log.best_epoch)
      test = jax.device_get(train.evaluate(best, images['test'], labels['test'],
                                           batch_size=eval_bs['test'], unroll=unroll))
      predictions = test.pop('predictions')
      result = rundir.results(c, log, train._summarise(test), predictions, data,  # pylint: disable=protected-access
                              resumed_from=done, started=started, mesh=mesh)
      result['trained_together_with_seeds'] = [x.seed for x in configs]
      if started_from[k][1]:
        result['initialised_from'] = started_from[k][1]
      rundir.write_results(d, result)
      results.append(result)
  return results


def main(argv):
  del argv
  progress_lib.plain_logs()
  report = cli.exit_on_error(train_seeds, flags.FLAGS.config, flags.FLAGS.workdir,
                             num_seeds=flags.FLAGS.num_seeds, first_seed=flags.FLAGS.first_seed,
                             together=flags.FLAGS.together, errors=(train.TrainingDiverged,))
  acc = report['test_accuracy']
  each = ', '.join(f'{100 * r["test_accuracy"]:.2f}' for r in report['runs'])
  print(f'test accuracy over {acc["n"]} seeds: {100 * acc["mean"]:.2f} ± {100 * acc["std"]:.2f}% '
        f'({each}); {flags.FLAGS.workdir}/seeds.json')
  for name, subset in report['per_subset_test_accuracy'].items():
    print(f'  {name}: {100 * subset["mean"]:.2f} ± {100 * subset["std"]:.2f}%')

if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Experiment config (name or file).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory holding seed_<k>/ and seeds.json.')
  flags.DEFINE_integer('num_seeds', 3, 'How many seeds.')
  flags.DEFINE_integer('first_seed', 0, 'Seed of the first run.')
  flags.DEFINE_bool('together', False, 'Train the seeds at once, vmapped in one program.')
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
