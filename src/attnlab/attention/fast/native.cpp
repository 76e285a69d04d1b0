// attnlab's compiled CPU kernels for the chunked backend (built on first use by attnlab/attention/fast/native.py,
// which documents the algorithms; the dense reference of each normaliser is the specification).
//
// Layout: q [B, H, Tq, D], k [B, Hk, Tk, D], v [B, Hk, Tk, Dv], contiguous, float32 or float64; query head h reads
// key/value head h / (H / Hk). Queries sit at the last Tq key positions (p = i + Tk − Tq). Key j is visible to the
// query at position p when: causal: j <= p and (no window or j > p − w); non-causal: |p − j| < w with a window,
// every key without.
//
// Matrix products are BLAS ?gemm_ calls on tiles (the BLAS PyTorch links, LP64: MKL on x86-64 wheels; it runs
// sequentially inside the parallel region), everything pointwise is plain loops the compiler vectorises
// (#pragma omp simd), and the work is split with at::parallel_for: the softmax forward over (batch, head, query
// block), the softmax backward and both softplus passes over (batch, key/value head), so that each item owns the
// rows of dk, dv it accumulates.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

namespace {

bool blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// Row-major helpers on top of column-major BLAS. A row-major [m x n] matrix with leading dimension ld is the
// column-major [n x m] matrix with the same ld, so C = A·B (row-major) is Cᵀ = Bᵀ·Aᵀ (column-major).
template <typename T>
void blas(char ta, char tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const int M = (int)m, N = (int)n, K = (int)k, LA = (int)lda, LB = (int)ldb, LC = (int)ldc;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&ta, &tb, &M, &N, &K, &alpha, a, &LA, b, &LB, &beta, c, &LC);
  } else {
    dgemm_(&ta, &tb, &M, &N, &K, &alpha, a, &LA, b, &LB, &beta, c, &LC);
  }
}

// S[rows x cols] = alpha · X[rows x d] · Y[cols x d]ᵀ (+ beta · S)
template <typename T>
void abt(int64_t rows, int64_t cols, int64_t d, T alpha, const T* x, int64_t ldx, const T* y, int64_t ldy, T beta,
         T* s, int64_t lds) {
  blas<T>('T', 'N', cols, rows, d, alpha, y, ldy, x, ldx, beta, s, lds);
}
// O[rows x e] = alpha · P[rows x cols] · V[cols x e] + beta · O
template <typename T>
void ab(int64_t rows, int64_t e, int64_t cols, T alpha, const T* p, int64_t ldp, const T* v, int64_t ldv, T beta,
        T* o, int64_t ldo) {
  blas<T>('N', 'N', e, rows, cols, alpha, v, ldv, p, ldp, beta, o, ldo);
}
// G[cols x e] += alpha · P[rows x cols]ᵀ · X[rows x e]
template <typename T>
void atb_add(int64_t cols, int64_t e, int64_t rows, T alpha, const T* p, int64_t ldp, const T* x, int64_t ldx, T* g,
             int64_t ldg) {
  blas<T>('N', 'T', e, cols, rows, alpha, x, ldx, p, ldp, T(1), g, ldg);
}

// --- pointwise math -------------------------------------------------------------------------------------------
// float: polynomial exp / log that vectorise (no library calls). exp(x < −64) is exactly 0: weights below e^−64 of
// the row maximum are dropped (as the PyTorch form's EXP_FLOOR), far below float32 rounding of a row sum, and
// neither they nor the gradients they scale come near the denormal range, which slows a matrix product ~100×.
// double: the C library (these paths serve float64 checks, not speed).

