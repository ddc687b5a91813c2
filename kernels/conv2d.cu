// conv2d.cu: 2-D convolution as implicit GEMM (no im2col buffer in global memory).
//
// Layouts: x[N,H,W,Cin] (NHWC), w[KH,KW,Cin/groups,Cout] (MATLAB), y[N,Ho,Wo,Cout].
// Stride (sh, sw), dilation (dh, dw), padding top/left (pt, pl; bottom/right only
// change Ho/Wo, which the host computes), groups. Per group g, with
// Cg = Cin/groups input and Ng = Cout/groups output channels:
//
//   forward        y[p, g*Ng+co]     = sum_k A[p, k] W[k, co]        p = (n, ho, wo)
//                  A[p, (r,s,ci)]    = x[n, ho*sh-pt+r*dh, wo*sw-pl+s*dw, g*Cg+ci] (0 outside)
//                  W = w viewed as a [KH*KW*Cg, Cout] row-major matrix
//                  + bias[g*Ng+co], optional relu (same epilogue as matmul.cu)
//   backward data  dx[q, g*Cg+ci]    = sum_(r,s,co) dy[n, ho, wo, g*Ng+co] w[r, s, ci, g*Ng+co]
//                  q = (n, hi, wi), ho = (hi+pt-r*dh)/sh when that divides exactly and is in range
//                  Sub-pixel (phase) decomposition: the sh*sw phases (a, b) =
//                  ((hi+pt) mod sh, (wi+pl) mod sw) are independent dense GEMMs (blockIdx.z),
//                  each over only the taps r with r*dh = a (mod sh), s with s*dw = b
//                  (mod sw); no multiply lands on a structural zero (stride 2: 4x fewer).
//   backward filt. dw[(r,s,ci), g*Ng+co] = sum_p A[p, (r,s,ci)] dy[p, g*Ng+co]
//                  split over p into gridDim.z partial sums (written to a workspace
//                  [splits, KH*KW*Cg, Cout] and summed by the host; deterministic).
//
// GEMM core: k-major double-buffered shared tiles (one barrier per k-tile), register
// tiles of TM x TN per thread read as 16-byte vectors of VE = 4 floats / 2 doubles
// (LDS.128), 16-byte global loads where the channel count (a multiple of VE) and
// alignment allow, scalar gathers otherwise (two separate instantiations, chosen once
// per launch, so the hot loop has no path switch). Consecutive lanes load consecutive
// 16-byte words, so every 32-byte sector of a request is fully used, for double too.
//   float32: 128x64x8 block tile, 8x8 per thread, 128 threads (FFMA:LDS.128 = 16:1)
//   float64:  64x64x8 block tile, 4x4 per thread, 256 threads (registers: 64 doubles)
// Lane swizzle: lane bit 0 selects the row group and lane bits 1.. the column group,
// so lanes n and n^1 read the same B fragment and n, n^2 the same A fragment: both
// LDS.128 of a step pair-pack (2 shared-memory cycles each instead of 4).
// Index math: no division in the k-loop. Each thread computes the pixel (n, h, w) of
// its rows once; the reduction index k = (r, s, c) is walked incrementally (TapWalk:
// add BK to c, wrap into s and r with precomputed offset deltas). Indices are 32-bit
// (the host checks sizes < 2^31). The small helpers (aligned 16-byte loads/stores,
// madd) come from common.cuh, the geometry (Conv, TapGeom/TapWalk, Phase, the pixel of
// a GEMM row, the block's tile) from conv_common.cuh, shared with conv2d_tf32.cu.

#include "common.cuh"
#include "conv_common.cuh"

