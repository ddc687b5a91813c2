// lstm_persistent.cu: the whole LSTM recurrence (forward or backward) in ONE
// cooperative launch that loops over the time steps.
//
// The input projection of all steps, proj[T, B, 4H] = x W^T + b, is one GEMM done
// before (matmul.cu); the weight gradients are GEMMs over all steps done after. What
// is left is the sequential part, which here runs as a persistent kernel:
//
//   * each block owns U consecutive hidden units j0 .. j0+U-1 and BB batch rows
//     (gridDim.x = ceil(H/U) * ceil(B/BB); splitting the batch too cuts the bytes of
//     the broadcast vector every block reads per step) and keeps the recurrent
//     weights it needs in shared memory for the whole launch:
//     forward  Ws[k][u*4+q] = R[q*H + j0+u][k]  (all 4 gates of its units: H x 4U),
//     backward Ws[r][u]     = R[r][j0+u]        (its columns of R: 4H x U);
//   * per step it multiplies the broadcast vector of the previous step (h_{t-1}[B, H]
//     forward, dpre_{t+1}[B, 4H] backward: 4x the bytes for the same FMAs, the reason
//     the backward step is the longer one) by Ws. The vector comes from L2 in chunks
//     of KC columns, copied to shared memory by 16-byte cp.async; with NS = 2 stages
//     chunk c+1 is in flight while chunk c is multiplied, so only the first chunk's
//     L2 round trip is exposed. The gate nonlinearities and cell
//     update (or their derivatives) run in the epilogue of that product, on the
//     block's own units only: the cell update is block local;
//   * the block's slice of h_t (dpre_t) goes to global memory, and one grid-wide
//     barrier per step makes it visible to every block before the next step.
//
// The grid barrier is valid only when every block is resident at once: the host
// launches these kernels cooperatively (cuLaunchCooperativeKernel, which refuses a
// grid that does not fit) with a grid sized from the occupancy. On the GPU it is a
// monotonic arrival counter (zeroed by the host) in global memory; under the CPU
// emulator it is the emulator's grid barrier, which also detects deadlocks
// (-DGG_LSTM_SPIN_BARRIER runs the GPU's atomic barrier under the emulator instead).
//
// Gate order along 4H (MATLAB): input, forget, cell candidate, output.
//   forward:  i = s(zi), f = s(zf), g = tanh(zg), o = s(zo)
//             c = f c_prev + i g,  h = o tanh(c)
//   backward: dh = g_ys[t] + dpre_{t+1} R (g_h at t = T-1),  dc = dc_next + g_cs[t]
//             tc = tanh(c);  dct = dc + dh o (1 - tc^2)
//             dpre = ([dct g, dct c_prev, dct i, dh tc] + g_gates[t]) * act'
//             dc_next = dct f;  after step 0: dh0 = dpre_0 R, dc0 = dc_next
//
// GEMM micro-tile: each thread accumulates 4 rows (batch) x 4 columns over a slice of
// every KC chunk (KS threads split a chunk; their partial sums meet in shared memory
// `red`). Rows are processed in groups of 4*QG so that any batch size fits one
// 256-thread block. Sizes: B*4H < 2^31 and T*B*4H < 2^31 (checked on the host).

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#include "mma.cuh"  // cp.async (the emulator's version on the CPU)
#endif

namespace gg_lstmp {

template <typename T>
__device__ __forceinline__ T sigmoid(T z);
template <>
__device__ __forceinline__ float sigmoid<float>(float z) {
    return 1.0f / (1.0f + expf(-z));
}
template <>
__device__ __forceinline__ double sigmoid<double>(double z) {
    return 1.0 / (1.0 + exp(-z));
}
__device__ __forceinline__ float tanh_(float z) { return tanhf(z); }
__device__ __forceinline__ double tanh_(double z) { return tanh(z); }

// Four consecutive values from 16-byte-aligned shared memory as vector loads (LDS.128).
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
    const double2 a = reinterpret_cast<const double2*>(p)[0];
    const double2 b = reinterpret_cast<const double2*>(p)[1];
    v[0] = a.x;
    v[1] = a.y;
    v[2] = b.x;
    v[3] = b.y;
}

