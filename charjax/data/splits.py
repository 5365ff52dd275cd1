"""Train/validation/test partitions: the study's stratified protocol and a writer-disjoint one."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

SPLITS = ('train', 'validation', 'test')


def stratified_split(labels: np.ndarray, *, test_fraction: float = 0.15,
                     val_fraction: float = 0.176, seed: int = 1) -> dict[str, np.ndarray]:
  """The study's protocol: `test_fraction` held out, then `val_fraction` of the rest.

  Both cuts are stratified by label and seeded (`random_state=seed`), as scikit-learn's
  `train_test_split` does them in the study. Returns sorted index arrays per split.
  """
  from sklearn import model_selection  # imported only here: slow to import
  index = np.arange(len(labels))
  rest, test = model_selection.train_test_split(
      index, test_size=test_fraction, stratify=labels, random_state=seed)
  train, val = model_selection.train_test_split(
      rest, test_size=val_fraction, stratify=labels[rest], random_state=seed)
  return {'train': np.sort(train), 'validation': np.sort(val), 'test': np.sort(test)}


def writer_disjoint_split(labels: np.ndarray, writers: np.ndarray, *, test_fraction: float = 0.15,
                          val_fraction: float = 0.176, seed: int = 1) -> dict[str, np.ndarray]:
  """Like `stratified_split`, but whole writers go to one split: no writer is in two.

  The fractions are fractions of writers, so image fractions are close but not exact.
  """
  from sklearn import model_selection  # imported only here: slow to import
  writers = np.asarray(writers)
  if len(np.unique(writers)) < 3 or np.any(writers == ''):
    raise ValueError('A writer-disjoint split needs a writer id per image and at least '
                     f'3 writers; found {len(np.unique(writers))}.')
  index = np.arange(len(labels))
  splitter = model_selection.GroupShuffleSplit(n_splits=1, test_size=test_fraction,
                                               random_state=seed)
  rest, test = next(splitter.split(index, labels, groups=writers))
  splitter = model_selection.GroupShuffleSplit(n_splits=1, test_size=val_fraction,
                                               random_state=seed)
  train, val = next(splitter.split(rest, labels[rest], groups=writers[rest]))
  return {'train': np.sort(rest[train]), 'validation': np.sort(rest[val]), 'test': np.sort(test)}


def carve_validation(labels: np.ndarray, writers: np.ndarray | None = None, *,
                     val_fraction: float = 0.176, seed: int = 1) -> dict[str, np.ndarray]:
  """`train`/`validation` indices into `labels`: `val_fraction` held out, stratified by
  label, or, given `writers`, of whole writers (no writer in both). For a dataset whose
  publisher fixes the test split."""
  from sklearn import model_selection  # imported only here: slow to import
  index = np.arange(len(labels))
  if writers is None:
    train, val = model_selection.train_test_split(
        index, test_size=val_fraction, stratify=labels, random_state=seed)
  else:
    writers = np.asarray(writers)
    if len(np.unique(writers)) < 2 or np.any(writers == ''):
      raise ValueError('A writer-disjoint split needs a writer id per image and at least '
                       f'2 writers; found {len(np.unique(writers))}.')
    splitter = model_selection.GroupShuffleSplit(n_splits=1, test_size=val_fraction,
                                                 random_state=seed)
    train, val = next(splitter.split(index, labels, groups=writers))
  return {'train': np.sort(train), 'validation': np.sort(val)}


def named(splits: dict[str, np.ndarray], file_names: np.ndarray) -> dict[str, list[str]]:
  """The file names of each split (what `save` writes)."""
  return {name: [str(f) for f in file_names[idx]] for name, idx in splits.items()}


def save(path: os.PathLike | str, splits: dict[str, np.ndarray], file_names: np.ndarray) -> None:
  """Writes the file names of each split as JSON, so the partition can be reproduced."""
  pathlib.Path(path).write_text(json.dumps(named(splits, file_names), indent=0))
