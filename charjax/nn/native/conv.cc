// Valid, stride-1 NHWC x HWIO convolutions for XLA:CPU as XLA FFI handlers.
//
// Three algorithms, all without a patch matrix in memory:
// - Winograd F(4x4, 3x3) for 3x3 kernels whose output sizes are multiples of 4 (the input
//   gradient, computed on a padded copy, takes any size), else F(2x2, 3x3) for even ones:
//   per image, chunks of output tiles are transformed, multiplied as 36 (16)
//   register-tiled matrix products and transformed back (forward and input gradient), or
//   summed into the transformed kernel gradient (kernel gradient). The handlers' `winograd`
//   attribute is the largest tile to use: 4, 2, or 0 for the direct kernels only.
// - Register-tiled direct convolutions elsewhere: a tile is R output pixels of one row
//   times 16 output channels, accumulated in 2R vector registers (starting from the bias)
//   over every tap and input channel; the kernel gradient tiles R input channels times 16
//   output channels and sums over pixels.
// - Either one followed by 2x2 max-pooling in the same pass (the *Pool handlers), which
//   saves each window's first maximum; their gradients route the pooled gradient through
//   those positions one image at a time.
// The input gradient is the forward code run on the output gradient, zero-padded one image
// at a time, with the kernel flipped and transposed; the bias gradient is summed with the
// kernel gradient. Work is split over images between the calling thread and XLA's
// intra-op thread pool; reductions over images add in a fixed order (see ParallelFor).
// Written with AVX2/FMA intrinsics; charjax/native_conv.py compiles
// it with -march=native on x86-64 CPUs that have both.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <immintrin.h>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel.h"

namespace ffi = xla::ffi;

namespace {

using charjax_native::ParallelFor;
using charjax_native::Workers;

typedef __m256 v8;
constexpr int kLanes = 16;  // output channels per tile: two 8-float vectors
constexpr int kMaxRows = 6;

inline v8 load8(const float* p) { return _mm256_loadu_ps(p); }
inline void store8(float* p, v8 v) { _mm256_storeu_ps(p, v); }
inline v8 splat(const float* p) { return _mm256_broadcast_ss(p); }
inline v8 fma(v8 a, v8 b, v8 c) { return _mm256_fmadd_ps(a, b, c); }

// Register tiles: R rows (pixels, tiles or input channels) times 16 output channels,
// accumulated in 2R vector registers; R is a template argument so the tile stays in
// registers.

// acc[r] += x[r * cin + c] * w[c][0..16] for c < cin.
template <int R>
inline void AccumulateRows(v8 (&acc)[R][2], const float* x, int64_t cin, const float* w) {
  for (int64_t c = 0; c < cin; ++c) {
    const v8 w0 = load8(w + c * kLanes), w1 = load8(w + c * kLanes + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const v8 b = splat(x + r * cin + c);
      acc[r][0] = fma(b, w0, acc[r][0]);
      acc[r][1] = fma(b, w1, acc[r][1]);
    }
  }
}

template <int R>
inline void StoreRows(v8 (&acc)[R][2], float* y, int64_t stride) {
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    store8(y + r * stride, acc[r][0]);
    store8(y + r * stride + 8, acc[r][1]);
  }
}

// out[r][0..16] += sum over i < rows, t < count of
// x[i * x_row + t * cin + r] * dy[i * dy_row + t * cout + 0..16] (rows `cout` apart in
// out): a kernel gradient's tile, R input channels times 16 output channels.
template <int R>
inline void OuterProductTile(const float* x, int64_t x_row, int64_t cin, const float* dy,
                             int64_t dy_row, int64_t cout, int64_t rows, int64_t count,
                             float* out) {
  v8 acc[R][2];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) acc[r][0] = load8(out + r * cout), acc[r][1] = load8(out + r * cout + 8);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t t = 0; t < count; ++t) {
      const float* d = dy + i * dy_row + t * cout;
      const v8 d0 = load8(d), d1 = load8(d + 8);
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        const v8 b = splat(x + i * x_row + t * cin + r);
        acc[r][0] = fma(b, d0, acc[r][0]);
        acc[r][1] = fma(b, d1, acc[r][1]);
      }
    }
  StoreRows(acc, out, cout);
}

// Covers [0, count) with tiles of kMaxRows rows and one smaller remainder tile, calling
// tile(std::integral_constant<int, R>, start) for each.
template <typename F>
inline void ForEachTile(int64_t count, F&& tile) {
  int64_t start = 0;
  for (; start + kMaxRows <= count; start += kMaxRows)
    tile(std::integral_constant<int, kMaxRows>{}, start);
  switch (count - start) {
    case 5: tile(std::integral_constant<int, 5>{}, start); break;
    case 4: tile(std::integral_constant<int, 4>{}, start); break;
    case 3: tile(std::integral_constant<int, 3>{}, start); break;
    case 2: tile(std::integral_constant<int, 2>{}, start); break;
    case 1: tile(std::integral_constant<int, 1>{}, start); break;
    default: break;
  }
}

// Chunks of a reduction over images: a constant (not the thread count), so that the order
// of its additions is the same on every machine; more chunks than threads also balance
// the load.
constexpr int64_t kReductionChunks = 8;

int64_t Chunks(int64_t items) { return std::max<int64_t>(1, std::min(kReductionChunks, items)); }

// Packs an HWIO kernel [taps][cin][cout] into panels [cout / 16][taps][cin][16]. With
// `flip`, the panel is that of the input gradient's convolution: taps reversed, and the
// roles of cin and cout swapped (the kernel's [taps][a][b] is read as [taps][b][a]).
std::vector<float> PackKernel(const float* w, int64_t taps, int64_t cin, int64_t cout,
                              bool flip) {
  std::vector<float> packed(taps * cin * cout);
  for (int64_t cb = 0; cb < cout / kLanes; ++cb)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t c = 0; c < cin; ++c)
        for (int64_t k = 0; k < kLanes; ++k) {
          const int64_t o = cb * kLanes + k;
          const float v = flip ? w[((taps - 1 - t) * cout + o) * cin + c]
                               : w[(t * cin + c) * cout + o];
          packed[((cb * taps + t) * cin + c) * kLanes + k] = v;
        }
  return packed;
}

