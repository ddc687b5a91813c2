// matmul.cu: tiled GEMM with fused prologue and epilogue (FP32/FP64 FMA pipes).
//
//   C[M,N] = act(alpha * op(A) @ op(B) + bias[N])      act in {none, relu}
//
// op(X) is X or X^T. The layout (trans_a, trans_b) and the relu-mask prologue are
// compile-time template parameters: every tile configuration has one entry point per
// layout, named <tile>[_nt|_tn|_tt][_mask]_<dtype> (no suffix = NN, no mask), so the
// k-loop carries no run-time layout branches. The backward pass (dA = dC B^T,
// dB = A^T dC) therefore needs no explicit transposes. With the _mask variants A's
// element is read as (mask[i,k] > 0 ? A[i,k] : 0), mask stored in A's layout; this
// fuses dZ = dY * [Y > 0] into the backward GEMM.
//
// Design (S. Boehm's SGEMM worklog, kernels 5-10):
//  * a block computes a BM x BN tile of C; its warps each a WM x WN warp tile; each
//    lane a TM x TN register tile held as groups of VW rows / VW columns (VW = one
//    16-byte vector: 4 floats, 2 doubles) strided by the warp's lane grid, so the
//    LDS.128 fragment loads of a warp read consecutive 16-byte words (no bank
//    conflicts for float or double); lanes are Z-ordered so the LDS.128 fragment
//    loads of lanes n, n^1 (B) and n, n^2 (A) hit the same address and pair-pack;
//  * shared tiles are stored k-major (As[k][m], Bs[k][n]) and double buffered:
//    the next global tile is fetched into registers while the current one is
//    multiplied, one __syncthreads per k step;
//  * global loads are 16-byte vectors (float4 / double2: consecutive lanes read
//    consecutive 16-byte words, 100 % sector use) whenever the address is
//    16-byte aligned and the vector is in bounds; a scalar path handles
//    edges, odd leading dimensions and unaligned bases;
//  * 1-D grid with grouped ("swizzled") tile order so consecutive blocks reuse
//    the same A rows / B columns from L2;
//  * split-K over gridDim.z for skinny problems (LSTM steps, batch-1 GEMV): block z
//    reduces its k_chunk and writes a partial product to a workspace; the epilogue
//    then runs in matmul_splitk_reduce_<dtype> (fixed summation order: deterministic);
//  * matmul_fwd_f32 is bounded to 128 registers (__launch_bounds__(256, 2)) so that
//    two 256-thread blocks are resident per SM.
//
// Indices are 32-bit: the host wrapper rejects operands with >= 2^31 elements.
// Tile configurations (gpugrad/backend/kernels.py: MATMUL_TILES, plan_matmul):
//   matmul_fwd_f32    128x128x8,  8x8 per thread, 2x4 warps of 64x32, 256 threads
//   matmul_mid_f32     64x64x16,  4x4 per thread, 2x4 warps of 32x16, 256 threads
//   matmul_wide_f32    32x128x16, 4x8 per thread, 1x4 warps of 32x32, 128 threads (M <= 32)
//   matmul_small_f32   32x32x16,  4x4 per thread, 1x2 warps of 32x16,  64 threads
//   matmul_fwd_f64     64x64x16,  4x4 per thread, 2x4 warps of 32x16, 256 threads
//   matmul_small_f64   32x32x16,  4x4 per thread, 1x2 warps of 32x16,  64 threads
// The TF32 tensor-core variants live in matmul_tf32.cu.

#include "common.cuh"

