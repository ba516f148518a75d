# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: language_level=3, embedsignature=True
"""Batch norm with batch statistics and tiled max pooling, fused, for float32/float64.

The first-order array work behind the op table's ``batch_norm_train`` and
``max_pool_tiles`` entries (the rules stay in ``ops.py``); ``backends/norm_pool.py`` is
the reference these match, installed with :func:`set_reference`, which also takes every
case the kernels leave to it (other dtypes, mixed dtypes, other layouts).

* Batch norm works one channel at a time: its N runs of H*W values are read once for
  the statistics and once more, while still in cache, to normalise (or, backward, to
  form the input gradient). The statistics are sums in double precision of the values
  shifted by the channel's first value (the shifted-data variance: the shift keeps the
  sum of squares from cancelling when the mean is large against the spread), eight
  partial sums per quantity so the loop vectorises with a fixed summation order.
* Max pooling reads each kh x kw tile once. The backward recomputes which taps equal
  the tile's maximum (NaN taps equal a NaN maximum) and writes ``g / ties`` times the
  hit, the reference's arithmetic, so it is bit-exact; so is the forward, whose maximum
  is numpy's (the later tap on equality, a NaN propagating).
"""
import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from *:
    """
    #include <math.h>
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>

    /* ReLU's gradient g * (mask > 0) into out, n values: the comparison as a lane mask
       of GCC vector types, so that no branch depends on the data (a scalar compare
       compiled to branches that mispredicted on every other value), and a product, so
       that inf * 0 is NaN exactly as relu_backward gives it. */
    #define TGM_DEFINE_MASK(T, IT, SUF, ONE_BITS)                                       \\
    typedef T tgm_vec_##SUF __attribute__((vector_size(32)));                           \\
    typedef IT tgm_ivec_##SUF __attribute__((vector_size(32)));                         \\
    static void tgm_relu_mask_##SUF(const T *g, const T *mask, T *out, ptrdiff_t n) {   \\
        const ptrdiff_t w = (ptrdiff_t)(32 / sizeof(T));                                \\
        const tgm_vec_##SUF zero = {0};                                                 \\
        const tgm_ivec_##SUF one_bits = (tgm_ivec_##SUF){0} + (IT)ONE_BITS;  /* 1.0s */  \\
        ptrdiff_t i = 0;                                                                \\
        for (; i + w <= n; i += w) {                                                    \\
            tgm_vec_##SUF gv, mv, r;                                                    \\
            memcpy(&gv, g + i, sizeof gv);                                              \\
            memcpy(&mv, mask + i, sizeof mv);                                           \\
            r = gv * (tgm_vec_##SUF)((mv > zero) & one_bits);                           \\
            memcpy(out + i, &r, sizeof r);                                              \\
        }                                                                               \\
        for (; i < n; i++) out[i] = g[i] * (T)(mask[i] > 0);                            \\
    }
    TGM_DEFINE_MASK(float, int32_t, f32, 0x3f800000)
    TGM_DEFINE_MASK(double, int64_t, f64, 0x3ff0000000000000LL)

    /* Shifted sums over one channel: n runs of len values, run r at x + r * stride.
       s1 = sum(x - k), s2 = sum((x - k)^2), and with g (same layout): sg = sum(g),
       sgd = sum(g * (x - k)), g read as g * (mask > 0) where mask is given (formed
       into buf, n * len values, run r at buf + r * len, where the caller's second pass
       reads it). Eight partial sums each, combined pairwise at the end. */
    #define TGM_LANES 8
    #define TGM_DEFINE_SUMS(T, SUF)                                                     \\
    static void tgm_bn_sums_##SUF(const T *x, const T *g, const T *mask, T *buf,        \\
                                  ptrdiff_t n, ptrdiff_t len, ptrdiff_t stride,         \\
                                  double k, double out[4]) {                            \\
        double s1[TGM_LANES] = {0}, s2[TGM_LANES] = {0};                                \\
        double sg[TGM_LANES] = {0}, sgd[TGM_LANES] = {0};                               \\
        for (ptrdiff_t r = 0; r < n; r++) {                                             \\
            const T *xr = x + r * stride;                                               \\
            ptrdiff_t i = 0;                                                            \\
            if (g) {                                                                    \\
                const T *gr = g + r * stride;                                           \\
                if (mask) {  /* kept, run by run, for the caller's second pass */       \\
                    tgm_relu_mask_##SUF(gr, mask + r * stride, buf + r * len, len);     \\
                    gr = buf + r * len;                                                 \\
                }                                                                       \\
                for (; i + TGM_LANES <= len; i += TGM_LANES)                            \\
                    for (int l = 0; l < TGM_LANES; l++) {                               \\
                        double d = (double)xr[i + l] - k, gv = (double)gr[i + l];       \\
                        s1[l] += d; s2[l] += d * d; sg[l] += gv; sgd[l] += gv * d;      \\
                    }                                                                   \\
                for (; i < len; i++) {                                                  \\
                    double d = (double)xr[i] - k, gv = (double)gr[i];                   \\
                    s1[i % TGM_LANES] += d; s2[i % TGM_LANES] += d * d;                 \\
                    sg[i % TGM_LANES] += gv; sgd[i % TGM_LANES] += gv * d;              \\
                }                                                                       \\
            } else {                                                                    \\
                for (; i + TGM_LANES <= len; i += TGM_LANES)                            \\
                    for (int l = 0; l < TGM_LANES; l++) {                               \\
                        double d = (double)xr[i + l] - k;                               \\
                        s1[l] += d; s2[l] += d * d;                                     \\
                    }                                                                   \\
                for (; i < len; i++) {                                                  \\
                    double d = (double)xr[i] - k;                                       \\
                    s1[i % TGM_LANES] += d; s2[i % TGM_LANES] += d * d;                 \\
                }                                                                       \\
            }                                                                           \\
        }                                                                               \\
        for (int w = TGM_LANES / 2; w > 0; w /= 2)                                      \\
            for (int l = 0; l < w; l++) {                                               \\
                s1[l] += s1[l + w]; s2[l] += s2[l + w];                                 \\
                sg[l] += sg[l + w]; sgd[l] += sgd[l + w];                               \\
            }                                                                           \\
        out[0] = s1[0]; out[1] = s2[0]; out[2] = sg[0]; out[3] = sgd[0];                \\
    }                                                                                   \\
                                                                                        \\
    /* (mean, biased variance) of each of c channels of x (n, c, len), C order */      \\
    static void tgm_bn_stats_##SUF(const T *x, ptrdiff_t n, ptrdiff_t c, ptrdiff_t len, \\
                                   double *mean, double *var) {                         \\
        double count = (double)n * (double)len, s[4];                                   \\
        for (ptrdiff_t ch = 0; ch < c; ch++) {                                          \\
            const T *xc = x + ch * len;                                                 \\
            double k = (double)xc[0];                                                   \\
            tgm_bn_sums_##SUF(xc, NULL, NULL, NULL, n, len, c * len, k, s);                   \\
            double md = s[0] / count;                                                   \\
            mean[ch] = k + md;                                                          \\
            var[ch] = fmax(s[1] / count - md * md, 0.0);                                \\
        }                                                                               \\
    }                                                                                   \\
                                                                                        \\
    /* y = (x - mean) * (inv_std * weight) + bias, channel by channel; with relu, then  \\
       relu.pyx's max(y, 0) (y < 0 ? 0 : y, a NaN kept) */                             \\
    static void tgm_bn_fwd_##SUF(const T *x, const T *weight, const T *bias, T *y,      \\
                                 ptrdiff_t n, ptrdiff_t c, ptrdiff_t len, double eps,   \\
                                 int relu, const double *mean, const double *var) {     \\
        double count = (double)n * (double)len, s[4];                                   \\
        for (ptrdiff_t ch = 0; ch < c; ch++) {                                          \\
            const T *xc = x + ch * len;                                                 \\
            double mean_c, var_c;                                                       \\
            if (mean) {  /* given: tgm_bn_stats' of this x, the same doubles */         \\
                mean_c = mean[ch];                                                      \\
                var_c = var[ch];                                                        \\
            } else {                                                                    \\
                double k = (double)xc[0];                                               \\
                tgm_bn_sums_##SUF(xc, NULL, NULL, NULL, n, len, c * len, k, s);         \\
                double md = s[0] / count;                                               \\
                mean_c = k + md;                                                        \\
                var_c = fmax(s[1] / count - md * md, 0.0);                              \\
            }                                                                           \\
            double scale = 1.0 / sqrt(var_c + eps);                                     \\
            if (weight) scale *= (double)weight[ch];                                    \\
            T m = (T)mean_c, sc = (T)scale, b = bias ? bias[ch] : (T)0;                 \\
            for (ptrdiff_t r = 0; r < n; r++) {                                         \\
                const T *xr = xc + r * c * len;                                         \\
                T *yr = y + ch * len + r * c * len;                                     \\
                if (relu)                                                               \\
                    for (ptrdiff_t i = 0; i < len; i++) {                               \\
                        T v = (xr[i] - m) * sc + b;                                     \\
                        yr[i] = v < 0 ? 0 : v;                                          \\
                    }                                                                   \\
                else                                                                    \\
                    for (ptrdiff_t i = 0; i < len; i++) yr[i] = (xr[i] - m) * sc + b;   \\
            }                                                                           \\
        }                                                                               \\
    }                                                                                   \\
                                                                                        \\
    /* dx = s * (g - mean(g)) - (x - mean) * (s * inv_std * mean(g * normalized)),     \\
       s = inv_std * weight; dweight = sum(g * normalized), dbias = sum(g); g read as   \\
       g * (mask > 0) where mask is given */                                            \\
    static void tgm_bn_bwd_##SUF(const T *x, const T *g, const T *mask, T *buf,         \\
                                 const T *weight, T *dx, T *dweight, T *dbias,          \\
                                 ptrdiff_t n, ptrdiff_t c, ptrdiff_t len, double eps) { \\
        double count = (double)n * (double)len, s[4];                                   \\
        for (ptrdiff_t ch = 0; ch < c; ch++) {                                          \\
            const T *xc = x + ch * len, *gc = g + ch * len;                             \\
            const T *mc = mask ? mask + ch * len : NULL;                                \\
            double k = (double)xc[0];                                                   \\
            tgm_bn_sums_##SUF(xc, gc, mc, buf, n, len, c * len, k, s);                  \\
            double md = s[0] / count;                                                   \\
            double var = fmax(s[1] / count - md * md, 0.0);                             \\
            double inv_std = 1.0 / sqrt(var + eps);                                     \\
            double sum_g = s[2], sum_gn = (s[3] - md * s[2]) * inv_std;                 \\
            dweight[ch] = (T)sum_gn;                                                    \\
            dbias[ch] = (T)sum_g;                                                       \\
            double scale = weight ? inv_std * (double)weight[ch] : inv_std;             \\
            T m = (T)(k + md), a = (T)scale;                                            \\
            T bx = (T)(scale * inv_std * sum_gn / count), c0 = (T)(scale * sum_g / count); \\
            for (ptrdiff_t r = 0; r < n; r++) {                                         \\
                const T *xr = xc + r * c * len, *gr = gc + r * c * len;                 \\
                T *dr = dx + ch * len + r * c * len;                                    \\
                if (mc) gr = buf + r * len;  /* masked by the sums pass */              \\
                for (ptrdiff_t i = 0; i < len; i++)                                     \\
                    dr[i] = (gr[i] * a - c0) - (xr[i] - m) * bx;                        \\
            }                                                                           \\
        }                                                                               \\
    }                                                                                   \\
                                                                                        \\
    /* numpy's maximum: b unless a is larger or NaN (so the later tap wins a tie) */    \\
    static inline T tgm_max_##SUF(T a, T b) { return (a > b || a != a) ? a : b; }       \\
    /* whether tap v is a maximum equal to peak (a NaN tap equals a NaN peak) */        \\
    static inline T tgm_hit_##SUF(T v, T peak, int nan_peak) {                          \\
        return (T)((v == peak) | (nan_peak & (v != v)));                                \\
    }                                                                                   \\
                                                                                        \\
    /* out (planes, oh, ow) from x planes at x + p * sp, rows sh apart, columns sw */  \\
    static void tgm_pool_fwd_##SUF(const T *x, T *out, ptrdiff_t planes, ptrdiff_t oh,  \\
                                   ptrdiff_t ow, ptrdiff_t kh, ptrdiff_t kw,            \\
                                   ptrdiff_t sp, ptrdiff_t sh, ptrdiff_t sw) {          \\
        for (ptrdiff_t p = 0; p < planes; p++)                                          \\
            for (ptrdiff_t r = 0; r < oh; r++) {                                        \\
                const T *row = x + p * sp + r * kh * sh;                                \\
                T *o = out + (p * oh + r) * ow;                                         \\
                if (kh == 2 && kw == 2) {                                               \\
                    const T *below = row + sh;                                          \\
                    for (ptrdiff_t q = 0; q < ow; q++) {                                \\
                        ptrdiff_t at = 2 * q * sw;                                      \\
                        T m = tgm_max_##SUF(row[at], row[at + sw]);                     \\
                        m = tgm_max_##SUF(m, below[at]);                                \\
                        o[q] = tgm_max_##SUF(m, below[at + sw]);                        \\
                    }                                                                   \\
                    continue;                                                           \\
                }                                                                       \\
                for (ptrdiff_t q = 0; q < ow; q++) {                                    \\
                    const T *t = row + q * kw * sw;                                     \\
                    T m = t[0];                                                         \\
                    for (ptrdiff_t i = 0; i < kh; i++)                                  \\
                        for (ptrdiff_t j = (i == 0); j < kw; j++)                       \\
                            m = tgm_max_##SUF(m, t[i * sh + j * sw]);                   \\
                    o[q] = m;                                                           \\
                }                                                                       \\
            }                                                                           \\
    }                                                                                   \\
                                                                                        \\
    /* dx (planes, oh * kh, ow * kw), C order: per tile g / ties at each hit */         \\
    static void tgm_pool_bwd_##SUF(const T *g, const T *x, const T *out, T *dx,         \\
                                   ptrdiff_t planes, ptrdiff_t oh, ptrdiff_t ow,        \\
                                   ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sp,            \\
                                   ptrdiff_t sh, ptrdiff_t sw, int nan_peak) {          \\
        ptrdiff_t w = ow * kw;                                                          \\
        for (ptrdiff_t p = 0; p < planes; p++)                                          \\
            for (ptrdiff_t r = 0; r < oh; r++) {                                        \\
                const T *row = x + p * sp + r * kh * sh;                                \\
                const T *pk = out + (p * oh + r) * ow, *gr = g + (p * oh + r) * ow;     \\
                T *drow = dx + (p * oh + r) * kh * w;                                   \\
                if (kh == 2 && kw == 2) {                                               \\
                    const T *below = row + sh;                                          \\
                    T *dbelow = drow + w;                                               \\
                    for (ptrdiff_t q = 0; q < ow; q++) {                                \\
                        ptrdiff_t at = 2 * q * sw;                                      \\
                        T peak = pk[q];                                                 \\
                        T h0 = tgm_hit_##SUF(row[at], peak, nan_peak);                  \\
                        T h1 = tgm_hit_##SUF(row[at + sw], peak, nan_peak);             \\
                        T h2 = tgm_hit_##SUF(below[at], peak, nan_peak);                \\
                        T h3 = tgm_hit_##SUF(below[at + sw], peak, nan_peak);           \\
                        T share = gr[q] / (((h0 + h1) + h2) + h3);                      \\
                        drow[2 * q] = share * h0;                                       \\
                        drow[2 * q + 1] = share * h1;                                   \\
                        dbelow[2 * q] = share * h2;                                     \\
                        dbelow[2 * q + 1] = share * h3;                                 \\
                    }                                                                   \\
                    continue;                                                           \\
                }                                                                       \\
                for (ptrdiff_t q = 0; q < ow; q++) {                                    \\
                    const T *t = row + q * kw * sw;                                     \\
                    T peak = pk[q], ties = 0;                                           \\
                    for (ptrdiff_t i = 0; i < kh; i++)                                  \\
                        for (ptrdiff_t j = 0; j < kw; j++)                              \\
                            ties += tgm_hit_##SUF(t[i * sh + j * sw], peak, nan_peak);  \\
                    T share = gr[q] / ties;                                             \\
                    for (ptrdiff_t i = 0; i < kh; i++)                                  \\
                        for (ptrdiff_t j = 0; j < kw; j++)                              \\
                            drow[i * w + q * kw + j] =                                  \\
                                share * tgm_hit_##SUF(t[i * sh + j * sw], peak, nan_peak); \\
                }                                                                       \\
            }                                                                           \\
    }
    TGM_DEFINE_SUMS(float, f32)
    TGM_DEFINE_SUMS(double, f64)
    """
    void tgm_bn_stats_f32(const float *x, Py_ssize_t n, Py_ssize_t c, Py_ssize_t len,
                          double *mean, double *var) nogil
    void tgm_bn_stats_f64(const double *x, Py_ssize_t n, Py_ssize_t c, Py_ssize_t len,
                          double *mean, double *var) nogil
    void tgm_bn_fwd_f32(const float *x, const float *weight, const float *bias, float *y,
                        Py_ssize_t n, Py_ssize_t c, Py_ssize_t len, double eps, int relu,
                        const double *mean, const double *var) nogil
    void tgm_bn_fwd_f64(const double *x, const double *weight, const double *bias, double *y,
                        Py_ssize_t n, Py_ssize_t c, Py_ssize_t len, double eps, int relu,
                        const double *mean, const double *var) nogil
    void tgm_bn_bwd_f32(const float *x, const float *g, const float *mask, float *buf,
                        const float *weight, float *dx, float *dweight, float *dbias,
                        Py_ssize_t n, Py_ssize_t c, Py_ssize_t len, double eps) nogil
    void tgm_bn_bwd_f64(const double *x, const double *g, const double *mask, double *buf,
                        const double *weight, double *dx, double *dweight, double *dbias,
                        Py_ssize_t n, Py_ssize_t c, Py_ssize_t len, double eps) nogil
    void tgm_pool_fwd_f32(const float *x, float *out, Py_ssize_t planes, Py_ssize_t oh,
                          Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sp,
                          Py_ssize_t sh, Py_ssize_t sw) nogil
    void tgm_pool_fwd_f64(const double *x, double *out, Py_ssize_t planes, Py_ssize_t oh,
                          Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sp,
                          Py_ssize_t sh, Py_ssize_t sw) nogil
    void tgm_pool_bwd_f32(const float *g, const float *x, const float *out, float *dx,
                          Py_ssize_t planes, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh,
                          Py_ssize_t kw, Py_ssize_t sp, Py_ssize_t sh, Py_ssize_t sw,
                          int nan_peak) nogil
    void tgm_pool_bwd_f64(const double *g, const double *x, const double *out, double *dx,
                          Py_ssize_t planes, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh,
                          Py_ssize_t kw, Py_ssize_t sp, Py_ssize_t sh, Py_ssize_t sw,
                          int nan_peak) nogil


