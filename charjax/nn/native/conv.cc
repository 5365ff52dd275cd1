// Valid, stride-1 NHWC x HWIO convolutions for XLA:CPU as XLA FFI handlers.
//
// Three algorithms, all without a patch matrix in memory:
// - Winograd F(2x2, 3x3) for 3x3 kernels with even output sizes: per image, chunks of
//   2x2 output tiles are transformed, multiplied as 16 register-tiled matrix products and
//   transformed back (forward and input gradient), or summed into the transformed kernel
//   gradient (kernel gradient).
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

namespace ffi = xla::ffi;

namespace {

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

// Runs body(worker, chunk, item) for item in [0, count) on the caller and up to
// threads - 1 pool tasks. The items are cut into `chunks` fixed, contiguous ranges (chunk c
// holds items [c * count / chunks, (c + 1) * count / chunks)), and each chunk runs in item
// order on whichever thread claims it. So a reduction kept per chunk and summed over the
// chunks in order afterwards does the same additions in the same order however the threads
// are scheduled, and however many there are: the results are bitwise reproducible.
// `worker` (< threads) indexes per-thread scratch. The caller finishes the work alone if
// the pool never gets to it; it returns once every item is done.
struct ParallelState {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
};

void ParallelFor(ffi::ThreadPool& pool, int64_t count, int64_t threads, int64_t chunks,
                 const std::function<void(int64_t worker, int64_t chunk, int64_t item)>& body) {
  auto state = std::make_shared<ParallelState>();
  auto work = [state, count, chunks, &body](int64_t worker) {
    int64_t finished = 0;
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      const int64_t end = (c + 1) * count / chunks;
      for (int64_t item = c * count / chunks; item < end; ++item, ++finished)
        body(worker, c, item);
    }
    if (finished && state->done.fetch_add(finished) + finished == count) {
      std::lock_guard<std::mutex> lock(state->mu);
      state->cv.notify_all();
    }
  };
  // Pool tasks hold `state` alive; `body` is only touched while chunks remain, which the
  // caller outlives by waiting below.
  for (int64_t w = 1; w < threads; ++w) pool.Schedule([work, w] { work(w); });
  work(0);
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == count; });
}

int64_t Workers(ffi::ThreadPool& pool, int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), items));
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

// Winograd F(2x2, 3x3): each 2x2 output tile is A^T [(G g G^T) * (B^T d B)] A for the 4x4
// input tile d under it, so the 36 multiply-adds per tile and channel pair of a 3x3 kernel
// become 16, done as 16 matrix products (tiles x cin times cin x cout). Tiles are taken in
// chunks per image; a chunk's transformed input V [16][tiles][cin] and products
// M [16][tiles][cout] stay in the core's L2.
constexpr int64_t kWinogradChunk = 30;  // tiles per chunk: five 6-row register tiles

// The kernel transform of F(2x2, 3x3).
constexpr float G[4][3] = {{1, 0, 0}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0, 0, 1}};

bool WinogradApplies(int64_t kh, int64_t kw, int64_t ho, int64_t wo, int64_t cin) {
  return kh == 3 && kw == 3 && ho % 2 == 0 && wo % 2 == 0 && cin % 8 == 0;
}

// Floats of one worker's Winograd buffers: V [16][chunk][cin], then M [16][chunk][cout].
constexpr int64_t WinogradScratch(int64_t cin, int64_t cout) {
  return 16 * kWinogradChunk * (cin + cout);
}

