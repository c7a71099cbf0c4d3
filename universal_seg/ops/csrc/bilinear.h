// Bilinear corner geometry of one sampling location, shared by the CPU and CUDA kernels.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define US_HOST_DEVICE __host__ __device__ __forceinline__
#define US_UNROLL _Pragma("unroll")
#else
#define US_HOST_DEVICE inline
#define US_UNROLL
#endif

namespace universal_seg {

// The four neighbours of a sampling point, in the order (h0, w0), (h0, w0+1), (h0+1, w0), (h0+1, w0+1).
// offset[k] is the flat position index inside value's S axis (level start included), or -1 for a corner
// outside the level (zero padding). weight[k] is the bilinear weight; dh[k] / dw[k] are its derivatives
// with respect to the pixel coordinates h and w (for the location gradient).
template <typename acc_t>
struct BilinearCorners {
  int64_t offset[4];
  acc_t weight[4];
  acc_t dh[4];
  acc_t dw[4];
};

// Fills `c` for the normalised location (x, y) in a level of size H x W starting at `level_start`.
// Returns false when the point lies entirely outside the level (every corner padded, or x / y not finite),
// in which case the sample is 0 and contributes no gradient.
template <typename acc_t>
US_HOST_DEVICE bool bilinear_corners(acc_t x, acc_t y, int64_t H, int64_t W, int64_t level_start,
                                     BilinearCorners<acc_t>& c) {
  const acc_t h = y * static_cast<acc_t>(H) - acc_t(0.5);
  const acc_t w = x * static_cast<acc_t>(W) - acc_t(0.5);
  // Written so that NaN fails the test: floor(NaN) must never reach an integer cast.
  if (!(h > acc_t(-1) && w > acc_t(-1) && h < static_cast<acc_t>(H) && w < static_cast<acc_t>(W))) return false;
  const int64_t h0 = static_cast<int64_t>(floor(h));
  const int64_t w0 = static_cast<int64_t>(floor(w));
  const acc_t lh = h - static_cast<acc_t>(h0), lw = w - static_cast<acc_t>(w0);
  const acc_t hh = acc_t(1) - lh, hw = acc_t(1) - lw;
  const acc_t weight[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
  const acc_t dh[4] = {-hw, -lw, hw, lw};
  const acc_t dw[4] = {-hh, hh, -lh, lh};
US_UNROLL
  for (int k = 0; k < 4; ++k) {
    const int64_t hk = h0 + (k >> 1), wk = w0 + (k & 1);
    const bool inside = hk >= 0 && hk < H && wk >= 0 && wk < W;
    c.offset[k] = inside ? level_start + hk * W + wk : -1;
    c.weight[k] = weight[k];
    c.dh[k] = dh[k];
    c.dw[k] = dw[k];
  }
  return true;
}

}  // namespace universal_seg
