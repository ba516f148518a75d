# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: language_level=3, embedsignature=True
"""im2col and col2im for float32 and float64: convolution's gather and its adjoint.

Same layout and results as ``tinygrad_meta/backends/im2col.py`` (the reference):
``x`` (N, C, H, W) -> ``cols`` (N, C*kh*kw, OH*OW), row ``(c*kh + i)*kw + j``,
column ``oy*OW + ox``, or with ``layout="batch"`` one (C*kh*kw, N*OH*OW) matrix,
column ``n*OH*OW + oy*OW + ox``; padding taps read ``pad_value``.

* :func:`im2col` copies each kernel tap's output rows in one pass: for tap (i, j) the
  valid output columns of a row are one contiguous range ``[ox_lo, ox_hi)``, computed
  once per tap, so the inner loop has no bounds test and the padding is two short
  fills; in the "same" geometry of unit strides (OW == W) a tap's valid rows are one
  contiguous run, copied in one loop. Exact: it only copies.
* Small or strided outputs copy planes into zero-bordered (``pad_value``-bordered)
  scratch planes first, several at a time, and gather from them through one table of
  offsets, or, in float32 with column stride 2, 8 columns at a time with AVX2 shuffles
  (the strided Omniglot layers): see ``tgm_conv_table`` and ``tgm_im2col_s2_f32``.
* :func:`col2im` adds each tap's columns back in the reference's order (taps (i, j) in
  row-major order, each input element starting from 0), so the sums are the same
  floating-point operations in the same order: bitwise equal to the reference.

Images and channels are independent, so threads (OpenMP) can split the N*C planes, above
``THREAD_MIN_ELEMENTS`` column elements (by default never: see there).
Other dtypes, byte orders and non-arrays go to the reference; non-contiguous float
arrays are copied to C order first (one pass, cheaper than the reference's strided
slicing). Sizes are validated by the reference's ``geometry`` (one set of checks and
messages for every implementation), installed with :func:`set_reference`.
"""
import numpy as np
cimport numpy as cnp
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from cython.parallel cimport prange

cnp.import_array()

