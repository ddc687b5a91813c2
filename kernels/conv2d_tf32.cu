// conv2d_tf32.cu: 2-D convolution on the tensor cores in TF32 (sm_80+), opt-in from
// Python (gg.kernels.allow_tf32 / tf32_mode, or precision= on the conv2d kernels; see
// gpugrad/backend/kernels.py). The FP32 kernels in conv2d.cu stay the default.
//
// Same problem and layouts as conv2d.cu (its header has the index algebra): x[N,H,W,Cin]
// (NHWC), w[KH,KW,Cin/groups,Cout], y[N,Ho,Wo,Cout], stride, dilation, top/left
// padding, groups on grid.y. Three implicit GEMMs per group, float32 in and out:
//
//   forward        y[p, co]          = sum_(r,s,ci) A[p, (r,s,ci)] W[(r,s,ci), co]
//                  A gathered from x (k-contiguous: ci), W dense (mn-contiguous: co)
//   backward data  dx[q, ci]         = sum_(u,v,co) dy[..] w[r0+u*rstep, s0+v*sstep, ci, co]
//                  one sub-pixel phase per blockIdx.z (conv2d.cu's decomposition, no
//                  multiply on a structural zero); dy and w both k-contiguous (co)
//   backward filt. dw[(r,s,ci), co]  = sum_p x[p, (r,s,ci)] dy[p, co]
//                  x gathered mn-contiguous (ci), dy dense; the pixel range is split
//                  over blockIdx.z into partial sums (workspace [splits, KH*KW*Cg, Cout],
//                  summed by the host in a fixed order: deterministic)
//
// Two precisions, one mainloop (a template flag, as matmul_tf32.cu):
//  * TF32 (conv2d_*_tf32_f32): operands rounded to TF32 (cvt.rna), FP32 accumulation;
//  * 3xTF32 (conv2d_*_3xtf32_f32): x = hi + lo split, a_lo.b_hi + a_hi.b_lo + a_hi.b_hi.
//
// Design (matmul_tf32.cu's, on gathered operands):
//  * block tile 256x64x16, 4 warps stacked along m, each a 64x64 warp tile of 4 x 8
//    mma.m16n8k8 (64 mma per k tile and warp); conv output-channel counts are mostly
//    64..512, so BN = 64 wastes nothing on the common layers; backward filter also
//    runs in 96-thread blocks (3 warps, 192 rows: blockDim.x sets the tile, no extra
//    instantiation), chosen by the host when its Cg*KH*KW rows fill 192-row tiles
//    better (64 channels x 3 x 3 = 576 = 3 x 192 rather than 3 x 256, 25 % padding);
//  * operands go global -> shared with cp.async (16-byte chunks where the channel
//    count is a multiple of 4 and the pointer is aligned, 4-byte copies otherwise; the
//    path is a runtime flag of each loader, uniform per launch) into a ring of `stages`
//    stages (20 KiB each) in dynamic shared memory; padding taps and edges are stored
//    as zeros with plain shared stores; one __syncthreads per k tile;
//  * index math out of the hot loop: each thread's pixel rows (forward, backward data)
//    or tap columns (backward filter) are located once; the reduction index is walked
//    incrementally (TapWalk: add BK, carry into the tap), the filter gradient's pixel
//    walk carries wo -> ho -> n; divisions only on the scalar (unaligned) paths;
//  * shared layouts without padding, 16-byte chunks XOR-swizzled so that every
//    fragment load (LDS.32 of 8 rows x 4 columns of a warp) and every cp.async fill
//    hits 32 distinct banks: k-contiguous rows of 16 k (4 chunks): chunk ^ ((row/2)%4);
//    mn-contiguous rows (one row per k): chunk ^ 2 (k % 4); backward filter's A tile
//    instead pads its rows to 280 floats (LayAP: 6 or 8 fill threads per row).
// The geometry (Conv, TapGeom/TapWalk, Phase, the pixel or tap of a GEMM row, the
// block's tile) is conv2d.cu's, from conv_common.cuh; the cp.async ring helpers and
// the TF32 rounding are matmul_tf32.cu's, from mma.cuh.
#include "common.cuh"
#include "conv_common.cuh"
#include "mma.cuh"

