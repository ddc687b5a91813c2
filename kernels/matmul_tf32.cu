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
// Design (CUTLASS sm80 multistage): 128x128 block tile, 8 warps of 64x32, each warp
// 4x4 mma.sync.m16n8k8 tiles; operand tiles are copied global -> shared with cp.async
// (no register staging) in a STAGES-deep ring (4 for TF32; 2 for 3xTF32, whose stages
// hold hi and lo parts), one __syncthreads per k tile. Once its copies land, each
// thread rounds (or splits) the 16-byte chunks it copied in place, so an element is
// converted once instead of once per warp that reads it (2-4x); shared
// rows padded so that every fragment load is bank-conflict-free (rows of k: stride
// BK+4; rows of m/n: stride BM+8). Layouts are compile-time (entry point suffix
// _nt/_tn/_tt, none = NN); split-K over gridDim.z as in matmul.cu (partial products to
// C + z*M*ldc, epilogue in matmul_splitk_reduce_f32). No relu-mask prologue: the host
// takes the FP32 kernel for masked products.
#include "mma.cuh"

namespace gg_tf32 {

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0ull;
}

// A BMN x BK tile of op(X) in shared memory. KMAJOR (element (mn, k) at X[mn*ld + k]):
// stored as rows of k (row mn, stride BK + 4); else as rows of mn (row k, stride
// BMN + 8). Both paddings keep rows 16-byte aligned for cp.async and make the
// fragment reads of a warp (8 rows x 4 columns) hit 32 different banks.
template <int BMN, int BK, int NT, bool KMAJOR>
struct SmemTile {
    static constexpr int ROWS = KMAJOR ? BMN : BK;  // rows in memory order
    static constexpr int COLS = KMAJOR ? BK : BMN;  // contiguous extent
    static constexpr int LD = KMAJOR ? BK + 4 : BMN + 8;
    static constexpr int SIZE = ROWS * LD;  // floats per stage
    static constexpr int PER_THREAD = ROWS * COLS / 4 / NT;
    static_assert(ROWS * COLS % (4 * NT) == 0 && PER_THREAD >= 1, "tile must split into 16-B chunks");

    // Queue the copies of the tile whose corner is (mn0, k0); elements outside
    // (ext_mn, ext_k) are zero-filled with ordinary shared stores.
    static __device__ __forceinline__ void load(float* s, const float* __restrict__ x, int ld,
                                                int ext_mn, int ext_k, int mn0, int k0, bool vec) {
#pragma unroll
        for (int c = 0; c < PER_THREAD; ++c) {
            const int id = threadIdx.x + c * NT;
            const int r = id / (COLS / 4);
            const int q = (id % (COLS / 4)) * 4;
            const int gr = (KMAJOR ? mn0 : k0) + r;
            const int gc = (KMAJOR ? k0 : mn0) + q;
            const int ext_r = KMAJOR ? ext_mn : ext_k;
            const int ext_c = KMAJOR ? ext_k : ext_mn;
            float* dst = s + r * LD + q;
            if (gr < ext_r && vec && gc + 3 < ext_c) {
                gg_mma::cp_async16(dst, x + gr * ld + gc);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (gr < ext_r && gc + j < ext_c)
                        gg_mma::cp_async4(dst + j, x + gr * ld + gc + j);
                    else
                        dst[j] = 0.0f;
                }
            }
        }
    }

    // Round the chunks this thread copied (landed: after its cp.async.wait_group) to
    // TF32 in place, or split them into hi (in place) and lo (at s + lo_offset).
    template <bool SPLIT3>
    static __device__ __forceinline__ void convert(float* s, int lo_offset) {
#pragma unroll
        for (int c = 0; c < PER_THREAD; ++c) {
            const int id = threadIdx.x + c * NT;
            float* p = s + (id / (COLS / 4)) * LD + (id % (COLS / 4)) * 4;
            float4 v = *reinterpret_cast<float4*>(p);
            if (SPLIT3) {
                unsigned h[4], l[4];
                gg_mma::split_tf32(v.x, h[0], l[0]);
                gg_mma::split_tf32(v.y, h[1], l[1]);
                gg_mma::split_tf32(v.z, h[2], l[2]);
                gg_mma::split_tf32(v.w, h[3], l[3]);
                *reinterpret_cast<uint4*>(p) = make_uint4(h[0], h[1], h[2], h[3]);
                *reinterpret_cast<uint4*>(p + lo_offset) = make_uint4(l[0], l[1], l[2], l[3]);
            } else {
                *reinterpret_cast<uint4*>(p) =
                    make_uint4(gg_mma::to_tf32(v.x), gg_mma::to_tf32(v.y), gg_mma::to_tf32(v.z),
                               gg_mma::to_tf32(v.w));
            }
        }
    }

    // TF32 bits of op(X)[mn][k] (already converted in shared memory)
    static __device__ __forceinline__ unsigned get(const float* s, int mn, int k) {
        return __float_as_uint(KMAJOR ? s[mn * LD + k] : s[k * LD + mn]);
    }
};

template <int BM, int BN, int BK, int STAGES, int WARPS_M, int WARPS_N, bool TA, bool TB,
          bool SPLIT3>
