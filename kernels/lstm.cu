// lstm.cu: fused LSTM cell, one launch per time step and direction of travel.
//
// Forward, for every batch row b and hidden unit j (H hidden units):
//   gates_pre[B, 4H] = x_t W^T + h_{t-1} R^T + b   (computed by one GEMM outside),
//   gate blocks along axis 1 in MATLAB order: input, forget, cell candidate, output.
//   i = sigmoid(zi), f = sigmoid(zf), g = tanh(zg), o = sigmoid(zo)
//   c = f * c_prev + i * g,  h = o * tanh(c)
//   writes h[B,H], c[B,H] and gates[B,4H] = (i, f, g, o), saved for backward.
//
// Backward, from dh (gradient at h_t, output and recurrent paths summed) and dc
// (gradient at c_t coming from step t+1; has_dc == 0 means zero):
//   tc = tanh(c);  dct = dc + dh * o * (1 - tc^2)
//   dzi = dct * g * i (1 - i)      dzf = dct * c_prev * f (1 - f)
//   dzg = dct * i * (1 - g^2)      dzo = dh * tc * o (1 - o)
//   dc_prev = dct * f
//
// One thread per (b, j), grid-stride; consecutive threads touch consecutive j,
// so each of the four gate blocks is read and written coalesced. B*4H < 2^31
// (checked on the host).

namespace gg_lstm {

template <typename T>
__device__ __forceinline__ T sigmoid(T z);
template <>
__device__ __forceinline__ float sigmoid<float>(float z) {
    return 1.0f / (1.0f + expf(-z));  // expf(-z) -> inf for z << 0 gives 0, no NaN
}
template <>
__device__ __forceinline__ double sigmoid<double>(double z) {
    return 1.0 / (1.0 + exp(-z));
}

__device__ __forceinline__ float tanh_(float z) { return tanhf(z); }
__device__ __forceinline__ double tanh_(double z) { return tanh(z); }

template <typename T>
__device__ __forceinline__ void cell_fwd(const T* __restrict__ gates_pre,
                                         const T* __restrict__ c_prev, T* __restrict__ h,
                                         T* __restrict__ c, T* __restrict__ gates, int B,
                                         int H) {
    const int total = B * H;
    const int stride = gridDim.x * blockDim.x;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const int b = e / H;
        const int j = e - b * H;
        const int base = b * 4 * H + j;
        const T i = sigmoid<T>(gates_pre[base]);
        const T f = sigmoid<T>(gates_pre[base + H]);
        const T g = tanh_(gates_pre[base + 2 * H]);
        const T o = sigmoid<T>(gates_pre[base + 3 * H]);
        const T cn = f * c_prev[e] + i * g;
        c[e] = cn;
        h[e] = o * tanh_(cn);
        gates[base] = i;
        gates[base + H] = f;
        gates[base + 2 * H] = g;
        gates[base + 3 * H] = o;
    }
}

template <typename T>
__device__ __forceinline__ void cell_bwd(const T* __restrict__ dh, const T* __restrict__ dc,
                                         const T* __restrict__ gates,
                                         const T* __restrict__ c_prev, const T* __restrict__ c,
                                         T* __restrict__ dgates_pre, T* __restrict__ dc_prev,
                                         int B, int H, int has_dc) {
    const int total = B * H;
    const int stride = gridDim.x * blockDim.x;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const int b = e / H;
        const int j = e - b * H;
        const int base = b * 4 * H + j;
        const T i = gates[base];
        const T f = gates[base + H];
        const T g = gates[base + 2 * H];
        const T o = gates[base + 3 * H];
        const T tc = tanh_(c[e]);
        const T dhe = dh[e];
        const T dct = (has_dc ? dc[e] : T(0)) + dhe * o * (T(1) - tc * tc);
        dgates_pre[base] = dct * g * i * (T(1) - i);
        dgates_pre[base + H] = dct * c_prev[e] * f * (T(1) - f);
        dgates_pre[base + 2 * H] = dct * i * (T(1) - g * g);
        dgates_pre[base + 3 * H] = dhe * tc * o * (T(1) - o);
        dc_prev[e] = dct * f;
    }
}

}  // namespace gg_lstm

extern "C" __global__ void lstm_fwd_f32(const float* gates_pre, const float* c_prev, float* h,
                                        float* c, float* gates, int B, int H) {
    gg_lstm::cell_fwd<float>(gates_pre, c_prev, h, c, gates, B, H);
}

extern "C" __global__ void lstm_fwd_f64(const double* gates_pre, const double* c_prev, double* h,
                                        double* c, double* gates, int B, int H) {
    gg_lstm::cell_fwd<double>(gates_pre, c_prev, h, c, gates, B, H);
}

extern "C" __global__ void lstm_bwd_f32(const float* dh, const float* dc, const float* gates,
                                        const float* c_prev, const float* c, float* dgates_pre,
                                        float* dc_prev, int B, int H, int has_dc) {
    gg_lstm::cell_bwd<float>(dh, dc, gates, c_prev, c, dgates_pre, dc_prev, B, H, has_dc);
}

extern "C" __global__ void lstm_bwd_f64(const double* dh, const double* dc, const double* gates,
                                        const double* c_prev, const double* c,
                                        double* dgates_pre, double* dc_prev, int B, int H,
                                        int has_dc) {
    gg_lstm::cell_bwd<double>(dh, dc, gates, c_prev, c, dgates_pre, dc_prev, B, H, has_dc);
}