namespace gg_matmul {

using namespace gg_common;  // aligned16, madd, VW, loadv, storev, grouped_tile

// Row padding of the shared tiles, one 16-byte vector (4 floats, 2 doubles): rows stay
// 16-byte aligned and the k-major (transposed) stores of a warp spread over the banks:
// float with BK = 8, and double with BK = 16, where a padding of 4 doubles (136 words per
// row, = 8 mod 32) put the 8 k offsets of a warp's stores on 2 bank groups (2-way
// conflicts) and 2 doubles (132 words, = 4 mod 32) puts them on 4, all 32 banks in use.
template <typename T>
constexpr int PAD = VW<T>;

// One operand tile of op(X): BMN rows (the m or n extent) by BK columns (k),
// loaded from global memory into registers, then stored k-major into shared
// memory. Element (mn, k) of op(X) lives at X[mn*ld + k] when KMAJOR, else at
// X[k*ld + mn]. KMAJOR and MASK are compile-time, so each entry point carries
// exactly one load path (plus the scalar fallback for edges/unaligned views).
template <typename T, int BMN, int BK, int NT, bool KMAJOR, bool MASK>
struct MatTile {
    static constexpr int W = VW<T>;              // elements per 16-byte vector
    static constexpr int V = BMN * BK / W / NT;  // vectors per thread per tile
    static_assert(BMN * BK % (W * NT) == 0, "tile must split evenly into vectors");
    static_assert(V >= 1, "too many threads for the tile");

    const T* __restrict__ x;
    const T* __restrict__ mask;
    int ld, ext_mn, ext_k, mn0;
    bool vec;
    T r[V][W];

    __device__ __forceinline__ void init(const T* x_, const T* mask_, int ld_, int ext_mn_,
                                         int ext_k_, int mn0_) {
        x = x_;
        mask = mask_;
        ld = ld_;
        ext_mn = ext_mn_;
        ext_k = ext_k_;
        mn0 = mn0_;
        vec = (ld % W == 0) && aligned16(x) && (!MASK || aligned16(mask));
    }

    __device__ __forceinline__ T fetch(int offset) const {
        const T v = x[offset];
        if (MASK) return mask[offset] > T(0) ? v : T(0);
        return v;
    }

    __device__ __forceinline__ void load(int k0) {
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const int id = threadIdx.x + v * NT;
            // (row, col) of the vector in memory order: KMAJOR rows are mn, else k
            const int gm = KMAJOR ? mn0 + id / (BK / W) : mn0 + (id % (BMN / W)) * W;
            const int gk = KMAJOR ? k0 + (id % (BK / W)) * W : k0 + id / (BMN / W);
            const int off = KMAJOR ? gm * ld + gk : gk * ld + gm;
            const bool full = KMAJOR ? (gm < ext_mn && gk + W - 1 < ext_k)
                                     : (gk < ext_k && gm + W - 1 < ext_mn);
            if (vec && full) {
                loadv(x + off, r[v]);
                if (MASK) {
                    T mk[W];
                    loadv(mask + off, mk);
#pragma unroll
                    for (int j = 0; j < W; ++j) r[v][j] = mk[j] > T(0) ? r[v][j] : T(0);
                }
            } else {
#pragma unroll
                for (int j = 0; j < W; ++j) {
                    const bool in = KMAJOR ? (gm < ext_mn && gk + j < ext_k)
                                           : (gk < ext_k && gm + j < ext_mn);
                    r[v][j] = in ? fetch(off + j) : T(0);
                }
            }
        }
    }

    __device__ __forceinline__ void store(T (*xs)[BMN + PAD<T>]) const {
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const int id = threadIdx.x + v * NT;
            if (KMAJOR) {
                const int mn = id / (BK / W);
                const int kq = (id % (BK / W)) * W;
#pragma unroll
                for (int j = 0; j < W; ++j) xs[kq + j][mn] = r[v][j];
            } else {
                storev(&xs[id / (BMN / W)][(id % (BMN / W)) * W], r[v]);
            }
        }
    }
};

