// RAPA_HD marks a function callable from host and device code: __host__ __device__ when nvcc
// compiles the file, nothing for the host compiler. Plain preprocessor only, no includes.
#pragma once

#if defined(__CUDACC__)
#define RAPA_HD __host__ __device__
#else
#define RAPA_HD
#endif
