// matmul.cu: tiled GEMM with fused prologue and epilogue.
//
//   C[M,N] = act(alpha * op(A) @ op(B) + bias[N])      act in {none, relu}
//
// op(X) is X or X^T, chosen at run time by the trans_a / trans_b flags, so the
// backward pass (dA = dC B^T, dB = A^T dC) needs no explicit transposes.
// Optional relu-mask prologue: when has_mask != 0, A's element is read as
// (mask[i,k] > 0 ? A[i,k] : 0), with mask stored in A's layout; this fuses
// dZ = dY * [Y > 0] into the backward GEMM.
//
// Design (S. Boehm's SGEMM worklog, kernels 5-6):
//  * a block computes a BM x BN tile of C; each thread a TM x TN register tile
//    (2-D register blocking), held as groups of 4 rows / 4 columns strided by
//    BM/(TM/4) so that a quarter warp reads 128 contiguous bytes of shared
//    memory (no bank conflicts) and writes 4 contiguous outputs;
//  * shared tiles are stored k-major (As[k][m], Bs[k][n]) and double buffered:
//    the next global tile is fetched into registers while the current one is
//    multiplied, one __syncthreads per k step;
//  * global loads are 4-wide (float4 / 2 x double2) whenever the address is
//    16-byte aligned and the 4 elements are in bounds; a scalar path handles
//    edges, odd leading dimensions and unaligned bases;
//  * 1-D grid with grouped ("swizzled") tile order so consecutive blocks reuse
//    the same A rows / B columns from L2.
//
// Indices are 32-bit: the host wrapper rejects operands with >= 2^31 elements.
// Entry points (one per tile configuration and dtype; the host picks one):
//   matmul_fwd_f32    128x128x8,  8x8 per thread, 256 threads
//   matmul_mid_f32     64x64x16,  4x4 per thread, 256 threads
//   matmul_small_f32   32x32x16,  4x4 per thread,  64 threads
//   matmul_fwd_f64     64x64x16,  4x4 per thread, 256 threads
//   matmul_small_f64   32x32x16,  4x4 per thread,  64 threads

#include "common.cuh"

namespace gg_matmul {

using namespace gg_common;  // aligned16, madd, load4, store4

constexpr int PAD = 4;  // keeps rows 16-byte aligned and spreads k-major stores over banks

// One operand tile of op(X): BMN rows (the m or n extent) by BK columns (k),
// loaded from global memory into registers, then stored k-major into shared
// memory. Element (mn, k) of op(X) lives at X[mn*ld + k] when kmajor, else at
// X[k*ld + mn].
template <typename T, int BMN, int BK, int NT>
struct MatTile {
    static constexpr int V = BMN * BK / 4 / NT;  // 4-vectors per thread per tile
    static_assert(BMN * BK % (4 * NT) == 0, "tile must split evenly into 4-vectors");
    static_assert(V >= 1, "too many threads for the tile");

    const T* __restrict__ x;
    const T* __restrict__ mask;  // nullptr: no mask
    int ld, ext_mn, ext_k, mn0;
    bool kmajor, vec;
    T r[V][4];

    __device__ __forceinline__ void init(const T* x_, const T* mask_, int ld_, int ext_mn_,
                                         int ext_k_, int mn0_, bool kmajor_) {
        x = x_;
        mask = mask_;
        ld = ld_;
        ext_mn = ext_mn_;
        ext_k = ext_k_;
        mn0 = mn0_;
        kmajor = kmajor_;
        vec = (ld % 4 == 0) && aligned16(x) && (mask == nullptr || aligned16(mask));
    }

    __device__ __forceinline__ T fetch(int offset) const {
        const T v = x[offset];
        if (mask != nullptr) return mask[offset] > T(0) ? v : T(0);
        return v;
    }

