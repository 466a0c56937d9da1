// CPU kernels of rapa::tiled_conv and its backward.
//
// The batch is processed in chunks of images. Within a chunk the patches are counting-sorted
// by (tile, image); each tile's patches are gathered into a row block (the im2col of that tile
// alone, from a channels-last copy of the input so that each kernel row is one contiguous run)
// and multiplied by that tile's kernel matrix in one product, then scattered back. So the
// arithmetic is that of one dense convolution, whatever T is.
//
// The products run as 1x1 convolutions on the row block viewed as a channels-last image: that
// is a GEMM which oneDNN's JIT kernels compute 2-3x faster than the bundled BLAS on the CPUs
// we measured (bench/README.md), and which uses all threads inside each call.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "checks.h"
#include "single_tile.h"

namespace rapa {
namespace {

// Rows per tile and chunk: large enough for efficient products, small enough for the cache.
constexpr int64_t kTargetRowsPerTile = 2048;

// Images per chunk, evened out so that the last chunk is not a small remainder.
int64_t images_per_chunk(const ConvShape& s) {
  const int64_t wanted = std::clamp<int64_t>((kTargetRowsPerTile * s.T + s.NP() - 1) / s.NP(), 1, std::max<int64_t>(s.N, 1));
  const int64_t chunks = (s.N + wanted - 1) / wanted;
  return std::max<int64_t>(1, (s.N + chunks - 1) / std::max<int64_t>(chunks, 1));
}

// Kept patches of a chunk of B images, grouped by tile, then image, then position:
// block (t, n) is patch[start[t * B + n] .. start[t * B + n + 1]).
struct TileOrder {
  int64_t B = 0;
  std::vector<int64_t> start;
  std::vector<int64_t> patch;    // chunk-local patch index: image * NP + y * Wo + x
  std::vector<int64_t> dropped;  // patches assigned -1
  int64_t begin(int64_t t) const { return start[t * B]; }
  int64_t rows(int64_t t) const { return start[(t + 1) * B] - start[t * B]; }
};

void sort_by_tile(const int64_t* assign, int64_t B, int64_t NP, int64_t T, TileOrder& order) {
  order.B = B;
  order.start.assign(T * B + 1, 0);
  for (int64_t n = 0; n < B; ++n)
    for (int64_t q = 0; q < NP; ++q) {
      const int64_t a = assign[n * NP + q];
      TORCH_CHECK(a >= -1 && a < T, assignment_range_message(a, T));
      if (a >= 0) ++order.start[a * B + n + 1];
    }
  for (int64_t i = 0; i < T * B; ++i) order.start[i + 1] += order.start[i];
  order.patch.resize(order.start[T * B]);
  order.dropped.clear();
  std::vector<int64_t> cursor(order.start.begin(), order.start.end() - 1);
  for (int64_t n = 0; n < B; ++n)
    for (int64_t q = 0; q < NP; ++q) {
      const int64_t a = assign[n * NP + q];
      if (a >= 0) order.patch[cursor[a * B + n]++] = n * NP + q;
      else order.dropped.push_back(n * NP + q);
    }
}

// Visits the kernel rows of one patch on a channels-last image (H, W, C): for each (ky, kx)
// run it calls copy(k, offset, count) for `count` pixels read from the image and
// zero(k, count) for pixels outside it or, with a region map, outside the tile's region.
// k counts kernel elements in (ky, kx, c) order; offset and counts are in elements.
template <typename Copy, typename Zero>
inline void for_patch_runs(const ConvShape& s, int64_t y, int64_t x, const int64_t* region,
    int64_t tile, Copy copy, Zero zero) {
  const int64_t C = s.C, iy0 = y * s.sh - s.ph, ix0 = x * s.sw - s.pw;
  const int64_t lo = std::max<int64_t>(0, -ix0), hi = std::min<int64_t>(s.kw, s.W - ix0);
  for (int64_t ky = 0; ky < s.kh; ++ky) {
    const int64_t iy = iy0 + ky, k = ky * s.kw * C;
    if (iy < 0 || iy >= s.H || hi <= lo) {
      zero(k, s.kw * C);
      continue;
    }
    if (!region) {
      if (lo > 0) zero(k, lo * C);
      copy(k + lo * C, (iy * s.W + ix0 + lo) * C, (hi - lo) * C);
      if (hi < s.kw) zero(k + hi * C, (s.kw - hi) * C);
      continue;
    }
    for (int64_t kx = 0; kx < s.kw; ++kx) {
      const int64_t ix = ix0 + kx;
      if (kx >= lo && kx < hi && region[iy * s.W + ix] == tile)
        copy(k + kx * C, (iy * s.W + ix) * C, C);
      else
        zero(k + kx * C, C);
    }
  }
}

// im2col rows (rows x K, K in (ky, kx, c) order) of one tile's patches.
template <typename scalar_t>
void gather_patches(const ConvShape& s, const scalar_t* images_hwc, const int64_t* region,
    int64_t tile, const int64_t* patch, int64_t rows, scalar_t* out) {
  const int64_t K = s.K(), NP = s.NP(), image_size = s.H * s.W * s.C;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = patch[r] / NP, q = patch[r] % NP;
      const scalar_t* img = images_hwc + n * image_size;
      scalar_t* row = out + r * K;
      for_patch_runs(s, q / s.Wo, q % s.Wo, region, tile,
          [&](int64_t k, int64_t off, int64_t count) {
            std::memcpy(row + k, img + off, count * sizeof(scalar_t));
          },
          [&](int64_t k, int64_t count) { std::fill_n(row + k, count, scalar_t(0)); });
    }
  });
}

