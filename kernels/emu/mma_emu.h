// mma_emu.h -- the emulator's implementation of kernels/mma.cuh (tensor-core mma.sync
// and cp.async), included by mma.cuh when it is compiled as host C++ (no __CUDA_ARCH__).
//
//  * mma_tf32 is warp-collective, as on the GPU: every lane writes its A/B fragments
//    to a per-warp staging area (thread_local = one per resident block, like
//    __shared__), the warp meets at __syncwarp, each lane computes its four D
//    elements from the PTX ISA fragment layout, and a second __syncwarp keeps the
//    staging area until every lane has read it. A lane that does not arrive is
//    reported by the emulator's warp-op checks.
//  * Inputs are read as TF32 (the low 13 mantissa bits ignored, as the tensor cores
//    do); products of TF32 numbers are exact in double, the four-term dot product
//    and the accumulator are summed in double and rounded once to float.
//  * to_tf32 rounds to nearest, ties away from zero (cvt.rna.tf32.f32).
//  * cp.async copies are deferred, not synchronous: each thread queues its copies,
//    commit_group closes a group, and wait_group<N> performs all but the N most
//    recent groups. A pipeline that reads a stage before waiting for it therefore
//    reads stale data here, as it could on a GPU.
//  * Profiling build (EmuModule(trace=True), g++ -fsanitize=thread instrumentation,
//    kernels/emu/trace.cpp): the emulator's own bookkeeping (the mma staging area and
//    the cp.async queues, thread-local like __shared__) is not instrumented, so it is
//    not mistaken for shared-memory traffic; a cp.async is recorded where it is issued
//    as what it is on the GPU, one global read and one shared write of its size (the
//    deferred memcpy itself is not instrumented).
#ifndef GPUGRAD_MMA_EMU_H
#define GPUGRAD_MMA_EMU_H

#include <cstring>
#include <deque>
#include <vector>

#ifdef __SANITIZE_THREAD__
#define GG_MMA_EMU_UNTRACED __attribute__((no_sanitize_thread, noinline))
extern "C" void __tsan_read4(void*);
extern "C" void __tsan_write4(void*);
extern "C" void __tsan_read16(void*);
extern "C" void __tsan_write16(void*);
#else
#define GG_MMA_EMU_UNTRACED
#endif

namespace gg_mma {

inline unsigned to_tf32(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf, nan: unchanged
    u += 0x1000u;                                    // half an ulp of TF32: ties away from zero
    return u & 0xffffe000u;
}

inline float tf32_value(unsigned bits) {
    bits &= 0xffffe000u;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline void split_tf32(float x, unsigned& hi, unsigned& lo) {
    hi = to_tf32(x);
    lo = to_tf32(x - __uint_as_float(hi));
}

namespace detail {
struct MmaStage {
    unsigned a[32][4];
    unsigned b[32][2];
};
inline int linear_tid() {
    return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}
GG_MMA_EMU_UNTRACED inline MmaStage& mma_stage(int warp) {
    static thread_local MmaStage stages[32];
    return stages[warp];
}
}  // namespace detail

GG_MMA_EMU_UNTRACED inline void mma_tf32(float d[4], const unsigned a[4], const unsigned b[2]) {
    const int tid = detail::linear_tid();
    const int lane = tid & 31;
    detail::MmaStage& st = detail::mma_stage(tid >> 5);
    for (int i = 0; i < 4; ++i) st.a[lane][i] = a[i];
    for (int i = 0; i < 2; ++i) st.b[lane][i] = b[i];
    __syncwarp();
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >= 2 ? 8 : 0);
        const int col = 2 * t + (i & 1);
        double s = d[i];
        for (int k = 0; k < 8; ++k) {
            // A[row][k] is held by lane (row % 8) * 4 + k % 4 in register (row >= 8) + 2 (k >= 4)
            const unsigned av = st.a[(row & 7) * 4 + (k & 3)][(row >> 3) + 2 * (k >> 2)];
            // B[k][col] is held by lane col * 4 + k % 4 in register (k >= 4)
            const unsigned bv = st.b[col * 4 + (k & 3)][k >> 2];
            s += (double)tf32_value(av) * (double)tf32_value(bv);
        }
        d[i] = (float)s;
    }
    __syncwarp();
}

namespace detail {
struct CpAsyncCopy {
    void* dst;
    const void* src;
    int bytes;
};
struct CpAsyncState {
    uint3 block;
    std::vector<CpAsyncCopy> open;
    std::deque<std::vector<CpAsyncCopy>> groups;
};
GG_MMA_EMU_UNTRACED inline CpAsyncState& cp_state() {
    // on the heap, not in thread-local storage: the (instrumented) container code then
    // touches no memory the profiler takes for __shared__
    // (one array per emulator worker thread, kept for the thread's life; <memory> cannot
    // follow the CUDA headers, whose __noinline__ macro breaks it)
    static thread_local CpAsyncState* states = nullptr;
    if (!states) states = new CpAsyncState[1024];
    CpAsyncState& st = states[linear_tid() & 1023];
    const uint3 b = blockIdx;
    if (st.block.x != b.x || st.block.y != b.y || st.block.z != b.z) {
        // a copy left pending by another block's thread (which exited without waiting)
        // must not land in this block's shared memory
        st.open.clear();
        st.groups.clear();
        st.block = b;
    }
    return st;
}
GG_MMA_EMU_UNTRACED inline void cp_async(void* dst, const void* src, int bytes) {
    cp_state().open.push_back({dst, src, bytes});
}
}  // namespace detail

inline void cp_async16(void* smem, const void* gmem) {
#ifdef __SANITIZE_THREAD__
    __tsan_read16(const_cast<void*>(gmem));
    __tsan_write16(smem);
#endif
    detail::cp_async(smem, gmem, 16);
}
inline void cp_async4(void* smem, const void* gmem) {
#ifdef __SANITIZE_THREAD__
    __tsan_read4(const_cast<void*>(gmem));
    __tsan_write4(smem);
#endif
    detail::cp_async(smem, gmem, 4);
}

GG_MMA_EMU_UNTRACED inline void cp_async_commit() {
    detail::CpAsyncState& st = detail::cp_state();
    st.groups.push_back(std::move(st.open));
    st.open.clear();
}

template <int N>
GG_MMA_EMU_UNTRACED inline void cp_async_wait() {
    detail::CpAsyncState& st = detail::cp_state();
    while ((int)st.groups.size() > N) {
        for (const detail::CpAsyncCopy& c : st.groups.front()) std::memcpy(c.dst, c.src, c.bytes);
        st.groups.pop_front();
    }
}

}  // namespace gg_mma

#endif  // GPUGRAD_MMA_EMU_H