namespace gg_ctf32 {

using gg_common::aligned16;
using gg_common::tile_of_block;
using namespace gg_conv_common;  // Conv, TapGeom, TapWalk, Phase, ...

constexpr int BM = 256, BN = 64, BK = 16, NT = 128;  // block tile, threads
constexpr int WM = 64, WN = 64, MT = WM / 16, NL = WN / 8;  // warp tile: 4 x 8 mma tiles
constexpr int A_SIZE = BM * BK, B_SIZE = BN * BK, STAGE = A_SIZE + B_SIZE;  // floats

__device__ __forceinline__ void zero4(float* dst) {
    *reinterpret_cast<float4*>(dst) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

// A BMN x BK operand tile in shared memory (see the header). KMAJOR: row mn holds its
// BK = 16 k (4 chunks), chunk c at c ^ ((mn / 2) % 4); else row k holds BMN values of
// mn, chunk c at c ^ 2 (k % 4).
template <int BMN, bool KMAJOR>
struct Lay {
    static constexpr int LD = KMAJOR ? BK : BMN;
    static __device__ __forceinline__ int at(int row, int chunk) {
        return row * LD + 4 * (chunk ^ (KMAJOR ? ((row >> 1) & 3) : ((row & 3) << 1)));
    }
    // The fragment loads of one thread: element (mn, k) with mn = base + 8 q + g and
    // k = 4 x + t (x < 4 over the two k steps of a tile; g = lane / 4, t = lane % 4,
    // base a multiple of 8) sits at T[x] + 128 q (KMAJOR: the swizzle is (g / 2) % 4
    // for every q) or at T[q % 4] + 32 (q / 4) + 4 x LD (else: chunk 2q + g / 4 with
    // bits 1-2 XOR 2t). Four offsets per thread, computed once; with q and x known at
    // compile time every load is one LDS with an immediate offset.
    struct Frag {
        int T[4];
        __device__ __forceinline__ void init(int base, int g, int t) {
#pragma unroll
            for (int x = 0; x < 4; ++x)
                T[x] = KMAJOR ? (base + g) * BK + 4 * (x ^ ((g >> 1) & 3)) + t
                              : t * LD + base + g + 8 * (x ^ t);
        }
        __device__ __forceinline__ unsigned get(const float* s, int q, int x) const {
            // (a select chain, not T[x]: x is a variable in the 3xTF32 loop, and a
            // variable index would put T in local memory)
            const int tx = x == 0 ? T[0] : x == 1 ? T[1] : x == 2 ? T[2] : T[3];
            return __float_as_uint(s[KMAJOR ? tx + 128 * q : T[q & 3] + 32 * (q >> 2) + 4 * x * LD]);
        }
    };
};
using LayAK = Lay<BM, true>;   // A, k-contiguous (forward, backward data)
using LayBK = Lay<BN, true>;   // B, k-contiguous (backward data)
using LayBN = Lay<BN, false>;  // B, n-contiguous (forward, backward filter)

// A, m-contiguous, for backward filter: row k holds up to BM values of m, unswizzled,
// rows LD = 280 floats apart (280 = 24 mod 32 banks, 70 = 6 mod 8 chunks). Fragment
// loads (m = base + 8 q + g, k = 4 x + t) hit bank 24 t + g + const: 32 distinct; a fill
// in which consecutive threads take consecutive chunks of one row and wrap into the
// next after 6 (96 threads) or 8 (128 threads) chunks puts any 8 consecutive threads in
// 8 distinct 16-byte bank groups (chunk c of row r at group 6 r + c mod 8). One offset
// per thread; q and x known at compile time make every load one LDS with an immediate.
struct LayAP {
    static constexpr int LD = 280;
    static __device__ __forceinline__ int at(int row, int chunk) { return row * LD + 4 * chunk; }
    struct Frag {
        int T;
        __device__ __forceinline__ void init(int base, int g, int t) { T = t * LD + base + g; }
        __device__ __forceinline__ unsigned get(const float* s, int q, int x) const {
            return __float_as_uint(s[T + 8 * q + 4 * x * LD]);
        }
    };
};
constexpr int A_SIZE_P = BK * LayAP::LD;  // floats of the backward-filter A tile

// Image-shaped A operand, k-contiguous (x in the forward pass, dy in backward data):
// thread t fills chunk t % 4 of rows t / 4 + 32 i (i < 8), pixels (hb, wb) of an
// Hs x Ws grid at element offset base; columns k = (u, v, c) walked by TapWalk.
struct PixelA {
    static constexpr int R = BM * 4 / NT;  // rows per thread
    const float* __restrict__ src;
    int Hs, Ws, kpos;
    bool vec;
    int base[R], hb[R], wb[R];
    TapGeom g;
    TapWalk k;
    __device__ __forceinline__ void start(const float* s, int hs, int ws, const TapGeom& geo,
                                          bool v) {
        src = s;
        Hs = hs;
        Ws = ws;
        g = geo;
        vec = v;
        kpos = 4 * (threadIdx.x & 3);
        k.init(g, kpos);
    }
    static __device__ __forceinline__ int row(int i) { return (threadIdx.x >> 2) + 32 * i; }
    __device__ __forceinline__ void load(float* s) {
        const int q = threadIdx.x & 3;
        if (vec) {
            const bool kin = k.valid(g);
#pragma unroll
            for (int i = 0; i < R; ++i) {
                const int h = hb[i] + k.hoff, w = wb[i] + k.woff;
                float* dst = s + LayAK::at(row(i), q);
                if (kin && (unsigned)h < (unsigned)Hs && (unsigned)w < (unsigned)Ws)
                    gg_mma::cp_async16(dst, src + (base[i] + k.toff + k.c));
                else
                    zero4(dst);
            }
            k.advance(g, BK);
        } else {
#pragma unroll 1
            for (int j = 0; j < 4; ++j) {
                int hoff, woff, toff, c;
                const bool kin = g.locate(kpos + j, hoff, woff, toff, c);
#pragma unroll
                for (int i = 0; i < R; ++i) {
                    const int h = hb[i] + hoff, w = wb[i] + woff;
                    float* dst = s + LayAK::at(row(i), q) + j;
                    if (kin && (unsigned)h < (unsigned)Hs && (unsigned)w < (unsigned)Ws)
                        gg_mma::cp_async4(dst, src + (base[i] + toff + c));
                    else
                        *dst = 0.0f;
                }
            }
        }
        kpos += BK;
    }
    // forward: rows p = (n, ho, wo), taps (r, s, ci) of x
    __device__ __forceinline__ void init_fwd(const float* xg, const Conv& c, int M, int m0,
                                             bool v) {
#pragma unroll
        for (int i = 0; i < R; ++i) fwd_pixel(c, m0 + row(i), M, hb[i], wb[i], base[i]);
        start(xg, c.H, c.W, fwd_taps(c), v);
    }
    // backward data: rows (n, i, j) of phase (ph, pw), taps (u, v, co) of dy
    __device__ __forceinline__ void init_phase(const float* dyg, const Conv& c, const Phase& ph,
                                               const Phase& pw, int M, int m0, bool v) {
#pragma unroll
        for (int i = 0; i < R; ++i) phase_pixel(c, ph, pw, m0 + row(i), M, hb[i], wb[i], base[i]);
        start(dyg, c.Ho, c.Wo, phase_taps(c, ph, pw), v);
    }
};

// Dense B operand, n-contiguous: element (n, k) at x[k*ld + n] (w viewed as
// [KH*KW*Cg, Cout] in the forward pass, dy as [P, Cout] in backward filter); thread t
// fills chunk t % 16 of rows t / 16 and t / 16 + 8 (128 threads), or with ANY_NT (the
// backward filter's 96 or 128) rows t / 16 + i * blockDim.x / 16 below BK (i < 3).
template <bool ANY_NT>
struct DenseB {
    const float* __restrict__ x;
    int ld, ext_n, kend, k, n, rstep;
    bool vec;
    __device__ __forceinline__ void init(const float* x_, int ld_, int ext_n_, int kend_, int n0,
                                         int k0, bool v) {
        x = x_;
        ld = ld_;
        ext_n = ext_n_;
        kend = kend_;
        n = n0 + 4 * (threadIdx.x & 15);
        k = k0 + (threadIdx.x >> 4);
        rstep = ANY_NT ? (int)(blockDim.x >> 4) : 8;
        vec = v && n + 3 < ext_n;
    }
    template <class A>
    __device__ __forceinline__ void load(float* s, const A&) {
        const int q = threadIdx.x & 15;
#pragma unroll
        for (int i = 0; i < (ANY_NT ? 3 : 2); ++i) {
            const int step = ANY_NT ? rstep : 8;
            const int row = (threadIdx.x >> 4) + step * i;
            if (ANY_NT && row >= BK) break;
            const int kk = k + step * i;
            float* dst = s + LayBN::at(row, q);
            const float* sp = x + (kk * ld + n);
            if (kk >= kend) {
                zero4(dst);
            } else if (vec) {
                gg_mma::cp_async16(dst, sp);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (n + j < ext_n)
                        gg_mma::cp_async4(dst + j, sp + j);
                    else
                        dst[j] = 0.0f;
                }
            }
        }
        k += BK;
    }
};

// Backward-data B operand, k-contiguous: element (ci, k = (u, v, co)) =
// w[r0+u*rstep, s0+v*sstep, ci, co]; thread t fills chunk t % 4 of rows t / 4 + 32 i.
// Its k walk is the A operand's (same chunk column, same (u, v, co) order): load()
// reads it before the A loader advances it.
struct WtB {
    const float* __restrict__ w;
    int dt_v, dt_u;
    int base[2];
    __device__ __forceinline__ void init(const float* wg, const Conv& c, const Phase& ph,
                                         const Phase& pw, int n0) {
        w = wg;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int ci = n0 + (threadIdx.x >> 2) + 32 * i;
            base[i] = ci < c.Cg ? ((ph.r0 * c.KW + pw.r0) * c.Cg + ci) * c.Cout : -1;
        }
        const int tap = c.Cg * c.Cout;
        dt_v = pw.rstep * tap;
        dt_u = ph.rstep * c.KW * tap;
    }
    __device__ __forceinline__ void load(float* s, const PixelA& a) {
        const int q = threadIdx.x & 3;
        if (a.vec) {
            const bool kin = a.k.valid(a.g);
            const int off = a.k.u * dt_u + a.k.v * dt_v + a.k.c;
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                float* dst = s + LayBK::at((threadIdx.x >> 2) + 32 * i, q);
                if (kin && base[i] >= 0)
                    gg_mma::cp_async16(dst, w + (base[i] + off));
                else
                    zero4(dst);
            }
        } else {
#pragma unroll 1
            for (int j = 0; j < 4; ++j) {
                int hoff, woff, toff, c;
                const bool kin = a.g.locate(a.kpos + j, hoff, woff, toff, c);
                const int uv = (a.kpos + j) / a.g.C;
                const int u = uv / a.g.KV;
                const int off = u * dt_u + (uv - u * a.g.KV) * dt_v + c;
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    float* dst = s + LayBK::at((threadIdx.x >> 2) + 32 * i, q) + j;
                    if (kin && base[i] >= 0)
                        gg_mma::cp_async4(dst, w + (base[i] + off));
                    else
                        *dst = 0.0f;
                }
            }
        }
    }
};