// Lane -> (row, column) inside the warp's LM x LN lane grid, Z-ordered (lane bit 0 to
// the row, bit 1 to the column, ...): lanes n and n^1 then read the same B fragment and
// lanes n and n^2 the same A fragment, so both LDS.128 loads pair-pack on the return path.
template <int LM, int LN>
__device__ __forceinline__ void lane_grid(int lane, int& lm, int& ln) {
    constexpr int BITS_M = LM == 1 ? 0 : LM == 2 ? 1 : LM == 4 ? 2 : LM == 8 ? 3 : LM == 16 ? 4 : 5;
    static_assert(LM * LN == 32 && (1 << BITS_M) == LM, "the lane grid must be a power-of-two split of 32");
    lm = 0;
    ln = 0;
    int bm = 0, bn = 0;
#pragma unroll
    for (int b = 0; b < 5; ++b) {
        const bool to_m = bm < BITS_M && (bn >= 5 - BITS_M || (b % 2) == 0);
        if (to_m) {
            lm |= ((lane >> b) & 1) << bm;
            ++bm;
        } else {
            ln |= ((lane >> b) & 1) << bn;
            ++bn;
        }
    }
}

// The whole GEMM for one tile configuration and operand layout.
//
// Warp tiling: the block's WARPS_M x WARPS_N warps each own a WM x WN sub-tile; a
// lane owns TM x TN outputs as (TM/VW) x (TN/VW) groups of VW x VW, the groups strided
// by the lane grid so a warp's fragment loads hit LM (A) / LN (B) consecutive 16-byte
// words.
// Split-K: block z reduces k in [z*k_chunk, min(K, (z+1)*k_chunk)) and writes its
// partial product to C + z*M*ldc (the host then runs matmul_splitk_reduce with the
// epilogue); with gridDim.z == 1 this is the plain GEMM.
template <typename T, int BM, int BN, int BK, int TM, int TN, int WARPS_M, int WARPS_N,
          bool TA, bool TB, bool MASK>
__device__ __forceinline__ void gemm(const T* __restrict__ A, const T* __restrict__ B,
                                     T* __restrict__ C, const T* __restrict__ bias,
                                     const T* __restrict__ mask, int M, int N, int K, int lda,
                                     int ldb, int ldc, int k_chunk, int has_bias, T alpha,
                                     int relu) {
    constexpr int NT = WARPS_M * WARPS_N * 32;  // threads per block
    constexpr int WM = BM / WARPS_M;            // warp tile
    constexpr int WN = BN / WARPS_N;
    constexpr int W = VW<T>;                    // elements per 16-byte vector
    constexpr int GM = TM / W;                  // W-row groups per lane
    constexpr int GN = TN / W;                  // W-column groups per lane
    constexpr int LM = WM / TM;                 // lane grid
    constexpr int LN = WN / TN;
    constexpr int SM = LM * W;                  // stride between a lane's row groups
    constexpr int SN = LN * W;                  // stride between a lane's column groups
    static_assert(TM % W == 0 && TN % W == 0, "register tile must be made of vectors");
    static_assert(LM * LN == 32 && WM * WARPS_M == BM && WN * WARPS_N == BN, "bad warp tiling");

    __shared__ __align__(16) T As[2][BK][BM + PAD<T>];
    __shared__ __align__(16) T Bs[2][BK][BN + PAD<T>];

    // Grouped tile order: 8 tile rows are swept column by column.
    int m0, n0;
    grouped_tile(M, N, BM, BN, m0, n0);
    const int k_begin = blockIdx.z * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);

    const int tid = threadIdx.x;
    const int warp = tid / 32;
    int lm, ln;
    lane_grid<LM, LN>(tid % 32, lm, ln);
    const int am = (warp / WARPS_N) * WM + lm * W;  // first row of this lane in the tile
    const int bn = (warp % WARPS_N) * WN + ln * W;  // first column

    MatTile<T, BM, BK, NT, !TA, MASK> ta;
    MatTile<T, BN, BK, NT, TB, false> tb;
    ta.init(A, mask, lda, M, k_end, m0);
    tb.init(B, nullptr, ldb, N, k_end, n0);

    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

    const int ktiles = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
    if (ktiles > 0) {
        ta.load(k_begin);
        tb.load(k_begin);
        ta.store(As[0]);
        tb.store(Bs[0]);
    }
    __syncthreads();

    // The 128x128 tile on sm_90 unrolls the k loop by 2: the double-buffer index becomes
    // static (immediate shared-memory offsets, FFMA share of the path 84 -> 86 %). Not on
    // sm_80 and not for the 4x4 tiles, where NVRTC then spills under the register bound.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int KUNROLL = (TM == 8 && TN == 8) ? 2 : 1;
