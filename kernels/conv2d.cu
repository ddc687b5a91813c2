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
//   backward filt. dw[(r,s,ci), g*Ng+co] = sum_p A[p, (r,s,ci)] dy[p, g*Ng+co]
//                  split over p into gridDim.z partial sums (written to a workspace
//                  [splits, KH*KW*Cg, Cout] and summed by the host; deterministic).
//
// The GEMM core is the one of matmul.cu (k-major double-buffered shared tiles,
// 4x4 register tiles, 4-wide loads where the channel count and alignment allow,
// scalar gathers otherwise), repeated here; the small helpers (aligned 4-wide
// loads/stores, madd) come from common.cuh. Only the tile loaders differ: they
// gather the implicit GEMM operands straight from x, dy and w into registers.
// Tile 64x64x16, 256 threads. Indices are 32-bit (host checks sizes < 2^31).

#include "common.cuh"

namespace gg_conv {

using namespace gg_common;  // aligned16, madd, load4, store4

constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;
constexpr int NT = (BM / TM) * (BN / TN);  // 256 threads
constexpr int PAD = 4;
constexpr int VA = BM * BK / 4 / NT;  // 4-vectors per thread per operand tile
constexpr int VB = BN * BK / 4 / NT;
static_assert(VA == 1 && VB == 1, "loaders below assume one 4-vector per thread");

struct Conv {
    int N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt, pl, dh, dw, Cg, Ng;
};

// Thread -> (mn, k) position of its 4-vector inside a BMN x BK operand tile.
// k-major: the 4 elements run along k; mn-major: they run along mn.
template <int BMN>
struct KMajorSlot {
    __device__ __forceinline__ static int mn() { return threadIdx.x / (BK / 4); }
    __device__ __forceinline__ static int k() { return (threadIdx.x % (BK / 4)) * 4; }
};
template <int BMN>
struct MnMajorSlot {
    __device__ __forceinline__ static int mn() { return (threadIdx.x % (BMN / 4)) * 4; }
    __device__ __forceinline__ static int k() { return threadIdx.x / (BMN / 4); }
};

template <typename T, int BMN>
__device__ __forceinline__ void store_kmajor(T (*xs)[BMN + PAD], const T r[4]) {
    const int mn = KMajorSlot<BMN>::mn();
    const int kq = KMajorSlot<BMN>::k();
#pragma unroll
    for (int j = 0; j < 4; ++j) xs[kq + j][mn] = r[j];
}
template <typename T, int BMN>
__device__ __forceinline__ void store_mnmajor(T (*xs)[BMN + PAD], const T r[4]) {
    store4(&xs[MnMajorSlot<BMN>::k()][MnMajorSlot<BMN>::mn()], r);
}

// Plain row-major matrix operand, mn-major: element (mn, k) at x[k*ld + mn].
template <typename T, int BMN>
struct RowsTile {
    const T* __restrict__ x;
    int ld, ext_mn, ext_k, mn;
    bool vec;
    T r[4];
    __device__ __forceinline__ void init(const T* x_, int ld_, int ext_mn_, int ext_k_, int mn0) {
        x = x_;
        ld = ld_;
        ext_mn = ext_mn_;
        ext_k = ext_k_;
        mn = mn0 + MnMajorSlot<BMN>::mn();
        vec = (ld % 4 == 0) && aligned16(x);
    }
    __device__ __forceinline__ void load(int k0) {
        const int k = k0 + MnMajorSlot<BMN>::k();
        if (vec && k < ext_k && mn + 3 < ext_mn) {
            load4(x + k * ld + mn, r);
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                r[j] = (k < ext_k && mn + j < ext_mn) ? x[k * ld + mn + j] : T(0);
        }
    }
    __device__ __forceinline__ void store(T (*xs)[BMN + PAD]) const { store_mnmajor<T, BMN>(xs, r); }
};

// Forward A operand: rows p = (n, ho, wo), columns k = (r, s, ci); k-major gather of x.
template <typename T>
struct XPatchTile {
    const T* __restrict__ x;  // already offset by g*Cg channels
    Conv c;
    int n, hb, wb, Kg;
    bool mok, vec;
    T r[4];
    __device__ __forceinline__ void init(const T* x_, const Conv& c_, int M, int m0) {
        x = x_;
        c = c_;
        Kg = c.KH * c.KW * c.Cg;
        const int m = m0 + KMajorSlot<BM>::mn();
        mok = m < M;
        const int hw = c.Ho * c.Wo;
        n = m / hw;
        const int rem = m - n * hw;
        const int ho = rem / c.Wo;
        hb = ho * c.sh - c.pt;
        wb = (rem - ho * c.Wo) * c.sw - c.pl;
        vec = (c.Cg % 4 == 0) && (c.Cin % 4 == 0) && aligned16(x);
    }
    __device__ __forceinline__ T at(int k) const {
        if (!mok || k >= Kg) return T(0);
        const int rs = k / c.Cg;
        const int ci = k - rs * c.Cg;
        const int rr = rs / c.KW;
        const int hi = hb + rr * c.dh;
        const int wi = wb + (rs - rr * c.KW) * c.dw;
        if (hi < 0 || hi >= c.H || wi < 0 || wi >= c.W) return T(0);
        return x[((n * c.H + hi) * c.W + wi) * c.Cin + ci];
    }
    __device__ __forceinline__ void load(int k0) {
        const int k = k0 + KMajorSlot<BM>::k();
        if (vec) {  // Cg % 4 == 0: the 4 channels lie in one pixel, all in or all out
            r[0] = r[1] = r[2] = r[3] = T(0);
            if (!mok || k >= Kg) return;
            const int rs = k / c.Cg;
            const int ci = k - rs * c.Cg;
            const int rr = rs / c.KW;
            const int hi = hb + rr * c.dh;
            const int wi = wb + (rs - rr * c.KW) * c.dw;
            if (hi < 0 || hi >= c.H || wi < 0 || wi >= c.W) return;
            load4(x + ((n * c.H + hi) * c.W + wi) * c.Cin + ci, r);
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) r[j] = at(k + j);
        }
    }
    __device__ __forceinline__ void store(T (*xs)[BM + PAD]) const { store_kmajor<T, BM>(xs, r); }
};

