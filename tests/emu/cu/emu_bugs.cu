// Kernels with planted bugs; the emulator must report them (tests/emu/test_emulator.py).

// A __syncthreads inside a branch that only some threads take.
extern "C" __global__ void divergent_barrier(float* x) {
    if (threadIdx.x < 16) {
        x[threadIdx.x] += 1.0f;
        __syncthreads();
    } else {
        __syncthreads();
        x[threadIdx.x] += 2.0f;
    }
}

// Early return before a barrier the others wait at.
extern "C" __global__ void early_return(const float* x, float* y, int n) {
    __shared__ float s[64];
    const int i = threadIdx.x;
    if (i >= n) return;
    s[i] = x[i];
    __syncthreads();
    y[i] = s[n - 1 - i];
}

// A shuffle whose mask names lanes that wait at a block barrier instead: deadlock.
extern "C" __global__ void shuffle_deadlock(float* x) {
    float v = x[threadIdx.x];
    if (threadIdx.x < 8) {
        v = __shfl_down_sync(0xffffffffu, v, 1);
    }
    __syncthreads();
    x[threadIdx.x] = v;
}

// Off-by-one: `<=` reads x[n] and writes y[n], one past the end.
extern "C" __global__ void off_by_one(const float* x, float* y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i <= n; i += gridDim.x * blockDim.x)
        y[i] = 2.0f * x[i];
}

// Shuffle from a lane that has exited.
extern "C" __global__ void shuffle_exited(float* x) {
    if (threadIdx.x >= 16) return;
    x[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 8);
}
