// The fused tiled-convolution kernels, compiled once per instruction set by fused_conv_*.cpp,
// which define RAPA_ISA (the name suffix), RAPA_VECTOR_BYTES and RAPA_VECTOR_REGISTERS.
//
// A thread works through its images a unit at a time. It copies the unit into scratch,
// channels last and zero-padded (unless a region map needs per-pixel tests), counting-sorts
// the unit's output pixels by tile, and for each tile multiplies panels of up to kFusedRows
// patches with the tile's kernel matrix in register-blocked micro-kernels. Patches are read
// in place (their kernel rows are contiguous runs of the padded copy) or gathered into a panel;
// input gradients accumulate in a padded scratch copy that is written back per unit. The
// working set stays in L2 and no batch-sized temporary exists.
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

// Rows and columns of padding in the unit copy: (ph, pw) when padded, 0 with a region map.
template <typename S> inline int64_t pad_rows(const FusedConv<S>& a) { return a.region ? 0 : a.ph; }
template <typename S> inline int64_t pad_cols(const FusedConv<S>& a) { return a.region ? 0 : a.pw; }

// Copies images [u, u + units) of the input into the unit layout (Hp, Wp, C), zero borders.
template <typename S>
void load_unit(const FusedConv<S>& a, int64_t u, int64_t units, S* unit) {
  const int64_t C = a.C, plane = a.H * a.W, image = a.Hp * a.Wp * C;
  const int64_t oy = pad_rows(a), ox = pad_cols(a);
  if (oy || ox) std::memset(unit, 0, units * image * sizeof(S));
  for (int64_t n = 0; n < units; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const S* src = a.x + ((u + n) * C + c) * plane;
      S* dst = unit + n * image + c;
      for (int64_t y = 0; y < a.H; ++y)
        for (int64_t x = 0; x < a.W; ++x) dst[((y + oy) * a.Wp + x + ox) * C] = src[y * a.W + x];
    }
}

// Writes the unit's input gradient (Hp, Wp, C) back to grad_x (N, C, H, W), without borders.
template <typename S>
void store_unit_gradient(const FusedConv<S>& a, int64_t u, int64_t units, const S* unit) {
  const int64_t C = a.C, plane = a.H * a.W, image = a.Hp * a.Wp * C;
  const int64_t oy = pad_rows(a), ox = pad_cols(a);
  for (int64_t n = 0; n < units; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const S* src = unit + n * image + c;
      S* dst = a.grad_x + ((u + n) * C + c) * plane;
      for (int64_t y = 0; y < a.H; ++y)
        for (int64_t x = 0; x < a.W; ++x) dst[y * a.W + x] = src[((y + oy) * a.Wp + x + ox) * C];
    }
}

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

// dst (count x cols, row stride cols) = panel (count x depth, row stride ld, count a multiple
// of kMR) x kernel (depth x cols, cols a multiple of two vectors), in the micro-kernels.
template <typename S>
inline void panel_product(const S* panel, int64_t count, int64_t ld, int64_t depth,
    const S* kernel, int64_t cols, S* dst) {
  typedef typename VecOf<S>::type V;
  constexpr int64_t L = lanes<S>();
  for (int64_t i0 = 0; i0 < count; i0 += kMR)
    for (int64_t col = 0; col < cols; col += 2 * L) {
      V acc[kMR][2];
      panel_times_columns<S>(panel + i0 * ld, ld, kernel, cols, depth, col, acc);
#pragma GCC unroll 16
      for (int i = 0; i < kMR; ++i) {
        vstore(dst + (i0 + i) * cols + col, acc[i][0]);
        vstore(dst + (i0 + i) * cols + col + L, acc[i][1]);
      }
    }
}

