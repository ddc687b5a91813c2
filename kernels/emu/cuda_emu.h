// cuda_emu.h -- makes a CUDA C++ (.cu) file compile as host C++17 with g++, so that
// kernels/emu/runtime.cpp can run every CUDA thread of a block as a fiber on the CPU.
//
// It is pre-included (g++ -include) before the kernel source. It provides what a .cu
// file expects from nvcc: the qualifiers, threadIdx/blockIdx/blockDim/gridDim/warpSize,
// __shared__ memory, block barriers, warp shuffles and votes, atomics and the CUDA
// math/bit intrinsics the host math library lacks.
//
// Semantics (see runtime.cpp for the scheduler):
//  * threadIdx & co. are per-fiber values the scheduler stores in thread-local storage
//    on every switch.
//  * __shared__ is `thread_local`: one copy per OS worker thread, and a worker runs one
//    block at a time, so it is one copy per resident block, as on a GPU.
//  * `extern __shared__ T x[];` cannot be a macro; the Python loader rewrites that line
//    into a pointer to the launch's dynamic shared memory (gpugrad_emu_ts.dyn_smem).
//  * Barriers and warp ops record their call site (file:line via __builtin_FILE/LINE
//    default arguments) so that divergent barriers and mismatched warp ops are reported.
#ifndef GPUGRAD_CUDA_EMU_H
#define GPUGRAD_CUDA_EMU_H

// Standard headers first: they are include-guarded, so a later #include of them from
// the kernel is a no-op and cannot be broken by the macros defined below.
#include <algorithm>
#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

// CUDA's own headers compile as host C++ (no __CUDACC__): they give dim3, uint3,
// float4, make_float4, ... and, for half precision, __half/__nv_bfloat16 with host
// implementations. They must come before our macros, or they redefine __shared__ etc.
#if __has_include(<cuda_runtime.h>)
#include <cuda_runtime.h>
#include <device_launch_parameters.h>
#if __has_include(<cuda_fp16.h>)
#include <cuda_fp16.h>
#endif
#if __has_include(<cuda_bf16.h>)
#include <cuda_bf16.h>
#endif
#else
#error "cuda_emu.h needs the CUDA headers (cuda_runtime.h); set CUDA_HOME or pass -I<cuda>/include"
#endif

// ---------------------------------------------------------------------------------
// Qualifiers
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __forceinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// why: thread_local (not initial-exec TLS: dlopen refuses large static-TLS arrays).
// At block scope thread_local implies static, like __shared__.
#define __shared__ thread_local

#define GPUGRAD_EMU_API extern "C" __attribute__((visibility("hidden")))

// ---------------------------------------------------------------------------------
// Per-fiber thread state, written by the scheduler before every switch to a fiber.
struct gpugrad_emu_ts_t {
    uint3 tid;   // threadIdx
    uint3 bid;   // blockIdx
    uint3 bdim;  // blockDim
    uint3 gdim;  // gridDim
    char *dyn_smem;  // this block's dynamic shared memory (extern __shared__)
};
// why __thread and not thread_local: a C++11 extern thread_local is accessed through
// a wrapper call; __thread is a plain TLS access.
extern __thread gpugrad_emu_ts_t gpugrad_emu_ts __attribute__((visibility("hidden")));

#define threadIdx (static_cast<const uint3 &>(gpugrad_emu_ts.tid))
#define blockIdx (static_cast<const uint3 &>(gpugrad_emu_ts.bid))
#define blockDim (static_cast<const uint3 &>(gpugrad_emu_ts.bdim))
#define gridDim (static_cast<const uint3 &>(gpugrad_emu_ts.gdim))
#define warpSize 32