#else
    constexpr int KUNROLL = 1;
#endif
#pragma unroll KUNROLL
    for (int t = 0; t < ktiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < ktiles;
        if (more) {  // fetch the next tile while this one is multiplied
            ta.load(k_begin + (t + 1) * BK);
            tb.load(k_begin + (t + 1) * BK);
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T a[TM], b[TN];
#pragma unroll
            for (int g = 0; g < GM; ++g) loadv(&As[cur][kk][am + g * SM], &a[g * W]);
#pragma unroll
            for (int g = 0; g < GN; ++g) loadv(&Bs[cur][kk][bn + g * SN], &b[g * W]);
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = madd(a[i], b[j], acc[i][j]);
        }
        if (more) {
            ta.store(As[cur ^ 1]);
            tb.store(Bs[cur ^ 1]);
        }
        __syncthreads();
    }

    // Epilogue: alpha, bias, relu; vector stores where aligned and in bounds.
    T* __restrict__ out_base = C + blockIdx.z * (M * ldc);
    const bool cvec = (ldc % W == 0) && aligned16(out_base);
#pragma unroll
    for (int gi = 0; gi < GM; ++gi) {
#pragma unroll
        for (int ii = 0; ii < W; ++ii) {
            const int row = m0 + am + gi * SM + ii;
            if (row >= M) continue;
#pragma unroll
            for (int gj = 0; gj < GN; ++gj) {
                const int col = n0 + bn + gj * SN;
                T out[W];
#pragma unroll
                for (int jj = 0; jj < W; ++jj) {
                    T v = alpha * acc[gi * W + ii][gj * W + jj];
                    if (has_bias && col + jj < N) v += bias[col + jj];
                    if (relu) v = v < T(0) ? T(0) : v;  // NaN propagates, as in NumPy
                    out[jj] = v;
                }
                if (cvec && col + W - 1 < N) {
                    storev(out_base + row * ldc + col, out);
                } else {
#pragma unroll
                    for (int jj = 0; jj < W; ++jj)
                        if (col + jj < N) out_base[row * ldc + col + jj] = out[jj];
                }
            }
        }
    }
}

// Split-K second pass: C = act(alpha * sum_z W[z] + bias), summing the splits in a
// fixed order (deterministic). W is [splits][M][N] contiguous; C has leading dim N.
template <typename T>
__device__ __forceinline__ void splitk_reduce(const T* __restrict__ W, T* __restrict__ C,
                                              const T* __restrict__ bias, int M, int N,
                                              int splits, int has_bias, T alpha, int relu) {
    const long long total = (long long)M * N;
    const long long plane = total;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        T s = W[i];
        for (int z = 1; z < splits; ++z) s += W[z * plane + i];
        T v = alpha * s;
        if (has_bias) v += bias[i % N];
        if (relu) v = v < T(0) ? T(0) : v;
        C[i] = v;
    }
}

}  // namespace gg_matmul

// Entry points: NVRTC and the emulator launch them by name (extern "C"); the names are
// what gpugrad/backend/kernels.py asks for (MATMUL_LAYOUTS, _matmul_entries), and the
// emulator finds these macro-made kernels by preprocessing the source
// (gpugrad.backend.emu). GG_MATMUL_GEMM(name, BOUNDS, T, TA, TB, MASK, BM, BN, BK, TM,
// TN, WARPS_M, WARPS_N) defines one, BOUNDS its __launch_bounds__(...).
#define GG_MATMUL_GEMM(NAME, BOUNDS, T, TA, TB, MASK, ...)                                 \
    extern "C" __global__ void BOUNDS                                                        \
    NAME(const T* A, const T* B, T* C, const T* bias, const T* mask, int M, int N, int K,   \
         int lda, int ldb, int ldc, int k_chunk, int has_bias, T alpha, int relu) {          \
        gg_matmul::gemm<T, __VA_ARGS__, TA, TB, MASK>(                                       \
            A, B, C, bias, mask, M, N, K, lda, ldb, ldc, k_chunk, has_bias, alpha, relu);    \
    }

