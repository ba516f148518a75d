"""The CUDA backend: CuPy arrays on the GPU, matmul, ReLU and convolution's im2col/col2im
through our own kernels (a convolution is im2col on the GPU, then our SGEMM).

The kernels are CUDA C sources in ``kernels/cuda`` (``tinygrad_meta/cuda_kernels`` in an
installed package), compiled once per process by ``cupy.RawModule`` (CuPy also keeps the
binaries in its on-disk cache). Everything else runs through CuPy's numpy-like API.

CuPy is optional: importing ``tinygrad_meta`` never needs it. Asking for
``device="cuda"`` without it, or without a usable GPU, raises a RuntimeError that says
which of the two is missing.

>>> import tinygrad_meta as tgm                                   # doctest: +SKIP
>>> x = tgm.Tensor([[1.0, -2.0]], device="cuda", requires_grad=True)  # doctest: +SKIP
>>> (x @ x.T).relu().sum().backward()                               # doctest: +SKIP
>>> x.grad.numpy().tolist()                                         # doctest: +SKIP
[[2.0, -4.0]]
"""
from __future__ import annotations

import math
import os
import threading

import numpy as np

from . import im2col as _im2col

__all__ = ["CUDABackend", "get_backend", "kernel_dir", "kernel_info", "KERNEL_FILES", "KERNEL_NAMES"]

KERNEL_FILES = ("sgemm.cu", "relu.cu", "im2col.cu")

_F32 = np.dtype("float32")
_F64 = np.dtype("float64")
_THREADS = 256          # threads per block of every kernel here
_MAX_GRID_YZ = 65535    # CUDA's limit on gridDim.y and gridDim.z
# SGEMM tile configs: name prefix -> (BM, BN). "128x128" does 8x8 outputs per thread;
# "64x64" (4x4 per thread) makes 4x the blocks for matrices that leave SMs idle otherwise.
_SGEMM_TILES = {"128x128": (128, 128), "64x64": (64, 64)}
_DGEMM_TILE = (64, 64)
# Every kernel the backend launches, by source file (the tests check the PTX has each).
KERNEL_NAMES = {
    "sgemm.cu": tuple(f"sgemm_{tile}_{ta}{tb}" for tile in _SGEMM_TILES
                      for ta in "nt" for tb in "nt") + ("dgemm_tiled",),
    "relu.cu": ("relu_forward_f32", "relu_forward_f64", "relu_forward_f32_vec4",
                "relu_backward_f32", "relu_backward_f64", "relu_backward_f32_vec4"),
    "im2col.cu": ("im2col_f32", "im2col_f64", "col2im_f32", "col2im_f64"),
}

_lock = threading.Lock()
_backend = None


# ----------------------------------------------------------------------------------
# Finding CuPy, a GPU and the kernel sources
# ----------------------------------------------------------------------------------

def _import_cupy():
    """The cupy module, or a RuntimeError that says it is missing (or broken)."""
    try:
        import cupy
    except ImportError as error:
        if getattr(error, "name", None) == "cupy" or "No module named 'cupy'" in str(error) \
                or "import of cupy halted" in str(error):
            raise RuntimeError(
                "CUDA device requested but CuPy is not installed: pip install 'tinygrad-meta[gpu]' "
                "(or the cupy-cudaXXx wheel that matches your CUDA version)") from None
        raise RuntimeError(f"CUDA device requested but CuPy failed to import: {error}") from error
    return cupy


def _check_gpu(cupy):
    """Raise a RuntimeError unless CuPy sees at least one CUDA GPU."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError: no driver, driver too old, no device
        raise RuntimeError(f"CuPy is installed but no CUDA GPU is visible: {error}") from None
    if count < 1:
        raise RuntimeError("CuPy is installed but no CUDA GPU is visible: cudaGetDeviceCount() returned 0")


def kernel_dir() -> str:
    """The folder holding the ``.cu`` sources.

    ``TGM_CUDA_KERNEL_DIR`` overrides; else ``tinygrad_meta/cuda_kernels`` (an installed
    package, see setup.py's build_py step); else ``<repo>/kernels/cuda`` (a source checkout
    or an editable install).
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [os.environ.get("TGM_CUDA_KERNEL_DIR"),
                  os.path.join(package, "cuda_kernels"),
                  os.path.join(os.path.dirname(package), "kernels", "cuda")]
    for folder in candidates:
        if folder and all(os.path.isfile(os.path.join(folder, name)) for name in KERNEL_FILES):
            return folder
    searched = ", ".join(c for c in candidates if c)
    raise RuntimeError(f"cuda backend: kernel sources {KERNEL_FILES} not found in any of: {searched}")


