// Matrix products that skip what dropout zeroes, for XLA:CPU as XLA FFI handlers.
//
// A dense layer followed by dropout at rate r keeps a fraction 1 - r of its outputs (exp 2:
// 20%, exp 3: 30%); the others are zero whatever the product, and so are their gradients
// (and those of outputs the ReLU clipped). Three kernels do only the work that survives:
// - MaskedMatmul: z = x W where the mask keeps, 0 elsewhere, as dot products of x's rows
//   with the transposed kernel's rows (wt [m][K]);
// - SparseInputGrad: dx = gz W^T, adding g * wt[j] for each nonzero g = gz[i][j];
// - SparseKernelGrad: dW = x^T gz, adding g * x[i] to column j of dW likewise.
// Each walks K in blocks whose slice of wt (or of x) stays in the core's L2 cache while
// every nonzero uses it. Sums run in an order fixed by the shapes alone (not by the
// threads), so results are bitwise reproducible. AVX2/FMA intrinsics, built with conv.cc.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using charjax_native::ParallelFor;
using charjax_native::Workers;

typedef __m256 v8;

inline v8 load8(const float* p) { return _mm256_loadu_ps(p); }
inline void store8(float* p, v8 v) { _mm256_storeu_ps(p, v); }
inline v8 fma(v8 a, v8 b, v8 c) { return _mm256_fmadd_ps(a, b, c); }

inline float Sum8(v8 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Floats of the rows' slice one K block spans (m rows of wt, or n of x): 1 MiB, half an L2.
constexpr int64_t kBlockFloats = int64_t{1} << 18;

// The K block: a multiple of 64 floats whose `rows` rows fit kBlockFloats, at least 64.
int64_t BlockSize(int64_t rows) {
  return std::max<int64_t>(64, kBlockFloats / std::max<int64_t>(rows, 1) / 64 * 64);
}

// Positions j < m of row's nonzeros (mask != 0, or g != 0), in increasing order.
template <typename T>
int32_t Nonzeros(const T* row, int64_t m, int32_t* out) {
  int32_t count = 0;
  for (int64_t j = 0; j < m; ++j)
    if (row[j] != T(0)) out[count++] = static_cast<int32_t>(j);
  return count;
}

// out[q] = sum over t < len of x[t] * w[q][t], for Q rows of wt at once (each x vector loaded
// once for Q products; two accumulators per row to hide the FMA latency).
template <int Q>
inline void Dots(const float* x, const float* const (&w)[Q], int64_t len, float (&out)[Q]) {
  v8 acc[Q][2];
  for (int q = 0; q < Q; ++q) acc[q][0] = acc[q][1] = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) {
    const v8 x0 = load8(x + t), x1 = load8(x + t + 8);
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) {
      acc[q][0] = fma(x0, load8(w[q] + t), acc[q][0]);
      acc[q][1] = fma(x1, load8(w[q] + t + 8), acc[q][1]);
    }
  }
  if (t + 8 <= len) {
    const v8 x0 = load8(x + t);
    for (int q = 0; q < Q; ++q) acc[q][0] = fma(x0, load8(w[q] + t), acc[q][0]);
    t += 8;
  }
  for (int q = 0; q < Q; ++q) {
    float sum = Sum8(_mm256_add_ps(acc[q][0], acc[q][1]));
    for (int64_t u = t; u < len; ++u) sum += x[u] * w[q][u];
    out[q] = sum;
  }
}

// Runs row(i, js, count, k0, len) for every image i < n and K block [k0, k0 + len), js
// holding the positions of the count nonzeros of row i of select [n][m]. The images are cut
// into chunks over the pool; each chunk walks the K blocks over all its images, so a
// block's m rows of wt stay in L2 while the chunk uses them.
template <typename T, typename F>
void ForImageBlocks(ffi::ThreadPool& pool, const T* select, int64_t n, int64_t m, int64_t K,
                    F&& row) {
  const int64_t block = BlockSize(m), threads = Workers(pool, n);
  const int64_t chunks = std::min<int64_t>(n, 4 * threads);
  ParallelFor(pool, chunks, threads, chunks, [&](int64_t, int64_t, int64_t c) {
    const int64_t b0 = c * n / chunks, b1 = (c + 1) * n / chunks;
    std::vector<int32_t> lists((b1 - b0) * m), counts(b1 - b0);
    for (int64_t i = b0; i < b1; ++i)
      counts[i - b0] = Nonzeros(select + i * m, m, lists.data() + (i - b0) * m);
    for (int64_t k0 = 0; k0 < K; k0 += block)
      for (int64_t i = b0; i < b1; ++i)
        row(i, lists.data() + (i - b0) * m, counts[i - b0], k0, std::min(block, K - k0));
  });
}

