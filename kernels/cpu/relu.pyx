# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: language_level=3, embedsignature=True
"""ReLU forward and its fused backward for float32 and float64, one pass each.

* :func:`relu` is ``np.maximum(x, 0)``: written as ``x < 0 ? 0 : x`` so a NaN stays NaN
  (the comparison is false for NaN), which the vectoriser turns into a compare+blend.
* :func:`relu_backward` is ``g * (x > 0)`` in one pass with no boolean temporary; it
  multiplies rather than selects so that ``inf * 0`` and ``nan * 0`` give NaN exactly
  as numpy's expression does.

Contiguous inputs are read in place (any shape, as a flat run); other layouts are
copied to C order first. Threads (OpenMP ``prange``) only run above ``THREAD_MIN_SIZE``
elements, where the work outweighs the fork/join. Other dtypes go to numpy.
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #ifdef _OPENMP
    #include <omp.h>
    #define TGM_RELU_OPENMP 1
    static int tgm_relu_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define TGM_RELU_OPENMP 0
    static int tgm_relu_max_threads(void) { return 1; }
    #endif
    #ifndef TGM_CFLAGS
    #define TGM_CFLAGS "unknown"
    #endif

    #define TGM_DEFINE_RELU(T, SFX)                                                  \\
    static void tgm_relu_##SFX(const T *restrict x, T *restrict y, ptrdiff_t n) {    \\
        for (ptrdiff_t i = 0; i < n; i++) y[i] = x[i] < 0 ? (T)0 : x[i];             \\
    }                                                                                \\
    static void tgm_relu_bwd_##SFX(const T *restrict g, const T *restrict x,         \\
                                   T *restrict out, ptrdiff_t n) {                   \\
        /* 32-byte blocks as GCC/Clang vector types (AVX2 registers; narrower ISAs   \\
           split them). The plain loop below compiles to a scalar loop with a branch  \\
           per element (the compiler rewrites g * 1 as g and then does not vectorise) \\
           and ran 5-10x slower than numpy. The comparison gives an all-ones/zero     \\
           integer lane; and-ed with the bits of 1.0 it is exactly (T)(x > 0), so the \\
           product is numpy's g * (x > 0) bit for bit (NaN, inf and -0 included). */ \\
        typedef T VT __attribute__((vector_size(32)));                               \\
        typedef IT VI __attribute__((vector_size(32)));                              \\
        enum { L = 32 / sizeof(T) };                                                 \\
        const VT zero = {0};                                                         \\
        const T one = 1;                                                             \\
        IT one_bits;                                                                 \\
        memcpy(&one_bits, &one, sizeof one);                                         \\
        VI one_lanes;                                                                \\
        for (int k = 0; k < L; k++) one_lanes[k] = one_bits;                         \\
        ptrdiff_t i = 0;                                                             \\
        for (; i + L <= n; i += L) {                                                 \\
            VT gv, xv;                                                               \\
            memcpy(&gv, g + i, sizeof gv);                                           \\
            memcpy(&xv, x + i, sizeof xv);                                           \\
            VI mask = (VI)(xv > zero);                                               \\
            VT factor = (VT)(mask & one_lanes);                                      \\
            VT r = gv * factor;                                                      \\
            memcpy(out + i, &r, sizeof r);                                           \\
        }                                                                            \\
        for (; i < n; i++) out[i] = g[i] * (T)(x[i] > 0);                            \\
    }
    #define IT int32_t
    TGM_DEFINE_RELU(float, f32)
    #undef IT
    #define IT int64_t
    TGM_DEFINE_RELU(double, f64)
    #undef IT
    """
    int TGM_RELU_OPENMP
    const char *TGM_CFLAGS
    int tgm_relu_max_threads() nogil
    void tgm_relu_f32(const float *x, float *y, Py_ssize_t n) nogil
    void tgm_relu_f64(const double *x, double *y, Py_ssize_t n) nogil
    void tgm_relu_bwd_f32(const float *g, const float *x, float *out, Py_ssize_t n) nogil
    void tgm_relu_bwd_f64(const double *g, const double *x, double *out, Py_ssize_t n) nogil

# Threads pay only for arrays well past L2: below this, one core streams faster than
# two can be woken.
cdef Py_ssize_t THREAD_MIN_SIZE = 1 << 20
# Each thread takes chunks of this many elements (a multiple of every vector width).
cdef Py_ssize_t CHUNK = 1 << 16
cdef int _num_threads = 0

BUILD_INFO = {
    "cflags": TGM_CFLAGS.decode("ascii"),
    "openmp": bool(TGM_RELU_OPENMP),
    "max_threads": tgm_relu_max_threads(),
    "thread_min_size": THREAD_MIN_SIZE,
}


def set_num_threads(int n):
    """Use at most ``n`` OpenMP threads (n <= 0: the OpenMP default). Returns the old value."""
    global _num_threads
    old = _num_threads
    _num_threads = n
    return old


cdef inline int _threads_for(Py_ssize_t n) noexcept nogil:
    if n < THREAD_MIN_SIZE:
        return 1
    return _num_threads if _num_threads > 0 else tgm_relu_max_threads()


cdef void _relu_run(const char *x, char *y, Py_ssize_t n, bint f32) noexcept nogil:
    cdef Py_ssize_t c, lo, chunks
    cdef int nt = _threads_for(n)
    if nt <= 1:
        if f32:
            tgm_relu_f32(<const float *>x, <float *>y, n)
        else:
            tgm_relu_f64(<const double *>x, <double *>y, n)
        return
    chunks = (n + CHUNK - 1) // CHUNK
    for c in prange(chunks, num_threads=nt, schedule="static"):
        lo = c * CHUNK
        if f32:
            tgm_relu_f32(<const float *>x + lo, <float *>y + lo,
                         CHUNK if lo + CHUNK <= n else n - lo)
        else:
            tgm_relu_f64(<const double *>x + lo, <double *>y + lo,
                         CHUNK if lo + CHUNK <= n else n - lo)


