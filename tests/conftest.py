"""Small datasets in the real archives' layouts, generated per test session."""

from __future__ import annotations

import io
import os
import pathlib
import tarfile
import tempfile
import zipfile

# Compiled XLA programs are cached on disk for the whole session and the subprocesses it
# starts (set before JAX is imported): the many tiny runs then compile each program once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'charjax-tests-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

# The tests run with the CPU settings charjax's commands apply (importing charjax applies
# none); applied before JAX starts.
from charjax.runtime import cpu_settings  # pylint: disable=g-import-not-at-top
cpu_settings.apply()

import numpy as np
from PIL import Image
import pytest

from charjax.data import classes


def character_image(label: int, size: int, rng: np.random.Generator, dark_ink: bool) -> np.ndarray:
  """A class-dependent blob on a noisy background (ink dark or light)."""
  image = rng.integers(0, 40, (size, size)).astype(np.uint8)
  cell = size // 8
  row, col = (label // 8) % 8, label % 8
  image[row * cell:(row + 1) * cell + 1, col * cell:(col + 1) * cell + 1] = 230
  return 255 - image if dark_ink else image


def encode(image: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format=fmt)
  return buffer.getvalue()


def labels_csv() -> str:
  lines = []
  for title, subset in (('Numerals', 'numerals'), ('Vowels', 'vowels'),
                        ('Consonants', 'consonants')):
    lines += [f'{title},,,', ',,,', 'Class,Label,Devanagari Label,Phonetics']
    lines += [f'{c.folder},{c.latin},{c.glyph},x' for c in classes.NHCD_SUBSETS[subset]]
    lines += [',,,', ',,,']
  return '\n'.join(lines) + '\n'


def nhcd_files(writers: int = 3, samples: int = 2, size: int = 28, seed: int = 0) -> dict[str, bytes]:
  """{path: bytes} of a miniature NHCD: every class, `writers` x `samples` JPEGs each."""
  rng = np.random.default_rng(seed)
  files = {'nhcd/labels.csv': labels_csv().encode('utf-8')}
  for label, c in enumerate(classes.NHCD_SUBSETS['all']):
    for w in range(1, writers + 1):
      for s in range(1, samples + 1):
        image = character_image(label, size, rng, dark_ink=True)
        files[f'nhcd/{c.subset}/{c.folder}/{w:03d}_{s:02d}.jpg'] = encode(image, 'JPEG')
  return files


def dhcd_files(per_class: int = 3, size: int = 32, suffix: bool = False,
               test_per_class: int = 0) -> dict[str, bytes]:
  """{path: bytes} of a miniature DHCD (PNG, light ink on dark): a Train split, and a Test
  split of `test_per_class` images per class when that is positive (as UCI's archive)."""
  rng = np.random.default_rng(1)
  files = {}
  for split, count in (('Train', per_class), ('Test', test_per_class)):
    for label, c in enumerate(classes.DHCD_CLASSES):
      folder = (f'{c.folder}_{c.latin}' if suffix and c.folder.startswith('character')
                else c.folder)
      for i in range(count):
        image = character_image(label, size, rng, dark_ink=False)
        files[f'DevanagariHandwrittenCharacterDataset/{split}/{folder}/{label * 100 + i}.png'] = (
            encode(image, 'PNG'))
  return files


def write_archive(files: dict[str, bytes], path: pathlib.Path) -> pathlib.Path:
  """Writes `files` as a zip, a tar(.gz/.xz) or a folder, chosen by `path`'s suffix."""
  path.parent.mkdir(parents=True, exist_ok=True)
  name = path.name
  if name.endswith('.zip'):
    with zipfile.ZipFile(path, 'w') as zf:
      for member, data in files.items():
        zf.writestr(member, data)
  elif '.tar' in name:
    mode = 'w:xz' if name.endswith('.xz') else 'w:gz' if name.endswith('.gz') else 'w'
    with tarfile.open(path, mode) as tf:
      for member, data in files.items():
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
  else:
    for member, data in files.items():
      target = path.parent / member
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(data)
  return path


@pytest.fixture(scope='session')
def nhcd_zip_dir(tmp_path_factory) -> pathlib.Path:
  """A folder holding a miniature `nhcd.zip` (3 writers x 4 samples per class)."""
  root = tmp_path_factory.mktemp('nhcd_zip')
  write_archive(nhcd_files(writers=3, samples=4), root / 'nhcd.zip')
  return root


@pytest.fixture(scope='session')
def prepared_dirs(nhcd_zip_dir, tmp_path_factory):
  """(data_dir, tfds_dir) with NHCD numerals already prepared once for the session."""
  from charjax.data import input_pipeline
  tfds_dir = tmp_path_factory.mktemp('tfds')
  input_pipeline.prepare('nhcd', 'numerals', data_dir=nhcd_zip_dir, tfds_dir=tfds_dir)
  return nhcd_zip_dir, tfds_dir


SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


@pytest.fixture(scope='session')
def real_numerals_run(tmp_path_factory):
  """(workdir, results) of experiment 2 on the real NHCD numerals, 15 epochs, trained once
  per session for the slow tests that need a network that really reads characters."""
  if not (SHARED_DATA / 'nhcd.zip').exists():
    pytest.skip('no ../shared/data')
  from charjax import train
  from charjax.configs import numerals
  root = tmp_path_factory.mktemp('real_numerals')
  config = numerals.get_config()
  config.data_dir, config.tfds_dir = str(SHARED_DATA), str(root / 'tfds')
  config.num_epochs = 15
  results = train.train_and_evaluate(config, str(root / 'run'))
  return root / 'run', results


@pytest.fixture(scope='session')
def reference_run(prepared_dirs, tmp_path_factory):
  """(config, workdir) of an uninterrupted tiny numerals run: 5 epochs, a checkpoint each."""
  from charjax import train
  from tests.test_train import tiny_config
  config = tiny_config(*prepared_dirs)
  config.num_epochs, config.checkpoint_every_epochs = 5, 1
  workdir = tmp_path_factory.mktemp('reference')
  train.train_and_evaluate(config, str(workdir))
  return config, workdir