// ---------------------------------------------------------------------------------
// Runtime entry points (runtime.cpp)
enum gpugrad_emu_barrier_kind { GPUGRAD_BAR_SYNC = 0, GPUGRAD_BAR_COUNT, GPUGRAD_BAR_AND, GPUGRAD_BAR_OR };
enum gpugrad_emu_warp_kind {
    GPUGRAD_W_SYNC = 0,
    GPUGRAD_W_SHFL_IDX,
    GPUGRAD_W_SHFL_UP,
    GPUGRAD_W_SHFL_DOWN,
    GPUGRAD_W_SHFL_XOR,
    GPUGRAD_W_BALLOT,
    GPUGRAD_W_ANY,
    GPUGRAD_W_ALL,
    GPUGRAD_W_MATCH_ANY,
    GPUGRAD_W_MATCH_ALL,
    GPUGRAD_W_REDUCE_ADD,
    GPUGRAD_W_REDUCE_MIN_U,
    GPUGRAD_W_REDUCE_MAX_U,
    GPUGRAD_W_REDUCE_MIN_I,
    GPUGRAD_W_REDUCE_MAX_I,
    GPUGRAD_W_REDUCE_AND,
    GPUGRAD_W_REDUCE_OR,
    GPUGRAD_W_REDUCE_XOR,
    GPUGRAD_W_ACTIVEMASK,
    GPUGRAD_W_NKINDS
};
GPUGRAD_EMU_API int gpugrad_emu_barrier(int kind, int pred, const char *file, int line);
GPUGRAD_EMU_API unsigned long long gpugrad_emu_warp_op(int kind, unsigned mask,
                                                       unsigned long long value, int size,
                                                       int arg, int width, const char *file,
                                                       int line, int *pred_out);
GPUGRAD_EMU_API void gpugrad_emu_trap(const char *file, int line);

// --- cooperative launch (grid-wide barrier); runtime.cpp "Cooperative launch" section
GPUGRAD_EMU_API void gpugrad_emu_grid_barrier(const char *file, int line);
GPUGRAD_EMU_API int gpugrad_emu_is_cooperative(void);
GPUGRAD_EMU_API void gpugrad_emu_nanosleep(unsigned ns);

#define GPUGRAD_SITE const char *gpugrad_file = __builtin_FILE(), int gpugrad_line = __builtin_LINE()
#define GPUGRAD_AT gpugrad_file, gpugrad_line

// ---------------------------------------------------------------------------------
// Block barriers
inline void __syncthreads(GPUGRAD_SITE) { gpugrad_emu_barrier(GPUGRAD_BAR_SYNC, 0, GPUGRAD_AT); }
inline int __syncthreads_count(int p, GPUGRAD_SITE) {
    return gpugrad_emu_barrier(GPUGRAD_BAR_COUNT, p != 0, GPUGRAD_AT);
}
inline int __syncthreads_and(int p, GPUGRAD_SITE) {
    return gpugrad_emu_barrier(GPUGRAD_BAR_AND, p != 0, GPUGRAD_AT);
}
inline int __syncthreads_or(int p, GPUGRAD_SITE) {
    return gpugrad_emu_barrier(GPUGRAD_BAR_OR, p != 0, GPUGRAD_AT);
}

