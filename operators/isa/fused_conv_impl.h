// The fused tiled-convolution kernels, compiled once per instruction set by fused_conv_*.cpp,
// which define RAPA_ISA (the name suffix), RAPA_VECTOR_BYTES and RAPA_VECTOR_REGISTERS.
//
// Per image, the output pixels are counting-sorted by tile; each tile's patches are gathered
// kFusedRows at a time into a panel that stays in L2 (rows of K = kh*kw*C values read as
// contiguous runs from the channels-last input), and register-blocked micro-kernels multiply
// the panel with the tile's kernel matrix. No im2col matrix of the whole batch ever exists.
//
// Everything here has internal linkage and uses no library templates, so code compiled with
// wide vector instructions is never shared with, or picked by the linker for, other files.
#include <cstdint>
#include <cstring>

#include "fused_conv.h"

namespace rapa {
namespace {

typedef float vfloat __attribute__((vector_size(RAPA_VECTOR_BYTES)));
typedef double vdouble __attribute__((vector_size(RAPA_VECTOR_BYTES)));
template <typename S> struct VecOf;
template <> struct VecOf<float> { typedef vfloat type; };
template <> struct VecOf<double> { typedef vdouble type; };

constexpr int kMR = RAPA_VECTOR_REGISTERS >= 32 ? 12 : 6;  // panel rows per micro-kernel
constexpr int kMO = RAPA_VECTOR_REGISTERS >= 32 ? 12 : 6;  // gradient rows per micro-kernel

template <typename S> constexpr int64_t lanes() { return RAPA_VECTOR_BYTES / sizeof(S); }

template <typename S>
inline typename VecOf<S>::type vload(const S* p) {
  typename VecOf<S>::type v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

template <typename S>
inline void vstore(S* p, typename VecOf<S>::type v) {
  __builtin_memcpy(p, &v, sizeof v);
}

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// Kernel rows of one patch as runs: copy(k, offset, count) for `count` values the patch reads
// from the image at element `offset`, zero(k, count) for padding and foreign-region pixels.
template <typename S, typename Copy, typename Zero>
inline void patch_runs(const FusedConv<S>& a, int64_t q, int64_t tile, Copy copy, Zero zero) {
  const int64_t C = a.C, y = q / a.Wo, x = q % a.Wo;
  const int64_t iy0 = y * a.sh - a.ph, ix0 = x * a.sw - a.pw;
  const int64_t lo = imax(0, -ix0), hi = imin(a.kw, a.W - ix0);
  for (int64_t ky = 0; ky < a.kh; ++ky) {
    const int64_t iy = iy0 + ky, k = ky * a.kw * C;
    if (iy < 0 || iy >= a.H || hi <= lo) {
      zero(k, a.kw * C);
      continue;
    }
    if (!a.region) {
      if (lo > 0) zero(k, lo * C);
      copy(k + lo * C, (iy * a.W + ix0 + lo) * C, (hi - lo) * C);
      if (hi < a.kw) zero(k + hi * C, (a.kw - hi) * C);
      continue;
    }
    for (int64_t kx = 0; kx < a.kw; ++kx) {
      const int64_t ix = ix0 + kx;
      if (kx >= lo && kx < hi && a.region[iy * a.W + ix] == tile)
        copy(k + kx * C, (iy * a.W + ix) * C, C);
      else
        zero(k + kx * C, C);
    }
  }
}

// Counting sort of the pixels of a unit of images by tile: tile t owns positions
// [begin(t), end[t]) of order (entries image_in_unit * NP + pixel), out_at (the pixel's offset
// from the unit's first output plane) and in_at (the patch's offset in the padded input).
// Walking images, rows and columns in order spares the divisions. Returns false (and the
// value) at an entry outside [-1, T).
template <typename S>
inline bool sort_unit(const FusedConv<S>& a, const int64_t* assign, int64_t units, int64_t* end,
    int64_t* order, int64_t* out_at, int64_t* in_at, int64_t* bad_value) {
  const int64_t T = a.T, NP = a.Ho * a.Wo, count = units * NP;
  for (int64_t t = 0; t <= T; ++t) end[t] = 0;
  for (int64_t p = 0; p < count; ++p) {
    const int64_t v = assign[p];
    if (v < -1 || v >= T) {
      *bad_value = v;
      return false;
    }
    if (v >= 0) ++end[v + 1];
  }
  for (int64_t t = 0; t < T; ++t) end[t + 1] += end[t];
  int64_t p = 0;
  for (int64_t n = 0; n < units; ++n)
    for (int64_t y = 0; y < a.Ho; ++y)
      for (int64_t x = 0; x < a.Wo; ++x, ++p) {
        const int64_t v = assign[p];
        if (v < 0) continue;
        const int64_t pos = end[v]++;
        order[pos] = p;
        out_at[pos] = n * a.O * NP + y * a.Wo + x;
        in_at[pos] = n * a.Hp * a.Wp * a.C + (y * a.sh * a.Wp + x * a.sw) * a.C;
      }
  return true;  // now end[t] is the end of tile t, and end[t - 1] its begin
}

inline int64_t tile_begin(const int64_t* end, int64_t t) { return t == 0 ? 0 : end[t - 1]; }

// Gathers `rows` patches (unit entries, images from `images`) into a panel (row stride Kpad),
// zero rows up to a multiple of kMR.
template <typename S>
void gather_panel(const FusedConv<S>& a, const S* images, const int64_t* q, int64_t rows,
    int64_t tile, S* panel) {
  const int64_t NP = a.Ho * a.Wo, image_size = a.H * a.W * a.C;
  for (int64_t r = 0; r < rows; ++r) {
    S* row = panel + r * a.Kpad;
    const S* img = images + (q[r] / NP) * image_size;
    // Inline loops: runs are short (kw * C values), a library call per run costs more.
    patch_runs(a, q[r] % NP, tile,
        [&](int64_t k, int64_t off, int64_t n) {
          for (int64_t j = 0; j < n; ++j) row[k + j] = img[off + j];
        },
        [&](int64_t k, int64_t n) {
          for (int64_t j = 0; j < n; ++j) row[k + j] = S(0);
        });
  }
  const int64_t padded = (rows + kMR - 1) / kMR * kMR;
  if (padded > rows) std::memset(panel + rows * a.Kpad, 0, (padded - rows) * a.Kpad * sizeof(S));
}

// acc[i][:] = panel row i (K values) x kernel columns [col, col + 2 lanes) of a K x ld matrix.
// As panel_times_columns, reading the kMR patches in place from the padded input.
template <typename S>
inline void patches_times_columns(const S* const* rows, int64_t row_step, int64_t kh,
    int64_t run, const S* kernel, int64_t ld, int64_t col, typename VecOf<S>::type (&acc)[kMR][2]) {
  typedef typename VecOf<S>::type V;
  constexpr int64_t L = lanes<S>();
#pragma GCC unroll 16
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = V{};
  for (int64_t ky = 0; ky < kh; ++ky) {
    const S* p[kMR];
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) p[i] = rows[i] + ky * row_step;
    const S* w = kernel + ky * run * ld + col;
    for (int64_t k = 0; k < run; ++k) {
      const V w0 = vload(w + k * ld), w1 = vload(w + k * ld + L);
#pragma GCC unroll 16
      for (int i = 0; i < kMR; ++i) {
        const S v = p[i][k];
        acc[i][0] += v * w0;
        acc[i][1] += v * w1;
      }
    }
  }
}

template <typename S>
inline void panel_times_columns(const S* panel, int64_t ldp, const S* kernel, int64_t ld,
    int64_t K, int64_t col, typename VecOf<S>::type (&acc)[kMR][2]) {
  typedef typename VecOf<S>::type V;
  constexpr int64_t L = lanes<S>();
#pragma GCC unroll 16
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = V{};
  for (int64_t k = 0; k < K; ++k) {
    const V w0 = vload(kernel + k * ld + col), w1 = vload(kernel + k * ld + col + L);
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) {
      const S p = panel[i * ldp + k];
      acc[i][0] += p * w0;
      acc[i][1] += p * w1;
    }
  }
}

// Images per sorting unit: enough that each tile gathers panels of a useful length.
inline int64_t unit_images(int64_t T, int64_t NP) {
  return imax(1, imin(kUnitImages, (4 * kFusedRows * T + NP - 1) / NP));
}

template <typename S>
bool forward_images(const FusedConv<S>& a, int64_t n0, int64_t n1, S* scratch, int64_t* index,
    int64_t* bad_value) {
  typedef typename VecOf<S>::type V;
  constexpr int64_t L = lanes<S>();
  const int64_t NP = a.Ho * a.Wo, O = a.O, B = unit_images(a.T, NP);
  int64_t* end = index;
  int64_t* order = end + a.T + 1;
  int64_t* out_at = order + kUnitImages * NP;
  int64_t* in_at = out_at + kUnitImages * NP;
  S* panel = scratch;
  for (int64_t u = n0; u < n1; u += B) {
    const int64_t units = imin(B, n1 - u);
    if (!sort_unit(a, a.assignment + u * NP, units, end, order, out_at, in_at, bad_value))
      return false;
    S* out = a.out + u * O * NP;
    for (int64_t p = 0; p < units * NP; ++p)
      if (a.assignment[u * NP + p] < 0)
        for (int64_t o = 0; o < O; ++o) out[(p / NP) * O * NP + o * NP + p % NP] = S(0);
    for (int64_t t = 0; t < a.T; ++t) {
      const S* kernel = a.kernels_ko + t * a.K * a.Opad;
      const S* bias = a.bias ? a.bias + t * O : nullptr;
      for (int64_t g = tile_begin(end, t); g < end[t]; g += kFusedRows) {
        const int64_t rows = imin(kFusedRows, end[t] - g);
        const int64_t* q = order + g;
        const int64_t* at = out_at + g;
        const S* in[kFusedRows + kMR];  // each row's patch in the padded input, when in place
        if (a.x_pad) {
          const S* unit_in = a.x_pad + u * a.Hp * a.Wp * a.C;
          for (int64_t r = 0; r < rows; ++r) in[r] = unit_in + in_at[g + r];
          for (int64_t r = rows; r < rows + kMR; ++r) in[r] = in[0];  // computed, not written
        } else {
          gather_panel(a, a.x_hwc + u * a.H * a.W * a.C, q, rows, t, panel);
        }
        for (int64_t i0 = 0; i0 < rows; i0 += kMR) {
          const int64_t valid = imin(kMR, rows - i0);
          for (int64_t col = 0; col < a.Opad; col += 2 * L) {
            V acc[kMR][2];
            if (a.x_pad)
              patches_times_columns<S>(in + i0, a.Wp * a.C, a.kh, a.kw * a.C, kernel, a.Opad, col, acc);
            else
              panel_times_columns<S>(panel + i0 * a.Kpad, a.Kpad, kernel, a.Opad, a.K, col, acc);
            S block[kMR][2 * L];
#pragma GCC unroll 16
            for (int i = 0; i < kMR; ++i) {
              vstore(block[i], acc[i][0]);
              vstore(block[i] + L, acc[i][1]);
            }
            const int64_t ncol = imin(2 * L, O - col);
            for (int64_t j = 0; j < ncol; ++j) {
              const S shift = bias ? bias[col + j] : S(0);
              S* plane = out + (col + j) * NP;
              for (int64_t i = 0; i < valid; ++i) plane[at[i0 + i]] = block[i][j] + shift;
            }
          }
        }
      }
    }
  }
  return true;
}

// grad rows [o0, o0 + MO), columns [0, 2 lanes) += G^T P over `rows` patches, where patch r's
// columns are the 2 lanes at rows_at[r] + offset (a panel row, or the patch in place).
template <int MO, typename S>
inline void add_kernel_gradient(const S* G, int64_t O, const S* const* rows_at, int64_t offset,
    int64_t rows, int64_t o0, S* grad, int64_t ld) {
  typedef typename VecOf<S>::type V;
  constexpr int64_t L = lanes<S>();
  V acc[MO][2];
#pragma GCC unroll 16
  for (int j = 0; j < MO; ++j) {
    acc[j][0] = vload(grad + (o0 + j) * ld);
    acc[j][1] = vload(grad + (o0 + j) * ld + L);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const V p0 = vload(rows_at[r] + offset), p1 = vload(rows_at[r] + offset + L);
#pragma GCC unroll 16
    for (int j = 0; j < MO; ++j) {
      const S gv = G[r * O + o0 + j];
      acc[j][0] += gv * p0;
      acc[j][1] += gv * p1;
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < MO; ++j) {
    vstore(grad + (o0 + j) * ld, acc[j][0]);
    vstore(grad + (o0 + j) * ld + L, acc[j][1]);
  }
}

template <typename S>
bool backward_images(const FusedConv<S>& a, int64_t n0, int64_t n1, S* scratch, int64_t* index,
    int64_t* bad_value) {
  typedef typename VecOf<S>::type V;
  constexpr int64_t L = lanes<S>();
  const int64_t NP = a.Ho * a.Wo, O = a.O, Kpad = a.Kpad, run = a.kw * a.C;
  const int64_t row_step = a.Wp * a.C, image_size = a.H * a.W * a.C;
  // Padded layouts (no region map): kernel rows of patches are whole runs, no clipping.
  const bool padded_in = a.x_pad != nullptr, padded_grad = a.grad_x_pad != nullptr;
  S* panel = scratch;                          // kFusedRows x Kpad
  S* rows_grad = scratch + kFusedRows * Kpad;  // kFusedRows x Kpad
  S* G = rows_grad + kFusedRows * Kpad;        // kFusedRows x O
  int64_t* end = index;
  int64_t* order = end + a.T + 1;
  int64_t* out_at = order + kUnitImages * NP;
  int64_t* in_at = out_at + kUnitImages * NP;
  const int64_t B = unit_images(a.T, NP), padded_image = a.Hp * a.Wp * a.C;
  for (int64_t u = n0; u < n1; u += B) {
    const int64_t units = imin(B, n1 - u);
    if (!sort_unit(a, a.assignment + u * NP, units, end, order, out_at, in_at, bad_value))
      return false;
    const S* go = a.grad_out + u * O * NP;
    for (int64_t t = 0; t < a.T; ++t) {
      for (int64_t g = tile_begin(end, t); g < end[t]; g += kFusedRows) {
        const int64_t rows = imin(kFusedRows, end[t] - g);
        const int64_t padded = (rows + kMR - 1) / kMR * kMR;
        const int64_t* q = order + g;
        const int64_t* at = out_at + g;
        int64_t pad[kFusedRows];  // offset of each row's patch in the padded layouts
        for (int64_t r = 0; r < rows; ++r) pad[r] = u * padded_image + in_at[g + r];
        // Plane by plane: reading 32 planes at once per row thrashes the cache sets.
        for (int64_t o = 0; o < O; ++o)
          for (int64_t r = 0; r < rows; ++r) G[r * O + o] = go[at[r] + o * NP];
        for (int64_t r = rows; r < padded; ++r)
          for (int64_t o = 0; o < O; ++o) G[r * O + o] = S(0);
        if (a.grad_b)
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t o = 0; o < O; ++o) a.grad_b[t * O + o] += G[r * O + o];
        if (a.grad_k) {
          if (padded_in) {  // whole kernel rows from the padded input
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t ky = 0; ky < a.kh; ++ky) {
                const S* src = a.x_pad + pad[r] + ky * row_step;
                S* dst = panel + r * Kpad + ky * run;
                for (int64_t k = 0; k < run; ++k) dst[k] = src[k];
              }
          } else {
            gather_panel(a, a.x_hwc + u * image_size, q, rows, t, panel);
          }
          const S* rows_at[kFusedRows];
          for (int64_t r = 0; r < rows; ++r) rows_at[r] = panel + r * Kpad;
          S* grad = a.grad_k + t * O * Kpad;
          for (int64_t col = 0; col < Kpad; col += 2 * L) {
            int64_t o0 = 0;
            for (; o0 + kMO <= O; o0 += kMO)
              add_kernel_gradient<kMO>(G, O, rows_at, col, rows, o0, grad + col, Kpad);
            for (; o0 + 4 <= O; o0 += 4)
              add_kernel_gradient<4>(G, O, rows_at, col, rows, o0, grad + col, Kpad);
            for (; o0 < O; ++o0) add_kernel_gradient<1>(G, O, rows_at, col, rows, o0, grad + col, Kpad);
          }
        }
        if (a.grad_x_hwc || padded_grad) {
          // Row gradients (rows x K) = G (rows x O) x kernel (O x Kpad) into a panel, then
          // added to the input gradient (adding from registers straight into the scattered
          // patches measured slower).
          const S* kernel = a.kernels_ok + t * O * Kpad;
          for (int64_t i0 = 0; i0 < rows; i0 += kMR)
            for (int64_t col = 0; col < Kpad; col += 2 * L) {
              V acc[kMR][2];
              panel_times_columns<S>(G + i0 * O, O, kernel, Kpad, O, col, acc);
#pragma GCC unroll 16
              for (int i = 0; i < kMR; ++i) {
                vstore(rows_grad + (i0 + i) * Kpad + col, acc[i][0]);
                vstore(rows_grad + (i0 + i) * Kpad + col + L, acc[i][1]);
              }
            }
          for (int64_t r = 0; r < rows; ++r) {
            const S* row = rows_grad + r * Kpad;
            if (padded_grad) {  // whole kernel rows into the padded gradient
              for (int64_t ky = 0; ky < a.kh; ++ky) {
                S* dst = a.grad_x_pad + pad[r] + ky * row_step;
                for (int64_t k = 0; k < run; ++k) dst[k] += row[ky * run + k];
              }
              continue;
            }
            S* img = a.grad_x_hwc + (u + q[r] / NP) * image_size;
            patch_runs(a, q[r] % NP, t,
                [&](int64_t k, int64_t off, int64_t count) {
                  for (int64_t j = 0; j < count; ++j) img[off + j] += row[k + j];
                },
                [](int64_t, int64_t) {});
          }
        }
      }
    }
  }
  return true;
}

}  // namespace

