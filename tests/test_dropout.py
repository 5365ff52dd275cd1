"""charjax.nn.dropout: masks from packed random bits (a counter hash, or threefry), flax's
inverted-dropout contract, and the hash's statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charjax.nn import dropout


def _finalize_reference(h):
  # MurmurHash3's fmix32, in uint64 arithmetic reduced mod 2**32 (written from its definition)
  h = h.astype(np.uint64)
  h ^= h >> 16
  h = (h * 0x85EBCA6B) % 2 ** 32
  h ^= h >> 13
  h = (h * 0xC2B2AE35) % 2 ** 32
  h ^= h >> 16
  return h


def _words_reference(key, count, generator):
  if generator == 'threefry':
    return np.asarray(jax.random.bits(key, (count,), jnp.uint32))
  k0, k1 = (int(k) for k in np.asarray(jax.random.bits(key, (2,), jnp.uint32)))
  inner = _finalize_reference(np.arange(count, dtype=np.uint64) ^ k0)
  return _finalize_reference((inner + k1) % 2 ** 32).astype(np.uint32)


@pytest.mark.parametrize('generator', dropout.GENERATORS)
@pytest.mark.parametrize('keep_prob, lane_dtype, threshold', [(0.75, np.uint8, 192),
                                                               (0.3, np.uint16, 19661)])
def test_keep_mask_compares_each_lane_of_the_random_words_with_a_threshold(
    keep_prob, lane_dtype, threshold, generator):
  key, shape = jax.random.key(3), (3, 5, 7)
  per_word = 4 // np.dtype(lane_dtype).itemsize
  words = _words_reference(key, -(-105 // per_word), generator)
  np.testing.assert_array_equal(
      np.asarray(dropout.random_words(key, words.size, generator)), words)
  lanes = words.astype('<u4').view(lane_dtype)[:105].reshape(shape)
  mask, prob = dropout.keep_mask(key, keep_prob, shape, generator)
  np.testing.assert_array_equal(np.asarray(mask), lanes < threshold)
  assert prob == threshold / 2 ** (8 * np.dtype(lane_dtype).itemsize)
  assert abs(prob - keep_prob) <= 2 ** -17


def test_hash_words_bytes_are_uniform_and_uncorrelated_within_and_across_keys():
  count = 1 << 18  # 1M bytes
  a = np.asarray(dropout.random_words(jax.random.key(0), count)).view(np.uint8)
  b = np.asarray(dropout.random_words(jax.random.key(1), count)).view(np.uint8)
  # Byte values: chi-square with 255 degrees of freedom (mean 255, sd 22.6); 400 is 6 sd.
  expected = a.size / 256
  assert ((np.bincount(a, minlength=256) - expected) ** 2 / expected).sum() < 400
  # Neighbouring bytes (lanes of one word and of consecutive words), and the two keys'
  # streams: correlations of 1M pairs have sd 0.001.
  x = a.astype(np.float64)
  for lag in (1, 2, 3, 4, 5, 8):
    assert abs(np.corrcoef(x[:-lag], x[lag:])[0, 1]) < 0.006, lag
  assert abs(np.corrcoef(x, b.astype(np.float64))[0, 1]) < 0.006
  # Keep-masks at 0.75 of the two keys agree as independent masks would: 0.75^2 + 0.25^2.
  assert abs(((a < 192) == (b < 192)).mean() - 0.625) < 0.003


def test_random_words_rejects_an_unknown_generator():
  with pytest.raises(ValueError, match='not one of'):
    dropout.random_words(jax.random.key(0), 4, 'philox')


def test_lane_bits_are_exact_where_the_rate_allows():
  assert [dropout.lane_bits(p) for p in (0.75, 0.5, 0.3, 0.2)] == [8, 8, 16, 16]


@pytest.mark.parametrize('rate', [0.25, 0.7, 0.8])
def test_dropout_keeps_the_expected_fraction_and_rescales(rate):
  x = jnp.ones((400, 500))
  out = np.asarray(dropout.Dropout(rate).apply({}, x, deterministic=False,
                                              rngs={'dropout': jax.random.key(0)}))
  kept = out != 0
  assert abs(kept.mean() - (1 - rate)) < 0.005  # 200k draws: 5 standard deviations
  _, prob = dropout.keep_mask(jax.random.key(0), 1 - rate, x.shape)
  np.testing.assert_allclose(out[kept], 1 / prob, rtol=1e-6)


def test_dropout_is_identity_when_deterministic_and_zero_at_rate_one():
  x = jax.random.normal(jax.random.key(1), (4, 6))
  rngs = {'dropout': jax.random.key(0)}
  assert (dropout.Dropout(0.5).apply({}, x, deterministic=True) == x).all()
  assert (dropout.Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs) == x).all()
  assert (dropout.Dropout(1.0).apply({}, x, deterministic=False, rngs=rngs) == 0).all()


def test_dropout_masks_depend_on_the_key_and_gradients_follow_the_mask():
  x = jnp.ones((64, 64))
  layer = dropout.Dropout(0.25, deterministic=False)
  a, b = (layer.apply({}, x, rngs={'dropout': jax.random.key(k)}) for k in (0, 1))
  assert (a != b).any()
  grad = jax.grad(lambda x: layer.apply({}, x, rngs={'dropout': jax.random.key(0)}).sum())(x)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(a))  # mask / keep_prob


@pytest.mark.parametrize('keep_prob, expected', [(1e-7, 2 ** -16), (1 - 1e-7, 1 - 2 ** -16)])
def test_keep_mask_clips_extreme_probabilities_to_a_valid_threshold(keep_prob, expected):
  mask, prob = dropout.keep_mask(jax.random.key(0), keep_prob, (10,))
  assert prob == expected and mask.shape == (10,)