// One 16-byte vector from 16-byte-aligned shared memory (LDS.128): 4 floats, 2 doubles.
__device__ __forceinline__ void load_vec(const float* p, float (&v)[4]) { load4(p, v); }
__device__ __forceinline__ void load_vec(const double* p, double (&v)[2]) {
    const double2 a = *reinterpret_cast<const double2*>(p);
    v[0] = a.x;
    v[1] = a.y;
}

// Grid-wide barrier number `step` (0, 1, 2, ...): every block arrives once per step,
// so the counter reaches (step + 1) * gridDim.x exactly when all blocks have arrived.
__device__ __forceinline__ void grid_sync(unsigned int* counter, unsigned int step) {
#if defined(GPUGRAD_EMU_GRID_SYNC) && !defined(GG_LSTM_SPIN_BARRIER)
    (void)counter;
    (void)step;
    gpugrad_emu_grid_sync();
#else
    __syncthreads();  // the whole block has written its slice
    if (threadIdx.x == 0) {
        const unsigned int target = (step + 1u) * gridDim.x;
        __threadfence();  // release: this block's writes before the arrival
        atomicAdd(counter, 1u);
        volatile unsigned int* c = counter;
        while (*c < target) __nanosleep(20);
        __threadfence();  // acquire: the other blocks' writes after the wait
    }
    __syncthreads();
#endif
}

// Staging copies: cp.async (sm_80+: global -> shared without registers, L2 only, so a
// stale L1 line cannot be read; the emulator's deferred copies under the CPU build); older
// GPUs copy synchronously through registers (__ldcg) and the wait is a no-op.
__device__ __forceinline__ void copy16(void* smem, const void* gmem) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    gg_mma::cp_async16(smem, gmem);
#else
    *reinterpret_cast<float4*>(smem) = __ldcg(reinterpret_cast<const float4*>(gmem));
#endif
}
__device__ __forceinline__ void copy_commit() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    gg_mma::cp_async_commit();
#endif
}
template <int N>
__device__ __forceinline__ void copy_wait() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    gg_mma::cp_async_wait<N>();
#endif
}

// Shared-memory layout (dynamic, in units of T):
//   Ws   [Kp][NC]            resident weights, Kp = K rounded up to 4 (rows >= K and
//                            columns past the block's units are 0); row k is stored at
//                            wrow(k) = k ^ ((k >> 2) & 1): in every odd group of 4 rows
//                            the rows of a pair swap, so the two k-slices a warp reads at
//                            once (rows 4 apart) fall in different bank halves (NC = 16)
//   Hs   [stages][RB][KC+P]  chunks of the broadcast vector, row-major as in global
//                            memory (16-byte cp.async copies), RB = 4*QG rows, rows padded
//                            by P = 32 bytes (the 8 rows x k-slices of a warp's load hit 8
//                            different 16-byte bank groups); 2 stages when the vector
//                            takes more than one chunk: chunk c+1 is in flight while
//                            chunk c is multiplied
//   red  [16][KS*tiles]      partial 4x4 sums, tiles = (NC/4) * QG (see red_at)
struct Geometry {
    int K, KC, NC, nq, QG, RB, tiles, KS, ld, chunks, stages;
};

template <typename T>
__device__ __forceinline__ Geometry geometry(int K, int KC, int NC, int QG, int KS, int NS) {
    Geometry g;
    g.K = K;
    g.KC = KC;
    g.NC = NC;
    g.nq = NC / 4;
    g.QG = QG;
    g.RB = 4 * QG;
    g.tiles = g.nq * QG;
    g.KS = KS;
    g.ld = KC + 32 / (int)sizeof(T);
    g.chunks = (K + KC - 1) / KC;
    g.stages = g.chunks > 1 ? NS : 1;
    return g;
}

__device__ __forceinline__ int wrow(int k) { return k ^ ((k >> 2) & 1); }