// The four layouts of one tile, with (MASK = true, SUFFIX = _mask) or without the
// relu-mask prologue: <tile>{,_nt,_tn,_tt}<SUFFIX>_<dtype>
#define GG_MATMUL_LAYOUTS(TILE, SUFFIX, MASK, DT, BOUNDS, T, ...)                             \
    GG_MATMUL_GEMM(TILE##SUFFIX##_##DT, BOUNDS, T, false, false, MASK, __VA_ARGS__)          \
    GG_MATMUL_GEMM(TILE##_nt##SUFFIX##_##DT, BOUNDS, T, false, true, MASK, __VA_ARGS__)      \
    GG_MATMUL_GEMM(TILE##_tn##SUFFIX##_##DT, BOUNDS, T, true, false, MASK, __VA_ARGS__)      \
    GG_MATMUL_GEMM(TILE##_tt##SUFFIX##_##DT, BOUNDS, T, true, true, MASK, __VA_ARGS__)

// The eight entry points (4 layouts x mask) of one tile configuration and dtype.
#define GG_MATMUL_TILE(TILE, DT, BOUNDS, T, ...)                                              \
    GG_MATMUL_LAYOUTS(TILE, , false, DT, BOUNDS, T, __VA_ARGS__)                              \
    GG_MATMUL_LAYOUTS(TILE, _mask, true, DT, BOUNDS, T, __VA_ARGS__)

//             tile name     dtype  launch bounds              T       BM   BN   BK TM TN WARPS
// 128x128x8, 8x8 per thread, 2x4 warps (256 threads, 2 blocks per SM: <= 128 registers)
GG_MATMUL_TILE(matmul_fwd,   f32,   __launch_bounds__(256, 2), float,  128, 128, 8, 8, 8, 2, 4)
// 64x64x16, 4x4 per thread, 2x4 warps (256 threads)
GG_MATMUL_TILE(matmul_mid,   f32,   __launch_bounds__(256),    float,  64,  64,  16, 4, 4, 2, 4)
// 32x128x16, 4x8 per thread, 1x4 warps (128 threads)
GG_MATMUL_TILE(matmul_wide,  f32,   __launch_bounds__(128),    float,  32,  128, 16, 4, 8, 1, 4)
// 32x32x16, 4x4 per thread, 1x2 warps (64 threads)
GG_MATMUL_TILE(matmul_small, f32,   __launch_bounds__(64),     float,  32,  32,  16, 4, 4, 1, 2)
// 64x64x16, 4x4 per thread, 2x4 warps (256 threads)
GG_MATMUL_TILE(matmul_fwd,   f64,   __launch_bounds__(256),    double, 64,  64,  16, 4, 4, 2, 4)
// 32x32x16, 4x4 per thread, 1x2 warps (64 threads)
GG_MATMUL_TILE(matmul_small, f64,   __launch_bounds__(64),     double, 32,  32,  16, 4, 4, 1, 2)

// matmul_splitk_reduce_<dtype>: the split-K second pass (256 threads)
#define GG_MATMUL_SPLITK_REDUCE(DT, T)                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                        \
    matmul_splitk_reduce_##DT(const T* W, T* C, const T* bias, int M, int N, int splits,     \
                              int has_bias, T alpha, int relu) {                             \
        gg_matmul::splitk_reduce<T>(W, C, bias, M, N, splits, has_bias, alpha, relu);        \
    }

GG_MATMUL_SPLITK_REDUCE(f32, float)
GG_MATMUL_SPLITK_REDUCE(f64, double)
