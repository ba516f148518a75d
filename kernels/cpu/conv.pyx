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
       row and tap, and their loop overhead costs more than the copy. Every plane of
       one call reads the same input offsets, so those are tabulated once per call:
       table[t * oh*ow + l] is the offset inside the plane that tap t of output
       position l reads, or -1 for a padding tap. Then a plane is one pass of
       taps * oh*ow table reads; col2im adds tap by tap in the same row-major tap order
       as the reference (one tap never hits an element twice), so it stays exact. */
    static void tgm_conv_table(int *restrict table, ptrdiff_t h, ptrdiff_t w, ptrdiff_t kh,
            ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
            ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t oh, ptrdiff_t ow) {
        for (ptrdiff_t i = 0; i < kh; i++)
        for (ptrdiff_t j = 0; j < kw; j++)
        for (ptrdiff_t oy = 0; oy < oh; oy++)
        for (ptrdiff_t ox = 0; ox < ow; ox++) {
            ptrdiff_t iy = oy * sh - ph + i * dh, ix = ox * sw - pw + j * dw;
            *table++ = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? (int)(iy * w + ix) : -1;
        }
    }
    #define TGM_DEFINE_TABLE(T, SFX)                                                     \\
    static void tgm_im2col_table_##SFX(const T *restrict plane, T *restrict rows,         \\
            const int *restrict table, ptrdiff_t taps, ptrdiff_t length,                  \\
            ptrdiff_t tap_stride, T pad) {                                                \\
        for (ptrdiff_t t = 0; t < taps; t++) {                                            \\
            T *restrict row = rows + t * tap_stride;                                      \\
            const int *restrict at = table + t * length;                                  \\
            for (ptrdiff_t l = 0; l < length; l++) row[l] = at[l] >= 0 ? plane[at[l]] : pad; \\
        }                                                                                 \\
    }                                                                                     \\
    static void tgm_col2im_table_##SFX(const T *restrict rows, T *restrict plane,         \\
            const int *restrict table, ptrdiff_t taps, ptrdiff_t length,                  \\
            ptrdiff_t tap_stride, ptrdiff_t plane_size) {                                 \\
        memset(plane, 0, (size_t)plane_size * sizeof(T));                                 \\
        for (ptrdiff_t t = 0; t < taps; t++) {                                            \\
            const T *restrict row = rows + t * tap_stride;                                \\
            const int *restrict at = table + t * length;                                  \\
            for (ptrdiff_t l = 0; l < length; l++)                                        \\
                if (at[l] >= 0) plane[at[l]] += row[l];                                   \\
        }                                                                                 \\
    }
    TGM_DEFINE_TABLE(float, f32)
    TGM_DEFINE_TABLE(double, f64)
    """
    int TGM_CONV_OPENMP
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
    void tgm_conv_table(int *table, Py_ssize_t h, Py_ssize_t w, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t oh, Py_ssize_t ow) nogil
    void tgm_im2col_table_f32(const float *plane, float *rows, const int *table, Py_ssize_t taps,
                              Py_ssize_t length, Py_ssize_t tap_stride, float pad) nogil
    void tgm_im2col_table_f64(const double *plane, double *rows, const int *table, Py_ssize_t taps,
                              Py_ssize_t length, Py_ssize_t tap_stride, double pad) nogil
    void tgm_col2im_table_f32(const float *rows, float *plane, const int *table, Py_ssize_t taps,
                              Py_ssize_t length, Py_ssize_t tap_stride, Py_ssize_t plane_size) nogil
    void tgm_col2im_table_f64(const double *rows, double *plane, const int *table, Py_ssize_t taps,
                              Py_ssize_t length, Py_ssize_t tap_stride, Py_ssize_t plane_size) nogil

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


# The tabulated passes (tgm_conv_table) run where the loops over rows would run only a
# few elements per row and tap: outputs of fewer than TABLE_MAX_SAME_COLUMNS positions
# in the "same" geometry (unit strides, OW == W), fewer than TABLE_MAX_COLUMNS in every
# other one, if the table has at most TABLE_MAX_ENTRIES entries. Measured with
# benchmarks/conv.py --kernels (whole batches, per-image layout; loops/table time): the
# table made im2col 6.6x / col2im 2.8x faster at 80x64x4x4 stride 2, 2.9x / 1.6x at 7x7
# stride 2, 2.2x / 2.8x at 100x64x3x3 stride 1, 1.8x / 1.4x at 14x14 stride 2; the loops
# were faster or even at 28x28 stride 2 (1.0x / 0.9x), 7x7 stride 1 (im2col 0.74x) and
# the 14x14 and 28x28 "same" layers (0.2-0.85x), which copy whole tap rows.
cdef Py_ssize_t TABLE_MAX_SAME_COLUMNS = 32
cdef Py_ssize_t TABLE_MAX_COLUMNS = 100
cdef Py_ssize_t TABLE_MAX_ENTRIES = 1 << 16


def set_table_limits(Py_ssize_t max_same_columns=-1, Py_ssize_t max_columns=-1,
                     Py_ssize_t max_entries=-1):
    """Set when the tabulated passes run (-1 keeps a value; max_entries=0 turns them
    off); returns the old (max_same_columns, max_columns, max_entries), so
    ``set_table_limits(*old)`` restores them. For tuning and for tests that force each
    path."""
    global TABLE_MAX_SAME_COLUMNS, TABLE_MAX_COLUMNS, TABLE_MAX_ENTRIES
    old = (TABLE_MAX_SAME_COLUMNS, TABLE_MAX_COLUMNS, TABLE_MAX_ENTRIES)
    if max_same_columns >= 0:
        TABLE_MAX_SAME_COLUMNS = max_same_columns
    if max_columns >= 0:
        TABLE_MAX_COLUMNS = max_columns
    if max_entries >= 0:
        TABLE_MAX_ENTRIES = max_entries
    return old


cdef int _table_for(Geometry *g) except -1:
    """Fill g.table when the tabulated passes apply (the caller frees it)."""
    cdef Py_ssize_t columns = g.oh * g.ow, entries = g.kh * g.kw * g.oh * g.ow
    cdef bint same = g.sh == 1 and g.sw == 1 and g.ow == g.w
    g.table = NULL
    if entries == 0 or entries > TABLE_MAX_ENTRIES or g.h * g.w >= (1 << 30):
        return 0
    if columns >= (TABLE_MAX_SAME_COLUMNS if same else TABLE_MAX_COLUMNS):
        return 0
    g.table = <int *>malloc(entries * sizeof(int))
    if g.table == NULL:
        raise MemoryError("im2col/col2im: could not allocate the offset table")
    tgm_conv_table(g.table, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw,
                   g.oh, g.ow)
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
    if g.table != NULL:
        if f32:
            tgm_im2col_table_f32(<const float *>src + p * plane_in, <float *>dst + rows, g.table,
                                 g.kh * g.kw, g.oh * g.ow, tap_stride, <float>pad)
        else:
            tgm_im2col_table_f64(<const double *>src + p * plane_in, <double *>dst + rows, g.table,
                                 g.kh * g.kw, g.oh * g.ow, tap_stride, pad)
        return
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
    if g.table != NULL:
        if f32:
            tgm_col2im_table_f32(<const float *>src + rows, <float *>dst + p * plane_in, g.table,
                                 g.kh * g.kw, g.oh * g.ow, tap_stride, plane_in)
        else:
            tgm_col2im_table_f64(<const double *>src + rows, <double *>dst + p * plane_in, g.table,
                                 g.kh * g.kw, g.oh * g.ow, tap_stride, plane_in)
        return
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


cdef void _run(const char *src, char *dst, Py_ssize_t planes, Geometry *g, bint f32,
               double pad, bint adjoint) noexcept nogil:
    """Every (image, channel) plane, threaded when large enough (no parallel region at
    all otherwise: opening one costs microseconds even for one thread)."""
    cdef Py_ssize_t q
    cdef int nt = _threads_for(planes * g.kh * g.kw * g.oh * g.ow)
    if nt <= 1 or planes < 2:
        for q in range(planes):
            if adjoint:
                _col2im_plane(src, dst, _plane(q, g), g, f32)
            else:
                _im2col_plane(src, dst, _plane(q, g), g, f32, pad)
        return
    for q in prange(planes, num_threads=nt, schedule="static"):
        if adjoint:
            _col2im_plane(src, dst, _plane(q, g), g, f32)
        else:
            _im2col_plane(src, dst, _plane(q, g), g, f32, pad)


cdef Geometry _unpack(tuple geo, str layout, str op):
    cdef Geometry g
    g.n, g.c, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.oh, g.ow = geo
    g.batch_layout = _reference.check_layout(op, layout) == "batch"
    g.table = NULL
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
    _table_for(&g)
    _run(<const char *>cnp.PyArray_DATA(X), <char *>cnp.PyArray_DATA(cols), g.n * g.c, &g,
         t == cnp.NPY_FLOAT32, <double>pad_value, False)
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
    _table_for(&g)
    _run(<const char *>cnp.PyArray_DATA(C), <char *>cnp.PyArray_DATA(image), g.n * g.c, &g,
         t == cnp.NPY_FLOAT32, 0.0, True)
    free(g.table)
    return image