_reference = None
_np_ascontiguousarray = np.ascontiguousarray


def set_reference(module):
    """Install the reference module (``backends/norm_pool.py``): the cases the kernels
    do not take go to it."""
    global _reference
    _reference = module


cdef inline int _float_type(object x) noexcept:
    """NPY_FLOAT32/NPY_FLOAT64 for a native-order aligned ndarray of those, else -1."""
    cdef cnp.ndarray a
    cdef int t
    if type(x) is not cnp.ndarray:
        return -1
    a = <cnp.ndarray>x
    t = cnp.PyArray_TYPE(a)
    if (t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64) or not cnp.PyArray_ISNOTSWAPPED(a) \
            or not cnp.PyArray_ISALIGNED(a):
        return -1
    return t


cdef inline bint _channel_vector(object v, int t, Py_ssize_t channels) noexcept:
    """None, or a 1-D (channels,) array of dtype t (the kernel reads it as contiguous)."""
    if v is None:
        return True
    return (_float_type(v) == t and cnp.PyArray_NDIM(<cnp.ndarray>v) == 1
            and cnp.PyArray_DIMS(<cnp.ndarray>v)[0] == channels)


cdef inline const char *_data_or_null(object v):
    if v is None:
        return NULL
    return <const char *>cnp.PyArray_DATA(<cnp.ndarray>v)


