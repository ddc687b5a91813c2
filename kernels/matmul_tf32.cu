// matmul_tf32.cu: GEMM on the tensor cores in TF32 (sm_80+), opt-in from Python
// (gg.kernels.allow_tf32 / gg.kernels.tf32_mode; see gpugrad/backend/kernels.py).
//
//   C[M,N] = act(alpha * op(A) @ op(B) + bias[N])      float32 in and out
//
// Two precisions, one mainloop:
//  * TF32 (entry points matmul_tf32_*): operands rounded to TF32 (cvt.rna, 10-bit
//    mantissa), FP32 accumulation: relative error ~1e-3 of the summed magnitudes,
//    what cuBLAS/cuDNN give under PyTorch's allow_tf32;
//  * 3xTF32 (matmul_3xtf32_*): each operand split as x = hi + lo with hi = tf32(x),
//    lo = tf32(x - hi); a.b ~= a_lo.b_hi + a_hi.b_lo + a_hi.b_hi (the a_lo.b_lo term,
//    ~2^-22 relative, is dropped): FP32-level accuracy at three mma per product.
//
// Design (CUTLASS sm80 multistage, 64x64 warp tiles):
//  * block tile 128x256x32, 8 warps (2 x 4) of 64x64, each warp 4 x 8 mma.m16n8k8
//    tiles per k step of 8 (128 mma per k tile of 32: 1.4 shared-memory wavefronts per
//    mma with the tile fills, under the 1.5 an H100 has per mma.sync at its rate);
//  * operand tiles go global -> shared with cp.async (no register staging) into a ring
//    of `stages` stages in dynamic shared memory (the host opts in past 48 KiB and
//    picks 4 stages on sm_90, 3 on sm_80: kernels.tf32_stages); one __syncthreads per
//    k tile;
//  * fragment-ordered k: the mma's reduction index is relabelled so that in k step s
//    (0..3) of a tile, lane t's k = t holds the tile's k = 8t + 2s and k = t + 4 holds
//    8t + 2s + 1 (the same relabelling for A and B, so the sum is unchanged). One
//    16-byte shared load then gives a lane its A or B values for two k steps
//    (LDS.128, the ldmatrix equivalent for 32-bit operands), 4x fewer load
//    instructions than one LDS.32 per fragment register;
//  * conflict-free shared layouts, both 16-byte aligned for cp.async:
//    k-contiguous operands (A in NN/NT, B in NT/TT) are stored as rows of 32 k padded to
//    36 floats; mn-contiguous ones (A in TN/TT, B in NN/TN) as rows of k with the 16-byte
//    chunks XOR-swizzled by sw(k) = (k/8 % 2) | (k/16 % 2) << 2, and their m (n) index
//    relabelled within the warp so that lane g reads 8 consecutive floats: both make
//    the 8 lanes of every quarter warp hit 8 different 4-bank groups, for the fills
//    too;
//  * rounding (or the hi/lo split) happens in registers on the loaded fragments;
//  * compile-time layouts (entry point suffix _nt/_tn/_tt, none = NN); split-K over
//    gridDim.z as in matmul.cu (partial products to C + z*M*ldc, epilogue in
//    matmul_splitk_reduce_f32). No relu-mask prologue: the host takes the FP32 kernel
//    for masked products.
#include "mma.cuh"

namespace gg_tf32 {

constexpr int BK = 32;  // k per tile (4 mma k steps)

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0ull;
}

// A BMN x BK tile of op(X) in shared memory, rows of 16-byte chunks (no padding),
// the chunks of each row XOR-swizzled so that the fragment loads and the fills are
// conflict-free. KMAJOR (element (mn, k) at X[mn*ld + k]): row mn holds its 32 k,
// chunk c at c ^ (mn % 8). Else row k holds BMN values of mn, chunk c at
// c ^ 2 (k % 4).
template <int BMN, int NT, bool KMAJOR>
struct Tile {
    static constexpr int LD = KMAJOR ? BK : BMN;
    static constexpr int ROWS = KMAJOR ? BMN : BK;
    static constexpr int CHUNKS = LD / 4;  // 16-byte chunks per row
    static constexpr int SIZE = ROWS * LD;  // floats per stage
    static constexpr int PER_THREAD = ROWS * CHUNKS / NT;
    static_assert(ROWS * CHUNKS % NT == 0 && PER_THREAD >= 1, "tile must split into chunks");

    static __device__ __forceinline__ int swz(int row) {
        return KMAJOR ? (row & 7) : ((row & 3) << 1);
    }
    // shared offset of the chunk holding (row, 4 * chunk .. 4 * chunk + 3)
    static __device__ __forceinline__ int at(int row, int chunk) {
        return row * LD + 4 * (chunk ^ swz(row));
    }
    // the raw bits of op(X)[mn][k]
    static __device__ __forceinline__ unsigned get(const float* s, int mn, int k) {
        const int row = KMAJOR ? mn : k, col = KMAJOR ? k : mn;
        return __float_as_uint(s[at(row, col >> 2) + (col & 3)]);
    }