inline float bits_f(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int32_t f_bits(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }

constexpr float EXP_LO = -64.0f;

inline float exp_f(float x) {
  const float xc = std::min(std::max(x, EXP_LO), 88.0f);
  const float magic = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer in the low mantissa bits
  const float t = xc * 1.44269504088896341f + magic;
  const float n = t - magic;
  const int32_t ni = f_bits(t) - f_bits(magic);
  float r = xc - n * 0.693145751953125f;  // Cody–Waite: ln 2 = hi + lo
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.9875691500e-4f;  // exp(r) on |r| <= ln2/2 (Cephes expf coefficients)
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float y = p * bits_f((ni + 127) << 23);
  return x < EXP_LO ? 0.0f : y;
}

// log(1 + e) for e in [0, 1] as 2·atanh(t), t = e / (2 + e) in [0, 1/3]: no cancellation for small e.
inline float log1p_unit_f(float e) {
  const float t = e / (2.0f + e);
  const float t2 = t * t;
  float s = 1.0f / 13.0f;
  s = s * t2 + 1.0f / 11.0f;
  s = s * t2 + 1.0f / 9.0f;
  s = s * t2 + 1.0f / 7.0f;
  s = s * t2 + 1.0f / 5.0f;
  s = s * t2 + 1.0f / 3.0f;
  s = s * t2 + 1.0f;
  return 2.0f * t * s;
}

template <typename T>
struct Math;

template <>
struct Math<float> {
  static float exp(float x) { return exp_f(x); }
  static float log1p_unit(float e) { return log1p_unit_f(e); }
  static float tanh(float x) {
    // |x| < 0.25: the Taylor series to x⁹ (relative error < 2e−8); beyond: 1 − 2 / (1 + e^{2x}) (absolute error
    // ~1e−7, relative < 1e−6), |x| clamped at 9 (tanh(9) = 1 − 3e−8)
    const float x2 = x * x;
    float poly = 62.0f / 2835.0f;
    poly = poly * x2 - 17.0f / 315.0f;
    poly = poly * x2 + 2.0f / 15.0f;
    poly = poly * x2 - 1.0f / 3.0f;
    poly = (poly * x2) * x + x;
    const float xc = std::min(std::max(x, -9.0f), 9.0f);
    const float far = 1.0f - 2.0f / (1.0f + exp_f(2.0f * xc));
    return x2 < 0.0625f ? poly : far;
  }
};

template <>
struct Math<double> {
  static double exp(double x) { return x < -708.0 ? 0.0 : std::exp(x); }
  static double log1p_unit(double e) { return std::log1p(e); }
  static double tanh(double x) { return std::tanh(x); }
};

template <typename T>
inline T row_max(const T* __restrict s, int64_t n) {
  constexpr int L = 16;
  T acc[L];
  for (int l = 0; l < L; ++l) acc[l] = -INFINITY;
  int64_t j = 0;
  for (; j + L <= n; j += L)
    for (int l = 0; l < L; ++l) acc[l] = acc[l] > s[j + l] ? acc[l] : s[j + l];
  T m = -INFINITY;
  for (; j < n; ++j) m = m > s[j] ? m : s[j];
  for (int l = 0; l < L; ++l) m = m > acc[l] ? m : acc[l];
  return m;
}

template <typename T>
inline void fill(T* s, int64_t from, int64_t to, T value) {
  for (int64_t j = from; j < to; ++j) s[j] = value;
}

// --- shapes and visibility -------------------------------------------------------------------------------------

struct Shape {
  int64_t B, H, Hk, G, Tq, Tk, D, Dv, off;  // off = Tk − Tq: the position of query 0
  bool causal;
  int64_t window;  // 0: none

  Shape(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal_, int64_t window_)
      : B(q.size(0)), H(q.size(1)), Hk(k.size(1)), G(q.size(1) / k.size(1)), Tq(q.size(2)), Tk(k.size(2)),
        D(q.size(3)), Dv(v.size(3)), off(k.size(2) - q.size(2)), causal(causal_), window(window_) {}

  // keys visible to the query at position p: [lo, hi)
  void row(int64_t p, int64_t& lo, int64_t& hi) const {
    if (causal) {
      hi = std::min(Tk, p + 1);
      lo = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
    } else if (window > 0) {
      lo = std::max<int64_t>(0, p - window + 1);
      hi = std::min(Tk, p + window);
    } else {
      lo = 0;
      hi = Tk;
    }
    if (hi < lo) hi = lo;
  }
  // the visible keys of position p inside a tile of `cols` keys from j0, as tile columns [lo, hi); returns how many
  // keys p sees in all
  int64_t tile_row(int64_t p, int64_t j0, int64_t cols, int64_t& lo, int64_t& hi) const {
    row(p, lo, hi);
    const int64_t seen = hi - lo;
    lo = std::clamp<int64_t>(lo - j0, 0, cols);
    hi = std::clamp<int64_t>(hi - j0, lo, cols);
    return seen;
  }
  // keys visible to some query in positions [p0, p1]
  void block(int64_t p0, int64_t p1, int64_t& lo, int64_t& hi) const {
    int64_t a, b, c, d;
    row(p0, a, b);
    row(p1, c, d);
    lo = std::min(a, c);
    hi = std::max(b, d);
  }
};

void check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be [B, H, T, D]");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "q, k, v must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "q, k, v dtypes differ");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, "float32 or float64 only");
  TORCH_CHECK(q.size(1) % k.size(1) == 0 && k.size(1) == v.size(1), "query heads must be a multiple of kv heads");
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0), "q, k, v batch sizes differ");
  TORCH_CHECK(k.size(3) == q.size(3) && v.size(2) == k.size(2), "k must match q's head dim, v k's length");
  TORCH_CHECK(blas_available(), "no BLAS sgemm_/dgemm_ symbols in this PyTorch build");
}

// ================================================================================================================
// Softmax, signed softmax (Cog) and sigmoid attention, with a relative-position bias (a vector over the offsets
// r = j − p ∈ [1 − Tk, Tq − 1], index r + Tk − 1) and soft-capping, in this order on the scaled score s:
// s ← s + bias ← c·tanh(s / c), then
//   softmax:  w = exp(s − lse),                         ds = w (dw − D)            (D = dO·o)
//   signed:   w = sign(s) exp(|s| − lse) (lse of |s|),  ds = w (sign(s) dw − D)
//   sigmoid:  w = σ(s + b), no row normaliser,          ds = w (1 − w) dw
// with dw = dO·v and, under the cap, ds ← ds (1 − tanh²).
// ================================================================================================================

enum Kind : int64_t { SOFTMAX = 0, SIGNED = 1, SIGMOID = 2 };

struct SoftmaxMod {
  double softcap;     // 0: none
  const void* bias;   // [H, Tk + Tq − 1] or null
  int64_t kind;       // Kind
  double sig_bias;    // sigmoid: b
};

