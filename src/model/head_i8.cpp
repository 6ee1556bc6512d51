#include "model/head_i8.h"

#include <algorithm>
#include <cmath>

#include "util/thread_pool.h"

namespace tern {

HeadI8 quantize_head_i8(const FloatMatrix& emb, ThreadPool& pool) {
  HeadI8 h;
  h.rows = emb.rows;
  h.cols = emb.cols;
  h.q.resize(static_cast<size_t>(h.rows) * h.cols);
  h.scale.resize(h.rows);
  pool.parallel_for(h.rows, [&](int64_t b, int64_t e) {
    std::vector<float> w(h.cols);
    for (int64_t v = b; v < e; ++v) {
      emb.row_to_f32(v, w.data());
      float amax = 0.0f;
      for (float x : w) amax = std::max(amax, std::fabs(x));
      int8_t* q = h.q.data() + v * h.cols;
      if (!(amax > 0.0f) || !std::isfinite(amax)) {
        // Zero rows, and rows with inf/NaN (a broken checkpoint) give zero logits
        // rather than NaN everywhere.
        std::fill_n(q, h.cols, 0);
        h.scale[v] = 0.0f;
        continue;
      }
      const float inv = 127.0f / amax;
      for (int64_t c = 0; c < h.cols; ++c) q[c] = static_cast<int8_t>(std::clamp(std::nearbyint(w[c] * inv), -127.0f, 127.0f));
      h.scale[v] = amax / 127.0f;
    }
  }, 256);
  return h;
}

}  // namespace tern