// Backward-filter A operand, m-contiguous: element (m = (r, s, ci), k = p) =
// x[pixel p shifted by tap (r, s), ci]; the block's 2 x blockDim.x rows of m (64 per
// warp: 256 or 192) are 16 x blockDim.x / 32 chunks, so with tpr = blockDim.x / 16
// threads per pixel row thread t fills pixel row t / tpr of the tile and chunks
// t % tpr + tpr i (i < 8), whose taps it locates once; the pixel walks by BK.
struct ColA {
    static constexpr int R = 8;  // chunks per thread
    const float* __restrict__ x;
    int H, W, Cin, sh, sw, pt, pl, Ho, Wo, N;
    int p, kend, n, ho, wo, m0, Mrows, Cg, KW, dh, dw, row, tpr, cq;
    bool vec;
    int rdh[R], sdw[R], toff[R];
    __device__ __forceinline__ void init(const float* xg, const Conv& c, int m0_, int k0,
                                         int kend_, bool v) {
        x = xg;
        H = c.H; W = c.W; Cin = c.Cin; sh = c.sh; sw = c.sw; pt = c.pt; pl = c.pl;
        Ho = c.Ho; Wo = c.Wo; N = c.N; Cg = c.Cg; KW = c.KW; dh = c.dh; dw = c.dw;
        m0 = m0_;
        Mrows = c.KH * c.KW * c.Cg;
        kend = kend_;
        vec = v;
        tpr = blockDim.x >> 4;
        row = threadIdx.x / tpr;
        cq = threadIdx.x - row * tpr;
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int m = m0 + 4 * (cq + tpr * i);
            filter_tap(c, m, rdh[i], sdw[i], toff[i]);
            if (m >= Mrows) rdh[i] = NO_PIXEL;
        }
        p = k0 + row;
        locate_pixel(p, c.Ho, c.Wo, n, ho, wo);
    }
    __device__ __forceinline__ void load(float* s) {
        const int hb = ho * sh - pt, wb = wo * sw - pl;
        const int pix = ((n * H + hb) * W + wb) * Cin;
        const bool pok = p < kend;
        float* const d0 = s + LayAP::at(row, cq);
        if (vec) {
#pragma unroll
            for (int i = 0; i < R; ++i) {
                const int hi = hb + rdh[i], wi = wb + sdw[i];
                // every lane issues the copy (zero-filled outside the image): the
                // fill stays one conflict-free instruction per chunk
                const bool ok = pok & ((unsigned)hi < (unsigned)H) & ((unsigned)wi < (unsigned)W);
                gg_mma::cp_async16_zfill(d0 + 4 * tpr * i, x + (ok ? pix + toff[i] : 0), ok);
            }
        } else {
#pragma unroll 1
            for (int i = 0; i < R; ++i) {
                float* dst = d0 + 4 * tpr * i;
#pragma unroll 1
                for (int j = 0; j < 4; ++j) {
                    const int m = m0 + 4 * (cq + tpr * i) + j;
                    const int rs = m / Cg;
                    const int rr = rs / KW;
                    const int hi = hb + rr * dh, wi = wb + (rs - rr * KW) * dw;
                    if (pok && m < Mrows && (unsigned)hi < (unsigned)H &&
                        (unsigned)wi < (unsigned)W)
                        gg_mma::cp_async4(dst + j, x + (((n * H + hi) * W + wi) * Cin + m - rs * Cg));
                    else
                        dst[j] = 0.0f;
                }
            }
        }
        p += BK;
        advance_pixel(BK, Ho, Wo, n, ho, wo);
    }
};