template <typename T>
inline T row_absmax(const T* __restrict s, int64_t n) {
  constexpr int L = 16;
  T acc[L];
  for (int l = 0; l < L; ++l) acc[l] = T(0);
  int64_t j = 0;
  for (; j + L <= n; j += L)
    for (int l = 0; l < L; ++l) {
      const T a = std::abs(s[j + l]);
      acc[l] = acc[l] > a ? acc[l] : a;
    }
  T m = T(0);
  for (; j < n; ++j) m = m > std::abs(s[j]) ? m : std::abs(s[j]);
  for (int l = 0; l < L; ++l) m = m > acc[l] ? m : acc[l];
  return m;
}

// σ(x) without overflow: e = exp(−|x|), σ = 1 / (1 + e) for x ≥ 0, e / (1 + e) below
template <typename T>
inline T sigmoid(T x) {
  const T e = Math<T>::exp(-std::abs(x));
  return (x >= 0 ? T(1) : e) / (T(1) + e);
}

template <typename T>
inline T sign_of(T x) {
  return x > 0 ? T(1) : (x < 0 ? T(-1) : T(0));
}

template <typename T>
inline void modify_row(T* __restrict s, int64_t n, T cap, const T* __restrict bias, T* __restrict tanh_out) {
  // s ← s + bias, then c·tanh(s / c) (the reference's order: the position's score_mod, then the normaliser's cap);
  // tanh_out keeps tanh(s / c) for the backward pass when given
  if (bias) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] += bias[j];
  }
  if (cap > 0) {
    const T inv = T(1) / cap;
    if (tanh_out) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T t = Math<T>::tanh(s[j] * inv);
        tanh_out[j] = t;
        s[j] = cap * t;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) s[j] = cap * Math<T>::tanh(s[j] * inv);
    }
  }
}

template <typename T>
void softmax_forward_impl(const Shape& sh, const T* Q, const T* K, const T* V, T* O, T* LSE, T scale,
                          const SoftmaxMod& mod, int64_t bq, int64_t bk) {
  const int64_t nqb = (sh.Tq + bq - 1) / bq;
  const T cap = (T)mod.softcap;
  const T* bias = (const T*)mod.bias;
  const int64_t nb = sh.Tk + sh.Tq - 1;
  at::parallel_for(0, sh.B * sh.H * nqb, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> S(bq * bk), acc(bq * sh.Dv), m(bq), l(bq);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t qb = item % nqb, bh = item / nqb, b = bh / sh.H, h = bh % sh.H, hk = h / sh.G;
      const int64_t i0 = qb * bq, rows = std::min(bq, sh.Tq - i0);
      const T* q = Q + ((b * sh.H + h) * sh.Tq + i0) * sh.D;
      const T* k = K + (b * sh.Hk + hk) * sh.Tk * sh.D;
      const T* v = V + (b * sh.Hk + hk) * sh.Tk * sh.Dv;
      const T* bias_h = bias ? bias + h * nb : nullptr;
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), T(0));
      int64_t klo, khi;
      sh.block(i0 + sh.off, i0 + rows - 1 + sh.off, klo, khi);
      for (int64_t j0 = klo; j0 < khi; j0 += bk) {
        const int64_t cols = std::min(bk, khi - j0);
        abt<T>(rows, cols, sh.D, scale, q, sh.D, k + j0 * sh.D, sh.D, T(0), S.data(), cols);
        for (int64_t r = 0; r < rows; ++r) {
          T* s = S.data() + r * cols;
          const int64_t p = i0 + r + sh.off;
          int64_t lo, hi;
          sh.tile_row(p, j0, cols, lo, hi);
          if (hi > lo) {
            modify_row<T>(s + lo, hi - lo, cap, bias_h ? bias_h + (j0 + lo - p + sh.Tk - 1) : nullptr, nullptr);
            if (mod.kind == SIGMOID) {
              const T b = (T)mod.sig_bias;
#pragma omp simd
              for (int64_t j = lo; j < hi; ++j) s[j] = sigmoid<T>(s[j] + b);
              fill<T>(s, 0, lo, T(0));
              fill<T>(s, hi, cols, T(0));
              continue;
            }
            const bool signed_ = mod.kind == SIGNED;
            const T mx = signed_ ? row_absmax<T>(s + lo, hi - lo) : row_max<T>(s + lo, hi - lo);
            if (mx > m[r]) {
              const T corr = Math<T>::exp(m[r] - mx);  // 0 on the first visible tile (m = −inf)
              l[r] *= corr;
              T* a = acc.data() + r * sh.Dv;
#pragma omp simd
              for (int64_t d = 0; d < sh.Dv; ++d) a[d] *= corr;
              m[r] = mx;
            }
            const T mr = m[r];
            T sum = 0;
            if (signed_) {
#pragma omp simd reduction(+ : sum)
              for (int64_t j = lo; j < hi; ++j) {
                const T e = Math<T>::exp(std::abs(s[j]) - mr);
                sum += e;
                s[j] = sign_of<T>(s[j]) * e;
              }
            } else {
#pragma omp simd reduction(+ : sum)
              for (int64_t j = lo; j < hi; ++j) {
                const T e = Math<T>::exp(s[j] - mr);
                s[j] = e;
                sum += e;
              }
            }
            l[r] += sum;
          }
          fill<T>(s, 0, lo, T(0));
          fill<T>(s, hi, cols, T(0));
        }
        ab<T>(rows, sh.Dv, cols, T(1), S.data(), cols, v + j0 * sh.Dv, sh.Dv, T(1), acc.data(), sh.Dv);
      }
      T* o = O + ((b * sh.H + h) * sh.Tq + i0) * sh.Dv;
      T* lse = LSE + (b * sh.H + h) * sh.Tq + i0;
      for (int64_t r = 0; r < rows; ++r) {
        if (mod.kind == SIGMOID) {  // no row normaliser
          for (int64_t d = 0; d < sh.Dv; ++d) o[r * sh.Dv + d] = acc[r * sh.Dv + d];
          lse[r] = 0;
          continue;
        }
        const T inv = l[r] > 0 ? T(1) / l[r] : T(0);
        for (int64_t d = 0; d < sh.Dv; ++d) o[r * sh.Dv + d] = acc[r * sh.Dv + d] * inv;
        lse[r] = l[r] > 0 ? m[r] + std::log(l[r]) : T(INFINITY);  // +inf: a row that sees nothing has P = 0
      }
    }
  });
}

