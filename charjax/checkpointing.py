"""Orbax checkpoints of a run: the best-validation-loss state and the latest state."""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


def manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  """A synchronous manager that keeps one checkpoint (the newest saved) in `directory`."""
  return ocp.CheckpointManager(
      directory.absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False))


def save(mngr: ocp.CheckpointManager, epoch: int, state, metrics: dict | None = None) -> None:
  """Saves `state` (any pytree) under `epoch`, with optional scalar metrics."""
  mngr.save(epoch, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, target, epoch: int | None = None):
  """Restores the checkpoint at `epoch` (default: the newest) into the structure of `target`."""
  epoch = mngr.latest_step() if epoch is None else epoch
  if epoch is None:
    raise FileNotFoundError(f'No checkpoint in {mngr.directory}.')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return mngr.restore(epoch, args=ocp.args.StandardRestore(abstract))