// U [16][cout / 16][cin][16] = G g G^T per channel pair of a 3x3 kernel [3][3][cin][cout]
// (`flip`: the input gradient's kernel, as in PackKernel).
std::vector<float> WinogradKernel(const float* w, int64_t cin, int64_t cout, bool flip) {
  std::vector<float> u(16 * cin * cout);
  for (int64_t c = 0; c < cin; ++c)
    for (int64_t o = 0; o < cout; ++o) {
      float g[3][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
          g[i][j] = flip ? w[(((2 - i) * 3 + 2 - j) * cout + o) * cin + c]
                         : w[((i * 3 + j) * cin + c) * cout + o];
      float gg[4][3];  // G g
      for (int a = 0; a < 4; ++a)
        for (int j = 0; j < 3; ++j)
          gg[a][j] = G[a][0] * g[0][j] + G[a][1] * g[1][j] + G[a][2] * g[2][j];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
          const float v = gg[a][0] * G[b][0] + gg[a][1] * G[b][1] + gg[a][2] * G[b][2];
          u[(((a * 4 + b) * (cout / kLanes) + o / kLanes) * cin + c) * kLanes + o % kLanes] = v;
        }
    }
  return u;
}

// V [16][kWinogradChunk][cin] = B^T d B for tiles [t0, t0 + count) of an image x [h][w][cin],
// tiles_wide tiles per row; B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
void WinogradInput(const float* x, int64_t w, int64_t cin, int64_t tiles_wide, int64_t t0,
                   int64_t count, float* vs) {
  for (int64_t t = 0; t < count; ++t) {
    const int64_t ti = (t0 + t) / tiles_wide, tj = (t0 + t) % tiles_wide;
    const float* d = x + (2 * ti * w + 2 * tj) * cin;
    for (int64_t c = 0; c < cin; c += 8) {
      v8 rows[4][4];
      for (int r = 0; r < 4; ++r) {
        v8 e[4];
        for (int s = 0; s < 4; ++s) e[s] = load8(d + (r * w + s) * cin + c);
        rows[r][0] = _mm256_sub_ps(e[0], e[2]);
        rows[r][1] = _mm256_add_ps(e[1], e[2]);
        rows[r][2] = _mm256_sub_ps(e[2], e[1]);
        rows[r][3] = _mm256_sub_ps(e[1], e[3]);
      }
      float* vt = vs + t * cin + c;
      const int64_t stride = kWinogradChunk * cin;
      for (int s = 0; s < 4; ++s) {
        store8(vt + (0 * 4 + s) * stride, _mm256_sub_ps(rows[0][s], rows[2][s]));
        store8(vt + (1 * 4 + s) * stride, _mm256_add_ps(rows[1][s], rows[2][s]));
        store8(vt + (2 * 4 + s) * stride, _mm256_sub_ps(rows[2][s], rows[1][s]));
        store8(vt + (3 * 4 + s) * stride, _mm256_sub_ps(rows[1][s], rows[3][s]));
      }
    }
  }
}