// Stage columns kc .. kc+kn-1 of rows b0 .. b0+RB-1 of V[B][K] into buf[RB][ld] (rows >= B
// and columns kn .. round4(kn)-1 as zeros). vec: K % 4 == 0 and V 16-byte aligned, so
// every row piece is whole 16-byte copies; otherwise element loads.
template <typename T>
__device__ __forceinline__ void stage(const T* V, int B, int b0, int kc, int kn, T* buf,
                                      const Geometry& g, bool vec) {
    const int kn4 = (kn + 3) & ~3;
    // element e = bl * per_row + v of the staged block, walked without a division per
    // element: e advances by blockDim.x = dbl rows + dv elements
    const int per_row = vec ? kn / (int)(16 / sizeof(T)) : kn4;  // kn % 4 == 0 when vec
    int bl = threadIdx.x / per_row;
    int v = threadIdx.x - bl * per_row;
    const int dbl = blockDim.x / per_row, dv = blockDim.x - dbl * per_row;
    for (; bl < g.RB; bl += dbl, v += dv) {
        if (v >= per_row) {
            v -= per_row;
            ++bl;
            if (bl >= g.RB) break;
        }
        const int b = b0 + bl;
        if (vec) {
            constexpr int E = 16 / sizeof(T);  // elements per copy
            T* dst = buf + (size_t)bl * g.ld + v * E;
            if (b < B)
                copy16(dst, V + (size_t)b * g.K + kc + v * E);
            else
                *reinterpret_cast<float4*>(dst) = make_float4(0.f, 0.f, 0.f, 0.f);
        } else {
            // why __ldcg: V was written by other blocks during this launch; L2 is
            // coherent, a stale L1 line (from a neighbouring slot) would not be
            buf[(size_t)bl * g.ld + v] =
                (b < B && v < kn) ? __ldcg(V + (size_t)b * g.K + kc + v) : T(0);
        }
    }
    copy_commit();
}

// Where partial sum `off` (= m*4 + c) of thread i (= s*tiles + tile) lives in `red`:
// red[off][i], i XOR-swizzled by (off & 3) * 8 inside every whole 32-element block (a
// bijection on 0 .. KS*tiles-1, the partial last block unswizzled). The stores (one off,
// 32 consecutive i) hit 32 banks; the epilogue's loads (4 columns n & 3 x 8 tiles of a
// warp) do too, where the old [i][16] layout stored with a 16-way conflict.
__device__ __forceinline__ int red_at(const Geometry& g, int off, int i) {
    const int n = g.KS * g.tiles;
    return off * n + ((i | 31) < n ? i ^ ((off & 3) << 3) : i);
}