// z [n][m] = x [n][K] wt[m][K]^T where mask [n][m] != 0, else 0.
ffi::Error MaskedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wt,
                        ffi::Buffer<ffi::S8> mask, ffi::ResultBuffer<ffi::F32> z) {
  const auto xd = x.dimensions(), wd = wt.dimensions(), md = mask.dimensions();
  const int64_t n = xd[0], K = xd[1], m = wd[0];
  if (wd[1] != K || md[0] != n || md[1] != m)
    return ffi::Error::InvalidArgument("charjax masked_matmul: shapes do not agree");
  const float* xs = x.typed_data();
  const float* ws = wt.typed_data();
  const int8_t* ms = mask.typed_data();
  float* zs = z->typed_data();
  std::fill(zs, zs + n * m, 0.f);
  ForImageBlocks(pool, ms, n, m, K, [&](int64_t i, const int32_t* js, int32_t count,
                                        int64_t k0, int64_t len) {
    const float* xi = xs + i * K + k0;
    float* zi = zs + i * m;
    int32_t p = 0;
    for (; p + 4 <= count; p += 4) {
      const float* const w[4] = {ws + js[p] * K + k0, ws + js[p + 1] * K + k0,
                                 ws + js[p + 2] * K + k0, ws + js[p + 3] * K + k0};
      float out[4];
      Dots<4>(xi, w, len, out);
      for (int q = 0; q < 4; ++q) zi[js[p + q]] += out[q];
    }
    for (; p < count; ++p) {
      const float* const w[1] = {ws + js[p] * K + k0};
      float out[1];
      Dots<1>(xi, w, len, out);
      zi[js[p]] += out[0];
    }
  });
  return ffi::Error::Success();
}

// dst[0..len) = sum over p < count of g[js[p]] * rows[js[p]][0..len) (rows `stride` floats
// apart), eight vectors of dst at a time in registers.
inline void ScaledRowSum(const float* g, const int32_t* js, int32_t count, const float* rows,
                         int64_t stride, int64_t len, float* dst) {
  int64_t t = 0;
  for (; t + 64 <= len; t += 64) {
    v8 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (int32_t p = 0; p < count; ++p) {
      const v8 s = _mm256_set1_ps(g[js[p]]);
      const float* r = rows + js[p] * stride + t;
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) acc[v] = fma(s, load8(r + 8 * v), acc[v]);
    }
    for (int v = 0; v < 8; ++v) store8(dst + t + 8 * v, acc[v]);
  }
  for (; t + 8 <= len; t += 8) {
    v8 acc = _mm256_setzero_ps();
    for (int32_t p = 0; p < count; ++p)
      acc = fma(_mm256_set1_ps(g[js[p]]), load8(rows + js[p] * stride + t), acc);
    store8(dst + t, acc);
  }
  for (; t < len; ++t) {
    float acc = 0.f;
    for (int32_t p = 0; p < count; ++p) acc += g[js[p]] * rows[js[p] * stride + t];
    dst[t] = acc;
  }
}

// dx [n][K] = gz [n][m] wt [m][K], skipping gz's zeros.
ffi::Error SparseInputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gz,
                           ffi::Buffer<ffi::F32> wt, ffi::ResultBuffer<ffi::F32> dx) {
  const auto gd = gz.dimensions(), wd = wt.dimensions();
  const int64_t n = gd[0], m = gd[1], K = wd[1];
  if (wd[0] != m) return ffi::Error::InvalidArgument("charjax sparse_input_grad: shapes");
  const float* gs = gz.typed_data();
  const float* ws = wt.typed_data();
  float* dxs = dx->typed_data();
  ForImageBlocks(pool, gs, n, m, K, [&](int64_t i, const int32_t* js, int32_t count,
                                        int64_t k0, int64_t len) {
    ScaledRowSum(gs + i * m, js, count, ws + k0, K, len, dxs + i * K + k0);
  });
  return ffi::Error::Success();
}

// dw [K][m] = x [n][K]^T gz [n][m], skipping gz's zeros: column j of dw sums, in image
// order, g * x[i] over the images i whose g = gz[i][j] is nonzero. Per K block (sized so
// that x's slice of every image stays in L2 while all columns use it), the block's columns
// are summed as rows in scratch, then written transposed.
ffi::Error SparseKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> gz, ffi::ResultBuffer<ffi::F32> dw) {
  const auto xd = x.dimensions(), gd = gz.dimensions();
  const int64_t n = xd[0], K = xd[1], m = gd[1];
  if (gd[0] != n) return ffi::Error::InvalidArgument("charjax sparse_kernel_grad: shapes");
  const float* xs = x.typed_data();
  const float* gs = gz.typed_data();
  float* out = dw->typed_data();
  // Column j of gz, contiguous, and the images where it is nonzero.
  std::vector<float> gt(m * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) gt[j * n + i] = gs[i * m + j];
  std::vector<int32_t> lists(m * n), counts(m);
  for (int64_t j = 0; j < m; ++j) counts[j] = Nonzeros(gt.data() + j * n, n, lists.data() + j * n);
  // Each K block is one thread's (x's slice in one core's L2): at least two per thread.
  const int64_t threads = Workers(pool, K);
  const int64_t block = std::max<int64_t>(
      64, std::min(BlockSize(n), ((K + 2 * threads - 1) / (2 * threads) + 63) / 64 * 64));
  const int64_t blocks = (K + block - 1) / block;
  std::vector<std::vector<float>> scratch(threads, std::vector<float>(m * block));
  ParallelFor(pool, blocks, threads, blocks, [&](int64_t worker, int64_t, int64_t b) {
    const int64_t k0 = b * block, len = std::min(block, K - k0);
    float* rows = scratch[worker].data();  // [m][len]
    for (int64_t j = 0; j < m; ++j)
      ScaledRowSum(gt.data() + j * n, lists.data() + j * n, counts[j], xs + k0, K, len,
                   rows + j * len);
    for (int64_t k = 0; k < len; ++k) {
      float* dst = out + (k0 + k) * m;
      for (int64_t j = 0; j < m; ++j) dst[j] = rows[j * len + k];
    }
  });
  return ffi::Error::Success();
}

}  // namespace

using F32 = ffi::Buffer<ffi::F32>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxMaskedMatmul, MaskedMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxSparseInputGrad, SparseInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CharjaxSparseKernelGrad, SparseKernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>());