// ---------------------------------------------------------------------------------
// Warp operations. A warp op completes when every non-exited lane named in `mask` has
// arrived at the same op (same call site and mask).
namespace gpugrad_emu {
template <typename T>
inline unsigned long long to_bits(const T &v) {
    static_assert(sizeof(T) <= 8, "warp shuffles of types wider than 8 bytes are not supported");
    static_assert(std::is_trivially_copyable<T>::value, "warp shuffle type must be trivially copyable");
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
inline T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
template <typename T>
inline T shfl(int kind, unsigned mask, const T &var, int arg, int width, const char *f, int l) {
    return from_bits<T>(gpugrad_emu_warp_op(kind, mask, to_bits(var), (int)sizeof(T), arg, width, f, l, nullptr));
}
}  // namespace gpugrad_emu

inline void __syncwarp(unsigned mask = 0xffffffffu, GPUGRAD_SITE) {
    gpugrad_emu_warp_op(GPUGRAD_W_SYNC, mask, 0, 0, 0, 32, GPUGRAD_AT, nullptr);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize, GPUGRAD_SITE) {
    return gpugrad_emu::shfl(GPUGRAD_W_SHFL_IDX, mask, var, srcLane, width, GPUGRAD_AT);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, GPUGRAD_SITE) {
    return gpugrad_emu::shfl(GPUGRAD_W_SHFL_UP, mask, var, (int)delta, width, GPUGRAD_AT);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, GPUGRAD_SITE) {
    return gpugrad_emu::shfl(GPUGRAD_W_SHFL_DOWN, mask, var, (int)delta, width, GPUGRAD_AT);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize, GPUGRAD_SITE) {
    return gpugrad_emu::shfl(GPUGRAD_W_SHFL_XOR, mask, var, laneMask, width, GPUGRAD_AT);
}
inline unsigned __ballot_sync(unsigned mask, int pred, GPUGRAD_SITE) {
    return (unsigned)gpugrad_emu_warp_op(GPUGRAD_W_BALLOT, mask, pred != 0, 4, 0, 32, GPUGRAD_AT, nullptr);
}
inline int __any_sync(unsigned mask, int pred, GPUGRAD_SITE) {
    return (int)gpugrad_emu_warp_op(GPUGRAD_W_ANY, mask, pred != 0, 4, 0, 32, GPUGRAD_AT, nullptr);
}
inline int __all_sync(unsigned mask, int pred, GPUGRAD_SITE) {
    return (int)gpugrad_emu_warp_op(GPUGRAD_W_ALL, mask, pred != 0, 4, 0, 32, GPUGRAD_AT, nullptr);
}
// The lanes of the warp that are at this same __activemask call (the others have exited
// or wait elsewhere, i.e. are on another branch); it waits until that is known.
inline unsigned __activemask(GPUGRAD_SITE) {
    return (unsigned)gpugrad_emu_warp_op(GPUGRAD_W_ACTIVEMASK, 0xffffffffu, 0, 4, 0, 32, GPUGRAD_AT, nullptr);
}
template <typename T>
inline unsigned __match_any_sync(unsigned mask, T value, GPUGRAD_SITE) {
    return (unsigned)gpugrad_emu_warp_op(GPUGRAD_W_MATCH_ANY, mask, gpugrad_emu::to_bits(value),
                                         (int)sizeof(T), 0, 32, GPUGRAD_AT, nullptr);
}
template <typename T>
inline unsigned __match_all_sync(unsigned mask, T value, int *pred, GPUGRAD_SITE) {
    return (unsigned)gpugrad_emu_warp_op(GPUGRAD_W_MATCH_ALL, mask, gpugrad_emu::to_bits(value),
                                         (int)sizeof(T), 0, 32, GPUGRAD_AT, pred);
}
#define GPUGRAD_REDUCE(NAME, T, KIND)                                                         \
    inline T NAME(unsigned mask, T value, GPUGRAD_SITE) {                                     \
        return (T)gpugrad_emu_warp_op(KIND, mask, (unsigned)value, 4, 0, 32, GPUGRAD_AT, nullptr); \
    }
GPUGRAD_REDUCE(__reduce_add_sync, unsigned, GPUGRAD_W_REDUCE_ADD)
GPUGRAD_REDUCE(__reduce_add_sync, int, GPUGRAD_W_REDUCE_ADD)
GPUGRAD_REDUCE(__reduce_min_sync, unsigned, GPUGRAD_W_REDUCE_MIN_U)
GPUGRAD_REDUCE(__reduce_min_sync, int, GPUGRAD_W_REDUCE_MIN_I)
GPUGRAD_REDUCE(__reduce_max_sync, unsigned, GPUGRAD_W_REDUCE_MAX_U)
GPUGRAD_REDUCE(__reduce_max_sync, int, GPUGRAD_W_REDUCE_MAX_I)
GPUGRAD_REDUCE(__reduce_and_sync, unsigned, GPUGRAD_W_REDUCE_AND)
GPUGRAD_REDUCE(__reduce_or_sync, unsigned, GPUGRAD_W_REDUCE_OR)
GPUGRAD_REDUCE(__reduce_xor_sync, unsigned, GPUGRAD_W_REDUCE_XOR)
#undef GPUGRAD_REDUCE

// ---------------------------------------------------------------------------------
// Memory fences, cache-hinted loads/stores, misc
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <typename T> inline T __ldg(const T *p) { return *p; }
template <typename T> inline T __ldcg(const T *p) { return *p; }
template <typename T> inline T __ldca(const T *p) { return *p; }
template <typename T> inline T __ldcs(const T *p) { return *p; }
template <typename T> inline T __ldlu(const T *p) { return *p; }
template <typename T> inline T __ldcv(const T *p) { return *p; }
template <typename T> inline void __stcg(T *p, T v) { *p = v; }
template <typename T> inline void __stcs(T *p, T v) { *p = v; }
template <typename T> inline void __stwb(T *p, T v) { *p = v; }
template <typename T> inline void __stwt(T *p, T v) { *p = v; }
inline void __nanosleep(unsigned ns) { gpugrad_emu_nanosleep(ns); }  // yields the OS thread
#if defined(__x86_64__)
inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
#else
inline long long clock64() { return (long long)std::clock(); }
#endif
inline void __trap_at(const char *f, int l) { gpugrad_emu_trap(f, l); }
#define __trap() __trap_at(__FILE__, __LINE__)
#define __brkpt() ((void)0)
#define __prof_trigger(x) ((void)0)

// ---------------------------------------------------------------------------------
// Atomics (real atomics: blocks may run on several worker threads)
namespace gpugrad_emu {
template <typename T, typename F>
inline T cas_loop(T *addr, F op) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomic on unsupported size");
    using U = typename std::conditional<sizeof(T) == 4, unsigned, unsigned long long>::type;
    U *a = reinterpret_cast<U *>(addr);
    U old = __atomic_load_n(a, __ATOMIC_RELAXED);
    for (;;) {
        T oldv, newv;
        std::memcpy(&oldv, &old, sizeof(T));
        newv = op(oldv);
        U nb;
        std::memcpy(&nb, &newv, sizeof(T));
        if (__atomic_compare_exchange_n(a, &old, nb, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return oldv;
    }
}
}  // namespace gpugrad_emu

#define GPUGRAD_ATOMIC_INT(T)                                                                  \
    inline T atomicAdd(T *a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }      \
    inline T atomicSub(T *a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }      \
    inline T atomicExch(T *a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }    \
    inline T atomicAnd(T *a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }      \
    inline T atomicOr(T *a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }        \
    inline T atomicXor(T *a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }      \
    inline T atomicMax(T *a, T v) {                                                            \
        return gpugrad_emu::cas_loop(a, [v](T o) { return o < v ? v : o; });                  \
    }                                                                                          \
    inline T atomicMin(T *a, T v) {                                                            \
        return gpugrad_emu::cas_loop(a, [v](T o) { return v < o ? v : o; });                  \
    }                                                                                          \
    inline T atomicCAS(T *a, T cmp, T v) {                                                     \
        __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);    \
        return cmp;                                                                            \
    }
GPUGRAD_ATOMIC_INT(int)
GPUGRAD_ATOMIC_INT(unsigned int)
GPUGRAD_ATOMIC_INT(unsigned long long)
GPUGRAD_ATOMIC_INT(long long)
#undef GPUGRAD_ATOMIC_INT

inline float atomicAdd(float *a, float v) { return gpugrad_emu::cas_loop(a, [v](float o) { return o + v; }); }
inline double atomicAdd(double *a, double v) { return gpugrad_emu::cas_loop(a, [v](double o) { return o + v; }); }
inline float atomicSub(float *a, float v) { return gpugrad_emu::cas_loop(a, [v](float o) { return o - v; }); }
inline float atomicExch(float *a, float v) { return gpugrad_emu::cas_loop(a, [v](float) { return v; }); }
inline float atomicMax(float *a, float v) {
    return gpugrad_emu::cas_loop(a, [v](float o) { return std::fmax(o, v); });
}
inline float atomicMin(float *a, float v) {
    return gpugrad_emu::cas_loop(a, [v](float o) { return std::fmin(o, v); });
}
inline unsigned atomicInc(unsigned *a, unsigned v) {
    return gpugrad_emu::cas_loop(a, [v](unsigned o) { return o >= v ? 0u : o + 1; });
}
inline unsigned atomicDec(unsigned *a, unsigned v) {
    return gpugrad_emu::cas_loop(a, [v](unsigned o) { return (o == 0 || o > v) ? v : o - 1; });
}
inline unsigned short atomicCAS(unsigned short *a, unsigned short cmp, unsigned short v) {
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
#define GPUGRAD_SCOPED(NAME) template <typename... A> inline auto NAME##_block(A... a) { return NAME(a...); } \
    template <typename... A> inline auto NAME##_system(A... a) { return NAME(a...); }
GPUGRAD_SCOPED(atomicAdd)
GPUGRAD_SCOPED(atomicSub)
GPUGRAD_SCOPED(atomicExch)
GPUGRAD_SCOPED(atomicMax)
GPUGRAD_SCOPED(atomicMin)
GPUGRAD_SCOPED(atomicCAS)
GPUGRAD_SCOPED(atomicAnd)
GPUGRAD_SCOPED(atomicOr)
GPUGRAD_SCOPED(atomicXor)
GPUGRAD_SCOPED(atomicInc)
GPUGRAD_SCOPED(atomicDec)
#undef GPUGRAD_SCOPED

// ---------------------------------------------------------------------------------
// CUDA's non-template min/max (host C++ only has std::min/std::max templates)
#define GPUGRAD_MINMAX(R, A, B)                          \
    inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; } \
    inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
GPUGRAD_MINMAX(int, int, int)
GPUGRAD_MINMAX(unsigned, unsigned, unsigned)
GPUGRAD_MINMAX(unsigned, int, unsigned)
GPUGRAD_MINMAX(unsigned, unsigned, int)
GPUGRAD_MINMAX(long, long, long)
GPUGRAD_MINMAX(unsigned long, unsigned long, unsigned long)
GPUGRAD_MINMAX(unsigned long, long, unsigned long)
GPUGRAD_MINMAX(unsigned long, unsigned long, long)
GPUGRAD_MINMAX(long long, long long, long long)
GPUGRAD_MINMAX(unsigned long long, unsigned long long, unsigned long long)
GPUGRAD_MINMAX(unsigned long long, long long, unsigned long long)
GPUGRAD_MINMAX(unsigned long long, unsigned long long, long long)
#undef GPUGRAD_MINMAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin((double)a, b); }
inline double max(float a, double b) { return std::fmax((double)a, b); }
inline double min(double a, float b) { return std::fmin(a, (double)b); }
inline double max(double a, float b) { return std::fmax(a, (double)b); }

// ---------------------------------------------------------------------------------
// Math intrinsics the host library lacks. Fast-math variants use the accurate host
// functions (results may differ from the device in the last bits).
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / std::cbrt(x); }
inline double rcbrt(double x) { return 1.0 / std::cbrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline void __sincosf(float x, float *s, float *c) { *s = std::sin(x); *c = std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmaf_rz(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmaf_ru(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmaf_rd(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// why a volatile temporary: __f*_rn must never be contracted into an FMA.
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fadd_rz(float a, float b) { return __fadd_rn(a, b); }
inline float __fmul_rz(float a, float b) { return __fmul_rn(a, b); }
inline double __dadd_rn(double a, double b) { volatile double r = a + b; return r; }
inline double __dsub_rn(double a, double b) { volatile double r = a - b; return r; }
inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float sinpif(float x) { return std::sin((float)M_PI * x); }
inline float cospif(float x) { return std::cos((float)M_PI * x); }
inline double sinpi(double x) { return std::sin(M_PI * x); }
inline double cospi(double x) { return std::cos(M_PI * x); }
inline void sincospif(float x, float *s, float *c) { *s = sinpif(x); *c = cospif(x); }
inline float normcdff(float x) { return 0.5f * std::erfc(-x * (float)M_SQRT1_2); }
inline double normcdf(double x) { return 0.5 * std::erfc(-x * M_SQRT1_2); }
inline float rhypotf(float x, float y) { return 1.0f / std::hypot(x, y); }
inline float norm3df(float a, float b, float c) { return std::sqrt(a * a + b * b + c * c); }
inline float rnorm3df(float a, float b, float c) { return 1.0f / norm3df(a, b, c); }
inline float saturatef(float x) { return __saturatef(x); }

// Conversions: the device saturates out-of-range values and maps NaN to 0.
namespace gpugrad_emu {
template <typename I, typename F>
inline I sat(F x) {
    if (x != x) return 0;
    if (x <= (F)std::numeric_limits<I>::min()) return std::numeric_limits<I>::min();
    if (x >= (F)std::numeric_limits<I>::max()) return std::numeric_limits<I>::max();
    return (I)x;
}
}  // namespace gpugrad_emu
inline int __float2int_rn(float x) { return gpugrad_emu::sat<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return gpugrad_emu::sat<int>(std::trunc(x)); }
inline int __float2int_rd(float x) { return gpugrad_emu::sat<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return gpugrad_emu::sat<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return gpugrad_emu::sat<unsigned>(std::nearbyint(x)); }
inline unsigned __float2uint_rz(float x) { return gpugrad_emu::sat<unsigned>(std::trunc(x)); }
inline unsigned __float2uint_rd(float x) { return gpugrad_emu::sat<unsigned>(std::floor(x)); }
inline unsigned __float2uint_ru(float x) { return gpugrad_emu::sat<unsigned>(std::ceil(x)); }
inline long long __float2ll_rn(float x) { return gpugrad_emu::sat<long long>(std::nearbyint(x)); }
inline long long __float2ll_rz(float x) { return gpugrad_emu::sat<long long>(std::trunc(x)); }
inline int __double2int_rn(double x) { return gpugrad_emu::sat<int>(std::nearbyint(x)); }
inline int __double2int_rz(double x) { return gpugrad_emu::sat<int>(std::trunc(x)); }
inline long long __double2ll_rn(double x) { return gpugrad_emu::sat<long long>(std::nearbyint(x)); }
inline float __double2float_rn(double x) { return (float)x; }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned x) { return (float)x; }
inline float __ll2float_rn(long long x) { return (float)x; }
inline double __int2double_rn(int x) { return (double)x; }
inline int __float_as_int(float x) { int r; std::memcpy(&r, &x, 4); return r; }
inline unsigned __float_as_uint(float x) { unsigned r; std::memcpy(&r, &x, 4); return r; }
inline float __int_as_float(int x) { float r; std::memcpy(&r, &x, 4); return r; }
inline float __uint_as_float(unsigned x) { float r; std::memcpy(&r, &x, 4); return r; }
inline long long __double_as_longlong(double x) { long long r; std::memcpy(&r, &x, 8); return r; }
inline double __longlong_as_double(long long x) { double r; std::memcpy(&r, &x, 8); return r; }
inline int __double2hiint(double x) { return (int)(__double_as_longlong(x) >> 32); }
inline int __double2loint(double x) { return (int)__double_as_longlong(x); }
inline double __hiloint2double(int hi, int lo) {
    return __longlong_as_double((long long)(((unsigned long long)(unsigned)hi << 32) | (unsigned)lo));
}

// Integer intrinsics
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
inline unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned)x) << 32) | __brev((unsigned)(x >> 32));
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
inline int __mul24(int a, int b) { return ((a << 8) >> 8) * ((b << 8) >> 8); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline unsigned __sad(int x, int y, unsigned z) { return z + (unsigned)(x > y ? x - y : y - x); }
inline unsigned __usad(unsigned x, unsigned y, unsigned z) { return z + (x > y ? x - y : y - x); }
inline int __hadd(int a, int b) { return (int)(((long long)a + b) >> 1); }
inline int __rhadd(int a, int b) { return (int)(((long long)a + b + 1) >> 1); }
inline unsigned __uhadd(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a + b) >> 1); }
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)((((unsigned long long)hi << 32) | lo) << (s & 31) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)((((unsigned long long)hi << 32) | lo) >> (s & 31));
}
inline unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned s) {
    return __funnelshift_l(lo, hi, s > 32 ? 32 : s);
}
inline unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned s) {
    return s >= 32 ? hi : __funnelshift_r(lo, hi, s);
}