    // Queue the copies of the tile whose corner is (mn0, k0); elements outside
    // (ext_mn, ext_k) are zero-filled with ordinary shared stores. A thread copies
    // chunk q of rows r0, r0 + RSTEP, ...; a tile wholly inside takes the branch-free
    // path (one source pointer, compile-time strides: few live registers).
    static __device__ __forceinline__ void load(float* s, const float* __restrict__ x, int ld,
                                                int ext_mn, int ext_k, int mn0, int k0, bool vec) {
        constexpr int RSTEP = NT / CHUNKS;
        static_assert(NT % CHUNKS == 0, "a thread keeps one chunk column");
        const int r0 = threadIdx.x / CHUNKS;
        const int q = threadIdx.x % CHUNKS;
        const int gr0 = (KMAJOR ? mn0 : k0) + r0;
        const int gc = (KMAJOR ? k0 : mn0) + 4 * q;
        const int ext_r = KMAJOR ? ext_mn : ext_k;
        const int ext_c = KMAJOR ? ext_k : ext_mn;
        const float* src = x + gr0 * ld + gc;
        const bool inside = vec && (KMAJOR ? mn0 : k0) + ROWS <= ext_r &&
                            (KMAJOR ? k0 : mn0) + 4 * CHUNKS <= ext_c;
        if (inside) {
#pragma unroll
            for (int c = 0; c < PER_THREAD; ++c)
                gg_mma::cp_async16(s + at(r0 + c * RSTEP, q), src + c * RSTEP * ld);
            return;
        }
#pragma unroll 1
        for (int c = 0; c < PER_THREAD; ++c) {
            const int r = r0 + c * RSTEP;
            const int gr = gr0 + c * RSTEP;
            float* dst = s + at(r, q);
            const float* sp = src + c * RSTEP * ld;
            if (gr < ext_r && vec && gc + 3 < ext_c) {
                gg_mma::cp_async16(dst, sp);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (gr < ext_r && gc + j < ext_c)
                        gg_mma::cp_async4(dst + j, sp + j);
                    else
                        dst[j] = 0.0f;
                }
            }
        }
    }
};

// raw FP32 bits -> TF32 (cvt.rna) in place, or hi (in place) + lo for 3xTF32
template <int N, bool SPLIT3>
__device__ __forceinline__ void round_frag(unsigned* x, unsigned* lo) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
        if (SPLIT3) {
            unsigned h, l;
            gg_mma::split_tf32(__uint_as_float(x[i]), h, l);
            x[i] = h;
            lo[i] = l;
        } else {
            x[i] = gg_mma::to_tf32(__uint_as_float(x[i]));
        }
    }
}

__device__ __forceinline__ void wait_stage(int stages) {
    // cp.async.wait_group takes an immediate: stages - 2 groups may stay in flight
    if (stages >= 4)
        gg_mma::cp_async_wait<2>();
    else if (stages == 3)
        gg_mma::cp_async_wait<1>();
    else
        gg_mma::cp_async_wait<0>();
}

