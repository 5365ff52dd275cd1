"""Classify image files with a trained run: top-k classes with names and glyphs.

  python -m charjax.predict --workdir runs/numerals photo.jpg scans/ [--top_k 3] [--json]
  python -m charjax.predict --svc runs/study/exp3/svc/svc_vowels.npz letter.png

Any image Pillow reads (PNG, JPEG, BMP, TIFF, GIF, WebP...), any size, colour mode and bit
depth (1, 8, 12, 16 or 32 bits, float). Each image goes through the training
preprocessing (`charjax.data.preprocess`: grey levels over the image's real range, ink made
bright, resized to the run's input size); its polarity (dark ink on light paper, or the
reverse) is judged from its border. So an image of the dataset gets exactly the input
training gave it. `--crop` first stretches the contrast and crops to the character with a
margin: for photos or scans where the character fills little of the frame. Images over
`--max_pixels` are refused before decoding. With `--svc`, the SVC fitted on the 58-class
network's features (experiment 3) classifies; its scores are the share of one-vs-one
votes, not probabilities. A checkpoint holding NaN or infinite values, or a network giving
non-finite scores, is refused. A file that cannot be read is reported and the others are
still classified; the exit status is 1 when any file failed (or none was found), else 0.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageOps

from charjax import checkpointing
from charjax import cli
from charjax import configuration
from charjax.data import preprocess
from charjax import progress
from charjax import runs
from charjax.study import specialise
from charjax.study import svc as svc_lib

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
                  '.pgm', '.pbm')
# Margin around the character's bounding box with `crop`, as a fraction of its longer side.
MARGIN = 0.12
# Inputs larger than this many pixels are refused before they are decoded (a 600 KB PNG
# can hold 180 million pixels); `--max_pixels` changes it.
MAX_PIXELS = 25_000_000
# An image whose ink and ground differ by less than this (0..255 scale) is called blank.
_MIN_CONTRAST = 0.05 * 255


def load_image(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """float32 (H, W) grey levels (0..255, `preprocess.grey_levels`) of an image file.

  Refuses images of more than `max_pixels` pixels before decoding them, and blank ones.
  Transparent pixels are laid on white, or on black when white leaves no ink.
  """
  with Image.open(path) as image:
    width, height = image.size
    if width * height > max_pixels:
      raise ValueError(f'image of {width}x{height} pixels is larger than the limit of '
                       f'{max_pixels} pixels (--max_pixels)')
    image = ImageOps.exif_transpose(image)
    image.load()
  for ground in ((255, 0) if preprocess.has_transparency(image) else (255,)):
    grey = preprocess.grey_levels(image, ground=ground)
    if grey.ndim != 2 or min(grey.shape) < 2:
      raise ValueError(f'image of shape {grey.shape} is too small')
    if float(grey.max()) - float(grey.min()) >= _MIN_CONTRAST:
      return grey
  raise ValueError('image is blank (no ink found)')


def crop_to_ink(image: np.ndarray, margin: float = MARGIN) -> np.ndarray:
  """The square around the ink's bounding box (ink bright, in [0, 1]), with `margin`,
  zero-padded where needed."""
  rows, cols = np.nonzero(image > 0.3)
  top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
  side = int(round(max(bottom - top, right - left) * (1 + 2 * margin)))
  cy, cx = (top + bottom) / 2, (left + right) / 2
  y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
  out = np.zeros((side, side), np.float32)
  sy0, sx0 = max(y0, 0), max(x0, 0)
  sy1, sx1 = min(y0 + side, image.shape[0]), min(x0 + side, image.shape[1])
  out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
  return out


def _stretch_and_crop(grey: np.ndarray, dark: bool, margin: float = MARGIN) -> np.ndarray:
  """For photos and scans: ink bright, contrast stretched from the border's level to the
  brightest ink, cropped to the ink; returned on the 0..255 scale, dark ink again if
  `dark` (so that `to_model_input` inverts it as usual)."""
  bright = (255.0 - grey) if dark else grey
  border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
  ground, top = float(np.median(border)), float(bright.max())
  if top - ground < _MIN_CONTRAST:
    raise ValueError('image is blank (no ink found)')
  cropped = crop_to_ink(np.clip((bright - ground) / (top - ground), 0.0, 1.0), margin) * 255.0
  return (255.0 - cropped) if dark else cropped


def to_input(grey: np.ndarray, size: int, *, crop: bool = False,
             margin: float = MARGIN) -> np.ndarray:
  """(size, size, 1) float32 model input from grey levels (0..255, any polarity).

  The ink's polarity is judged from the border; then the training preprocessing
  (`preprocess.to_model_input`) makes the input, so that an image of the dataset gives the
  very pixels training gave. With `crop`, the character is first contrast-stretched and
  cropped to its bounding box with `margin` (a fraction of its longer side) around it (for
  photos or scans with wide margins, and drawings).
  """
  dark = preprocess.ink_is_dark(grey)
  if crop:
    grey = _stretch_and_crop(grey, dark, margin)
  return preprocess.to_model_input([grey[..., None]], ink_is_dark=dark, image_size=size)[0]


def split_name(name: str) -> tuple[str, str]:
  """'ka (क)' -> ('ka', 'क'); a name without a glyph -> (name, '')."""
  if name.endswith(')') and ' (' in name:
    latin, glyph = name[:-1].split(' (', 1)
    return latin, glyph
  return name, ''


@dataclasses.dataclass
class Classifier:
  """A trained CNN run, optionally with an SVC on its features."""
  size: int
  class_names: list[str]
  scores: callable  # (N, S, S, 1) images -> (N, classes) scores


def load_classifier(workdir: str | None, svc_path: str | None,
                    checkpoint: str = 'best') -> Classifier:
  """The CNN of `workdir`, or the SVC at `svc_path` over its CNN's features.

  `checkpoint`: the run's best-validation epoch ('best') or its last one ('last', see
  `runs.restore`); an SVC reads the network it was fitted on, the best.
  """
  if svc_path:
    arrays, meta = svc_lib.load(svc_path)
    workdir = workdir or meta['cnn_workdir']
    config, model, state, _ = runs.restore_best(workdir)
    if config.model.name != 'AllClassesCNN':
      raise runs.RunError(
          f'{workdir} is a {config.model.name} run; an SVC classifies the features of the 58-class '
          'network (model AllClassesCNN, experiment 3). Give --workdir that run (or none: '
          'the SVC names its own).')
    k = len(arrays['classes'])

    def svc_scores(images):
      feats = specialise.extract_features(model, state.params, images)
      return svc_lib.decision_votes(arrays, feats)[1] / max(1, k - 1)  # classes_ are sorted
    return Classifier(config.image_size, list(meta['class_names']), svc_scores)
  config, model, state, names = runs.restore(workdir, checkpoint)
  probabilities = jax.jit(lambda params, x: jax.nn.softmax(
      model.apply({'params': params}, x, train=False).astype(jnp.float32), axis=-1))
  return Classifier(config.image_size, names,
                    lambda images: np.asarray(probabilities(state.params, images)))


def collect(paths: list[str]) -> list[pathlib.Path]:
  """The files named, and the image files inside the folders named (sorted)."""
  out = []
  for p in map(pathlib.Path, paths):
    if p.is_dir():
      out += sorted(f for f in p.rglob('*') if f.suffix.lower() in IMAGE_SUFFIXES
                    and f.is_file())
    else:
      out.append(p)
  return out


def predict(classifier: Classifier, files: list[pathlib.Path], top_k: int = 3, *,
            crop: bool = False, max_pixels: int = MAX_PIXELS) -> list[dict]:
  """One record per file: `top` (class, latin, glyph, score) or `error`."""
  if top_k < 1:
    raise ValueError(f'top_k must be at least 1, got {top_k}')
  records, inputs = [], []
  for f in files:
    try:
      inputs.append(to_input(load_image(f, max_pixels), classifier.size, crop=crop))
      records.append({'file': str(f)})
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      records.append({'file': str(f), 'error': f'{type(e).__name__}: {e}'})
  if inputs:
    scores = np.asarray(classifier.scores(np.stack(inputs)))
    good = [r for r in records if 'error' not in r]
    for record, row in zip(good, scores):
      if not np.all(np.isfinite(row)):
        record['error'] = ('the network gave NaN or infinite scores: its checkpoint is '
                           'probably damaged')
        continue
      best = np.argsort(-row, kind='stable')[:top_k]
      record['top'] = [dict(zip(('latin', 'glyph'), split_name(classifier.class_names[i])),
                            index=int(i), score=float(row[i])) for i in best]
  return records


def format_table(records: list[dict]) -> str:
  """A plain-text table: file, rank, class, glyph, score."""
  lines = [f'{"file":<40} {"rank":>4}  {"class":<8} {"glyph":<5} {"score":>7}']
  for r in records:
    if 'error' in r:
      lines.append(f'{r["file"]:<40}  FAILED: {r["error"]}')
      continue
    for rank, t in enumerate(r['top'], 1):
      name = r['file'] if rank == 1 else ''
      lines.append(f'{name:<40} {rank:>4}  {t["latin"]:<8} {t["glyph"]:<5} {t["score"]:>7.3f}')
  return '\n'.join(lines)


def main(argv):
  progress.plain_logs()  # no Orbax or TFDS INFO lines around the answer
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Name at least one image file or folder.')
  if not (flags.FLAGS.workdir or flags.FLAGS.svc):
    raise app.UsageError('Give --workdir (a trained run) or --svc (a saved SVC).')
  if flags.FLAGS.top_k < 1:
    raise app.UsageError(f'--top_k must be at least 1, got {flags.FLAGS.top_k}.')
  if flags.FLAGS.max_pixels < 1:
    raise app.UsageError(f'--max_pixels must be positive, got {flags.FLAGS.max_pixels}.')
  files = collect(paths)
  if not files:
    sys.exit(f'charjax: no image files ({", ".join(IMAGE_SUFFIXES)}) in {", ".join(paths)}.')
  try:
    classifier = load_classifier(flags.FLAGS.workdir, flags.FLAGS.svc)
  except (runs.RunError, checkpointing.CheckpointError, configuration.ConfigError,
          ValueError, OSError, KeyError) as e:
    sys.exit(f'charjax: cannot load the classifier: {e}')
  records = predict(classifier, files, flags.FLAGS.top_k, crop=flags.FLAGS.crop,
                    max_pixels=flags.FLAGS.max_pixels)
  if flags.FLAGS.json:
    print(json.dumps(records, ensure_ascii=False, indent=2))
  else:
    print(format_table(records))
  failed = sum('error' in r for r in records)
  if failed:
    print(f'charjax: {failed} of {len(records)} files could not be classified.',
          file=sys.stderr)
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A finished training run.')
  flags.DEFINE_string('svc', None, 'An SVC saved by charjax.study.specialise (svc_<subset>.npz).')
  flags.DEFINE_integer('top_k', 3, 'Classes shown per image (at least 1).')
  flags.DEFINE_bool('json', False, 'Print JSON instead of a table.')
  flags.DEFINE_bool('crop', False, 'Stretch the contrast and crop to the character first '
                    '(photos, scans with wide margins); off: exactly the training preprocessing.')
  flags.DEFINE_integer('max_pixels', MAX_PIXELS, 'Refuse images with more pixels than this.')
  cli.run(main)