// ---------------------------------------------------------------------------------
// Cooperative launch. A kernel of a module built with enable_cooperative_groups=True is
// launched with every block resident at once (one OS thread per block); a grid-wide
// barrier then waits until every live thread of every block has reached it. Kernels
// can call it as gpugrad_emu_grid_sync() (feature macro GPUGRAD_EMU_GRID_SYNC) or
// through the cooperative_groups subset below. Calling it in a kernel that was not
// launched cooperatively, or a block exiting while others wait, fails the launch.
#define GPUGRAD_EMU_GRID_SYNC 1
inline void gpugrad_emu_grid_sync(GPUGRAD_SITE) { gpugrad_emu_grid_barrier(GPUGRAD_AT); }
namespace cooperative_groups {
struct grid_group {
    void sync(GPUGRAD_SITE) const { gpugrad_emu_grid_barrier(GPUGRAD_AT); }
    bool is_valid() const { return gpugrad_emu_is_cooperative() != 0; }
    unsigned long long num_blocks() const {
        return (unsigned long long)gridDim.x * gridDim.y * gridDim.z;
    }
    unsigned long long block_rank() const {
        return ((unsigned long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    }
    unsigned long long size() const {
        return num_blocks() * blockDim.x * blockDim.y * blockDim.z;
    }
    unsigned long long thread_rank() const {
        return block_rank() * blockDim.x * blockDim.y * blockDim.z +
               (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    }
};
inline grid_group this_grid() { return grid_group(); }
}  // namespace cooperative_groups

#endif  // GPUGRAD_CUDA_EMU_H