// The multistage mainloop (matmul_tf32.cu's): ktiles k tiles of the loaders la (A,
// layout LA) and lb (B, layout LB) through a `stages`-deep cp.async ring.
template <bool SPLIT3, class LA, class LB, int ASZ, class LoadA, class LoadB>
__device__ __forceinline__ void mainloop(float (&acc)[MT][NL][4], LoadA& la, LoadB& lb,
                                         int ktiles, int stages, bool active) {
    extern __shared__ __align__(16) float smem[];
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane >> 2;
    const int t = lane & 3;
    constexpr int STG = ASZ + B_SIZE;  // floats per stage
    typename LA::Frag fa;
    typename LB::Frag fb;
    fa.init(warp * WM, g, t);
    fb.init(0, g, t);

    gg_mma::zero_acc(acc);

    for (int s = 0; s < stages - 1; ++s) {
        if (s < ktiles) {  // B first: the backward-data B loader reads A's k walk
            lb.load(smem + s * STG + ASZ, la);
            la.load(smem + s * STG);
        }
        gg_mma::cp_async_commit();
    }
    int read = 0;
    int write = stages - 1;
    for (int kt = 0; kt < ktiles; ++kt) {
        gg_mma::cp_async_wait_ring(stages);  // this thread's copies of tile kt landed
        __syncthreads();  // everyone's; and stage `write` (tile kt-1) is no longer read
        if (kt + stages - 1 < ktiles) {
            lb.load(smem + write * STG + ASZ, la);
            la.load(smem + write * STG);
        }
        gg_mma::cp_async_commit();
        write = write + 1 == stages ? 0 : write + 1;
        const float* sa = smem + read * STG;
        const float* sb = sa + ASZ;
        read = read + 1 == stages ? 0 : read + 1;
        // a warp whose 64 rows all lie past the GEMM's end (the last m tile) copies
        // its share of the tiles but runs no mma: the SM's tensor pipe goes to the
        // other resident warps (warp-uniform branch)
        if (!active) continue;
        // 3xTF32: k steps not unrolled (registers: the unrolled loop spills)
#pragma unroll(SPLIT3 ? 1 : 2)
        for (int ks = 0; ks < BK; ks += 8) {
            if (!SPLIT3) {
                // TF32: the 4 A fragments of the warp tile stay in registers, each B
                // fragment is loaded, rounded and used by the 4 mma of its column
                unsigned a[MT][4];
#pragma unroll
                for (int i = 0; i < MT; ++i) {
                    a[i][0] = fa.get(sa, 2 * i, ks / 4);
                    a[i][1] = fa.get(sa, 2 * i + 1, ks / 4);
                    a[i][2] = fa.get(sa, 2 * i, ks / 4 + 1);
                    a[i][3] = fa.get(sa, 2 * i + 1, ks / 4 + 1);
                }
                gg_mma::round_tf32<MT * 4, false>(&a[0][0], nullptr);
#pragma unroll
                for (int j = 0; j < NL; ++j) {
                    unsigned b[2];
                    b[0] = fb.get(sb, j, ks / 4);
                    b[1] = fb.get(sb, j, ks / 4 + 1);
                    gg_mma::round_tf32<2, false>(b, nullptr);
#pragma unroll
                    for (int i = 0; i < MT; ++i) gg_mma::mma_tf32(acc[i][j], a[i], b);
                }
            } else {
                // 3xTF32: one A fragment (hi, lo) at a time, the B fragments re-read
                // and split per A fragment: 4x the B loads, but registers for the
                // accumulators (the tensor pipe, 3 mma per product, still dominates)
#pragma unroll
                for (int i = 0; i < MT; ++i) {
                    unsigned ah[4], al[4];
                    ah[0] = fa.get(sa, 2 * i, ks / 4);
                    ah[1] = fa.get(sa, 2 * i + 1, ks / 4);
                    ah[2] = fa.get(sa, 2 * i, ks / 4 + 1);
                    ah[3] = fa.get(sa, 2 * i + 1, ks / 4 + 1);
                    gg_mma::round_tf32<4, true>(ah, al);
#pragma unroll
                    for (int j = 0; j < NL; ++j) {
                        unsigned bh[2], bl[2];
                        bh[0] = fb.get(sb, j, ks / 4);
                        bh[1] = fb.get(sb, j, ks / 4 + 1);
                        gg_mma::round_tf32<2, true>(bh, bl);
                        gg_mma::mma_tf32(acc[i][j], al, bh);  // small terms first
                        gg_mma::mma_tf32(acc[i][j], ah, bl);
                        gg_mma::mma_tf32(acc[i][j], ah, bh);
                    }
                }
            }
        }
    }
    gg_mma::cp_async_wait<0>();  // nothing may stay in flight past the block's end
}