template <int R>
inline void ForwardTile(const float* x, int64_t row_stride, int64_t cin, int64_t kh,
                        int64_t kw, const float* panel, const float* bias, float* y,
                        int64_t cout) {
  v8 acc[R][2];
  const v8 b0 = load8(bias), b1 = load8(bias + 8);
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) acc[r][0] = b0, acc[r][1] = b1;
  for (int64_t di = 0; di < kh; ++di)
    for (int64_t dj = 0; dj < kw; ++dj)
      AccumulateRows(acc, x + di * row_stride + dj * cin, cin,
                     panel + (di * kw + dj) * cin * kLanes);
  StoreRows(acc, y, cout);
}

// One image: x [h][w][cin] -> y [h - kh + 1][w - kw + 1][cout] (+ bias [cout]), panels
// from PackKernel.
void ForwardImage(const float* x, int64_t h, int64_t w, int64_t cin, int64_t kh, int64_t kw,
                  const float* panels, const float* bias, int64_t cout, float* y) {
  const int64_t ho = h - kh + 1, wo = w - kw + 1, row_stride = w * cin;
  const int64_t panel_size = kh * kw * cin * kLanes;
  for (int64_t i = 0; i < ho; ++i) {
    const float* xr = x + i * row_stride;
    float* yr = y + i * wo * cout;
    ForEachTile(wo, [&](auto rows, int64_t j) {
      for (int64_t cb = 0; cb < cout / kLanes; ++cb)
        ForwardTile<rows>(xr + j * cin, row_stride, cin, kh, kw, panels + cb * panel_size,
                          bias + cb * kLanes, yr + j * cout + cb * kLanes, cout);
    });
  }
}

// 2x2 max-pooling of four vectors (a window's positions in row-major order): stores the
// maximum and the position of its first occurrence (0-3) for 8 channels.
inline void PoolStore(const v8 (&v)[4], float* out, int8_t* position) {
  v8 best = v[0], at = _mm256_setzero_ps();
  for (int q = 1; q < 4; ++q) {
    const v8 greater = _mm256_cmp_ps(v[q], best, _CMP_GT_OQ);
    best = _mm256_blendv_ps(best, v[q], greater);
    at = _mm256_blendv_ps(at, _mm256_set1_ps(static_cast<float>(q)), greater);
  }
  store8(out, best);
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_cvttps_epi32(at));
  for (int l = 0; l < 8; ++l) position[l] = static_cast<int8_t>(lanes[l]);
}

// Pools one image y [ho][wo][cout] (ho, wo even) into out [ho/2][wo/2][cout] and position.
void PoolImage(const float* y, int64_t ho, int64_t wo, int64_t cout, float* out,
               int8_t* position) {
  for (int64_t i = 0; i < ho / 2; ++i)
    for (int64_t j = 0; j < wo / 2; ++j)
      for (int64_t o = 0; o < cout; o += 8) {
        const float* w = y + (2 * i * wo + 2 * j) * cout + o;
        const v8 v[4] = {load8(w), load8(w + cout), load8(w + wo * cout),
                         load8(w + (wo + 1) * cout)};
        const int64_t at = (i * (wo / 2) + j) * cout + o;
        PoolStore(v, out + at, position + at);
      }
}

// The gradient of PoolImage: dy [ho/2][wo/2][cout] goes to each window's first maximum,
// zeros elsewhere, into dst (rows `row_stride` floats apart).
void UnpoolImage(const float* dy, const int8_t* position, int64_t ho, int64_t wo, int64_t cout,
                 float* dst, int64_t row_stride) {
  for (int64_t i = 0; i < ho / 2; ++i)
    for (int64_t j = 0; j < wo / 2; ++j)
      for (int64_t o = 0; o < cout; o += 8) {
        const int64_t at = (i * (wo / 2) + j) * cout + o;
        const v8 d = load8(dy + at);
        int64_t bytes;
        std::memcpy(&bytes, position + at, 8);
        const v8 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bytes)));
        float* w = dst + 2 * i * row_stride + 2 * j * cout + o;
        float* targets[4] = {w, w + cout, w + row_stride, w + row_stride + cout};
        for (int k = 0; k < 4; ++k)
          store8(targets[k], _mm256_and_ps(
              d, _mm256_cmp_ps(q, _mm256_set1_ps(static_cast<float>(k)), _CMP_EQ_OQ)));
      }
}

// Winograd F(m x m, 3x3), m = 2 or 4: each m x m output tile is A^T [(G g G^T) * (B^T d B)] A
// for the (m + 2) x (m + 2) input tile d under it, so the 9 m^2 multiply-adds per tile and
// channel pair of a 3x3 kernel become (m + 2)^2 (F(2x2): 16 instead of 36, 2.25x fewer;
// F(4x4): 36 instead of 144, 4x fewer), done as (m + 2)^2 matrix products (tiles x cin
// times cin x cout). Tiles are taken in chunks per image; a chunk's transformed input
// V [P][tiles][cin] and products M [P][tiles][cout] (P = (m + 2)^2 positions) stay in the
// core's L2. F(4x4)'s transforms have larger coefficients (up to 8 and 1/6), so it rounds a
// little more than F(2x2): still within float32 tolerances of a direct convolution.
template <int M>
struct Winograd;

template <>
struct Winograd<2> {
  static constexpr int kAlpha = 4;
  static constexpr int64_t kChunk = 30;  // tiles per chunk: five 6-row register tiles
  // The kernel transform G.
  static constexpr float G[4][3] = {{1, 0, 0}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0, 0, 1}};
  // B^T d for 4 values: B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
  static inline void Input(const v8 (&d)[4], v8 (&r)[4]) {
    r[0] = _mm256_sub_ps(d[0], d[2]);
    r[1] = _mm256_add_ps(d[1], d[2]);
    r[2] = _mm256_sub_ps(d[2], d[1]);
    r[3] = _mm256_sub_ps(d[1], d[3]);
  }
  // A^T m for 4 values: A^T = [1 1 1 0; 0 1 -1 -1].
  static inline void Output(const v8 (&m)[4], v8 (&y)[2]) {
    y[0] = _mm256_add_ps(_mm256_add_ps(m[0], m[1]), m[2]);
    y[1] = _mm256_sub_ps(_mm256_sub_ps(m[1], m[2]), m[3]);
  }
  // A y for 2 values (the kernel gradient's transform of the output gradient).
  static inline void Grad(const v8 (&y)[2], v8 (&r)[4]) {
    r[0] = y[0];
    r[1] = _mm256_add_ps(y[0], y[1]);
    r[2] = _mm256_sub_ps(y[0], y[1]);
    r[3] = _mm256_sub_ps(_mm256_setzero_ps(), y[1]);
  }
};