// Backward-data A operand: rows q = (n, hi, wi), columns k = (r, s, co); k-major gather of dy.
template <typename T>
struct DyTile {
    const T* __restrict__ dy;  // already offset by g*Ng channels
    Conv c;
    int n, hp, wp, Kg;
    bool mok, vec;
    T r[4];
    __device__ __forceinline__ void init(const T* dy_, const Conv& c_, int M, int m0) {
        dy = dy_;
        c = c_;
        Kg = c.KH * c.KW * c.Ng;
        const int m = m0 + KMajorSlot<BM>::mn();
        mok = m < M;
        const int hw = c.H * c.W;
        n = m / hw;
        const int rem = m - n * hw;
        const int hi = rem / c.W;
        hp = hi + c.pt;
        wp = rem - hi * c.W + c.pl;
        vec = (c.Ng % 4 == 0) && (c.Cout % 4 == 0) && aligned16(dy);
    }
    // Offset of dy[n, ho, wo, co] for tap (r, s), or -1 when no output pixel uses it.
    __device__ __forceinline__ int offset(int k) const {
        if (!mok || k >= Kg) return -1;
        const int rs = k / c.Ng;
        const int co = k - rs * c.Ng;
        const int rr = rs / c.KW;
        const int th = hp - rr * c.dh;
        const int tw = wp - (rs - rr * c.KW) * c.dw;
        if (th < 0 || tw < 0) return -1;
        const int ho = th / c.sh;
        const int wo = tw / c.sw;
        if (ho * c.sh != th || wo * c.sw != tw || ho >= c.Ho || wo >= c.Wo) return -1;
        return ((n * c.Ho + ho) * c.Wo + wo) * c.Cout + co;
    }
    __device__ __forceinline__ void load(int k0) {
        const int k = k0 + KMajorSlot<BM>::k();
        if (vec) {
            const int off = offset(k);
            if (off >= 0) {
                load4(dy + off, r);
            } else {
                r[0] = r[1] = r[2] = r[3] = T(0);
            }
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int off = offset(k + j);
                r[j] = off >= 0 ? dy[off] : T(0);
            }
        }
    }
    __device__ __forceinline__ void store(T (*xs)[BM + PAD]) const { store_kmajor<T, BM>(xs, r); }
};