template <int BM, int BN, int WARPS_M, int WARPS_N, bool TA, bool TB, bool SPLIT3>
__device__ __forceinline__ void gemm(const float* __restrict__ A, const float* __restrict__ B,
                                     float* __restrict__ C, const float* __restrict__ bias,
                                     int M, int N, int K, int lda, int ldb, int ldc,
                                     int k_chunk, int has_bias, float alpha, int relu,
                                     int stages) {
    constexpr int NT = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M;
    constexpr int WN = BN / WARPS_N;
    constexpr int MT = WM / 16;  // mma tiles per warp along m
    constexpr int NL = WN / 8;   // along n
    constexpr int GROUP = 8;
    static_assert(WM == 64 && WN == 64, "the fragment relabelling assumes 64x64 warp tiles");
    using TileA = Tile<BM, NT, !TA>;
    using TileB = Tile<BN, NT, TB>;
    constexpr int STAGE = TileA::SIZE + TileB::SIZE;  // floats
    extern __shared__ __align__(16) float smem[];

    const int tiles_m = (M + BM - 1) / BM;
    const int tiles_n = (N + BN - 1) / BN;
    const int pid = blockIdx.x;
    const int per_group = GROUP * tiles_n;
    const int first_m = (pid / per_group) * GROUP;
    const int group_rows = min(tiles_m - first_m, GROUP);
    const int m0 = (first_m + (pid % per_group) % group_rows) * BM;
    const int n0 = ((pid % per_group) / group_rows) * BN;
    const int k_begin = blockIdx.z * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);
    const int ktiles = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
    const bool vec_a = (lda % 4 == 0) && aligned16(A);
    const bool vec_b = (ldb % 4 == 0) && aligned16(B);

    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int wm0 = (warp / WARPS_N) * WM;
    const int wn0 = (warp % WARPS_N) * WN;

    // prologue: stages - 1 tiles in flight
    for (int s = 0; s < stages - 1; ++s) {
        if (s < ktiles) {
            float* sa = smem + s * STAGE;
            TileA::load(sa, A, lda, M, k_end, m0, k_begin + s * BK, vec_a);
            TileB::load(sa + TileA::SIZE, B, ldb, N, k_end, n0, k_begin + s * BK, vec_b);
        }
        gg_mma::cp_async_commit();
    }

    float acc[MT][NL][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NL; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    int read = 0;              // stage of tile kt
    int write = stages - 1;    // stage of tile kt + stages - 1
    for (int kt = 0; kt < ktiles; ++kt) {
        wait_stage(stages);      // this thread's copies of tile kt landed
        __syncthreads();        // everyone's; and stage `write` (tile kt-1) is no longer read
        const int next = kt + stages - 1;
        if (next < ktiles) {
            float* sn = smem + write * STAGE;
            TileA::load(sn, A, lda, M, k_end, m0, k_begin + next * BK, vec_a);
            TileB::load(sn + TileA::SIZE, B, ldb, N, k_end, n0, k_begin + next * BK, vec_b);
        }
        gg_mma::cp_async_commit();
        write = write + 1 == stages ? 0 : write + 1;

        const float* sa = smem + read * STAGE;
        const float* sb = sa + TileA::SIZE;
        read = read + 1 == stages ? 0 : read + 1;
#pragma unroll
        for (int ks = 0; ks < BK; ks += 8) {
            // fragments straight into the mma's operand registers (one conflict-free
            // LDS.32 each), rounded (split) in place
            unsigned ah[MT][4], al[MT][4], bh[NL][2], bl[NL][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int r = wm0 + 16 * i + g;
                ah[i][0] = TileA::get(sa, r, ks + t);
                ah[i][1] = TileA::get(sa, r + 8, ks + t);
                ah[i][2] = TileA::get(sa, r, ks + t + 4);
                ah[i][3] = TileA::get(sa, r + 8, ks + t + 4);
            }
#pragma unroll
            for (int j = 0; j < NL; ++j) {
                const int c = wn0 + 8 * j + g;
                bh[j][0] = TileB::get(sb, c, ks + t);
                bh[j][1] = TileB::get(sb, c, ks + t + 4);
            }
            round_frag<MT * 4, SPLIT3>(&ah[0][0], &al[0][0]);
            round_frag<NL * 2, SPLIT3>(&bh[0][0], &bl[0][0]);
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NL; ++j) {
                    if (SPLIT3) {  // small terms first, then the big one
                        gg_mma::mma_tf32(acc[i][j], al[i], bh[j]);
                        gg_mma::mma_tf32(acc[i][j], ah[i], bl[j]);
                    }
                    gg_mma::mma_tf32(acc[i][j], ah[i], bh[j]);
                }
        }
    }
    gg_mma::cp_async_wait<0>();  // nothing may stay in flight past the block's end

    // Epilogue: alpha, bias, relu; acc[i][j][2hh + e] is row 16i + 8hh + g, column
    // 8j + 2t + e of the warp tile.
    float* __restrict__ out = C + blockIdx.z * (M * ldc);
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int row = m0 + wm0 + 16 * i + 8 * hh + g;
            if (row >= M) continue;
#pragma unroll
            for (int j = 0; j < NL; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int col = n0 + wn0 + 8 * j + 2 * t + e;
                    if (col >= N) continue;
                    float v = alpha * acc[i][j][2 * hh + e];
                    if (has_bias) v += bias[col];
                    if (relu) v = v < 0.0f ? 0.0f : v;  // NaN propagates, as in NumPy
                    out[row * ldc + col] = v;
                }
            }
        }
    }
}

}  // namespace gg_tf32


// matmul_tf32_*: 128x256x32 block tile, 2x4 warps of 64x64 (256 threads), `stages`-deep cp.async ring in dynamic shared memory
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_tf32_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu, int stages) {
    gg_tf32::gemm<128, 256, 2, 4, false, false, false>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu, stages);
}
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_tf32_nt_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu, int stages) {
    gg_tf32::gemm<128, 256, 2, 4, false, true, false>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu, stages);
}
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_tf32_tn_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu, int stages) {
    gg_tf32::gemm<128, 256, 2, 4, true, false, false>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu, stages);
}
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_tf32_tt_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu, int stages) {
    gg_tf32::gemm<128, 256, 2, 4, true, true, false>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu, stages);
}

// matmul_3xtf32_*: 128x256x32 block tile, 2x4 warps of 64x64 (256 threads), `stages`-deep cp.async ring in dynamic shared memory
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_3xtf32_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu, int stages) {
    gg_tf32::gemm<128, 256, 2, 4, false, false, true>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu, stages);
}
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_3xtf32_nt_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu, int stages) {
    gg_tf32::gemm<128, 256, 2, 4, false, true, true>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu, stages);
}
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_3xtf32_tn_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu, int stages) {
    gg_tf32::gemm<128, 256, 2, 4, true, false, true>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu, stages);
}
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_3xtf32_tt_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu, int stages) {
    gg_tf32::gemm<128, 256, 2, 4, true, true, true>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu, stages);
}
