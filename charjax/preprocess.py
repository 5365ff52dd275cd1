"""Turns stored uint8 images into model inputs the way the study does."""

from __future__ import annotations

import jax
import numpy as np
from PIL import Image


def to_model_input(images: list[np.ndarray] | np.ndarray, *, ink_is_dark: bool,
                   image_size: int) -> np.ndarray:
  """uint8 (H, W, 1) images -> float32 (N, S, S, 1): ink bright, values in [0, 1], resized.

  Inverts when the ink is dark on a light background (NHCD), scales by 1/255 and resizes
  bilinearly (with antialiasing when shrinking) to `image_size` x `image_size`.
  """
  shapes = {im.shape for im in images}
  if len(shapes) == 1:
    batch = np.stack(list(images)).astype(np.float32)
    if batch.shape[1:3] != (image_size, image_size):
      batch = np.asarray(jax.image.resize(
          batch, (batch.shape[0], image_size, image_size, 1), method='linear', antialias=True))
  else:
    batch = np.stack([
        np.asarray(Image.fromarray(im[..., 0]).resize((image_size, image_size),
                                                      Image.BILINEAR), np.float32)[..., None]
        for im in images])
  batch = np.clip(batch, 0.0, 255.0) / 255.0
  return (1.0 - batch) if ink_is_dark else batch