    __device__ __forceinline__ void load(int k0) {
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const int id = threadIdx.x + v * NT;
            if (kmajor) {
                const int gm = mn0 + id / (BK / 4);
                const int gk = k0 + (id % (BK / 4)) * 4;
                if (vec && gm < ext_mn && gk + 3 < ext_k) {
                    load4(x + gm * ld + gk, r[v]);
                    if (mask != nullptr) {
                        T mk[4];
                        load4(mask + gm * ld + gk, mk);
#pragma unroll
                        for (int j = 0; j < 4; ++j) r[v][j] = mk[j] > T(0) ? r[v][j] : T(0);
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        r[v][j] = (gm < ext_mn && gk + j < ext_k) ? fetch(gm * ld + gk + j) : T(0);
                }
            } else {
                const int gk = k0 + id / (BMN / 4);
                const int gm = mn0 + (id % (BMN / 4)) * 4;
                if (vec && gk < ext_k && gm + 3 < ext_mn) {
                    load4(x + gk * ld + gm, r[v]);
                    if (mask != nullptr) {
                        T mk[4];
                        load4(mask + gk * ld + gm, mk);
#pragma unroll
                        for (int j = 0; j < 4; ++j) r[v][j] = mk[j] > T(0) ? r[v][j] : T(0);
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        r[v][j] = (gk < ext_k && gm + j < ext_mn) ? fetch(gk * ld + gm + j) : T(0);
                }
            }
        }
    }

    __device__ __forceinline__ void store(T (*xs)[BMN + PAD]) const {
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const int id = threadIdx.x + v * NT;
            if (kmajor) {
                const int mn = id / (BK / 4);
                const int kq = (id % (BK / 4)) * 4;
#pragma unroll
                for (int j = 0; j < 4; ++j) xs[kq + j][mn] = r[v][j];
            } else {
                store4(&xs[id / (BMN / 4)][(id % (BMN / 4)) * 4], r[v]);
            }
        }
    }
};

// The whole GEMM for one tile configuration.
template <typename T, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void gemm(const T* __restrict__ A, const T* __restrict__ B,
                                     T* __restrict__ C, const T* __restrict__ bias,
                                     const T* __restrict__ mask, int M, int N, int K, int lda,
                                     int ldb, int ldc, int trans_a, int trans_b, int has_bias,
                                     int has_mask, T alpha, int relu) {
    constexpr int TX = BN / TN;        // threads along n
    constexpr int TY = BM / TM;        // threads along m
    constexpr int NT = TX * TY;        // threads per block
    constexpr int GM = TM / 4;         // 4-row groups per thread
    constexpr int GN = TN / 4;         // 4-column groups per thread
    constexpr int SM = BM / GM;        // stride between a thread's row groups
    constexpr int SN = BN / GN;        // stride between a thread's column groups
    constexpr int GROUP = 8;           // tile rows per swizzle group
    static_assert(TM % 4 == 0 && TN % 4 == 0, "register tile must be made of 4-vectors");

    __shared__ __align__(16) T As[2][BK][BM + PAD];
    __shared__ __align__(16) T Bs[2][BK][BN + PAD];

    // Grouped tile order: GROUP tile rows are swept column by column.
    const int tiles_m = (M + BM - 1) / BM;
    const int tiles_n = (N + BN - 1) / BN;
    const int pid = blockIdx.x;
    const int per_group = GROUP * tiles_n;
    const int first_m = (pid / per_group) * GROUP;
    const int group_rows = min(tiles_m - first_m, GROUP);
    const int tile_m = first_m + (pid % per_group) % group_rows;
    const int tile_n = (pid % per_group) / group_rows;
    const int m0 = tile_m * BM;
    const int n0 = tile_n * BN;

    const int tid = threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;

    MatTile<T, BM, BK, NT> ta;
    MatTile<T, BN, BK, NT> tb;
    ta.init(A, has_mask ? mask : nullptr, lda, M, K, m0, trans_a == 0);
    tb.init(B, nullptr, ldb, N, K, n0, trans_b != 0);

    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

    const int ktiles = (K + BK - 1) / BK;
    if (ktiles > 0) {
        ta.load(0);
        tb.load(0);
        ta.store(As[0]);
        tb.store(Bs[0]);
    }
    __syncthreads();

    for (int t = 0; t < ktiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < ktiles;
        if (more) {  // fetch the next tile while this one is multiplied
            ta.load((t + 1) * BK);
            tb.load((t + 1) * BK);
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T a[TM], b[TN];
#pragma unroll
            for (int g = 0; g < GM; ++g) load4(&As[cur][kk][g * SM + ty * 4], &a[g * 4]);
#pragma unroll
            for (int g = 0; g < GN; ++g) load4(&Bs[cur][kk][g * SN + tx * 4], &b[g * 4]);
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

    // Epilogue: alpha, bias, relu; 4-wide stores where aligned and in bounds.
    const bool cvec = (ldc % 4 == 0) && aligned16(C);
#pragma unroll
    for (int gi = 0; gi < GM; ++gi) {
#pragma unroll
        for (int ii = 0; ii < 4; ++ii) {
            const int row = m0 + gi * SM + ty * 4 + ii;
            if (row >= M) continue;
#pragma unroll
            for (int gj = 0; gj < GN; ++gj) {
                const int col = n0 + gj * SN + tx * 4;
                T out[4];
#pragma unroll
                for (int jj = 0; jj < 4; ++jj) {
                    T v = alpha * acc[gi * 4 + ii][gj * 4 + jj];
                    if (has_bias && col + jj < N) v += bias[col + jj];
                    if (relu) v = v < T(0) ? T(0) : v;  // NaN propagates, as in NumPy
                    out[jj] = v;
                }
                if (cvec && col + 3 < N) {
                    store4(C + row * ldc + col, out);
                } else {
#pragma unroll
                    for (int jj = 0; jj < 4; ++jj)
                        if (col + jj < N) C[row * ldc + col + jj] = out[jj];
                }
            }
        }
    }
}

}  // namespace gg_matmul

extern "C" __global__ void matmul_fwd_f32(const float* A, const float* B, float* C,
                                          const float* bias, const float* mask, int M, int N,
                                          int K, int lda, int ldb, int ldc, int trans_a,
                                          int trans_b, int has_bias, int has_mask, float alpha,
                                          int relu) {
    gg_matmul::gemm<float, 128, 128, 8, 8, 8>(A, B, C, bias, mask, M, N, K, lda, ldb, ldc,
                                              trans_a, trans_b, has_bias, has_mask, alpha, relu);
}

extern "C" __global__ void matmul_mid_f32(const float* A, const float* B, float* C,
                                          const float* bias, const float* mask, int M, int N,
                                          int K, int lda, int ldb, int ldc, int trans_a,
                                          int trans_b, int has_bias, int has_mask, float alpha,
                                          int relu) {
    gg_matmul::gemm<float, 64, 64, 16, 4, 4>(A, B, C, bias, mask, M, N, K, lda, ldb, ldc,
                                             trans_a, trans_b, has_bias, has_mask, alpha, relu);
}

extern "C" __global__ void matmul_small_f32(const float* A, const float* B, float* C,
                                            const float* bias, const float* mask, int M, int N,
                                            int K, int lda, int ldb, int ldc, int trans_a,
                                            int trans_b, int has_bias, int has_mask, float alpha,
                                            int relu) {
    gg_matmul::gemm<float, 32, 32, 16, 4, 4>(A, B, C, bias, mask, M, N, K, lda, ldb, ldc,
                                             trans_a, trans_b, has_bias, has_mask, alpha, relu);
}

extern "C" __global__ void matmul_fwd_f64(const double* A, const double* B, double* C,
                                          const double* bias, const double* mask, int M, int N,
                                          int K, int lda, int ldb, int ldc, int trans_a,
                                          int trans_b, int has_bias, int has_mask, double alpha,
                                          int relu) {
    gg_matmul::gemm<double, 64, 64, 16, 4, 4>(A, B, C, bias, mask, M, N, K, lda, ldb, ldc,
                                              trans_a, trans_b, has_bias, has_mask, alpha, relu);
}

extern "C" __global__ void matmul_small_f64(const double* A, const double* B, double* C,
                                            const double* bias, const double* mask, int M,
                                            int N, int K, int lda, int ldb, int ldc, int trans_a,
                                            int trans_b, int has_bias, int has_mask,
                                            double alpha, int relu) {
    gg_matmul::gemm<double, 32, 32, 16, 4, 4>(A, B, C, bias, mask, M, N, K, lda, ldb, ldc,
                                              trans_a, trans_b, has_bias, has_mask, alpha, relu);
}
