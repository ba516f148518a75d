"""The CPU backend: numpy arrays, with matmul, ReLU, convolution's im2col/col2im, and
training-mode batch norm and tiled max pooling through our compiled kernels.

Which implementation runs is chosen by ``TGM_CPU_KERNELS`` (read at import) or
:func:`set_kernels`:

* ``cython`` -- every float32/float64 2-D or 3-D matmul and every float ReLU runs on
  the kernels in ``kernels/cpu`` (other cases keep numpy semantics through numpy);
  float32/float64 im2col/col2im run ``kernels/cpu/conv.pyx``, batch norm (forward with
  batch statistics, its backward, the running statistics' input) and tiled max pooling
  (forward, backward) ``kernels/cpu/norm_pool.pyx``;
* ``numpy``  -- ``numpy.matmul`` / ``numpy.maximum`` and the numpy references for
  im2col/col2im (``backends/im2col.py``) and batch norm / max pooling
  (``backends/norm_pool.py``) only;
* ``auto`` (default) -- matmul and ReLU: ours up to a size measured on this machine at
  the first call (about 0.1 s, once per process), numpy above it where BLAS is faster;
  im2col/col2im: always ours (a gather/scatter in one C pass beat the reference's
  per-tap numpy slicing at every shape measured, see ``benchmarks/conv.py --kernels``);
  batch norm and max pooling: always ours (batch norm faster at every Omniglot layer;
  max pooling at the large ones, 2-4x, and slower by ~0.1 ms at the 7x7 and 3x3 ones,
  where numpy's four strided maxima beat our per-row loop: see ``benchmarks/norm_pool.py``).

If the extension is missing or fails its import-time self-check, importing warns once,
:func:`kernel_info` reports why, and numpy runs. The routing itself lives inside the
compiled ``matmul``/``relu`` functions, so a call costs one C function call on top of
the arithmetic.
"""
from __future__ import annotations

import importlib
import os
import time
import warnings

import numpy as np

from . import im2col as _im2col
from . import norm_pool as _norm_pool

__all__ = ["BACKEND", "CPUBackend", "kernel_info", "set_kernels", "get_kernels", "MODES",
           "NORM_POOL_KERNELS"]

MODES = ("cython", "numpy", "auto")

# libgomp's idle workers spin for a while after each parallel region (300k spins by
# default) before they sleep. Measured on a 2-core machine that other processes were
# also using, alternating our threaded matmul with numpy's (n = 128) cost 8.4 ms a
# pair with that default (the spinning pool kept OpenBLAS's threads off the cores),
# 0.9 ms with 10k spins, 0.2 ms with 1k. But with 1k our workers sleep between calls
# and, once OpenBLAS's threads exist, are often woken onto the busy core: n = 512 on
# two threads then took 2.7-3.0 ms (median) instead of 1.5 ms; 10k kept 1.5 ms. So 10k.
# A user's own setting wins; it only takes effect if libgomp is not loaded yet.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# By full name: ``from .. import _cpu_matmul`` on a package still initialising turns
# "no such module" into "cannot import name ... (most likely due to a circular import)".
_EXTENSIONS = tuple(f"{__name__.rsplit('.', 2)[0]}.{name}"
                    for name in ("_cpu_matmul", "_cpu_relu", "_cpu_conv", "_cpu_norm_pool"))
try:
    _cpu_matmul, _cpu_relu, _cpu_conv, _cpu_norm_pool = (importlib.import_module(name)
                                                         for name in _EXTENSIONS)
    _cpu_conv.set_reference(_im2col)  # its validation and the cases the kernels leave to it
    _cpu_norm_pool.set_reference(_norm_pool)
    _IMPORT_ERROR = None
    _BUILT = True
except ModuleNotFoundError as error:
    if error.name not in _EXTENSIONS:
        raise  # a missing dependency of ours, not the extension: let it say so
    _cpu_matmul = _cpu_relu = _cpu_conv = _cpu_norm_pool = None
    _IMPORT_ERROR = (f"not built: there is no compiled module {error.name}; build it with "
                     "`python setup.py build_ext --inplace` or `pip install -e . --no-build-isolation`")
    _BUILT = False
