"""Classify image files with a trained run: top-k classes with names and glyphs.

  python -m charjax.predict --workdir runs/numerals photo.jpg scans/ [--top_k 3] [--json]
  python -m charjax.predict --svc runs/study/exp3/svc/svc_vowels.npz letter.png

Any image Pillow reads (PNG, JPEG, BMP, TIFF, GIF, WebP...), any size and colour mode.
Each image is made to look like the training data: grey levels, ink bright on a dark
ground (dark-on-light input is detected from its border and inverted), contrast stretched,
cropped to the character's bounding box with a margin, padded square and resized to the
run's input size. With `--svc`, the SVC fitted on the 58-class network's features
(experiment 3) classifies; its scores are the share of one-vs-one votes, not probabilities.
A file that cannot be read is reported and the others are still classified; the exit
status is 1 when any file failed, else 0.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image
from PIL import ImageOps

from charjax import checkpointing
from charjax import configuration
from charjax import runs
from charjax import specialise
from charjax import svc as svc_lib

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
                  '.pgm', '.pbm')
# Margin around the character's bounding box, as a fraction of its longer side.
MARGIN = 0.12


def load_image(path) -> np.ndarray:
  """A float32 (H, W) image in [0, 1] with bright ink on a dark ground.

  Transparent pixels are laid on white (then, if that leaves no ink, on black).
  """
  with Image.open(path) as image:
    image = ImageOps.exif_transpose(image)
    image.load()
  if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:
    rgba = image.convert('RGBA')
    for ground in ((255, 255, 255, 255), (0, 0, 0, 255)):
      flat = Image.alpha_composite(Image.new('RGBA', rgba.size, ground), rgba)
      try:
        return _normalise(np.asarray(flat.convert('L'), np.float32) / 255.0)
      except ValueError:
        continue
  return _normalise(np.asarray(image.convert('L'), np.float32) / 255.0)


def _normalise(grey: np.ndarray) -> np.ndarray:
  if grey.ndim != 2 or min(grey.shape) < 2:
    raise ValueError(f'image of shape {grey.shape} is too small')
  border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
  if np.median(border) > 0.5:  # dark ink on a light ground
    grey = 1.0 - grey
    border = 1.0 - border
  ground, top = float(np.median(border)), float(grey.max())
  if top - ground < 0.05:
    raise ValueError('image is blank (no ink found)')
  return np.clip((grey - ground) / (top - ground), 0.0, 1.0)


def crop_to_ink(image: np.ndarray, margin: float = MARGIN) -> np.ndarray:
  """The square around the ink's bounding box, with `margin`, zero-padded where needed."""
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


def to_input(image: np.ndarray, size: int) -> np.ndarray:
  """(size, size, 1) float32 model input from a normalised image."""
  cropped = crop_to_ink(image)
  resized = Image.fromarray((cropped * 255).astype(np.uint8)).resize(
      (size, size), Image.BILINEAR, reducing_gap=None)
  return (np.asarray(resized, np.float32) / 255.0)[..., None]


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


def load_classifier(workdir: str | None, svc_path: str | None) -> Classifier:
  """The CNN of `workdir`, or the SVC at `svc_path` over its CNN's features."""
  if svc_path:
    arrays, meta = svc_lib.load(svc_path)
    workdir = workdir or meta['cnn_workdir']
    config, model, state, _ = runs.restore_best(workdir)
    k = len(arrays['classes'])

    def svc_scores(images):
      feats = specialise.extract_features(model, state.params, images)
      return svc_lib.decision_votes(arrays, feats)[1] / max(1, k - 1)  # classes_ are sorted
    return Classifier(config.image_size, list(meta['class_names']), svc_scores)
  config, model, state, names = runs.restore_best(workdir)
  probabilities = jax.jit(lambda params, x: jax.nn.softmax(
      model.apply({'params': params}, x, train=False), axis=-1))
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


def predict(classifier: Classifier, files: list[pathlib.Path], top_k: int = 3) -> list[dict]:
  """One record per file: `top` (class, latin, glyph, score) or `error`."""
  records, inputs = [], []
  for f in files:
    try:
      inputs.append(to_input(load_image(f), classifier.size))
      records.append({'file': str(f)})
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      records.append({'file': str(f), 'error': f'{type(e).__name__}: {e}'})
  if inputs:
    scores = classifier.scores(np.stack(inputs))
    good = [r for r in records if 'error' not in r]
    for record, row in zip(good, scores):
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
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Name at least one image file or folder.')
  if not (flags.FLAGS.workdir or flags.FLAGS.svc):
    raise app.UsageError('Give --workdir (a trained run) or --svc (a saved SVC).')
  try:
    classifier = load_classifier(flags.FLAGS.workdir, flags.FLAGS.svc)
  except (runs.RunError, checkpointing.CheckpointError, configuration.ConfigError,
          ValueError, OSError) as e:
    sys.exit(f'charjax: cannot load the classifier: {e}')
  files = collect(paths)
  records = predict(classifier, files, flags.FLAGS.top_k)
  if flags.FLAGS.json:
    print(json.dumps(records, ensure_ascii=False, indent=2))
  else:
    print(format_table(records))
  failed = sum('error' in r for r in records)
  if failed:
    print(f'charjax: {failed} of {len(records)} files could not be classified.',
          file=sys.stderr)
  sys.exit(1 if failed or not records else 0)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A finished training run.')
  flags.DEFINE_string('svc', None, 'An SVC saved by charjax.specialise (svc_<subset>.npz).')
  flags.DEFINE_integer('top_k', 3, 'Classes shown per image.')
  flags.DEFINE_bool('json', False, 'Print JSON instead of a table.')
  app.run(main)