def _parse_device(device) -> int:
    if device in (None, "cuda"):
        return 0
    if isinstance(device, str) and device.startswith("cuda:"):
        suffix = device[len("cuda:"):]
        if suffix.isdigit():
            index = int(suffix)
            if index == 0:
                return 0
            raise ValueError(
                f"device {device!r}: only one GPU ('cuda' = 'cuda:0') is supported; CuPy ops "
                "run on the current device, so tensors on other GPUs are not handled")
    raise ValueError(f"unknown device {device!r}; expected 'cuda' or 'cuda:0'")


def get_backend(device="cuda"):
    """The process-wide CUDA backend (created on first use; needs CuPy and a GPU).

    ``device``: "cuda" or "cuda:0". Raises RuntimeError naming what is missing.
    """
    global _backend
    _parse_device(device)
    if _backend is not None:
        return _backend
    with _lock:
        if _backend is None:
            cupy = _import_cupy()
            _check_gpu(cupy)
            _backend = CUDABackend(cupy, _CupyKernels(cupy))
    return _backend


def kernel_info() -> dict:
    """What runs matmul, ReLU and im2col/col2im on the GPU, without creating the backend
    if it isn't yet."""
    info = {"matmul": "ours (sgemm/dgemm) for float32/float64 with collapsible batch dims, "
                      "else cupy.matmul",
            "relu": "ours for float32/float64, else cupy.maximum",
            "im2col": "ours (im2col.cu, one thread per column element) for float32/float64, "
                      "else the CuPy reference",
            "col2im": "ours (im2col.cu, one thread per input element, no atomics) for "
                      "float32/float64, else the CuPy reference",
            "available": False}
    try:
        info["kernel_dir"] = kernel_dir()
    except RuntimeError as error:
        info["kernel_dir"] = str(error)
    try:
        backend = get_backend()
    except RuntimeError as error:
        info["reason"] = str(error)
        return info
    info["available"] = True
    info["device"] = backend.kernels.device_name
    info["sm_count"] = backend.kernels.sm_count
    return info


# ----------------------------------------------------------------------------------
# Kernel loading and launching (the only part that talks to CUDA)
# ----------------------------------------------------------------------------------

class _CupyKernels:
    """Compiles our ``.cu`` files with ``cupy.RawModule`` once and launches by name."""

    def __init__(self, cupy):
        self.cupy = cupy
        self._modules = {}
        self._functions = {}
        try:
            self.sm_count = int(cupy.cuda.Device(0).attributes["MultiProcessorCount"])
        except Exception:  # older CuPy spells it differently; only the tile choice uses it
            self.sm_count = int(cupy.cuda.runtime.getDeviceProperties(0)["multiProcessorCount"])
        try:
            self.device_name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        except Exception:  # only informational
            self.device_name = "cuda:0"

    def _function(self, source, name):
        key = (source, name)
        function = self._functions.get(key)
        if function is None:
            module = self._modules.get(source)
            if module is None:
                with open(os.path.join(kernel_dir(), source), encoding="utf-8") as f:
                    code = f.read()
                # No --use_fast_math: ReLU must keep NaN, and SGEMM must do the same plain
                # fp32 fma arithmetic as cuBLAS with TF32 off.
                module = self.cupy.RawModule(code=code)
                self._modules[source] = module
            try:
                function = module.get_function(name)  # the first call compiles the module
            except Exception as error:  # cupy.cuda.compiler.CompileException carries the log
                raise RuntimeError(f"cuda backend: compiling kernel {name} from "
                                   f"{os.path.join(kernel_dir(), source)} failed: {error}") from error
            self._functions[key] = function
        return function

    @staticmethod
    def pointer(array) -> int:
        return array.data.ptr

    def launch(self, source, name, grid, block, args):
        self._function(source, name)(grid, block, args)


# ----------------------------------------------------------------------------------
# Operand layouts: how a (batched) matrix view maps onto the kernels' arguments
# ----------------------------------------------------------------------------------