except ImportError as error:  # built, but it does not load (e.g. an undefined symbol)
    _cpu_matmul = _cpu_relu = _cpu_conv = _cpu_norm_pool = None
    _IMPORT_ERROR = f"{type(error).__name__}: {error}"
    _BUILT = True


def _relu(x):
    return np.maximum(x, 0, dtype=x.dtype) if x.dtype.kind == "f" else np.maximum(x, 0)


def _relu_backward(g, x):
    return g * (x > 0)


def _self_check():
    """Compare the compiled kernels with numpy on a few small cases (~100 us).
    Returns None when they agree, else a message naming the first disagreement."""
    rng = np.random.default_rng(0)
    for dtype, rtol in ((np.float32, 1e-4), (np.float64, 1e-12)):
        a = rng.standard_normal((13, 37)).astype(dtype)
        b = rng.standard_normal((37, 41)).astype(dtype)
        cases = {
            "A @ B": (a, b),
            "A @ B.T (transposed view)": (a, np.ascontiguousarray(b.T).T),
            "batched (3, 13, 37) @ (3, 37, 41)": (np.stack([a] * 3), np.stack([b] * 3)),
        }
        for name, (x, y) in cases.items():
            got = _cpu_matmul.gemm(x, y)
            want = np.matmul(x.astype(np.float64), y.astype(np.float64))
            if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=rtol * 37):
                return f"matmul {name} {np.dtype(dtype).name} disagrees with numpy"
        x = np.array([-1.0, 0.0, 2.0, np.nan, -np.inf, np.inf], dtype=dtype)
        if not np.array_equal(_cpu_relu.relu(x), np.maximum(x, 0), equal_nan=True):
            return f"relu {np.dtype(dtype).name} disagrees with numpy"
        g = np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.inf], dtype=dtype)
        if not np.array_equal(_cpu_relu.relu_backward(g, x), g * (x > 0), equal_nan=True):
            return f"relu_backward {np.dtype(dtype).name} disagrees with numpy"
        # im2col copies and col2im adds in the reference's order: both exactly equal
        image = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
        # (the "same" fast path, the general one and the batch layout: ~0.5 ms in all)
        for geometry, layout in ((((3, 3), (1, 1), (1, 1), (1, 1)), "image"),
                                 (((3, 2), (2, 3), (2, 1), (2, 1)), "batch")):
            cols = _cpu_conv.im2col(image, *geometry, pad_value=-np.inf, layout=layout)
            if not np.array_equal(cols, _im2col.im2col(image, *geometry, pad_value=-np.inf, layout=layout)):
                return f"im2col {np.dtype(dtype).name} {geometry} {layout} disagrees with the reference"
            cols = rng.standard_normal(cols.shape).astype(dtype)
            if not np.array_equal(_cpu_conv.col2im(cols, image.shape, *geometry, layout=layout),
                                  _im2col.col2im(cols, image.shape, *geometry, layout=layout)):
                return f"col2im {np.dtype(dtype).name} {geometry} {layout} disagrees with the reference"
        problem = _norm_pool_self_check(rng, dtype, rtol)
        if problem is not None:
            return problem
    return None


