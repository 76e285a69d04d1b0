// attnlab's compiled block-sparse causal softmax attention, forward only (built on first use by
// attnlab/attention/fast/block_sparse.py, which documents the layout and the algorithm; layout_mask plus a masked
// softmax is the specification).
//
// q [H, Tp, D], k, v [Hk, Tp, D] contiguous, float32 or float64, Tp = nq · bs; query head h reads key/value head
// h / (H / Hk). blocks [H, nq, nb] int64: per (head, query block) the listed key blocks in ascending order, then −1;
// columns [H, nq, nc] int64: the listed key positions, then −1. units [U, 3] int64: (first head h0, heads n, query
// block i), most expensive first: heads h0 … h0 + n − 1 read one key/value head and list the same keys for block i
// (the lists of h0 are used), so their n · bs query rows share every key tile (GQA: one pass over the keys, and
// matrix products n times taller).
//
// Each unit is one FlashAttention forward (Dao et al. 2022, arXiv:2205.14135) over its own keys only: runs of
// consecutive listed blocks are read in place through BLAS ?gemm_ (the key matrix's leading dimension) a whole
// KEY_TILE at a time; the rest of the runs and the columns are copied into a per-thread buffer that becomes a tile
// when full (scattered blocks would otherwise make tiles of one block); then the diagonal block (causal inside). Online softmax: running row max m and sum l, the accumulator rescaled by
// e^{m_old − m_new}. The units are dealt to the threads round-robin in order of cost.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

namespace {

constexpr int64_t KEY_TILE = 512;  // keys per score tile (as the CPU flash kernel's kv split)

// exp that vectorises (a library call per element costs more than the tile's matrix products): Cody–Waite range
// reduction and the Cephes expf polynomial, as native.cpp's exp_f (a separate build, so a copy of its 20 lines).
// Weights below e^−64 of the row maximum are exactly 0, far below float32 rounding of a row sum, and no denormal
// reaches a matrix product. float64 uses the C library (it serves exactness checks, not speed).
inline float exp_poly(float x) {
  const float xc = std::min(std::max(x, -64.0f), 88.0f);
  const float magic = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer in the low mantissa bits
  const float t = xc * 1.44269504088896341f + magic;
  const float n = t - magic;
  int32_t tb, mb;
  std::memcpy(&tb, &t, 4);
  std::memcpy(&mb, &magic, 4);
  float r = xc - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = ((tb - mb) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, 4);
  return x < -64.0f ? 0.0f : p * scale;
}
inline double exp_any(double x) { return std::exp(x); }
inline float exp_any(float x) { return exp_poly(x); }

bool blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// Column-major BLAS on row-major matrices: a row-major [m x n] matrix is the column-major [n x m] one.
template <typename T>
void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  const int M = (int)m, N = (int)n, K = (int)k, LA = (int)lda, LB = (int)ldb, LC = (int)ldc;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&ta, &tb, &M, &N, &K, &alpha, a, &LA, b, &LB, &beta, c, &LC);
  } else {
    dgemm_(&ta, &tb, &M, &N, &K, &alpha, a, &LA, b, &LB, &beta, c, &LC);
  }
}

template <typename T>
struct Row {
  int64_t rows, bs, d;
  T scale;
  std::vector<T> s, acc, m, l;
  Row(int64_t max_rows, int64_t bs_, int64_t d_, T scale_)
      : rows(max_rows), bs(bs_), d(d_), scale(scale_), s(max_rows * KEY_TILE), acc(max_rows * d_), m(max_rows),
        l(max_rows) {}

  void reset(int64_t rows_) {
    rows = rows_;
    std::fill(acc.begin(), acc.begin() + rows * d, T(0));
    std::fill(m.begin(), m.begin() + rows, -std::numeric_limits<T>::infinity());
    std::fill(l.begin(), l.begin() + rows, T(0));
  }

