"""One canonicalisation of images, for training and for predict.

An image becomes a model input in two steps, shared by `input_pipeline` (training,
evaluation) and `predict` (image files), so that a network sees the same pixels whichever
way an image reaches it:

1. `grey_levels`: any Pillow image (1-bit, 8-bit, 12/16-bit, 32-bit integer, float,
   palette, RGB(A), CMYK, ...) -> float32 (H, W) grey levels on the 0..255 scale, using the
   image's real range (a 16-bit or 12-bit image is not clipped to 8 bits), transparent
   pixels laid on a ground. The datasets' 8-bit images come out as their exact values.
2. `to_model_input`: grey levels -> (N, S, S, 1) float32 in [0, 1] with bright ink on a
   dark ground: resized (bilinear, antialiased when shrinking), scaled by 1/255 and
   inverted when the ink is dark on a light ground.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from PIL import Image

# Integer bit depths an image's largest value is rounded up to (12-bit scans arrive in a
# 16-bit container, with values up to 4095).
_BIT_DEPTHS = (8, 10, 12, 14, 16, 24, 31)  # 31: mode I is signed 32-bit


def _integer_range(values: np.ndarray) -> float:
  top = int(values.max(initial=0))
  bits = next(b for b in _BIT_DEPTHS if top < 2 ** b)
  return float(2 ** bits - 1)


def has_transparency(image: Image.Image) -> bool:
  """Whether `image` has an alpha channel or a transparent colour."""
  return image.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa') or 'transparency' in image.info


def grey_levels(image: Image.Image, ground: int = 255) -> np.ndarray:
  """float32 (H, W) grey levels on the 0..255 scale from a Pillow image of any mode.

  - 8-bit modes (L, P, RGB, CMYK, YCbCr, 1, ...): Pillow's luminance conversion, exact.
  - 16- and 32-bit integer modes (I;16*, I): scaled from the smallest common bit depth
    (8, 10, 12, 14, 16, 24 or 31 bits) that holds the image's largest value, so a 12-bit
    image in a 16-bit PNG keeps its contrast; negative values are clipped to 0.
  - float mode (F): values in [0, 1] are taken as fractions, in [0, 255] as grey levels;
    anything else is scaled from its own minimum and maximum. NaN counts as 0.
  - Transparent pixels are laid on `ground` (255: white paper; 0: black).
  """
  if has_transparency(image):
    rgba = image.convert('RGBA')
    flat = Image.alpha_composite(Image.new('RGBA', rgba.size, (ground,) * 3 + (255,)), rgba)
    return np.asarray(flat.convert('L'), np.float32)
  if image.mode.startswith('I'):
    values = np.asarray(image).astype(np.float64)
    values = np.clip(values, 0, None)
    return (values * (255.0 / _integer_range(values))).astype(np.float32)
  if image.mode == 'F':
    values = np.nan_to_num(np.asarray(image, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min(initial=0)), float(values.max(initial=0))
    if low >= 0 and high <= 1:
      values = values * 255.0
    elif not (low >= 0 and high <= 255):
      values = (values - low) * (255.0 / max(high - low, 1e-12))
    return values.astype(np.float32)
  return np.asarray(image.convert('L'), np.float32)


def ink_is_dark(grey: np.ndarray) -> bool:
  """Whether the ink is darker than the ground, judged from the image's border."""
  border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
  return bool(np.median(border) > 127.5)


@functools.lru_cache(maxsize=64)
def _resize_weights(src: int, dst: int) -> np.ndarray:
  """(dst, src) float32 weights of `jax.image.resize`'s linear, antialiased 1-D resize."""
  eye = np.eye(src, dtype=np.float32)
  return np.asarray(jax.image.resize(eye, (dst, src), method='linear', antialias=True))


def _resize(batch: np.ndarray, image_size: int) -> np.ndarray:
  """(N, H, W, 1) -> (N, S, S, 1): rows then columns, W_rows @ image @ W_cols^T.

  The same weights as `jax.image.resize(..., 'linear', antialias=True)`, applied one image
  at a time by `np.matmul`, so an image's result does not depend on the batch it came in
  (a batched XLA resize rounds differently for different batch sizes).
  """
  n, h, w, _ = batch.shape
  if (h, w) == (image_size, image_size):
    return batch
  rows, cols = _resize_weights(h, image_size), _resize_weights(w, image_size)
  return np.matmul(np.matmul(rows, batch[..., 0]), cols.T)[..., None]


def to_model_input(images, *, ink_is_dark: bool, image_size: int) -> np.ndarray:
  """(H, W, 1) grey levels (uint8 or float, 0..255) -> float32 (N, S, S, 1) model inputs.

  Resizes bilinearly (with antialiasing when shrinking) to `image_size` x `image_size`,
  scales by 1/255 and inverts when the ink is dark on a light background (NHCD), so that
  the ink is bright, as the networks were trained. Images of several sizes are resized in
  groups of one size, each as a batch of its own (the same arithmetic per image).
  """
  images = list(images)
  out = np.empty((len(images), image_size, image_size, 1), np.float32)
  by_shape: dict[tuple, list[int]] = {}
  for i, image in enumerate(images):
    by_shape.setdefault(image.shape, []).append(i)
  for indices in by_shape.values():
    batch = np.stack([images[i] for i in indices]).astype(np.float32)
    out[indices] = _resize(batch, image_size)
  out = np.clip(out, 0.0, 255.0) / 255.0
  return (1.0 - out) if ink_is_dark else out