def _element_strides(array):
    itemsize = array.dtype.itemsize
    if any(s % itemsize for s in array.strides):
        return None
    return tuple(s // itemsize for s in array.strides)


def _batch_stride(shape, strides):
    """One element stride that walks all batch dims in C order, or None if there is none.

    Size-1 dims don't matter; a broadcast batch (all strides 0) gives 0.
    """
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    if not dims:
        return 0
    for (n_outer, s_outer), (n_inner, s_inner) in zip(dims, dims[1:]):
        if s_outer != s_inner * n_inner:
            return None
    return dims[-1][1]


def _matrix_layout(rows, cols, row_stride, col_stride):
    """(transposed, leading dimension) for the sgemm kernels, or None if a copy is needed.

    Not transposed: element (i, j) at i * ld + j. Transposed: at j * ld + i.
    """
    if cols == 1 or col_stride == 1:
        return False, (row_stride if rows > 1 else max(cols, 1))
    if rows == 1 or row_stride == 1:
        return True, (col_stride if cols > 1 else max(rows, 1))
    return None


class CUDABackend:
    """CuPy arrays on one GPU; matmul and ReLU run our kernels.

    ``xp`` is the array module (cupy); ``kernels`` compiles and launches (``_CupyKernels``).
    Both are parameters so the host-side logic can be exercised without a GPU.
    """
    name = "cuda"

    def __init__(self, xp, kernels):
        self.xp = xp
        self.kernels = kernels

    def __repr__(self):
        return f"CUDABackend({getattr(self.kernels, 'device_name', '?')})"

    # ---- moving data -----------------------------------------------------------
    def asarray(self, data, dtype=None):
        """Host data (number, list, numpy array) or a CuPy array -> a CuPy array on the GPU."""
        return self.xp.asarray(data, dtype=dtype)

    def to_numpy(self, array):
        """A CuPy array -> a numpy array on the host (a copy)."""
        if isinstance(array, (np.ndarray, np.generic)):  # already on the host
            return array
        return self.xp.asnumpy(array)

    # ---- convolution's gather/scatter ----------------------------------------------
    def im2col(self, x, kernel, stride, padding, dilation, pad_value=0.0, layout="image"):
        """Receptive fields of x (N, C, H, W) as columns (N, C*kh*kw, OH*OW), or one
        (C*kh*kw, N*OH*OW) matrix with ``layout="batch"``: the reference's layouts and
        values (``backends/im2col.py``). float32/float64 run our kernel, other dtypes
        the reference on CuPy."""
        geo = _im2col.geometry("im2col", x.shape, kernel, stride, padding, dilation)
        batch_layout = _im2col.check_layout("im2col", layout) == "batch"
        if x.dtype not in (_F32, _F64):
            return _im2col.im2col(x, kernel, stride, padding, dilation, pad_value, layout)
        n, c, _, _, kh, kw, _, _, _, _, _, _, oh, ow = geo
        x = self.xp.ascontiguousarray(x)
        shape = (c * kh * kw, n * oh * ow) if batch_layout else (n, c * kh * kw, oh * ow)
        cols = self.xp.empty(shape, dtype=x.dtype)
        if cols.size:
            scalar = np.float32 if x.dtype == _F32 else np.float64
            self.kernels.launch("im2col.cu", f"im2col_{'f32' if x.dtype == _F32 else 'f64'}",
                                self._elementwise_grid(cols.size), (_THREADS, 1, 1),
                                (x, cols, *(np.int64(v) for v in geo), np.int32(batch_layout),
                                 scalar(pad_value)))
        return cols

    def col2im(self, cols, input_shape, kernel, stride, padding, dilation, layout="image"):
        """The adjoint of :meth:`im2col`: columns summed back into (N, C, H, W), one
        thread per input element (no atomics: deterministic, the reference's sums)."""
        geo = _im2col.geometry("col2im", input_shape, kernel, stride, padding, dilation)
        _im2col.check_cols("col2im", cols, geo, layout)
        if cols.dtype not in (_F32, _F64):
            return _im2col.col2im(cols, input_shape, kernel, stride, padding, dilation, layout)
        cols = self.xp.ascontiguousarray(cols)
        image = self.xp.empty(geo[:4], dtype=cols.dtype)
        if image.size:
            self.kernels.launch("im2col.cu", f"col2im_{'f32' if cols.dtype == _F32 else 'f64'}",
                                self._elementwise_grid(image.size), (_THREADS, 1, 1),
                                (cols, image, *(np.int64(v) for v in geo), np.int32(layout == "batch")))
        return image

    def index_add(self, values, index, shape):
        """Zeros of ``shape`` with ``values`` added at the advanced ``index`` (repeated
        indices accumulate)."""
        out = self.xp.zeros(shape, dtype=values.dtype)
        self.xp.add.at(out, index, values)
        return out

    # ---- matmul ----------------------------------------------------------------
    def matmul(self, a, b, tile=None):
        """``numpy.matmul(a, b)`` semantics: 1-D operands, N-d batches with broadcasting.

        float32 goes to our SGEMM, float64 to our DGEMM, whenever every operand's batch
        dims collapse to one stride (true for contiguous and broadcast batches);
        transposed views run without copies. Anything else (other dtypes, mixed dtypes,
        odd batch layouts) goes to ``cupy.matmul``. ``tile``: force an SGEMM tile config
        ("128x128" or "64x64"; benchmarks use it), default picks by size.
        """
        xp = self.xp
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: operands must be at least 1-D, got shapes {a.shape} and {b.shape}")
        dtype = a.dtype
        if dtype != b.dtype or dtype not in (_F32, _F64):
            return xp.matmul(a, b)
        a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
        b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
        M, K = a2.shape[-2:]
        K_b, N = b2.shape[-2:]
        if K != K_b:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} don't align ({K} != {K_b})")
        try:
            batch_shape = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        except ValueError:
            raise ValueError(
                f"matmul: batch dims of shapes {a.shape} and {b.shape} don't broadcast") from None
        batch = math.prod(batch_shape)
        out_shape = batch_shape + (M, N)
        if batch == 0 or M == 0 or N == 0 or K == 0:
            out = xp.zeros(out_shape, dtype=dtype)
        else:
            out = self._gemm(a2, b2, batch_shape, batch, M, N, K, tile)
            if out is None:  # a layout our kernels don't take
                return xp.matmul(a, b)
        if a.ndim == 1:
            out = out.reshape(out.shape[:-2] + (N,))
        if b.ndim == 1:
            out = out.reshape(out.shape[:-1])
        return out

    def _operand(self, x, batch_shape):
        """(array, element strides of its matrix dims, batch stride) with x viewed over
        ``batch_shape``; copies x to C order when its strides are not whole elements.
        Returns None when the batch dims can't be walked with one stride."""
        xp = self.xp
        strides = _element_strides(x)
        if strides is None:
            x = xp.ascontiguousarray(x)
            strides = _element_strides(x)
        lead = len(batch_shape) - (x.ndim - 2)
        batch_strides = (0,) * lead + strides[:-2]
        batch_dims = (1,) * lead + x.shape[:-2]
        # a size-1 dim of x broadcast over a longer batch dim moves by 0
        batch_strides = tuple(0 if n == 1 else s for n, s in zip(batch_dims, batch_strides))
        stride = _batch_stride(batch_shape, batch_strides)
        if stride is None:
            return None
        return x, strides[-2], strides[-1], stride

    def _gemm(self, a, b, batch_shape, batch, M, N, K, tile):
        xp = self.xp
        ops_a = self._operand(a, batch_shape)
        ops_b = self._operand(b, batch_shape)
        if ops_a is None or ops_b is None:
            return None
        a, a_rs, a_cs, stride_a = ops_a
        b, b_rs, b_cs, stride_b = ops_b
        out = xp.empty((batch, M, N), dtype=a.dtype)
        if a.dtype == _F64:
            bm, bn = _DGEMM_TILE
            grid = self._grid(M, N, batch, bm, bn)
            if grid is None:
                return None
            args = (a, b, out, np.int32(M), np.int32(N), np.int32(K),
                    np.int64(a_rs), np.int64(a_cs), np.int64(b_rs), np.int64(b_cs), np.int64(N),
                    np.int64(stride_a), np.int64(stride_b), np.int64(M * N), np.int32(batch),
                    # coalesce along whichever index is contiguous in memory
                    np.int32(abs(a_cs) <= abs(a_rs)), np.int32(abs(b_cs) <= abs(b_rs)))
            self.kernels.launch("sgemm.cu", "dgemm_tiled", grid, (_THREADS, 1, 1), args)
            return out.reshape(batch_shape + (M, N))

        layout_a = _matrix_layout(M, K, a_rs, a_cs)
        if layout_a is None:
            a = xp.ascontiguousarray(xp.broadcast_to(a, batch_shape + (M, K))).reshape(batch, M, K)
            layout_a, stride_a = (False, K), M * K
        layout_b = _matrix_layout(K, N, b_rs, b_cs)
        if layout_b is None:
            b = xp.ascontiguousarray(xp.broadcast_to(b, batch_shape + (K, N))).reshape(batch, K, N)
            layout_b, stride_b = (False, N), K * N
        (trans_a, lda), (trans_b, ldb) = layout_a, layout_b
        tile = tile or self._pick_tile(M, N, batch)
        bm, bn = _SGEMM_TILES[tile]
        grid = self._grid(M, N, batch, bm, bn)
        if grid is None:
            return None
        pointer = self.kernels.pointer
        # float4 loads need 16-byte aligned rows in every batch entry
        vec_a = pointer(a) % 16 == 0 and lda % 4 == 0 and stride_a % 4 == 0
        vec_b = pointer(b) % 16 == 0 and ldb % 4 == 0 and stride_b % 4 == 0
        vec_c = pointer(out) % 16 == 0 and N % 4 == 0 and (M * N) % 4 == 0
        name = f"sgemm_{tile}_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}"
        args = (a, b, out, np.int32(M), np.int32(N), np.int32(K),
                np.int64(lda), np.int64(ldb), np.int64(N),
                np.int64(stride_a), np.int64(stride_b), np.int64(M * N), np.int32(batch),
                np.int32(vec_a), np.int32(vec_b), np.int32(vec_c))
        self.kernels.launch("sgemm.cu", name, grid, (_THREADS, 1, 1), args)
        return out.reshape(batch_shape + (M, N))

    def _pick_tile(self, M, N, batch):
        # 128x128 tiles only when they alone give every SM a block; else 4x the blocks.
        blocks = math.ceil(M / 128) * math.ceil(N / 128) * batch
        return "128x128" if blocks >= self.kernels.sm_count else "64x64"

    @staticmethod
    def _grid(M, N, batch, bm, bn):
        grid_y = math.ceil(M / bm)
        if grid_y > _MAX_GRID_YZ or M >= 2 ** 31 or N >= 2 ** 31:
            return None
        # the kernels loop over the batch with a grid stride, so z can be capped
        return (math.ceil(N / bn), grid_y, min(batch, _MAX_GRID_YZ))

    # ---- ReLU --------------------------------------------------------------------
    def _elementwise_grid(self, count):
        # enough blocks to fill the GPU several times over; the grid-stride loop does the rest
        return (max(1, min(math.ceil(count / _THREADS), self.kernels.sm_count * 32)), 1, 1)

    def relu(self, x):
        """max(x, 0) elementwise; NaN stays NaN. float32/float64 run our kernel."""
        xp = self.xp
        if x.dtype not in (_F32, _F64):
            return xp.maximum(x, 0)
        x = xp.ascontiguousarray(x)
        out = xp.empty(x.shape, dtype=x.dtype)
        n = x.size
        if n == 0:
            return out
        pointer = self.kernels.pointer
        if x.dtype == _F32 and pointer(x) % 16 == 0 and pointer(out) % 16 == 0:
            grid = self._elementwise_grid(math.ceil(n / 4))
            self.kernels.launch("relu.cu", "relu_forward_f32_vec4", grid, (_THREADS, 1, 1),
                                (x, out, np.int64(n)))
        else:
            suffix = "f32" if x.dtype == _F32 else "f64"
            self.kernels.launch("relu.cu", f"relu_forward_{suffix}", self._elementwise_grid(n),
                                (_THREADS, 1, 1), (x, out, np.int64(n)))
        return out

    def relu_backward(self, g, x):
        """``g * (x > 0)`` in one fused pass (same shapes and float dtype), else in CuPy."""
        xp = self.xp
        if g.dtype != x.dtype or g.dtype not in (_F32, _F64) or g.shape != x.shape:
            return g * (x > 0)
        g = xp.ascontiguousarray(g)
        x = xp.ascontiguousarray(x)
        out = xp.empty(g.shape, dtype=g.dtype)
        n = g.size
        if n == 0:
            return out
        pointer = self.kernels.pointer
        if g.dtype == _F32 and pointer(g) % 16 == 0 and pointer(x) % 16 == 0 and pointer(out) % 16 == 0:
            grid = self._elementwise_grid(math.ceil(n / 4))
            self.kernels.launch("relu.cu", "relu_backward_f32_vec4", grid, (_THREADS, 1, 1),
                                (g, x, out, np.int64(n)))
        else:
            suffix = "f32" if g.dtype == _F32 else "f64"
            self.kernels.launch("relu.cu", f"relu_backward_{suffix}", self._elementwise_grid(n),
                                (_THREADS, 1, 1), (g, x, out, np.int64(n)))
        return out