template <>
struct Winograd<4> {
  static constexpr int kAlpha = 6;
  static constexpr int64_t kChunk = 18;  // three 6-row register tiles
  // Interpolation points 0, 1, -1, 2, -2 and infinity.
  static constexpr float G[6][3] = {{1.f / 4, 0, 0},
                                    {-1.f / 6, -1.f / 6, -1.f / 6},
                                    {-1.f / 6, 1.f / 6, -1.f / 6},
                                    {1.f / 24, 1.f / 12, 1.f / 6},
                                    {1.f / 24, -1.f / 12, 1.f / 6},
                                    {0, 0, 1}};
  // B^T d: rows [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
  // 0 4 0 -5 0 1].
  static inline void Input(const v8 (&d)[6], v8 (&r)[6]) {
    const v8 four = _mm256_set1_ps(4.f), five = _mm256_set1_ps(5.f), two = _mm256_set1_ps(2.f);
    const v8 t0 = _mm256_fnmadd_ps(four, d[2], d[4]);  // d4 - 4 d2
    const v8 t1 = _mm256_fnmadd_ps(four, d[1], d[3]);  // d3 - 4 d1
    const v8 t2 = _mm256_sub_ps(d[4], d[2]);
    const v8 t3 = _mm256_sub_ps(d[3], d[1]);
    r[0] = _mm256_fnmadd_ps(five, d[2], fma(four, d[0], d[4]));
    r[1] = _mm256_add_ps(t0, t1);
    r[2] = _mm256_sub_ps(t0, t1);
    r[3] = fma(two, t3, t2);
    r[4] = _mm256_fnmadd_ps(two, t3, t2);
    r[5] = _mm256_fnmadd_ps(five, d[3], fma(four, d[1], d[5]));
  }
  // A^T m: rows [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
  static inline void Output(const v8 (&m)[6], v8 (&y)[4]) {
    const v8 a = _mm256_add_ps(m[1], m[2]), b = _mm256_sub_ps(m[1], m[2]);
    const v8 c = _mm256_add_ps(m[3], m[4]), d = _mm256_sub_ps(m[3], m[4]);
    y[0] = _mm256_add_ps(_mm256_add_ps(m[0], a), c);
    y[1] = fma(_mm256_set1_ps(2.f), d, b);
    y[2] = fma(_mm256_set1_ps(4.f), c, a);
    y[3] = _mm256_add_ps(fma(_mm256_set1_ps(8.f), d, b), m[5]);
  }
  // A y for 4 values.
  static inline void Grad(const v8 (&y)[4], v8 (&r)[6]) {
    const v8 even = _mm256_add_ps(y[0], y[2]), odd = _mm256_add_ps(y[1], y[3]);
    const v8 even4 = fma(_mm256_set1_ps(4.f), y[2], y[0]);
    const v8 odd8 = fma(_mm256_set1_ps(8.f), y[3], _mm256_add_ps(y[1], y[1]));
    r[0] = y[0];
    r[1] = _mm256_add_ps(even, odd);
    r[2] = _mm256_sub_ps(even, odd);
    r[3] = _mm256_add_ps(even4, odd8);
    r[4] = _mm256_sub_ps(even4, odd8);
    r[5] = y[3];
  }
};

// The Winograd tile (0: none, direct kernels) for a 3x3-or-not kernel with an ho x wo output
// and `channels` channels in the products' sum, given the requested one (0, 2 or 4).
// `ragged`: the caller pads the input so that partial tiles at the bottom and right may
// read past the output (the input gradient's padded copy); otherwise the tiles must
// divide the output.
int WinogradTile(int requested, int64_t kh, int64_t kw, int64_t ho, int64_t wo,
                 int64_t channels, bool ragged = false) {
  if (requested == 0 || kh != 3 || kw != 3 || channels % 8) return 0;
  if (requested == 4 && (ragged || (ho % 4 == 0 && wo % 4 == 0))) return 4;
  if (ragged || (ho % 2 == 0 && wo % 2 == 0)) return 2;
  return 0;
}

// Floats between positions in a chunk's V or M: the chunk plus one cache line, so that the
// P positions a tile's transform reads or writes at once do not all fall in the same few
// sets of the L1 cache (with chunk * channels floats apart, 36 positions of F(4x4) would
// compete for 4 sets, 32 lines).
constexpr int64_t kSkew = 16;
template <int M>
constexpr int64_t PositionStride(int64_t channels) {
  return Winograd<M>::kChunk * channels + kSkew;
}

// Floats of one worker's Winograd buffers: V [P][chunk][cin], then M [P][chunk][cout]
// (positions PositionStride apart).
template <int M>
constexpr int64_t WinogradScratch(int64_t cin, int64_t cout) {
  return Winograd<M>::kAlpha * Winograd<M>::kAlpha *
         (PositionStride<M>(cin) + PositionStride<M>(cout));
}

int64_t WinogradScratch(int tile, int64_t cin, int64_t cout) {
  return tile == 4 ? WinogradScratch<4>(cin, cout) : tile == 2 ? WinogradScratch<2>(cin, cout) : 0;
}