template <typename T>
void softmax_backward_impl(const Shape& sh, const T* Q, const T* K, const T* V, const T* dO, const T* LSE,
                           const T* Delta, T* dQ, T* dK, T* dV, T* dBias, T scale, const SoftmaxMod& mod, int64_t bq,
                           int64_t bk) {
  const int64_t nqb = (sh.Tq + bq - 1) / bq;
  const T cap = (T)mod.softcap;
  const T* bias = (const T*)mod.bias;
  const int64_t nb = sh.Tk + sh.Tq - 1;
  at::parallel_for(0, sh.B * sh.Hk, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> S(bq * bk), dP(bq * bk), th(cap > 0 ? bk : 0);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / sh.Hk, hk = item % sh.Hk;
      const T* k = K + (b * sh.Hk + hk) * sh.Tk * sh.D;
      const T* v = V + (b * sh.Hk + hk) * sh.Tk * sh.Dv;
      T* dk = dK + (b * sh.Hk + hk) * sh.Tk * sh.D;
      T* dv = dV + (b * sh.Hk + hk) * sh.Tk * sh.Dv;
      for (int64_t g = 0; g < sh.G; ++g) {
        const int64_t h = hk * sh.G + g;
        const T* bias_h = bias ? bias + h * nb : nullptr;
        T* dbias_h = dBias ? dBias + (b * sh.H + h) * nb : nullptr;
        for (int64_t qb = 0; qb < nqb; ++qb) {
          const int64_t i0 = qb * bq, rows = std::min(bq, sh.Tq - i0);
          const int64_t row0 = (b * sh.H + h) * sh.Tq + i0;
          const T* q = Q + row0 * sh.D;
          const T* d_o = dO + row0 * sh.Dv;
          T* dq = dQ + row0 * sh.D;
          int64_t klo, khi;
          sh.block(i0 + sh.off, i0 + rows - 1 + sh.off, klo, khi);
          for (int64_t j0 = klo; j0 < khi; j0 += bk) {
            const int64_t cols = std::min(bk, khi - j0);
            abt<T>(rows, cols, sh.D, scale, q, sh.D, k + j0 * sh.D, sh.D, T(0), S.data(), cols);
            abt<T>(rows, cols, sh.Dv, T(1), d_o, sh.Dv, v + j0 * sh.Dv, sh.Dv, T(0), dP.data(), cols);
            for (int64_t r = 0; r < rows; ++r) {
              T* s = S.data() + r * cols;
              T* dp = dP.data() + r * cols;
              const int64_t p = i0 + r + sh.off;
              int64_t lo, hi;
              // one visible key: |w| = 1 and dS = 0 exactly (not a rounding residue of dw − D)
              const bool single = sh.tile_row(p, j0, cols, lo, hi) == 1;
              if (hi > lo) {
                const int64_t n = hi - lo;
                T* sr = s + lo;
                T* dpr = dp + lo;
                modify_row<T>(sr, n, cap, bias_h ? bias_h + (j0 + lo - p + sh.Tk - 1) : nullptr,
                              cap > 0 ? th.data() : nullptr);
                const T lse = LSE[row0 + r], delta = Delta[row0 + r];
                if (mod.kind == SOFTMAX) {
#pragma omp simd
                  for (int64_t j = 0; j < n; ++j) {
                    const T pj = Math<T>::exp(sr[j] - lse);
                    sr[j] = pj;
                    dpr[j] = pj * (dpr[j] - delta);  // dS with respect to the modified score
                  }
                } else if (mod.kind == SIGNED) {
#pragma omp simd
                  for (int64_t j = 0; j < n; ++j) {
                    const T sg = sign_of<T>(sr[j]);
                    const T wj = sg * Math<T>::exp(std::abs(sr[j]) - lse);
                    sr[j] = wj;
                    dpr[j] = wj * (sg * dpr[j] - delta);
                  }
                } else {
                  const T b = (T)mod.sig_bias;
#pragma omp simd
                  for (int64_t j = 0; j < n; ++j) {
                    const T wj = sigmoid<T>(sr[j] + b);
                    sr[j] = wj;
                    dpr[j] = wj * (T(1) - wj) * dpr[j];
                  }
                }
                if (single && mod.kind != SIGMOID) dpr[0] = 0;
                if (cap > 0) {  // through the cap: d(c·tanh(x/c))/dx = 1 − tanh²
                  const T* t = th.data();
#pragma omp simd
                  for (int64_t j = 0; j < n; ++j) dpr[j] *= T(1) - t[j] * t[j];
                }
                if (dbias_h) {  // the bias is added to the raw score: its gradient is dS summed per offset
                  T* db = dbias_h + (j0 + lo - p + sh.Tk - 1);
#pragma omp simd
                  for (int64_t j = 0; j < n; ++j) db[j] += dpr[j];
                }
              }
              fill<T>(s, 0, lo, T(0));
              fill<T>(s, hi, cols, T(0));
              fill<T>(dp, 0, lo, T(0));
              fill<T>(dp, hi, cols, T(0));
            }
            atb_add<T>(cols, sh.Dv, rows, T(1), S.data(), cols, d_o, sh.Dv, dv + j0 * sh.Dv, sh.Dv);
            ab<T>(rows, sh.D, cols, scale, dP.data(), cols, k + j0 * sh.D, sh.D, T(1), dq, sh.D);
            atb_add<T>(cols, sh.D, rows, scale, dP.data(), cols, q, sh.D, dk + j0 * sh.D, sh.D);
          }
        }
      }
    }
  });
}

