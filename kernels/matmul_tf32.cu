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
//  * M <= 64 (TF32, op(A) = A): block tile 64x256x32, 4 warps of 64x64 along n, each
//    k tile sliced between two warps (8 warps), summed in shared memory (GG_TF32_M64);
//  * block tile 128x256x32, 8 warps (2 x 4) of 64x64, each warp 4 x 8 mma.m16n8k8
//    tiles per k step of 8 (128 mma per k tile of 32);
//  * operand tiles go global -> shared with cp.async (no register staging) into a ring
//    of `stages` stages in dynamic shared memory (the host opts in past 48 KiB and
//    picks 4 stages on sm_90, 3 on sm_80: kernels.tf32_stages); one __syncthreads per
//    k tile;
//  * fragments in the mma's own order, one LDS.32 per operand register straight into
//    the register the mma reads (no moves), rounded (split) there in place; the 16-byte
//    chunks of each shared row are XOR-swizzled (k-contiguous tiles: chunk ^ mn % 8;
//    mn-contiguous ones: chunk ^ 2 (k % 4)) so that every fragment load (8 rows x 4
//    columns of a warp) and every cp.async fill hits 32 different banks, with no
//    padding. Per k tile and warp: 128 LDS.32 (1 wavefront each) + 12 cp.async
//    (16-byte, 4 wavefronts per warp request) for 128 mma: 176 shared wavefronts
//    against the tensor pipe's 192 clocks at the mma.sync rate on sm_90;
//  * compile-time layouts (entry point suffix _nt/_tn/_tt, none = NN); split-K over
//    gridDim.z as in matmul.cu (partial products to C + z*M*ldc, epilogue in
//    matmul_splitk_reduce_f32). No relu-mask prologue: the host takes the FP32 kernel
//    for masked products.
#include "common.cuh"
#include "mma.cuh"

namespace gg_tf32 {

using gg_common::aligned16;

constexpr int BK = 32;  // k per tile (4 mma k steps)

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
    // the raw bits of op(X)[mn][kx + k], with the first k of the warp's k slice kx a
    // multiple of a power of two P > k (0 without slices). key: for a k-major tile
    // kx / 4 ^ mn % 8 (the caller knows mn % 8; (kx + k) / 4 = kx / 4 ^ k / 4, so the
    // slice folds into the thread's chunk XOR and the k offsets stay immediates), else kx
    static __device__ __forceinline__ unsigned get(const float* s, int mn, int k, int key) {
        if (KMAJOR) return __float_as_uint(s[mn * LD + 4 * ((k >> 2) ^ key) + (k & 3)]);
        return __float_as_uint(s[at(key + k, mn >> 2) + (mn & 3)]);
    }