def _norm_pool_self_check(rng, dtype, rtol):
    """Batch norm (close: sums in another order) and max pooling (bit-exact, ties, a NaN
    and a strided view included) against backends/norm_pool.py."""
    name = np.dtype(dtype).name
    x = rng.standard_normal((3, 4, 4, 6)).astype(dtype)
    x[0, 0, 0, :2] = 1.5      # a tied tile
    x[1, 2, 3, 3] = np.nan    # a NaN tile
    for view in (x, x[:, :, :4, 1:5]):
        out = _cpu_norm_pool.max_pool_tiles(view, (2, 2))
        if not np.array_equal(out, _norm_pool.max_pool_tiles(view, (2, 2)), equal_nan=True):
            return f"max_pool_tiles {name} disagrees with the reference"
        g = rng.standard_normal(out.shape).astype(dtype)
        if not np.array_equal(_cpu_norm_pool.max_pool_tiles_backward(g, view, out, (2, 2)),
                              _norm_pool.max_pool_tiles_backward(g, view, out, (2, 2)),
                              equal_nan=True):
            return f"max_pool_tiles_backward {name} disagrees with the reference"
    x = rng.standard_normal((3, 4, 5, 2)).astype(dtype) * 3 + 2
    weight, bias = (rng.standard_normal(4).astype(dtype) for _ in range(2))
    g = rng.standard_normal(x.shape).astype(dtype)
    pairs = [(_cpu_norm_pool.batch_norm_train(x, weight, bias, 1e-5),
              _norm_pool.batch_norm_train(x, weight, bias, 1e-5))]
    pairs += zip(_cpu_norm_pool.batch_norm_train_backward(x, g, weight, 1e-5),
                 _norm_pool.batch_norm_train_backward(x, g, weight, 1e-5))
    pairs += zip(_cpu_norm_pool.batch_norm_statistics(x), _norm_pool.batch_norm_statistics(x))
    # 10x the matmul check's tolerance: a guard against a broken kernel, not a rounding
    # test (tests/test_norm_pool_kernels.py bounds those); the two sum in other orders and
    # precisions, ~1e-6 apart in float32 here
    for got, want in pairs:
        if got.shape != want.shape or not np.allclose(got, want, rtol=rtol * 10, atol=rtol * 10):
            return f"batch norm {name} disagrees with the reference"
    return None


if _cpu_matmul is not None:
    _problem = _self_check()
    if _problem is not None:
        _IMPORT_ERROR = f"self-check failed: {_problem}"
        _cpu_matmul = _cpu_relu = _cpu_conv = _cpu_norm_pool = None

if _IMPORT_ERROR is not None:
    warnings.warn(
        f"tinygrad_meta: compiled CPU kernels unavailable ({_IMPORT_ERROR}); matmul, relu, "
        "im2col/col2im, batch norm and max pooling run on numpy."
        + ("" if not _BUILT else " Rebuild them with "
                          "`pip install -e . --no-build-isolation`."),
        RuntimeWarning, stacklevel=2)


# The first-order array work of training-mode batch norm and tiled max pooling
# (backends/norm_pool.py: the reference; kernels/cpu/norm_pool.pyx: ours), by name.
NORM_POOL_KERNELS = ("batch_norm_train", "batch_norm_relu_train", "batch_norm_train_backward",
                     "batch_norm_statistics", "max_pool_tiles", "max_pool_tiles_backward")


class CPUBackend:
    """numpy arrays on the host; ``matmul``/``relu``/``relu_backward``/``im2col``/``col2im``
    and the batch norm / max pooling kernels (:data:`NORM_POOL_KERNELS`) are set by
    :func:`set_kernels` to our kernels or numpy's."""
    name = "cpu"
    xp = np

    def __init__(self):
        self.matmul = np.matmul
        self.relu = _relu
        self.relu_backward = _relu_backward
        # Convolution's gather/scatter: the numpy reference unless set_kernels picks ours.
        self.im2col = _im2col.im2col
        self.col2im = _im2col.col2im
        # batch_norm_(relu_)train, batch_norm_train_backward, batch_norm_statistics,
        # max_pool_tiles(_backward)
        for name in NORM_POOL_KERNELS:
            setattr(self, name, getattr(_norm_pool, name))

    @staticmethod
    def asarray(data, dtype=None):
        return np.asarray(data, dtype=dtype)

    @staticmethod
    def to_numpy(array):
        return array

    @staticmethod
    def index_add(values, index, shape):
        """Zeros of ``shape`` with ``values`` added at the advanced ``index`` (repeated
        indices accumulate): one call, so tgm.compile records it whole, index arrays included."""
        out = np.zeros(shape, dtype=values.dtype)
        np.add.at(out, index, values)
        return out

    def __repr__(self):
        return "CPUBackend()"


BACKEND = CPUBackend()

