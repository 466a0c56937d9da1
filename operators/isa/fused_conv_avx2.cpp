// Fused tiled- and analog-convolution kernels for the avx2 instruction set (see fused_conv_impl.h).
#define RAPA_ISA avx2
#define RAPA_VECTOR_BYTES 32
#define RAPA_VECTOR_REGISTERS 16
#include "fused_conv_impl.h"
#include "analog_conv_impl.h"