    // Queue the copies of the tile whose corner is (mn0, k0). Elements past ext_k are
    // zero-filled with ordinary shared stores; elements past ext_mn are not written at
    // all: the block zeroed its whole ring once (gemm, when its tile crosses the mn
    // edge) and no tile ever copies there. A thread copies chunk q of rows r0,
    // r0 + RSTEP, ...; a tile whose k range is whole takes the unrolled path (one
    // source pointer, compile-time strides, a predicate per chunk).
    static __device__ __forceinline__ void load(float* s, const float* __restrict__ x, int ld,
                                                int ext_mn, int ext_k, int mn0, int k0, bool vec) {
        constexpr int RSTEP = NT / CHUNKS;
        static_assert(NT % CHUNKS == 0, "a thread keeps one chunk column");
        const int r0 = threadIdx.x / CHUNKS;
        const int q = threadIdx.x % CHUNKS;
        const int gr0 = (KMAJOR ? mn0 : k0) + r0;
        const int gc = (KMAJOR ? k0 : mn0) + 4 * q;
        const float* src = x + gr0 * ld + gc;
        if (vec && k0 + BK <= ext_k) {
            if (mn0 + BMN <= ext_mn) {  // the whole tile: unconditional copies
#pragma unroll
                for (int c = 0; c < PER_THREAD; ++c)
                    gg_mma::cp_async16(s + at(r0 + c * RSTEP, q), src + c * RSTEP * ld);
                return;
            }
            if (KMAJOR) {  // rows are mn: a row past the edge is skipped
#pragma unroll
                for (int c = 0; c < PER_THREAD; ++c)
                    if (gr0 + c * RSTEP < ext_mn)
                        gg_mma::cp_async16(s + at(r0 + c * RSTEP, q), src + c * RSTEP * ld);
                return;
            }
            if (gc + 3 < ext_mn) {  // rows are k (all inside): this thread's column is whole
#pragma unroll
                for (int c = 0; c < PER_THREAD; ++c)
                    gg_mma::cp_async16(s + at(r0 + c * RSTEP, q), src + c * RSTEP * ld);
                return;
            }
        }
#pragma unroll 1
        for (int c = 0; c < PER_THREAD; ++c) {
            const int r = r0 + c * RSTEP;
            const int gr = gr0 + c * RSTEP;
            const int mn = KMAJOR ? gr : gc;  // first mn and k of the chunk
            const int kk = KMAJOR ? gc : gr;
            if (mn >= ext_mn) continue;  // past the mn edge: zero since the start
            float* dst = s + at(r, q);
            const float* sp = src + c * RSTEP * ld;
            if (kk >= ext_k) {
                *reinterpret_cast<float4*>(dst) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            } else if (vec && (KMAJOR ? kk + 3 < ext_k : mn + 3 < ext_mn)) {
                gg_mma::cp_async16(dst, sp);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) {  // j runs along k (KMAJOR) or along mn
                    const bool in = KMAJOR ? kk + j < ext_k : mn + j < ext_mn;
                    if (in)
                        gg_mma::cp_async4(dst + j, sp + j);
                    else if (KMAJOR)
                        dst[j] = 0.0f;  // past the k edge (past the mn edge: left zero)
                }
            }
        }
    }
};

