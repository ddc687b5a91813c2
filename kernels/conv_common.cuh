// conv_common.cuh: the convolution geometry and index helpers that conv2d.cu (FP32/FP64
// CUDA cores) and conv2d_tf32.cu (TF32 tensor cores) share: the problem (Conv), the
// reduction-index walk over the taps (TapGeom, TapWalk), the sub-pixel phases of the
// backward-data pass (Phase), the pixel/tap that a GEMM row stands for, the output
// pixel walk of backward filter (the L2-grouped block -> tile mapping, tile_of_block,
// is common.cuh's, shared with the matmuls). The index algebra is in conv2d.cu's header. All 32-bit (the host checks sizes < 2^31).
//
// Included as `#include "conv_common.cuh"` and made visible in the file's namespace
// with `using namespace gg_conv_common;`; resolved like common.cuh (see there):
// gpugrad/backend/kernels.py inlines it (NVRTC, the emulator), check_compile.py puts
// kernels/ on the include path, and the wheel ships kernels/ whole.
#ifndef GG_CONV_COMMON_CUH
#define GG_CONV_COMMON_CUH

namespace gg_conv_common {

struct Conv {
    int N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt, pl, dh, dw, Cg, Ng;
};

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

// Rows past the end of the GEMM get this pixel coordinate: every bounds test fails.
constexpr int NO_PIXEL = -(1 << 30);

// The reduction index k = (u, v, c) of an implicit GEMM (c fastest, c < C, v < KV,
// u < KU) and the offsets that depend on it: hoff/woff (tap position in the pixel grid)
// and toff (element offset of the tap); v+1 moves them by dw_v / dt_v, u+1 by dh_u / dt_u.
struct TapGeom {
    int C, KV, KU, dw_v, dt_v, dh_u, dt_u;
    // By division: for the scalar (gather) paths only. False when k is past the end.
    __device__ __forceinline__ bool locate(int k, int& hoff, int& woff, int& toff,
                                           int& c) const {
        const int uv = k / C;
        const int u = uv / KV;
        const int v = uv - u * KV;
        c = k - uv * C;
        hoff = u * dh_u;
        woff = v * dw_v;
        toff = u * dt_u + v * dt_v;
        return u < KU;
    }
};

// Walks k without dividing: advance() adds to c and carries into v and u (the hot loops).
struct TapWalk {
    int c, v, u, hoff, woff, toff;
    __device__ __forceinline__ void init(const TapGeom& g, int k) {
        c = v = u = hoff = woff = toff = 0;
        advance(g, k);
    }
    __device__ __forceinline__ void advance(const TapGeom& g, int step) {
        c += step;
        while (c >= g.C) {  // at most once per tile when C >= BK
            c -= g.C;
            ++v;
            woff += g.dw_v;
            toff += g.dt_v;
            if (v == g.KV) {
                v = 0;
                ++u;
                woff -= g.KV * g.dw_v;
                hoff += g.dh_u;
                toff += g.dt_u - g.KV * g.dt_v;
            }
        }
    }
    __device__ __forceinline__ bool valid(const TapGeom& g) const { return u < g.KU; }
};

// The taps of the forward pass: k = (r, s, ci) over x; s+1 moves by dw pixels (dw*Cin
// elements), r+1 by dh rows (dh*W*Cin elements).
__device__ __forceinline__ TapGeom fwd_taps(const Conv& c) {
    return TapGeom{c.Cg, c.KW, c.KH, c.dw, c.dw * c.Cin, c.dh, c.dh * c.W * c.Cin};
}

// Forward GEMM row m = (n, ho, wo): the top-left input pixel (hb, wb) of its receptive
// field and its element offset base (hb = NO_PIXEL, base = 0 past the end M).
__device__ __forceinline__ void fwd_pixel(const Conv& c, int m, int M, int& hb, int& wb,
                                          int& base) {
    const int hw = c.Ho * c.Wo;
    const int n = m / hw;
    const int rem = m - n * hw;
    const int ho = rem / c.Wo;
    hb = m < M ? ho * c.sh - c.pt : NO_PIXEL;
    wb = (rem - ho * c.Wo) * c.sw - c.pl;
    base = m < M ? ((n * c.H + hb) * c.W + wb) * c.Cin : 0;  // no overflow
}

// The taps and pixels of one backward-data phase (a, b) = ((hi+pt) % sh, (wi+pl) % sw):
// dx rows hi = hi0 + i*sh (i < Hp), taps r = r0 + u*rstep (u < KU), for which
// ho = hbase + i - u*dhu exactly; the same along w.
struct Phase {
    int hi0, Hp, r0, rstep, KU, hbase, dhu;
    __device__ __forceinline__ void init(int a, int sh, int pt, int dh, int KH, int H) {
        hi0 = ((a - pt) % sh + sh) % sh;
        Hp = hi0 < H ? (H - hi0 + sh - 1) / sh : 0;
        rstep = 1;
        while ((rstep * dh) % sh != 0) ++rstep;
        r0 = -1;
        for (int r = 0; r < rstep && r < KH; ++r)
            if ((r * dh) % sh == a && r0 < 0) r0 = r;
        KU = r0 < 0 ? 0 : (KH - r0 + rstep - 1) / rstep;
        if (r0 < 0) r0 = 0;
        hbase = (hi0 + pt - r0 * dh) / sh;  // exact: both sides are = a (mod sh)
        dhu = rstep * dh / sh;
    }
};

// The phase of this block's backward-data GEMM: blockIdx.z = a * sw + b.
__device__ __forceinline__ void block_phases(const Conv& c, Phase& ph, Phase& pw) {
    ph.init(blockIdx.z / c.sw, c.sh, c.pt, c.dh, c.KH, c.H);
    pw.init(blockIdx.z % c.sw, c.sw, c.pl, c.dw, c.KW, c.W);
}

// The taps of backward data's dy operand in phase (ph, pw): k = (u, v, co); v+1 moves
// by -pw.dhu pixels, u+1 by -ph.dhu rows.
__device__ __forceinline__ TapGeom phase_taps(const Conv& c, const Phase& ph, const Phase& pw) {
    return TapGeom{c.Ng, pw.KU, ph.KU, -pw.dhu, -pw.dhu * c.Cout, -ph.dhu,
                   -ph.dhu * c.Wo * c.Cout};
}

// Backward-data GEMM row m = (n, i, j) of phase (ph, pw): the dy pixel (hb, wb) of its
// tap u = v = 0 and its element offset base (hb = NO_PIXEL, base = 0 past the end M).
__device__ __forceinline__ void phase_pixel(const Conv& c, const Phase& ph, const Phase& pw,
                                            int m, int M, int& hb, int& wb, int& base) {
    const int hw = max(ph.Hp * pw.Hp, 1);
    const int n = m / hw;
    const int rem = m - n * hw;
    const int i = rem / max(pw.Hp, 1);
    hb = m < M ? ph.hbase + i : NO_PIXEL;
    wb = pw.hbase + rem - i * pw.Hp;
    base = m < M ? ((n * c.Ho + hb) * c.Wo + wb) * c.Cout : 0;
}

// Backward-filter GEMM row m = (r, s, ci): the tap's offset (rdh, sdw) in the pixel grid
// and toff = its element offset from the pixel, channel included.
__device__ __forceinline__ void filter_tap(const Conv& c, int m, int& rdh, int& sdw, int& toff) {
    const int rs = m / c.Cg;
    const int ci = m - rs * c.Cg;
    const int rr = rs / c.KW;
    rdh = rr * c.dh;
    sdw = (rs - rr * c.KW) * c.dw;
    toff = (rdh * c.W + sdw) * c.Cin + ci;
}

// Backward filter's reduction index: output pixel p = (n, ho, wo), located once by
// division, then walked by whole k tiles (wo carried into ho and n).
__device__ __forceinline__ void locate_pixel(int p, int Ho, int Wo, int& n, int& ho, int& wo) {
    const int hw = Ho * Wo;
    n = p / hw;
    const int rem = p - n * hw;
    ho = rem / Wo;
    wo = rem - ho * Wo;
}
__device__ __forceinline__ void advance_pixel(int step, int Ho, int Wo, int& n, int& ho,
                                              int& wo) {
    wo += step;
    while (wo >= Wo) {  // once per tile when Wo >= step
        wo -= Wo;
        if (++ho == Ho) {
            ho = 0;
            ++n;
        }
    }
}

// Output rows of a plain row-major matrix (row r at r*ld).
struct DenseRows {
    int ld;
    __device__ __forceinline__ int operator()(int row) const { return row * ld; }
};

}  // namespace gg_conv_common

#endif  // GG_CONV_COMMON_CUH
