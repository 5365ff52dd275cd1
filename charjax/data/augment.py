"""On-device data augmentation: random rotation, zoom and shift, drawn per image.

Each image is rotated by an angle drawn uniformly in [-max_rotation_degrees,
+max_rotation_degrees], scaled about its centre by a factor drawn uniformly in
[1 - max_zoom, 1 + max_zoom] (above 1 zooms in), and shifted by a fraction of its height
and width drawn uniformly in [-max_translate, max_translate] per axis (experiment 3 uses
rotation and zoom, as the study did), with bilinear interpolation; pixels that
come from outside the image are 0 (background: inputs have bright ink on a dark ground).
Everything is jittable and runs inside `train.train_epoch`; the draws depend only on the
key, so a seed gives the same augmented batches on every run.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Ranges of the random transform; hashable, so it can be a static jit argument."""
  max_rotation_degrees: float = 15.0
  max_zoom: float = 0.2
  max_translate: float = 0.0


def affine_warp(images: jax.Array, angles: jax.Array, scales: jax.Array,
                shifts: jax.Array | None = None) -> jax.Array:
  """Rotates image i by `angles[i]` radians (counter-clockwise as displayed) and scales it
  by `scales[i]` about its centre, then moves it by `shifts[i]` = (rows, columns) pixels
  (down and right for positive values; none if `shifts` is None).

  images: (N, H, W, C) float. Each output pixel samples the input at the inversely
  transformed position (bilinear, zero outside).
  """
  if shifts is None:
    shifts = jnp.zeros((images.shape[0], 2), jnp.float32)
  _, h, w, _ = images.shape
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2,
                            jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2, indexing='ij')

  def warp_one(image, angle, scale, shift):
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    r, c = rows - shift[0], cols - shift[1]
    src_r = cos * r + sin * c + (h - 1) / 2
    src_c = -sin * r + cos * c + (w - 1) / 2
    sample = lambda channel: jax.scipy.ndimage.map_coordinates(
        channel, [src_r, src_c], order=1, mode='constant', cval=0.0)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)

  return jax.vmap(warp_one)(images, angles, scales, shifts)


def random_augment(rng: jax.Array, images: jax.Array, aug: Augmentation) -> jax.Array:
  """`images` with a rotation, a zoom and (if `aug.max_translate`) a shift drawn
  independently for each image from `rng`."""
  n = images.shape[0]
  angle_rng, zoom_rng = jax.random.split(rng)
  max_angle = math.radians(aug.max_rotation_degrees)
  angles = jax.random.uniform(angle_rng, (n,), minval=-max_angle, maxval=max_angle)
  scales = jax.random.uniform(zoom_rng, (n,), minval=1 - aug.max_zoom, maxval=1 + aug.max_zoom)
  shifts = None
  if aug.max_translate:  # a separate key: the rotations and zooms stay those drawn without it
    limit = aug.max_translate * jnp.array(images.shape[1:3], jnp.float32)
    shifts = jax.random.uniform(jax.random.fold_in(rng, 1), (n, 2), minval=-limit,
                                maxval=limit)
  return affine_warp(images, angles, scales, shifts)


def from_config(config) -> Augmentation | None:
  """The config's augmentation, or None when `config.augment` is off."""
  if not config.augment:
    return None
  return Augmentation(max_rotation_degrees=float(config.augment_rotation_degrees),
                      max_zoom=float(config.augment_zoom),
                      max_translate=float(config.get('augment_translate', 0.0)))