cdef void _relu_bwd_run(const char *g, const char *x, char *out, Py_ssize_t n,
                        bint f32) noexcept nogil:
    cdef Py_ssize_t c, lo, chunks
    cdef int nt = _threads_for(n)
    if nt <= 1:
        if f32:
            tgm_relu_bwd_f32(<const float *>g, <const float *>x, <float *>out, n)
        else:
            tgm_relu_bwd_f64(<const double *>g, <const double *>x, <double *>out, n)
        return
    chunks = (n + CHUNK - 1) // CHUNK
    for c in prange(chunks, num_threads=nt, schedule="static"):
        lo = c * CHUNK
        if f32:
            tgm_relu_bwd_f32(<const float *>g + lo, <const float *>x + lo, <float *>out + lo,
                             CHUNK if lo + CHUNK <= n else n - lo)
        else:
            tgm_relu_bwd_f64(<const double *>g + lo, <const double *>x + lo,
                             <double *>out + lo, CHUNK if lo + CHUNK <= n else n - lo)


_np_maximum = np.maximum
_np_ascontiguousarray = np.ascontiguousarray

# Auto mode: arrays with more elements than this go to numpy; set by the backend from
# measurements (hook: called once before the first routed call to measure).
cdef bint _auto = False
cdef double _auto_max_size = 1e300
cdef object _calibrate_hook = None


def set_auto(bint enabled, double max_size=1e300, hook=None):
    """Configure routing: when ``enabled``, arrays over ``max_size`` elements go to
    numpy; ``hook`` (called once, before the first routed call) may measure and call
    ``set_auto`` itself."""
    global _auto, _auto_max_size, _calibrate_hook
    _auto = enabled
    _auto_max_size = max_size
    _calibrate_hook = hook


def get_auto():
    """(enabled, max_size, calibration pending)."""
    return _auto, _auto_max_size, _calibrate_hook is not None


cdef bint _route_to_numpy(Py_ssize_t size) except -1:
    global _calibrate_hook
    if _calibrate_hook is not None:
        hook = _calibrate_hook
        _calibrate_hook = None
        hook()
    return size > _auto_max_size


cdef inline bint _native(cnp.ndarray x) noexcept:
    """Native byte order and aligned: what the C loops may read (numpy handles the rest)."""
    return cnp.PyArray_ISNOTSWAPPED(x) and cnp.PyArray_ISALIGNED(x)


def relu(x):
    """``max(x, 0)`` elementwise, NaN kept, like ``np.maximum(x, 0)``.

    Takes an array of any shape; returns a new C-contiguous array of the same shape
    and dtype. float32/float64 run here; other dtypes go to numpy.

    >>> import numpy as np
    >>> relu(np.array([-1.0, 2.0, np.nan])).tolist()
    [0.0, 2.0, nan]
    """
    cdef cnp.ndarray X, Y
    cdef int t
    if type(x) is not cnp.ndarray:
        return _np_maximum(x, 0)
    X = <cnp.ndarray>x
    t = cnp.PyArray_TYPE(X)
    if (t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64) or not _native(X):
        return _np_maximum(x, 0)
    if _auto and _route_to_numpy(cnp.PyArray_SIZE(X)):
        return _np_maximum(x, 0, dtype=X.dtype)
    if not cnp.PyArray_IS_C_CONTIGUOUS(X):
        X = _np_ascontiguousarray(X)
    Y = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(X), cnp.PyArray_DIMS(X), t, 0)
    _relu_run(<const char *>cnp.PyArray_DATA(X), <char *>cnp.PyArray_DATA(Y),
              cnp.PyArray_SIZE(X), t == cnp.NPY_FLOAT32)
    return Y


def relu_backward(g, x):
    """The ReLU vector-Jacobian product ``g * (x > 0)``, fused into one pass.

    Takes the upstream gradient ``g`` and the ReLU input ``x``; returns a new array
    shaped and typed like ``g``. Same-shape float32/float64 pairs run here (non
    contiguous ones are copied first); anything else is numpy's ``g * (x > 0)``.

    >>> import numpy as np
    >>> relu_backward(np.ones(3), np.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 1.0]
    """
    cdef cnp.ndarray G, X, Y
    cdef int t, d, nd
    if type(g) is not cnp.ndarray or type(x) is not cnp.ndarray:
        return g * (x > 0)
    G = <cnp.ndarray>g
    X = <cnp.ndarray>x
    t = cnp.PyArray_TYPE(G)
    nd = cnp.PyArray_NDIM(G)
    if (t != cnp.PyArray_TYPE(X) or (t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64)
            or nd != cnp.PyArray_NDIM(X) or not _native(G) or not _native(X)):
        return g * (x > 0)
    for d in range(nd):
        if cnp.PyArray_DIMS(G)[d] != cnp.PyArray_DIMS(X)[d]:
            return g * (x > 0)
    if _auto and _route_to_numpy(cnp.PyArray_SIZE(G)):
        return g * (x > 0)
    if not cnp.PyArray_IS_C_CONTIGUOUS(G):
        G = _np_ascontiguousarray(G)
    if not cnp.PyArray_IS_C_CONTIGUOUS(X):
        X = _np_ascontiguousarray(X)
    Y = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(G), t, 0)
    _relu_bwd_run(<const char *>cnp.PyArray_DATA(G), <const char *>cnp.PyArray_DATA(X),
                  <char *>cnp.PyArray_DATA(Y), cnp.PyArray_SIZE(G), t == cnp.NPY_FLOAT32)
    return Y