// Output rows of one backward-data phase: row (n, i, j) is dx pixel (n, hi0+i*sh, wi0+j*sw).
struct PhaseRows {
    int H, W, Cin, sh, sw, hi0, wi0, Hp, Wp;
    __device__ __forceinline__ int operator()(int row) const {
        const int n = row / (Hp * Wp);
        const int rem = row - n * (Hp * Wp);
        const int i = rem / Wp;
        return ((n * H + hi0 + i * sh) * W + wi0 + (rem - i * Wp) * sw) * Cin;
    }
};

// acc[i][j][2hh + e] is row 16i + 8hh + g, column 8j + 2t + e of the warp tile; out is
// column 0 of this group's output, rows(r) the element offset of GEMM row r.
template <class Rows>
__device__ __forceinline__ void epilogue(const float (&acc)[MT][NL][4], float* __restrict__ out,
                                         const Rows& rows, bool vec2, int M, int N, int m0,
                                         int n0, const float* __restrict__ bias, int has_bias,
                                         int relu) {
    const int lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int wm0 = (threadIdx.x / 32) * WM;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int row = m0 + wm0 + 16 * i + 8 * hh + g;
            if (row >= M) continue;
            float* dst_row = out + rows(row);
#pragma unroll
            for (int j = 0; j < NL; ++j) {
                const int col = n0 + 8 * j + 2 * t;
                float v[2];
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    v[e] = acc[i][j][2 * hh + e];
                    if (has_bias && col + e < N) v[e] += bias[col + e];
                    if (relu) v[e] = v[e] < 0.0f ? 0.0f : v[e];  // NaN propagates
                }
                float* dst = dst_row + col;
                if (vec2 && col + 1 < N) {
                    *reinterpret_cast<float2*>(dst) = make_float2(v[0], v[1]);
                } else {
                    if (col < N) dst[0] = v[0];
                    if (col + 1 < N) dst[1] = v[1];
                }
            }
        }
    }
}

