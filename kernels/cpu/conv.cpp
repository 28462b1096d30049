// CPU conv2d: im2col + GEMM (kernels/conv.h gives the math). Images are processed in
// chunks whose column matrices sit side by side, [C*kh*kw, nb*Ho*Wo], so one GEMM covers
// the chunk: AlexNet's later layers have only 13x13 outputs, far too narrow for an
// efficient GEMM per image. im2col/col2im are parallel over rows/channels; the GEMM is
// threaded by the BLAS. A 1x1, stride-1, unpadded convolution needs no im2col.
#include "kernels/conv.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "kernels/gemm.h"

namespace kernels {
namespace {

bool is_pointwise(const Conv2dShape& s) {
  return s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0;
}

// Scratch memory that lives as long as the thread: the column matrices are tens of MB,
// and fresh pages from the OS on every call cost more than the im2col that fills them.
template <typename T> T* scratch(std::size_t n, int slot) {
  thread_local std::vector<T> buffers[2];
  std::vector<T>& b = buffers[slot];
  if (b.size() < n) b.resize(n);
  return b.data();
}

// The column matrix of images [n0, n0 + nb) in col, [C*kh*kw, nb*Ho*Wo]: image k's
// columns start at column k*Ho*Wo. A pointwise convolution's columns are the input itself.
template <typename T>
void chunk_columns(const T* x, int64_t n0, int64_t nb, T* col, const Conv2dShape& s) {
  const int64_t K = s.C * s.kh * s.kw, P = s.Ho * s.Wo, ld = nb * P;
  for (int64_t k = 0; k < nb; ++k) {
    const T* xn = x + (n0 + k) * s.C * s.H * s.W;
    if (is_pointwise(s))
      for (int64_t c = 0; c < K; ++c) std::memcpy(col + c * ld + k * P, xn + c * P, sizeof(T) * P);
    else
      im2col_cpu(xn, col + k * P, s, ld);
  }
}

// Images per chunk: the column matrix stays around 16M elements.
int64_t chunk_images(const Conv2dShape& s) {
  const int64_t per_image = s.C * s.kh * s.kw * s.Ho * s.Wo;
  return std::max<int64_t>(1, std::min<int64_t>(s.N, (int64_t(1) << 24) / std::max<int64_t>(per_image, 1)));
}

}  // namespace

template <typename T> void im2col_cpu(const T* x, T* col, const Conv2dShape& s, int64_t ld) {
  const int64_t rows = s.C * s.kh * s.kw, cols = s.Ho * s.Wo;
#pragma omp parallel for if (rows * cols > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c = r / (s.kh * s.kw), i = (r / s.kw) % s.kh, j = r % s.kw;
    const T* xc = x + c * s.H * s.W;
    T* out = col + r * ld;
    for (int64_t oh = 0; oh < s.Ho; ++oh) {
      const int64_t ih = oh * s.sh - s.ph + i;
      T* o = out + oh * s.Wo;
      if (ih < 0 || ih >= s.H) {
        for (int64_t ow = 0; ow < s.Wo; ++ow) o[ow] = T(0);
        continue;
      }
      const T* xr = xc + ih * s.W;
      if (s.sw == 1) {  // contiguous run with zero borders
        const int64_t lo = std::min<int64_t>(s.Wo, std::max<int64_t>(0, s.pw - j));
        const int64_t hi = std::max<int64_t>(lo, std::min<int64_t>(s.Wo, s.W + s.pw - j));
        for (int64_t ow = 0; ow < lo; ++ow) o[ow] = T(0);
        if (hi > lo) std::memcpy(o + lo, xr + lo - s.pw + j, static_cast<std::size_t>(hi - lo) * sizeof(T));
        for (int64_t ow = hi; ow < s.Wo; ++ow) o[ow] = T(0);
        continue;
      }
      for (int64_t ow = 0; ow < s.Wo; ++ow) {
        const int64_t iw = ow * s.sw - s.pw + j;
        o[ow] = (iw >= 0 && iw < s.W) ? xr[iw] : T(0);
      }
    }
  }
}

template <typename T> void col2im_cpu(const T* col, T* x, const Conv2dShape& s, int64_t ld) {
  const int64_t cols = s.Ho * s.Wo;
  // Parallel over channels: rows of one channel scatter only into that channel's plane.
#pragma omp parallel for if (s.C * s.kh * s.kw * cols > (1 << 15))
  for (int64_t c = 0; c < s.C; ++c) {
    T* xc = x + c * s.H * s.W;
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) {
        const T* in = col + ((c * s.kh + i) * s.kw + j) * ld;
        for (int64_t oh = 0; oh < s.Ho; ++oh) {
          const int64_t ih = oh * s.sh - s.ph + i;
          if (ih < 0 || ih >= s.H) continue;
          T* xr = xc + ih * s.W;
          const T* r = in + oh * s.Wo;
          for (int64_t ow = 0; ow < s.Wo; ++ow) {
            const int64_t iw = ow * s.sw - s.pw + j;
            if (iw >= 0 && iw < s.W) xr[iw] += r[ow];
          }
        }
      }
  }
}