cdef extern from *:
    """
    #include <string.h>
    #ifdef _OPENMP
    #include <omp.h>
    #define TGM_CONV_OPENMP 1
    static int tgm_conv_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define TGM_CONV_OPENMP 0
    static int tgm_conv_max_threads(void) { return 1; }
    #endif
    #ifndef TGM_CFLAGS
    #define TGM_CFLAGS "unknown"
    #endif

    /* The output columns ox whose input column ox*sw - pw + j*dw lies in [0, w):
       one contiguous range [*lo, *hi) inside [0, ow). */
    static void tgm_valid_range(ptrdiff_t w, ptrdiff_t ow, ptrdiff_t sw, ptrdiff_t offset,
                                ptrdiff_t *lo, ptrdiff_t *hi) {
        /* offset = pw - j*dw: input column = ox*sw - offset */
        ptrdiff_t first = offset > 0 ? (offset + sw - 1) / sw : 0;
        ptrdiff_t last = w - 1 + offset;            /* ox*sw <= last */
        ptrdiff_t end = last < 0 ? 0 : last / sw + 1;
        if (first > ow) first = ow;
        if (end > ow) end = ow;
        if (end < first) end = first;
        *lo = first; *hi = end;
    }

    /* Copy loops of a few elements per row must stay loops: gcc would otherwise turn
       each into a call to memcpy, which costs more than the copy. */
    #define TGM_CONV_NO_MEMCPY __attribute__((optimize("no-tree-loop-distribute-patterns")))

    /* One (h, w) plane -> its kh*kw rows of oh*ow columns, tap_stride apart (oh*ow in
       the per-image layout, n*oh*ow in the batch layout). */
    #define TGM_DEFINE_CONV(T, SFX)                                                      \\
    static TGM_CONV_NO_MEMCPY void tgm_im2col_plane_##SFX(const T *restrict plane,        \\
            T *restrict rows,                                                             \\
            ptrdiff_t h, ptrdiff_t w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,           \\
            ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,         \\
            ptrdiff_t oh, ptrdiff_t ow, ptrdiff_t tap_stride, T pad) {                    \\
        /* "same" geometry (unit strides, ow == w): a tap's source rows and its output \\
           rows are both w apart, so its valid output rows are one contiguous copy;   \\
           the padding columns it brings in from neighbouring rows are then reset.    \\
           Other geometries copy row by row. */                                      \\
        int same = sh == 1 && sw == 1 && ow == w;                                       \\
        for (ptrdiff_t i = 0; i < kh; i++)                                                \\
        for (ptrdiff_t j = 0; j < kw; j++) {                                              \\
            T *restrict row = rows + (i * kw + j) * tap_stride;                           \\
            ptrdiff_t lo, hi, offset = pw - j * dw;                                       \\
            tgm_valid_range(w, ow, sw, offset, &lo, &hi);                                 \\
            if (same && hi > lo) {                                                        \\
                /* output rows oy with input row oy - ph + i*dh inside [0, h) */         \\
                ptrdiff_t first = ph - i * dh, top = first > 0 ? first : 0;               \\
                ptrdiff_t bottom = h + first < oh ? h + first : oh;                       \\
                if (bottom < top) bottom = top;                                           \\
                for (ptrdiff_t e = 0; e < top * ow; e++) row[e] = pad;                    \\
                if (bottom > top) {                                                       \\
                    /* from the first valid element to the last: every source index   \\
                       in between lies inside the plane */                            \\
                    ptrdiff_t begin = top * ow + lo, count = (bottom - 1 - top) * ow + hi - lo; \\
                    const T *restrict src = plane + (top - first) * w + lo - offset;      \\
                    T *restrict dst = row + begin;                                        \\
                    for (ptrdiff_t e = 0; e < count; e++) dst[e] = src[e];                \\
                    /* column by column: lo and ow - hi are 0 or 1 for a 3x3 kernel, so   \\
                       these are runs of strided stores, not two tiny loops per row (which   \\
                       took as long as the copy: 1.8x faster im2col at 64x14x14) */          \\
                    for (ptrdiff_t ox = 0; ox < lo; ox++)                                 \\
                        for (ptrdiff_t oy = top; oy < bottom; oy++) row[oy * ow + ox] = pad; \\
                    for (ptrdiff_t ox = hi; ox < ow; ox++)                                \\
                        for (ptrdiff_t oy = top; oy < bottom; oy++) row[oy * ow + ox] = pad; \\
                }                                                                         \\
                for (ptrdiff_t e = bottom * ow; e < oh * ow; e++) row[e] = pad;           \\
                continue;                                                                 \\
            }                                                                             \\
            for (ptrdiff_t oy = 0; oy < oh; oy++) {                                       \\
                T *restrict dst = row + oy * ow;                                          \\
                ptrdiff_t iy = oy * sh - ph + i * dh;                                     \\
                if (iy < 0 || iy >= h) {                                                  \\
                    for (ptrdiff_t ox = 0; ox < ow; ox++) dst[ox] = pad;                  \\
                    continue;                                                             \\
                }                                                                         \\
                const T *restrict src = plane + iy * w - offset;                          \\
                for (ptrdiff_t ox = 0; ox < lo; ox++) dst[ox] = pad;                      \\
                if (sw == 1) {                                                            \\
                    for (ptrdiff_t ox = lo; ox < hi; ox++) dst[ox] = src[ox];             \\
                } else {                                                                  \\
                    for (ptrdiff_t ox = lo; ox < hi; ox++) dst[ox] = src[ox * sw];        \\
                }                                                                         \\
                for (ptrdiff_t ox = hi; ox < ow; ox++) dst[ox] = pad;                     \\
            }                                                                             \\
        }                                                                                 \\
    }                                                                                     \\
    /* The adjoint: kh*kw rows of oh*ow columns added into one zeroed (h, w) plane,    \\
       taps in row-major order as the reference adds them. */                            \\
    static void tgm_col2im_plane_##SFX(const T *restrict rows, T *restrict plane,         \\
            ptrdiff_t h, ptrdiff_t w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,           \\
            ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,         \\
            ptrdiff_t oh, ptrdiff_t ow, ptrdiff_t tap_stride) {                           \\
        memset(plane, 0, (size_t)(h * w) * sizeof(T));                                   \\
        for (ptrdiff_t i = 0; i < kh; i++)                                                \\
        for (ptrdiff_t j = 0; j < kw; j++) {                                              \\
            const T *restrict row = rows + (i * kw + j) * tap_stride;                     \\
            ptrdiff_t lo, hi, offset = pw - j * dw;                                       \\
            tgm_valid_range(w, ow, sw, offset, &lo, &hi);                                 \\
            for (ptrdiff_t oy = 0; oy < oh; oy++) {                                       \\
                ptrdiff_t iy = oy * sh - ph + i * dh;                                     \\
                if (iy < 0 || iy >= h) continue;                                          \\
                const T *restrict src = row + oy * ow;                                    \\
                T *restrict dst = plane + iy * w - offset;                                \\
                if (sw == 1) {                                                            \\
                    for (ptrdiff_t ox = lo; ox < hi; ox++) dst[ox] += src[ox];            \\
                } else {                                                                  \\
                    for (ptrdiff_t ox = lo; ox < hi; ox++) dst[ox * sw] += src[ox];       \\
                }                                                                         \\
            }                                                                             \\
        }                                                                                 \\
    }
    TGM_DEFINE_CONV(float, f32)
    TGM_DEFINE_CONV(double, f64)

    /* Small outputs and strided geometries: the loops above run a few elements per
       row and tap, and their loop overhead costs more than the copy. Instead planes are
       first copied into scratch planes with a border of padding ((h + 2ph) x (w + 2pw),
       in L1), where every tap of every output position is a valid element, so a
       gather is one read per column with no bounds test; and several planes go
       through one pass, so each inner loop runs over the columns of all of them (a
       4x4 stride-2 output has 4 columns per plane and tap).
       The offsets are tabulated once per call (every group of planes reads the same
       ones): "runs" of run_len contiguous columns, table_run entries apart in the
       table. col2im adds run by run into zeroed scratch planes, then copies their
       interiors out; each element gets its taps in row-major order from 0, as in the
       reference, so it stays exact. */
    static void tgm_conv_table(int *restrict table, ptrdiff_t planes, ptrdiff_t plane_stride,
            ptrdiff_t row_width, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
            ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t oh, ptrdiff_t ow, int taps_outer) {
        /* taps_outer: tap-major (a run per tap holding every plane's columns: the
           batch layout) or plane-major (one run: the per-image layout) */
        ptrdiff_t length = oh * ow, taps = kh * kw;
        for (ptrdiff_t p = 0; p < planes; p++)
        for (ptrdiff_t i = 0; i < kh; i++)
        for (ptrdiff_t j = 0; j < kw; j++) {
            ptrdiff_t t = i * kw + j;
            int *restrict at = table + (taps_outer ? (t * planes + p) * length : (p * taps + t) * length);
            for (ptrdiff_t oy = 0; oy < oh; oy++)
            for (ptrdiff_t ox = 0; ox < ow; ox++)
                at[oy * ow + ox] = (int)(p * plane_stride + (oy * sh + i * dh) * row_width + ox * sw + j * dw);
        }
    }
    #define TGM_DEFINE_TABLE(T, SFX)                                                     \\
    /* count planes (src_stride apart) -> the interiors of scratch planes of      \\
       (h + 2ph) x (w + 2pw), scratch_stride apart; the borders stay as they are */ \\
    static TGM_CONV_NO_MEMCPY void tgm_pad_planes_##SFX(const T *restrict src,            \\
            ptrdiff_t src_stride, T *restrict scratch, ptrdiff_t scratch_stride,           \\
            ptrdiff_t count, ptrdiff_t h, ptrdiff_t w, ptrdiff_t ph, ptrdiff_t pw) {       \\
        ptrdiff_t row_width = w + 2 * pw;                                                 \\
        for (ptrdiff_t p = 0; p < count; p++)                                             \\
        for (ptrdiff_t y = 0; y < h; y++) {                                               \\
            const T *restrict from = src + p * src_stride + y * w;                        \\
            T *restrict to = scratch + p * scratch_stride + (y + ph) * row_width + pw;    \\
            for (ptrdiff_t x = 0; x < w; x++) to[x] = from[x];                            \\
        }                                                                                 \\
    }                                                                                     \\
    /* the reverse: the interiors of count scratch planes -> planes dst_stride apart */  \\
    static TGM_CONV_NO_MEMCPY void tgm_unpad_planes_##SFX(const T *restrict scratch,      \\
            ptrdiff_t scratch_stride, T *restrict dst, ptrdiff_t dst_stride,               \\
            ptrdiff_t count, ptrdiff_t h, ptrdiff_t w, ptrdiff_t ph, ptrdiff_t pw) {       \\
        ptrdiff_t row_width = w + 2 * pw;                                                 \\
        for (ptrdiff_t p = 0; p < count; p++)                                             \\
        for (ptrdiff_t y = 0; y < h; y++) {                                               \\
            const T *restrict from = scratch + p * scratch_stride + (y + ph) * row_width + pw; \\
            T *restrict to = dst + p * dst_stride + y * w;                                \\
            for (ptrdiff_t x = 0; x < w; x++) to[x] = from[x];                            \\
        }                                                                                 \\
    }                                                                                     \\
    static void tgm_gather_runs_##SFX(const T *restrict src, T *restrict out,             \\
            const int *restrict table, ptrdiff_t runs, ptrdiff_t run_len,                 \\
            ptrdiff_t table_run, ptrdiff_t out_run) {                                     \\
        for (ptrdiff_t r = 0; r < runs; r++) {                                            \\
            T *restrict o = out + r * out_run;                                            \\
            const int *restrict at = table + r * table_run;                               \\
            for (ptrdiff_t l = 0; l < run_len; l++) o[l] = src[at[l]];                    \\
        }                                                                                 \\
    }                                                                                     \\
    /* runs in order; inside a run in order too (a plane-major run holds several taps  \\
       of one element, added in row-major tap order) */                               \\
    static void tgm_scatter_add_runs_##SFX(const T *restrict in, T *restrict dst,         \\
            const int *restrict table, ptrdiff_t runs, ptrdiff_t run_len,                 \\
            ptrdiff_t table_run, ptrdiff_t in_run) {                                      \\
        for (ptrdiff_t r = 0; r < runs; r++) {                                            \\
            const T *restrict i = in + r * in_run;                                        \\
            const int *restrict at = table + r * table_run;                               \\
            for (ptrdiff_t l = 0; l < run_len; l++) dst[at[l]] += i[l];                   \\
        }                                                                                 \\
    }
    TGM_DEFINE_TABLE(float, f32)
    TGM_DEFINE_TABLE(double, f64)

    /* Column stride 2 in float32 (the strided Omniglot layers), on padded scratch
       planes as above but with no table: a tap's output row is the even elements of
       2*ow padded floats, with AVX2 8 at a time from two loads and two shuffles (an
       L1 gather costs ~0.6 ns per element here, this ~0.06). A store writes 8
       columns; those past the row belong to later rows of the same run, written after
       it (stores go in increasing order), so only a run's last columns go one by one.
       Reads (and col2im's rewrites of unchanged values) reach up to 15 floats past a
       padded row: scratch blocks end with TGM_CONV_MARGIN spare floats.
       Segments (plane p, tap t) of ow*oh columns: in the batch layout a run per tap
       holding the count planes' columns side by side, else one run, planes then taps. */
    #define TGM_CONV_MARGIN 32
    #if defined(__AVX2__)
    #include <immintrin.h>
    #define TGM_CONV_STRIDE2 1
    #else
    #define TGM_CONV_STRIDE2 0
    #endif
    /* one segment: oh rows of ow columns at o[at], from padded rows sh*row_width apart;
       at + 8 <= limit: a store of 8 there stays inside what is written after it */
    static inline void tgm_im2col_s2_segment(const float *restrict from, float *restrict o,
            ptrdiff_t at, ptrdiff_t limit, ptrdiff_t row_step, ptrdiff_t oh, ptrdiff_t ow) {
        for (ptrdiff_t oy = 0; oy < oh; oy++, from += row_step, at += ow) {
            ptrdiff_t ox = 0;
    #if TGM_CONV_STRIDE2
            for (; ox < ow && at + ox + 8 <= limit; ox += 8) {
                __m256 a = _mm256_loadu_ps(from + 2 * ox), b = _mm256_loadu_ps(from + 2 * ox + 8);
                /* the evens come in lane order 0 1 4 5 | 2 3 6 7: put them back in order */
                __m256 even = _mm256_shuffle_ps(a, b, 0x88);
                _mm256_storeu_ps(o + at + ox, _mm256_castpd_ps(
                    _mm256_permute4x64_pd(_mm256_castps_pd(even), 0xD8)));
            }
    #endif
            for (; ox < ow; ox++) o[at + ox] = from[2 * ox];
        }
    }
    static void tgm_im2col_s2_f32(const float *restrict scratch, ptrdiff_t scratch_stride,
            ptrdiff_t row_width, ptrdiff_t count, float *restrict out, ptrdiff_t out_run,
            int batch_layout, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t dh,
            ptrdiff_t dw, ptrdiff_t oh, ptrdiff_t ow) {
        ptrdiff_t length = oh * ow, row_step = sh * row_width;
        if (batch_layout) {
            for (ptrdiff_t i = 0; i < kh; i++)
            for (ptrdiff_t j = 0; j < kw; j++) {
                float *restrict o = out + (i * kw + j) * out_run;
                const float *from = scratch + i * dh * row_width + j * dw;
                for (ptrdiff_t p = 0; p < count; p++)
                    tgm_im2col_s2_segment(from + p * scratch_stride, o, p * length, count * length,
                                          row_step, oh, ow);
            }
            return;
        }
        for (ptrdiff_t p = 0, at = 0; p < count; p++)
        for (ptrdiff_t i = 0; i < kh; i++)
        for (ptrdiff_t j = 0; j < kw; j++, at += length)
            tgm_im2col_s2_segment(scratch + p * scratch_stride + i * dh * row_width + j * dw, out,
                                  at, count * kh * kw * length, row_step, oh, ow);
    }
    /* The adjoint of a segment, into zeroed scratch: each column added to its even
       element (a blend keeps the odd ones and the lanes past the row untouched, bit for
       bit); reads of the columns stay below limit. */
    static inline void tgm_col2im_s2_segment(const float *restrict in, float *restrict to,
            ptrdiff_t at, ptrdiff_t limit, ptrdiff_t row_step, ptrdiff_t oh, ptrdiff_t ow) {
    #if TGM_CONV_STRIDE2
        /* lane k of the shuffled evens holds element order[k] of the 8 */
        const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    #endif
        for (ptrdiff_t oy = 0; oy < oh; oy++, to += row_step, at += ow) {
            ptrdiff_t ox = 0;
    #if TGM_CONV_STRIDE2
            for (; ox < ow && at + ox + 8 <= limit; ox += 8) {
                __m256 a = _mm256_loadu_ps(to + 2 * ox), b = _mm256_loadu_ps(to + 2 * ox + 8);
                __m256 even = _mm256_shuffle_ps(a, b, 0x88), odd = _mm256_shuffle_ps(a, b, 0xDD);
                __m256 add = _mm256_castpd_ps(_mm256_permute4x64_pd(
                    _mm256_castps_pd(_mm256_loadu_ps(in + at + ox)), 0xD8));
                __m256 inside = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                    _mm256_set1_epi32((int)(ow - ox)), order));
                even = _mm256_blendv_ps(even, _mm256_add_ps(even, add), inside);
                _mm256_storeu_ps(to + 2 * ox, _mm256_unpacklo_ps(even, odd));
                _mm256_storeu_ps(to + 2 * ox + 8, _mm256_unpackhi_ps(even, odd));
            }
    #endif
            for (; ox < ow; ox++) to[2 * ox] += in[at + ox];
        }
    }
    /* taps in row-major order for every plane, as the reference adds them */
    static void tgm_col2im_s2_f32(const float *restrict in, ptrdiff_t in_run,
            float *restrict scratch, ptrdiff_t scratch_stride, ptrdiff_t row_width,
            ptrdiff_t count, int batch_layout, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
            ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t oh, ptrdiff_t ow) {
        ptrdiff_t length = oh * ow, row_step = sh * row_width;
        if (batch_layout) {
            for (ptrdiff_t i = 0; i < kh; i++)
            for (ptrdiff_t j = 0; j < kw; j++) {
                const float *restrict run = in + (i * kw + j) * in_run;
                float *to = scratch + i * dh * row_width + j * dw;
                for (ptrdiff_t p = 0; p < count; p++)
                    tgm_col2im_s2_segment(run, to + p * scratch_stride, p * length, count * length,
                                          row_step, oh, ow);
            }
            return;
        }
        for (ptrdiff_t p = 0, at = 0; p < count; p++)
        for (ptrdiff_t i = 0; i < kh; i++)
        for (ptrdiff_t j = 0; j < kw; j++, at += length)
            tgm_col2im_s2_segment(in, scratch + p * scratch_stride + i * dh * row_width + j * dw,
                                  at, count * kh * kw * length, row_step, oh, ow);
    }
    """
    int TGM_CONV_OPENMP
    int TGM_CONV_MARGIN
    const char *TGM_CFLAGS
    int tgm_conv_max_threads() nogil
    void tgm_im2col_plane_f32(const float *plane, float *rows, Py_ssize_t h, Py_ssize_t w,
                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                              Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t tap_stride, float pad) nogil
    void tgm_im2col_plane_f64(const double *plane, double *rows, Py_ssize_t h, Py_ssize_t w,
                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                              Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t tap_stride, double pad) nogil
    void tgm_col2im_plane_f32(const float *rows, float *plane, Py_ssize_t h, Py_ssize_t w,
                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                              Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t tap_stride) nogil
    void tgm_col2im_plane_f64(const double *rows, double *plane, Py_ssize_t h, Py_ssize_t w,
                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                              Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t tap_stride) nogil
    void tgm_conv_table(int *table, Py_ssize_t planes, Py_ssize_t plane_stride,
                        Py_ssize_t row_width, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                        Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t oh,
                        Py_ssize_t ow, int taps_outer) nogil
    int TGM_CONV_STRIDE2
    void tgm_im2col_s2_f32(const float *scratch, Py_ssize_t scratch_stride, Py_ssize_t row_width,
                           Py_ssize_t count, float *out, Py_ssize_t out_run, int batch_layout,
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t dh,
                           Py_ssize_t dw, Py_ssize_t oh, Py_ssize_t ow) nogil
    void tgm_col2im_s2_f32(const float *inp, Py_ssize_t in_run, float *scratch,
                           Py_ssize_t scratch_stride, Py_ssize_t row_width, Py_ssize_t count,
                           int batch_layout, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                           Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t oh, Py_ssize_t ow) nogil
    void tgm_pad_planes_f32(const float *src, Py_ssize_t src_stride, float *scratch,
                            Py_ssize_t scratch_stride, Py_ssize_t count, Py_ssize_t h,
                            Py_ssize_t w, Py_ssize_t ph, Py_ssize_t pw) nogil
    void tgm_unpad_planes_f32(const float *scratch, Py_ssize_t scratch_stride, float *dst,
                              Py_ssize_t dst_stride, Py_ssize_t count, Py_ssize_t h,
                              Py_ssize_t w, Py_ssize_t ph, Py_ssize_t pw) nogil
    void tgm_gather_runs_f32(const float *src, float *out, const int *table, Py_ssize_t runs,
                             Py_ssize_t run_len, Py_ssize_t table_run, Py_ssize_t out_run) nogil
    void tgm_scatter_add_runs_f32(const float *inp, float *dst, const int *table, Py_ssize_t runs,
                                  Py_ssize_t run_len, Py_ssize_t table_run, Py_ssize_t in_run) nogil
    void tgm_pad_planes_f64(const double *src, Py_ssize_t src_stride, double *scratch,
                            Py_ssize_t scratch_stride, Py_ssize_t count, Py_ssize_t h,
                            Py_ssize_t w, Py_ssize_t ph, Py_ssize_t pw) nogil
    void tgm_unpad_planes_f64(const double *scratch, Py_ssize_t scratch_stride, double *dst,
                              Py_ssize_t dst_stride, Py_ssize_t count, Py_ssize_t h,
                              Py_ssize_t w, Py_ssize_t ph, Py_ssize_t pw) nogil
    void tgm_gather_runs_f64(const double *src, double *out, const int *table, Py_ssize_t runs,
                             Py_ssize_t run_len, Py_ssize_t table_run, Py_ssize_t out_run) nogil
    void tgm_scatter_add_runs_f64(const double *inp, double *dst, const int *table, Py_ssize_t runs,
                                  Py_ssize_t run_len, Py_ssize_t table_run, Py_ssize_t in_run) nogil

