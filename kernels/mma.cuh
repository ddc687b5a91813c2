// mma.cuh: tensor-core and asynchronous-copy primitives for sm_80+ (Ampere, Hopper),
// written once for the GPU (inline PTX) and once for the CPU emulator
// (kernels/emu/mma_emu.h), so kernels built on them run under both.
//
//   to_tf32(x)            cvt.rna.tf32.f32: x rounded to TF32 (10-bit mantissa, round
//                         to nearest, ties away from zero); returned as raw .b32 bits
//   split_tf32(x, hi, lo) x ~= hi + lo with hi = tf32(x), lo = tf32(x - hi) (3xTF32)
//   mma_tf32(d, a, b)     d += a @ b, one warp-wide mma.sync.aligned.m16n8k8.row.col
//                         .f32.tf32.tf32.f32; every lane of the warp must call it
//                         with its fragments (PTX ISA "Matrix Fragments for
//                         mma.m16n8k8", .tf32), g = lane / 4, t = lane % 4:
//                           a[0] = A[g][t]   a[1] = A[g+8][t]  a[2] = A[g][t+4]  a[3] = A[g+8][t+4]
//                           b[0] = B[t][g]   b[1] = B[t+4][g]
//                           d[0] = D[g][2t]  d[1] = D[g][2t+1] d[2] = D[g+8][2t] d[3] = D[g+8][2t+1]
//   cp_async16(s, g)      cp.async.cg 16 bytes global -> shared (both 16-byte aligned)
//   cp_async4(s, g)       cp.async.ca 4 bytes
//   cp_async_commit()     cp.async.commit_group
//   cp_async_wait<N>()    cp.async.wait_group N: all but the N most recent groups landed
//                         (this thread's copies only: a __syncthreads must follow
//                         before other threads read them)
//
// Reusable by any kernel (conv's implicit GEMM included): #include "mma.cuh".
#ifndef GPUGRAD_MMA_CUH
#define GPUGRAD_MMA_CUH

#ifdef __CUDA_ARCH__
#if __CUDA_ARCH__ < 800
#error "mma.cuh needs sm_80 or newer (mma.sync .tf32 and cp.async)"
#endif

namespace gg_mma {

__device__ __forceinline__ unsigned to_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ void split_tf32(float x, unsigned& hi, unsigned& lo) {
    hi = to_tf32(x);
    lo = to_tf32(x - __uint_as_float(hi));
}

__device__ __forceinline__ void mma_tf32(float d[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace gg_mma

#else  // the CPU emulator (g++): the same functions in plain C++
#include "emu/mma_emu.h"
#endif

#endif  // GPUGRAD_MMA_CUH

// cp_async16_zfill(s, g, ok)  cp.async.cg 16 bytes with src-size ok ? 16 : 0: when !ok
//                             the 16 shared bytes are zero-filled and g is not read
//                             (one instruction for a guarded gather: no divergent
//                             zero-store path)
#ifndef GPUGRAD_MMA_CUH_ZFILL
#define GPUGRAD_MMA_CUH_ZFILL
#ifdef __CUDA_ARCH__
namespace gg_mma {
__device__ __forceinline__ void cp_async16_zfill(void* smem, const void* gmem, bool ok) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(ok ? 16 : 0)
                 : "memory");
}
}  // namespace gg_mma
#else
namespace gg_mma {
namespace detail {
#ifdef __SANITIZE_THREAD__
// not inlined: one program counter for every zero-filling copy, so the profiler sees
// every lane's shared write as one instruction, as on the GPU (inlined, g++ may
// duplicate the call along the paths of ok)
GG_MMA_EMU_UNTRACED inline void trace_write16(void* smem) {
    __tsan_write16(smem);
    asm volatile("" ::: "memory");  // no tail call: the recorded pc stays in here
}
#endif
}  // namespace detail
// traced as on the GPU: one shared write of 16 bytes by every lane, a global read by
// the lanes with ok only; the deferred copy reads a static zero chunk otherwise
inline void cp_async16_zfill(void* smem, const void* gmem, bool ok) {
    static const float zeros[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#ifdef __SANITIZE_THREAD__
    if (ok) __tsan_read16(const_cast<void*>(gmem));
    detail::trace_write16(smem);
#endif
    detail::cp_async(smem, ok ? gmem : static_cast<const void*>(zeros), 16);
}
}  // namespace gg_mma
#endif
#endif  // GPUGRAD_MMA_CUH_ZFILL

// Built on the primitives above, so the same for the GPU and the emulator:
//   round_tf32<N, SPLIT3>(x, lo)  N raw FP32 bits (a fragment loaded with LDS.32) to
//                                 TF32 in place, or (SPLIT3) hi in place + lo (3xTF32)
//   cp_async_wait_ring(stages)    wait for the oldest stage of a `stages`-deep cp.async
//                                 ring: stages - 2 groups may stay in flight
//                                 (cp.async.wait_group takes an immediate: 2, 1 or 0)
//   zero_acc(acc)                 a warp tile's MT x NL mma accumulators (4 each) = 0
#ifndef GPUGRAD_MMA_CUH_RING
#define GPUGRAD_MMA_CUH_RING
namespace gg_mma {

template <int N, bool SPLIT3>
__device__ __forceinline__ void round_tf32(unsigned* x, unsigned* lo) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
        if (SPLIT3) {
            unsigned h, l;
            split_tf32(__uint_as_float(x[i]), h, l);
            x[i] = h;
            lo[i] = l;
        } else {
            x[i] = to_tf32(__uint_as_float(x[i]));
        }
    }
}

__device__ __forceinline__ void cp_async_wait_ring(int stages) {
    if (stages >= 4)
        cp_async_wait<2>();
    else if (stages == 3)
        cp_async_wait<1>();
    else
        cp_async_wait<0>();
}

template <int MT, int NL>
__device__ __forceinline__ void zero_acc(float (&acc)[MT][NL][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NL; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
}

}  // namespace gg_mma
#endif  // GPUGRAD_MMA_CUH_RING