// red[m*4+c][s*tiles+tile] (see red_at) = sum over this thread's share of k of
// V[b0+bq+QG*m][k] * Ws[k][cq*4+c] for the rows b0 .. b0+RB-1 of V[B][K] (rows >= B
// count as zero). A thread's 4 rows are QG apart (bq + QG*m), so the rows a warp reads
// at once are consecutive.
template <typename T>
__device__ __forceinline__ void block_gemm(const T* V, int B, int b0, const T* Ws, T* Hs,
                                           T* red, const Geometry& g) {
    const int tid = threadIdx.x;
    const int s = tid / g.tiles;
    const int tile = tid - s * g.tiles;
    const int cq = tile % g.nq;
    const int bq = tile / g.nq;
    const bool active = s < g.KS;
    const bool vec = (g.K & 3) == 0 && (reinterpret_cast<size_t>(V) & 15) == 0;
    const bool two = g.stages == 2;
    T* const buf1 = Hs + (two ? (size_t)g.RB * g.ld : 0);  // == Hs with one stage
    T acc[4][4];
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[m][c] = T(0);
    for (int ci = 0; ci < g.chunks; ++ci) {
        const int kc = ci * g.KC;
        const int kn = min(g.KC, g.K - kc);  // columns in this chunk
        // stage chunk ci itself with one stage; with two, chunks 0 and 1 first, then one
        // chunk ahead (into the buffer chunk ci - 1 used)
        const int last = min(two ? ci + 1 : ci, g.chunks - 1);
        for (int n = two && ci ? ci + 1 : ci; n <= last; ++n)
            stage(V, B, b0, n * g.KC, min(g.KC, g.K - n * g.KC), (n & 1) ? buf1 : Hs, g, vec);
        if (two && ci + 1 < g.chunks)
            copy_wait<1>();  // this thread's copies of chunk ci have landed
        else
            copy_wait<0>();
        __syncthreads();  // everyone's copies of chunk ci have landed
        if (active) {
            // KV columns per 16-byte load: thread s takes k-slices s, s + KS, ... of the
            // chunk, so the two slices a warp reads at once are adjacent. Pointers advance
            // by a slice stride (no per-iteration address products).
            constexpr int KV = 16 / sizeof(T);
            const int kstep = KV * g.KS;
            const int hstep = g.QG * g.ld;  // row m of the thread: bq + QG*m
            const T* hp = ((ci & 1) ? buf1 : Hs) + bq * g.ld + KV * s;
            const T* wp = Ws + (kc + KV * s) * g.NC + cq * 4;
            const int wstep = kstep * g.NC;
#pragma unroll 1
            for (int k = KV * s; k < kn; k += kstep, hp += kstep, wp += wstep) {
                T hv[4][KV];  // hv[m][j] = V[row m][kc + k + j]
#pragma unroll
                for (int m = 0; m < 4; ++m) load_vec(hp + m * hstep, hv[m]);
                // weight rows kc+k+j sit at wrow() = kc+k + (j ^ flip): the even j at
                // `we`, the odd at `wo`
                const int flip = ((kc + k) >> 2) & 1;
                const T* we = wp + (flip ? g.NC : 0);
                const T* wo = wp + (flip ? 0 : g.NC);
#pragma unroll
                for (int j = 0; j < KV; ++j) {
                    T wv[4];
                    load4(((j & 1) ? wo : we) + (j & ~1) * g.NC, wv);
#pragma unroll
                    for (int m = 0; m < 4; ++m)
#pragma unroll
                        for (int c = 0; c < 4; ++c) acc[m][c] += hv[m][j] * wv[c];
                }
            }
        }
        if (ci + (two ? 2 : 1) < g.chunks) __syncthreads();  // its buffer is refilled next
    }
    if (active) {
#pragma unroll
        for (int m = 0; m < 4; ++m)
#pragma unroll
            for (int c = 0; c < 4; ++c) red[red_at(g, m * 4 + c, tid)] = acc[m][c];
    }
    __syncthreads();  // partial sums visible to the epilogue
}

// Sum of the KS partials of output (row bl of the group, column n).
template <typename T>
__device__ __forceinline__ T reduced(const T* red, const Geometry& g, int bl, int n) {
    const int bq = bl % g.QG, m = bl / g.QG;
    const int tile = (n >> 2) + g.nq * bq;
    const int off = m * 4 + (n & 3);
    T v = T(0);
    for (int s = 0; s < g.KS; ++s) v += red[red_at(g, off, s * g.tiles + tile)];
    return v;
}

template <typename T>
__device__ __forceinline__ void carve(T*& Ws, T*& Hs, T*& red, const Geometry& g) {
    extern __shared__ __align__(16) unsigned char gg_lstmp_smem[];
    Ws = reinterpret_cast<T*>(gg_lstmp_smem);
    Hs = Ws + (size_t)((g.K + 3) & ~3) * g.NC;
    red = Hs + (size_t)g.stages * g.RB * g.ld;
}

// The global-memory inputs of the epilogue of one (row b, unit j). Each thread loads
// those of its first pair before the GEMM, so their latency hides behind it.
template <typename T>
__device__ __forceinline__ void fwd_inputs(const T* __restrict__ proj, const T* cprev,
                                           size_t row, size_t bj, int H, int j, T (&in)[5]) {
#pragma unroll
    for (int q = 0; q < 4; ++q) in[q] = proj[row + (size_t)q * H + j];
    in[4] = cprev[bj];  // why a plain load: c_{t-1} of (b, j) was written by this thread
}