# Threads only above this many column elements: by default never. Both passes are
# memory-bound (im2col at the largest Omniglot layer, 11.3M columns, took 27 ms against
# 21 ms for numpy to allocate and fill an array that size), and on the 2-core machine we
# measured, shared with other jobs, two threads were slower at every Omniglot shape
# (e.g. 39 vs 36 ms and 22 vs 17 ms at that layer). set_thread_min_elements turns them on.
cdef Py_ssize_t THREAD_MIN_ELEMENTS = 1 << 62
cdef int _num_threads = 0

BUILD_INFO = {
    "cflags": TGM_CFLAGS.decode("ascii"),
    "openmp": bool(TGM_CONV_OPENMP),
    "max_threads": tgm_conv_max_threads(),
}

_reference = None


def set_reference(module):
    """Install the reference module (``tinygrad_meta.backends.im2col``): its ``geometry``
    validates every call and its functions take the cases these kernels do not."""
    global _reference
    _reference = module


def set_num_threads(int n):
    """Use at most ``n`` OpenMP threads (n <= 0: the OpenMP default). Returns the old value."""
    global _num_threads
    old = _num_threads
    _num_threads = n
    return old


def set_thread_min_elements(Py_ssize_t elements):
    """Run threaded only when the columns hold more than ``elements`` values (returns
    the old threshold)."""
    global THREAD_MIN_ELEMENTS
    old = THREAD_MIN_ELEMENTS
    THREAD_MIN_ELEMENTS = elements
    return old