_mode = "numpy"
# Filled by _calibrate(): the measurements behind auto mode's crossover.
_crossover = None

# Square matmul sizes and ReLU lengths probed by the auto-mode calibration: from the
# MAML scale up to where threads and BLAS blocking are in play.
_MATMUL_PROBES = (16, 48, 128, 256)
_RELU_PROBES = (1_000, 100_000, 2_000_000)


def _best_pair(ours, reference, repeats, budget_s=0.02):
    """Minimum seconds per call of two functions, sampled alternately (the minimum is
    the least noisy statistic for a short calibration on a shared machine); fewer
    than ``repeats`` samples once ``budget_s`` is spent (at least one)."""
    best_ours = best_ref = float("inf")
    stop = time.perf_counter() + budget_s
    calls = 1
    start = time.perf_counter()
    reference()
    once = time.perf_counter() - start
    if once < 2e-5:
        calls = 20       # time a few calls together so the clock resolves them
    ours()
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            ours()
        best_ours = min(best_ours, (time.perf_counter() - start) / calls)
        start = time.perf_counter()
        for _ in range(calls):
            reference()
        best_ref = min(best_ref, (time.perf_counter() - start) / calls)
        if time.perf_counter() > stop:
            break
    return best_ours, best_ref


# Calibration stops probing larger sizes once it has run this long (the remaining
# sizes then count as numpy's): first use must stay cheap even on a loaded machine.
_CALIBRATION_BUDGET_S = 0.12


def _largest_win(probes, timings):
    """The largest size (work) up to which ours was never slower: the threshold
    below which auto runs ours. 0 when ours lost at the smallest probe; inf when it
    never lost."""
    threshold = 0.0
    for work, (ours, ref) in zip(probes, timings):
        if ours is None:      # not measured (budget spent): numpy from here on
            return threshold
        # 3% slack: within the repeatability of a short measurement, call it a tie
        # and keep our kernel (one implementation across sizes is easier to reason about).
        if ours > 1.03 * ref:
            return threshold
        threshold = float(work)
    return float("inf")


# Square float32 sizes at which calibration compares our kernel on all threads with
# one thread; threads must win by _THREAD_GAIN to be used from that size on.
_THREAD_PROBES = (192, 320)
_THREAD_GAIN = 1.1
_THREADS_ONLY_ABOVE = 512.0 ** 3


def _thread_timing(a):
    """(seconds on one thread, seconds on all threads) for a @ a with our kernel."""
    old_threads = _cpu_matmul.set_num_threads(1)
    old_min = _cpu_matmul.set_thread_min_work(0.0)     # let the probe use threads
    try:
        def threaded():
            _cpu_matmul.set_num_threads(old_threads)
            _cpu_matmul.gemm(a, a)

        def serial():
            _cpu_matmul.set_num_threads(1)
            _cpu_matmul.gemm(a, a)
        one, many = _best_pair(serial, threaded, repeats=3)
    finally:
        _cpu_matmul.set_num_threads(old_threads)
        _cpu_matmul.set_thread_min_work(old_min)
    return one, many


def _ratio(timing):
    ours, ref = timing
    return None if ours is None else round(ref / ours, 2)


