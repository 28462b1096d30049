// CUDA concatenation and its adjoint (kernels/cat.h). With the tensors viewed as
// [outer, size_k * inner], input k fills columns [offset_k, offset_k + size_k) * inner of
// every row of y = [outer, total * inner]; split copies them back out. Memory-bound: each
// input is a strided 2-D copy ("piece") of `outer` rows. Pieces whose rows are at least
// kKernelRowBytes wide go in one launch of copy_pieces_kernel (16 at a time): a thread
// moves up to kUnroll units of 16, 8 or 4 bytes per trip (the widest that every pointer,
// width and pitch allows), all loads of a trip before its stores. Narrower rows go as
// cudaMemcpy2DAsync, all on the engine's stream. (SqueezeNet's Fire concatenation at
// batch 64 on an H100: cudaMemcpy2DAsync ran at 0.57 of the bandwidth of a flat copy of
// the same bytes, the kernel at 0.97.)
#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/cat.h"
#include "kernels/common.h"
#include "kernels/cuda/check.cuh"

namespace kernels {
namespace {

constexpr int kUnroll = 4;                  // units in flight per thread and trip
constexpr int kMaxThreads = 256;            // per block, at least 32
constexpr int kMaxPieces = 16;              // per launch (blockIdx.z)
constexpr std::size_t kKernelRowBytes = 512;  // narrower rows: cudaMemcpy2DAsync

// One strided copy: rows of `width` units from src (row r at r * spitch units) to dst
// (r * dpitch).
struct Piece {
  const char* src;
  char* dst;
  int64_t width, spitch, dpitch;
};
struct Pieces {
  Piece p[kMaxPieces];
  int64_t rows;
};

// A launch's shape: grid (x: blocks along a row, y: rows, z: pieces) and threads per block.
struct CopyGrid {
  unsigned x, y, z;
  int threads;
};

// Thread `first` of `stride` along the rows of piece pc, rows row0, row0 + row_step, ...:
// the per-thread code of copy_pieces_kernel, unit type U.
template <typename U>
ENGINE_HD void copy_piece_thread(const Piece& pc, int64_t rows, int64_t row0, int64_t row_step, int64_t first,
                                 int64_t stride) {
  const U* src = reinterpret_cast<const U*>(pc.src);
  U* dst = reinterpret_cast<U*>(pc.dst);
  for (int64_t r = row0; r < rows; r += row_step) {
    const U* s = src + r * pc.spitch;
    U* d = dst + r * pc.dpitch;
    cuda::strided_unrolled<kUnroll>(
        first, stride, pc.width, [&](int64_t i) { return s[i]; }, [&](int64_t i, const U& v) { d[i] = v; });
  }
}

template <typename U> __global__ void copy_pieces_kernel(Pieces ps) {
  copy_piece_thread<U>(ps.p[blockIdx.z], ps.rows, blockIdx.y, gridDim.y,
                       static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                       static_cast<int64_t>(blockDim.x) * gridDim.x);
}

// A strided copy in bytes: `rows` rows of `width` bytes, pitches spitch and dpitch.
struct ByteCopy {
  const void* src;
  void* dst;
  std::size_t width, spitch, dpitch;
};

// The widest unit (16, 8 or 4 bytes, else `elem`) that divides every address, width and
// pitch of the copies.
std::size_t unit_bytes(const std::vector<ByteCopy>& cs, std::size_t elem) {
  for (std::size_t u : {std::size_t(16), std::size_t(8), std::size_t(4)}) {
    if (u <= elem) return elem;
    bool ok = true;
    for (const ByteCopy& c : cs)
      ok = ok && reinterpret_cast<std::uintptr_t>(c.src) % u == 0 && reinterpret_cast<std::uintptr_t>(c.dst) % u == 0 &&
           c.width % u == 0 && c.spitch % u == 0 && c.dpitch % u == 0;
    if (ok) return u;
  }
  return elem;
}

// The grid of one launch over at most kMaxPieces copies of `rows` rows, the widest
// `max_width` units.
CopyGrid copy_grid(int64_t max_width, int64_t rows, std::size_t pieces) {
  const int64_t per_thread_row = (max_width + kUnroll - 1) / kUnroll;  // threads a row can use
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, (per_thread_row + 31) / 32 * 32)));
  const int64_t x = (per_thread_row + threads - 1) / threads;
  return {static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(x, 1), 65535 * 16)),
          static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(rows, 1), 65535)), static_cast<unsigned>(pieces),
          threads};
}