  // n ≤ KEY_TILE keys at kt, values at vt (leading dimension d); diag: key c visible to row r iff c ≤ r mod bs
  // (the rows are the stacked query blocks of the unit's heads).
  void tile(const T* qt, const T* kt, const T* vt, int64_t n, bool diag) {
    T* sp = s.data();
    gemm<T>('T', 'N', n, rows, d, scale, kt, d, qt, d, T(0), sp, n);  // S = scale · Q Kᵀ  [rows x n]
    for (int64_t r = 0; r < rows; ++r) {
      T* sr = sp + r * n;
      const int64_t visible = diag ? std::min(n, r % bs + 1) : n;
      T mx = m[r];
#pragma omp simd reduction(max : mx)
      for (int64_t c = 0; c < visible; ++c) mx = std::max(mx, sr[c]);
      const T corr = m[r] == -std::numeric_limits<T>::infinity() ? T(0) : exp_any(m[r] - mx);
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < visible; ++c) {
        sr[c] = exp_any(sr[c] - mx);
        sum += sr[c];
      }
      for (int64_t c = visible; c < n; ++c) sr[c] = 0;
      l[r] = l[r] * corr + sum;
      m[r] = mx;
      T* ar = acc.data() + r * d;
#pragma omp simd
      for (int64_t e = 0; e < d; ++e) ar[e] *= corr;
    }
    gemm<T>('N', 'N', d, rows, n, T(1), vt, d, sp, n, T(1), acc.data(), d);  // acc += P V
  }
};

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& blocks,
         const at::Tensor& columns, const at::Tensor& units, int64_t bs, double scale, at::Tensor& out) {
  const int64_t H = q.size(0), Tp = q.size(1), D = q.size(2), Hk = k.size(0);
  const int64_t nq = Tp / bs, nb = blocks.size(2), nc = columns.size(2), rep = H / Hk;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const int64_t* bp = blocks.data_ptr<int64_t>();
  const int64_t* cp = columns.data_ptr<int64_t>();
  const int64_t* up = units.data_ptr<int64_t>();
  T* outp = out.data_ptr<T>();
  const int64_t n_units = units.size(0);
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_units));
  at::parallel_for(0, slots, 1, [&](int64_t begin, int64_t end) {
    Row<T> st(rep * bs, bs, D, (T)scale);
    std::vector<T> kbuf(KEY_TILE * D), vbuf(KEY_TILE * D), qbuf(rep * bs * D);
    for (int64_t slot = begin; slot < end; ++slot) {
      for (int64_t idx = slot; idx < n_units; idx += slots) {
        const int64_t h = up[idx * 3], nh = up[idx * 3 + 1], i = up[idx * 3 + 2], hk = h / rep, row = h * nq + i;
        const T* qt = qp + (h * Tp + i * bs) * D;
        if (nh > 1) {  // stack the heads' query blocks
          for (int64_t g = 0; g < nh; ++g) {
            const T* src = qp + ((h + g) * Tp + i * bs) * D;
            std::copy(src, src + bs * D, qbuf.data() + g * bs * D);
          }
          qt = qbuf.data();
        }
        const T* kh = kp + hk * Tp * D;
        const T* vh = vp + hk * Tp * D;
        st.reset(nh * bs);
        // keys that are not part of a long run are copied into the buffer, so that every score tile holds up to
        // KEY_TILE keys (scattered blocks and columns would otherwise make tiles of 64 keys or fewer)
        int64_t filled = 0;
        auto flush = [&]() {
          if (filled) st.tile(qt, kbuf.data(), vbuf.data(), filled, false);
          filled = 0;
        };
        auto append = [&](int64_t first, int64_t count) {  // keys first … first + count − 1
          while (count > 0) {
            const int64_t take = std::min(count, KEY_TILE - filled);
            std::copy(kh + first * D, kh + (first + take) * D, kbuf.data() + filled * D);
            std::copy(vh + first * D, vh + (first + take) * D, vbuf.data() + filled * D);
            filled += take, first += take, count -= take;
            if (filled == KEY_TILE) flush();
          }
        };
        const int64_t* ids = bp + row * nb;
        int64_t j = 0;
        while (j < nb && ids[j] >= 0) {  // a run of consecutive blocks
          int64_t stop = j + 1;
          while (stop < nb && ids[stop] == ids[stop - 1] + 1) ++stop;
          const int64_t first = ids[j] * bs, n_keys = (stop - j) * bs;
          const int64_t in_place = n_keys / KEY_TILE * KEY_TILE;  // whole tiles: read where they are
          for (int64_t c0 = 0; c0 < in_place; c0 += KEY_TILE) {
            st.tile(qt, kh + (first + c0) * D, vh + (first + c0) * D, KEY_TILE, false);
          }
          append(first + in_place, n_keys - in_place);
          j = stop;
        }
        const int64_t* cols = cp + row * nc;
        for (int64_t c = 0; c < nc && cols[c] >= 0; ++c) append(cols[c], 1);
        flush();
        st.tile(qt, kh + i * bs * D, vh + i * bs * D, bs, true);
        for (int64_t r = 0; r < nh * bs; ++r) {
          T* ot = outp + ((h + r / bs) * Tp + i * bs + r % bs) * D;
          const T inv = T(1) / st.l[r];
#pragma omp simd
          for (int64_t e = 0; e < D; ++e) ot[e] = st.acc[r * D + e] * inv;
        }
      }
    }
  });
}

at::Tensor forward(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor blocks, at::Tensor columns, at::Tensor units,
                   int64_t bs, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "q, k, v must be [H, Tp, D]");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "q, k, v must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "one dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, "float32 or float64 only");
  TORCH_CHECK(q.size(1) % bs == 0 && k.size(1) == q.size(1) && v.size(1) == q.size(1), "Tp = nq · bs for all");
  TORCH_CHECK(k.size(2) == q.size(2) && v.size(2) == q.size(2), "one head dim");
  TORCH_CHECK(q.size(0) % k.size(0) == 0 && v.size(0) == k.size(0), "H must be a multiple of Hk");
  TORCH_CHECK(blocks.scalar_type() == at::kLong && columns.scalar_type() == at::kLong, "int64 ids");
  TORCH_CHECK(blocks.is_contiguous() && columns.is_contiguous() && units.is_contiguous(), "contiguous ids");
  TORCH_CHECK(units.dim() == 2 && units.size(1) == 3 && units.scalar_type() == at::kLong, "units [U, 3] int64");
  TORCH_CHECK(blas_available(), "no BLAS sgemm_/dgemm_ symbols in this PyTorch build");
  auto out = at::empty_like(q);
  if (q.scalar_type() == at::kFloat) {
    run<float>(q, k, v, blocks, columns, units, bs, scale, out);
  } else {
    run<double>(q, k, v, blocks, columns, units, bs, scale, out);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "block-sparse causal softmax attention, forward");
  m.def("blas_available", &blas_available, "whether the BLAS symbols resolved");
}