namespace gg_conv {

using namespace gg_common;       // aligned16, madd, VW, loadv, storev, tile_of_block
using namespace gg_conv_common;  // Conv, TapGeom, TapWalk, Phase, ...

template <typename T>
struct Cfg;
template <>
struct Cfg<float> {
    static constexpr int BM = 128, BN = 64, BK = 8, TM = 8, TN = 8, UNROLL = 2;
};
template <>
struct Cfg<double> {
    static constexpr int BM = 64, BN = 64, BK = 8, TM = 4, TN = 4, UNROLL = 1;
};
constexpr int PAD = 4;
constexpr int NT_F32 = 128, NT_F64 = 256;  // threads per block (= __launch_bounds__ below)

template <typename T>
struct Tile {
    static constexpr int BM = Cfg<T>::BM, BN = Cfg<T>::BN, BK = Cfg<T>::BK;
    static constexpr int TM = Cfg<T>::TM, TN = Cfg<T>::TN, UNROLL = Cfg<T>::UNROLL;
    static constexpr int TX = BN / TN, TY = BM / TM, NT = TX * TY;
    static constexpr int VE = VW<T>;              // elements per 16-byte vector (4 or 2)
    static constexpr int KQ = BK / VE;            // vectors along k in one tile row
    static constexpr int VA = BM * BK / VE / NT;  // vectors per thread: A tile
    static constexpr int VB = BN * BK / VE / NT;  // vectors per thread: B tile
    static_assert(VA >= 1 && VB == 1 && BM * BK / VE == VA * NT, "tile does not split evenly");
    static_assert(TX <= 16 && TM % VE == 0 && TN % VE == 0, "lane swizzle needs TX <= 16");
    static_assert(NT == (sizeof(T) == 4 ? NT_F32 : NT_F64), "thread count");
};

// Which k-quad (k offset within a tile) and which row of a k-major tile thread t loads.
template <typename T>
__device__ __forceinline__ int kq_of_thread() {
    return (threadIdx.x % Tile<T>::KQ) * Tile<T>::VE;
}
template <typename T>
__device__ __forceinline__ int row_of_thread(int v) {  // v-th of the VA rows (k-major A)
    return threadIdx.x / Tile<T>::KQ + v * (Tile<T>::NT / Tile<T>::KQ);
}

template <typename T, int ROWS>
__device__ __forceinline__ void store_kmajor(T (*xs)[ROWS + PAD], int row, const T* r) {
    const int kq = kq_of_thread<T>();
#pragma unroll
    for (int j = 0; j < Tile<T>::VE; ++j) xs[kq + j][row] = r[j];
}

// Plain row-major matrix operand, mn-major: element (mn, k) at x[k*ld + mn]; one
// 4-vector per thread per tile, advanced by BK rows per tile.
template <typename T, bool VEC>
struct RowsTile {
    static constexpr int BN = Tile<T>::BN, BK = Tile<T>::BK, VE = Tile<T>::VE;
    const T* __restrict__ x;
    int ld, ext_mn, ext_k, mn, kr, k, off;
    bool full;
    T r[VE];
    __device__ __forceinline__ void init(const T* x_, int ld_, int ext_mn_, int ext_k_, int mn0,
                                         int k0) {
        x = x_;
        ld = ld_;
        ext_mn = ext_mn_;
        ext_k = ext_k_;
        mn = mn0 + (threadIdx.x % (BN / VE)) * VE;
        kr = threadIdx.x / (BN / VE);
        k = k0 + kr;
        off = k * ld + mn;
        full = mn + VE - 1 < ext_mn;
    }
    __device__ __forceinline__ void load() {
        if (VEC && full) {
            if (k < ext_k) {
                loadv(x + off, r);
            } else {
#pragma unroll
                for (int j = 0; j < VE; ++j) r[j] = T(0);
            }
        } else {
#pragma unroll
            for (int j = 0; j < VE; ++j)
                r[j] = (k < ext_k && mn + j < ext_mn) ? x[off + j] : T(0);
        }
        k += BK;
        off += BK * ld;
    }
    __device__ __forceinline__ void store(T (*xs)[BN + PAD]) const {
        storev(&xs[kr][(threadIdx.x % (BN / VE)) * VE], r);
    }
};

// k-major gather of an image-shaped operand (x for the forward pass, dy for backward
// data): the thread's VA rows are pixels (hb[v], wb[v]) of a Hs x Ws grid, element
// offset base[v]; the columns k = (u, v, c) are taps walked by k (VEC: by TapWalk, the
// VE channels of a vector lie in one pixel, all in or all out; else located per element).
template <typename T, bool VEC>
struct PixelGather {
    static constexpr int VA = Tile<T>::VA, BM = Tile<T>::BM, BK = Tile<T>::BK;
    static constexpr int VE = Tile<T>::VE;
    const T* __restrict__ src;  // already offset by the group's channels
    int Hs, Ws, kpos;
    int base[VA], hb[VA], wb[VA];
    TapGeom g;
    TapWalk k;
    T r[VA][VE];
    __device__ __forceinline__ void start(const T* src_, int Hs_, int Ws_, const TapGeom& g_) {
        src = src_;
        Hs = Hs_;
        Ws = Ws_;
        g = g_;
        kpos = kq_of_thread<T>();
        if (VEC) k.init(g, kpos);
    }
    __device__ __forceinline__ void load() {
        if (VEC) {
#pragma unroll
            for (int v = 0; v < VA; ++v) {
                const int h = hb[v] + k.hoff, w = wb[v] + k.woff;
                if (k.valid(g) && (unsigned)h < (unsigned)Hs && (unsigned)w < (unsigned)Ws) {
                    loadv(src + (base[v] + k.toff + k.c), r[v]);
                } else {
#pragma unroll
                    for (int j = 0; j < VE; ++j) r[v][j] = T(0);
                }
            }
            k.advance(g, BK);
        } else {
#pragma unroll
            for (int j = 0; j < VE; ++j) {
                int hoff, woff, toff, c;
                const bool kin = g.locate(kpos + j, hoff, woff, toff, c);
#pragma unroll
                for (int v = 0; v < VA; ++v) {
                    const int h = hb[v] + hoff, w = wb[v] + woff;
                    const bool in =
                        kin && (unsigned)h < (unsigned)Hs && (unsigned)w < (unsigned)Ws;
                    r[v][j] = in ? src[base[v] + toff + c] : T(0);
                }
            }
        }
        kpos += BK;
    }
    __device__ __forceinline__ void store(T (*xs)[BM + PAD]) const {
#pragma unroll
        for (int v = 0; v < VA; ++v) store_kmajor<T, BM>(xs, row_of_thread<T>(v), r[v]);
    }
};

// Forward A operand: rows p = (n, ho, wo), columns k = (r, s, ci); k-major gather of x.
template <typename T, bool VEC>
struct XPatchTile : PixelGather<T, VEC> {
    __device__ __forceinline__ void init(const T* x_, const Conv& c, int M, int m0) {
#pragma unroll
        for (int v = 0; v < Tile<T>::VA; ++v)
            fwd_pixel(c, m0 + row_of_thread<T>(v), M, this->hb[v], this->wb[v], this->base[v]);
        this->start(x_, c.H, c.W, fwd_taps(c));
    }
};

// Backward-data A operand: rows q = (n, i, j) of this phase, columns k = (u, v, co);
// k-major gather of dy.
template <typename T, bool VEC>
struct DyTile : PixelGather<T, VEC> {
    __device__ __forceinline__ void init(const T* dy_, const Conv& c, const Phase& ph,
                                         const Phase& pw, int M, int m0) {
#pragma unroll
        for (int v = 0; v < Tile<T>::VA; ++v)
            phase_pixel(c, ph, pw, m0 + row_of_thread<T>(v), M, this->hb[v], this->wb[v],
                        this->base[v]);
        this->start(dy_, c.Ho, c.Wo, phase_taps(c, ph, pw));
    }
};

// Backward-data B operand: element (ci, k = (u, v, co)) = w[r0+u*rstep, s0+v*sstep, ci,
// g*Ng+co]; k-major, one k-quad of one column ci per thread.
template <typename T, bool VEC>
struct WtTile {
    static constexpr int BN = Tile<T>::BN, BK = Tile<T>::BK, VE = Tile<T>::VE;
    const T* __restrict__ w;  // already offset by g*Ng channels
    int base, col, kpos;
    bool ok;
    TapGeom g;
    TapWalk k;
    T r[VE];
    __device__ __forceinline__ void init(const T* w_, const Conv& c, const Phase& ph,
                                         const Phase& pw, int n0) {
        w = w_;
        col = threadIdx.x / Tile<T>::KQ;
        const int ci = n0 + col;
        ok = ci < c.Cg;
        base = ((ph.r0 * c.KW + pw.r0) * c.Cg + ci) * c.Cout;
        const int tap = c.Cg * c.Cout;  // offset of s+1
        g = TapGeom{c.Ng, pw.KU, ph.KU, 0, pw.rstep * tap, 0, ph.rstep * c.KW * tap};
        kpos = kq_of_thread<T>();
        if (VEC) k.init(g, kpos);
    }
    __device__ __forceinline__ void load() {
        if (VEC) {
            if (ok && k.valid(g)) {
                loadv(w + (base + k.toff + k.c), r);
            } else {
#pragma unroll
                for (int j = 0; j < VE; ++j) r[j] = T(0);
            }
            k.advance(g, BK);
        } else {
#pragma unroll
            for (int j = 0; j < VE; ++j) {
                int hoff, woff, toff, c;
                const bool in = ok && g.locate(kpos + j, hoff, woff, toff, c);
                r[j] = in ? w[base + toff + c] : T(0);
            }
        }
        kpos += BK;
    }
    __device__ __forceinline__ void store(T (*xs)[BN + PAD]) const {
        store_kmajor<T, BN>(xs, col, r);
    }
};

// Backward-filter A operand: rows (r, s, ci), columns p = (n, ho, wo); mn-major gather
// of x. Each thread owns VA fixed row quads and one pixel column, walked by BK pixels
// per tile (n, ho, wo carried without division).
template <typename T, bool VEC>
struct XColTile {
    static constexpr int VA = Tile<T>::VA, BM = Tile<T>::BM, BK = Tile<T>::BK;
    static constexpr int VE = Tile<T>::VE;
    static constexpr int QPT = BM / VE / VA;  // row vectors per pixel column
    const T* __restrict__ x;  // already offset by g*Cg channels
    Conv c;
    int Mrows, P, p, n, ho, wo, pix, hb, wb;
    int row[VA], toff[VA], rdh[VA], sdw[VA];
    T r[VA][VE];
    __device__ __forceinline__ void init(const T* x_, const Conv& c_, int m0, int k0, int P_) {
        x = x_;
        c = c_;
        Mrows = c.KH * c.KW * c.Cg;
        P = P_;
#pragma unroll
        for (int v = 0; v < VA; ++v) {
            row[v] = m0 + VE * (threadIdx.x % QPT + v * QPT);
            filter_tap(c, row[v], rdh[v], sdw[v], toff[v]);
        }
        p = k0 + threadIdx.x / QPT;
        locate_pixel(p, c.Ho, c.Wo, n, ho, wo);
        locate();
    }
    __device__ __forceinline__ void locate() {
        hb = ho * c.sh - c.pt;
        wb = wo * c.sw - c.pl;
        pix = ((min(n, c.N - 1) * c.H + hb) * c.W + wb) * c.Cin;  // n = N past the end
    }
    // Offset of x for row rw (any row, by division: scalar path only), or -1.
    __device__ __forceinline__ int offset(int rw) const {
        if (rw >= Mrows) return -1;
        const int rs = rw / c.Cg;
        const int ci = rw - rs * c.Cg;
        const int rr = rs / c.KW;
        const int hi = hb + rr * c.dh;
        const int wi = wb + (rs - rr * c.KW) * c.dw;
        if ((unsigned)hi >= (unsigned)c.H || (unsigned)wi >= (unsigned)c.W) return -1;
        return pix + (rr * c.dh * c.W + (rs - rr * c.KW) * c.dw) * c.Cin + ci;
    }
    __device__ __forceinline__ void load() {
        const bool pok = p < P;
#pragma unroll
        for (int v = 0; v < VA; ++v) {
            if (VEC) {  // Cg % VE == 0: the VE rows are VE channels of one tap
                const int hi = hb + rdh[v], wi = wb + sdw[v];
                if (pok && row[v] < Mrows && (unsigned)hi < (unsigned)c.H &&
                    (unsigned)wi < (unsigned)c.W) {
                    loadv(x + (pix + toff[v]), r[v]);
                } else {
#pragma unroll
                    for (int j = 0; j < VE; ++j) r[v][j] = T(0);
                }
            } else {
#pragma unroll
                for (int j = 0; j < VE; ++j) {
                    const int off = pok ? offset(row[v] + j) : -1;
                    r[v][j] = off >= 0 ? x[off] : T(0);
                }
            }
        }
        p += BK;
        advance_pixel(BK, c.Ho, c.Wo, n, ho, wo);
        locate();
    }
    __device__ __forceinline__ void store(T (*xs)[BM + PAD]) const {
        const int kr = threadIdx.x / QPT;
#pragma unroll
        for (int v = 0; v < VA; ++v) storev(&xs[kr][VE * (threadIdx.x % QPT + v * QPT)], r[v]);
    }
};

// Output rows of one backward-data phase: row (n, i, j) is dx pixel (n, hi0+i*sh, wi0+j*sw).
// The phase geometry is recomputed from the kernel parameters (nothing stays live
// across the mainloop).
struct PhaseRows {
    const Conv& c;
    __device__ __forceinline__ int operator()(int row) const {
        Phase ph, pw;
        block_phases(c, ph, pw);
        const int n = row / (ph.Hp * pw.Hp);
        const int rem = row - n * (ph.Hp * pw.Hp);
        const int i = rem / pw.Hp;
        return ((n * c.H + ph.hi0 + i * c.sh) * c.W + pw.hi0 + (rem - i * pw.Hp) * c.sw) * c.Cin;
    }
};

template <typename T>
struct Smem {
    T a[2][Tile<T>::BK][Tile<T>::BM + PAD];
    T b[2][Tile<T>::BK][Tile<T>::BN + PAD];
};

// Double-buffered mainloop over ktiles k-tiles and the bias/relu epilogue. C points at
// column 0 of this block's output; rows(r) gives the element offset of output row r,
// cvec says whether every row start is 16-byte aligned.
template <typename T, class LA, class LB, class Rows>
__device__ __forceinline__ void gemm(Smem<T>& sm, LA& la, LB& lb, int ktiles, T* __restrict__ C,
                                     const Rows& rows, bool cvec, int M, int N, int m0, int n0,
                                     const T* __restrict__ bias, int has_bias, int relu) {
    using TL = Tile<T>;
    constexpr int TM = TL::TM, TN = TL::TN, BK = TL::BK, VE = TL::VE;
    constexpr int AS = TL::BM / (TM / VE), BS = TL::BN / (TN / VE);  // fragment spacing
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int tx = (lane >> 1) & (TL::TX - 1);
    const int ty = (lane & 1) | (((lane >> 1) / TL::TX) << 1) | (warp * (32 / TL::TX));

    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

    if (ktiles > 0) {
        la.load();
        lb.load();
        la.store(sm.a[0]);
        lb.store(sm.b[0]);
    }
    __syncthreads();
    // float32: two k-tiles per trip, so each copy addresses its shared buffer statically
#pragma unroll(TL::UNROLL)
    for (int t = 0; t < ktiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < ktiles;
        if (more) {
            la.load();
            lb.load();
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T a[TM], b[TN];
#pragma unroll
            for (int iv = 0; iv < TM / VE; ++iv)
                loadv(&sm.a[cur][kk][iv * AS + ty * VE], a + VE * iv);
#pragma unroll
            for (int jv = 0; jv < TN / VE; ++jv)
                loadv(&sm.b[cur][kk][jv * BS + tx * VE], b + VE * jv);
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = madd(a[i], b[j], acc[i][j]);
        }
        if (more) {
            la.store(sm.a[cur ^ 1]);
            lb.store(sm.b[cur ^ 1]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int row = m0 + (i / VE) * AS + ty * VE + i % VE;
        if (row >= M) continue;
        T* out_row = C + rows(row);
#pragma unroll
        for (int jv = 0; jv < TN / VE; ++jv) {
            const int col = n0 + jv * BS + tx * VE;
            T out[VE];
#pragma unroll
            for (int jj = 0; jj < VE; ++jj) {
                T v = acc[i][jv * VE + jj];
                if (has_bias && col + jj < N) v += bias[col + jj];
                if (relu) v = v < T(0) ? T(0) : v;
                out[jj] = v;
            }
            if (cvec && col + VE - 1 < N) {
                storev(out_row + col, out);
            } else {
#pragma unroll
                for (int jj = 0; jj < VE; ++jj)
                    if (col + jj < N) out_row[col + jj] = out[jj];
            }
        }
    }
}

template <typename T, bool VEC>
__device__ __forceinline__ void fwd_run(Smem<T>& sm, const T* xg, const T* wg, T* yg,
                                        const T* bg, int has_bias, int relu, const Conv& c,
                                        int M, int m0, int n0) {
    XPatchTile<T, VEC> la;
    RowsTile<T, VEC> lb;
    const int Kg = c.KH * c.KW * c.Cg;
    la.init(xg, c, M, m0);
    lb.init(wg, c.Cout, c.Ng, Kg, n0, 0);
    const bool cvec = (c.Cout % VW<T> == 0) && aligned16(yg);
    gemm<T>(sm, la, lb, (Kg + Tile<T>::BK - 1) / Tile<T>::BK, yg, DenseRows{c.Cout}, cvec, M,
            c.Ng, m0, n0, bg, has_bias, relu);
}

template <typename T>
__device__ __forceinline__ void fwd(const T* x, const T* w, T* y, const T* bias, int has_bias,
                                    int relu, const Conv& c) {
    __shared__ __align__(16) Smem<T> sm;
    const int g = blockIdx.y;
    const int M = c.N * c.Ho * c.Wo;
    int m0, n0;
    if (!tile_of_block(M, c.Ng, Tile<T>::BM, Tile<T>::BN, m0, n0)) return;
    const T* xg = x + g * c.Cg;
    const T* wg = w + g * c.Ng;
    constexpr int E = VW<T>;
    const bool vec = (c.Cg % E == 0) && (c.Cin % E == 0) && aligned16(xg) &&
                     (c.Cout % E == 0) && aligned16(wg);
    if (vec) {
        fwd_run<T, true>(sm, xg, wg, y + g * c.Ng, bias + g * c.Ng, has_bias, relu, c, M, m0, n0);
    } else {
        fwd_run<T, false>(sm, xg, wg, y + g * c.Ng, bias + g * c.Ng, has_bias, relu, c, M, m0, n0);
    }
}

template <typename T, bool VEC>
__device__ __forceinline__ void bwd_data_run(Smem<T>& sm, const T* dyg, const T* wg, T* dxg,
                                             const Conv& c, const Phase& ph, const Phase& pw,
                                             int M, int m0, int n0) {
    DyTile<T, VEC> la;
    WtTile<T, VEC> lb;
    la.init(dyg, c, ph, pw, M, m0);
    lb.init(wg, c, ph, pw, n0);
    const int Kg = ph.KU * pw.KU * c.Ng;
    const PhaseRows rows{c};
    const bool cvec = (c.Cin % VW<T> == 0) && aligned16(dxg);
    gemm<T>(sm, la, lb, (Kg + Tile<T>::BK - 1) / Tile<T>::BK, dxg, rows, cvec, M, c.Cg, m0, n0,
            dxg, 0, 0);
}

template <typename T>
__device__ __forceinline__ void bwd_data(const T* dy, const T* w, T* dx, const Conv& c) {
    __shared__ __align__(16) Smem<T> sm;
    const int g = blockIdx.y;
    Phase ph, pw;
    block_phases(c, ph, pw);
    const int M = c.N * ph.Hp * pw.Hp;
    int m0, n0;
    if (!tile_of_block(M, c.Cg, Tile<T>::BM, Tile<T>::BN, m0, n0)) return;
    const T* dyg = dy + g * c.Ng;
    const T* wg = w + g * c.Ng;
    constexpr int E = VW<T>;
    const bool vec = (c.Ng % E == 0) && (c.Cout % E == 0) && aligned16(dyg) && aligned16(wg);
    if (vec) {
        bwd_data_run<T, true>(sm, dyg, wg, dx + g * c.Cg, c, ph, pw, M, m0, n0);
    } else {
        bwd_data_run<T, false>(sm, dyg, wg, dx + g * c.Cg, c, ph, pw, M, m0, n0);
    }
}

template <typename T, bool VEC>
__device__ __forceinline__ void bwd_filter_run(Smem<T>& sm, const T* dyg, const T* xg, T* out,
                                               const Conv& c, int Mrows, int P, int kbeg,
                                               int kend, int m0, int n0) {
    XColTile<T, VEC> la;
    RowsTile<T, VEC> lb;
    la.init(xg, c, m0, kbeg, kend);
    lb.init(dyg, c.Cout, c.Ng, kend, n0, kbeg);
    const int ktiles = kend > kbeg ? (kend - kbeg + Tile<T>::BK - 1) / Tile<T>::BK : 0;
    const bool cvec = (c.Cout % VW<T> == 0) && aligned16(out);
    gemm<T>(sm, la, lb, ktiles, out, DenseRows{c.Cout}, cvec, Mrows, c.Ng, m0, n0, out, 0, 0);
}

template <typename T>
__device__ __forceinline__ void bwd_filter(const T* dy, const T* x, T* dw_parts, int k_chunk,
                                           const Conv& c) {
    __shared__ __align__(16) Smem<T> sm;
    const int g = blockIdx.y;
    const int split = blockIdx.z;
    const int Mrows = c.KH * c.KW * c.Cg;
    const int P = c.N * c.Ho * c.Wo;
    int m0, n0;
    if (!tile_of_block(Mrows, c.Ng, Tile<T>::BM, Tile<T>::BN, m0, n0)) return;
    const int kbeg = split * k_chunk;
    const int kend = min(P, kbeg + k_chunk);
    const T* xg = x + g * c.Cg;
    const T* dyg = dy + g * c.Ng;
    T* out = dw_parts + split * (Mrows * c.Cout) + g * c.Ng;
    constexpr int E = VW<T>;
    const bool vec = (c.Cg % E == 0) && (c.Cin % E == 0) && aligned16(xg) &&
                     (c.Cout % E == 0) && aligned16(dyg);
    if (vec) {
        bwd_filter_run<T, true>(sm, dyg, xg, out, c, Mrows, P, kbeg, kend, m0, n0);
    } else {
        bwd_filter_run<T, false>(sm, dyg, xg, out, c, Mrows, P, kbeg, kend, m0, n0);
    }
}

}  // namespace gg_conv

// Entry points. float32 kernels run 128 threads per block, float64 kernels 256.
// why no min-blocks bound on the float64 ones: with (256, 2) ptxas takes the full 128
// registers it is allowed and spills (NVRTC 12.9 sm_90 bwd_data 12-16 B, nvcc 13 sm_90
// fwd 4-8 B); unbounded they take 100-112 (sm_80/sm_90, both compilers), which still
// fits 2 blocks per SM.
extern "C" __global__ void __launch_bounds__(128, 3)
    conv2d_fwd_f32(const float* x, const float* w, float* y, const float* bias, int has_bias,
                   int relu, int N, int H, int W, int Cin, int Ho, int Wo, int Cout, int KH,
                   int KW, int sh, int sw, int pt, int pl, int dh, int dw, int groups) {
    gg_conv::fwd<float>(x, w, y, bias, has_bias, relu,
                        gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt, pl, dh,
                                           dw, groups));
}

extern "C" __global__ void __launch_bounds__(256)
    conv2d_fwd_f64(const double* x, const double* w, double* y, const double* bias,
                   int has_bias, int relu, int N, int H, int W, int Cin, int Ho, int Wo,
                   int Cout, int KH, int KW, int sh, int sw, int pt, int pl, int dh, int dw,
                   int groups) {
    gg_conv::fwd<double>(x, w, y, bias, has_bias, relu,
                         gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt, pl,
                                            dh, dw, groups));
}

