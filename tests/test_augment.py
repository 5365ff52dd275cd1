"""On-device augmentation: identity at zero range, mass kept by rotation, determinism,
erasing's rectangles, elastic distortion against scipy's Gaussian filter."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charjax.data import augment


def _blob_images(n=4, size=28):
  """Bright blobs (Gaussian strokes) well inside a dark square, like inverted characters."""
  r, c = np.mgrid[:size, :size]
  rng = np.random.default_rng(0)
  images = []
  for _ in range(n):
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    images.append(np.exp(-((r - cy) ** 2 / 8 + (c - cx) ** 2 / 3)))
  return jnp.asarray(np.stack(images)[..., None], jnp.float32)


def test_zero_range_augmentation_is_the_identity():
  images = _blob_images()
  out = augment.random_augment(jax.random.key(0), images, augment.Augmentation(0.0, 0.0))
  np.testing.assert_allclose(out, images, atol=1e-6)


def test_rotation_keeps_mass_and_moves_pixels():
  images = _blob_images()
  angles = jnp.full((4,), math.radians(15.0))
  out = augment.affine_warp(images, angles, jnp.ones((4,)))
  np.testing.assert_allclose(out.sum((1, 2, 3)), images.sum((1, 2, 3)), rtol=0.02)
  assert float(jnp.abs(out - images).max()) > 0.1


def test_quarter_turn_matches_rot90():
  image = jnp.arange(36.0).reshape(1, 6, 6, 1)
  out = augment.affine_warp(image, jnp.array([math.pi / 2]), jnp.ones((1,)))
  np.testing.assert_allclose(out[0, ..., 0], np.rot90(image[0, ..., 0], k=1), atol=1e-4)


def test_zoom_scales_mass_by_the_square_of_the_factor():
  images = _blob_images()
  out = augment.affine_warp(images, jnp.zeros((4,)), jnp.full((4,), 1.2))
  np.testing.assert_allclose(out.sum((1, 2, 3)), 1.44 * images.sum((1, 2, 3)), rtol=0.03)


def test_draws_are_per_image_and_deterministic_for_a_seed():
  images = jnp.tile(_blob_images(1), (3, 1, 1, 1))
  aug = augment.Augmentation(15.0, 0.2)
  a = augment.random_augment(jax.random.key(7), images, aug)
  b = augment.random_augment(jax.random.key(7), images, aug)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a[0] - a[1]).max()) > 1e-3  # same image, different draws
  c = augment.random_augment(jax.random.key(8), images, aug)
  assert float(jnp.abs(a - c).max()) > 1e-3


@pytest.mark.parametrize('augment_on', [False, True])
def test_from_config(augment_on):
  from charjax.configs import all_classes
  config = all_classes.get_config()
  config.augment = augment_on
  got = augment.from_config(config)
  assert got == (augment.Augmentation(15.0, 0.2) if augment_on else None)


def test_whole_pixel_shift_moves_the_image_and_fills_with_background():
  image = jnp.arange(1.0, 37.0).reshape(1, 6, 6, 1)
  out = augment.affine_warp(image, jnp.zeros((1,)), jnp.ones((1,)), jnp.array([[2.0, -1.0]]))
  expected = np.zeros((6, 6))
  expected[2:, :5] = np.asarray(image[0, :4, 1:, 0])  # down 2 rows, left 1 column
  np.testing.assert_allclose(out[0, ..., 0], expected, atol=1e-5)


def test_translation_draws_stay_in_range_and_leave_rotation_draws_alone():
  images = jnp.tile(_blob_images(1), (64, 1, 1, 1))
  plain = augment.random_augment(jax.random.key(3), images, augment.Augmentation(0.0, 0.0))
  moved = augment.random_augment(jax.random.key(3), images,
                                 augment.Augmentation(0.0, 0.0, max_translate=0.1))
  np.testing.assert_allclose(plain, images, atol=1e-6)
  # Centre of mass moves by at most 0.1 * 28 = 2.8 pixels per axis, and does move.
  r = np.arange(28.0)[None, :, None, None]
  com = lambda x: np.asarray((x * r).sum((1, 2, 3)) / x.sum((1, 2, 3)))
  shift = com(moved) - com(images)
  assert np.abs(shift).max() <= 2.8 + 0.05 and np.abs(shift).max() > 1.0


def test_erase_boxes_are_inside_the_image_with_the_drawn_area():
  boxes = np.asarray(augment.erase_boxes(jax.random.key(5), 2000, 36, 30, 1.0,
                                         area=(0.05, 0.2), max_aspect=2.0))
  top, left, bottom, right = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (bottom <= 36).all() and (right <= 30).all()
  h, w = bottom - top, right - left
  assert (h >= 1).all() and (w >= 1).all()
  fraction = h * w / (36 * 30)
  # Rounding each side to whole pixels moves the area a little past the drawn range.
  assert fraction.min() > 0.04 and fraction.max() < 0.23
  assert 0.3 < np.mean(h > w) < 0.6 and 0.3 < np.mean(w > h) < 0.6  # both orientations
  assert (h / w).max() <= 2.0 * 1.3 and (w / h).max() <= 2.0 * 1.3
  # Positions cover the image: tops from 0 to near the bottom.
  assert top.min() == 0 and top.max() > 25


def test_erasing_zeroes_exactly_the_drawn_rectangle_and_nothing_else():
  images = jnp.asarray(np.random.default_rng(0).uniform(0.1, 1.0, (64, 12, 10, 1)), jnp.float32)
  key = jax.random.key(11)
  out = np.asarray(augment.random_erase(key, images, 0.5))
  boxes = np.asarray(augment.erase_boxes(key, 64, 12, 10, 0.5))
  expected = np.asarray(images).copy()
  for image, (t, l, b, r) in zip(expected, boxes):
    image[t:b, l:r] = 0.0
  np.testing.assert_array_equal(out, expected)
  erased = (out == 0).any(axis=(1, 2, 3))
  assert 16 < erased.sum() < 48  # about half the images, with probability 0.5


def test_erasing_probability_zero_and_one():
  images = jnp.ones((32, 8, 8, 1))
  np.testing.assert_array_equal(augment.random_erase(jax.random.key(0), images, 0.0), images)
  out = np.asarray(augment.random_erase(jax.random.key(0), images, 1.0))
  assert ((out == 0).sum(axis=(1, 2, 3)) >= 1).all()


def test_erasing_in_random_augment_leaves_the_other_draws_alone():
  images = jnp.tile(_blob_images(1), (16, 1, 1, 1))
  aug = augment.Augmentation(10.0, 0.1, max_translate=0.05)
  plain = np.asarray(augment.random_augment(jax.random.key(4), images, aug))
  erased = np.asarray(augment.random_augment(
      jax.random.key(4), images, augment.Augmentation(10.0, 0.1, 0.05, erase_probability=1.0)))
  changed = plain != erased
  assert (erased[changed] == 0).all()          # only zeros where they differ
  assert changed.any(axis=(1, 2, 3)).sum() > 8  # and most images lose some ink


def test_from_config_reads_erasing():
  from charjax.configs import recipe
  config = recipe.get_config()
  config.augment_erase = 0.5
  assert augment.from_config(config).erase_probability == 0.5


@pytest.mark.parametrize('augment_on, field, value, message', [
    (True, 'augment_erase', 1.5, r'augment_erase=1.5 not in \[0, 1\]'),
    (False, 'augment_erase', 0.5, 'augment_erase=0.5 needs augment=True'),
    (True, 'augment_elastic_alpha', -1.0, 'augment_elastic_alpha=-1.0 is negative'),
    (True, 'augment_elastic_sigma', 0.0, 'augment_elastic_sigma=0.0 must be positive'),
    (False, 'augment_elastic_alpha', 8.0, 'augment_elastic_alpha=8.0 needs augment=True'),
])
def test_impossible_augmentation_is_refused(augment_on, field, value, message):
  from charjax import configuration
  from charjax.configs import recipe
  config = recipe.get_config()
  config.augment = augment_on
  config[field] = value
  with pytest.raises(configuration.ConfigError, match=message):
    configuration.validate(config)


@pytest.mark.parametrize('size, sigma', [(36, 4.0), (10, 1.5), (5, 3.0)])
def test_gaussian_matrix_matches_scipy(size, sigma):
  from scipy import ndimage
  x = np.random.default_rng(1).normal(size=size)
  expected = ndimage.gaussian_filter1d(x, sigma, mode='constant', truncate=3.0)
  np.testing.assert_allclose(augment.gaussian_matrix(size, sigma) @ x, expected, atol=1e-5)


def test_elastic_displacements_are_smoothed_noise_scaled_by_alpha():
  from scipy import ndimage
  key = jax.random.key(5)
  fields = np.asarray(augment.elastic_displacements(key, 3, 12, 9, alpha=6.0, sigma=2.0))
  noise = np.asarray(jax.random.uniform(key, (3, 12, 9, 2), minval=-1.0, maxval=1.0))
  expected = 6.0 * ndimage.gaussian_filter(noise, sigma=(0, 2.0, 2.0, 0), mode='constant',
                                           truncate=3.0)
  np.testing.assert_allclose(fields, expected, atol=1e-5)
  assert fields.shape == (3, 12, 9, 2) and np.abs(fields).max() > 0.5


def test_displacement_field_moves_the_sampled_position():
  image = jnp.asarray(np.random.default_rng(2).uniform(size=(1, 6, 7, 1)), jnp.float32)
  one_down = jnp.zeros((1, 6, 7, 2)).at[..., 0].set(1.0)
  out = augment.affine_warp(image, jnp.zeros((1,)), jnp.ones((1,)), displacements=one_down)
  # output(r, c) = input(r + 1, c): the image moves up one row, background below.
  np.testing.assert_allclose(out[0, :-1], image[0, 1:], atol=1e-6)
  np.testing.assert_array_equal(out[0, -1], 0.0)


def test_elastic_distortion_in_random_augment_is_the_drawn_field_composed_with_the_affine():
  images = _blob_images(8)
  key = jax.random.key(7)
  aug = augment.Augmentation(10.0, 0.1, 0.05, elastic_alpha=8.0, elastic_sigma=3.0)
  out = augment.random_augment(key, images, aug)
  # The same draws by hand: rotation and zoom from split(key), shift from fold_in(key, 1),
  # the field from fold_in(key, 3).
  angle_key, zoom_key = jax.random.split(key)
  angles = jax.random.uniform(angle_key, (8,), minval=-math.radians(10.0),
                              maxval=math.radians(10.0))
  scales = jax.random.uniform(zoom_key, (8,), minval=0.9, maxval=1.1)
  limit = 0.05 * jnp.array([28.0, 28.0])
  shifts = jax.random.uniform(jax.random.fold_in(key, 1), (8, 2), minval=-limit, maxval=limit)
  fields = augment.elastic_displacements(jax.random.fold_in(key, 3), 8, 28, 28, 8.0, 3.0)
  expected = augment.affine_warp(images, angles, scales, shifts, fields)
  np.testing.assert_allclose(out, expected, atol=1e-6)
  plain = augment.random_augment(key, images, augment.Augmentation(10.0, 0.1, 0.05))
  assert float(jnp.abs(out - plain).max()) > 0.1  # the distortion changes the images
  np.testing.assert_allclose(plain, augment.affine_warp(images, angles, scales, shifts),
                             atol=1e-6)  # and without it the draws are the same


def test_from_config_reads_elastic_distortion():
  from charjax.configs import recipe
  config = recipe.get_config()
  assert augment.from_config(config).elastic_alpha == 0.0  # off in the recipe
  config.augment_elastic_alpha, config.augment_elastic_sigma = 6.0, 3.0
  aug = augment.from_config(config)
  assert (aug.elastic_alpha, aug.elastic_sigma) == (6.0, 3.0)


def test_mix_partners_pair_each_image_with_the_one_before_and_never_with_padding():
  np.testing.assert_array_equal(augment.mix_partners(jnp.ones(5, bool)), [4, 0, 1, 2, 3])
  padded = jnp.arange(6) < 4  # 4 real images, 2 of padding
  np.testing.assert_array_equal(augment.mix_partners(padded)[:4], [3, 0, 1, 2])


@pytest.mark.parametrize('mix', augment.MIXES)
def test_mix_draws_of_the_real_images_do_not_depend_on_padding(mix):
  images, labels = _blob_images(6), jnp.arange(6)
  aug = augment.Augmentation(mix=mix, mix_alpha=0.5)
  key = jax.random.key(3)
  full = augment.mix_pairs(key, images[:4], labels[:4], jnp.ones(4, bool), aug)
  padded = augment.mix_pairs(key, images, labels, jnp.arange(6) < 4, aug)
  for a, b in zip(full, padded):
    np.testing.assert_array_equal(a, b[:4])


def test_mixup_is_the_weighted_sum_of_an_image_and_its_partner():
  images, labels = _blob_images(5), jnp.array([3, 1, 4, 1, 5])
  aug = augment.Augmentation(mix='mixup', mix_alpha=0.4)
  mixed, others, w = augment.mix_pairs(jax.random.key(0), images, labels, jnp.ones(5, bool), aug)
  partners = [4, 0, 1, 2, 3]
  np.testing.assert_array_equal(others, labels[jnp.array(partners)])
  assert bool(jnp.all((w > 0) & (w < 1))) and float(jnp.std(w)) > 0.01  # drawn per image
  expected = (w[:, None, None, None] * images
              + (1 - w[:, None, None, None]) * images[jnp.array(partners)])
  np.testing.assert_allclose(mixed, expected, rtol=1e-6, atol=1e-7)


def test_cutmix_pastes_one_rectangle_of_the_partner_and_weights_by_the_area_kept():
  n, size = 64, 12
  # Image i is constant i + 1, so every pixel says which image it came from.
  images = (jnp.arange(n, dtype=jnp.float32) + 1)[:, None, None, None] * jnp.ones(
      (n, size, size, 1))
  aug = augment.Augmentation(mix='cutmix', mix_alpha=1.0)
  mixed, _, w = augment.mix_pairs(jax.random.key(1), images, jnp.arange(n), jnp.ones(n, bool),
                                  aug)
  mixed = np.asarray(mixed[..., 0])
  for i, partner in enumerate(np.asarray(augment.mix_partners(jnp.ones(n, bool)))):
    pasted = mixed[i] == partner + 1
    assert np.all(pasted | (mixed[i] == i + 1))
    assert float(w[i]) == pytest.approx(1 - pasted.mean(), abs=1e-6)
    if pasted.any():  # a single axis-aligned rectangle
      rows, cols = np.nonzero(pasted.any(1))[0], np.nonzero(pasted.any(0))[0]
      assert pasted.sum() == len(rows) * len(cols)
      assert np.ptp(rows) == len(rows) - 1 and np.ptp(cols) == len(cols) - 1
  assert 0.3 < float(w.mean()) < 0.8  # Beta(1, 1): about half the area, less where clipped


def test_mixing_probability_leaves_the_other_images_untouched():
  images, labels = _blob_images(64, 12), jnp.arange(64)
  aug = augment.Augmentation(mix='mixup', mix_probability=0.25)
  mixed, _, w = augment.mix_pairs(jax.random.key(2), images, labels, jnp.ones(64, bool), aug)
  kept = np.asarray(w == 1.0)
  assert 0.5 < kept.mean() < 0.95
  np.testing.assert_array_equal(np.asarray(mixed)[kept], np.asarray(images)[kept])


def test_from_config_reads_mixing():
  from charjax.configs import recipe
  config = recipe.get_config()
  config.augment_mix, config.augment_mix_alpha, config.augment_mix_probability = 'cutmix', 0.5, 0.3
  aug = augment.from_config(config)
  assert (aug.mix, aug.mix_alpha, aug.mix_probability) == ('cutmix', 0.5, 0.3)


@pytest.mark.parametrize('augment_on, field, value, message', [
    (True, 'augment_mix', 'mixit', "augment_mix='mixit' is not one of '', mixup, cutmix"),
    (True, 'augment_mix_alpha', 0.0, 'augment_mix_alpha=0.0 must be positive'),
    (True, 'augment_mix_probability', 0.0, r'augment_mix_probability=0.0 not in \(0, 1\]'),
    (False, 'augment_mix', 'cutmix', "augment_mix='cutmix' needs augment=True"),
])
def test_impossible_mixing_is_refused(augment_on, field, value, message):
  test_impossible_augmentation_is_refused(augment_on, field, value, message)