cdef inline Py_ssize_t _spatial(cnp.ndarray x) noexcept:
    cdef Py_ssize_t size = 1
    cdef int d
    for d in range(2, cnp.PyArray_NDIM(x)):
        size *= cnp.PyArray_DIMS(x)[d]
    return size


cdef inline bint _same_shape(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef int d
    if cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(b):
        return False
    for d in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIMS(a)[d] != cnp.PyArray_DIMS(b)[d]:
            return False
    return True


cdef inline bint _bn_eligible(object x, int t) noexcept:
    """A float (N, C, ...) array with at least one value per channel."""
    return (t >= 0 and cnp.PyArray_NDIM(<cnp.ndarray>x) >= 2
            and cnp.PyArray_SIZE(<cnp.ndarray>x) > 0)


def batch_norm_train(x, weight, bias, double eps, statistics=None, int lead=0):
    """Per-channel batch norm of x (N, C, ...) with its own statistics (biased variance),
    then ``* weight + bias`` (each (C,) or None): the reference's ``batch_norm_train``.

    ``statistics``: None, or :func:`batch_norm_statistics` of this same x (its float64
    mean and variance), which then spares the statistics pass over x (the result is
    the same: those are the sums this function would take). ``lead=1``: x is (B, N, C,
    ...), B examples each normalised with its own statistics (vmap), weight and bias
    (C,) or (B, C); ``statistics`` is then not used. Returns a new C-contiguous array
    like x. float32/float64 with weight and bias of the same dtype run here; anything
    else goes to the reference.
    """
    return _batch_norm_forward(x, weight, bias, eps, False, statistics, lead)


def batch_norm_relu_train(x, weight, bias, double eps, statistics=None, int lead=0):
    """``max(batch_norm_train(x, weight, bias, eps, statistics, lead), 0)`` in the same
    pass: the reference's ``batch_norm_relu_train``."""
    return _batch_norm_forward(x, weight, bias, eps, True, statistics, lead)


cdef inline bint _given_statistics(object statistics, Py_ssize_t channels):
    """Whether ``statistics`` is a (mean, var) pair of C-contiguous float64 (C,) arrays."""
    if type(statistics) is not tuple or len(statistics) != 2:
        return False
    for v in statistics:
        if (type(v) is not cnp.ndarray or cnp.PyArray_TYPE(<cnp.ndarray>v) != cnp.NPY_FLOAT64
                or cnp.PyArray_NDIM(<cnp.ndarray>v) != 1 or cnp.PyArray_DIMS(<cnp.ndarray>v)[0] != channels
                or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>v)):
            return False
    return True


