// Fused tiled- and analog-convolution kernels for the generic instruction set (see fused_conv_impl.h).
#define RAPA_ISA generic
#define RAPA_VECTOR_BYTES 16
#define RAPA_VECTOR_REGISTERS 16
#include "fused_conv_impl.h"
#include "analog_conv_impl.h"