// grid.z = sh * sw phases (sub-pixel decomposition)
extern "C" __global__ void __launch_bounds__(128, 3)
    conv2d_bwd_data_f32(const float* dy, const float* w, float* dx, int N, int H, int W,
                        int Cin, int Ho, int Wo, int Cout, int KH, int KW, int sh, int sw,
                        int pt, int pl, int dh, int dw, int groups) {
    gg_conv::bwd_data<float>(dy, w, dx,
                             gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt,
                                                pl, dh, dw, groups));
}

extern "C" __global__ void __launch_bounds__(256)
    conv2d_bwd_data_f64(const double* dy, const double* w, double* dx, int N, int H, int W,
                        int Cin, int Ho, int Wo, int Cout, int KH, int KW, int sh, int sw,
                        int pt, int pl, int dh, int dw, int groups) {
    gg_conv::bwd_data<double>(dy, w, dx,
                              gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt,
                                                 pl, dh, dw, groups));
}

extern "C" __global__ void __launch_bounds__(128, 3)
    conv2d_bwd_filter_f32(const float* dy, const float* x, float* dw_parts, int k_chunk, int N,
                          int H, int W, int Cin, int Ho, int Wo, int Cout, int KH, int KW,
                          int sh, int sw, int pt, int pl, int dh, int dw, int groups) {
    gg_conv::bwd_filter<float>(dy, x, dw_parts, k_chunk,
                               gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt,
                                                  pl, dh, dw, groups));
}

extern "C" __global__ void __launch_bounds__(256)
    conv2d_bwd_filter_f64(const double* dy, const double* x, double* dw_parts, int k_chunk,
                          int N, int H, int W, int Cin, int Ho, int Wo, int Cout, int KH, int KW,
                          int sh, int sw, int pt, int pl, int dh, int dw, int groups) {
    gg_conv::bwd_filter<double>(dy, x, dw_parts, k_chunk,
                                gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt,
                                                   pl, dh, dw, groups));
}