// col2im: adds one tile's row gradients into the channels-last input gradient. Parallel over
// images, whose rows are contiguous within the tile's block, so no two threads share a pixel.
template <typename scalar_t>
void scatter_add_patches(const ConvShape& s, const scalar_t* rows_grad, const int64_t* region,
    int64_t tile, const TileOrder& order, scalar_t* grad_hwc) {
  const int64_t K = s.K(), NP = s.NP(), image_size = s.H * s.W * s.C, base = order.begin(tile);
  at::parallel_for(0, order.B, 1, [&](int64_t n_begin, int64_t n_end) {
    for (int64_t n = n_begin; n < n_end; ++n) {
      scalar_t* img = grad_hwc + n * image_size;
      for (int64_t i = order.start[tile * order.B + n]; i < order.start[tile * order.B + n + 1];
           ++i) {
        const int64_t q = order.patch[i] % NP;
        const scalar_t* row = rows_grad + (i - base) * K;
        for_patch_runs(s, q / s.Wo, q % s.Wo, region, tile,
            [&](int64_t k, int64_t off, int64_t count) {
              for (int64_t j = 0; j < count; ++j) img[off + j] += row[k + j];
            },
            [](int64_t, int64_t) {});
      }
    }
  });
}

// A (R, K) row block as a (1, K, R, 1) channels-last image, and back: 1x1 convolutions of such
// images are the GEMMs below. float64 (no oneDNN kernels) uses plain matrix products.
at::Tensor as_image(const at::Tensor& rows) {
  return rows.view({1, rows.size(0), 1, rows.size(1)}).permute({0, 3, 1, 2});
}
at::Tensor from_image(const at::Tensor& image) {
  return image.permute({0, 2, 3, 1}).reshape({image.size(2), image.size(1)}).contiguous();
}
bool use_conv_gemm(const at::Tensor& t) { return t.scalar_type() == at::kFloat; }

// (R, K) x (O, K)^T -> (R, O)
at::Tensor rows_times_kernel(const at::Tensor& rows, const at::Tensor& kernel) {
  if (!use_conv_gemm(rows)) return at::mm(rows, kernel.t());
  return from_image(at::conv2d(as_image(rows), kernel.view({kernel.size(0), kernel.size(1), 1, 1})));
}