def _calibrate():
    """Measure our kernels against numpy at a few sizes and set auto mode's
    thresholds (about 0.1 s; runs once, at the first routed call)."""
    global _crossover
    start = time.perf_counter()
    deadline = start + _CALIBRATION_BUDGET_S
    rng = np.random.default_rng(0)
    result = {}
    _cpu_matmul.set_auto(False)      # probes time the kernel itself, not the routing
    _cpu_relu.set_auto(False)
    # smallest probes of every kind first, so that a spent budget only ever leaves
    # the largest sizes unmeasured
    plan = []
    for rank in range(max(len(_MATMUL_PROBES), len(_RELU_PROBES))):
        for kind in ("float32", "float64"):
            if rank < len(_MATMUL_PROBES):
                plan.append((kind, _MATMUL_PROBES[rank]))
        if rank < len(_RELU_PROBES):
            plan.append(("relu", _RELU_PROBES[rank]))
        if rank == 1 and _cpu_matmul.get_num_threads() > 1:
            # before the probes large enough to run threaded
            plan += [("threads", n) for n in _THREAD_PROBES]
    timings = {}
    for kind, size in plan:
        if time.perf_counter() > deadline:
            timings[kind, size] = (None, None)
        elif kind == "threads":
            timings[kind, size] = _thread_timing(rng.standard_normal((size, size)).astype(np.float32))
            if ("thread_min_work" not in result
                    and timings[kind, size][1] < timings[kind, size][0] / _THREAD_GAIN):
                # threads paid here first: run on them from this size on (larger
                # probes then measure the threaded kernel)
                _cpu_matmul.set_thread_min_work(float(size) ** 3)
                result["thread_min_work"] = float(size) ** 3
        elif kind == "relu":
            x = rng.standard_normal(size).astype(np.float32)
            timings[kind, size] = _best_pair(lambda: _cpu_relu.relu(x), lambda: _relu(x), repeats=3)
        else:
            a = rng.standard_normal((size, size)).astype(kind)
            b = rng.standard_normal((size, size)).astype(kind)
            timings[kind, size] = _best_pair(lambda: _cpu_matmul.matmul(a, b),
                                             lambda: np.matmul(a, b),
                                             repeats=3 if size >= 128 else 5)
    if "thread_min_work" not in result and all(
            timings.get(("threads", n), (None, None))[0] is not None for n in _THREAD_PROBES):
        # threads lost at every probe (other processes hold the cores, or one core):
        # keep them for products so large that a wake-up is noise
        _cpu_matmul.set_thread_min_work(_THREADS_ONLY_ABOVE)
        result["thread_min_work"] = _THREADS_ONLY_ABOVE
    result.setdefault("thread_min_work", _cpu_matmul.get_thread_min_work())
    result["thread_probes"] = {n: _ratio(timings[("threads", n)][::-1])
                               for n in _THREAD_PROBES if ("threads", n) in timings}
    for kind in ("float32", "float64"):
        measured = [timings[kind, n] for n in _MATMUL_PROBES]
        result[f"matmul_{kind}_max_work"] = _largest_win([n ** 3 for n in _MATMUL_PROBES], measured)
        result[f"matmul_{kind}_probes"] = {n: _ratio(t) for n, t in zip(_MATMUL_PROBES, measured)}
    measured = [timings["relu", n] for n in _RELU_PROBES]
    result["relu_max_size"] = _largest_win(_RELU_PROBES, measured)
    result["relu_probes"] = {n: _ratio(t) for n, t in zip(_RELU_PROBES, measured)}
    result["seconds"] = round(time.perf_counter() - start, 3)
    _crossover = result
    if _mode == "auto":
        _cpu_matmul.set_auto(True, result["matmul_float32_max_work"],
                             result["matmul_float64_max_work"])
        _cpu_relu.set_auto(True, result["relu_max_size"])