// The launches for copies cs (each `rows` rows), unit u bytes: f(pieces, grid) per batch
// of kMaxPieces.
template <typename F> void for_each_launch(const std::vector<ByteCopy>& cs, int64_t rows, std::size_t u, F f) {
  for (std::size_t k0 = 0; k0 < cs.size(); k0 += kMaxPieces) {
    Pieces ps{};
    ps.rows = rows;
    const std::size_t n = std::min<std::size_t>(kMaxPieces, cs.size() - k0);
    int64_t max_width = 0;
    for (std::size_t k = 0; k < n; ++k) {
      const ByteCopy& c = cs[k0 + k];
      ps.p[k] = {static_cast<const char*>(c.src), static_cast<char*>(c.dst), static_cast<int64_t>(c.width / u),
                 static_cast<int64_t>(c.spitch / u), static_cast<int64_t>(c.dpitch / u)};
      max_width = std::max(max_width, ps.p[k].width);
    }
    f(ps, copy_grid(max_width, rows, n));
  }
}

// f(U{}) for the unit of u bytes: 16, 8 or 4 (float and double copies never take less).
template <typename F> void with_unit(std::size_t u, F f) {
  switch (u) {
    case 16: f(uint4{}); break;
    case 8: f(uint2{}); break;
    default: f(unsigned{}); break;
  }
}

// Whether the copy's rows lie back to back at both ends: one plain copy.
bool contiguous(const ByteCopy& c, int64_t rows) { return rows == 1 || (c.dpitch == c.width && c.spitch == c.width); }

// dst[r * dpitch, + width) = src[r * spitch, + width) for r < rows (bytes), device to
// device on the engine's stream: a plain copy when the rows are contiguous, else
// cudaMemcpy2DAsync (one row at a time past its pitch limit).
void copy_rows(const ByteCopy& c, int64_t rows) {
  if (c.width == 0 || rows <= 0) return;
  if (contiguous(c, rows)) {
    CUDA_CHECK(cudaMemcpyAsync(c.dst, c.src, c.width * static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice,
                               cuda::stream()));
    return;
  }
  if (c.dpitch <= static_cast<std::size_t>(INT_MAX) && c.spitch <= static_cast<std::size_t>(INT_MAX)) {
    CUDA_CHECK(cudaMemcpy2DAsync(c.dst, c.dpitch, c.src, c.spitch, c.width, static_cast<std::size_t>(rows),
                                 cudaMemcpyDeviceToDevice, cuda::stream()));
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(c.dst) + static_cast<std::size_t>(r) * c.dpitch,
                               static_cast<const char*>(c.src) + static_cast<std::size_t>(r) * c.spitch, c.width,
                               cudaMemcpyDeviceToDevice, cuda::stream()));
}

// Runs the copies: contiguous ones and narrow rows by copy_rows, the rest in kernel launches.
void run_copies(const std::vector<ByteCopy>& all, int64_t rows, std::size_t elem) {
  if (rows <= 0) return;
  std::vector<ByteCopy> wide;
  for (const ByteCopy& c : all) {
    if (c.width == 0) continue;
    if (contiguous(c, rows) || c.width < kKernelRowBytes) copy_rows(c, rows);
    else wide.push_back(c);
  }
  if (wide.empty()) return;
  with_unit(unit_bytes(wide, elem), [&](auto unit) {
    using U = decltype(unit);
    for_each_launch(wide, rows, sizeof(U), [&](const Pieces& ps, const CopyGrid& g) {
      copy_pieces_kernel<U><<<dim3(g.x, g.y, g.z), g.threads, 0, cuda::stream()>>>(ps);
      CUDA_CHECK_LAUNCH();
    });
  });
}