// U [P][cout / 16][cin][16] = G g G^T per channel pair of a 3x3 kernel [3][3][cin][cout]
// (`flip`: the input gradient's kernel, as in PackKernel).
template <int M>
std::vector<float> WinogradKernel(const float* w, int64_t cin, int64_t cout, bool flip) {
  constexpr int A = Winograd<M>::kAlpha;
  const auto& G = Winograd<M>::G;
  std::vector<float> u(A * A * cin * cout);
  for (int64_t c = 0; c < cin; ++c)
    for (int64_t o = 0; o < cout; ++o) {
      float g[3][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
          g[i][j] = flip ? w[(((2 - i) * 3 + 2 - j) * cout + o) * cin + c]
                         : w[((i * 3 + j) * cin + c) * cout + o];
      float gg[A][3];  // G g
      for (int a = 0; a < A; ++a)
        for (int j = 0; j < 3; ++j)
          gg[a][j] = G[a][0] * g[0][j] + G[a][1] * g[1][j] + G[a][2] * g[2][j];
      for (int a = 0; a < A; ++a)
        for (int b = 0; b < A; ++b) {
          const float v = gg[a][0] * G[b][0] + gg[a][1] * G[b][1] + gg[a][2] * G[b][2];
          u[(((a * A + b) * (cout / kLanes) + o / kLanes) * cin + c) * kLanes + o % kLanes] = v;
        }
    }
  return u;
}

std::vector<float> WinogradKernel(int tile, const float* w, int64_t cin, int64_t cout,
                                  bool flip) {
  return tile == 4 ? WinogradKernel<4>(w, cin, cout, flip) : WinogradKernel<2>(w, cin, cout, flip);
}

// V [P][chunk][cin] = B^T d B for tiles [t0, t0 + count) of an image x [.][w][cin],
// tiles_wide tiles per row.
template <int M>
void WinogradInput(const float* x, int64_t w, int64_t cin, int64_t tiles_wide, int64_t t0,
                   int64_t count, float* vs) {
  constexpr int A = Winograd<M>::kAlpha;
  const int64_t stride = PositionStride<M>(cin);
  for (int64_t t = 0; t < count; ++t) {
    const int64_t ti = (t0 + t) / tiles_wide, tj = (t0 + t) % tiles_wide;
    const float* d = x + (M * ti * w + M * tj) * cin;
    for (int64_t c = 0; c < cin; c += 8) {
      v8 rows[A][A];  // B^T applied along each row of the tile
      for (int r = 0; r < A; ++r) {
        v8 e[A];
        for (int s = 0; s < A; ++s) e[s] = load8(d + (r * w + s) * cin + c);
        Winograd<M>::Input(e, rows[r]);
      }
      float* vt = vs + t * cin + c;
      for (int s = 0; s < A; ++s) {
        v8 column[A], out[A];
        for (int r = 0; r < A; ++r) column[r] = rows[r][s];
        Winograd<M>::Input(column, out);
        for (int a = 0; a < A; ++a) store8(vt + (a * A + s) * stride, out[a]);
      }
    }
  }
}

// One image by Winograd: x [.][w][cin] -> y [ho][wo][cout] (+ bias [cout]), U from
// WinogradKernel; `scratch` holds WinogradScratch<M>(cin, cout) floats. The input must hold
// every tile's (M + 2) x (M + 2) pixels: ceil(ho / M) * M + 2 rows and as many columns;
// outputs of partial tiles past ho or wo are not written. With `position`, each 2x2 window
// of a tile is max-pooled as it is made (ho, wo multiples of M): y [ho/2][wo/2][cout] and
// position as PoolImage writes them.
template <int M>
void WinogradImage(const float* x, int64_t w, int64_t cin, const float* u, const float* bias,
                   int64_t cout, int64_t ho, int64_t wo, float* y, float* scratch,
                   int8_t* position = nullptr) {
  constexpr int A = Winograd<M>::kAlpha, P = A * A;
  constexpr int64_t chunk = Winograd<M>::kChunk;
  const int64_t tiles_wide = (wo + M - 1) / M, tiles = (ho + M - 1) / M * tiles_wide;
  const int64_t v_stride = PositionStride<M>(cin), m_stride = PositionStride<M>(cout);
  float* vs = scratch;
  float* ms = scratch + P * v_stride;
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
    const int64_t count = std::min(chunk, tiles - t0);
    WinogradInput<M>(x, w, cin, tiles_wide, t0, count, vs);
    // M[p] = V[p] U[p] for the P positions p.
    for (int64_t p = 0; p < P; ++p)
      for (int64_t cb = 0; cb < cout / kLanes; ++cb) {
        const float* up = u + (p * (cout / kLanes) + cb) * cin * kLanes;
        const float* vp = vs + p * v_stride;
        float* mp = ms + p * m_stride + cb * kLanes;
        ForEachTile(count, [&](auto rows, int64_t t) {
          v8 acc[rows][2];
          for (auto& a : acc) a[0] = a[1] = _mm256_setzero_ps();
          AccumulateRows(acc, vp + t * cin, cin, up);
          StoreRows(acc, mp + t * cout, cout);
        });
      }
    // Y = A^T M A + bias.
    for (int64_t t = 0; t < count; ++t) {
      const int64_t ti = (t0 + t) / tiles_wide, tj = (t0 + t) % tiles_wide;
      const float* mt = ms + t * cout;
      const int64_t stride = m_stride;
      for (int64_t o = 0; o < cout; o += 8) {
        v8 half[M][A];  // A^T applied along each column of the tile's M
        for (int s = 0; s < A; ++s) {
          v8 column[A], out[M];
          for (int a = 0; a < A; ++a) column[a] = load8(mt + (a * A + s) * stride + o);
          Winograd<M>::Output(column, out);
          for (int i = 0; i < M; ++i) half[i][s] = out[i];
        }
        const v8 b = load8(bias + o);
        v8 out[M][M];  // the tile's outputs
        for (int i = 0; i < M; ++i) {
          Winograd<M>::Output(half[i], out[i]);
          for (int j = 0; j < M; ++j) out[i][j] = _mm256_add_ps(out[i][j], b);
        }
        if (position) {
          for (int wi = 0; wi < M / 2; ++wi)
            for (int wj = 0; wj < M / 2; ++wj) {
              const v8 window[4] = {out[2 * wi][2 * wj], out[2 * wi][2 * wj + 1],
                                    out[2 * wi + 1][2 * wj], out[2 * wi + 1][2 * wj + 1]};
              const int64_t at =
                  ((ti * (M / 2) + wi) * (wo / 2) + tj * (M / 2) + wj) * cout + o;
              PoolStore(window, y + at, position + at);
            }
        } else {
          const int64_t rows = std::min<int64_t>(M, ho - M * ti);
          const int64_t cols = std::min<int64_t>(M, wo - M * tj);
          float* yt = y + (M * ti * wo + M * tj) * cout + o;
          for (int i = 0; i < rows; ++i)
            for (int j = 0; j < cols; ++j) store8(yt + (i * wo + j) * cout, out[i][j]);
        }
      }
    }
  }
}

void WinogradImage(int tile, const float* x, int64_t w, int64_t cin, const float* u,
                   const float* bias, int64_t cout, int64_t ho, int64_t wo, float* y,
                   float* scratch, int8_t* position = nullptr) {
  if (tile == 4)
    WinogradImage<4>(x, w, cin, u, bias, cout, ho, wo, y, scratch, position);
  else
    WinogradImage<2>(x, w, cin, u, bias, cout, ho, wo, y, scratch, position);
}

