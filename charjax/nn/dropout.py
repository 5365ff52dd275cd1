"""Dropout whose masks take 8 or 16 random bits per element, from a counter hash.

`flax.linen.Dropout` draws a float32 uniform (one threefry call) per element, which is
a large part of the 58-class network's step on CPU (its first convolution's output is
large). `Dropout` here compares each byte (or 16-bit half) of 32-bit random words with a
threshold, a quarter (or half) of the words; and it makes those words with a counter-based
hash rather than threefry: two rounds of MurmurHash3's 32-bit finalizer over the word's
index, keyed by two threefry words drawn from the layer's key. Both are the same inverted
dropout; the hash makes the mask nearly free on CPU, where threefry's 20 rounds per word
were most of its cost (`python -m benchmarks.ablations --model=exp3 --batch=400
--choices=dropout` times flax's, threefry's packed bits and the hash; docs/benchmarks.md).
The hash is not a cryptographic generator; dropout needs masks that are uniform and
uncorrelated between elements and keys, which tests/test_dropout.py checks.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def lane_bits(keep_prob: float) -> int:
  """Random bits per element: 8 where `keep_prob` is a multiple of 1/256, else 16."""
  return 8 if float(keep_prob * 256).is_integer() else 16


GENERATORS = ('hash', 'threefry')


def _finalize(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a bijection of uint32 in which every output bit
  depends on every input bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def random_words(rng: jax.Array, count: int, generator: str = 'hash') -> jax.Array:
  """`count` random uint32 words from key `rng`.

  'hash': word i = F(F(i ^ k0) + k1), F = `_finalize`, (k0, k1) = two threefry words of
  `rng`: elementwise on an index, so XLA fuses it into the mask's consumer.
  'threefry': `jax.random.bits(rng, (count,), uint32)`.
  """
  if generator == 'threefry':
    return jax.random.bits(rng, (count,), jnp.uint32)
  if generator != 'hash':
    raise ValueError(f'generator={generator!r} is not one of {GENERATORS}')
  if count > 2 ** 32:
    raise ValueError(f'{count} random words exceed the hash counter\'s 2**32')
  k = hash_key(rng)
  return _finalize(_finalize(jax.lax.iota(jnp.uint32, count) ^ k[0]) + k[1])


def hash_key(rng: jax.Array) -> jax.Array:
  """The hash generator's key (k0, k1) for `rng`: two threefry words (uint32[2])."""
  return jax.random.bits(rng, (2,), jnp.uint32)


def lane_threshold(keep_prob: float) -> tuple[int, int, float]:
  """(bits per element, threshold, exact keep probability) of `keep_mask`'s lanes: an element
  is kept when its lane, as an unsigned integer, is below the threshold."""
  bits = lane_bits(keep_prob)
  threshold = min(max(round(keep_prob * 2 ** bits), 1), 2 ** bits - 1)
  return bits, threshold, threshold / 2 ** bits


def keep_mask(rng: jax.Array, keep_prob: float, shape, generator: str = 'hash'
              ) -> tuple[jax.Array, float]:
  """(boolean mask of `shape`, its exact keep probability).

  Element i is kept when lane i of the random words (`lane_bits(keep_prob)` bits, as
  unsigned integers in the words' little-endian byte order) is below the threshold
  round(keep_prob * 2**bits), clipped to [1, 2**bits - 1]; the probability returned is
  threshold / 2**bits: `keep_prob` itself for multiples of 1/256 (0.75 for dropout 0.25),
  otherwise within 2**-17 of it, unless clipped (keep probabilities below 2**-17 or
  above 1 - 2**-17). The words come from `random_words(rng, ..., generator)`.
  """
  bits, threshold, exact = lane_threshold(keep_prob)
  size = math.prod(shape)
  per_word = 32 // bits
  words = random_words(rng, -(-size // per_word), generator)
  lanes = jax.lax.bitcast_convert_type(words, jnp.uint8 if bits == 8 else jnp.uint16)
  mask = lanes.reshape(-1)[:size].reshape(shape) < threshold
  return mask, exact


class Dropout(nn.Module):
  """Inverted dropout with masks from `keep_mask`.

  `flax.linen.Dropout`'s `rate`, `deterministic` and `rng` (no `broadcast_dims`). Kept
  elements are scaled by 1 / (the mask's exact keep probability), so the output's
  expectation is the input. Draws its key from the 'dropout' rng collection unless given
  `rng`; `generator` makes the mask's random words (`random_words`).
  """
  rate: float
  deterministic: bool | None = None
  generator: str = 'hash'

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None,
               rng: jax.Array | None = None) -> jax.Array:
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    mask, keep_prob = keep_mask(self.make_rng('dropout') if rng is None else rng,
                                1.0 - self.rate, x.shape, self.generator)
    return jnp.where(mask, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))