#define RAPA_CONCAT2(a, b) a##_##b
#define RAPA_CONCAT(a, b) RAPA_CONCAT2(a, b)

bool RAPA_CONCAT(fused_forward, RAPA_ISA)(const FusedConv<float>& a, int64_t n0, int64_t n1,
    float* scratch, int64_t* index, int64_t* bad_value) {
  return forward_images(a, n0, n1, scratch, index, bad_value);
}
bool RAPA_CONCAT(fused_forward, RAPA_ISA)(const FusedConv<double>& a, int64_t n0, int64_t n1,
    double* scratch, int64_t* index, int64_t* bad_value) {
  return forward_images(a, n0, n1, scratch, index, bad_value);
}
bool RAPA_CONCAT(fused_backward, RAPA_ISA)(const FusedConv<float>& a, int64_t n0, int64_t n1,
    float* scratch, int64_t* index, int64_t* bad_value) {
  return backward_images(a, n0, n1, scratch, index, bad_value);
}
bool RAPA_CONCAT(fused_backward, RAPA_ISA)(const FusedConv<double>& a, int64_t n0, int64_t n1,
    double* scratch, int64_t* index, int64_t* bad_value) {
  return backward_images(a, n0, n1, scratch, index, bad_value);
}

}  // namespace rapa