// The kernel gradient by Winograd: with Y = A^T [U * V] A and U = G g G^T, dU = sum over
// tiles of V * (A dY A^T) and dg = G^T dU G. du [P][cin][cout] accumulates one image's dU
// (the final G^T . G is WinogradKernelGradient's). x [h][w][cin], dy [ho][wo][cout] with
// ho and wo multiples of M.
template <int M>
void WinogradGradImage(const float* x, int64_t w, int64_t cin, const float* dy, int64_t cout,
                       int64_t ho, int64_t wo, float* du, float* scratch) {
  constexpr int A = Winograd<M>::kAlpha, P = A * A;
  constexpr int64_t chunk = Winograd<M>::kChunk;
  const int64_t tiles_wide = wo / M, tiles = ho / M * tiles_wide;
  const int64_t v_stride = PositionStride<M>(cin), m_stride = PositionStride<M>(cout);
  float* vs = scratch;
  float* ms = scratch + P * v_stride;
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
    const int64_t count = std::min(chunk, tiles - t0);
    WinogradInput<M>(x, w, cin, tiles_wide, t0, count, vs);
    // dM = A dY A^T.
    for (int64_t t = 0; t < count; ++t) {
      const int64_t ti = (t0 + t) / tiles_wide, tj = (t0 + t) % tiles_wide;
      const float* d = dy + (M * ti * wo + M * tj) * cout;
      float* mt = ms + t * cout;
      const int64_t stride = m_stride;
      for (int64_t o = 0; o < cout; o += 8) {
        v8 rows[A][M];  // A applied along each column of the tile
        for (int j = 0; j < M; ++j) {
          v8 column[M], out[A];
          for (int i = 0; i < M; ++i) column[i] = load8(d + (i * wo + j) * cout + o);
          Winograd<M>::Grad(column, out);
          for (int a = 0; a < A; ++a) rows[a][j] = out[a];
        }
        for (int a = 0; a < A; ++a) {
          v8 out[A];
          Winograd<M>::Grad(rows[a], out);
          for (int b = 0; b < A; ++b) store8(mt + (a * A + b) * stride + o, out[b]);
        }
      }
    }
    for (int64_t p = 0; p < P; ++p)
      for (int64_t cb = 0; cb < cout / kLanes; ++cb) {
        const float* vp = vs + p * v_stride;
        const float* mp = ms + p * m_stride + cb * kLanes;
        float* dup = du + p * cin * cout + cb * kLanes;
        ForEachTile(cin, [&](auto rows, int64_t c) {
          OuterProductTile<rows>(vp + c, 0, cin, mp, 0, cout, 1, count, dup + c * cout);
        });
      }
  }
}

void WinogradGradImage(int tile, const float* x, int64_t w, int64_t cin, const float* dy,
                       int64_t cout, int64_t ho, int64_t wo, float* du, float* scratch) {
  if (tile == 4)
    WinogradGradImage<4>(x, w, cin, dy, cout, ho, wo, du, scratch);
  else
    WinogradGradImage<2>(x, w, cin, dy, cout, ho, wo, du, scratch);
}

// dw [3][3][cin][cout] = G^T dU G for du [P][cin][cout], summed position by position
// (in a fixed order) over contiguous rows, which vectorise.
template <int M>
void WinogradKernelGradient(const float* du, int64_t cin, int64_t cout, float* dw) {
  constexpr int A = Winograd<M>::kAlpha;
  const auto& G = Winograd<M>::G;
  const int64_t size = cin * cout;
  std::fill(dw, dw + 9 * size, 0.f);
  for (int a = 0; a < A; ++a)
    for (int b = 0; b < A; ++b)
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
          const float coefficient = G[a][i] * G[b][j];
          if (coefficient == 0.f) continue;
          const float* src = du + (a * A + b) * size;
          float* dst = dw + (i * 3 + j) * size;
          for (int64_t k = 0; k < size; ++k) dst[k] += coefficient * src[k];
        }
}

void WinogradKernelGradient(int tile, const float* du, int64_t cin, int64_t cout, float* dw) {
  if (tile == 4)
    WinogradKernelGradient<4>(du, cin, cout, dw);
  else
    WinogradKernelGradient<2>(du, cin, cout, dw);
}

constexpr int64_t kGradRows = 2;  // output rows per sweep: keeps x and dy rows in L1

// Adds one image's kernel gradient to dw [kh][kw][cin][cout].
void KernelGradImage(const float* x, int64_t h, int64_t w, int64_t cin, const float* dy,
                     int64_t kh, int64_t kw, int64_t cout, float* dw) {
  const int64_t ho = h - kh + 1, wo = w - kw + 1, row_stride = w * cin;
  for (int64_t i0 = 0; i0 < ho; i0 += kGradRows) {
    const int64_t rows = std::min(kGradRows, ho - i0);
    const float* dyr = dy + i0 * wo * cout;
    for (int64_t di = 0; di < kh; ++di)
      for (int64_t dj = 0; dj < kw; ++dj) {
        const float* xr = x + (i0 + di) * row_stride + dj * cin;
        float* dwt = dw + (di * kw + dj) * cin * cout;
        for (int64_t cb = 0; cb < cout / kLanes; ++cb)
          ForEachTile(cin, [&](auto tile, int64_t c) {
            OuterProductTile<tile>(xr + c, row_stride, cin, dyr + cb * kLanes, wo * cout, cout,
                                   rows, wo, dwt + c * cout + cb * kLanes);
          });
      }
  }
}

// The fused epilogue of the *Act handlers: y = relu(y), then, with `dropout`, inverted
// dropout whose mask is charjax.nn.dropout.keep_mask's for the 'hash' generator, element
// for element: element e of the whole output (all images, row-major) is lane e % (32 / bits)
// (little-endian) of word e / (32 / bits), word i = F(F(i ^ k0) + k1) with F MurmurHash3's
// 32-bit finalizer, and is kept (and divided by keep_prob) when that lane is below
// `threshold`. So the fused layer draws exactly the masks of the unfused one.
struct Activation {
  bool dropout = false;
  uint32_t k0 = 0, k1 = 0;
  int32_t threshold = 0;
  int32_t bits = 8;
  float keep_prob = 1.f;
  const int32_t* image_index = nullptr;  // each image's place in the whole batch
};

inline __m256i Finalize(__m256i h) {
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
  h = _mm256_mullo_epi32(h, _mm256_set1_epi32(static_cast<int>(0x85EBCA6Bu)));
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 13));
  h = _mm256_mullo_epi32(h, _mm256_set1_epi32(static_cast<int>(0xC2B2AE35u)));
  return _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
}