cdef inline int _threads_for(Py_ssize_t elements) noexcept nogil:
    if elements <= THREAD_MIN_ELEMENTS:
        return 1
    return _num_threads if _num_threads > 0 else tgm_conv_max_threads()


cdef inline bint _native_float(object x) noexcept:
    cdef int t
    if type(x) is not cnp.ndarray:
        return False
    t = cnp.PyArray_TYPE(<cnp.ndarray>x)
    return ((t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>x) and cnp.PyArray_ISALIGNED(<cnp.ndarray>x))


_np_ascontiguousarray = np.ascontiguousarray


cdef struct Geometry:
    Py_ssize_t n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow
    bint batch_layout      # columns (C*kh*kw, N*OH*OW) instead of (N, C*kh*kw, OH*OW)
    int *table             # the tabulated offsets (tgm_conv_table) or NULL: see _table_for
    bint stride2           # the column-stride-2 float32 passes (tgm_im2col_s2_f32), no table
    Py_ssize_t group       # planes per pass of those two
    Py_ssize_t scratch_plane   # elements of one padded scratch plane; 0 without padding,
                               # where the tabulated passes read or write the planes in place


# The tabulated passes (tgm_conv_table) run where the loops over rows would run only a
# few elements per row and tap: outputs of fewer than TABLE_MAX_SAME_COLUMNS positions
# in the "same" geometry (unit strides, OW == W), fewer than TABLE_MAX_COLUMNS in every
# other one, if the table has at most TABLE_MAX_ENTRIES entries. Measured with
# benchmarks/conv.py --kernels (whole batches, per-image layout; loops/table time, one
# run on the shared 2-core machine): the table made im2col 6.1x / col2im 2.7x faster at
# 80x64x4x4 stride 2, 2.7x / 1.5x at 7x7 stride 2, 2.0x / 2.4x at 100x64x3x3 stride 1,
# 1.3x / 0.9x at 14x14 stride 2; the loops were faster at 7x7 stride 1 (im2col 0.71x)
# and the 14x14 and 28x28 "same" layers (0.24-0.71x), which copy whole tap rows.
# Float32 with column stride 2 takes the stride-2 passes instead (STRIDE2, where AVX2
# was compiled in) at outputs of STRIDE2_MIN_COLUMNS columns and wider: against the
# loops, im2col 3.5x / col2im 1.5x at 80x1x28x28 stride 2, 1.8x / 0.9x at 14x14 (and
# against the previous table, interleaved in one process at 25x64x14x14 in the batch
# layout, 1.4x / 1.25x).
cdef Py_ssize_t TABLE_MAX_SAME_COLUMNS = 32
cdef Py_ssize_t TABLE_MAX_COLUMNS = 100
cdef Py_ssize_t TABLE_MAX_ENTRIES = 1 << 16
# Those passes take planes in groups of about this many columns per tap (at least one
# plane), so that their inner loops are long even where one plane has 4 columns
# (col2im at 800x64x4x4 stride 2: one plane per pass 2.5x slower than 128 columns;
# 128, 256 and 512 alike within the noise, 256 keeps table and scratch in L1).
cdef Py_ssize_t GROUP_COLUMNS = 256
cdef bint STRIDE2 = TGM_CONV_STRIDE2
# ... for outputs at least this wide: a store of 8 columns then carries 6 or more
# (at 7x7 -> 4x4 it carried 4 and was no faster than the table, at 4x4 -> 2x2 slower)
cdef Py_ssize_t STRIDE2_MIN_COLUMNS = 6
STRIDE2_BUILT = bool(TGM_CONV_STRIDE2)