__device__ __forceinline__ bool aligned8(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 7ull) == 0ull;
}

template <bool SPLIT3>
__device__ __forceinline__ void fwd(const float* x, const float* w, float* y, const float* bias,
                                    int has_bias, int relu, const Conv& c, int stages) {
    const int grp = blockIdx.y;
    const int M = c.N * c.Ho * c.Wo;
    int m0, n0;
    if (!tile_of_block(M, c.Ng, BM, BN, m0, n0)) return;
    const float* xg = x + grp * c.Cg;
    const float* wg = w + grp * c.Ng;
    const int Kg = c.KH * c.KW * c.Cg;
    PixelA la;
    la.init_fwd(xg, c, M, m0, c.Cg % 4 == 0 && c.Cin % 4 == 0 && aligned16(xg));
    DenseB<false> lb;
    lb.init(wg, c.Cout, c.Ng, Kg, n0, 0, c.Cout % 4 == 0 && aligned16(wg));
    float acc[MT][NL][4];
    mainloop<SPLIT3, LayAK, LayBN, A_SIZE>(acc, la, lb, (Kg + BK - 1) / BK, stages,
                                   m0 + (int)(threadIdx.x / 32) * WM < M);
    float* yg = y + grp * c.Ng;
    epilogue(acc, yg, DenseRows{c.Cout}, c.Cout % 2 == 0 && aligned8(yg), M, c.Ng, m0, n0,
             bias + grp * c.Ng, has_bias, relu);
}