def set_kernels(mode: str) -> str:
    """Choose what runs matmul, ReLU and im2col/col2im on the CPU: "cython", "numpy" or "auto".

    Returns the previous mode. "cython" raises RuntimeError when the compiled kernels
    are unavailable (the message carries the import error); "auto" then means numpy.

    >>> old = set_kernels("numpy"); _ = set_kernels(old)
    """
    global _mode
    if mode not in MODES:
        raise ValueError(f"set_kernels: mode must be one of {MODES}, got {mode!r}")
    if mode == "cython" and _cpu_matmul is None:
        raise RuntimeError(f"set_kernels('cython'): compiled CPU kernels unavailable ({_IMPORT_ERROR})")
    old = _mode
    _mode = mode
    if _cpu_matmul is None or mode == "numpy":
        BACKEND.matmul = np.matmul
        BACKEND.relu = _relu
        BACKEND.relu_backward = _relu_backward
        BACKEND.im2col = _im2col.im2col
        BACKEND.col2im = _im2col.col2im
        for name in NORM_POOL_KERNELS:
            setattr(BACKEND, name, getattr(_norm_pool, name))
        return old
    # in both "cython" and "auto": ours was faster everywhere measured (module docstring)
    BACKEND.im2col = _cpu_conv.im2col
    BACKEND.col2im = _cpu_conv.col2im
    for name in NORM_POOL_KERNELS:
        setattr(BACKEND, name, getattr(_cpu_norm_pool, name))
    if mode == "cython":
        _cpu_matmul.set_auto(False)
        _cpu_relu.set_auto(False)
    elif _crossover is None:
        # measure lazily: the first routed call runs _calibrate, which sets the thresholds
        _cpu_matmul.set_auto(True, hook=_calibrate)
        _cpu_relu.set_auto(True, hook=_calibrate)
    else:
        _cpu_matmul.set_auto(True, _crossover["matmul_float32_max_work"],
                             _crossover["matmul_float64_max_work"])
        _cpu_relu.set_auto(True, _crossover["relu_max_size"])
    BACKEND.matmul = _cpu_matmul.matmul
    BACKEND.relu = _cpu_relu.relu
    BACKEND.relu_backward = _cpu_relu.relu_backward
    return old


def get_kernels() -> str:
    """The current mode ("cython", "numpy" or "auto")."""
    return _mode


def _describe(kind):
    if _cpu_matmul is None or _mode == "numpy":
        return "numpy"
    if _mode == "cython":
        return "cython"
    if kind in ("im2col", "col2im", "batch_norm"):
        return "auto: cython (faster than the numpy reference at every shape measured)"
    if kind == "max_pool":
        return "auto: cython (faster than the numpy reference over the Omniglot layers together)"
    if _crossover is None:
        return "auto (crossover measured at first call)"
    if kind == "matmul":
        f32 = _crossover["matmul_float32_max_work"]
        f64 = _crossover["matmul_float64_max_work"]
        return (f"auto: cython up to {f32:.3g} (float32) / {f64:.3g} (float64) "
                "multiply-adds, numpy above")
    return f"auto: cython up to {_crossover['relu_max_size']:.3g} elements, numpy above"


def kernel_info() -> dict:
    """What was built and what runs matmul, ReLU, im2col/col2im, batch norm and max
    pooling on the CPU.

    Returns a dict: ``compiled`` (bool: loaded and self-checked), ``built`` (False only
    when the extension was never built: no compiled module at all), ``error`` (why not
    compiled, else None), ``mode``,
    ``matmul``, ``relu``, ``im2col``, ``col2im``, ``batch_norm`` (training mode: forward,
    backward, running statistics) and ``max_pool`` (tiled: forward, backward) (the
    implementation that runs), ``cflags``, ``openmp``,
    ``vector_bits``, ``threads``, ``micro_tile_f32``/``_f64`` (MR, NR),
    ``gomp_spincount`` and ``crossover`` (auto mode's measurements, None until taken).

    >>> kernel_info()["mode"] in MODES
    True
    """
    info = {"compiled": _cpu_matmul is not None, "built": _BUILT, "error": _IMPORT_ERROR, "mode": _mode,
            "matmul": _describe("matmul"), "relu": _describe("relu"),
            "im2col": _describe("im2col"), "col2im": _describe("col2im"),
            "batch_norm": _describe("batch_norm"), "max_pool": _describe("max_pool")}
    if _cpu_matmul is not None:
        build = _cpu_matmul.BUILD_INFO
        info.update(cflags=build["cflags"], openmp=build["openmp"],
                    vector_bits=build["vector_bits"], threads=_cpu_matmul.get_num_threads(),
                    micro_tile_f32=build["micro_tile_f32"], micro_tile_f64=build["micro_tile_f64"],
                    gomp_spincount=os.environ.get("GOMP_SPINCOUNT"))
    info["crossover"] = _crossover
    return info


def _mode_from_env():
    mode = os.environ.get("TGM_CPU_KERNELS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"TGM_CPU_KERNELS must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "cython" and _cpu_matmul is None:
        return "numpy"   # the import warning above already says why
    return mode


set_kernels(_mode_from_env())