// the bias vector's data after checking it against the call, or null without one
const void* checked_bias(const std::optional<at::Tensor>& bias, const at::Tensor& q, const Shape& sh) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  TORCH_CHECK(bias->is_contiguous() && bias->scalar_type() == q.scalar_type(), "bias: contiguous, q's dtype");
  TORCH_CHECK(bias->dim() == 2 && bias->size(0) == sh.H && bias->size(1) == sh.Tk + sh.Tq - 1,
              "bias: [H, Tk + Tq - 1]");
  return bias->data_ptr();
}

SoftmaxMod softmax_mod(double softcap, const void* bias, int64_t kind, double sig_bias) {
  TORCH_CHECK(kind >= SOFTMAX && kind <= SIGMOID, "kind: 0 softmax, 1 signed, 2 sigmoid");
  return SoftmaxMod{softcap, bias, kind, sig_bias};
}

std::vector<at::Tensor> softmax_forward(at::Tensor q, at::Tensor k, at::Tensor v, double scale, bool causal,
                                        int64_t window, double softcap, std::optional<at::Tensor> bias, int64_t kind,
                                        double sig_bias, int64_t bq, int64_t bk) {
  check(q, k, v);
  Shape sh(q, k, v, causal, window);
  auto out = at::empty({sh.B, sh.H, sh.Tq, sh.Dv}, q.options());
  auto lse = at::empty({sh.B, sh.H, sh.Tq}, q.options());
  const void* bias_p = checked_bias(bias, q, sh);
  SoftmaxMod mod = softmax_mod(softcap, bias_p, kind, sig_bias);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "softmax_forward", [&] {
    softmax_forward_impl<scalar_t>(sh, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                   out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), (scalar_t)scale, mod, bq, bk);
  });
  return {out, lse};
}

std::vector<at::Tensor> softmax_backward(at::Tensor d_out, at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor out,
                                         at::Tensor lse, double scale, bool causal, int64_t window, double softcap,
                                         std::optional<at::Tensor> bias, bool bias_grad, int64_t kind,
                                         double sig_bias, int64_t bq, int64_t bk) {
  check(q, k, v);
  TORCH_CHECK(d_out.is_contiguous() && out.is_contiguous() && lse.is_contiguous(), "d_out, out, lse: contiguous");
  Shape sh(q, k, v, causal, window);
  auto dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  auto delta = (d_out * out).sum(-1).contiguous();
  const void* bias_p = checked_bias(bias, q, sh);
  at::Tensor dbias;
  if (bias_p && bias_grad) dbias = at::zeros({sh.B, sh.H, sh.Tk + sh.Tq - 1}, q.options());
  SoftmaxMod mod = softmax_mod(softcap, bias_p, kind, sig_bias);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "softmax_backward", [&] {
    softmax_backward_impl<scalar_t>(sh, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                    d_out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                                    delta.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                                    dv.data_ptr<scalar_t>(), dbias.defined() ? dbias.data_ptr<scalar_t>() : nullptr,
                                    (scalar_t)scale, mod, bq, bk);
  });
  return {dq, dk, dv, dbias.defined() ? dbias.sum(0) : dbias};
}

// ================================================================================================================
// LSSA / LSSAR (softplus attention, optionally re-weighted), with l2-normalised q, k inside the kernel
// ================================================================================================================

struct SoftplusArgs {
  bool length_scale;  // c_i = log(d_head)·log(N_i); else c_i = 1
  double log_d;
  double eps;
  bool reweight;   // LSSAR
  double power;    // p
  int64_t free_rows;
  bool qk_norm;
};

constexpr double L2_EPS = 1e-12;

// x̂ = x / max(‖x‖, ε) for `rows` rows of width d; norm[r] = ‖x_r‖
template <typename T>
void l2_rows(const T* x, int64_t rows, int64_t d, T* out, T* norm) {
  for (int64_t r = 0; r < rows; ++r) {
    T ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += x[r * d + c] * x[r * d + c];
    norm[r] = std::sqrt(ss);
    const T inv = T(1) / std::max<T>(norm[r], (T)L2_EPS);
    for (int64_t c = 0; c < d; ++c) out[r * d + c] = x[r * d + c] * inv;
  }
}