template <bool SPLIT3>
__device__ __forceinline__ void bwd_data(const float* dy, const float* w, float* dx,
                                         const Conv& c, int stages) {
    const int grp = blockIdx.y;
    Phase ph, pw;
    block_phases(c, ph, pw);
    const int M = c.N * ph.Hp * pw.Hp;
    int m0, n0;
    if (!tile_of_block(M, c.Cg, BM, BN, m0, n0)) return;
    const float* dyg = dy + grp * c.Ng;
    const float* wg = w + grp * c.Ng;
    const bool vec = c.Ng % 4 == 0 && c.Cout % 4 == 0 && aligned16(dyg) && aligned16(wg);
    PixelA la;
    la.init_phase(dyg, c, ph, pw, M, m0, vec);
    WtB lb;
    lb.init(wg, c, ph, pw, n0);
    const int Kg = ph.KU * pw.KU * c.Ng;
    float acc[MT][NL][4];
    mainloop<SPLIT3, LayAK, LayBK, A_SIZE>(acc, la, lb, (Kg + BK - 1) / BK, stages,
                                   m0 + (int)(threadIdx.x / 32) * WM < M);
    // the phase again (nothing of it stays live across the mainloop)
    block_phases(c, ph, pw);
    float* dxg = dx + grp * c.Cg;
    const PhaseRows rows{c.H, c.W, c.Cin, c.sh, c.sw, ph.hi0, pw.hi0, ph.Hp, pw.Hp};
    epilogue(acc, dxg, rows, c.Cin % 2 == 0 && aligned8(dxg), M, c.Cg, m0, n0, dxg, 0, 0);
}

