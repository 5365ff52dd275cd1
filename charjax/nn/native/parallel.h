// Work splitting shared by charjax's native kernels (conv.cc, dense.cc): XLA's intra-op
// thread pool, given to each FFI handler, runs fixed chunks of a loop.

#ifndef CHARJAX_NN_NATIVE_PARALLEL_H_
#define CHARJAX_NN_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace charjax_native {

namespace ffi = xla::ffi;

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

inline void ParallelFor(ffi::ThreadPool& pool, int64_t count, int64_t threads, int64_t chunks,
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

inline int64_t Workers(ffi::ThreadPool& pool, int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), items));
}

}  // namespace charjax_native

#endif  // CHARJAX_NN_NATIVE_PARALLEL_H_
