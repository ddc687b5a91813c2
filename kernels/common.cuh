// common.cuh: the prelude every kernels/*.cu file shares (aligned 4-wide loads and
// stores, the fused multiply-add overloads, the alignment test).
//
// Included as `#include "common.cuh"` at the top of a .cu file, then made visible
// inside the file's own namespace with `using namespace gg_common;`. How the include
// is resolved:
//   * cuda (NVRTC through cupy.RawModule) and emu (g++): gpugrad/backend/kernels.py
//     inlines every quoted include found in kernels/ before compiling (with #line
//     markers, so diagnostics name this file), so CuPy's source-hash kernel cache sees
//     every change to this header;
//   * kernels/check_compile.py: NVRTC gets -I<kernels>, nvcc finds it beside the .cu;
//   * gpugrad.backend.emu.EmuModule.from_file: the .cu file's folder and kernels/ are
//     on g++'s include path.
// The wheel ships the whole kernels/ folder (pyproject: force-include), headers too.
#ifndef GG_COMMON_CUH
#define GG_COMMON_CUH

namespace gg_common {

// 16-byte alignment of a pointer: the condition for the vector (float4 / double2)
// paths; every vector path is guarded by it at run time.
__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0ull;
}

__device__ __forceinline__ float madd(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double madd(double a, double b, double c) { return fma(a, b, c); }

// Elements in one 16-byte vector: 4 floats, 2 doubles. The kernels' vector paths move
// VW<T> consecutive elements per lane and access (one LDG/STG/LDS/STS.128), so that the
// lanes of a warp request cover consecutive 16-byte words: all bytes of every 32-byte
// sector are used, and LDS.128 fragments of consecutive lanes fall in distinct banks.
template <typename T>
struct VecWidth {
    static constexpr int value = 16 / int(sizeof(T));
};
template <typename T>
constexpr int VW = VecWidth<T>::value;

// VW<T> consecutive elements at a 16-byte-aligned address: one 128-bit access.
__device__ __forceinline__ void loadv(const float* p, float r[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
}
__device__ __forceinline__ void loadv(const double* p, double r[2]) {
    const double2 v = *reinterpret_cast<const double2*>(p);
    r[0] = v.x; r[1] = v.y;
}
__device__ __forceinline__ void storev(float* p, const float r[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(r[0], r[1], r[2], r[3]);
}
__device__ __forceinline__ void storev(double* p, const double r[2]) {
    *reinterpret_cast<double2*>(p) = make_double2(r[0], r[1]);
}

// 4 consecutive elements at a 16-byte-aligned address: one 128-bit access for float,
// two for double (lanes 32 bytes apart then use half of each sector per request: the
// kernels' vector paths use loadv/storev instead).
__device__ __forceinline__ void load4(const float* p, float r[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
}
__device__ __forceinline__ void load4(const double* p, double r[4]) {
    const double2 a = *reinterpret_cast<const double2*>(p);
    const double2 b = *reinterpret_cast<const double2*>(p + 2);
    r[0] = a.x; r[1] = a.y; r[2] = b.x; r[3] = b.y;
}
__device__ __forceinline__ void store4(float* p, const float r[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(r[0], r[1], r[2], r[3]);
}
__device__ __forceinline__ void store4(double* p, const double r[4]) {
    *reinterpret_cast<double2*>(p) = make_double2(r[0], r[1]);
    *reinterpret_cast<double2*>(p + 2) = make_double2(r[2], r[3]);
}

// Block -> tile mapping of the GEMM-shaped kernels (matmul.cu, matmul_tf32.cu, conv):
// the origin (m0, n0) of block blockIdx.x's BM x BN tile of an M x N output, the tiles
// taken in groups of GROUP = 8 tile rows swept column by column, so that consecutive
// blocks reuse the same A rows / B columns from L2. For a grid of exactly
// tiles_m * tiles_n blocks (the matmuls).
__device__ __forceinline__ void grouped_tile(int M, int N, int BM, int BN, int& m0, int& n0) {
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

// grouped_tile for a grid that may hold more blocks than tiles (conv's backward-data
// phases differ in size): false when this block has none.
__device__ __forceinline__ bool tile_of_block(int M, int N, int BM, int BN, int& m0, int& n0) {
    const int tiles = ((M + BM - 1) / BM) * ((N + BN - 1) / BN);
    if ((int)blockIdx.x >= tiles) return false;
    grouped_tile(M, N, BM, BN, m0, n0);
    return true;
}

}  // namespace gg_common

#endif  // GG_COMMON_CUH