cdef inline Py_ssize_t _per_example_step(object v, int t, Py_ssize_t examples,
                                         Py_ssize_t channels) noexcept:
    """For lead=1: 0 if v is None or one (C,) vector shared by the examples, C if it is
    (B, C), one row per example; -1 otherwise (the reference takes the call)."""
    if v is None or _channel_vector(v, t, channels):
        return 0
    if (_float_type(v) == t and cnp.PyArray_NDIM(<cnp.ndarray>v) == 2
            and cnp.PyArray_DIMS(<cnp.ndarray>v)[0] == examples
            and cnp.PyArray_DIMS(<cnp.ndarray>v)[1] == channels):
        return channels
    return -1


cdef _batch_norm_forward(x, weight, bias, double eps, bint relu, statistics, int lead):
    cdef int t = _float_type(x)
    cdef cnp.ndarray X, Y
    cdef Py_ssize_t n, c, s, examples = 1, b, w_step = 0, b_step = 0, size
    cdef const char *wp
    cdef const char *bp
    cdef const double *mean = NULL
    cdef const double *var = NULL
    fallback = _reference.batch_norm_relu_train if relu else _reference.batch_norm_train
    if lead not in (0, 1):
        raise ValueError(f"batch_norm_train: lead must be 0 or 1, got {lead}")
    if lead:
        if t < 0 or cnp.PyArray_NDIM(<cnp.ndarray>x) < 3 or cnp.PyArray_SIZE(<cnp.ndarray>x) == 0:
            return fallback(x, weight, bias, eps, lead=1)
        X = <cnp.ndarray>x
        examples, c = cnp.PyArray_DIMS(X)[0], cnp.PyArray_DIMS(X)[2]
        w_step = _per_example_step(weight, t, examples, c)
        b_step = _per_example_step(bias, t, examples, c)
        if w_step < 0 or b_step < 0:
            return fallback(x, weight, bias, eps, lead=1)
        if weight is not None:
            weight = _np_ascontiguousarray(weight)
        if bias is not None:
            bias = _np_ascontiguousarray(bias)
        if not cnp.PyArray_IS_C_CONTIGUOUS(X):
            X = _np_ascontiguousarray(X)
        n, s = cnp.PyArray_DIMS(X)[1], _spatial(X) // c
        size = n * c * s  # one example's values
        Y = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(X), cnp.PyArray_DIMS(X), t, 0)
        wp, bp = _data_or_null(weight), _data_or_null(bias)
        for b in range(examples):
            if t == cnp.NPY_FLOAT32:
                tgm_bn_fwd_f32(<const float *>cnp.PyArray_DATA(X) + b * size,
                               <const float *>wp + b * w_step if wp else NULL,
                               <const float *>bp + b * b_step if bp else NULL,
                               <float *>cnp.PyArray_DATA(Y) + b * size, n, c, s, eps, relu,
                               NULL, NULL)
            else:
                tgm_bn_fwd_f64(<const double *>cnp.PyArray_DATA(X) + b * size,
                               <const double *>wp + b * w_step if wp else NULL,
                               <const double *>bp + b * b_step if bp else NULL,
                               <double *>cnp.PyArray_DATA(Y) + b * size, n, c, s, eps, relu,
                               NULL, NULL)
        return Y
    if not _bn_eligible(x, t):
        return fallback(x, weight, bias, eps)
    X = <cnp.ndarray>x
    c = cnp.PyArray_DIMS(X)[1]
    if not (_channel_vector(weight, t, c) and _channel_vector(bias, t, c)):
        return fallback(x, weight, bias, eps)
    if statistics is not None and _given_statistics(statistics, c):
        mean = <const double *>cnp.PyArray_DATA(<cnp.ndarray>statistics[0])
        var = <const double *>cnp.PyArray_DATA(<cnp.ndarray>statistics[1])
    if weight is not None:
        weight = _np_ascontiguousarray(weight)
    if bias is not None:
        bias = _np_ascontiguousarray(bias)
    if not cnp.PyArray_IS_C_CONTIGUOUS(X):
        X = _np_ascontiguousarray(X)
    n, s = cnp.PyArray_DIMS(X)[0], _spatial(X)
    Y = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(X), cnp.PyArray_DIMS(X), t, 0)
    wp, bp = _data_or_null(weight), _data_or_null(bias)
    if t == cnp.NPY_FLOAT32:
        tgm_bn_fwd_f32(<const float *>cnp.PyArray_DATA(X), <const float *>wp,
                       <const float *>bp, <float *>cnp.PyArray_DATA(Y), n, c, s, eps, relu,
                       mean, var)
    else:
        tgm_bn_fwd_f64(<const double *>cnp.PyArray_DATA(X), <const double *>wp,
                       <const double *>bp, <double *>cnp.PyArray_DATA(Y), n, c, s, eps, relu,
                       mean, var)
    return Y


