"""The datasets charjax knows: one `DatasetSpec` per dataset, found by name.

Everything that depends on the dataset reads its spec: the input pipeline (which TFDS
builder, which archive members to expect, whether the ink is dark), the search for the raw
archive (file names, download page), the config checks (subsets, number of classes) and
`charjax.predict` (class names, ink polarity).

A new dataset takes two files: a module holding its TFDS builder and a module-level
`DATASET = DatasetSpec(...)`, and a config whose `config.dataset` is that module's import
path (e.g. `'mylab.datasets.tamil'`). The built-in datasets are registered below by name.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Sequence

# Short names of the datasets shipped with charjax -> the module holding their `DATASET`.
BUILT_IN = {'nhcd': 'charjax.data.nhcd', 'dhcd': 'charjax.data.dhcd'}


class UnknownDatasetError(ValueError):
  """A dataset name is neither built in nor an importable module holding a `DATASET`."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What charjax needs to know about a dataset.

  Attributes:
    name: the dataset's name in messages and in prepared-data folders.
    builder: its TFDS builder class (`GeneratorBasedBuilder`); one builder config per subset
      when it has several (`BUILDER_CONFIGS`), none when its only subset is `'all'`.
    subsets: subset name -> class names in label order (every dataset has `'all'`).
    layout: `(archive member names, subset) -> {member: label}` for the images of the
      subset's training split; raises `archives.ArchiveError` on an unexpected layout. The
      prepared data are checked against it (examples per class).
    source_names: archive or folder names the dataset is published under, most specific
      first; looked for in the data folders.
    download_url: where a user gets the archive.
    ink_is_dark: whether the characters are dark on a light background (then inverted, so
      that the network always sees light ink on dark).
    official_splits: the splits the publisher defines (`'train'`, and `'test'` where the
      archive has one).
  """
  name: str
  builder: Any
  subsets: Mapping[str, Sequence[str]]
  layout: Callable[[list[str], str], dict[str, int]]
  source_names: tuple[str, ...]
  download_url: str
  ink_is_dark: bool
  official_splits: tuple[str, ...] = ('train',)

  def class_names(self, subset: str) -> list[str]:
    if subset not in self.subsets:
      raise UnknownDatasetError(
          f'subset={subset!r} is not one of {", ".join(self.subsets)} (dataset {self.name}).')
    return list(self.subsets[subset])

  def num_classes(self, subset: str) -> int:
    return len(self.class_names(subset))

  def make_builder(self, subset: str, data_dir: str):
    """The TFDS builder of `subset`, storing ArrayRecord files under `data_dir`."""
    kwargs = dict(data_dir=data_dir, file_format='array_record')
    if getattr(self.builder, 'BUILDER_CONFIGS', None):
      kwargs['config'] = subset
    else:
      self.class_names(subset)  # raises for a subset the dataset does not have
    return self.builder(**kwargs)


def get(name: str) -> DatasetSpec:
  """The spec of a built-in dataset (`'nhcd'`, `'dhcd'`) or of the module path `name`."""
  module_name = BUILT_IN.get(name, name)
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if name in BUILT_IN or not (e.name and module_name.startswith(e.name)):
      raise  # a dependency of the dataset's module is missing: say so as it is
    raise UnknownDatasetError(
        f'dataset={name!r} is not one of {", ".join(BUILT_IN)} and no module {module_name!r} '
        'can be imported (a new dataset is a module holding DATASET = DatasetSpec(...)).'
    ) from None
  spec = getattr(module, 'DATASET', None)
  if not isinstance(spec, DatasetSpec):
    raise UnknownDatasetError(f'Module {module_name} has no DATASET = DatasetSpec(...).')
  return spec