// Backward-data B operand: element (ci, k = (r, s, co)) = w[r, s, ci, g*Ng + co]; k-major.
template <typename T>
struct WtTile {
    const T* __restrict__ w;  // already offset by g*Ng channels
    Conv c;
    int ci, Kg;
    bool vec;
    T r[4];
    __device__ __forceinline__ void init(const T* w_, const Conv& c_, int n0) {
        w = w_;
        c = c_;
        Kg = c.KH * c.KW * c.Ng;
        ci = n0 + KMajorSlot<BN>::mn();
        vec = (c.Ng % 4 == 0) && (c.Cout % 4 == 0) && aligned16(w);
    }
    __device__ __forceinline__ T at(int k) const {
        if (ci >= c.Cg || k >= Kg) return T(0);
        const int rs = k / c.Ng;
        return w[(rs * c.Cg + ci) * c.Cout + (k - rs * c.Ng)];
    }
    __device__ __forceinline__ void load(int k0) {
        const int k = k0 + KMajorSlot<BN>::k();
        if (vec && ci < c.Cg && k < Kg) {
            const int rs = k / c.Ng;
            load4(w + (rs * c.Cg + ci) * c.Cout + (k - rs * c.Ng), r);
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) r[j] = at(k + j);
        }
    }
    __device__ __forceinline__ void store(T (*xs)[BN + PAD]) const { store_kmajor<T, BN>(xs, r); }
};

// Backward-filter A operand: rows (r, s, ci), columns p = (n, ho, wo); mn-major gather of x.
template <typename T>
struct XColTile {
    const T* __restrict__ x;  // already offset by g*Cg channels
    Conv c;
    int row, Mrows, P;
    bool vec;
    T r[4];
    __device__ __forceinline__ void init(const T* x_, const Conv& c_, int m0) {
        x = x_;
        c = c_;
        Mrows = c.KH * c.KW * c.Cg;
        P = c.N * c.Ho * c.Wo;
        row = m0 + MnMajorSlot<BM>::mn();
        vec = (c.Cg % 4 == 0) && (c.Cin % 4 == 0) && aligned16(x);
    }
    // Offset of x[n, hi, wi, ci] for row (r, s, ci) and pixel (n, ho, wo), or -1.
    __device__ __forceinline__ int offset(int rw, int n, int ho, int wo) const {
        if (rw >= Mrows) return -1;
        const int rs = rw / c.Cg;
        const int ci = rw - rs * c.Cg;
        const int rr = rs / c.KW;
        const int hi = ho * c.sh - c.pt + rr * c.dh;
        const int wi = wo * c.sw - c.pl + (rs - rr * c.KW) * c.dw;
        if (hi < 0 || hi >= c.H || wi < 0 || wi >= c.W) return -1;
        return ((n * c.H + hi) * c.W + wi) * c.Cin + ci;
    }
    __device__ __forceinline__ void load(int k0) {
        const int p = k0 + MnMajorSlot<BM>::k();
        r[0] = r[1] = r[2] = r[3] = T(0);
        if (p >= P) return;
        const int hw = c.Ho * c.Wo;
        const int n = p / hw;
        const int rem = p - n * hw;
        const int ho = rem / c.Wo;
        const int wo = rem - ho * c.Wo;
        if (vec) {  // Cg % 4 == 0: the 4 rows are 4 channels of one tap
            const int off = offset(row, n, ho, wo);
            if (off >= 0) load4(x + off, r);
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int off = offset(row + j, n, ho, wo);
                if (off >= 0) r[j] = x[off];
            }
        }
    }
    __device__ __forceinline__ void store(T (*xs)[BM + PAD]) const { store_mnmajor<T, BM>(xs, r); }
};