// f(k, offset, block, row) for input k: its first column of y (elements), its block of
// each row and y's row (bytes).
template <typename T, typename F>
void for_each_block(const std::vector<int64_t>& sizes, int64_t inner, F f) {
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  const std::size_t row = static_cast<std::size_t>(total * inner) * sizeof(T);
  int64_t offset = 0;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    f(k, offset * inner, static_cast<std::size_t>(sizes[k] * inner) * sizeof(T), row);
    offset += sizes[k];
  }
}

template <typename T>
std::vector<ByteCopy> cat_copies(const std::vector<const T*>& xs, const std::vector<int64_t>& sizes, T* y,
                                 int64_t inner) {
  std::vector<ByteCopy> cs;
  for_each_block<T>(sizes, inner, [&](std::size_t k, int64_t offset, std::size_t block, std::size_t row) {
    cs.push_back({xs[k], y + offset, block, block, row});
  });
  return cs;
}

template <typename T>
std::vector<ByteCopy> split_copies(const T* y, const std::vector<T*>& xs, const std::vector<int64_t>& sizes,
                                   int64_t inner) {
  std::vector<ByteCopy> cs;
  for_each_block<T>(sizes, inner, [&](std::size_t k, int64_t offset, std::size_t block, std::size_t row) {
    if (xs[k] != nullptr) cs.push_back({y + offset, xs[k], block, row, block});
  });
  return cs;
}

// The kernel launches' per-thread code on the host, thread by thread over every block of
// each launch (grid_x, when non-zero, replaces the launch's blocks along a row; grid_y
// its rows), every copy going through the kernel whatever its width.
void run_copies_on_host(const std::vector<ByteCopy>& cs, int64_t rows, std::size_t elem, unsigned grid_x,
                        unsigned grid_y) {
  if (rows <= 0 || cs.empty()) return;
  with_unit(unit_bytes(cs, elem), [&](auto unit) {
    using U = decltype(unit);
    for_each_launch(cs, rows, sizeof(U), [&](const Pieces& ps, CopyGrid g) {
      if (grid_x != 0) g.x = grid_x;
      if (grid_y != 0) g.y = grid_y;
      for (unsigned z = 0; z < g.z; ++z)
        for (unsigned by = 0; by < g.y; ++by)
          for (int64_t t = 0; t < static_cast<int64_t>(g.x) * g.threads; ++t)
            copy_piece_thread<U>(ps.p[z], ps.rows, by, g.y, t, static_cast<int64_t>(g.x) * g.threads);
    });
  });
}

}  // namespace

template <typename T>
void cat_cuda(const std::vector<const T*>& xs, const std::vector<int64_t>& sizes, T* y, int64_t outer,
              int64_t inner) {
  run_copies(cat_copies(xs, sizes, y, inner), outer, sizeof(T));
}

template <typename T>
void split_cuda(const T* y, const std::vector<T*>& xs, const std::vector<int64_t>& sizes, int64_t outer,
                int64_t inner) {
  run_copies(split_copies(y, xs, sizes, inner), outer, sizeof(T));
}

template <typename T>
void cat_cuda_on_host(const std::vector<const T*>& xs, const std::vector<int64_t>& sizes, T* y, int64_t outer,
                      int64_t inner, unsigned grid_x, unsigned grid_y) {
  run_copies_on_host(cat_copies(xs, sizes, y, inner), outer, sizeof(T), grid_x, grid_y);
}

template <typename T>
void split_cuda_on_host(const T* y, const std::vector<T*>& xs, const std::vector<int64_t>& sizes, int64_t outer,
                        int64_t inner, unsigned grid_x, unsigned grid_y) {
  run_copies_on_host(split_copies(y, xs, sizes, inner), outer, sizeof(T), grid_x, grid_y);
}

#define INSTANTIATE(T)                                                                                        \
  template void cat_cuda<T>(const std::vector<const T*>&, const std::vector<int64_t>&, T*, int64_t, int64_t); \
  template void split_cuda<T>(const T*, const std::vector<T*>&, const std::vector<int64_t>&, int64_t, int64_t); \
  template void cat_cuda_on_host<T>(const std::vector<const T*>&, const std::vector<int64_t>&, T*, int64_t,   \
                                    int64_t, unsigned, unsigned);                                           \
  template void split_cuda_on_host<T>(const T*, const std::vector<T*>&, const std::vector<int64_t>&, int64_t,  \
                                      int64_t, unsigned, unsigned);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