// One image by Winograd, same contract as ForwardImage; `scratch` holds
// WinogradScratch(cin, cout) floats. With `position`, each 2x2 output tile is
// max-pooled as it is made: y [ho/2][wo/2][cout] and position as PoolImage writes them.
void WinogradImage(const float* x, int64_t h, int64_t w, int64_t cin, const float* u,
                   const float* bias, int64_t cout, float* y, float* scratch,
                   int8_t* position = nullptr) {
  const int64_t ho = h - 2, wo = w - 2, tiles_wide = wo / 2, tiles = ho / 2 * tiles_wide;
  float* vs = scratch;
  float* ms = scratch + 16 * kWinogradChunk * cin;
  for (int64_t t0 = 0; t0 < tiles; t0 += kWinogradChunk) {
    const int64_t count = std::min(kWinogradChunk, tiles - t0);
    WinogradInput(x, w, cin, tiles_wide, t0, count, vs);
    // M[p] = V[p] U[p] for the 16 positions p.
    for (int64_t p = 0; p < 16; ++p)
      for (int64_t cb = 0; cb < cout / kLanes; ++cb) {
        const float* up = u + (p * (cout / kLanes) + cb) * cin * kLanes;
        const float* vp = vs + p * kWinogradChunk * cin;
        float* mp = ms + p * kWinogradChunk * cout + cb * kLanes;
        ForEachTile(count, [&](auto rows, int64_t t) {
          v8 acc[rows][2];
          for (auto& a : acc) a[0] = a[1] = _mm256_setzero_ps();
          AccumulateRows(acc, vp + t * cin, cin, up);
          StoreRows(acc, mp + t * cout, cout);
        });
      }
    // Y = A^T M A + bias, A^T = [1 1 1 0; 0 1 -1 -1].
    for (int64_t t = 0; t < count; ++t) {
      const int64_t ti = (t0 + t) / tiles_wide, tj = (t0 + t) % tiles_wide;
      float* yt = y + (2 * ti * wo + 2 * tj) * cout;
      const float* mt = ms + t * cout;
      const int64_t stride = kWinogradChunk * cout;
      for (int64_t o = 0; o < cout; o += 8) {
        v8 cols[2][4];
        for (int s = 0; s < 4; ++s) {
          const v8 m0 = load8(mt + (0 * 4 + s) * stride + o), m1 = load8(mt + (1 * 4 + s) * stride + o);
          const v8 m2 = load8(mt + (2 * 4 + s) * stride + o), m3 = load8(mt + (3 * 4 + s) * stride + o);
          cols[0][s] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
          cols[1][s] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
        }
        const v8 b = load8(bias + o);
        v8 out[4];  // the tile's outputs in row-major order
        for (int r = 0; r < 2; ++r) {
          out[2 * r] = _mm256_add_ps(
              _mm256_add_ps(_mm256_add_ps(cols[r][0], cols[r][1]), cols[r][2]), b);
          out[2 * r + 1] = _mm256_add_ps(
              _mm256_sub_ps(_mm256_sub_ps(cols[r][1], cols[r][2]), cols[r][3]), b);
        }
        if (position) {
          const int64_t at = (t0 + t) * cout + o;
          PoolStore(out, y + at, position + at);
        } else {
          for (int r = 0; r < 2; ++r) {
            store8(yt + r * wo * cout + o, out[2 * r]);
            store8(yt + (r * wo + 1) * cout + o, out[2 * r + 1]);
          }
        }
      }
    }
  }
}


// The kernel gradient by Winograd: with Y = A^T [U * V] A and U = G g G^T, dU = sum over
// tiles of V * (A dY A^T) and dg = G^T dU G. du [16][cin][cout] accumulates one
// image's dU (the final G^T . G is WinogradKernelGradient's).
void WinogradGradImage(const float* x, int64_t h, int64_t w, int64_t cin, const float* dy,
                       int64_t cout, float* du, float* scratch) {
  const int64_t ho = h - 2, wo = w - 2, tiles_wide = wo / 2, tiles = ho / 2 * tiles_wide;
  float* vs = scratch;
  float* ms = scratch + 16 * kWinogradChunk * cin;
  for (int64_t t0 = 0; t0 < tiles; t0 += kWinogradChunk) {
    const int64_t count = std::min(kWinogradChunk, tiles - t0);
    WinogradInput(x, w, cin, tiles_wide, t0, count, vs);
    // dM = A dY A^T, A = [1 0; 1 1; 1 -1; 0 -1].
    for (int64_t t = 0; t < count; ++t) {
      const int64_t ti = (t0 + t) / tiles_wide, tj = (t0 + t) % tiles_wide;
      const float* d = dy + (2 * ti * wo + 2 * tj) * cout;
      float* mt = ms + t * cout;
      const int64_t stride = kWinogradChunk * cout;
      for (int64_t o = 0; o < cout; o += 8) {
        const v8 d00 = load8(d + o), d01 = load8(d + cout + o);
        const v8 d10 = load8(d + wo * cout + o), d11 = load8(d + (wo + 1) * cout + o);
        // rows of A dY: [d0, d0 + d1, d0 - d1, -d1] for the tile's rows d0, d1
        const v8 r[4][2] = {{d00, d01},
                            {_mm256_add_ps(d00, d10), _mm256_add_ps(d01, d11)},
                            {_mm256_sub_ps(d00, d10), _mm256_sub_ps(d01, d11)},
                            {_mm256_sub_ps(_mm256_setzero_ps(), d10),
                             _mm256_sub_ps(_mm256_setzero_ps(), d11)}};
        for (int a = 0; a < 4; ++a) {
          store8(mt + (a * 4 + 0) * stride + o, r[a][0]);
          store8(mt + (a * 4 + 1) * stride + o, _mm256_add_ps(r[a][0], r[a][1]));
          store8(mt + (a * 4 + 2) * stride + o, _mm256_sub_ps(r[a][0], r[a][1]));
          store8(mt + (a * 4 + 3) * stride + o, _mm256_sub_ps(_mm256_setzero_ps(), r[a][1]));
        }
      }
    }
    for (int64_t p = 0; p < 16; ++p)
      for (int64_t cb = 0; cb < cout / kLanes; ++cb) {
        const float* vp = vs + p * kWinogradChunk * cin;
        const float* mp = ms + p * kWinogradChunk * cout + cb * kLanes;
        float* dup = du + p * cin * cout + cb * kLanes;
        ForEachTile(cin, [&](auto rows, int64_t c) {
          OuterProductTile<rows>(vp + c, 0, cin, mp, 0, cout, 1, count, dup + c * cout);
        });
      }
  }
}

