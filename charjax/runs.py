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


def restore_best(workdir):
  """(config, model, train state at the best-validation epoch, class names) of a run.

  The state's `params` are the ones the run was evaluated with: the moving average of the
  parameters where its optimiser kept one (`optim.evaluation_params`), so predict, export,
  evaluate and fine-tuning use what the run's figures measured.
  """
  config = load_config(workdir)
  results = load_results(workdir)
  class_names = results['class_names']
  model = train.create_model(config, len(class_names))
  state = train.create_train_state(config, model, jax.random.key(0), config.image_size)
  legacy = checkpointing.legacy_dir(workdir, 'best')  # runs saved with two managers
  directory = legacy or pathlib.Path(workdir) / rundir.CHECKPOINTS
  with checkpointing.manager(directory, read_only=True) as checkpoints:
    epoch = None if legacy else results['best_epoch']
    state = checkpointing.restore(checkpoints, state, epoch)
  state = state.replace(params=optim.evaluation_params(state.params, state.opt_state))
  return config, model, state, class_names
