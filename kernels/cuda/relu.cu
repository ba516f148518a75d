// ReLU for the cuda backend, float32 and float64, on contiguous arrays of n elements.
//
//   relu_forward_{f32,f64}(x, y, n):        y = max(x, 0), NaN stays NaN (as numpy.maximum)
//   relu_backward_{f32,f64}(g, x, out, n):  out = g * (x > 0) in one pass, no mask array;
//                                           written as g * 1 or g * 0 so that an inf or NaN
//                                           gradient where x <= 0 gives NaN exactly as
//                                           numpy's `g * (x > 0)` does
//   relu_forward_f32_vec4, relu_backward_f32_vec4: the same with float4 loads and stores,
//                                           for 16-byte aligned pointers (the host checks);
//                                           the last n % 4 elements are done one by one
//
// Grid-stride loops, so any grid size covers any n. No #include (NVRTC compiles this).

typedef long long tgm_i64;

template <typename T>
__device__ __forceinline__ T tgm_relu(T v) {
    // v != v is true only for NaN, which must pass through unchanged.
    return (v > T(0) || v != v) ? v : T(0);
}

template <typename T>
__device__ __forceinline__ T tgm_relu_grad(T g, T x) {
    return g * (x > T(0) ? T(1) : T(0));
}

template <typename T>
__device__ __forceinline__ void tgm_relu_forward(const T* __restrict__ x, T* __restrict__ y, tgm_i64 n) {
    const tgm_i64 stride = (tgm_i64)gridDim.x * blockDim.x;
    for (tgm_i64 i = (tgm_i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = tgm_relu(x[i]);
}

template <typename T>
__device__ __forceinline__ void tgm_relu_backward(const T* __restrict__ g, const T* __restrict__ x,
                                                  T* __restrict__ out, tgm_i64 n) {
    const tgm_i64 stride = (tgm_i64)gridDim.x * blockDim.x;
    for (tgm_i64 i = (tgm_i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = tgm_relu_grad(g[i], x[i]);
}

extern "C" __global__ void relu_forward_f32(const float* __restrict__ x, float* __restrict__ y, tgm_i64 n) {
    tgm_relu_forward<float>(x, y, n);
}

extern "C" __global__ void relu_forward_f64(const double* __restrict__ x, double* __restrict__ y, tgm_i64 n) {
    tgm_relu_forward<double>(x, y, n);
}

extern "C" __global__ void relu_backward_f32(const float* __restrict__ g, const float* __restrict__ x,
                                             float* __restrict__ out, tgm_i64 n) {
    tgm_relu_backward<float>(g, x, out, n);
}

extern "C" __global__ void relu_backward_f64(const double* __restrict__ g, const double* __restrict__ x,
                                             double* __restrict__ out, tgm_i64 n) {
    tgm_relu_backward<double>(g, x, out, n);
}

extern "C" __global__ void relu_forward_f32_vec4(const float* __restrict__ x, float* __restrict__ y, tgm_i64 n) {
    const tgm_i64 start = (tgm_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const tgm_i64 stride = (tgm_i64)gridDim.x * blockDim.x;
    const tgm_i64 n4 = n / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* y4 = reinterpret_cast<float4*>(y);
    for (tgm_i64 i = start; i < n4; i += stride) {
        const float4 v = x4[i];
        y4[i] = make_float4(tgm_relu(v.x), tgm_relu(v.y), tgm_relu(v.z), tgm_relu(v.w));
    }
    // n - 4 * n4 < 4 elements remain: the first threads of the grid take one each.
    const tgm_i64 tail = n4 * 4 + start;
    if (tail < n) y[tail] = tgm_relu(x[tail]);
}

extern "C" __global__ void relu_backward_f32_vec4(const float* __restrict__ g, const float* __restrict__ x,
                                                  float* __restrict__ out, tgm_i64 n) {
    const tgm_i64 start = (tgm_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const tgm_i64 stride = (tgm_i64)gridDim.x * blockDim.x;
    const tgm_i64 n4 = n / 4;
    const float4* g4 = reinterpret_cast<const float4*>(g);
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* o4 = reinterpret_cast<float4*>(out);
    for (tgm_i64 i = start; i < n4; i += stride) {
        const float4 gv = g4[i];
        const float4 xv = x4[i];
        o4[i] = make_float4(tgm_relu_grad(gv.x, xv.x), tgm_relu_grad(gv.y, xv.y),
                            tgm_relu_grad(gv.z, xv.z), tgm_relu_grad(gv.w, xv.w));
    }
    const tgm_i64 tail = n4 * 4 + start;
    if (tail < n) out[tail] = tgm_relu_grad(g[tail], x[tail]);
}