template <int BM, int BN, int WARPS_M, int WARPS_N, int KSLICES, bool TA, bool TB, bool SPLIT3>
__device__ __forceinline__ void gemm(const float* __restrict__ A, const float* __restrict__ B,
                                     float* __restrict__ C, const float* __restrict__ bias,
                                     int M, int N, int K, int lda, int ldb, int ldc,
                                     int k_chunk, int has_bias, float alpha, int relu,
                                     int stages) {
    constexpr int NT = WARPS_M * WARPS_N * KSLICES * 32;
    constexpr int KS_WARP = BK / KSLICES;  // k of a tile that one warp multiplies
    static_assert(KS_WARP % 8 == 0 && (KS_WARP & (KS_WARP - 1)) == 0,
                  "k slices: whole mma k steps, a power of two (see Tile::get)");
    constexpr int WM = BM / WARPS_M;
    constexpr int WN = BN / WARPS_N;
    constexpr int MT = WM / 16;  // mma tiles per warp along m
    constexpr int NL = WN / 8;   // along n
    static_assert(WM == 64 && WN == 64, "the fragment relabelling assumes 64x64 warp tiles");
    using TileA = Tile<BM, NT, !TA>;
    using TileB = Tile<BN, NT, TB>;
    constexpr int STAGE = TileA::SIZE + TileB::SIZE;  // floats
    extern __shared__ __align__(16) float smem[];

    int m0, n0;
    gg_common::grouped_tile(M, N, BM, BN, m0, n0);
    const int k_begin = blockIdx.z * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);
    const int ktiles = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
    const bool vec_a = (lda % 4 == 0) && aligned16(A);
    const bool vec_b = (ldb % 4 == 0) && aligned16(B);

    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int wtile = KSLICES > 1 ? warp % (WARPS_M * WARPS_N) : warp;  // the warp's 64x64
    const int kslice = KSLICES > 1 ? warp / (WARPS_M * WARPS_N) : 0;    // and its k slice
    const int wm0 = (wtile / WARPS_N) * WM;
    const int wn0 = (wtile % WARPS_N) * WN;
    const int kbase = kslice * KS_WARP;
    // Tile::get keys: fragment rows are = g (mod 8) (wm0, wn0, 16 i, 8 j, 8: multiples of 8)
    const int key_a = TA ? kbase : (kbase >> 2) ^ g;
    const int key_b = TB ? (kbase >> 2) ^ g : kbase;

    // a tile crossing the m or n edge: zero the ring once; copies never write there
    if (m0 + BM > M || n0 + BN > N) {
        float4* z = reinterpret_cast<float4*>(smem);
        for (int i = threadIdx.x; i < stages * STAGE / 4; i += NT)
            z[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        __syncthreads();  // before any thread's cp.async can land on a zeroed slot
    }

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
    gg_mma::zero_acc(acc);

    int read = 0;            // stage of tile kt
    int write = stages - 1;  // stage of tile kt + stages - 1
    for (int kt = 0; kt < ktiles; ++kt) {
        gg_mma::cp_async_wait_ring(stages);  // this thread's copies of tile kt landed
        __syncthreads();  // everyone's; and stage `write` (tile kt-1) is no longer read
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
        for (int ks = 0; ks < KS_WARP; ks += 8) {
            // fragments straight into the mma's operand registers (one conflict-free
            // LDS.32 each), rounded (split) in place
            unsigned ah[MT][4], al[MT][4], bh[NL][2], bl[NL][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int r = wm0 + 16 * i + g;
                ah[i][0] = TileA::get(sa, r, ks + t, key_a);
                ah[i][1] = TileA::get(sa, r + 8, ks + t, key_a);
                ah[i][2] = TileA::get(sa, r, ks + t + 4, key_a);
                ah[i][3] = TileA::get(sa, r + 8, ks + t + 4, key_a);
            }
#pragma unroll
            for (int j = 0; j < NL; ++j) {
                const int c = wn0 + 8 * j + g;
                bh[j][0] = TileB::get(sb, c, ks + t, key_b);
                bh[j][1] = TileB::get(sb, c, ks + t + 4, key_b);
            }
            gg_mma::round_tf32<MT * 4, SPLIT3>(&ah[0][0], &al[0][0]);
            gg_mma::round_tf32<NL * 2, SPLIT3>(&bh[0][0], &bl[0][0]);
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

    if (KSLICES > 1) {
        // sliced k: the warps of slices 1.. hand their sums to the slice-0 warp of the
        // same 64x64 tile through the (now idle) ring, lane-contiguous (conflict-free),
        // added in slice order (deterministic); only slice 0 runs the epilogue
        static_assert((KSLICES - 1) * WARPS_M * WARPS_N * MT * NL * 4 * 32 <= 2 * STAGE,
                      "the partial sums fit two ring stages");
        float* red = smem;
        __syncthreads();  // every warp is done reading the ring
        if (kslice > 0) {
            float* dst = red + ((kslice - 1) * WARPS_M * WARPS_N + wtile) * (MT * NL * 4 * 32);
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NL; ++j)
#pragma unroll
                    for (int r = 0; r < 4; ++r)
                        dst[((i * NL + j) * 4 + r) * 32 + lane] = acc[i][j][r];
        }
        __syncthreads();
        if (kslice > 0) return;
#pragma unroll 1
        for (int s = 1; s < KSLICES; ++s) {
            const float* src = red + ((s - 1) * WARPS_M * WARPS_N + wtile) * (MT * NL * 4 * 32);
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NL; ++j)
#pragma unroll
                    for (int r = 0; r < 4; ++r)
                        acc[i][j][r] += src[((i * NL + j) * 4 + r) * 32 + lane];
        }
    }

    // Epilogue: alpha, bias, relu; acc[i][j][2hh + e] is row 16i + 8hh + g, column
    // 8j + 2t + e of the warp tile.
    float* __restrict__ out = C + blockIdx.z * (M * ldc);
    const bool vec_c = (ldc % 2 == 0) && (reinterpret_cast<unsigned long long>(out) & 7ull) == 0;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int row = m0 + wm0 + 16 * i + 8 * hh + g;
            if (row >= M) continue;
#pragma unroll
            for (int j = 0; j < NL; ++j) {
                const int col = n0 + wn0 + 8 * j + 2 * t;
                float v[2];
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    v[e] = alpha * acc[i][j][2 * hh + e];
                    if (has_bias && col + e < N) v[e] += bias[col + e];
                    if (relu) v[e] = v[e] < 0.0f ? 0.0f : v[e];  // NaN propagates, as in NumPy
                }
                float* dst = out + row * ldc + col;
                if (vec_c && col + 1 < N) {  // the pair of columns in one 8-byte store
                    *reinterpret_cast<float2*>(dst) = make_float2(v[0], v[1]);
                } else {
                    if (col < N) dst[0] = v[0];
                    if (col + 1 < N) dst[1] = v[1];
                }
            }
        }
    }
}

}  // namespace gg_tf32