template <typename T>
void conv2d_forward_cpu(const T* x, const T* w, const T* b, T* y, const Conv2dShape& s) {
  const int64_t K = s.C * s.kh * s.kw, P = s.Ho * s.Wo, in_size = s.C * s.H * s.W;
  const bool pointwise = is_pointwise(s);
  const int64_t nb_max = chunk_images(s);
  T* col = pointwise && nb_max == 1 ? nullptr : scratch<T>(static_cast<std::size_t>(K * P * nb_max), 0);
  T* out = nb_max > 1 ? scratch<T>(static_cast<std::size_t>(s.Co * P * nb_max), 1) : nullptr;
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, s.N - n0), ld = nb * P;
    const T* cols = x + n0 * in_size;  // pointwise, one image: x[n] is its own column matrix
    if (!(pointwise && nb == 1)) {
      chunk_columns(x, n0, nb, col, s);
      cols = col;
    }
    // One image: write straight into y. Several: GEMM into [Co, nb*P], then scatter.
    T* dst = nb == 1 ? y + n0 * s.Co * P : out;
    gemm_cpu<T>(false, false, s.Co, ld, K, T(1), w, K, cols, ld, T(0), dst, ld);
#pragma omp parallel for collapse(2) if (nb * s.Co * P > (1 << 15))
    for (int64_t k = 0; k < nb; ++k)
      for (int64_t o = 0; o < s.Co; ++o) {
        T* yo = y + ((n0 + k) * s.Co + o) * P;
        const T bias = b != nullptr ? b[o] : T(0);
        if (nb == 1) {
          if (b != nullptr)
            for (int64_t p = 0; p < P; ++p) yo[p] += bias;
        } else {
          const T* src = dst + o * ld + k * P;
          for (int64_t p = 0; p < P; ++p) yo[p] = src[p] + bias;
        }
      }
  }
}

template <typename T>
void conv2d_backward_cpu(const T* x, const T* w, const T* gy, T* gx, T* gw, T* gb, const Conv2dShape& s) {
  const int64_t K = s.C * s.kh * s.kw, P = s.Ho * s.Wo, in_size = s.C * s.H * s.W;
  const bool pointwise = is_pointwise(s);
  if (gw != nullptr)  // accumulated over chunks below; also correct for an empty batch
    for (int64_t i = 0; i < s.Co * K; ++i) gw[i] = T(0);
  if (gb != nullptr) {
    for (int64_t o = 0; o < s.Co; ++o) {
      double acc = 0;
      for (int64_t n = 0; n < s.N; ++n) {
        const T* g = gy + (n * s.Co + o) * P;
        for (int64_t p = 0; p < P; ++p) acc += g[p];
      }
      gb[o] = static_cast<T>(acc);
    }
  }
  if (gx == nullptr && gw == nullptr) return;
  const int64_t nb_max = chunk_images(s);
  T* col = scratch<T>(static_cast<std::size_t>(K * P * nb_max), 0);
  T* gyb = scratch<T>(static_cast<std::size_t>(s.Co * P * nb_max), 1);
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, s.N - n0), ld = nb * P;
    // gy of the chunk as one [Co, nb*P] matrix.
#pragma omp parallel for collapse(2) if (nb * s.Co * P > (1 << 15))
    for (int64_t k = 0; k < nb; ++k)
      for (int64_t o = 0; o < s.Co; ++o)
        std::memcpy(gyb + o * ld + k * P, gy + ((n0 + k) * s.Co + o) * P, sizeof(T) * P);
    if (gw != nullptr) {
      chunk_columns(x, n0, nb, col, s);
      // gW[Co, K] += gy_b[Co, nb*P] * col_b[K, nb*P]^T
      gemm_cpu<T>(false, true, s.Co, K, ld, T(1), gyb, ld, col, ld, T(1), gw, K);
    }
    if (gx != nullptr) {
      // dcol_b[K, nb*P] = W[Co, K]^T * gy_b[Co, nb*P], then scattered back per image.
      gemm_cpu<T>(true, false, K, ld, s.Co, T(1), w, K, gyb, ld, T(0), col, ld);
      for (int64_t k = 0; k < nb; ++k) {
        T* gxn = gx + (n0 + k) * in_size;
        if (pointwise) {
          for (int64_t c = 0; c < K; ++c) std::memcpy(gxn + c * P, col + c * ld + k * P, sizeof(T) * P);
        } else {
          std::memset(gxn, 0, sizeof(T) * static_cast<std::size_t>(in_size));
          col2im_cpu(col + k * P, gxn, s, ld);
        }
      }
    }
  }
}

#define INSTANTIATE(T)                                                                       \
  template void im2col_cpu<T>(const T*, T*, const Conv2dShape&, int64_t);                    \
  template void col2im_cpu<T>(const T*, T*, const Conv2dShape&, int64_t);                    \
  template void conv2d_forward_cpu<T>(const T*, const T*, const T*, T*, const Conv2dShape&); \
  template void conv2d_backward_cpu<T>(const T*, const T*, const T*, T*, T*, T*, const Conv2dShape&);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