template <typename T>
__device__ __forceinline__ void bwd_inputs(const T* __restrict__ gates, const T* __restrict__ cs,
                                           const T* __restrict__ c0, const T* __restrict__ g_ys,
                                           const T* __restrict__ g_c, const T* __restrict__ g_cs,
                                           const T* __restrict__ g_gates, const T* dc_run,
                                           int t, int steps, size_t BH, size_t row, size_t bj,
                                           int H, int j, int has_gcs, int has_ggates,
                                           T (&in)[12]) {
    const size_t e = (size_t)t * BH + bj;
#pragma unroll
    for (int q = 0; q < 4; ++q) in[q] = gates[row + (size_t)q * H + j];
    in[4] = cs[e];
    in[5] = t ? cs[e - BH] : c0[bj];
    in[6] = g_ys[e];
    // why dc_run (= dc0) as the running dc: (b, j) is read and written by this thread only
    in[7] = (t == steps - 1 ? g_c[bj] : dc_run[bj]) + (has_gcs ? g_cs[e] : T(0));
#pragma unroll
    for (int q = 0; q < 4; ++q) in[8 + q] = has_ggates ? g_gates[row + (size_t)q * H + j] : T(0);
}

template <typename T>
__device__ void persistent_fwd(const T* __restrict__ proj, const T* __restrict__ R,
                               const T* __restrict__ h0, const T* __restrict__ c0, T* ys,
                               T* __restrict__ cs, T* __restrict__ gates, unsigned int* sync,
                               int steps, int B, int H, int U, int BB, int QG, int KS,
                               int KC, int NS) {
    const Geometry g = geometry<T>(H, KC, 4 * U, QG, KS, NS);
    T *Ws, *Hs, *red;
    carve(Ws, Hs, red, g);
    const int nub = (H + U - 1) / U;  // blocks along the hidden units
    const int j0 = (blockIdx.x % nub) * U;
    const int row_lo = (blockIdx.x / nub) * BB;  // this block's batch rows
    const int row_hi = min(B, row_lo + BB);
    // resident weights: Ws[wrow(k)][u*4+q] = R[q*H + j0+u][k]; rows k >= K (up to a
    // multiple of 4) are zero. A warp copies 8 consecutive k (one 32-byte sector of an R
    // row) of 4 columns: whole sectors, and 4 banks of shared memory per store where
    // 32 consecutive k of one column hit one bank (NC a multiple of 32: 32-way conflicts)
    const int Kp = (g.K + 3) & ~3;
    for (int e = threadIdx.x; e < ((Kp + 7) & ~7) * g.NC; e += blockDim.x) {
        const int rest = e >> 3;
        const int kb = rest / g.NC;
        const int col = rest - kb * g.NC;
        const int k = kb * 8 + (e & 7);
        if (k >= Kp) continue;
        const int u = col >> 2, q = col & 3;
        const int j = j0 + u;
        Ws[(size_t)wrow(k) * g.NC + col] =
            (u < U && j < H && k < g.K) ? R[((size_t)q * H + j) * H + k] : T(0);
    }
    const size_t BH = (size_t)B * H;
    const int pairs = g.RB * U;
    for (int t = 0; t < steps; ++t) {
        const T* hprev = t ? ys + (size_t)(t - 1) * BH : h0;
        const T* cprev = t ? cs + (size_t)(t - 1) * BH : c0;
        for (int b0 = row_lo; b0 < row_hi; b0 += g.RB) {
            T first[5];
            {
                const int bl = threadIdx.x / U, u = threadIdx.x - bl * U;
                const int b = b0 + bl, j = j0 + u;
                if (threadIdx.x < pairs && b < row_hi && j < H)
                    fwd_inputs(proj, cprev, ((size_t)t * B + b) * 4 * H, (size_t)b * H + j, H, j,
                               first);
            }
            block_gemm(hprev, row_hi, b0, Ws, Hs, red, g);
            // epilogue: gate nonlinearities and cell update of the block's own units
            for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
                const int bl = p / U;
                const int u = p - bl * U;
                const int b = b0 + bl;
                const int j = j0 + u;
                if (b >= row_hi || j >= H) continue;
                const size_t row = ((size_t)t * B + b) * 4 * H;
                T in[5];
                if (p == (int)threadIdx.x) {
#pragma unroll
                    for (int q = 0; q < 5; ++q) in[q] = first[q];
                } else {
                    fwd_inputs(proj, cprev, row, (size_t)b * H + j, H, j, in);
                }
                const T zi = in[0] + reduced(red, g, bl, u * 4 + 0);
                const T zf = in[1] + reduced(red, g, bl, u * 4 + 1);
                const T zg = in[2] + reduced(red, g, bl, u * 4 + 2);
                const T zo = in[3] + reduced(red, g, bl, u * 4 + 3);
                const T i = sigmoid<T>(zi), f = sigmoid<T>(zf), gc = tanh_(zg);
                const T o = sigmoid<T>(zo);
                const T cn = f * in[4] + i * gc;
                const size_t e = (size_t)t * BH + (size_t)b * H + j;
                cs[e] = cn;
                ys[e] = o * tanh_(cn);
                gates[row + j] = i;
                gates[row + H + j] = f;
                gates[row + 2 * H + j] = gc;
                gates[row + 3 * H + j] = o;
            }
        }
        if (t + 1 < steps) grid_sync(sync, (unsigned)t);
    }
}