template <typename S>
bool forward_images(const FusedConv<S>& a, int64_t n0, int64_t n1, S* scratch, int64_t* index,
    int64_t* bad_value) {
  typedef typename VecOf<S>::type V;
  constexpr int64_t L = lanes<S>();
  const int64_t NP = a.Ho * a.Wo, O = a.O, B = fused_unit_images(a.T, NP);
  int64_t* end = index;
  int64_t* order = end + a.T + 1;
  int64_t* out_at = order + kUnitImages * NP;
  int64_t* in_at = out_at + kUnitImages * NP;
  S* panel = scratch;
  S* unit_x = scratch + kFusedRows * (2 * a.Kpad + O);
  for (int64_t u = n0; u < n1; u += B) {
    const int64_t units = imin(B, n1 - u);
    if (!sort_unit(a, a.assignment + u * NP, units, end, order, out_at, in_at, bad_value))
      return false;
    load_unit(a, u, units, unit_x);
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
        const S* in[kFusedRows + kMR];  // each row's patch in the padded unit, when in place
        if (!a.region) {
          for (int64_t r = 0; r < rows; ++r) in[r] = unit_x + in_at[g + r];
          for (int64_t r = rows; r < rows + kMR; ++r) in[r] = in[0];  // computed, not written
        } else {
          gather_panel(a, unit_x, q, rows, t, panel);
        }
        for (int64_t i0 = 0; i0 < rows; i0 += kMR) {
          const int64_t valid = imin(kMR, rows - i0);
          for (int64_t col = 0; col < a.Opad; col += 2 * L) {
            V acc[kMR][2];
            if (!a.region)
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

// grad rows [o0, o0 + MO), columns [col, col + 2 lanes) += G^T panel over `rows` panel rows.
template <int MO, typename S>
inline void add_kernel_gradient(const S* G, int64_t O, const S* panel, int64_t Kpad,
    int64_t rows, int64_t o0, int64_t col, S* grad) {
  typedef typename VecOf<S>::type V;
  constexpr int64_t L = lanes<S>();
  V acc[MO][2];
#pragma GCC unroll 16
  for (int j = 0; j < MO; ++j) {
    acc[j][0] = vload(grad + (o0 + j) * Kpad + col);
    acc[j][1] = vload(grad + (o0 + j) * Kpad + col + L);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const V p0 = vload(panel + r * Kpad + col), p1 = vload(panel + r * Kpad + col + L);
#pragma GCC unroll 16
    for (int j = 0; j < MO; ++j) {
      const S gv = G[r * O + o0 + j];
      acc[j][0] += gv * p0;
      acc[j][1] += gv * p1;
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < MO; ++j) {
    vstore(grad + (o0 + j) * Kpad + col, acc[j][0]);
    vstore(grad + (o0 + j) * Kpad + col + L, acc[j][1]);
  }
}

template <typename S>
bool backward_images(const FusedConv<S>& a, int64_t n0, int64_t n1, S* scratch, int64_t* index,
    int64_t* bad_value) {
  constexpr int64_t L = lanes<S>();
  const int64_t NP = a.Ho * a.Wo, O = a.O, Kpad = a.Kpad, run = a.kw * a.C;
  const int64_t row_step = a.Wp * a.C, unit_image = a.Hp * a.Wp * a.C;
  // Without a region map the unit copies are padded: kernel rows of patches are whole runs.
  const bool padded_layout = a.region == nullptr;
  const int64_t B = fused_unit_images(a.T, NP);
  S* panel = scratch;                          // kFusedRows x Kpad
  S* rows_grad = scratch + kFusedRows * Kpad;  // kFusedRows x Kpad
  S* G = rows_grad + kFusedRows * Kpad;        // kFusedRows x O
  S* unit_x = G + kFusedRows * O;              // the unit's input, (Hp, Wp, C) per image
  S* unit_g = unit_x + B * unit_image;         // its input gradient
  int64_t* end = index;
  int64_t* order = end + a.T + 1;
  int64_t* out_at = order + kUnitImages * NP;
  int64_t* in_at = out_at + kUnitImages * NP;
  for (int64_t u = n0; u < n1; u += B) {
    const int64_t units = imin(B, n1 - u);
    if (!sort_unit(a, a.assignment + u * NP, units, end, order, out_at, in_at, bad_value))
      return false;
    if (a.grad_k) load_unit(a, u, units, unit_x);
    if (a.grad_x) std::memset(unit_g, 0, units * unit_image * sizeof(S));
    const S* go = a.grad_out + u * O * NP;
    for (int64_t t = 0; t < a.T; ++t) {
      for (int64_t g = tile_begin(end, t); g < end[t]; g += kFusedRows) {
        const int64_t rows = imin(kFusedRows, end[t] - g);
        const int64_t rows_padded = (rows + kMR - 1) / kMR * kMR;
        const int64_t* q = order + g;
        const int64_t* at = out_at + g;
        const int64_t* pad = in_at + g;  // each row's patch in the padded unit copies
        // Plane by plane: reading 32 planes at once per row thrashes the cache sets.
        for (int64_t o = 0; o < O; ++o)
          for (int64_t r = 0; r < rows; ++r) G[r * O + o] = go[at[r] + o * NP];
        for (int64_t r = rows; r < rows_padded; ++r)
          for (int64_t o = 0; o < O; ++o) G[r * O + o] = S(0);
        if (a.grad_b)
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t o = 0; o < O; ++o) a.grad_b[t * O + o] += G[r * O + o];
        if (a.grad_k) {
          if (padded_layout) {  // whole kernel rows from the padded unit
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t ky = 0; ky < a.kh; ++ky) {
                const S* src = unit_x + pad[r] + ky * row_step;
                S* dst = panel + r * Kpad + ky * run;
                for (int64_t k = 0; k < run; ++k) dst[k] = src[k];
              }
          } else {
            gather_panel(a, unit_x, q, rows, t, panel);
          }
          S* grad = a.grad_k + t * O * Kpad;
          for (int64_t col = 0; col < Kpad; col += 2 * L) {
            int64_t o0 = 0;
            for (; o0 + kMO <= O; o0 += kMO) add_kernel_gradient<kMO>(G, O, panel, Kpad, rows, o0, col, grad);
            for (; o0 + 8 <= O; o0 += 8) add_kernel_gradient<8>(G, O, panel, Kpad, rows, o0, col, grad);
            for (; o0 + 4 <= O; o0 += 4) add_kernel_gradient<4>(G, O, panel, Kpad, rows, o0, col, grad);
            for (; o0 < O; ++o0) add_kernel_gradient<1>(G, O, panel, Kpad, rows, o0, col, grad);
          }
        }
        if (a.grad_x) {
          // Row gradients (rows x K) = G (rows x O) x kernel (O x Kpad) into a panel, then
          // added to the input gradient (adding from registers straight into the scattered
          // patches measured slower).
          panel_product<S>(G, rows, O, O, a.kernels_ok + t * O * Kpad, Kpad, rows_grad);
          for (int64_t r = 0; r < rows; ++r) {
            const S* row = rows_grad + r * Kpad;
            if (padded_layout) {  // whole kernel rows into the padded unit gradient
              for (int64_t ky = 0; ky < a.kh; ++ky) {
                S* dst = unit_g + pad[r] + ky * row_step;
                for (int64_t k = 0; k < run; ++k) dst[k] += row[ky * run + k];
              }
              continue;
            }
            S* img = unit_g + (q[r] / NP) * unit_image;
            patch_runs(a, q[r] % NP, t,
                [&](int64_t k, int64_t off, int64_t count) {
                  for (int64_t j = 0; j < count; ++j) img[off + j] += row[k + j];
                },
                [](int64_t, int64_t) {});
          }
        }
      }
    }
    if (a.grad_x) store_unit_gradient(a, u, units, unit_g);
  }
  return true;
}

}  // namespace

#define RAPA_CONCAT2(a, b) a##_##b
#define RAPA_CONCAT(a, b) RAPA_CONCAT2(a, b)

// The exported entry points (fused_conv.h's RAPA_DECLARE_KERNEL), per direction: `name`
// suffixed with the instruction set, running `run` over Args<float> and Args<double>.
#define RAPA_DEFINE_KERNEL(name, run, Args)                                                    \
  bool RAPA_CONCAT(name, RAPA_ISA)(const Args<float>& a, int64_t n0, int64_t n1,              \
      float* scratch, int64_t* index, int64_t* bad_value) {                                    \
    return run(a, n0, n1, scratch, index, bad_value);                                          \
  }                                                                                            \
  bool RAPA_CONCAT(name, RAPA_ISA)(const Args<double>& a, int64_t n0, int64_t n1,             \
      double* scratch, int64_t* index, int64_t* bad_value) {                                   \
    return run(a, n0, n1, scratch, index, bad_value);                                          \
  }
RAPA_DEFINE_KERNEL(fused_forward, forward_images, FusedConv)
RAPA_DEFINE_KERNEL(fused_backward, backward_images, FusedConv)

}  // namespace rapa