// dw [3][3][cin][cout] = G^T dU G for du [16][cin][cout].
void WinogradKernelGradient(const float* du, int64_t cin, int64_t cout, float* dw) {
  const int64_t size = cin * cout;
  for (int64_t k = 0; k < size; ++k)
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        float sum = 0.f;
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b) sum += G[a][i] * G[b][j] * du[(a * 4 + b) * size + k];
        dw[(i * 3 + j) * size + k] = sum;
      }
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

// y = conv(x, w) + bias: x [n][h][w][cin], w [kh][kw][cin][cout], bias [cout] ->
// y [n][h-kh+1][w-kw+1][cout]; with `positions`, y is max-pooled 2x2 as it is made,
// y [n][ho/2][wo/2][cout] and positions (the first maximum's place in each window, 0-3).
ffi::Error ForwardImpl(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> bias, float* ys, int8_t* positions,
                       bool use_winograd) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  const int64_t n = xd[0], h = xd[1], wid = xd[2], cin = xd[3];
  const int64_t kh = wd[0], kw = wd[1], cout = wd[3];
  if (cout % kLanes) return ffi::Error::InvalidArgument("charjax conv: cout % 16 != 0");
  const int64_t ho = h - kh + 1, wo = wid - kw + 1;
  if (positions && (ho % 2 || wo % 2))
    return ffi::Error::InvalidArgument("charjax conv: pooling needs an even output size");
  const int64_t ysize = positions ? ho / 2 * (wo / 2) * cout : ho * wo * cout;
  const bool winograd = use_winograd && WinogradApplies(kh, kw, ho, wo, cin);
  const std::vector<float> panels = winograd ? WinogradKernel(w.typed_data(), cin, cout, false)
                                             : PackKernel(w.typed_data(), kh * kw, cin, cout, false);
  const int64_t threads = Workers(pool, n);
  // Per worker: the Winograd chunk buffers, or the unpooled output of a direct pass.
  const int64_t scratch_size =
      winograd ? WinogradScratch(cin, cout) : (positions ? ho * wo * cout : 0);
  std::vector<std::vector<float>> scratch(threads, std::vector<float>(scratch_size));
  const float* xs = x.typed_data();
  ParallelFor(pool, n, threads, threads, [&](int64_t worker, int64_t, int64_t b) {
    const float* xb = xs + b * h * wid * cin;
    float* yb = ys + b * ysize;
    int8_t* pb = positions ? positions + b * ysize : nullptr;
    float* work = scratch[worker].data();
    if (winograd) {
      WinogradImage(xb, h, wid, cin, panels.data(), bias.typed_data(), cout, yb, work, pb);
    } else if (pb) {
      ForwardImage(xb, h, wid, cin, kh, kw, panels.data(), bias.typed_data(), cout, work);
      PoolImage(work, ho, wo, cout, yb, pb);
    } else {
      ForwardImage(xb, h, wid, cin, kh, kw, panels.data(), bias.typed_data(), cout, yb);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                   bool use_winograd) {
  return ForwardImpl(pool, x, w, bias, y->typed_data(), nullptr, use_winograd);
}

ffi::Error ForwardPool(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                       ffi::ResultBuffer<ffi::S8> positions, bool use_winograd) {
  return ForwardImpl(pool, x, w, bias, y->typed_data(), positions->typed_data(), use_winograd);
}

// dx = d conv(x, w) / dx applied to dy [n][ho][wo][cout] (with `positions`: the pooled
// gradient [n][ho/2][wo/2][cout], routed to each window's first maximum), w
// [kh][kw][cin][cout] -> dx [n][ho+kh-1][wo+kw-1][cin]. Each image of dy is zero-padded
// into scratch, then convolved with the flipped, transposed kernel.
ffi::Error InputGradImpl(ffi::ThreadPool& pool, const float* dys, const int8_t* positions,
                         int64_t n, int64_t ho, int64_t wo, int64_t cout,
                         ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32>& dx,
                         bool use_winograd) {
  const auto wd = w.dimensions();
  const int64_t kh = wd[0], kw = wd[1], cin = wd[2];
  if (cin % kLanes) return ffi::Error::InvalidArgument("charjax conv: cin % 16 != 0");
  const int64_t hp = ho + 2 * (kh - 1), wp = wo + 2 * (kw - 1);
  const int64_t h = ho + kh - 1, wid = wo + kw - 1;
  const int64_t dysize = positions ? ho / 2 * (wo / 2) * cout : ho * wo * cout;
  const bool winograd = use_winograd && WinogradApplies(kh, kw, h, wid, cout);
  const std::vector<float> panels = winograd ? WinogradKernel(w.typed_data(), cout, cin, true)
                                             : PackKernel(w.typed_data(), kh * kw, cout, cin, true);
  const int64_t threads = Workers(pool, n);
  // Per worker: the padded image, then the Winograd chunk buffers.
  const int64_t padded = hp * wp * cout;
  std::vector<std::vector<float>> scratch(
      threads, std::vector<float>(padded + (winograd ? WinogradScratch(cin, cout) : 0)));
  const std::vector<float> zeros(cin, 0.f);
  float* dxs = dx->typed_data();
  ParallelFor(pool, n, threads, threads, [&](int64_t worker, int64_t, int64_t b) {
    float* pad = scratch[worker].data();
    float* interior = pad + ((kh - 1) * wp + kw - 1) * cout;
    const float* src = dys + b * dysize;
    if (positions)
      UnpoolImage(src, positions + b * dysize, ho, wo, cout, interior, wp * cout);
    else
      for (int64_t i = 0; i < ho; ++i)
        std::memcpy(interior + i * wp * cout, src + i * wo * cout, wo * cout * sizeof(float));
    if (winograd)
      WinogradImage(pad, hp, wp, cout, panels.data(), zeros.data(), cin,
                    dxs + b * h * wid * cin, pad + padded);
    else
      ForwardImage(pad, hp, wp, cout, kh, kw, panels.data(), zeros.data(), cin,
                   dxs + b * h * wid * cin);
  });
  return ffi::Error::Success();
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> dx, bool use_winograd) {
  const auto dd = dy.dimensions();
  return InputGradImpl(pool, dy.typed_data(), nullptr, dd[0], dd[1], dd[2], dd[3], w, dx,
                       use_winograd);
}

ffi::Error InputGradPool(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                         ffi::Buffer<ffi::S8> positions, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, bool use_winograd) {
  const auto dd = dy.dimensions();
  return InputGradImpl(pool, dy.typed_data(), positions.typed_data(), dd[0], 2 * dd[1],
                       2 * dd[2], dd[3], w, dx, use_winograd);
}

// (dw, dbias) = the gradients of conv(x, w) + bias applied to dy (with `positions`: the
// pooled gradient, as in InputGradImpl): x [n][h][w][cin], dy [n][ho][wo][cout] ->
// dw [kh][kw][cin][cout], dbias [cout]; the kernel's spatial size comes from dw's shape.
ffi::Error KernelGradImpl(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32> x, const float* dys,
                          const int8_t* positions, ffi::ResultBuffer<ffi::F32>& dw,
                          ffi::ResultBuffer<ffi::F32>& dbias, bool use_winograd) {
  const auto xd = x.dimensions(), wd = dw->dimensions();
  const int64_t n = xd[0], h = xd[1], wid = xd[2], cin = xd[3];
  const int64_t kh = wd[0], kw = wd[1], cout = wd[3];
  if (cout % kLanes) return ffi::Error::InvalidArgument("charjax conv: cout % 16 != 0");
  const int64_t ho = h - kh + 1, wo = wid - kw + 1, ysize = ho * wo * cout;
  const int64_t dysize = positions ? ho / 2 * (wo / 2) * cout : ysize;
  const bool winograd = use_winograd && WinogradApplies(kh, kw, ho, wo, cin);
  // dU (16 positions) by Winograd, else the kernel gradient itself.
  const int64_t wsize = (winograd ? 16 : kh * kw) * cin * cout;
  const int64_t work = winograd ? WinogradScratch(cin, cout) : 0;
  const int64_t threads = Workers(pool, n), chunks = Chunks(n);
  // Per chunk: the kernel gradient (or dU) and the bias gradient of its images; per worker:
  // the Winograd buffers and the unpooled output gradient.
  const int64_t sums = wsize + cout;
  std::vector<std::vector<float>> partial(chunks, std::vector<float>(sums, 0.f));
  std::vector<std::vector<float>> scratch(
      threads, std::vector<float>(std::max<int64_t>(1, work + (positions ? ysize : 0))));
  const float* xs = x.typed_data();
  ParallelFor(pool, n, threads, chunks, [&](int64_t worker, int64_t chunk, int64_t b) {
    float* part = partial[chunk].data();
    float* own = scratch[worker].data();
    const float* dyb = dys + b * dysize;
    if (positions) {
      float* unpooled = own + work;
      UnpoolImage(dyb, positions + b * dysize, ho, wo, cout, unpooled, wo * cout);
      dyb = unpooled;
    }
    if (winograd)
      WinogradGradImage(xs + b * h * wid * cin, h, wid, cin, dyb, cout, part, own);
    else
      KernelGradImage(xs + b * h * wid * cin, h, wid, cin, dyb, kh, kw, cout, part);
    float* db = part + wsize;
    for (int64_t p = 0; p < ysize; p += cout)
      for (int64_t o = 0; o < cout; o += 8)
        store8(db + o, _mm256_add_ps(load8(db + o), load8(dyb + p + o)));
  });
  for (int64_t c = 1; c < chunks; ++c)  // in chunk order: the same sum on every run
    for (int64_t k = 0; k < sums; ++k) partial[0][k] += partial[c][k];
  if (winograd)
    WinogradKernelGradient(partial[0].data(), cin, cout, dw->typed_data());
  else
    std::memcpy(dw->typed_data(), partial[0].data(), wsize * sizeof(float));
  std::memcpy(dbias->typed_data(), partial[0].data() + wsize, cout * sizeof(float));
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> dbias,
                      bool use_winograd) {
  return KernelGradImpl(pool, x, dy.typed_data(), nullptr, dw, dbias, use_winograd);
}

ffi::Error KernelGradPool(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::S8> positions,
                          ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> dbias,
                          bool use_winograd) {
  return KernelGradImpl(pool, x, dy.typed_data(), positions.typed_data(), dw, dbias,
                        use_winograd);
}

}  // namespace

using F32 = ffi::Buffer<ffi::F32>;
using S8 = ffi::Buffer<ffi::S8>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<bool>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvInputGrad, InputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<bool>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>()
                                  .Attr<bool>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvPoolForward, ForwardPool,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<S8>()
                                  .Attr<bool>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvPoolInputGrad, InputGradPool,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<S8>().Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<bool>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxConvPoolKernelGrad, KernelGradPool,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<S8>()
                                  .Ret<F32>().Ret<F32>()
                                  .Attr<bool>("winograd"));
