// Probes of kernels/mma.cuh for tests/kernels/test_matmul_tf32.py (emulator).
#include "mma.cuh"

// One warp: D = A @ B + C with A 16x8, B 8x8 (k x n), C and D 16x8, all row-major,
// the fragments gathered exactly as the PTX ISA lays out mma.m16n8k8 .tf32.
extern "C" __global__ void mma_probe(const float* A, const float* B, const float* C, float* D) {
    const int lane = threadIdx.x;
    const int g = lane >> 2, t = lane & 3;
    const unsigned a[4] = {gg_mma::to_tf32(A[g * 8 + t]), gg_mma::to_tf32(A[(g + 8) * 8 + t]),
                           gg_mma::to_tf32(A[g * 8 + t + 4]),
                           gg_mma::to_tf32(A[(g + 8) * 8 + t + 4])};
    const unsigned b[2] = {gg_mma::to_tf32(B[t * 8 + g]), gg_mma::to_tf32(B[(t + 4) * 8 + g])};
    float d[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t],
                  C[(g + 8) * 8 + 2 * t + 1]};
    gg_mma::mma_tf32(d, a, b);
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

extern "C" __global__ void tf32_round(const float* x, float* hi, float* lo, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned h, l;
    gg_mma::split_tf32(x[i], h, l);
    hi[i] = __uint_as_float(h);
    lo[i] = __uint_as_float(l);
}

// Each thread copies x[tid] into shared memory with cp.async and reads its slot
// before and after cp.async.wait_group 0 (before: undefined on a GPU; the emulator
// defers copies to the wait, so it reads the old value).
extern "C" __global__ void cp_async_probe(const float* x, float* before, float* after) {
    __shared__ __align__(16) float s[64];
    const int tid = threadIdx.x;
    s[tid] = -1.0f;
    __syncthreads();
    if (tid % 4 == 0 && tid < 32) gg_mma::cp_async16(&s[32 + tid], &x[32 + tid]);
    gg_mma::cp_async4(&s[tid], &x[tid]);
    gg_mma::cp_async_commit();
    before[tid] = s[tid];
    gg_mma::cp_async_wait<0>();
    __syncthreads();
    after[tid] = s[tid];
    after[32 + tid] = s[32 + tid];
}
