"""Winograd's F(2x2, 3x3) convolution in jax.numpy: the alternative to XLA's convolution
that `benchmarks.ablations` times (fewer multiplications, 4x larger intermediates).

Each 2x2 output tile comes from a 4x4 input tile: Y = A^T [(G g G^T) * (B^T d B)] A, with
the 16 elementwise products over channels done as 16 batched matrix products.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)


def _input_transform(d):
  d0, d1, d2, d3 = d  # B^T d for F(2, 3), B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]
  return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _output_transform(m):
  return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]  # A^T m, A^T = [[1,1,1,0],[0,1,-1,-1]]


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`conv.conv_xla` (valid, stride 1, 3x3) by Winograd's F(2x2, 3x3) algorithm."""
  n, h, w, cin = x.shape
  ho, wo = h - 2, w - 2
  th, tw = -(-ho // 2), -(-wo // 2)  # 2x2 output tiles, each from a 4x4 input tile
  x = jnp.pad(x, ((0, 0), (0, 2 * th + 2 - h), (0, 2 * tw + 2 - w), (0, 0)))
  rows = _input_transform([x[:, a:a + 2 * th:2] for a in range(4)])
  v = jnp.stack([c for r in rows for c in
                 _input_transform([r[:, :, b:b + 2 * tw:2] for b in range(4)])])
  u = jnp.einsum('pi,ijcd,qj->pqcd', _G, kernel, _G)
  m = jax.lax.dot_general(v.reshape(16, -1, cin), u.reshape(16, cin, -1),
                          (((2,), (1,)), ((0,), (0,))))
  m = m.reshape(4, 4, n, th, tw, -1)
  y = [_output_transform(r) for r in _output_transform(m)]
  y = jnp.stack([jnp.stack(r, axis=3) for r in y], axis=2)  # n, th, 2, tw, 2, cout
  return y.reshape(n, 2 * th, 2 * tw, -1)[:, :ho, :wo]
