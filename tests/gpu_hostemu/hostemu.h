// Host emulation of the CUDA C++ that edge/gpu/preprocess.cu uses, so that g++ compiles the same
// source and the unit tests run its kernels on a machine without a GPU.
//
// Execution model (hostemu.cpp): blocks run one after another; within a block, each CUDA thread is
// a fiber (ucontext) with its own stack, and __syncthreads() switches to the next fiber until every
// thread of the block has reached the barrier, exactly CUDA's rule for a block. A barrier reached by
// only some threads of a block (some returned early) is reported as an error: on a pre-Volta GPU
// such as the Jetson Nano's Maxwell that is undefined behaviour. Kernels without barriers run their
// threads as plain calls. One OS thread runs everything, so atomics are plain read-modify-writes and
// `__shared__` (a function-local static) is one block's shared memory.
//
// Arithmetic: the intrinsics below are the IEEE operations CUDA documents for them (round to nearest
// even; __float2int_rn rounds half to even). Build with -ffp-contract=off and without -ffast-math so
// g++ does not fuse or reorder what the kernel wrote explicitly (SSE2 float math on x86-64 is IEEE
// single/double with no excess precision).
#ifndef RETINA_EDGE_HOSTEMU_H
#define RETINA_EDGE_HOSTEMU_H

#include <cmath>
#include <cstddef>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

struct dim3 {
    unsigned int x, y, z;
};

namespace hostemu {
extern dim3 thread_idx, block_idx, block_dim, grid_dim;
void syncthreads();
}

#define threadIdx (::hostemu::thread_idx)
#define blockIdx (::hostemu::block_idx)
#define blockDim (::hostemu::block_dim)
#define gridDim (::hostemu::grid_dim)

inline void __syncthreads() { hostemu::syncthreads(); }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }

inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { unsigned int old = *p; *p = old + v; return old; }
inline int atomicAdd(int* p, int v) { int old = *p; *p = old + v; return old; }
inline int atomicMin(int* p, int v) { int old = *p; if (v < old) *p = v; return old; }
inline int atomicMax(int* p, int v) { int old = *p; if (v > old) *p = v; return old; }

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __double2float_rn(double v) { return (float)v; }
inline int __float2int_rn(float v) { return (int)std::nearbyint(v); }     // default mode: half to even
inline int __double2int_rn(double v) { return (int)std::nearbyint(v); }
inline unsigned int __float_as_uint(float v) { unsigned int u; std::memcpy(&u, &v, 4); return u; }
inline int __float_as_int(float v) { int i; std::memcpy(&i, &v, 4); return i; }
inline float __int_as_float(int i) { float v; std::memcpy(&v, &i, 4); return v; }

#endif