// Tile coordinates of this block inside a tiles_m x tiles_n grid, grouped for L2 reuse.
__device__ __forceinline__ void tile_of_block(int M, int N, int& m0, int& n0) {
    constexpr int GROUP = 8;
    const int tiles_m = (M + BM - 1) / BM;
    const int tiles_n = (N + BN - 1) / BN;
    const int pid = blockIdx.x;
    const int per_group = GROUP * tiles_n;
    const int first_m = (pid / per_group) * GROUP;
    const int group_rows = min(tiles_m - first_m, GROUP);
    m0 = (first_m + (pid % per_group) % group_rows) * BM;
    n0 = ((pid % per_group) / group_rows) * BN;
}

// Double-buffered mainloop over k in [kbeg, kend) and the bias/relu epilogue.
// C points at element (0, 0) of this block's output matrix (row stride ldc).
template <typename T, class LA, class LB>
__device__ __forceinline__ void gemm(LA& la, LB& lb, int kbeg, int kend, T* __restrict__ C,
                                     int ldc, int M, int N, int m0, int n0,
                                     const T* __restrict__ bias, int has_bias, int relu) {
    __shared__ __align__(16) T As[2][BK][BM + PAD];
    __shared__ __align__(16) T Bs[2][BK][BN + PAD];
    constexpr int TX = BN / TN;
    const int tx = threadIdx.x % TX;
    const int ty = threadIdx.x / TX;

    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

    const int ktiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;
    if (ktiles > 0) {
        la.load(kbeg);
        lb.load(kbeg);
        la.store(As[0]);
        lb.store(Bs[0]);
    }
    __syncthreads();
    for (int t = 0; t < ktiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < ktiles;
        if (more) {
            la.load(kbeg + (t + 1) * BK);
            lb.load(kbeg + (t + 1) * BK);
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T a[TM], b[TN];
            load4(&As[cur][kk][ty * 4], a);
            load4(&Bs[cur][kk][tx * 4], b);
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = madd(a[i], b[j], acc[i][j]);
        }
        if (more) {
            la.store(As[cur ^ 1]);
            lb.store(Bs[cur ^ 1]);
        }
        __syncthreads();
    }

    const bool cvec = (ldc % 4 == 0) && aligned16(C);
    const int col = n0 + tx * 4;
#pragma unroll
    for (int ii = 0; ii < TM; ++ii) {
        const int row = m0 + ty * 4 + ii;
        if (row >= M) continue;
        T out[4];
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            T v = acc[ii][jj];
            if (has_bias && col + jj < N) v += bias[col + jj];
            if (relu) v = v < T(0) ? T(0) : v;
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

__device__ __forceinline__ Conv make_conv(int N, int H, int W, int Cin, int Ho, int Wo, int Cout,
                                          int KH, int KW, int sh, int sw, int pt, int pl, int dh,
                                          int dw, int groups) {
    Conv c;
    c.N = N; c.H = H; c.W = W; c.Cin = Cin; c.Ho = Ho; c.Wo = Wo; c.Cout = Cout;
    c.KH = KH; c.KW = KW; c.sh = sh; c.sw = sw; c.pt = pt; c.pl = pl; c.dh = dh; c.dw = dw;
    c.Cg = Cin / groups;
    c.Ng = Cout / groups;
    return c;
}

template <typename T>
__device__ __forceinline__ void fwd(const T* x, const T* w, T* y, const T* bias, int has_bias,
                                    int relu, const Conv& c) {
    const int g = blockIdx.y;
    const int M = c.N * c.Ho * c.Wo;
    int m0, n0;
    tile_of_block(M, c.Ng, m0, n0);
    XPatchTile<T> la;
    RowsTile<T, BN> lb;
    la.init(x + g * c.Cg, c, M, m0);
    lb.init(w + g * c.Ng, c.Cout, c.Ng, c.KH * c.KW * c.Cg, n0);
    gemm<T>(la, lb, 0, c.KH * c.KW * c.Cg, y + g * c.Ng, c.Cout, M, c.Ng, m0, n0,
            bias + g * c.Ng, has_bias, relu);
}

template <typename T>
__device__ __forceinline__ void bwd_data(const T* dy, const T* w, T* dx, const Conv& c) {
    const int g = blockIdx.y;
    const int M = c.N * c.H * c.W;
    int m0, n0;
    tile_of_block(M, c.Cg, m0, n0);
    DyTile<T> la;
    WtTile<T> lb;
    la.init(dy + g * c.Ng, c, M, m0);
    lb.init(w + g * c.Ng, c, n0);
    gemm<T>(la, lb, 0, c.KH * c.KW * c.Ng, dx + g * c.Cg, c.Cin, M, c.Cg, m0, n0, dx, 0, 0);
}

template <typename T>
__device__ __forceinline__ void bwd_filter(const T* dy, const T* x, T* dw_parts, int k_chunk,
                                           const Conv& c) {
    const int g = blockIdx.y;
    const int split = blockIdx.z;
    const int Mrows = c.KH * c.KW * c.Cg;
    const int P = c.N * c.Ho * c.Wo;
    int m0, n0;
    tile_of_block(Mrows, c.Ng, m0, n0);
    XColTile<T> la;
    RowsTile<T, BN> lb;
    la.init(x + g * c.Cg, c, m0);
    lb.init(dy + g * c.Ng, c.Cout, c.Ng, P, n0);
    const int kbeg = split * k_chunk;
    const int kend = min(P, kbeg + k_chunk);
    T* out = dw_parts + split * (Mrows * c.Cout) + g * c.Ng;
    gemm<T>(la, lb, kbeg, kend, out, c.Cout, Mrows, c.Ng, m0, n0, out, 0, 0);
}

}  // namespace gg_conv

extern "C" __global__ void conv2d_fwd_f32(const float* x, const float* w, float* y,
                                          const float* bias, int has_bias, int relu, int N, int H,
                                          int W, int Cin, int Ho, int Wo, int Cout, int KH,
                                          int KW, int sh, int sw, int pt, int pl, int dh, int dw,
                                          int groups) {
    gg_conv::fwd<float>(x, w, y, bias, has_bias, relu,
                        gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt, pl, dh,
                                           dw, groups));
}