// g ← (g − x̂ (x̂·g)) / max(‖x‖, ε), without the projection where ‖x‖ < ε (F.normalize's autograd)
template <typename T>
void l2_backward_rows(const T* x_hat, const T* norm, int64_t rows, int64_t d, T* g) {
  for (int64_t r = 0; r < rows; ++r) {
    T dot = 0;
    for (int64_t c = 0; c < d; ++c) dot += x_hat[r * d + c] * g[r * d + c];
    if (norm[r] < (T)L2_EPS) dot = 0;  // ‖x‖ < ε: x̂ = x / ε is linear in x
    const T inv = T(1) / std::max<T>(norm[r], (T)L2_EPS);
    for (int64_t c = 0; c < d; ++c) g[r * d + c] = (g[r * d + c] - x_hat[r * d + c] * dot) * inv;
  }
}

// y ← x^p for x >= 0 (integral p up to 64: repeated squaring, a pass per bit; else exp(p·log x) via std::pow)
template <typename T>
void power_rows(const T* __restrict x, int64_t n, double p, T* __restrict y, T* __restrict tmp) {
  const double rp = std::round(p);
  if (rp == p && p >= 0 && p <= 64) {
    int64_t e = (int64_t)rp;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      y[j] = T(1);
      tmp[j] = x[j];
    }
    while (e > 0) {
      if (e & 1) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) y[j] *= tmp[j];
      }
      e >>= 1;
      if (e > 0) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) tmp[j] *= tmp[j];
      }
    }
  } else {
    for (int64_t j = 0; j < n; ++j) y[j] = x[j] > 0 ? (T)std::pow((double)x[j], p) : T(0);
  }
}

// Per row constants: visible count N, length scale c, offset O.
struct RowConst {
  double n, c, o;
};

inline RowConst row_const(const Shape& sh, const SoftplusArgs& a, int64_t p) {
  int64_t lo, hi;
  sh.row(p, lo, hi);
  const double n = (double)(hi - lo);
  const double c = a.length_scale ? a.log_d * std::log(n) : 1.0;
  return {n, c, n > (double)a.free_rows ? 1.0 : 0.0};
}

// u = softplus(c·s) in place of s, and (WithSigmoid) σ(c·s) = du/d(c·s) into sig
template <typename T, bool WithSigmoid>
inline void softplus_row(T* __restrict s, int64_t n, T c, T* __restrict sig) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T y = c * s[j];
    const T e = Math<T>::exp(-std::abs(y));
    s[j] = std::max(y, T(0)) + Math<T>::log1p_unit(e);
    if constexpr (WithSigmoid) sig[j] = (y >= 0 ? T(1) : e) / (T(1) + e);
  }
}

template <typename T>
struct SoftplusKernel {
  const Shape& sh;
  const SoftplusArgs& a;
  T scale;
  int64_t bq;

  // q̂ rows (normalised when qk_norm) of one block into qb (and their norms into qnorm)
  void queries(const T* q, int64_t rows, T* qb, T* qnorm) const {
    if (a.qk_norm) {
      l2_rows<T>(q, rows, sh.D, qb, qnorm);
    } else {
      std::memcpy(qb, q, sizeof(T) * rows * sh.D);
    }
  }
  void keys(const T* k, T* kb, T* knorm) const {
    if (a.qk_norm) {
      l2_rows<T>(k, sh.Tk, sh.D, kb, knorm);
    } else {
      std::memcpy(kb, k, sizeof(T) * sh.Tk * sh.D);
    }
  }