def set_table_limits(Py_ssize_t max_same_columns=-1, Py_ssize_t max_columns=-1,
                     Py_ssize_t max_entries=-1, Py_ssize_t group_columns=-1):
    """Set when the tabulated passes run (-1 keeps a value; max_entries=0 turns them
    off) and how many columns per tap one pass takes (``group_columns``; 1: one plane
    at a time); returns the old (max_same_columns, max_columns, max_entries,
    group_columns), so ``set_table_limits(*old)`` restores them. For tuning and for
    tests that force each path."""
    global TABLE_MAX_SAME_COLUMNS, TABLE_MAX_COLUMNS, TABLE_MAX_ENTRIES, GROUP_COLUMNS
    old = (TABLE_MAX_SAME_COLUMNS, TABLE_MAX_COLUMNS, TABLE_MAX_ENTRIES, GROUP_COLUMNS)
    if max_same_columns >= 0:
        TABLE_MAX_SAME_COLUMNS = max_same_columns
    if max_columns >= 0:
        TABLE_MAX_COLUMNS = max_columns
    if max_entries >= 0:
        TABLE_MAX_ENTRIES = max_entries
    if group_columns >= 0:
        GROUP_COLUMNS = group_columns
    return old


def set_stride2(bint enabled, Py_ssize_t min_columns=-1):
    """Turn the column-stride-2 float32 passes on or off (on by default where
    ``STRIDE2_BUILT``; off, those calls take the table or the row loops) and set the
    narrowest output they take (``min_columns``, -1 keeps it); returns the old
    (enabled, min_columns). Where AVX2 was not compiled in they run scalar loops."""
    global STRIDE2, STRIDE2_MIN_COLUMNS
    old = (STRIDE2, STRIDE2_MIN_COLUMNS)
    STRIDE2 = enabled
    if min_columns >= 0:
        STRIDE2_MIN_COLUMNS = min_columns
    return old