// Applies `a` in place to y [size] (size a multiple of 8), the output elements
// [first, first + size) of the whole batch (first a multiple of 32 / bits).
void ApplyActivation(float* y, int64_t size, int64_t first, const Activation& a) {
  const v8 zero = _mm256_setzero_ps();
  if (!a.dropout) {
    // max(0, y): a NaN in y stays NaN, as in jnp.maximum.
    for (int64_t i = 0; i < size; i += 8) store8(y + i, _mm256_max_ps(zero, load8(y + i)));
    return;
  }
  const int64_t per_word = 32 / a.bits, block = 8 * per_word;
  const __m256i k0 = _mm256_set1_epi32(static_cast<int>(a.k0));
  const __m256i k1 = _mm256_set1_epi32(static_cast<int>(a.k1));
  const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i threshold = _mm256_set1_epi32(a.threshold);
  const v8 keep_prob = _mm256_set1_ps(a.keep_prob);
  alignas(32) uint32_t words[8];
  for (int64_t i = 0; i < size; i += block) {
    const uint32_t word = static_cast<uint32_t>((first + i) / per_word);
    const __m256i index = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(word)), step);
    _mm256_store_si256(reinterpret_cast<__m256i*>(words),
                       Finalize(_mm256_add_epi32(Finalize(_mm256_xor_si256(index, k0)), k1)));
    const auto* bytes = reinterpret_cast<const unsigned char*>(words);
    const int64_t count = std::min(block, size - i);
    for (int64_t j = 0; j < count; j += 8) {
      // The 8 elements' lanes: 8 bytes, or 8 16-bit halves, of the words.
      const __m256i lanes =
          a.bits == 8
              ? _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes + j)))
              : _mm256_cvtepu16_epi32(
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 2 * j)));
      const v8 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(threshold, lanes));
      const v8 v = _mm256_div_ps(_mm256_max_ps(zero, load8(y + i + j)), keep_prob);
      store8(y + i + j, _mm256_and_ps(v, keep));
    }
  }
}

// The gradient of relu-then-dropout at its input, from its output: dy = g / keep_prob where
// y > 0 (the element was kept and its input positive), else 0.
void ActivationGrad(const float* g, const float* y, int64_t size, float keep_prob, float* out) {
  const v8 zero = _mm256_setzero_ps(), kp = _mm256_set1_ps(keep_prob);
  for (int64_t i = 0; i < size; i += 8) {
    const v8 kept = _mm256_cmp_ps(load8(y + i), zero, _CMP_GT_OQ);
    store8(out + i, _mm256_and_ps(_mm256_div_ps(load8(g + i), kp), kept));
  }
}

// y = conv(x, w) + bias: x [n][h][w][cin], w [kh][kw][cin][cout], bias [cout] ->
// y [n][h-kh+1][w-kw+1][cout]; with `positions`, y is max-pooled 2x2 as it is made,
// y [n][ho/2][wo/2][cout] and positions (the first maximum's place in each window, 0-3).
ffi::Error ForwardImpl(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> bias, float* ys, int8_t* positions,
                       int32_t winograd_tile, const Activation* activation = nullptr) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  const int64_t n = xd[0], h = xd[1], wid = xd[2], cin = xd[3];
  const int64_t kh = wd[0], kw = wd[1], cout = wd[3];
  if (cout % kLanes) return ffi::Error::InvalidArgument("charjax conv: cout % 16 != 0");
  const int64_t ho = h - kh + 1, wo = wid - kw + 1;
  if (positions && (ho % 2 || wo % 2))
    return ffi::Error::InvalidArgument("charjax conv: pooling needs an even output size");
  const int64_t ysize = positions ? ho / 2 * (wo / 2) * cout : ho * wo * cout;
  const int tile = WinogradTile(winograd_tile, kh, kw, ho, wo, cin);
  const std::vector<float> panels = tile ? WinogradKernel(tile, w.typed_data(), cin, cout, false)
                                         : PackKernel(w.typed_data(), kh * kw, cin, cout, false);
  const int64_t threads = Workers(pool, n);
  // Per worker: the Winograd chunk buffers, or the unpooled output of a direct pass.
  const int64_t scratch_size =
      tile ? WinogradScratch(tile, cin, cout) : (positions ? ho * wo * cout : 0);
  std::vector<std::vector<float>> scratch(threads, std::vector<float>(scratch_size));
  const float* xs = x.typed_data();
  ParallelFor(pool, n, threads, threads, [&](int64_t worker, int64_t, int64_t b) {
    const float* xb = xs + b * h * wid * cin;
    float* yb = ys + b * ysize;
    int8_t* pb = positions ? positions + b * ysize : nullptr;
    float* work = scratch[worker].data();
    if (tile) {
      WinogradImage(tile, xb, wid, cin, panels.data(), bias.typed_data(), cout, ho, wo, yb, work,
                    pb);
    } else if (pb) {
      ForwardImage(xb, h, wid, cin, kh, kw, panels.data(), bias.typed_data(), cout, work);
      PoolImage(work, ho, wo, cout, yb, pb);
    } else {
      ForwardImage(xb, h, wid, cin, kh, kw, panels.data(), bias.typed_data(), cout, yb);
    }
    if (activation)  // while the image's output is in cache
      ApplyActivation(yb, ysize, int64_t{activation->image_index[b]} * ysize, *activation);
  });
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                   int32_t winograd_tile) {
  return ForwardImpl(pool, x, w, bias, y->typed_data(), nullptr, winograd_tile);
}

ffi::Error ForwardPool(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                       ffi::ResultBuffer<ffi::S8> positions, int32_t winograd_tile) {
  return ForwardImpl(pool, x, w, bias, y->typed_data(), positions->typed_data(), winograd_tile);
}