  void forward(const T* Q, const T* K, const T* V, T* O, T* Uden, T* Rden) const {
    const int64_t nqb = (sh.Tq + bq - 1) / bq;
    at::parallel_for(0, sh.B * sh.Hk, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> kh(sh.Tk * sh.D), knorm(sh.Tk), qh(bq * sh.D), qnorm(bq), S, tmp, rr;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / sh.Hk, hk = item % sh.Hk;
        keys(K + (b * sh.Hk + hk) * sh.Tk * sh.D, kh.data(), knorm.data());
        const T* v = V + (b * sh.Hk + hk) * sh.Tk * sh.Dv;
        for (int64_t g = 0; g < sh.G; ++g) {
          const int64_t h = hk * sh.G + g;
          for (int64_t qb = 0; qb < nqb; ++qb) {
            const int64_t i0 = qb * bq, rows = std::min(bq, sh.Tq - i0);
            const int64_t row0 = (b * sh.H + h) * sh.Tq + i0;
            queries(Q + row0 * sh.D, rows, qh.data(), qnorm.data());
            int64_t klo, khi;
            sh.block(i0 + sh.off, i0 + rows - 1 + sh.off, klo, khi);
            const int64_t w = khi - klo;
            T* o = O + row0 * sh.Dv;
            if (w <= 0) {  // no query of the block sees a key: zero rows (as the reference's 0 / (0 + ε))
              std::fill(o, o + rows * sh.Dv, T(0));
              for (int64_t r = 0; r < rows; ++r) {
                Uden[row0 + r] = (T)a.eps;
                if (a.reweight) Rden[row0 + r] = (T)a.eps;
              }
              continue;
            }
            S.resize(rows * w);
            tmp.resize(w);
            rr.resize(w);
            abt<T>(rows, w, sh.D, scale, qh.data(), sh.D, kh.data() + klo * sh.D, sh.D, T(0), S.data(), w);
            for (int64_t r = 0; r < rows; ++r) {
              T* s = S.data() + r * w;
              const int64_t p = i0 + r + sh.off;
              int64_t lo, hi;
              sh.tile_row(p, klo, w, lo, hi);
              const int64_t n = hi - lo;
              const RowConst rc = row_const(sh, a, p);
              T* u = s + lo;
              softplus_row<T, false>(u, n, (T)rc.c, nullptr);
              T usum = 0;
#pragma omp simd reduction(+ : usum)
              for (int64_t j = 0; j < n; ++j) usum += u[j];
              const T uden = usum + (T)a.eps;
              Uden[row0 + r] = uden;
              T rsum = 0;
              if (a.reweight) {
                const T f = (T)rc.n / uden, o = (T)rc.o;
#pragma omp simd
                for (int64_t j = 0; j < n; ++j) u[j] = std::max(u[j] * f - o, T(0));
                power_rows<T>(u, n, a.power, rr.data(), tmp.data());
#pragma omp simd reduction(+ : rsum)
                for (int64_t j = 0; j < n; ++j) {
                  u[j] = rr[j];
                  rsum += rr[j];
                }
                Rden[row0 + r] = rsum + (T)a.eps;
              }
              fill<T>(s, 0, lo, T(0));
              fill<T>(s, hi, w, T(0));
            }
            ab<T>(rows, sh.Dv, w, T(1), S.data(), w, v + klo * sh.Dv, sh.Dv, T(0), o, sh.Dv);
            for (int64_t r = 0; r < rows; ++r) {
              const T inv = T(1) / (a.reweight ? Rden[row0 + r] : Uden[row0 + r]);
              for (int64_t d = 0; d < sh.Dv; ++d) o[r * sh.Dv + d] *= inv;
            }
          }
        }
      }
    });
  }

  void backward(const T* Q, const T* K, const T* V, const T* dO, const T* Delta, const T* Uden, const T* Rden,
                T* dQ, T* dK, T* dV) const {
    const int64_t nqb = (sh.Tq + bq - 1) / bq;
    at::parallel_for(0, sh.B * sh.Hk, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> kh(sh.Tk * sh.D), knorm(sh.Tk), qh(bq * sh.D), qnorm(bq), S, dP, SG, tmp, slope, pos;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / sh.Hk, hk = item % sh.Hk;
        const T* k = K + (b * sh.Hk + hk) * sh.Tk * sh.D;
        keys(k, kh.data(), knorm.data());
        const T* v = V + (b * sh.Hk + hk) * sh.Tk * sh.Dv;
        T* dk = dK + (b * sh.Hk + hk) * sh.Tk * sh.D;  // accumulates ∂L/∂k̂, mapped to ∂L/∂k at the end
        T* dv = dV + (b * sh.Hk + hk) * sh.Tk * sh.Dv;
        for (int64_t g = 0; g < sh.G; ++g) {
          const int64_t h = hk * sh.G + g;
          for (int64_t qb = 0; qb < nqb; ++qb) {
            const int64_t i0 = qb * bq, rows = std::min(bq, sh.Tq - i0);
            const int64_t row0 = (b * sh.H + h) * sh.Tq + i0;
            queries(Q + row0 * sh.D, rows, qh.data(), qnorm.data());
            const T* d_o = dO + row0 * sh.Dv;
            T* dq = dQ + row0 * sh.D;
            int64_t klo, khi;
            sh.block(i0 + sh.off, i0 + rows - 1 + sh.off, klo, khi);
            const int64_t w = khi - klo;
            if (w <= 0) continue;  // no key visible to the block: its gradients are 0
            S.resize(rows * w);
            dP.resize(rows * w);
            SG.resize(rows * w);
            tmp.resize(w);
            slope.resize(w);
            pos.resize(w);
            abt<T>(rows, w, sh.D, scale, qh.data(), sh.D, kh.data() + klo * sh.D, sh.D, T(0), S.data(), w);
            abt<T>(rows, w, sh.Dv, T(1), d_o, sh.Dv, v + klo * sh.Dv, sh.Dv, T(0), dP.data(), w);
            for (int64_t r = 0; r < rows; ++r) {
              T* s = S.data() + r * w;
              T* dp = dP.data() + r * w;
              T* sg = SG.data() + r * w;
              const int64_t p = i0 + r + sh.off;
              int64_t lo, hi;
              sh.tile_row(p, klo, w, lo, hi);
              const int64_t n = hi - lo;
              const RowConst rc = row_const(sh, a, p);
              const T c = (T)rc.c, uden = Uden[row0 + r], delta = Delta[row0 + r];
              T* u = s + lo;
              T* dw = dp + lo;
              T* sig = sg + lo;
              softplus_row<T, true>(u, n, c, sig);
              if (!a.reweight) {
                // w = u / U; ds = σ(c·s)·c·(dw − D) / U; dv gets w
                const T inv = T(1) / uden;
#pragma omp simd
                for (int64_t j = 0; j < n; ++j) {
                  u[j] *= inv;
                  dw[j] = sig[j] * c * (dw[j] - delta) * inv;
                }
              } else {
                // see ReweightedSoftplusRule: x = N·A − O, P = ReLU(x)^(p−1), y = P·(dw − D),
                // S = Σ_j (x + O)·y over ReLU(x) > 0, ds = σ(c·s)·(y − S/N)·p·c·N / (R·U)
                const T f = (T)rc.n / uden, o = (T)rc.o, rden = Rden[row0 + r];
#pragma omp simd
                for (int64_t j = 0; j < n; ++j) pos[j] = std::max(u[j] * f - o, T(0));
                power_rows<T>(pos.data(), n, a.power - 1.0, slope.data(), tmp.data());
                if (a.power <= 1.0) {
                  for (int64_t j = 0; j < n; ++j)
                    if (pos[j] == 0) slope[j] = 0;  // ReLU's zero derivative, not 0^(p−1)
                }
                T ssum = 0;
#pragma omp simd reduction(+ : ssum)
                for (int64_t j = 0; j < n; ++j) {
                  const T y = slope[j] * (dw[j] - delta);
                  u[j] = slope[j] * pos[j] / rden;  // w, for dv
                  dw[j] = y;
                  ssum += (pos[j] + o) * y;
                }
                const T s_n = ssum / (T)rc.n;
                const T factor = (T)(a.power * rc.c * rc.n) / (rden * uden);
#pragma omp simd
                for (int64_t j = 0; j < n; ++j) dw[j] = sig[j] * (dw[j] - s_n) * factor;
              }
              fill<T>(s, 0, lo, T(0));
              fill<T>(s, hi, w, T(0));
              fill<T>(dp, 0, lo, T(0));
              fill<T>(dp, hi, w, T(0));
            }
            atb_add<T>(w, sh.Dv, rows, T(1), S.data(), w, d_o, sh.Dv, dv + klo * sh.Dv, sh.Dv);
            ab<T>(rows, sh.D, w, scale, dP.data(), w, kh.data() + klo * sh.D, sh.D, T(1), dq, sh.D);
            atb_add<T>(w, sh.D, rows, scale, dP.data(), w, qh.data(), sh.D, dk + klo * sh.D, sh.D);
            if (a.qk_norm) l2_backward_rows<T>(qh.data(), qnorm.data(), rows, sh.D, dq);
          }
        }
        if (a.qk_norm) l2_backward_rows<T>(kh.data(), knorm.data(), sh.Tk, sh.D, dk);
      }
    });
  }
};