def batch_norm_train_backward(x, g, weight, double eps, relu_out=None, int lead=0):
    """(input, weight, bias) gradients of <g, batch_norm_train(x, weight, ., eps)>, or
    with ``relu_out`` (batch_norm_relu_train's output) of <g, that relu'd>: the
    reference's ``batch_norm_train_backward``, two passes over each channel (the mask
    ``relu_out > 0`` applied as g is read).

    x, g (and relu_out) (N, C, ...) of one float dtype and shape, weight (C,) or None;
    returns (dx like x, C-contiguous; dweight (C,); dbias (C,)). ``lead=1``: x, g and
    relu_out are (B, N, C, ...), B examples each with its own statistics, weight (C,)
    or (B, C); dweight and dbias are then (B, C). Other cases go to the reference.
    """
    cdef int t = _float_type(x)
    cdef cnp.ndarray X, G, M, B, DX, DW, DB
    cdef const char *mp = NULL
    cdef char *bp = NULL
    cdef cnp.npy_intp s_dims
    cdef cnp.npy_intp grad_dims[2]
    cdef Py_ssize_t n, s, examples = 1, e, w_step = 0, size
    cdef cnp.npy_intp c
    cdef const char *wp
    if lead not in (0, 1):
        raise ValueError(f"batch_norm_train_backward: lead must be 0 or 1, got {lead}")
    if (not _bn_eligible(x, t) or cnp.PyArray_NDIM(<cnp.ndarray>x) < 2 + lead
            or _float_type(g) != t or not _same_shape(<cnp.ndarray>g, <cnp.ndarray>x)
            or (relu_out is not None and (_float_type(relu_out) != t
                                          or not _same_shape(<cnp.ndarray>relu_out, <cnp.ndarray>x)))):
        return _reference.batch_norm_train_backward(x, g, weight, eps, relu_out, lead=lead)
    X, G = <cnp.ndarray>x, <cnp.ndarray>g
    c = cnp.PyArray_DIMS(X)[1 + lead]
    if lead:
        examples = cnp.PyArray_DIMS(X)[0]
        w_step = _per_example_step(weight, t, examples, c)
        if w_step < 0:
            return _reference.batch_norm_train_backward(x, g, weight, eps, relu_out, lead=lead)
    elif not _channel_vector(weight, t, c):
        return _reference.batch_norm_train_backward(x, g, weight, eps, relu_out)
    s = _spatial(X) // c if lead else _spatial(X)
    if relu_out is not None:
        M = <cnp.ndarray>relu_out
        if not cnp.PyArray_IS_C_CONTIGUOUS(M):
            M = _np_ascontiguousarray(M)
        mp = <const char *>cnp.PyArray_DATA(M)
        # the masked gradient of one channel (N runs of H*W values), formed by the sums
        # pass and read again by the second (still in cache: not masked twice)
        s_dims = cnp.PyArray_DIMS(X)[lead] * s
        B = cnp.PyArray_EMPTY(1, &s_dims, t, 0)
        bp = <char *>cnp.PyArray_DATA(B)
    if weight is not None:
        weight = _np_ascontiguousarray(weight)
    if not cnp.PyArray_IS_C_CONTIGUOUS(X):
        X = _np_ascontiguousarray(X)
    if not cnp.PyArray_IS_C_CONTIGUOUS(G):
        G = _np_ascontiguousarray(G)
    n = cnp.PyArray_DIMS(X)[lead]
    size = n * c * s  # one example's values
    DX = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(X), cnp.PyArray_DIMS(X), t, 0)
    grad_dims[0], grad_dims[1] = examples, c
    DW = cnp.PyArray_EMPTY(1 + lead, &grad_dims[1 - lead], t, 0)
    DB = cnp.PyArray_EMPTY(1 + lead, &grad_dims[1 - lead], t, 0)
    wp = _data_or_null(weight)
    for e in range(examples):
        if t == cnp.NPY_FLOAT32:
            tgm_bn_bwd_f32(<const float *>cnp.PyArray_DATA(X) + e * size,
                           <const float *>cnp.PyArray_DATA(G) + e * size,
                           <const float *>mp + e * size if mp else NULL, <float *>bp,
                           <const float *>wp + e * w_step if wp else NULL,
                           <float *>cnp.PyArray_DATA(DX) + e * size,
                           <float *>cnp.PyArray_DATA(DW) + e * c,
                           <float *>cnp.PyArray_DATA(DB) + e * c, n, c, s, eps)
        else:
            tgm_bn_bwd_f64(<const double *>cnp.PyArray_DATA(X) + e * size,
                           <const double *>cnp.PyArray_DATA(G) + e * size,
                           <const double *>mp + e * size if mp else NULL, <double *>bp,
                           <const double *>wp + e * w_step if wp else NULL,
                           <double *>cnp.PyArray_DATA(DX) + e * size,
                           <double *>cnp.PyArray_DATA(DW) + e * c,
                           <double *>cnp.PyArray_DATA(DB) + e * c, n, c, s, eps)
    return DX, DW, DB