// (R, O) x (O, K) -> (R, K); kernel_t is the kernel transposed, (K, O) contiguous.
at::Tensor rows_times_kernel_t(const at::Tensor& rows, const at::Tensor& kernel_t) {
  if (!use_conv_gemm(rows)) return at::mm(rows, kernel_t.t());
  return from_image(
      at::conv2d(as_image(rows), kernel_t.view({kernel_t.size(0), kernel_t.size(1), 1, 1})));
}

// (R, O)^T x (R, K) -> (O, K): the weight gradient of the 1x1 convolution.
at::Tensor kernel_gradient(const at::Tensor& out_rows, const at::Tensor& patch_rows) {
  if (!use_conv_gemm(out_rows)) return at::mm(out_rows.t(), patch_rows);
  const int64_t O = out_rows.size(1), K = patch_rows.size(1);
  auto grads = at::convolution_backward(as_image(out_rows), as_image(patch_rows),
      at::empty({O, K, 1, 1}, out_rows.options()), std::nullopt, {1, 1}, {0, 0}, {1, 1}, false,
      {0, 0}, 1, {false, true, false});
  return std::get<1>(grads).view({O, K});
}

// Kernel matrices with K in (ky, kx, c) order, matching the channels-last gather: (T, O, K).
at::Tensor kernels_hwc(const at::Tensor& weight) {
  return weight.permute({0, 1, 3, 4, 2}).contiguous().view({weight.size(0), weight.size(1), -1});
}

