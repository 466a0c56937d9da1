// The op schemas of rapa: the one place where the library's signatures are declared.
// Kernels register against these names in operators/*.cpp (CPU) and cuda/*.cu (CUDA).
#include <torch/library.h>

TORCH_LIBRARY(rapa, m) {
  // Convolution with T kernel replicas; each output pixel uses the replica its assignment names.
  // tile_capacity: the most patches any one replica gets in this batch, where the caller knows
  // it (-1: not known). The CUDA kernels then lay the patches out without a copy to the host
  // (capturable in a CUDA graph); the CPU kernels check it.
  m.def(
      "tiled_conv(Tensor input, Tensor weight, Tensor? bias, Tensor assignment, int[2] stride, "
      "int[2] padding, Tensor? region=None, *, int tile_capacity=-1) -> Tensor");
  // Gradients of tiled_conv; output_mask selects (input, weight, bias). Unrequested ones are empty.
  m.def(
      "tiled_conv_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor assignment, "
      "int[2] stride, int[2] padding, Tensor? region, bool[3] output_mask, *, "
      "int tile_capacity=-1) -> (Tensor, Tensor, Tensor)");

  // The padded layout of tiled_conv's CUDA kernels (operators/tile_layout.h): order, the patch
  // of each of the num_tiles * cap rows (-1: padding), and row_of, the row of each patch (-1:
  // dropped); cap is tile_capacity, or the largest tile's patch count if that is -1.
  m.def("tile_layout(Tensor assignment, int num_tiles, int tile_capacity=-1) -> (Tensor, Tensor)");

  // A fresh balanced random partition of each image's patches; draws its seed from `generator`.
  m.def(
      "random_assign(int batch, int height, int width, int num_tiles, *, Generator? generator=None, "
      "Device? device=None) -> Tensor");
  // The same partition as a pure function of a seed tensor (int64, 1 element) on the target device.
  m.def("random_assign_seeded(Tensor seed, int batch, int height, int width, int num_tiles) -> Tensor");

  // a*max + (1-a)*avg pooling with a = sigmoid(mu*beta) per channel, Caffe's geometry.
  m.def(
      "mixed_pool(Tensor input, Tensor beta, int[2] kernel, int[2] stride, int[2] padding, *, "
      "float mu=10.0) -> Tensor");
  m.def(
      "mixed_pool_backward(Tensor grad_output, Tensor input, Tensor beta, int[2] kernel, "
      "int[2] stride, int[2] padding, float mu) -> (Tensor, Tensor)");

  // Stochastic pooling (Zeiler & Fergus 2013): a random activation of each window in training,
  // the probability-weighted average at test time.
  m.def(
      "stochastic_pool(Tensor input, int[2] kernel, int[2] stride, int[2] padding, bool train=True, "
      "*, Generator? generator=None) -> Tensor");
  // Training pass given one uniform [0,1) draw per output: (output, index of the chosen pixel).
  m.def(
      "stochastic_pool_train(Tensor input, Tensor uniform, int[2] kernel, int[2] stride, "
      "int[2] padding) -> (Tensor, Tensor)");
  m.def("stochastic_pool_train_backward(Tensor grad_output, Tensor input, Tensor index) -> Tensor");
  m.def("stochastic_pool_test(Tensor input, int[2] kernel, int[2] stride, int[2] padding) -> Tensor");
  m.def(
      "stochastic_pool_test_backward(Tensor grad_output, Tensor input, int[2] kernel, int[2] stride, "
      "int[2] padding) -> Tensor");
  // Analog (RPU) arrays. One matrix-vector product per row of `input` on array tile[row]
  // (weight (T, O, K)): y = W x, or W^T d when transposed, with the periphery's noise and
  // bound management, DAC and ADC clipping and rounding (steps and bounds in absolute units),
  // and Gaussian output noise drawn from `seed`. tile_capacity: as tiled_conv's, the most rows
  // any one array gets (-1: not known); given, nothing reaches the host (a CUDA graph can hold
  // the op, bound management's repetitions included).
  m.def(
      "analog_mvm(Tensor input, Tensor weight, Tensor tile, Tensor seed, bool transposed, "
      "float inp_step, float inp_bound, float out_step, float out_bound, float out_noise, "
      "bool noise_management, bool bound_management, float max_bm_factor, *, "
      "int tile_capacity=-1) -> Tensor");
  // A convolution on analog arrays (weight (T, O, C, kh, kw)): patch (n, y, x) through
  // array t = assignment[n, y, x] with analog_mvm's periphery (the same noise draws as
  // analog_mvm over F.unfold's patch rows), times out_scale[t], plus bias[t] (-1: output 0);
  // channels-last output. Its input gradient: each output pixel's gradient times out_scale[t]
  // through the transposed array with the (backward) periphery, summed into the input's
  // pixels. CPU kernels only (the CUDA path goes through analog_mvm).
  m.def(
      "analog_conv(Tensor input, Tensor weight, Tensor? bias, Tensor assignment, "
      "Tensor out_scale, Tensor seed, int[2] stride, int[2] padding, float inp_step, "
      "float inp_bound, float out_step, float out_bound, float out_noise, "
      "bool noise_management, bool bound_management, float max_bm_factor) -> Tensor");
  m.def(
      "analog_conv_input_grad(Tensor grad_output, Tensor input, Tensor weight, Tensor assignment, "
      "Tensor out_scale, Tensor seed, int[2] stride, int[2] padding, float inp_step, "
      "float inp_bound, float out_step, float out_bound, float out_noise, "
      "bool noise_management, bool bound_management, float max_bm_factor) -> Tensor");
  // The hybrid in-memory computing update of one layer's arrays, in place (rapa/analog/hic.py,
  // HICArrays.apply_update with statistical programming): the gradient's steps into the
  // accumulator, whole LSBs transferred to the binary cells and the multi-level pair, programmed,
  // counted, and read back into `weight`. Returns how many weights transferred.
  m.def(
      "hic_update(Tensor(a!) weight, Tensor(b!) accumulator, Tensor(c!) bits, "
      "Tensor(d!) g_binary, Tensor(e!) levels, Tensor(f!) g_pair, Tensor(g!) set_count, "
      "Tensor(h!) reset_count, Tensor(i!) saturations, Tensor grad, Tensor out_scale, float lr, "
      "int[] bit_weights, int levels_count, int accumulator_bits, int accumulator_frac_bits, "
      "bool stochastic_rounding, float set_probability, float reset_probability, float g_max, "
      "float prog_noise_scale, float[] prog_coeff, float prog_coeff_g_max_reference, *, "
      "Generator? generator=None) -> int");
  // Pulsed update, in place: each row m is the rank-one update -lr d_m x_m^T of array tile[m],
  // by stochastic pulse coincidences on devices with their own steps and bounds. lr: one
  // number on the weight's device, read there (a CUDA graph replays with its current value).
  m.def(
      "rpu_update(Tensor(a!) weight, Tensor x, Tensor d, Tensor tile, Tensor dw_up, "
      "Tensor dw_down, Tensor w_min, Tensor w_max, Tensor seed, Tensor lr, float dw_min, "
      "float dw_min_std, int desired_bl, bool update_management, bool bl_management) -> ()");
}