// Entry points: NVRTC and the emulator launch them by name (extern "C"); the names are
// what gpugrad/backend/kernels.py asks for. GG_TF32_GEMM(name, BM, BN, WARPS_M, WARPS_N,
// KSLICES, TA, TB, SPLIT3) defines one; the emulator finds macro-made kernels by
// preprocessing the source (gpugrad.backend.emu).
#define GG_TF32_GEMM(NAME, BM, BN, WM, WN, KSL, TA, TB, SPLIT3)                              \
    extern "C" __global__ void __launch_bounds__(WM * WN * KSL * 32, 1)                      \
    NAME(const float* A, const float* B, float* C, const float* bias, int M, int N, int K,    \
         int lda, int ldb, int ldc, int k_chunk, int has_bias, float alpha, int relu,         \
         int stages) {                                                                        \
        gg_tf32::gemm<BM, BN, WM, WN, KSL, TA, TB, SPLIT3>(                                 \
            A, B, C, bias, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu, stages);  \
    }

// matmul_{tf32,3xtf32}{,_nt,_tn,_tt}_f32: 128x256x32 block tile, 2x4 warps of 64x64
// (256 threads), one block per SM
#define GG_TF32_LARGE(MODE, LAYOUT, TA, TB, SPLIT3) \
    GG_TF32_GEMM(matmul_##MODE##LAYOUT##_f32, 128, 256, 2, 4, 1, TA, TB, SPLIT3)
// matmul_tf32_m64{,_nt}_f32, for M <= 64 (a batch of 64, an LSTM step): a 64x256x32
// block tile, 4 warps of 64x64 along n, each tile's k split between two warps (8
// warps, 256 threads: sliced k, summed in shared memory before the epilogue); only
// TF32 and the layouts with op(A) = A (the forward x @ W^T, the backward dy @ W):
// 3xTF32 and trans_a products take the 128x256 tile (compile time: each entry point
// adds ~10 % to this file's)
#define GG_TF32_M64(MODE, LAYOUT, TA, TB, SPLIT3) \
    GG_TF32_GEMM(matmul_##MODE##_m64##LAYOUT##_f32, 64, 256, 1, 4, 2, TA, TB, SPLIT3)

GG_TF32_LARGE(tf32, , false, false, false)
GG_TF32_LARGE(tf32, _nt, false, true, false)
GG_TF32_LARGE(tf32, _tn, true, false, false)
GG_TF32_LARGE(tf32, _tt, true, true, false)
GG_TF32_LARGE(3xtf32, , false, false, true)
GG_TF32_LARGE(3xtf32, _nt, false, true, true)
GG_TF32_LARGE(3xtf32, _tn, true, false, true)
GG_TF32_LARGE(3xtf32, _tt, true, true, true)
GG_TF32_M64(tf32, , false, false, false)
GG_TF32_M64(tf32, _nt, false, true, false)
