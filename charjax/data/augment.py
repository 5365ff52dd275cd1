"""On-device data augmentation: random rotation, zoom, shift, elastic distortion and erasing,
drawn per image.

Each image is rotated by an angle drawn uniformly in [-max_rotation_degrees,
+max_rotation_degrees], scaled about its centre by a factor drawn uniformly in
[1 - max_zoom, 1 + max_zoom] (above 1 zooms in), and shifted by a fraction of its height
and width drawn uniformly in [-max_translate, max_translate] per axis (experiment 3 uses
rotation and zoom, as the study did), with bilinear interpolation; pixels that
come from outside the image are 0 (background: inputs have bright ink on a dark ground).
With `elastic_alpha`, each image is also distorted elastically (Simard, Steinkraus and
Platt, 2003): every output pixel samples the input `alpha` times a smooth random
displacement away, the displacement field being uniform noise in [-1, 1] per pixel and axis
smoothed by a Gaussian of `elastic_sigma` pixels; strokes bend and thicken locally the way
one writer's hand differs from another's, which no affine transform does.
With `erase_probability`, each transformed image then has, with that probability, one
rectangle set to the background (random erasing, or cutout): a random part of the character
is missing, as when a stroke is faint or the scan is cut.
With `mix` ('mixup' or 'cutmix'), each image is then paired with another of its batch and
the two are blended (mixup: Zhang et al., 2018, a weighted sum of the images) or cut
(CutMix: Yun et al., 2019, a rectangle of the partner pasted in), the training target
weighting the two labels as the images are (`mix_pairs`): a regulariser that asks the
network for a graded answer between two characters instead of a certain one.
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
  erase_probability: float = 0.0
  # Range of the erased rectangle's area (fraction of the image) and of its height/width
  # ratio (log-uniform in [1 / r, r]).
  erase_area: tuple[float, float] = (0.02, 0.2)
  erase_max_aspect: float = 2.0
  # Elastic distortion: displacement scale in pixels (0: off) and smoothness in pixels.
  elastic_alpha: float = 0.0
  elastic_sigma: float = 4.0
  # Pairwise mixing ('', 'mixup' or 'cutmix'): the weight of an image's own label is drawn
  # from Beta(mix_alpha, mix_alpha) for a fraction `mix_probability` of the images, else 1.
  mix: str = ''
  mix_alpha: float = 1.0
  mix_probability: float = 1.0


MIXES = ('mixup', 'cutmix')


def affine_warp(images: jax.Array, angles: jax.Array, scales: jax.Array,
                shifts: jax.Array | None = None,
                displacements: jax.Array | None = None) -> jax.Array:
  """Rotates image i by `angles[i]` radians (counter-clockwise as displayed) and scales it
  by `scales[i]` about its centre, then moves it by `shifts[i]` = (rows, columns) pixels
  (down and right for positive values; none if `shifts` is None).

  images: (N, H, W, C) float. Each output pixel samples the input at the inversely
  transformed position (bilinear, zero outside). `displacements` (N, H, W, 2), if given,
  moves each output pixel's position by (rows, columns) pixels before that inverse
  transform: output(x) = input(A^-1(x + d(x))), an elastic distortion composed with the
  affine one.
  """
  n, h, w, _ = images.shape
  # Each output pixel's move before the inverse transform, (N, 1, 1, 2) or (N, H, W, 2).
  moves = jnp.zeros((n, 1, 1, 2), jnp.float32) if shifts is None else -shifts[:, None, None]
  if displacements is not None:
    moves = moves + displacements
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2,
                            jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2, indexing='ij')

  def warp_one(image, angle, scale, move):
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    r, c = rows + move[..., 0], cols + move[..., 1]
    src_r = cos * r + sin * c + (h - 1) / 2
    src_c = -sin * r + cos * c + (w - 1) / 2
    sample = lambda channel: jax.scipy.ndimage.map_coordinates(
        channel, [src_r, src_c], order=1, mode='constant', cval=0.0)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)

  return jax.vmap(warp_one)(images, angles, scales, moves)


def gaussian_matrix(size: int, sigma: float, truncate: float = 3.0) -> jax.Array:
  """(size, size) matrix M with M @ x = x smoothed by a normalised Gaussian of `sigma`
  samples, cut at `truncate` sigmas, zero beyond the ends (as
  `scipy.ndimage.gaussian_filter(..., mode='constant')`)."""
  radius = int(truncate * sigma + 0.5)
  gaussian = lambda d: jnp.exp(-0.5 * (d / sigma) ** 2)
  total = gaussian(jnp.arange(-radius, radius + 1, dtype=jnp.float32)).sum()
  distance = jnp.arange(size, dtype=jnp.float32)[:, None] - jnp.arange(size)[None, :]
  return jnp.where(jnp.abs(distance) <= radius, gaussian(distance) / total, 0.0)


def elastic_displacements(rng: jax.Array, n: int, height: int, width: int, alpha: float,
                          sigma: float) -> jax.Array:
  """(n, height, width, 2) displacement fields in pixels: uniform noise in [-1, 1] per
  pixel and axis, smoothed by a Gaussian of `sigma` pixels along both axes, times `alpha`."""
  noise = jax.random.uniform(rng, (n, height, width, 2), minval=-1.0, maxval=1.0)
  smooth_rows, smooth_cols = gaussian_matrix(height, sigma), gaussian_matrix(width, sigma)
  return alpha * jnp.einsum('ij,njkc,lk->nilc', smooth_rows, noise, smooth_cols)


def random_augment(rng: jax.Array, images: jax.Array, aug: Augmentation) -> jax.Array:
  """`images` with a rotation, a zoom and (if set in `aug`) a shift, an elastic distortion
  and an erased rectangle, drawn independently for each image from `rng`."""
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
  displacements = None
  if aug.elastic_alpha:  # its own key too
    displacements = elastic_displacements(jax.random.fold_in(rng, 3), n, *images.shape[1:3],
                                          aug.elastic_alpha, aug.elastic_sigma)
  images = affine_warp(images, angles, scales, shifts, displacements)
  if aug.erase_probability:  # its own key, like the shifts
    images = random_erase(jax.random.fold_in(rng, 2), images, aug.erase_probability,
                          aug.erase_area, aug.erase_max_aspect)
  return images


def erase_boxes(rng: jax.Array, n: int, height: int, width: int, probability: float,
                area: tuple[float, float] = (0.02, 0.2), max_aspect: float = 2.0):
  """Draws `n` rectangles as (top, left, bottom, right) pixel bounds, bottom and right
  exclusive; a rectangle not drawn (probability 1 - `probability`) is empty. Its area is
  a fraction of the image drawn uniformly in `area`, its height/width ratio log-uniformly
  in [1 / max_aspect, max_aspect] (both clipped to the image), its position uniformly
  among those that keep it inside the image."""
  keys = jax.random.split(rng, 5)
  apply = jax.random.bernoulli(keys[0], probability, (n,))
  fraction = jax.random.uniform(keys[1], (n,), minval=area[0], maxval=area[1])
  log_aspect = jax.random.uniform(keys[2], (n,), minval=-math.log(max_aspect),
                                  maxval=math.log(max_aspect))
  pixels = fraction * height * width
  h = jnp.clip(jnp.round(jnp.sqrt(pixels * jnp.exp(log_aspect))), 1, height).astype(jnp.int32)
  w = jnp.clip(jnp.round(jnp.sqrt(pixels / jnp.exp(log_aspect))), 1, width).astype(jnp.int32)
  top = jnp.floor(jax.random.uniform(keys[3], (n,)) * (height - h + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(keys[4], (n,)) * (width - w + 1)).astype(jnp.int32)
  h, w = jnp.where(apply, h, 0), jnp.where(apply, w, 0)
  return jnp.stack([top, left, top + h, left + w], axis=-1)


def random_erase(rng: jax.Array, images: jax.Array, probability: float,
                 area: tuple[float, float] = (0.02, 0.2), max_aspect: float = 2.0) -> jax.Array:
  """`images` (N, H, W, C) with, in each image drawn with `probability`, one rectangle of
  `erase_boxes` set to 0 (the background)."""
  n, height, width, _ = images.shape
  boxes = erase_boxes(rng, n, height, width, probability, area, max_aspect)
  inside = box_mask(boxes, height, width)
  return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)


def box_mask(boxes: jax.Array, height: int, width: int) -> jax.Array:
  """(N, height, width) bool: the pixels inside each of `boxes`, (N, 4) (top, left, bottom,
  right) bounds, bottom and right exclusive."""
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  return ((rows >= boxes[:, 0, None, None]) & (rows < boxes[:, 2, None, None])
          & (cols >= boxes[:, 1, None, None]) & (cols < boxes[:, 3, None, None]))


def mix_partners(mask: jax.Array) -> jax.Array:
  """Index of each batch element's partner: the element before it, the first element's
  being the last that `mask` marks (a padded last batch's padding is never a partner, so
  the pairs are the same whatever the padding)."""
  n = mask.shape[0]
  last = jnp.sum(mask.astype(jnp.int32)) - 1
  return jnp.where(jnp.arange(n) == 0, last, jnp.arange(n) - 1)


def mix_pairs(rng: jax.Array, images: jax.Array, labels: jax.Array, mask: jax.Array,
              aug: Augmentation) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixes each image with its partner (`mix_partners`) as `aug.mix` says.

  Returns the mixed images, the partners' labels and the weight w of each image's own
  label: the training target is w * one_hot(label) + (1 - w) * one_hot(partner's label).
  mixup: image = w x + (1 - w) x_partner, w drawn from Beta(alpha, alpha). cutmix: a
  rectangle of the partner is pasted in, its area (1 - w') of the image for a drawn w', its
  height/width ratio the image's, its centre uniform on the image, clipped to it; w is the
  fraction of the image left as it was (1 - the clipped rectangle's area). Images not drawn
  to be mixed (probability 1 - `aug.mix_probability`) keep w = 1. Each element's draws
  depend only on its position in the batch.
  """
  n, height, width, _ = images.shape
  partners = mix_partners(mask)
  keys = jax.random.split(rng, 4)
  weights = jax.random.beta(keys[0], aug.mix_alpha, aug.mix_alpha, (n,))
  if aug.mix_probability < 1:
    weights = jnp.where(jax.random.bernoulli(keys[1], aug.mix_probability, (n,)), weights, 1.0)
  others = images[partners]
  if aug.mix == 'mixup':
    w = weights.astype(images.dtype)[:, None, None, None]
    mixed = w * images + (1 - w) * others
  elif aug.mix == 'cutmix':
    side = jnp.sqrt(1.0 - weights)
    centre_r = jax.random.uniform(keys[2], (n,)) * height
    centre_c = jax.random.uniform(keys[3], (n,)) * width
    top = jnp.clip(jnp.round(centre_r - side * height / 2), 0, height)
    bottom = jnp.clip(jnp.round(centre_r + side * height / 2), 0, height)
    left = jnp.clip(jnp.round(centre_c - side * width / 2), 0, width)
    right = jnp.clip(jnp.round(centre_c + side * width / 2), 0, width)
    inside = box_mask(jnp.stack([top, left, bottom, right], axis=-1), height, width)
    mixed = jnp.where(inside[..., None], others, images)
    weights = 1.0 - (bottom - top) * (right - left) / (height * width)
  else:
    raise ValueError(f'mix={aug.mix!r} is not one of {", ".join(MIXES)}')
  return mixed, labels[partners], weights


def from_config(config) -> Augmentation | None:
  """The config's augmentation, or None when `config.augment` is off."""
  if not config.augment:
    return None
  return Augmentation(max_rotation_degrees=float(config.augment_rotation_degrees),
                      max_zoom=float(config.augment_zoom),
                      max_translate=float(config.get('augment_translate', 0.0)),
                      erase_probability=float(config.get('augment_erase', 0.0)),
                      elastic_alpha=float(config.get('augment_elastic_alpha', 0.0)),
                      elastic_sigma=float(config.get('augment_elastic_sigma', 4.0)),
                      mix=str(config.get('augment_mix', '')),
                      mix_alpha=float(config.get('augment_mix_alpha', 1.0)),
                      mix_probability=float(config.get('augment_mix_probability', 1.0)))
