"""TFDS builder of NHCD, the Nepali Handwritten Character Dataset (manual download).

Configs `numerals` (10 classes), `vowels` (12), `consonants` (36) and `all` (58, in the
study's order). Reads `nhcd.zip`, a tar archive or the extracted folder laid out as
`nhcd/{numerals,vowels,consonants}/<class>/<writer>_<sample>.jpg` plus `nhcd/labels.csv`.
Images are stored as uint8 tensors, so building and reading need no TensorFlow.
"""

from __future__ import annotations

import pathlib
import posixpath

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from charjax.data import archives
from charjax.data import classes
from charjax.data import registry
from charjax.data import sources

SUBSETS = ('numerals', 'vowels', 'consonants')
DOWNLOAD_URL = 'https://www.kaggle.com/datasets/ashokpant/devanagari-character-dataset'


def layout(names: list[str], config: str) -> dict[str, int]:
  """Maps the archive's image paths of `config` to labels; raises on an unexpected layout."""
  wanted = SUBSETS if config == 'all' else (config,)
  table = classes.NHCD_SUBSETS[config]
  label_of = {(c.subset, c.folder): i for i, c in enumerate(table)}
  labelled, ignored = {}, []
  for subset in wanted:
    try:
      root = archives.find_root(names, subset)
    except KeyError:
      raise archives.ArchiveError(
          f'NHCD layout not recognised: no "{subset}/" folder found (expected '
          f'nhcd/{subset}/<class>/<writer>_<sample>.jpg). First entries: {names[:5]}') from None
    prefix = root + subset + '/'
    for name in names:
      if not name.startswith(prefix):
        continue
      parts = name[len(prefix):].split('/')
      if not name.lower().endswith(sources.IMAGE_SUFFIXES):
        ignored.append(name)
        continue
      if len(parts) != 2 or (subset, parts[0]) not in label_of:
        raise archives.ArchiveError(
            f'NHCD layout not recognised: {name} is not in a known class folder of {subset} '
            f'(expected {prefix}<{", ".join(c.folder for c in classes.NHCD_SUBSETS[subset])}>/...).')
      labelled[name] = label_of[(subset, parts[0])]
  if ignored:
    logging.warning('NHCD: ignoring %d non-image files, e.g. %s', len(ignored), ignored[:3])
  missing = set(label_of.values()) - set(labelled.values())
  if missing:
    raise archives.ArchiveError(
        f'NHCD archive holds no images of classes {sorted(table[i].name for i in missing)}.')
  return labelled


def writer_id(name: str) -> str:
  """Writer id from a file name such as `001_01.jpg` (writer 001, sample 01)."""
  stem = posixpath.splitext(posixpath.basename(name))[0]
  if '_' not in stem:
    raise archives.ArchiveError(
        f'Cannot read a writer id from {name}: expected <writer>_<sample>.<ext>.')
  return stem.split('_', 1)[0]


def check_labels_csv(text: str) -> None:
  """Raises if `labels.csv` names classes differently than `classes.NHCD_SUBSETS`."""
  parsed = classes.parse_labels_csv(text)
  for subset in SUBSETS:
    expected = [(c.folder, c.latin, c.glyph) for c in classes.NHCD_SUBSETS[subset]]
    if parsed.get(subset) != expected:
      raise archives.ArchiveError(
          f'labels.csv does not match the known NHCD classes for {subset}: '
          f'found {parsed.get(subset)}, expected {expected}.')


class Nhcd(tfds.core.GeneratorBasedBuilder):
  """Nepali Handwritten Character Dataset (12,912 images, 58 classes, ~40 writers)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images stored as uint8 tensors, as found in the archive.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Download the dataset from {DOWNLOAD_URL} and place nhcd.zip '
      '(or its extracted nhcd/ folder) in the manual directory.')
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=name, description=f'NHCD {name}')
      for name in SUBSETS + ('all',)
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    names = [c.name for c in classes.NHCD_SUBSETS[self.builder_config.name]]
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(None, None, 1), dtype=np.uint8, encoding='zlib'),
            'label': tfds.features.ClassLabel(names=names),
            'writer_id': tfds.features.Text(),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage=DOWNLOAD_URL,
    )

  def _split_generators(self, dl_manager):
    source = sources.find_source(DATASET, dl_manager.manual_dir)
    return {'train': self._generate_examples(source)}

  def _generate_examples(self, source: pathlib.Path):
    names = archives.list_files(source)
    labelled = layout(names, self.builder_config.name)
    csv = [n for n in names if posixpath.basename(n) == 'labels.csv']
    # Only the labelled images and labels.csv are decompressed; other entries stay unread.
    for name, data in archives.iter_files(source, set(labelled) | set(csv)):
      if name in csv:
        check_labels_csv(data.decode('utf-8-sig'))
      elif name in labelled:
        yield name, {
            'image': sources.decode_grayscale(name, data),
            'label': labelled[name],
            'writer_id': writer_id(name),
            'file_name': name,
        }
    if not csv:
      logging.warning('NHCD: no labels.csv in %s; using the built-in class names.', source)


DATASET = registry.DatasetSpec(
    name='nhcd', builder=Nhcd,
    subsets={name: tuple(c.name for c in classes.NHCD_SUBSETS[name])
             for name in SUBSETS + ('all',)},
    layout=layout,
    source_names=('nhcd.zip', 'nhcd.tar.xz', 'nhcd.tar.gz', 'nhcd.tar',
                  'devanagari-character-dataset.zip', 'nhcd'),
    download_url=DOWNLOAD_URL, ink_is_dark=True)