extern "C" __global__ void conv2d_fwd_f64(const double* x, const double* w, double* y,
                                          const double* bias, int has_bias, int relu, int N,
                                          int H, int W, int Cin, int Ho, int Wo, int Cout, int KH,
                                          int KW, int sh, int sw, int pt, int pl, int dh, int dw,
                                          int groups) {
    gg_conv::fwd<double>(x, w, y, bias, has_bias, relu,
                         gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt, pl,
                                            dh, dw, groups));
}

extern "C" __global__ void conv2d_bwd_data_f32(const float* dy, const float* w, float* dx, int N,
                                               int H, int W, int Cin, int Ho, int Wo, int Cout,
                                               int KH, int KW, int sh, int sw, int pt, int pl,
                                               int dh, int dw, int groups) {
    gg_conv::bwd_data<float>(dy, w, dx,
                             gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt,
                                                pl, dh, dw, groups));
}

extern "C" __global__ void conv2d_bwd_data_f64(const double* dy, const double* w, double* dx,
                                               int N, int H, int W, int Cin, int Ho, int Wo,
                                               int Cout, int KH, int KW, int sh, int sw, int pt,
                                               int pl, int dh, int dw, int groups) {
    gg_conv::bwd_data<double>(dy, w, dx,
                              gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt,
                                                 pl, dh, dw, groups));
}

extern "C" __global__ void conv2d_bwd_filter_f32(const float* dy, const float* x, float* dw_parts,
                                                 int k_chunk, int N, int H, int W, int Cin,
                                                 int Ho, int Wo, int Cout, int KH, int KW, int sh,
                                                 int sw, int pt, int pl, int dh, int dw,
                                                 int groups) {
    gg_conv::bwd_filter<float>(dy, x, dw_parts, k_chunk,
                               gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt,
                                                  pl, dh, dw, groups));
}

extern "C" __global__ void conv2d_bwd_filter_f64(const double* dy, const double* x,
                                                 double* dw_parts, int k_chunk, int N, int H,
                                                 int W, int Cin, int Ho, int Wo, int Cout, int KH,
                                                 int KW, int sh, int sw, int pt, int pl, int dh,
                                                 int dw, int groups) {
    gg_conv::bwd_filter<double>(dy, x, dw_parts, k_chunk,
                                gg_conv::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt,
                                                   pl, dh, dw, groups));
}