SoftplusArgs softplus_args(bool length_scale, double log_d, double eps, bool reweight, double power,
                           int64_t free_rows, bool qk_norm) {
  return SoftplusArgs{length_scale, log_d, eps, reweight, power, free_rows, qk_norm};
}

std::vector<at::Tensor> softplus_forward(at::Tensor q, at::Tensor k, at::Tensor v, double scale, bool causal,
                                         int64_t window, bool length_scale, double log_d, double eps, bool reweight,
                                         double power, int64_t free_rows, bool qk_norm, int64_t bq) {
  check(q, k, v);
  Shape sh(q, k, v, causal, window);
  SoftplusArgs a = softplus_args(length_scale, log_d, eps, reweight, power, free_rows, qk_norm);
  auto out = at::empty({sh.B, sh.H, sh.Tq, sh.Dv}, q.options());
  auto uden = at::empty({sh.B, sh.H, sh.Tq}, q.options());
  auto rden = at::empty({sh.B, sh.H, reweight ? sh.Tq : 0}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "softplus_forward", [&] {
    SoftplusKernel<scalar_t> kern{sh, a, (scalar_t)scale, bq};
    kern.forward(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                 uden.data_ptr<scalar_t>(), reweight ? rden.data_ptr<scalar_t>() : nullptr);
  });
  return {out, uden, rden};
}

std::vector<at::Tensor> softplus_backward(at::Tensor d_out, at::Tensor q, at::Tensor k, at::Tensor v,
                                          at::Tensor out, at::Tensor uden, at::Tensor rden, double scale, bool causal,
                                          int64_t window, bool length_scale, double log_d, double eps, bool reweight,
                                          double power, int64_t free_rows, bool qk_norm, int64_t bq) {
  check(q, k, v);
  TORCH_CHECK(d_out.is_contiguous() && out.is_contiguous(), "d_out, out: contiguous");
  Shape sh(q, k, v, causal, window);
  SoftplusArgs a = softplus_args(length_scale, log_d, eps, reweight, power, free_rows, qk_norm);
  auto dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  auto delta = (d_out * out).sum(-1).contiguous();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "softplus_backward", [&] {
    SoftplusKernel<scalar_t> kern{sh, a, (scalar_t)scale, bq};
    kern.backward(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                  d_out.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), uden.data_ptr<scalar_t>(),
                  reweight ? rden.data_ptr<scalar_t>() : nullptr, dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                  dv.data_ptr<scalar_t>());
  });
  return {dq, dk, dv};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("blas_available", &blas_available);
  m.def("softmax_forward", &softmax_forward);
  m.def("softmax_backward", &softmax_backward);
  m.def("softplus_forward", &softplus_forward);
  m.def("softplus_backward", &softplus_backward);
}