def batch_norm_statistics(x):
    """Per-channel (mean, biased variance) of x (N, C, ...): the reference's
    ``batch_norm_statistics`` in one pass (the running statistics' input), each (C,)
    in float64 (the double-precision sums, which :func:`batch_norm_train` may reuse),
    where the reference gives x's dtype."""
    cdef int t = _float_type(x)
    cdef cnp.ndarray X, M, V
    cdef Py_ssize_t n, s
    cdef cnp.npy_intp c
    if not _bn_eligible(x, t):
        return _reference.batch_norm_statistics(x)
    X = <cnp.ndarray>x
    if not cnp.PyArray_IS_C_CONTIGUOUS(X):
        X = _np_ascontiguousarray(X)
    n, c, s = cnp.PyArray_DIMS(X)[0], cnp.PyArray_DIMS(X)[1], _spatial(X)
    M = cnp.PyArray_EMPTY(1, &c, cnp.NPY_FLOAT64, 0)
    V = cnp.PyArray_EMPTY(1, &c, cnp.NPY_FLOAT64, 0)
    if t == cnp.NPY_FLOAT32:
        tgm_bn_stats_f32(<const float *>cnp.PyArray_DATA(X), n, c, s,
                         <double *>cnp.PyArray_DATA(M), <double *>cnp.PyArray_DATA(V))
    else:
        tgm_bn_stats_f64(<const double *>cnp.PyArray_DATA(X), n, c, s,
                         <double *>cnp.PyArray_DATA(M), <double *>cnp.PyArray_DATA(V))
    return M, V


