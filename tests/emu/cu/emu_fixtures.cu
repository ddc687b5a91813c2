// Test kernels for the CUDA CPU emulator (tests/emu/test_emulator.py).
// Each kernel exercises one CUDA feature; the Python tests compare with NumPy.

#ifndef TILE
#define TILE 16
#endif

extern "C" __global__ void vec_add(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

// C[M,N] = A[M,K] @ B[K,N], shared-memory tiles of TILE x TILE, block (TILE, TILE).
template <int T>
__device__ void sgemm_tiled(const float* A, const float* B, float* C, int M, int N, int K) {
    __shared__ float As[T][T];
    __shared__ float Bs[T][T];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * T + ty, col = blockIdx.x * T + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += T) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.0f;
        Bs[ty][tx] = (col < N && k0 + ty < K) ? B[(k0 + ty) * N + col] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < T; ++k) acc += As[ty][k] * Bs[k][tx];
#ifndef PLANT_MISSING_SYNC
        __syncthreads();
#endif
    }
    if (row < M && col < N) C[row * N + col] = acc;
}

extern "C" __global__ void __launch_bounds__(TILE * TILE)
    sgemm(const float* A, const float* B, float* C, int M, int N, int K) {
    sgemm_tiled<TILE>(A, B, C, M, N, K);
}

// Sum of x into *out: grid-stride loads, warp reduction with __shfl_down_sync, one
// partial per warp in shared memory, warp 0 reduces those, one atomicAdd per block.
__device__ __forceinline__ float warp_sum(float v) {
    for (int off = warpSize / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

extern "C" __global__ void block_sum(const float* __restrict__ x, float* out, int n) {
    __shared__ float partial[32];
    float v = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
    const int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int nwarps = (blockDim.x + warpSize - 1) / warpSize;
        v = lane < nwarps ? partial[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) atomicAdd(out, v);
    }
}

// Integer max and count through atomics.
extern "C" __global__ void atomic_int(const int* __restrict__ x, int* out_max, unsigned* out_count,
                                      int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        atomicMax(out_max, x[i]);
        if (x[i] > 0) atomicAdd(out_count, 1u);
    }
}

// Warp votes and divergent shuffles: lanes < 16 rotate their value within the low half,
// lanes >= 16 broadcast lane 16's value within the high half; each half passes its own
// partial mask. ballot[w] = bit mask of positive x in warp w.
extern "C" __global__ void warp_vote(const float* __restrict__ x, unsigned* ballot, int* any_all,
                                     float* shuffled, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % 32;
    const float v = i < n ? x[i] : 0.0f;
    const unsigned b = __ballot_sync(0xffffffffu, v > 0.0f);
    const int any = __any_sync(0xffffffffu, v > 0.5f);
    const int all = __all_sync(0xffffffffu, v > -0.5f);
    float s;
    if (lane < 16) {
        s = __shfl_sync(0x0000ffffu, v, (lane + 1) % 16);
    } else {
        s = __shfl_sync(0xffff0000u, v, 16);
    }
    if (lane == 0) {
        ballot[i / 32] = b;
        any_all[2 * (i / 32)] = any;
        any_all[2 * (i / 32) + 1] = all;
    }
    if (i < n) shuffled[i] = s;
}

// Inclusive scan within each warp with __shfl_up_sync, and a butterfly max with
// __shfl_xor_sync over segments of width 8.
extern "C" __global__ void warp_scan(const int* __restrict__ x, int* scan, int* segmax, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % 32;
    int v = i < n ? x[i] : 0;
    for (int d = 1; d < 32; d <<= 1) {
        int u = __shfl_up_sync(0xffffffffu, v, d);
        if (lane >= d) v += u;
    }
    int m = i < n ? x[i] : 0;
    for (int d = 4; d > 0; d >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, d, 8));
    if (i < n) {
        scan[i] = v;
        segmax[i] = m;
    }
}

// Reverse each block's chunk through dynamic shared memory (extern __shared__).
extern "C" __global__ void reverse_dyn(const float* __restrict__ x, float* y, int n) {
    extern __shared__ float buf[];
    const int base = blockIdx.x * blockDim.x;
    const int t = threadIdx.x;
    const int cnt = min((int)blockDim.x, n - base);
    if (t < cnt) buf[t] = x[base + t];
    __syncthreads();
    if (t < cnt) y[base + t] = buf[cnt - 1 - t];
}

// float4 loads/stores: y = 2*x + 1 over n/4 vectors.
extern "C" __global__ void scale_f4(const float4* __restrict__ x, float4* y, int n4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        float4 v = __ldg(&x[i]);
        y[i] = make_float4(2.f * v.x + 1.f, 2.f * v.y + 1.f, 2.f * v.z + 1.f, 2.f * v.w + 1.f);
    }
}

// Double-precision, math functions: y = tanh(x) * exp(-x^2) + rsqrt(1 + x^2).
extern "C" __global__ void math_f64(const double* x, double* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = tanh(x[i]) * exp(-x[i] * x[i]) + rsqrt(1.0 + x[i] * x[i]);
}
extern "C" __global__ void math_f32(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = tanhf(x[i]) * __expf(-x[i] * x[i]) + rsqrtf(1.0f + x[i] * x[i]) + __saturatef(x[i]);
}

// 2-D/3-D indices: out[z][y][x] = linear thread id within the block + 1000 * block id.
extern "C" __global__ void indices3d(int* out, int gx, int gy) {
    const int bx = blockIdx.x, by = blockIdx.y, bz = blockIdx.z;
    const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int bid = bx + gridDim.x * (by + gridDim.y * bz);
    const int nthreads = blockDim.x * blockDim.y * blockDim.z;
    out[bid * nthreads + tid] = tid + 1000 * bid + 0 * gx * gy;
}

// __syncthreads_count / _and / _or.
extern "C" __global__ void sync_count(const int* x, int* out) {
    const int p = x[blockIdx.x * blockDim.x + threadIdx.x] > 0;
    const int c = __syncthreads_count(p);
    const int a = __syncthreads_and(p);
    const int o = __syncthreads_or(p);
    if (threadIdx.x == 0) {
        out[3 * blockIdx.x] = c;
        out[3 * blockIdx.x + 1] = a;
        out[3 * blockIdx.x + 2] = o;
    }
}

// Odds and ends: __match_any_sync, __reduce_add_sync, __syncwarp, __activemask, bit
// intrinsics, atomicCAS/atomicExch, CUDA's mixed min/max. One warp, out[lane][0..7].
extern "C" __global__ void warp_misc(const int* __restrict__ x, int* out, unsigned* flag) {
    const unsigned lane = threadIdx.x;
    const int v = x[lane];
    int* o = out + 8 * lane;
    o[0] = (int)__match_any_sync(0xffffffffu, v % 4);
    o[1] = (int)__reduce_add_sync(0xffffffffu, (unsigned)v);
    __syncwarp();
    o[2] = (int)__activemask();
    o[3] = __popc((unsigned)v) + 100 * __ffs(v);
    o[4] = __clz(v);
    o[5] = (int)(__brev((unsigned)v) >> 24);
    o[6] = max(v, 3u) > 10u ? 1 : 0;  // unsigned comparison, as CUDA's max(int, unsigned)
    o[7] = (int)atomicCAS(flag, 0u, lane + 1);  // only the first lane to run wins
    if (lane == 31) atomicExch(flag + 1, 7u);
}

// Half precision through CUDA's own cuda_fp16.h host implementation.
extern "C" __global__ void half_axpy(const __half* x, __half* y, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2half(a * __half2float(x[i]) + __half2float(y[i]));
}
