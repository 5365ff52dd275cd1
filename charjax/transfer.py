"""Initialising a run from another run's trained parameters (fine-tuning, transfer).

`config.init_from = 'runs/dhcd_pretrain'` starts a run from that finished run's
best-validation parameters: every parameter whose path and shape the new model shares is
copied, except those of the output layer (the model's last module: its classes are the
new dataset's), which keep their fresh initialisation, as do parameters the pretrained
model lacks or holds in another shape. The optimizer state starts fresh. What was copied
and what was not is returned (and recorded in the run's `results.json`), so a fine-tuning
run names its pretraining run.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np


def _flat(tree) -> dict[tuple[str, ...], object]:
  return {tuple(getattr(k, 'key', str(k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def transfer(params, pretrained) -> tuple[object, dict]:
  """`params` with the leaves of `pretrained` copied where path and shape agree, except the
  output layer's (the last top-level module of `params`); and a record of what happened."""
  output_layer = list(params)[-1]
  source = _flat(pretrained)
  copied, kept = [], []

  def pick(path, leaf):
    key = tuple(getattr(k, 'key', str(k)) for k in path)
    name = '/'.join(key)
    old = source.get(key)
    if key[0] != output_layer and old is not None and np.shape(old) == np.shape(leaf):
      copied.append(name)
      return np.asarray(old, dtype=leaf.dtype)
    kept.append(name)
    return leaf
  out = jax.tree_util.tree_map_with_path(pick, params)
  if not copied:
    raise ValueError('no parameter of the pretrained run fits this model (paths and shapes '
                     'differ everywhere): is it the same architecture and image_size?')
  return out, {'copied': copied, 'initialised_fresh': kept}


def init_from(workdir: str | pathlib.Path, params) -> tuple[object, dict]:
  """`transfer` from the best checkpoint of the finished run in `workdir`."""
  from charjax import runs  # pylint: disable=g-import-not-at-top  (runs imports train)
  config, _, state, class_names = runs.restore_best(str(workdir))
  out, record = transfer(params, state.params)
  record.update(workdir=str(pathlib.Path(workdir).resolve()), dataset=config.dataset,
                subset=config.subset, classes=len(class_names),
                best_epoch=runs.load_results(workdir)['best_epoch'])
  return out, record