cdef bint _planes_view(cnp.ndarray x, Py_ssize_t *planes, Py_ssize_t *plane_stride):
    """Whether x (..., H, W) is a stack of planes at one element stride apart (its
    leading axes collapse into one): then set their count and that stride."""
    cdef int nd = cnp.PyArray_NDIM(x), d
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x), count = 1, stride = 0, expect = -1
    for d in range(nd - 3, -1, -1):      # innermost leading axis first
        if cnp.PyArray_DIMS(x)[d] == 1:
            continue
        if expect >= 0 and cnp.PyArray_STRIDES(x)[d] != expect:
            return False
        if expect < 0:
            stride = cnp.PyArray_STRIDES(x)[d]
        expect = cnp.PyArray_STRIDES(x)[d] * cnp.PyArray_DIMS(x)[d]
        count *= cnp.PyArray_DIMS(x)[d]
    for d in range(nd - 2, nd):
        if cnp.PyArray_STRIDES(x)[d] % item or cnp.PyArray_STRIDES(x)[d] < 0:
            return False
    if stride % item or stride < 0:
        return False
    planes[0] = count
    plane_stride[0] = stride // item
    return True


cdef inline bint _tiles_eligible(object x, int t, object kernel, Py_ssize_t *kh, Py_ssize_t *kw):
    cdef cnp.ndarray a
    if t < 0 or type(kernel) is not tuple or len(kernel) != 2:
        return False
    a = <cnp.ndarray>x
    if cnp.PyArray_NDIM(a) < 2:
        return False
    kh[0], kw[0] = kernel
    if kh[0] < 1 or kw[0] < 1:
        return False
    return (cnp.PyArray_DIMS(a)[cnp.PyArray_NDIM(a) - 2] % kh[0] == 0
            and cnp.PyArray_DIMS(a)[cnp.PyArray_NDIM(a) - 1] % kw[0] == 0)


