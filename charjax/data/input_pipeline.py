"""Prepares a dataset once (TFDS, ArrayRecord), checks it, and loads it into arrays."""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import shutil

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from charjax.data import archives
from charjax import configuration
from charjax.data import preprocess
from charjax.data import splits as splits_lib
from charjax.data import registry
from charjax.data import sources

@dataclasses.dataclass
class Examples:
  """A whole dataset on the host: stored images and their metadata, in file-name order."""
  images: list[np.ndarray]
  labels: np.ndarray
  file_names: np.ndarray
  writer_ids: np.ndarray
  class_names: list[str]
  # The publisher's split of each example ('train', or 'test' for an official test split).
  official_splits: np.ndarray | None = None


# How the test split is made (`config.test_split`): 'official', the publisher's test split
# (validation carved from its training split); 'carved', `test_fraction` held out of the
# training split (the study's protocol); 'auto', official where the prepared data have one.
TEST_SPLITS = ('auto', 'official', 'carved')


@dataclasses.dataclass
class SplitArrays:
  """Model-ready arrays per split (float32 images, int32 labels) and the split indices."""
  images: dict[str, np.ndarray]
  labels: dict[str, np.ndarray]
  indices: dict[str, np.ndarray]
  class_names: list[str]
  # 'official' or 'carved' (see TEST_SPLITS) and a sentence saying what that was here.
  test_protocol: str = 'carved'
  test_protocol_detail: str = ''


def num_classes(dataset: str, subset: str) -> int:
  """How many classes `dataset`/`subset` has (known before any data is read)."""
  return registry.get(dataset).num_classes(subset)


def builder_for(dataset: str, subset: str, tfds_dir) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `dataset`/`subset`, storing its files under `tfds_dir`."""
  return registry.get(dataset).make_builder(subset, str(sources.tfds_dir(tfds_dir)))


def _expected_counts(dataset: str, subset: str, source) -> collections.Counter:
  return collections.Counter(registry.get(dataset).layout(archives.list_files(source),
                                                          subset).values())


SOURCE_RECORD = 'charjax_source.json'


def _source_size(source: pathlib.Path) -> int:
  if source.is_dir():
    return sum(p.stat().st_size for p in source.rglob('*') if p.is_file())
  return source.stat().st_size


def _warn_if_source_changed(builder, dataset: str, data_dir) -> None:
  record = pathlib.Path(builder.data_dir) / SOURCE_RECORD
  try:
    built_from = json.loads(record.read_text())
    source = sources.find_source(dataset, data_dir)
  except (FileNotFoundError, ValueError):
    return
  size = _source_size(source)
  if built_from['bytes'] != size:
    logging.warning('%s was prepared from %s (%d bytes) but %s now has %d bytes; delete %s to '
                    'prepare it again.', builder.data_dir, built_from['path'], built_from['bytes'],
                    source, size, builder.data_dir)


def prepare(dataset: str, subset: str = 'all', *, data_dir=None,
            tfds_dir=None) -> tfds.core.DatasetBuilder:
  """Builds the ArrayRecord files once, verifies them, and afterwards reuses them.

  The archive is listed first (a layout error, duplicate entries or a link stop here,
  before anything is built). Right after building, the number of examples per class is
  logged and compared with the archive's listing; a mismatch deletes what was built and
  raises `ArchiveError`. The check's record (`charjax_source.json`) is written last, so
  prepared data without it (a kill landed between TFDS finishing and the check) are
  checked when next used. When reused, a warning says if the archive found now differs in
  size from the one it was built from.
  """
  builder = builder_for(dataset, subset, tfds_dir)
  record = pathlib.Path(builder.data_dir) / SOURCE_RECORD
  if builder.is_prepared() and record.exists():
    _warn_if_source_changed(builder, dataset, data_dir)
    return builder
  source = sources.find_source(dataset, data_dir)
  expected = _expected_counts(dataset, subset, source)
  if not builder.is_prepared():
    logging.info('Preparing %s/%s from %s into %s', dataset, subset, source, builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(source.parent)))
  _verify(builder, dataset, subset, source, expected)
  return builder


def _verify(builder, dataset: str, subset: str, source: pathlib.Path,
            expected: collections.Counter) -> None:
  """Compares the prepared examples per class with the archive's listing; records it."""
  labels = [r['label'] for r in _read_all(builder.as_data_source()['train'])]
  found = collections.Counter(labels)
  names = builder.info.features['label'].names
  logging.info('%s/%s examples per class: %s', dataset, subset,
               ', '.join(f'{names[k]}={found[k]}' for k in sorted(found)))
  if found != expected:
    diff = {names[k]: (found[k], expected[k]) for k in set(found) | set(expected)
            if found[k] != expected[k]}
    shutil.rmtree(builder.data_dir)
    raise archives.ArchiveError(
        f'Prepared {dataset}/{subset} does not match {source}: (prepared, in archive) per '
        f'class: {diff}. The prepared copy was deleted; rerun to prepare it again (or '
        'download the archive again if this repeats).')
  record = pathlib.Path(builder.data_dir) / SOURCE_RECORD
  partial = record.with_suffix('.tmp')
  partial.write_text(json.dumps(
      {'path': str(source.resolve()), 'bytes': _source_size(source),
       'examples_per_class': {names[k]: found[k] for k in sorted(found)}}, ensure_ascii=False))
  partial.replace(record)