// dx = d conv(x, w) / dx applied to dy [n][ho][wo][cout] (with `positions`: the pooled
// gradient [n][ho/2][wo/2][cout], routed to each window's first maximum), w
// [kh][kw][cin][cout] -> dx [n][ho+kh-1][wo+kw-1][cin]. Each image of dy is zero-padded
// into scratch, then convolved with the flipped, transposed kernel; for Winograd the padding
// reaches the next whole tile at the bottom and right, so any size takes the requested tile.
ffi::Error InputGradImpl(ffi::ThreadPool& pool, const float* dys, const int8_t* positions,
                         int64_t n, int64_t ho, int64_t wo, int64_t cout,
                         ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32>& dx,
                         int32_t winograd_tile, const float* activated = nullptr,
                         float keep_prob = 1.f) {
  const auto wd = w.dimensions();
  const int64_t kh = wd[0], kw = wd[1], cin = wd[2];
  if (cin % kLanes) return ffi::Error::InvalidArgument("charjax conv: cin % 16 != 0");
  const int64_t h = ho + kh - 1, wid = wo + kw - 1;
  const int64_t dysize = positions ? ho / 2 * (wo / 2) * cout : ho * wo * cout;
  const int tile = WinogradTile(winograd_tile, kh, kw, h, wid, cout, /*ragged=*/true);
  const auto whole_tiles = [&](int64_t size) { return (size + tile - 1) / tile * tile + 2; };
  const int64_t hp = tile ? whole_tiles(h) : ho + 2 * (kh - 1);
  const int64_t wp = tile ? whole_tiles(wid) : wo + 2 * (kw - 1);
  const std::vector<float> panels = tile ? WinogradKernel(tile, w.typed_data(), cout, cin, true)
                                         : PackKernel(w.typed_data(), kh * kw, cout, cin, true);
  const int64_t threads = Workers(pool, n);
  // Per worker: the padded image, the Winograd chunk buffers, then (with `activated`) the
  // gradient at the activation's input.
  const int64_t padded = hp * wp * cout, work = WinogradScratch(tile, cout, cin);
  std::vector<std::vector<float>> scratch(
      threads, std::vector<float>(padded + work + (activated ? dysize : 0)));
  const std::vector<float> zeros(cin, 0.f);
  float* dxs = dx->typed_data();
  ParallelFor(pool, n, threads, threads, [&](int64_t worker, int64_t, int64_t b) {
    float* pad = scratch[worker].data();
    float* interior = pad + ((kh - 1) * wp + kw - 1) * cout;
    const float* src = dys + b * dysize;
    if (activated) {
      float* dpre = pad + padded + work;
      ActivationGrad(src, activated + b * dysize, dysize, keep_prob, dpre);
      src = dpre;
    }
    if (positions)
      UnpoolImage(src, positions + b * dysize, ho, wo, cout, interior, wp * cout);
    else
      for (int64_t i = 0; i < ho; ++i)
        std::memcpy(interior + i * wp * cout, src + i * wo * cout, wo * cout * sizeof(float));
    if (tile)
      WinogradImage(tile, pad, wp, cout, panels.data(), zeros.data(), cin, h, wid,
                    dxs + b * h * wid * cin, pad + padded);
    else
      ForwardImage(pad, hp, wp, cout, kh, kw, panels.data(), zeros.data(), cin,
                   dxs + b * h * wid * cin);
  });
  return ffi::Error::Success();
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> dx, int32_t winograd_tile) {
  const auto dd = dy.dimensions();
  return InputGradImpl(pool, dy.typed_data(), nullptr, dd[0], dd[1], dd[2], dd[3], w, dx,
                       winograd_tile);
}

ffi::Error InputGradPool(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                         ffi::Buffer<ffi::S8> positions, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, int32_t winograd_tile) {
  const auto dd = dy.dimensions();
  return InputGradImpl(pool, dy.typed_data(), positions.typed_data(), dd[0], 2 * dd[1],
                       2 * dd[2], dd[3], w, dx, winograd_tile);
}

// (dw, dbias) = the gradients of conv(x, w) + bias applied to dy (with `positions`: the
// pooled gradient, as in InputGradImpl): x [n][h][w][cin], dy [n][ho][wo][cout] ->
// dw [kh][kw][cin][cout], dbias [cout]; the kernel's spatial size comes from dw's shape.
ffi::Error KernelGradImpl(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32> x, const float* dys,
                          const int8_t* positions, ffi::ResultBuffer<ffi::F32>& dw,
                          ffi::ResultBuffer<ffi::F32>& dbias, int32_t winograd_tile,
                          const float* activated = nullptr, float keep_prob = 1.f) {
  const auto xd = x.dimensions(), wd = dw->dimensions();
  const int64_t n = xd[0], h = xd[1], wid = xd[2], cin = xd[3];
  const int64_t kh = wd[0], kw = wd[1], cout = wd[3];
  if (cout % kLanes) return ffi::Error::InvalidArgument("charjax conv: cout % 16 != 0");
  const int64_t ho = h - kh + 1, wo = wid - kw + 1, ysize = ho * wo * cout;
  const int64_t dysize = positions ? ho / 2 * (wo / 2) * cout : ysize;
  const int tile = WinogradTile(winograd_tile, kh, kw, ho, wo, cin);
  // dU ((tile + 2)^2 positions) by Winograd, else the kernel gradient itself.
  const int64_t wsize = (tile ? (tile + 2) * (tile + 2) : kh * kw) * cin * cout;
  const int64_t work = WinogradScratch(tile, cin, cout);
  const int64_t threads = Workers(pool, n), chunks = Chunks(n);
  // Per chunk: the kernel gradient (or dU) and the bias gradient of its images; per worker:
  // the Winograd buffers and the unpooled output gradient.
  const int64_t sums = wsize + cout;
  std::vector<std::vector<float>> partial(chunks, std::vector<float>(sums, 0.f));
  std::vector<std::vector<float>> scratch(
      threads, std::vector<float>(std::max<int64_t>(
          1, work + (positions || activated ? ysize : 0) + (positions && activated ? dysize : 0))));
  const float* xs = x.typed_data();
  ParallelFor(pool, n, threads, chunks, [&](int64_t worker, int64_t chunk, int64_t b) {
    float* part = partial[chunk].data();
    float* own = scratch[worker].data();
    const float* dyb = dys + b * dysize;
    if (activated) {  // the gradient at the activation's input (pooled, with positions)
      float* dpre = own + work + (positions ? ysize : 0);
      ActivationGrad(dyb, activated + b * dysize, dysize, keep_prob, dpre);
      dyb = dpre;
    }
    if (positions) {
      float* unpooled = own + work;
      UnpoolImage(dyb, positions + b * dysize, ho, wo, cout, unpooled, wo * cout);
      dyb = unpooled;
    }
    if (tile)
      WinogradGradImage(tile, xs + b * h * wid * cin, wid, cin, dyb, cout, ho, wo, part, own);
    else
      KernelGradImage(xs + b * h * wid * cin, h, wid, cin, dyb, kh, kw, cout, part);
    float* db = part + wsize;
    for (int64_t p = 0; p < ysize; p += cout)
      for (int64_t o = 0; o < cout; o += 8)
        store8(db + o, _mm256_add_ps(load8(db + o), load8(dyb + p + o)));
  });
  for (int64_t c = 1; c < chunks; ++c)  // in chunk order: the same sum on every run
    for (int64_t k = 0; k < sums; ++k) partial[0][k] += partial[c][k];
  if (tile)
    WinogradKernelGradient(tile, partial[0].data(), cin, cout, dw->typed_data());
  else
    std::memcpy(dw->typed_data(), partial[0].data(), wsize * sizeof(float));
  std::memcpy(dbias->typed_data(), partial[0].data() + wsize, cout * sizeof(float));
  return ffi::Error::Success();
}