def max_pool_tiles(x, kernel):
    """The maximum of each kh x kw tile of x (..., OH * kh, OW * kw): (..., OH, OW), new
    and C-contiguous; the reference's ``max_pool_tiles``, bit for bit. Strided views
    whose leading axes collapse are read in place; other cases go to the reference."""
    cdef int t = _float_type(x), nd
    cdef cnp.ndarray X, Y
    cdef Py_ssize_t kh, kw, planes, sp, sh, sw, oh, ow, item
    cdef cnp.npy_intp dims[32]
    if not _tiles_eligible(x, t, kernel, &kh, &kw) or cnp.PyArray_NDIM(<cnp.ndarray>x) > 32:
        return _reference.max_pool_tiles(x, kernel)
    X = <cnp.ndarray>x
    if not _planes_view(X, &planes, &sp):
        X = _np_ascontiguousarray(X)
        _planes_view(X, &planes, &sp)
    nd = cnp.PyArray_NDIM(X)
    item = cnp.PyArray_ITEMSIZE(X)
    sh, sw = cnp.PyArray_STRIDES(X)[nd - 2] // item, cnp.PyArray_STRIDES(X)[nd - 1] // item
    oh, ow = cnp.PyArray_DIMS(X)[nd - 2] // kh, cnp.PyArray_DIMS(X)[nd - 1] // kw
    for d in range(nd - 2):
        dims[d] = cnp.PyArray_DIMS(X)[d]
    dims[nd - 2], dims[nd - 1] = oh, ow
    Y = cnp.PyArray_EMPTY(nd, dims, t, 0)
    if cnp.PyArray_SIZE(Y) == 0:
        return Y
    if t == cnp.NPY_FLOAT32:
        with nogil:
            tgm_pool_fwd_f32(<const float *>cnp.PyArray_DATA(X), <float *>cnp.PyArray_DATA(Y),
                             planes, oh, ow, kh, kw, sp, sh, sw)
    else:
        with nogil:
            tgm_pool_fwd_f64(<const double *>cnp.PyArray_DATA(X), <double *>cnp.PyArray_DATA(Y),
                             planes, oh, ow, kh, kw, sp, sh, sw)
    return Y


cdef int _has_nan(cnp.ndarray a, bint f32) noexcept:
    """Whether the C-contiguous float array a holds a NaN (one pass over the pooled
    maxima, a quarter of the input: the common no-NaN case then skips the NaN test)."""
    cdef Py_ssize_t i, n = cnp.PyArray_SIZE(a)
    cdef const float *pf = <const float *>cnp.PyArray_DATA(a)
    cdef const double *pd = <const double *>cnp.PyArray_DATA(a)
    cdef int found = 0
    if f32:
        for i in range(n):
            found |= pf[i] != pf[i]
    else:
        for i in range(n):
            found |= pd[i] != pd[i]
    return found


def max_pool_tiles_backward(g, x, out, kernel):
    """The gradient in x of <g, max_pool_tiles(x, kernel)>: a new C-contiguous array like
    x holding ``g / ties`` at each tile's maxima; the reference's
    ``max_pool_tiles_backward``, bit for bit, in one pass. g and out (..., OH, OW)."""
    cdef int t = _float_type(x), nd, nan_peak
    cdef cnp.ndarray X, G, P, DX
    cdef Py_ssize_t kh, kw, planes, sp, sh, sw, oh, ow, item
    if (not _tiles_eligible(x, t, kernel, &kh, &kw) or _float_type(g) != t
            or _float_type(out) != t or not _same_shape(<cnp.ndarray>g, <cnp.ndarray>out)):
        return _reference.max_pool_tiles_backward(g, x, out, kernel)
    X, G, P = <cnp.ndarray>x, <cnp.ndarray>g, <cnp.ndarray>out
    nd = cnp.PyArray_NDIM(X)
    if cnp.PyArray_NDIM(P) != nd:
        return _reference.max_pool_tiles_backward(g, x, out, kernel)
    for d in range(nd):
        if cnp.PyArray_DIMS(P)[d] != (cnp.PyArray_DIMS(X)[d] // kh if d == nd - 2 else
                                      cnp.PyArray_DIMS(X)[d] // kw if d == nd - 1 else
                                      cnp.PyArray_DIMS(X)[d]):
            return _reference.max_pool_tiles_backward(g, x, out, kernel)
    if not _planes_view(X, &planes, &sp):
        X = _np_ascontiguousarray(X)
        _planes_view(X, &planes, &sp)
    if not cnp.PyArray_IS_C_CONTIGUOUS(G):
        G = _np_ascontiguousarray(G)
    if not cnp.PyArray_IS_C_CONTIGUOUS(P):
        P = _np_ascontiguousarray(P)
    item = cnp.PyArray_ITEMSIZE(X)
    sh, sw = cnp.PyArray_STRIDES(X)[nd - 2] // item, cnp.PyArray_STRIDES(X)[nd - 1] // item
    oh, ow = cnp.PyArray_DIMS(X)[nd - 2] // kh, cnp.PyArray_DIMS(X)[nd - 1] // kw
    DX = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(X), t, 0)
    if cnp.PyArray_SIZE(DX) == 0:
        return DX
    nan_peak = _has_nan(P, t == cnp.NPY_FLOAT32)
    if t == cnp.NPY_FLOAT32:
        with nogil:
            tgm_pool_bwd_f32(<const float *>cnp.PyArray_DATA(G), <const float *>cnp.PyArray_DATA(X),
                             <const float *>cnp.PyArray_DATA(P), <float *>cnp.PyArray_DATA(DX),
                             planes, oh, ow, kh, kw, sp, sh, sw, nan_peak)
    else:
        with nogil:
            tgm_pool_bwd_f64(<const double *>cnp.PyArray_DATA(G), <const double *>cnp.PyArray_DATA(X),
                             <const double *>cnp.PyArray_DATA(P), <double *>cnp.PyArray_DATA(DX),
                             planes, oh, ow, kh, kw, sp, sh, sw, nan_peak)
    return DX
