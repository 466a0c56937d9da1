// Fused tiled- and analog-convolution kernels for the avx512 instruction set (see fused_conv_impl.h).
#define RAPA_ISA avx512
#define RAPA_VECTOR_BYTES 64
#define RAPA_VECTOR_REGISTERS 32
#include "fused_conv_impl.h"
#include "analog_conv_impl.h"