// The handlers' activation: the dropout mask drawn from key [k0, k1]; image_index [n] gives
// each image's place in the whole batch (its elements' counter); threshold 0 for ReLU alone.
Activation MakeActivation(ffi::Buffer<ffi::U32> key, ffi::Buffer<ffi::S32> image_index,
                          int32_t threshold, int32_t bits, float keep_prob) {
  Activation activation;
  activation.dropout = threshold > 0;
  activation.k0 = key.typed_data()[0];
  activation.k1 = key.typed_data()[1];
  activation.threshold = threshold;
  activation.bits = bits;
  activation.keep_prob = keep_prob;
  activation.image_index = image_index.typed_data();
  return activation;
}

// y = dropout(relu(conv(x, w) + bias)) (see Activation and MakeActivation).
ffi::Error ActForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                      ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::U32> key,
                      ffi::Buffer<ffi::S32> image_index, ffi::ResultBuffer<ffi::F32> y,
                      int32_t winograd_tile, int32_t threshold, int32_t bits, float keep_prob) {
  if (bits != 8 && bits != 16) return ffi::Error::InvalidArgument("charjax conv: bits not 8 or 16");
  const Activation activation = MakeActivation(key, image_index, threshold, bits, keep_prob);
  return ForwardImpl(pool, x, w, bias, y->typed_data(), nullptr, winograd_tile, &activation);
}

// ActForward with 2x2 max-pooling before the activation (as ForwardPool).
ffi::Error ActPoolForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                          ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::U32> key,
                          ffi::Buffer<ffi::S32> image_index, ffi::ResultBuffer<ffi::F32> y,
                          ffi::ResultBuffer<ffi::S8> positions, int32_t winograd_tile,
                          int32_t threshold, int32_t bits, float keep_prob) {
  if (bits != 8 && bits != 16) return ffi::Error::InvalidArgument("charjax conv: bits not 8 or 16");
  const Activation activation = MakeActivation(key, image_index, threshold, bits, keep_prob);
  return ForwardImpl(pool, x, w, bias, y->typed_data(), positions->typed_data(), winograd_tile,
                     &activation);
}

// The input gradient of ActForward (ActPoolForward) from its output gradient g and output y.
ffi::Error ActInputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> y,
                        ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                        int32_t winograd_tile, float keep_prob) {
  const auto dd = g.dimensions();
  return InputGradImpl(pool, g.typed_data(), nullptr, dd[0], dd[1], dd[2], dd[3], w, dx,
                       winograd_tile, y.typed_data(), keep_prob);
}

ffi::Error ActPoolInputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                            ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::S8> positions,
                            ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                            int32_t winograd_tile, float keep_prob) {
  const auto dd = g.dimensions();
  return InputGradImpl(pool, g.typed_data(), positions.typed_data(), dd[0], 2 * dd[1],
                       2 * dd[2], dd[3], w, dx, winograd_tile, y.typed_data(), keep_prob);
}

ffi::Error ActPoolKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                             ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> y,
                             ffi::Buffer<ffi::S8> positions, ffi::ResultBuffer<ffi::F32> dw,
                             ffi::ResultBuffer<ffi::F32> dbias, int32_t winograd_tile,
                             float keep_prob) {
  return KernelGradImpl(pool, x, g.typed_data(), positions.typed_data(), dw, dbias,
                        winograd_tile, y.typed_data(), keep_prob);
}

// The kernel and bias gradients of ActForward from its output gradient g and its output y.
ffi::Error ActKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                         ffi::Buffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> dw,
                         ffi::ResultBuffer<ffi::F32> dbias, int32_t winograd_tile,
                         float keep_prob) {
  return KernelGradImpl(pool, x, g.typed_data(), nullptr, dw, dbias, winograd_tile,
                        y.typed_data(), keep_prob);
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> dbias,
                      int32_t winograd_tile) {
  return KernelGradImpl(pool, x, dy.typed_data(), nullptr, dw, dbias, winograd_tile);
}

ffi::Error KernelGradPool(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::S8> positions,
                          ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> dbias,
                          int32_t winograd_tile) {
  return KernelGradImpl(pool, x, dy.typed_data(), positions.typed_data(), dw, dbias,
                        winograd_tile);
}

}  // namespace

using F32 = ffi::Buffer<ffi::F32>;
using S8 = ffi::Buffer<ffi::S8>;
using S32 = ffi::Buffer<ffi::S32>;
using U32 = ffi::Buffer<ffi::U32>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvActForward, ActForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<U32>().Arg<S32>()
                                  .Ret<F32>()
                                  .Attr<int32_t>("winograd")
                                  .Attr<int32_t>("threshold")
                                  .Attr<int32_t>("bits")
                                  .Attr<float>("keep_prob"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvActPoolForward, ActPoolForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<U32>().Arg<S32>()
                                  .Ret<F32>().Ret<S8>()
                                  .Attr<int32_t>("winograd")
                                  .Attr<int32_t>("threshold")
                                  .Attr<int32_t>("bits")
                                  .Attr<float>("keep_prob"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvActInputGrad, ActInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<int32_t>("winograd")
                                  .Attr<float>("keep_prob"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvActPoolInputGrad, ActPoolInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<S8>().Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<int32_t>("winograd")
                                  .Attr<float>("keep_prob"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvActPoolKernelGrad, ActPoolKernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<S8>()
                                  .Ret<F32>().Ret<F32>()
                                  .Attr<int32_t>("winograd")
                                  .Attr<float>("keep_prob"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvActKernelGrad, ActKernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>()
                                  .Attr<int32_t>("winograd")
                                  .Attr<float>("keep_prob"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<int32_t>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvInputGrad, InputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<int32_t>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>()
                                  .Attr<int32_t>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvPoolForward, ForwardPool,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<S8>()
                                  .Attr<int32_t>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvPoolInputGrad, InputGradPool,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<S8>().Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<int32_t>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvPoolKernelGrad, KernelGradPool,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<S8>()
                                  .Ret<F32>().Ret<F32>()
                                  .Attr<int32_t>("winograd"));
