"""TFDS builder of DHCD, the Devanagari Handwritten Character Dataset (UCI; manual download).

46 classes: consonants `character_1`..`character_36` (labels 0-35), then digits
`digit_0`..`digit_9` (labels 36-45). Accepts the UCI archive, the Train-only archive
`dhcd-train.tar.xz`, or the extracted folder; class folders may carry the UCI suffix
(`character_1_ka`). `Train/` becomes the `train` split, `Test/` (when present) `test`.
"""

from __future__ import annotations

import pathlib
import re

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from charjax.data import archives
from charjax.data import classes
from charjax.data import registry
from charjax.data import sources

DOWNLOAD_URL = 'https://archive.ics.uci.edu/dataset/389/devanagari+handwritten+character+dataset'
_FOLDER = re.compile(r'^((?:character|digit)_\d+)(?:_\w+)?$')


def layout(names: list[str]) -> dict[str, dict[str, int]]:
  """Maps image paths to labels per split ('train', 'test'); raises on an unexpected layout."""
  label_of = {c.folder: i for i, c in enumerate(classes.DHCD_CLASSES)}
  splits = {}
  for split, folder in (('train', 'Train'), ('test', 'Test')):
    try:
      prefix = archives.find_root(names, folder) + folder + '/'
    except KeyError:
      continue
    labelled, ignored = {}, []
    for name in names:
      if not name.startswith(prefix):
        continue
      if not name.lower().endswith(sources.IMAGE_SUFFIXES):
        ignored.append(name)
        continue
      parts = name[len(prefix):].split('/')
      match = _FOLDER.match(parts[0]) if len(parts) == 2 else None
      if not match or match.group(1) not in label_of:
        raise archives.ArchiveError(
            f'DHCD layout not recognised: {name} is not in a class folder '
            f'(expected {prefix}character_<1-36>[_name]/ or digit_<0-9>/).')
      labelled[name] = label_of[match.group(1)]
    if ignored:
      logging.warning('DHCD: ignoring %d non-image files, e.g. %s', len(ignored), ignored[:3])
    splits[split] = labelled
  if 'train' not in splits:
    raise archives.ArchiveError(
        'DHCD layout not recognised: no Train/ folder found (expected '
        f'DevanagariHandwrittenCharacterDataset/Train/<class>/<id>.png). First entries: {names[:5]}')
  return splits


class Dhcd(tfds.core.GeneratorBasedBuilder):
  """Devanagari Handwritten Character Dataset (32x32, 46 classes)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images stored as uint8 tensors, as found in the archive.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Download the dataset from {DOWNLOAD_URL} and place the archive '
      '(or its extracted folder) in the manual directory.')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(None, None, 1), dtype=np.uint8, encoding='zlib'),
            'label': tfds.features.ClassLabel(names=[c.name for c in classes.DHCD_CLASSES]),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage=DOWNLOAD_URL,
    )

  def _split_generators(self, dl_manager):
    source = sources.find_source(DATASET, dl_manager.manual_dir)
    splits = layout(archives.list_files(source))
    return {split: self._generate_examples(source, labelled)
            for split, labelled in splits.items()}

  def _generate_examples(self, source: pathlib.Path, labelled: dict[str, int]):
    for name, data in archives.iter_files(source, labelled):  # other entries stay unread
      if name in labelled:
        yield name, {
            'image': sources.decode_grayscale(name, data),
            'label': labelled[name],
            'file_name': name,
        }


def train_layout(names: list[str], subset: str) -> dict[str, int]:
  """The `train` split of `layout` (DHCD has one subset, 'all')."""
  del subset
  return layout(names)['train']


DATASET = registry.DatasetSpec(
    name='dhcd', builder=Dhcd,
    subsets={'all': tuple(c.name for c in classes.DHCD_CLASSES)},
    layout=train_layout,
    source_names=('dhcd-train.tar.xz', 'dhcd.tar.xz', 'dhcd.zip', 'dhcd.tar.gz',
                  'DevanagariHandwrittenCharacterDataset.zip',
                  'DevanagariHandwrittenCharacterDataset', 'dhcd'),
    download_url=DOWNLOAD_URL, ink_is_dark=False, official_splits=('train', 'test'))