template <typename T>
__device__ void persistent_bwd(const T* __restrict__ g_ys, const T* __restrict__ g_h,
                               const T* __restrict__ g_c, const T* __restrict__ g_cs,
                               const T* __restrict__ g_gates, const T* __restrict__ gates,
                               const T* __restrict__ cs, const T* __restrict__ c0,
                               const T* __restrict__ R, T* dpre, T* __restrict__ dh0,
                               T* __restrict__ dc0, unsigned int* sync, int steps, int B, int H,
                               int U, int BB, int QG, int KS, int KC, int NS, int has_gcs,
                               int has_ggates) {
    const int U4 = (U + 3) & ~3;
    const Geometry g = geometry<T>(4 * H, KC, U4, QG, KS, NS);
    T *Ws, *Hs, *red;
    carve(Ws, Hs, red, g);
    const int nub = (H + U - 1) / U;
    const int j0 = (blockIdx.x % nub) * U;
    const int row_lo = (blockIdx.x / nub) * BB;
    const int row_hi = min(B, row_lo + BB);
    // resident weights: Ws[wrow(r)][u] = R[r][j0+u] (K = 4H: no padding rows)
    for (int e = threadIdx.x; e < g.K * g.NC; e += blockDim.x) {
        const int r = e / g.NC;
        const int u = e - r * g.NC;
        const int j = j0 + u;
        Ws[(size_t)wrow(r) * g.NC + u] = (u < U && j < H) ? R[(size_t)r * H + j] : T(0);
    }
    const size_t BH = (size_t)B * H;
    const size_t B4H = BH * 4;
    const int pairs = g.RB * U;
    for (int t = steps - 1; t >= -1; --t) {
        for (int b0 = row_lo; b0 < row_hi; b0 += g.RB) {
            T first[12];
            if (t >= 0) {
                const int bl = threadIdx.x / U, u = threadIdx.x - bl * U;
                const int b = b0 + bl, j = j0 + u;
                if (threadIdx.x < pairs && b < row_hi && j < H)
                    bwd_inputs(gates, cs, c0, g_ys, g_c, g_cs, g_gates, dc0, t, steps, BH,
                               ((size_t)t * B + b) * 4 * H, (size_t)b * H + j, H, j, has_gcs,
                               has_ggates, first);
            }
            if (t < steps - 1) block_gemm(dpre + (size_t)(t + 1) * B4H, row_hi, b0, Ws, Hs, red, g);
            for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
                const int bl = p / U;
                const int u = p - bl * U;
                const int b = b0 + bl;
                const int j = j0 + u;
                if (b >= row_hi || j >= H) continue;
                const size_t bj = (size_t)b * H + j;
                const T dh_rec = t < steps - 1 ? reduced(red, g, bl, u) : g_h[bj];
                if (t < 0) {  // after step 0: the gradient at h0
                    dh0[bj] = dh_rec;
                    continue;
                }
                const size_t row = ((size_t)t * B + b) * 4 * H;
                T in[12];
                if (p == (int)threadIdx.x) {
#pragma unroll
                    for (int q = 0; q < 12; ++q) in[q] = first[q];
                } else {
                    bwd_inputs(gates, cs, c0, g_ys, g_c, g_cs, g_gates, dc0, t, steps, BH, row, bj,
                               H, j, has_gcs, has_ggates, in);
                }
                const T i = in[0], f = in[1], gc = in[2], o = in[3];
                const T tc = tanh_(in[4]);
                const T c_prev = in[5];
                const T dh = in[6] + dh_rec;
                const T dct = in[7] + dh * o * (T(1) - tc * tc);
                const T di = dct * gc + in[8], df = dct * c_prev + in[9];
                const T dg = dct * i + in[10], dz = dh * tc + in[11];
                dpre[row + j] = di * i * (T(1) - i);
                dpre[row + H + j] = df * f * (T(1) - f);
                dpre[row + 2 * H + j] = dg * (T(1) - gc * gc);
                dpre[row + 3 * H + j] = dz * o * (T(1) - o);
                dc0[bj] = dct * f;
            }
        }
        if (t >= 0) grid_sync(sync, (unsigned)(steps - 1 - t));
    }
}

}  // namespace gg_lstmp