def _read_all(source) -> list[dict]:
  return source.__getitems__(list(range(len(source))))


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def official_test_split(dataset: str, subset: str = 'all', *, data_dir=None,
                        tfds_dir=None) -> bool:
  """Whether the prepared `dataset`/`subset` holds the publisher's `test` split."""
  builder = prepare(dataset, subset, data_dir=data_dir, tfds_dir=tfds_dir)
  return 'test' in builder.info.splits


def load_examples(dataset: str, subset: str = 'all', *, data_dir=None, tfds_dir=None,
                  splits: tuple[str, ...] = ('train',)) -> Examples:
  """Prepares (if needed) and reads every example of the publisher's `splits` into memory.

  By default only `train`, the split every dataset has; with `('train', 'test')` the
  official test split too (`Examples.official_splits` says which example is which).
  """
  builder = prepare(dataset, subset, data_dir=data_dir, tfds_dir=tfds_dir)
  source = builder.as_data_source()
  missing = [s for s in splits if s not in source]
  if missing:
    raise archives.ArchiveError(
        f'{dataset}/{subset} has no {", ".join(missing)} split in {builder.data_dir} (its '
        f'archive has only {", ".join(source)}).')
  records = sorted(((r, split) for split in splits for r in _read_all(source[split])),
                   key=lambda rs: _text(rs[0]['file_name']))
  return Examples(
      images=[r['image'] for r, _ in records],
      labels=np.array([r['label'] for r, _ in records], np.int32),
      file_names=np.array([_text(r['file_name']) for r, _ in records]),
      writer_ids=np.array([_text(r.get('writer_id', '')) for r, _ in records]),
      class_names=list(builder.info.features['label'].names),
      official_splits=np.array([split for _, split in records]),
  )


def load_run_classes(dataset: str, subset: str, split: str, run_classes: list[str], *,
                     image_size: int, data_dir=None, tfds_dir=None):
  """Another dataset's images as a run sees them: (examples, keep, inputs, labels).

  `examples` is the publisher's `split` of `dataset`/`subset`; `keep` marks its images whose
  class is one of `run_classes` (matched by name); `inputs` are those images as model
  inputs (with the dataset's ink polarity) and `labels` their classes in the run's
  numbering. Used to score a run on other data and to mix other data into training.
  """
  examples = load_examples(dataset, subset, data_dir=data_dir, tfds_dir=tfds_dir,
                           splits=(split,))
  index = {name: i for i, name in enumerate(run_classes)}
  theirs = np.array([index.get(name, -1) for name in examples.class_names], np.int32)
  mapped = theirs[examples.labels] if len(examples.labels) else np.zeros(0, np.int32)
  keep = mapped >= 0
  inputs = preprocess.to_model_input([im for im, k in zip(examples.images, keep) if k],
                                     ink_is_dark=registry.get(dataset).ink_is_dark,
                                     image_size=image_size)
  return examples, keep, inputs, mapped[keep]


