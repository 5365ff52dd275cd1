"""Where the raw archives are looked for, and how their images are decoded."""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
from PIL import Image

from charjax.data import archives
from charjax.data import preprocess
from charjax.data import registry

DATA_DIR_ENV = 'CHARJAX_DATA_DIR'
TFDS_DIR_ENV = 'CHARJAX_TFDS_DIR'
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff')

class DataNotFoundError(FileNotFoundError):
  """No archive or folder of a dataset was found in any searched location."""


def default_data_dirs() -> list[pathlib.Path]:
  """Documented default locations of the raw archives, in search order."""
  repo_root = pathlib.Path(__file__).resolve().parents[2]
  dirs = [pathlib.Path('data'), pathlib.Path('../shared/data'),
          repo_root / 'data', repo_root.parent / 'shared' / 'data',
          pathlib.Path('~/charjax_data').expanduser()]
  unique = []
  for d in dirs:
    if d.resolve() not in [u.resolve() for u in unique]:
      unique.append(d)
  return unique


def search_dirs(data_dir: str | os.PathLike | None) -> list[pathlib.Path]:
  """The folders searched: `data_dir` alone if given, else $CHARJAX_DATA_DIR, else defaults."""
  if data_dir:
    return [pathlib.Path(data_dir).expanduser()]
  if os.environ.get(DATA_DIR_ENV):
    return [pathlib.Path(os.environ[DATA_DIR_ENV]).expanduser()]
  return default_data_dirs()


def find_source(dataset, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Path of the first archive or extracted folder of `dataset` (a name or a
  `registry.DatasetSpec`) found; raises `DataNotFoundError` if none."""
  spec = registry.get(dataset) if isinstance(dataset, str) else dataset
  dirs = search_dirs(data_dir)
  for d in dirs:
    for name in spec.source_names:
      candidate = d / name
      if candidate.is_dir() or (candidate.is_file() and archives.is_archive(candidate)):
        return candidate
  raise DataNotFoundError(
      f'No {spec.name.upper()} data found. Looked for {", ".join(spec.source_names)} in: '
      + ', '.join(str(d.resolve()) for d in dirs)
      + f'.\nDownload it from {spec.download_url} and put the archive (or its extracted '
      f'folder) in one of these folders, or point config.data_dir or ${DATA_DIR_ENV} at it.')


def tfds_dir(configured: str | os.PathLike | None = None) -> pathlib.Path:
  """Where prepared (ArrayRecord) datasets live: config, $CHARJAX_TFDS_DIR, ~/tensorflow_datasets."""
  value = configured or os.environ.get(TFDS_DIR_ENV) or '~/tensorflow_datasets'
  return pathlib.Path(value).expanduser()


def decode_grayscale(name: str, data: bytes) -> np.ndarray:
  """Decodes image bytes to uint8 (H, W, 1); raises `ArchiveError` naming `name` if it can't."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      grey = preprocess.grey_levels(img)  # the same conversion as charjax.predict's
  except Exception as e:  # PIL raises many types for bad data.
    raise archives.ArchiveError(f'Cannot decode image {name}: {e}') from e
  return np.round(grey).astype(np.uint8)[..., None]