template <bool SPLIT3>
__device__ __forceinline__ void bwd_filter(const float* dy, const float* x, float* dw_parts,
                                           int k_chunk, const Conv& c, int stages) {
    const int grp = blockIdx.y;
    const int Mrows = c.KH * c.KW * c.Cg;
    const int P = c.N * c.Ho * c.Wo;
    int m0, n0;  // 96 or 128 threads: 192 or 256 rows of m per block
    if (!tile_of_block(Mrows, c.Ng, 2 * (int)blockDim.x, BN, m0, n0)) return;
    const int kbeg = blockIdx.z * k_chunk;
    const int kend = min(P, kbeg + k_chunk);
    const float* xg = x + grp * c.Cg;
    const float* dyg = dy + grp * c.Ng;
    ColA la;
    la.init(xg, c, m0, kbeg, kend, c.Cg % 4 == 0 && c.Cin % 4 == 0 && aligned16(xg));
    DenseB<true> lb;
    lb.init(dyg, c.Cout, c.Ng, kend, n0, kbeg, c.Cout % 4 == 0 && aligned16(dyg));
    const int ktiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;
    float acc[MT][NL][4];
    mainloop<SPLIT3, LayAP, LayBN, A_SIZE_P>(acc, la, lb, ktiles, stages,
                                   m0 + (int)(threadIdx.x / 32) * WM < Mrows);
    float* out = dw_parts + blockIdx.z * (Mrows * c.Cout) + grp * c.Ng;
    epilogue(acc, out, DenseRows{c.Cout}, c.Cout % 2 == 0 && aligned8(out), Mrows, c.Ng, m0, n0,
             out, 0, 0);
}

}  // namespace gg_ctf32

// Entry points: 128 threads (4 warps of 64x64), a `stages`-deep ring of 20 KiB stages in
// dynamic shared memory; conv2d.cu's parameters plus `stages` last. Backward filter:
// 96 or 128 threads (192 or 256 rows of m), stages of 22016 bytes. NVRTC and the
// emulator launch them by name (extern "C"), the names gpugrad/backend/kernels.py asks
// for; GG_CONV_TF32(MODE, SPLIT3) defines the three of one precision,
// conv2d_{fwd,bwd_data,bwd_filter}_MODE_f32 (the emulator finds macro-made kernels by
// preprocessing the source, as for matmul_tf32.cu).
#define GG_CONV_GEOMETRY                                                                   \
    int N, int H, int W, int Cin, int Ho, int Wo, int Cout, int KH, int KW, int sh, int sw, \
        int pt, int pl, int dh, int dw, int groups
#define GG_CONV_MAKE                                                                        \
    gg_ctf32::make_conv(N, H, W, Cin, Ho, Wo, Cout, KH, KW, sh, sw, pt, pl, dh, dw, groups)
#define GG_CONV_TF32(MODE, SPLIT3)                                                           \
    extern "C" __global__ void __launch_bounds__(128, 2)                                     \
        conv2d_fwd_##MODE##_f32(const float* x, const float* w, float* y, const float* bias,  \
                                int has_bias, int relu, GG_CONV_GEOMETRY, int stages) {       \
        gg_ctf32::fwd<SPLIT3>(x, w, y, bias, has_bias, relu, GG_CONV_MAKE, stages);          \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(128, 2)                                     \
        conv2d_bwd_data_##MODE##_f32(const float* dy, const float* w, float* dx,              \
                                     GG_CONV_GEOMETRY, int stages) {                          \
        gg_ctf32::bwd_data<SPLIT3>(dy, w, dx, GG_CONV_MAKE, stages);                         \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(128, 2)                                     \
        conv2d_bwd_filter_##MODE##_f32(const float* dy, const float* x, float* dw_parts,      \
                                       int k_chunk, GG_CONV_GEOMETRY, int stages) {           \
        gg_ctf32::bwd_filter<SPLIT3>(dy, x, dw_parts, k_chunk, GG_CONV_MAKE, stages);        \
    }

GG_CONV_TF32(tf32, false)
GG_CONV_TF32(3xtf32, true)