cdef Py_ssize_t _group_size(Geometry *g, Py_ssize_t columns) noexcept:
    cdef Py_ssize_t planes = g.n if g.batch_layout else g.n * g.c
    return max(1, min((GROUP_COLUMNS + columns - 1) // columns, planes))


cdef int _table_for(Geometry *g, bint f32) except -1:
    """Choose the passes of one call: fill g.table (the caller frees it) or set
    g.stride2, with g.group and g.scratch_plane; neither: the row loops."""
    cdef Py_ssize_t columns = g.oh * g.ow, taps = g.kh * g.kw
    cdef Py_ssize_t row_width = g.w + 2 * g.pw, padded = (g.h + 2 * g.ph) * row_width
    cdef Py_ssize_t plane_stride, group
    cdef bint same = g.sh == 1 and g.sw == 1 and g.ow == g.w
    g.table = NULL
    g.stride2 = False
    g.group = 1
    g.scratch_plane = 0
    if columns * taps == 0 or padded > 4 * taps * columns:
        return 0   # (large strides: copying a plane into scratch would cost more than its gather)
    if STRIDE2 and f32 and g.sw == 2 and g.ow >= STRIDE2_MIN_COLUMNS and padded < (1 << 24):
        g.stride2 = True
        g.group = _group_size(g, columns)
        g.scratch_plane = padded
        return 0
    if columns * taps > TABLE_MAX_ENTRIES:
        return 0
    if columns >= (TABLE_MAX_SAME_COLUMNS if same else TABLE_MAX_COLUMNS):
        return 0
    group = min(_group_size(g, columns), max(1, TABLE_MAX_ENTRIES // (taps * columns)))
    if g.ph or g.pw:
        g.scratch_plane = padded
        plane_stride = padded
    else:   # the planes themselves, as they lie in the input (or the image) array
        row_width = g.w
        plane_stride = g.c * g.h * g.w if g.batch_layout else g.h * g.w
    if group * plane_stride + padded >= (1 << 31):
        g.scratch_plane = 0
        return 0   # int offsets
    g.group = group
    g.table = <int *>malloc(group * taps * columns * sizeof(int))
    if g.table == NULL:
        raise MemoryError("im2col/col2im: could not allocate the offset table")
    tgm_conv_table(g.table, group, plane_stride, row_width, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw,
                   g.oh, g.ow, g.batch_layout)
    return 0


cdef inline Py_ssize_t _tap_stride(Geometry *g) noexcept nogil:
    """Elements between the rows of consecutive taps of one plane."""
    return g.n * g.oh * g.ow if g.batch_layout else g.oh * g.ow


cdef inline Py_ssize_t _rows_offset(Py_ssize_t p, Geometry *g) noexcept nogil:
    """Where plane p = image * C + channel's first tap row starts in the columns."""
    cdef Py_ssize_t taps = g.kh * g.kw, columns = g.oh * g.ow
    if g.batch_layout:
        return (p % g.c) * taps * g.n * columns + (p // g.c) * columns
    return p * taps * columns


cdef inline void _im2col_plane(const char *src, char *dst, Py_ssize_t p, Geometry *g,
                               bint f32, double pad) noexcept nogil:
    cdef Py_ssize_t plane_in = g.h * g.w, rows = _rows_offset(p, g), tap_stride = _tap_stride(g)
    if f32:
        tgm_im2col_plane_f32(<const float *>src + p * plane_in, <float *>dst + rows,
                             g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw,
                             g.oh, g.ow, tap_stride, <float>pad)
    else:
        tgm_im2col_plane_f64(<const double *>src + p * plane_in, <double *>dst + rows,
                             g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw,
                             g.oh, g.ow, tap_stride, pad)


cdef inline void _col2im_plane(const char *src, char *dst, Py_ssize_t p, Geometry *g,
                               bint f32) noexcept nogil:
    cdef Py_ssize_t plane_in = g.h * g.w, rows = _rows_offset(p, g), tap_stride = _tap_stride(g)
    if f32:
        tgm_col2im_plane_f32(<const float *>src + rows, <float *>dst + p * plane_in,
                             g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw,
                             g.oh, g.ow, tap_stride)
    else:
        tgm_col2im_plane_f64(<const double *>src + rows, <double *>dst + p * plane_in,
                             g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw,
                             g.oh, g.ow, tap_stride)


cdef inline Py_ssize_t _plane(Py_ssize_t q, Geometry *g) noexcept nogil:
    """The plane (image * C + channel) visited q-th. In the batch layout channel by
    channel, images inside: consecutive planes then fill (or read) consecutive stretches
    of the same column rows, instead of strides of C*kh*kw rows apart (at the Omniglot
    shapes, image order made both passes 1.3-8x slower)."""
    if g.batch_layout:
        return (q % g.n) * g.c + q // g.n
    return q


cdef void _group_pass(const char *src, char *dst, Py_ssize_t q, Geometry *g, bint f32,
                      bint adjoint, char *scratch) noexcept nogil:
    """The q-th group of g.group planes through the table or the stride-2 passes: in
    the batch layout images of one channel (whose columns lie side by side in each tap
    row), in the per-image layout consecutive planes (one contiguous stretch of columns)."""
    cdef Py_ssize_t taps = g.kh * g.kw, columns = g.oh * g.ow, per_channel, channel, first
    cdef Py_ssize_t count, plane_offset, plane_stride, cols_offset, runs, run_len
    cdef Py_ssize_t table_run, cols_run, p, item = 4 if f32 else 8
    cdef Py_ssize_t row_width = g.w + 2 * g.pw
    cdef char *planes
    cdef char *target
    if g.batch_layout:
        per_channel = (g.n + g.group - 1) // g.group
        channel = q // per_channel
        first = (q % per_channel) * g.group
        count = min(g.group, g.n - first)
        plane_offset = (first * g.c + channel) * g.h * g.w
        plane_stride = g.c * g.h * g.w
        cols_offset = channel * taps * g.n * columns + first * columns
        runs, run_len, table_run, cols_run = taps, count * columns, g.group * columns, g.n * columns
    else:
        first = q * g.group
        count = min(g.group, g.n * g.c - first)
        plane_offset = first * g.h * g.w
        plane_stride = g.h * g.w
        cols_offset = first * taps * columns
        runs, run_len, table_run, cols_run = 1, count * taps * columns, 0, 0
    if not adjoint:
        if g.scratch_plane:
            if f32:
                tgm_pad_planes_f32(<const float *>src + plane_offset, plane_stride, <float *>scratch,
                                   g.scratch_plane, count, g.h, g.w, g.ph, g.pw)
            else:
                tgm_pad_planes_f64(<const double *>src + plane_offset, plane_stride,
                                   <double *>scratch, g.scratch_plane, count, g.h, g.w, g.ph, g.pw)
            src = scratch
        else:
            src = src + plane_offset * item
        if g.stride2:
            tgm_im2col_s2_f32(<const float *>src, g.scratch_plane, row_width, count,
                              <float *>dst + cols_offset, cols_run, g.batch_layout,
                              g.kh, g.kw, g.sh, g.dh, g.dw, g.oh, g.ow)
        elif f32:
            tgm_gather_runs_f32(<const float *>src, <float *>dst + cols_offset, g.table, runs,
                                run_len, table_run, cols_run)
        else:
            tgm_gather_runs_f64(<const double *>src, <double *>dst + cols_offset, g.table, runs,
                                run_len, table_run, cols_run)
        return
    planes = dst + plane_offset * item
    if g.scratch_plane:
        memset(scratch, 0, count * g.scratch_plane * item)
        target = scratch
    else:
        for p in range(count):
            memset(planes + p * plane_stride * item, 0, g.h * g.w * item)
        target = planes
    if g.stride2:
        tgm_col2im_s2_f32(<const float *>src + cols_offset, cols_run, <float *>target,
                          g.scratch_plane, row_width, count, g.batch_layout,
                          g.kh, g.kw, g.sh, g.dh, g.dw, g.oh, g.ow)
    elif f32:
        tgm_scatter_add_runs_f32(<const float *>src + cols_offset, <float *>target, g.table, runs,
                                 run_len, table_run, cols_run)
    else:
        tgm_scatter_add_runs_f64(<const double *>src + cols_offset, <double *>target, g.table,
                                 runs, run_len, table_run, cols_run)
    if g.scratch_plane:
        if f32:
            tgm_unpad_planes_f32(<const float *>scratch, g.scratch_plane, <float *>planes,
                                 plane_stride, count, g.h, g.w, g.ph, g.pw)
        else:
            tgm_unpad_planes_f64(<const double *>scratch, g.scratch_plane, <double *>planes,
                                 plane_stride, count, g.h, g.w, g.ph, g.pw)


cdef inline Py_ssize_t _units(Geometry *g) noexcept nogil:
    """How many passes a call makes: groups of planes (table, stride 2), else planes."""
    if g.table == NULL and not g.stride2:
        return g.n * g.c
    if g.batch_layout:
        return g.c * ((g.n + g.group - 1) // g.group)
    return (g.n * g.c + g.group - 1) // g.group


cdef inline Py_ssize_t _scratch_elements(Geometry *g) noexcept nogil:
    if g.scratch_plane == 0:
        return 0
    return g.group * g.scratch_plane + TGM_CONV_MARGIN


cdef void _run_units(const char *src, char *dst, Py_ssize_t begin, Py_ssize_t end, Geometry *g,
                     bint f32, double pad, bint adjoint, char *scratch) noexcept nogil:
    """Passes begin..end-1 of one call, with this thread's scratch planes."""
    cdef Py_ssize_t q, e, scratch_elements = _scratch_elements(g)
    if g.table != NULL or g.stride2:
        if scratch != NULL:
            # im2col overwrites only the interiors: the padding border is filled once
            # (col2im zeroes its planes per pass; the margin only needs to be defined)
            for e in range(scratch_elements):
                if f32:
                    (<float *>scratch)[e] = 0.0 if adjoint else <float>pad
                else:
                    (<double *>scratch)[e] = 0.0 if adjoint else pad
        for q in range(begin, end):
            _group_pass(src, dst, q, g, f32, adjoint, scratch)
        return
    for q in range(begin, end):
        if adjoint:
            _col2im_plane(src, dst, _plane(q, g), g, f32)
        else:
            _im2col_plane(src, dst, _plane(q, g), g, f32, pad)


cdef int _run(const char *src, char *dst, Geometry *g, bint f32, double pad,
              bint adjoint) except -1:
    """Every pass of one call, threaded when large enough (no parallel region at all
    otherwise: opening one costs microseconds even for one thread); each thread takes
    one contiguous share of the passes and its own scratch planes."""
    cdef Py_ssize_t units = _units(g), part, item = 4 if f32 else 8
    cdef Py_ssize_t scratch_bytes = _scratch_elements(g) * item
    cdef int nt = _threads_for(g.n * g.c * g.kh * g.kw * g.oh * g.ow)
    cdef char *scratch = NULL
    if nt > units:
        nt = <int>units
    if nt < 1:
        nt = 1
    if scratch_bytes:
        scratch = <char *>malloc(nt * scratch_bytes)
        if scratch == NULL:
            raise MemoryError("im2col/col2im: could not allocate the scratch planes")
    with nogil:
        if nt == 1:
            _run_units(src, dst, 0, units, g, f32, pad, adjoint, scratch)
        else:
            for part in prange(nt, num_threads=nt, schedule="static"):
                _run_units(src, dst, part * units // nt, (part + 1) * units // nt, g, f32, pad,
                           adjoint, scratch + part * scratch_bytes if scratch != NULL else NULL)
    free(scratch)
    return 0


cdef Geometry _unpack(tuple geo, str layout, str op):
    cdef Geometry g
    g.n, g.c, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.oh, g.ow = geo
    g.batch_layout = _reference.check_layout(op, layout) == "batch"
    g.table = NULL
    g.group = 1
    g.scratch_plane = 0
    g.stride2 = False
    return g


def im2col(x, kernel, stride, padding, dilation, pad_value=0.0, layout="image"):
    """Receptive fields of ``x`` (N, C, H, W) as columns (N, C*kh*kw, OH*OW), exactly
    the reference's result; ``kernel``/``stride``/``padding``/``dilation`` are
    (row, column) pairs, padding taps read ``pad_value``. ``layout="batch"``: one
    (C*kh*kw, N*OH*OW) matrix instead (the reference's docstring says why).

    >>> import numpy as np
    >>> im2col(np.arange(4.0).reshape(1, 1, 2, 2), (2, 2), (1, 1), (0, 0), (1, 1)).ravel().tolist()
    [0.0, 1.0, 2.0, 3.0]
    """
    cdef cnp.ndarray X, cols
    cdef Geometry g
    cdef cnp.npy_intp dims[3]
    cdef int t
    if not _native_float(x):
        return _reference.im2col(x, kernel, stride, padding, dilation, pad_value, layout)
    X = <cnp.ndarray>x
    g = _unpack(_reference.geometry("im2col", x.shape, kernel, stride, padding, dilation),
                layout, "im2col")
    t = cnp.PyArray_TYPE(X)
    if not cnp.PyArray_IS_C_CONTIGUOUS(X):
        X = _np_ascontiguousarray(X)
    if g.batch_layout:
        dims[0] = g.c * g.kh * g.kw
        dims[1] = g.n * g.oh * g.ow
        cols = cnp.PyArray_EMPTY(2, dims, t, 0)
    else:
        dims[0] = g.n
        dims[1] = g.c * g.kh * g.kw
        dims[2] = g.oh * g.ow
        cols = cnp.PyArray_EMPTY(3, dims, t, 0)
    _table_for(&g, t == cnp.NPY_FLOAT32)
    try:
        _run(<const char *>cnp.PyArray_DATA(X), <char *>cnp.PyArray_DATA(cols), &g,
             t == cnp.NPY_FLOAT32, <double>pad_value, False)
    finally:
        free(g.table)
    return cols


def col2im(cols, input_shape, kernel, stride, padding, dilation, layout="image"):
    """The adjoint of :func:`im2col`: columns (N, C*kh*kw, OH*OW) (or, with
    ``layout="batch"``, (C*kh*kw, N*OH*OW)) summed back into a new (N, C, H, W) array,
    bitwise equal to the reference (same additions, same order).

    >>> import numpy as np
    >>> col2im(np.ones((1, 4, 1)), (1, 1, 2, 2), (2, 2), (1, 1), (0, 0), (1, 1)).ravel().tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    cdef cnp.ndarray C, image
    cdef Geometry g
    cdef cnp.npy_intp dims[4]
    cdef int t
    if not _native_float(cols):
        return _reference.col2im(cols, input_shape, kernel, stride, padding, dilation, layout)
    geo = _reference.geometry("col2im", input_shape, kernel, stride, padding, dilation)
    _reference.check_cols("col2im", cols, geo, layout)
    g = _unpack(geo, layout, "col2im")
    C = <cnp.ndarray>cols
    t = cnp.PyArray_TYPE(C)
    if not cnp.PyArray_IS_C_CONTIGUOUS(C):
        C = _np_ascontiguousarray(C)
    dims[0] = g.n
    dims[1] = g.c
    dims[2] = g.h
    dims[3] = g.w
    # every plane is zeroed by its own thread, so no zero-fill pass here
    image = cnp.PyArray_EMPTY(4, dims, t, 0)
    _table_for(&g, t == cnp.NPY_FLOAT32)
    try:
        _run(<const char *>cnp.PyArray_DATA(C), <char *>cnp.PyArray_DATA(image), &g,
             t == cnp.NPY_FLOAT32, 0.0, True)
    finally:
        free(g.table)
    return image
