"""Reading finished training runs back: their config, class names and best checkpoint."""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections

from charjax import checkpointing
from charjax import configuration
from charjax import optim
from charjax import rundir
from charjax import train


class RunError(ValueError):
  """A workdir does not hold a finished, readable charjax training run."""


def load_config(workdir) -> ml_collections.ConfigDict:
  """The validated config a run was trained with (`workdir/config.json`)."""
  path = pathlib.Path(workdir) / 'config.json'
  if not path.is_file():
    raise RunError(f'{workdir} is not a charjax run: no config.json.')
  config = ml_collections.ConfigDict(configuration.from_saved(json.loads(path.read_text())))
  configuration.validate(config)
  return config


def load_results(workdir) -> dict:
  """`workdir/results.json` of a finished run."""
  path = pathlib.Path(workdir) / 'results.json'
  if not path.is_file():
    raise RunError(f'{workdir} has no results.json: the run has not finished.')
  return json.loads(path.read_text())


KEPT = ('best', 'last')  # the two states a run keeps (`charjax.checkpointing`)


def restore_best(workdir):
  """(config, model, train state at the best-validation epoch, class names) of a run.

  The state's `params` are the ones the run was evaluated with: the moving average of the
  parameters where its optimiser kept one (`optim.evaluation_params`), so predict, export,
  evaluate and fine-tuning use what the run's figures measured.
  """
  return restore(workdir, 'best')


def restore(workdir, checkpoint: str = 'best'):
  """(config, model, train state, class names) of a run at one of its kept checkpoints.

  `checkpoint` is 'best' (the best-validation-loss epoch, what the run's figures measured)
  or 'last' (its final epoch, which a finished run always saves: the other state it keeps,
  so that a choice between the two can be made on validation afterwards without training
  again; `checkpoint_epoch` says which epoch). Parameters as `restore_best`.
  """
  config = load_config(workdir)
  class_names = load_results(workdir)['class_names']
  epoch = checkpoint_epoch(workdir, checkpoint)  # None: a legacy folder's one checkpoint
  model = train.create_model(config, len(class_names))
  state = train.create_train_state(config, model, jax.random.key(0), config.image_size)
  legacy = checkpointing.legacy_dir(workdir, 'best' if checkpoint == 'best' else 'latest')
  directory = legacy or pathlib.Path(workdir) / rundir.CHECKPOINTS
  with checkpointing.manager(directory, read_only=True) as checkpoints:
    state = checkpointing.restore(checkpoints, state, epoch)
  state = state.replace(params=optim.evaluation_params(state.params, state.opt_state))
  return config, model, state, class_names


def checkpoint_epoch(workdir, checkpoint: str = 'best') -> int | None:
  """The epoch `restore(workdir, checkpoint)` reads (None for a run of the older layout)."""
  if checkpoint not in KEPT:
    raise RunError(f'checkpoint {checkpoint!r} is not one of {", ".join(KEPT)}.')
  if checkpointing.legacy_dir(workdir, 'best'):
    return None
  if checkpoint == 'best':
    return load_results(workdir)['best_epoch']
  with checkpointing.manager(pathlib.Path(workdir) / rundir.CHECKPOINTS,
                             read_only=True) as checkpoints:
    return checkpoints.latest_step()