def make_splits(examples: Examples, *, kind: str, test_fraction: float, val_fraction: float,
                seed: int) -> dict[str, np.ndarray]:
  """Index arrays per split: kind 'stratified' (the study's) or 'writer' (writer-disjoint)."""
  kwargs = dict(test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
  if kind == 'stratified':
    return splits_lib.stratified_split(examples.labels, **kwargs)
  if kind == 'writer':
    return splits_lib.writer_disjoint_split(examples.labels, examples.writer_ids, **kwargs)
  raise ValueError(f'Unknown split {kind!r}: expected "stratified" or "writer".')


def test_protocol(config) -> str:
  """'official' or 'carved': how `config.test_split` makes the test split of its data."""
  if config.test_split == 'carved':
    return 'carved'
  kwargs = dict(data_dir=config.data_dir or None, tfds_dir=config.tfds_dir or None)
  has_official = official_test_split(config.dataset, config.subset, **kwargs)
  if config.test_split == 'official' and not has_official:
    raise configuration.ConfigError(
        f'test_split=\'official\' but the {config.dataset} data found hold no official test '
        'split (e.g. an archive with Train/ only); give the full archive, or '
        'test_split=\'carved\' (or \'auto\') to hold out test_fraction of the training split.')
  return 'official' if has_official else 'carved'


def make_official_splits(examples: Examples, *, kind: str, val_fraction: float,
                         seed: int) -> dict[str, np.ndarray]:
  """The official test split as `test`; validation carved from the official training split
  (`kind` 'stratified' or 'writer', `val_fraction` of it, seeded)."""
  official_train = np.flatnonzero(examples.official_splits == 'train')
  if kind == 'stratified':
    carved = splits_lib.carve_validation(examples.labels[official_train],
                                         val_fraction=val_fraction, seed=seed)
  elif kind == 'writer':
    carved = splits_lib.carve_validation(examples.labels[official_train],
                                         examples.writer_ids[official_train],
                                         val_fraction=val_fraction, seed=seed)
  else:
    raise ValueError(f'Unknown split {kind!r}: expected "stratified" or "writer".')
  return {'train': official_train[carved['train']],
          'validation': official_train[carved['validation']],
          'test': np.flatnonzero(examples.official_splits == 'test')}


def load_splits(config) -> tuple[Examples, SplitArrays]:
  """Loads `config.dataset`/`config.subset`, splits it and preprocesses every split.

  The test split follows `config.test_split` (see `TEST_SPLITS`); the result says which
  protocol was used (`SplitArrays.test_protocol`). With `config.train_on_validation` the
  'train' split holds the validation images too (validation is still scored, not held out).
  """
  protocol = test_protocol(config)
  # Data-only configs (the study's report, a user's own) may leave the field out.
  train_on_validation = config.get('train_on_validation', False)
  examples = load_examples(config.dataset, config.subset, data_dir=config.data_dir or None,
                           tfds_dir=config.tfds_dir or None,
                           splits=('train', 'test') if protocol == 'official' else ('train',))
  try:
    if protocol == 'official':
      indices = make_official_splits(examples, kind=config.split,
                                     val_fraction=config.val_fraction, seed=config.split_seed)
    else:
      indices = make_splits(examples, kind=config.split, test_fraction=config.test_fraction,
                            val_fraction=config.val_fraction, seed=config.split_seed)
  except ValueError as e:  # scikit-learn's: a split too small for one image per class, ...
    raise configuration.ConfigError(
        f'Cannot split {config.dataset}/{config.subset} ({len(examples.labels)} images, '
        f'{len(examples.class_names)} classes) with split={config.split!r}, test_fraction='
        f'{config.test_fraction}, val_fraction={config.val_fraction}: {e}') from None
  empty = [name for name, idx in indices.items() if len(idx) == 0]
  if empty:
    raise configuration.ConfigError(
        f'split={config.split!r} with test_fraction={config.test_fraction} and val_fraction='
        f'{config.val_fraction} leaves no images in {", ".join(empty)}.')
  if train_on_validation:  # the validation images are trained on as well
    indices = {**indices, 'train': np.concatenate([indices['train'], indices['validation']])}
  images = {
      name: preprocess.to_model_input([examples.images[i] for i in idx],
                                      ink_is_dark=registry.get(config.dataset).ink_is_dark,
                                      image_size=config.image_size)
      for name, idx in indices.items()
  }
  labels = {name: examples.labels[idx] for name, idx in indices.items()}
  n = {name: len(idx) for name, idx in indices.items()}
  if protocol == 'official':
    detail = (f'the official test split ({n["test"]} images); validation ({n["validation"]}) '
              f'carved from the official training split ({config.split}, val_fraction '
              f'{config.val_fraction})')
  else:
    detail = (f'test ({n["test"]} images) carved from the training split ({config.split}, '
              f'test_fraction {config.test_fraction}, then val_fraction {config.val_fraction} '
              'of the rest for validation)')
    if config.test_split == 'auto':
      detail += f'; the {config.dataset} data found have no official test split'
  if train_on_validation:
    detail += ('; trained on the training and validation splits together (train_on_validation)'
               ', the last epoch kept')
  return examples, SplitArrays(images, labels, indices, examples.class_names,
                               test_protocol=protocol, test_protocol_detail=detail)
