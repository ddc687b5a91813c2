// relu.cu: elementwise ReLU forward and backward.
//
//   relu_fwd: y = x < 0 ? 0 : x          (NaN propagates, as NumPy's maximum(x, 0))
//   relu_bwd: dx = x > 0 ? dy : 0        (derivative 0 at 0; a select, not dy * mask,
//                                         so an inf/NaN dy where x <= 0 gives 0)
//
// Memory-bound: 16-byte loads and stores (float4 / double2, VW = 4 / 2 elements) when
// every pointer is 16-byte aligned, a grid-stride loop over the vectors (consecutive
// lanes, consecutive 16-byte words: every sector fully used), and a scalar loop for
// the n % VW tail (or everything, when a pointer is unaligned).
// Indices are 64-bit: n may exceed 2^31 (the host does not cap relu's size).

#include "common.cuh"

namespace gg_relu {

using namespace gg_common;  // aligned16, VW, loadv, storev

template <typename T>
__device__ __forceinline__ T relu1(T x) {
    return x < T(0) ? T(0) : x;
}

template <typename T>
__device__ __forceinline__ T relu_grad1(T dy, T x) {
    return x > T(0) ? dy : T(0);
}

// Grid-stride loop over [begin, n) with 64-bit indices. why 64-bit: with a 32-bit
// `i += stride` the index wraps negative for n within one stride of 2^31 - 1 and the
// loop then stores past the end of the array (seen in the SASS); 64-bit indices also
// take arrays of 2^31 elements or more.
template <typename F>
__device__ __forceinline__ void grid_stride(long long begin, long long n, F&& body) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long i = begin + first; i < n; i += stride) body(i);
}

template <typename T>
__device__ __forceinline__ void fwd(const T* __restrict__ x, T* __restrict__ y, long long n) {
    long long done = 0;
    if (aligned16(x) && aligned16(y)) {
        constexpr int W = VW<T>;
        const long long nvec = n / W;
        grid_stride(0, nvec, [&](long long v) {
            T r[W];
            loadv(x + W * v, r);
#pragma unroll
            for (int j = 0; j < W; ++j) r[j] = relu1(r[j]);
            storev(y + W * v, r);
        });
        done = nvec * W;
    }
    grid_stride(done, n, [&](long long i) { y[i] = relu1(x[i]); });
}

template <typename T>
__device__ __forceinline__ void bwd(const T* __restrict__ dy, const T* __restrict__ x,
                                    T* __restrict__ dx, long long n) {
    long long done = 0;
    if (aligned16(dy) && aligned16(x) && aligned16(dx)) {
        constexpr int W = VW<T>;
        const long long nvec = n / W;
        grid_stride(0, nvec, [&](long long v) {
            T g[W], r[W];
            loadv(dy + W * v, g);
            loadv(x + W * v, r);
#pragma unroll
            for (int j = 0; j < W; ++j) r[j] = relu_grad1(g[j], r[j]);
            storev(dx + W * v, r);
        });
        done = nvec * W;
    }
    grid_stride(done, n, [&](long long i) { dx[i] = relu_grad1(dy[i], x[i]); });
}

}  // namespace gg_relu

extern "C" __global__ void relu_fwd_f32(const float* x, float* y, long long n) {
    gg_relu::fwd<float>(x, y, n);
}

extern "C" __global__ void relu_fwd_f64(const double* x, double* y, long long n) {
    gg_relu::fwd<double>(x, y, n);
}

extern "C" __global__ void relu_bwd_f32(const float* dy, const float* x, float* dx, long long n) {
    gg_relu::bwd<float>(dy, x, dx, n);
}

extern "C" __global__ void relu_bwd_f64(const double* dy, const double* x, double* dx,
                                        long long n) {
    gg_relu::bwd<double>(dy, x, dx, n);
}
