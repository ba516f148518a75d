// im2col and col2im for the cuda backend, float32 and float64, on C-contiguous arrays.
// The layouts are the reference's (tinygrad_meta/backends/im2col.py):
//   x (N, C, H, W)  <->  cols (N, C*kh*kw, OH*OW), row (c*kh + i)*kw + j, column oy*OW + ox,
//   or with batch_layout = 1 one matrix (C*kh*kw, N*OH*OW), column n*OH*OW + oy*OW + ox.
//
//   im2col_{f32,f64}(x, cols, ..., pad):  one thread per element of cols, a gather: it reads
//       x[n, c, oy*sh - ph + i*dh, ox*sw - pw + j*dw], or pad outside the input
//       (0 for convolution, -inf for max pooling). Consecutive threads write consecutive
//       columns, so the stores coalesce.
//   col2im_{f32,f64}(cols, x, ...):       one thread per element of x, summing the taps
//       that read it: no atomics, so the result is deterministic, and the taps are added
//       in the reference's order ((i, j) row-major, from 0), so it is the reference's
//       result bit for bit.
//
// Sizes are int64 so any array fits; grid-stride loops, so any grid covers any size.
// No #include (NVRTC compiles this).

typedef long long tgm_i64;

template <typename T>
__device__ __forceinline__ void tgm_im2col(const T* __restrict__ x, T* __restrict__ cols,
                                           tgm_i64 n, tgm_i64 c, tgm_i64 h, tgm_i64 w,
                                           tgm_i64 kh, tgm_i64 kw, tgm_i64 sh, tgm_i64 sw,
                                           tgm_i64 ph, tgm_i64 pw, tgm_i64 dh, tgm_i64 dw,
                                           tgm_i64 oh, tgm_i64 ow, int batch_layout, T pad) {
    const tgm_i64 total = n * c * kh * kw * oh * ow;
    const tgm_i64 stride = (tgm_i64)gridDim.x * blockDim.x;
    for (tgm_i64 index = (tgm_i64)blockIdx.x * blockDim.x + threadIdx.x; index < total; index += stride) {
        tgm_i64 rest = index;
        const tgm_i64 ox = rest % ow; rest /= ow;
        const tgm_i64 oy = rest % oh; rest /= oh;
        tgm_i64 image = 0;
        if (batch_layout) { image = rest % n; rest /= n; }
        const tgm_i64 j = rest % kw; rest /= kw;
        const tgm_i64 i = rest % kh; rest /= kh;
        // the (image, channel) plane read: rest is image * c + channel, or the channel
        if (batch_layout) rest += image * c;
        const tgm_i64 iy = oy * sh - ph + i * dh;
        const tgm_i64 ix = ox * sw - pw + j * dw;
        cols[index] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? x[(rest * h + iy) * w + ix] : pad;
    }
}

template <typename T>
__device__ __forceinline__ void tgm_col2im(const T* __restrict__ cols, T* __restrict__ x,
                                           tgm_i64 n, tgm_i64 c, tgm_i64 h, tgm_i64 w,
                                           tgm_i64 kh, tgm_i64 kw, tgm_i64 sh, tgm_i64 sw,
                                           tgm_i64 ph, tgm_i64 pw, tgm_i64 dh, tgm_i64 dw,
                                           tgm_i64 oh, tgm_i64 ow, int batch_layout) {
    const tgm_i64 total = n * c * h * w;
    const tgm_i64 stride = (tgm_i64)gridDim.x * blockDim.x;
    for (tgm_i64 index = (tgm_i64)blockIdx.x * blockDim.x + threadIdx.x; index < total; index += stride) {
        const tgm_i64 ix = index % w;
        const tgm_i64 iy = (index / w) % h;
        const tgm_i64 plane = index / (w * h);
        // this plane's first tap row, and the distance between tap rows
        const T* rows = batch_layout ? cols + (plane % c) * kh * kw * n * oh * ow + (plane / c) * oh * ow
                                     : cols + plane * kh * kw * oh * ow;
        const tgm_i64 tap_stride = batch_layout ? n * oh * ow : oh * ow;
        T sum = T(0);
        for (tgm_i64 i = 0; i < kh; ++i) {
            // the output row oy whose tap i reads input row iy: oy * sh = iy + ph - i * dh
            const tgm_i64 y = iy + ph - i * dh;
            if (y < 0 || y % sh != 0 || y / sh >= oh) continue;
            const tgm_i64 oy = y / sh;
            for (tgm_i64 j = 0; j < kw; ++j) {
                const tgm_i64 xx = ix + pw - j * dw;
                if (xx < 0 || xx % sw != 0 || xx / sw >= ow) continue;
                sum += rows[(i * kw + j) * tap_stride + oy * ow + xx / sw];
            }
        }
        x[index] = sum;
    }
}

#define TGM_IM2COL_ARGS tgm_i64 n, tgm_i64 c, tgm_i64 h, tgm_i64 w, tgm_i64 kh, tgm_i64 kw, \
    tgm_i64 sh, tgm_i64 sw, tgm_i64 ph, tgm_i64 pw, tgm_i64 dh, tgm_i64 dw, tgm_i64 oh, tgm_i64 ow, \
    int batch_layout
#define TGM_IM2COL_PASS n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, batch_layout

extern "C" __global__ void im2col_f32(const float* __restrict__ x, float* __restrict__ cols,
                                      TGM_IM2COL_ARGS, float pad) {
    tgm_im2col<float>(x, cols, TGM_IM2COL_PASS, pad);
}

extern "C" __global__ void im2col_f64(const double* __restrict__ x, double* __restrict__ cols,
                                      TGM_IM2COL_ARGS, double pad) {
    tgm_im2col<double>(x, cols, TGM_IM2COL_PASS, pad);
}

extern "C" __global__ void col2im_f32(const float* __restrict__ cols, float* __restrict__ x,
                                      TGM_IM2COL_ARGS) {
    tgm_col2im<float>(cols, x, TGM_IM2COL_PASS);
}

extern "C" __global__ void col2im_f64(const double* __restrict__ cols, double* __restrict__ x,
                                      TGM_IM2COL_ARGS) {
    tgm_col2im<double>(cols, x, TGM_IM2COL_PASS);
}