__device__ __forceinline__ void gemm(const float* __restrict__ A, const float* __restrict__ B,
                                     float* __restrict__ C, const float* __restrict__ bias,
                                     int M, int N, int K, int lda, int ldb, int ldc,
                                     int k_chunk, int has_bias, float alpha, int relu) {
    constexpr int NT = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M;
    constexpr int WN = BN / WARPS_N;
    constexpr int MT = WM / 16;  // mma tiles per warp along m
    constexpr int NL = WN / 8;   // along n
    constexpr int GROUP = 8;
    static_assert(WM % 16 == 0 && WN % 8 == 0 && BK % 8 == 0 && STAGES >= 2, "bad tiling");
    using TileA = SmemTile<BM, BK, NT, !TA>;
    using TileB = SmemTile<BN, BK, NT, TB>;
    constexpr int HI = TileA::SIZE + TileB::SIZE;  // TF32 (hi) parts of A and B
    constexpr int STAGE = SPLIT3 ? 2 * HI : HI;     // + the lo parts for 3xTF32
    __shared__ __align__(16) float smem[STAGES * STAGE];

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

    // prologue: STAGES - 1 tiles in flight
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
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

    for (int kt = 0; kt < ktiles; ++kt) {
        gg_mma::cp_async_wait<STAGES - 2>();  // this thread's copies of tile kt landed:
        float* sc = smem + (kt % STAGES) * STAGE;  // convert them once, here, not per
        TileA::template convert<SPLIT3>(sc, HI);  // fragment read (each element is read
        TileB::template convert<SPLIT3>(sc + TileA::SIZE, HI);  // by 2-4 warps)
        __syncthreads();  // tile kt converted by everyone; stage kt-1 no longer read
        const int next = kt + STAGES - 1;
        if (next < ktiles) {
            float* sn = smem + (next % STAGES) * STAGE;
            TileA::load(sn, A, lda, M, k_end, m0, k_begin + next * BK, vec_a);
            TileB::load(sn + TileA::SIZE, B, ldb, N, k_end, n0, k_begin + next * BK, vec_b);
        }
        gg_mma::cp_async_commit();

        const float* sa = smem + (kt % STAGES) * STAGE;
        const float* sb = sa + TileA::SIZE;
#pragma unroll
        for (int ks = 0; ks < BK; ks += 8) {
            unsigned ah[MT][4], al[MT][4], bh[NL][2], bl[NL][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int r = wm0 + i * 16 + g;
                ah[i][0] = TileA::get(sa, r, ks + t);
                ah[i][1] = TileA::get(sa, r + 8, ks + t);
                ah[i][2] = TileA::get(sa, r, ks + t + 4);
                ah[i][3] = TileA::get(sa, r + 8, ks + t + 4);
                if (SPLIT3) {
                    al[i][0] = TileA::get(sa + HI, r, ks + t);
                    al[i][1] = TileA::get(sa + HI, r + 8, ks + t);
                    al[i][2] = TileA::get(sa + HI, r, ks + t + 4);
                    al[i][3] = TileA::get(sa + HI, r + 8, ks + t + 4);
                }
            }
#pragma unroll
            for (int j = 0; j < NL; ++j) {
                const int c = wn0 + j * 8 + g;
                bh[j][0] = TileB::get(sb, c, ks + t);
                bh[j][1] = TileB::get(sb, c, ks + t + 4);
                if (SPLIT3) {
                    bl[j][0] = TileB::get(sb + HI, c, ks + t);
                    bl[j][1] = TileB::get(sb + HI, c, ks + t + 4);
                }
            }
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

    // Epilogue: alpha, bias, relu; each lane owns pairs of adjacent columns.
    float* __restrict__ out = C + blockIdx.z * (M * ldc);
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = m0 + wm0 + i * 16 + g + h * 8;
            if (row >= M) continue;
#pragma unroll
            for (int j = 0; j < NL; ++j) {
                const int col = n0 + wn0 + j * 8 + 2 * t;
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    if (col + e >= N) continue;
                    float v = alpha * acc[i][j][2 * h + e];
                    if (has_bias) v += bias[col + e];
                    if (relu) v = v < 0.0f ? 0.0f : v;  // NaN propagates, as in NumPy
                    out[row * ldc + col + e] = v;
                }
            }
        }
    }
}

}  // namespace gg_tf32

// matmul_tf32_*: 128x128x8 block tile, 4-stage cp.async ring, 2x4 warps of 64x32 (256 threads)
extern "C" __global__ void __launch_bounds__(256, 2)
matmul_tf32_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu) {
    gg_tf32::gemm<128, 128, 8, 4, 2, 4, false, false, false>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu);
}
extern "C" __global__ void __launch_bounds__(256, 2)
matmul_tf32_nt_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu) {
    gg_tf32::gemm<128, 128, 8, 4, 2, 4, false, true, false>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu);
}
extern "C" __global__ void __launch_bounds__(256, 2)
matmul_tf32_tn_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu) {
    gg_tf32::gemm<128, 128, 8, 4, 2, 4, true, false, false>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu);
}
extern "C" __global__ void __launch_bounds__(256, 2)
matmul_tf32_tt_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu) {
    gg_tf32::gemm<128, 128, 8, 4, 2, 4, true, true, false>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu);
}

// matmul_3xtf32_*: 128x128x8 block tile, 2-stage cp.async ring (hi + lo parts), 2x4 warps of 64x32 (256 threads)
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_3xtf32_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu) {
    gg_tf32::gemm<128, 128, 8, 2, 2, 4, false, false, true>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu);
}
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_3xtf32_nt_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu) {
    gg_tf32::gemm<128, 128, 8, 2, 2, 4, false, true, true>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu);
}
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_3xtf32_tn_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu) {
    gg_tf32::gemm<128, 128, 8, 2, 2, 4, true, false, true>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu);
}
extern "C" __global__ void __launch_bounds__(256, 1)
matmul_3xtf32_tt_f32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu) {
    gg_tf32::gemm<128, 128, 8, 2, 2, 4, true, true, true>(A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu);
}