extern "C" __global__ void __launch_bounds__(256, 1)
    lstm_fwd_persistent_f32(const float* proj, const float* R, const float* h0,
                            const float* c0, float* ys, float* cs, float* gates,
                            unsigned int* sync, int steps, int B, int H, int U, int BB,
                            int QG, int KS, int KC, int NS) {
    gg_lstmp::persistent_fwd<float>(proj, R, h0, c0, ys, cs, gates, sync, steps, B, H, U, BB,
                                    QG, KS, KC, NS);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    lstm_fwd_persistent_f64(const double* proj, const double* R, const double* h0,
                            const double* c0, double* ys, double* cs, double* gates,
                            unsigned int* sync, int steps, int B, int H, int U, int BB,
                            int QG, int KS, int KC, int NS) {
    gg_lstmp::persistent_fwd<double>(proj, R, h0, c0, ys, cs, gates, sync, steps, B, H, U, BB,
                                     QG, KS, KC, NS);
}

extern "C" __global__ void __launch_bounds__(256, 1) lstm_bwd_persistent_f32(
    const float* g_ys, const float* g_h, const float* g_c, const float* g_cs,
    const float* g_gates, const float* gates, const float* cs, const float* c0, const float* R,
    float* dpre, float* dh0, float* dc0, unsigned int* sync, int steps, int B, int H, int U,
    int BB, int QG, int KS, int KC, int NS, int has_gcs, int has_ggates) {
    gg_lstmp::persistent_bwd<float>(g_ys, g_h, g_c, g_cs, g_gates, gates, cs, c0, R, dpre, dh0,
                                    dc0, sync, steps, B, H, U, BB, QG, KS, KC, NS, has_gcs,
                                    has_ggates);
}

extern "C" __global__ void __launch_bounds__(256, 1) lstm_bwd_persistent_f64(
    const double* g_ys, const double* g_h, const double* g_c, const double* g_cs,
    const double* g_gates, const double* gates, const double* cs, const double* c0,
    const double* R, double* dpre, double* dh0, double* dc0, unsigned int* sync, int steps,
    int B, int H, int U, int BB, int QG, int KS, int KC, int NS, int has_gcs,
    int has_ggates) {
    gg_lstmp::persistent_bwd<double>(g_ys, g_h, g_c, g_cs, g_gates, gates, cs, c0, R, dpre, dh0,
                                     dc0, sync, steps, B, H, U, BB, QG, KS, KC, NS, has_gcs,
                                    has_ggates);
}
