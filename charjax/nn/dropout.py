"""Dropout whose mask takes 8 or 16 random bits per element instead of 32.

`flax.linen.Dropout` draws a float32 uniform (one threefry call) per element, which is
a large part of the 58-class network's step on CPU (its first convolution's output is
large). `Dropout` here draws 32-bit threefry words and compares each of their 4 bytes (or
2 halves) with a threshold: the same inverted dropout, with a quarter (or half) of the
random-number work (measured with `python -m benchmarks.ablations --model=exp3
--batch=400 --choices=dropout`; docs/benchmarks.md).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def lane_bits(keep_prob: float) -> int:
  """Random bits per element: 8 where `keep_prob` is a multiple of 1/256, else 16."""
  return 8 if float(keep_prob * 256).is_integer() else 16


def keep_mask(rng: jax.Array, keep_prob: float, shape) -> tuple[jax.Array, float]:
  """(boolean mask of `shape`, its exact keep probability).

  Element i is kept when lane i of the random words (`lane_bits(keep_prob)` bits, as
  unsigned integers in the words' little-endian byte order) is below the threshold
  round(keep_prob * 2**bits), clipped to [1, 2**bits - 1]; the probability returned is
  threshold / 2**bits: `keep_prob` itself for multiples of 1/256 (0.75 for dropout 0.25),
  otherwise within 2**-17 of it, unless clipped (keep probabilities below 2**-17 or
  above 1 - 2**-17).
  """
  bits = lane_bits(keep_prob)
  threshold = min(max(round(keep_prob * 2 ** bits), 1), 2 ** bits - 1)
  size = math.prod(shape)
  per_word = 32 // bits
  words = jax.random.bits(rng, (-(-size // per_word),), jnp.uint32)
  lanes = jax.lax.bitcast_convert_type(words, jnp.uint8 if bits == 8 else jnp.uint16)
  mask = lanes.reshape(-1)[:size].reshape(shape) < threshold
  return mask, threshold / 2 ** bits


class Dropout(nn.Module):
  """Inverted dropout with masks from `keep_mask`.

  `flax.linen.Dropout`'s `rate` and `deterministic` (no `broadcast_dims`, no `rng`
  argument). Kept elements are scaled by 1 / (the mask's exact keep probability), so the
  output's expectation is the input. Draws its key from the 'dropout' rng collection.
  """
  rate: float
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    mask, keep_prob = keep_mask(self.make_rng('dropout'), 1.0 - self.rate, x.shape)
    return jnp.where(mask, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))