at::Tensor tiled_conv_cpu(const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& assignment, at::IntArrayRef stride,
    at::IntArrayRef padding, const std::optional<at::Tensor>& region) {
  const ConvShape s = check_tiled_conv(input, weight, bias, assignment, stride, padding, region);
  if (s.T == 1) return single_tile_forward(input, weight, bias, assignment, stride, padding, region);
  at::Tensor out = at::empty({s.N, s.O, s.Ho, s.Wo}, input.options());
  if (s.N == 0) return out;
  const at::Tensor x = input.permute({0, 2, 3, 1}).contiguous();  // (N, H, W, C)
  const at::Tensor kernels = kernels_hwc(weight);
  const at::Tensor assign = assignment.contiguous();
  const at::Tensor reg = region.has_value() && region->defined() ? region->contiguous() : at::Tensor();
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const int64_t chunk = images_per_chunk(s), K = s.K(), NP = s.NP(), O = s.O;
  const int64_t* reg_p = reg.defined() ? reg.data_ptr<int64_t>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "tiled_conv_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = out.data_ptr<scalar_t>();
    TileOrder order;
    for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
      const int64_t B = std::min(chunk, s.N - n0);
      sort_by_tile(assign.data_ptr<int64_t>() + n0 * NP, B, NP, s.T, order);
      for (int64_t t = 0; t < s.T; ++t) {
        const int64_t rows = order.rows(t);
        if (rows == 0) continue;
        const int64_t* patch = order.patch.data() + order.begin(t);
        at::Tensor patches = at::empty({rows, K}, x.options());
        gather_patches(s, xp + n0 * s.H * s.W * s.C, reg_p, t, patch, rows,
            patches.data_ptr<scalar_t>());
        // (O, R): each output plane is then written in increasing pixel order.
        const at::Tensor result = rows_times_kernel(patches, kernels[t]).t().contiguous();
        const scalar_t* rp = result.data_ptr<scalar_t>();
        at::parallel_for(0, O, 1, [&](int64_t o_begin, int64_t o_end) {
          for (int64_t o = o_begin; o < o_end; ++o) {
            const scalar_t shift = bp ? bp[t * O + o] : scalar_t(0);
            scalar_t* plane = yp + n0 * O * NP + o * NP;
            for (int64_t r = 0; r < rows; ++r)
              plane[(patch[r] / NP) * O * NP + patch[r] % NP] = rp[o * rows + r] + shift;
          }
        });
      }
      for (int64_t p : order.dropped)
        for (int64_t o = 0; o < O; ++o) yp[(n0 + p / NP) * O * NP + o * NP + p % NP] = scalar_t(0);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiled_conv_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& assignment, at::IntArrayRef stride, at::IntArrayRef padding,
    const std::optional<at::Tensor>& region, std::array<bool, 3> mask) {
  const ConvShape s =
      check_tiled_conv(input, weight, std::nullopt, assignment, stride, padding, region);
  check_conv_grad_output(grad_output, input, s);
  if (s.T == 1)
    return single_tile_backward(grad_output, input, weight, assignment, stride, padding, region, mask);
  const auto opts = input.options();
  const int64_t chunk = images_per_chunk(s), K = s.K(), NP = s.NP(), O = s.O, T = s.T;
  at::Tensor grad_x = mask[0] ? at::zeros({s.N, s.H, s.W, s.C}, opts) : at::Tensor();
  at::Tensor grad_k = mask[1] ? at::zeros({T, O, K}, opts) : at::Tensor();
  at::Tensor grad_b = mask[2] ? at::zeros({T, O}, opts) : at::empty({0}, opts);
  if (s.N > 0 && (mask[0] || mask[1] || mask[2])) {
    const at::Tensor x = mask[1] ? input.permute({0, 2, 3, 1}).contiguous() : at::Tensor();
    const at::Tensor kernels_t = mask[0] ? kernels_hwc(weight).transpose(1, 2).contiguous() : at::Tensor();
    const at::Tensor assign = assignment.contiguous(), go = grad_output.contiguous();
    const at::Tensor reg = region.has_value() && region->defined() ? region->contiguous() : at::Tensor();
    const int64_t* reg_p = reg.defined() ? reg.data_ptr<int64_t>() : nullptr;
    const int64_t image_size = s.H * s.W * s.C;

    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "tiled_conv_backward_cpu", [&] {
      const scalar_t* gp = go.data_ptr<scalar_t>();
      TileOrder order;
      for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
        const int64_t B = std::min(chunk, s.N - n0);
        sort_by_tile(assign.data_ptr<int64_t>() + n0 * NP, B, NP, T, order);
        for (int64_t t = 0; t < T; ++t) {
          const int64_t rows = order.rows(t);
          if (rows == 0) continue;
          const int64_t* patch = order.patch.data() + order.begin(t);
          // Read plane by plane in increasing pixel order, then transpose to (R, O).
          at::Tensor planes = at::empty({O, rows}, opts);
          scalar_t* pp = planes.data_ptr<scalar_t>();
          at::parallel_for(0, O, 1, [&](int64_t o_begin, int64_t o_end) {
            for (int64_t o = o_begin; o < o_end; ++o) {
              const scalar_t* plane = gp + n0 * O * NP + o * NP;
              for (int64_t r = 0; r < rows; ++r)
                pp[o * rows + r] = plane[(patch[r] / NP) * O * NP + patch[r] % NP];
            }
          });
          const at::Tensor out_rows = planes.t().contiguous();
          if (mask[2]) grad_b[t] += out_rows.sum(0);
          if (mask[1]) {
            at::Tensor patches = at::empty({rows, K}, opts);
            gather_patches(s, x.data_ptr<scalar_t>() + n0 * image_size, reg_p, t, patch, rows,
                patches.data_ptr<scalar_t>());
            grad_k[t] += kernel_gradient(out_rows, patches);
          }
          if (mask[0]) {
            const at::Tensor rows_grad = rows_times_kernel_t(out_rows, kernels_t[t]);
            scatter_add_patches(s, rows_grad.data_ptr<scalar_t>(), reg_p, t, order,
                grad_x.data_ptr<scalar_t>() + n0 * image_size);
          }
        }
      }
    });
  }
  at::Tensor grad_input = mask[0] ? grad_x.permute({0, 3, 1, 2}).contiguous() : at::empty({0}, opts);
  at::Tensor grad_weight = mask[1]
      ? grad_k.view({T, O, s.kh, s.kw, s.C}).permute({0, 1, 4, 2, 3}).contiguous()
      : at::empty({0}, opts);
  return {grad_input, grad_weight, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("tiled_conv", &tiled_conv_cpu);
  m.impl("tiled_conv_backward", &tiled_conv_backward_cpu);
}

}  // namespace rapa
