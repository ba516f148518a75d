"""The CUDA kernels and the cuda backend.

Three layers, so that most of it is checked on machines without a GPU:

* every ``kernels/cuda/*.cu`` compiles with ``nvcc -ptx -arch=sm_90`` and exports every
  kernel the backend launches (needs nvcc only);
* the kernels run on the CPU under a small emulator (each CUDA thread a ucontext fiber,
  ``__syncthreads`` a fiber switch in shuffled order, ``__shared__`` a static), driven by
  the real backend's host code with numpy arrays: tiling, edge guards, transposes, batch
  strides, float4 alignment decisions and the engine's gradients through them (needs g++);
* ``-m gpu`` tests compare with CuPy/numpy on a real GPU (skipped without CuPy or a GPU);

plus the error messages when CuPy or the GPU is missing (always run).
"""
import ctypes
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinygrad_meta as tgm
from tinygrad_meta.backends import cuda as cuda_backend

KERNEL_DIR = cuda_backend.kernel_dir()
CU_FILES = sorted(name for name in os.listdir(KERNEL_DIR) if name.endswith(".cu"))


def _tolerance(dtype, k):
    # float32 rounding error of a length-k dot product grows ~linearly in k
    return 1e-5 * max(k, 1) if np.dtype(dtype) == np.float32 else 1e-12 * max(k, 1)


def _assert_matmul_close(got, a, b):
    want = np.matmul(np.asarray(a, np.float64), np.asarray(b, np.float64))
    assert got.shape == want.shape
    assert got.dtype == a.dtype
    if got.size:
        err = np.max(np.abs(np.asarray(got, np.float64) - want) / (1.0 + np.abs(want)))
        assert err < _tolerance(a.dtype, a.shape[-1]), f"relative error {err} for {a.shape} @ {b.shape}"


# ----------------------------------------------------------------------------------
# nvcc: every .cu file compiles (runs wherever nvcc is on PATH, GPU or not)
# ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    """{file name: PTX text} for every .cu file, compiled in parallel."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    out = tmp_path_factory.mktemp("ptx")
    jobs = {}
    for name in CU_FILES:
        target = out / (name[:-3] + ".ptx")
        command = ["nvcc", "-ptx", "-arch=sm_90", os.path.join(KERNEL_DIR, name), "-o", str(target)]
        jobs[name] = (target, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                text=True))
    result, failures = {}, []
    for name, (target, process) in jobs.items():
        output, _ = process.communicate(timeout=300)
        if process.returncode != 0:
            failures.append(f"{name}:\n{output}")
        else:
            result[name] = target.read_text()
    assert not failures, "nvcc -ptx -arch=sm_90 failed:\n" + "\n".join(failures)
    return result


def test_every_cu_file_compiles_to_ptx_for_sm90(ptx):
    assert set(ptx) == set(CU_FILES)
    assert set(cuda_backend.KERNEL_FILES) <= set(CU_FILES)


def test_ptx_exports_every_kernel_the_backend_launches(ptx):
    for source, names in cuda_backend.KERNEL_NAMES.items():
        for name in names:
            # extern "C" keeps the name unmangled: `.entry name(`
            assert f".entry {name}(" in ptx[source], f"{source} has no kernel {name}"


def test_every_cu_file_compiles_with_nvrtc_like_cupy_does():
    """CuPy's RawModule compiles with NVRTC, which has no host headers: check that path too
    (needs CuPy's NVRTC bindings and libnvrtc, not a GPU)."""
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as error:  # no CuPy, or no libnvrtc that it can load
        pytest.skip(f"NVRTC not available: {error}")
    for source, names in cuda_backend.KERNEL_NAMES.items():
        with open(os.path.join(KERNEL_DIR, source), encoding="utf-8") as f:
            program = nvrtc.createProgram(f.read(), source, [], [])
        try:
            try:
                nvrtc.compileProgram(program, ["--gpu-architecture=compute_90"])
            except nvrtc.NVRTCError:
                pytest.fail(f"NVRTC cannot compile {source}:\n{nvrtc.getProgramLog(program)}")
            text = nvrtc.getPTX(program).decode(errors="replace")
        finally:
            nvrtc.destroyProgram(program)
        for name in names:
            assert f".entry {name}(" in text, f"{source} (NVRTC) has no kernel {name}"


def test_kernels_use_no_local_memory(ptx):
    # a register tile indexed with a run-time index is placed in local memory (.local in
    # the PTX), which would make the SGEMM several times slower. (ptxas spills are not
    # visible in PTX; `nvcc -cubin -Xptxas -v` shows those: 0-4 bytes at the time of writing.)
    for source, text in ptx.items():
        assert ".local" not in text, f"{source} uses local memory"


# ----------------------------------------------------------------------------------
# The kernels on the CPU, under an emulator, driven by the backend's host code
# ----------------------------------------------------------------------------------

_EMULATOR_HEADER = r"""
#include <ucontext.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>
struct float4 { float x, y, z, w; };
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
struct emu_dim3 { unsigned x, y, z; };
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
using std::fma;
using std::fmaf;
static emu_dim3 emu_tidx[1024];
static int emu_cur = 0;
static emu_dim3 blockIdx, blockDim, gridDim;
#define threadIdx (emu_tidx[emu_cur])
static ucontext_t emu_sched_ctx;
static ucontext_t emu_ctx[1024];
static int emu_state[1024];  // 0 running, 1 waiting at the barrier, 2 finished
static std::function<void()> emu_body;
static std::mt19937 emu_rng(12345);
static void __syncthreads() {
    emu_state[emu_cur] = 1;
    swapcontext(&emu_ctx[emu_cur], &emu_sched_ctx);
}
static void emu_entry() { emu_body(); emu_state[emu_cur] = 2; }
static void emu_run(int gx, int gy, int gz, int bx, std::function<void()> body) {
    static std::vector<char> stacks;
    const size_t stack_size = 256 * 1024;
    if (stacks.size() < stack_size * (size_t)bx) stacks.resize(stack_size * (size_t)bx);
    emu_body = body;
    gridDim = {(unsigned)gx, (unsigned)gy, (unsigned)gz};
    blockDim = {(unsigned)bx, 1, 1};
    std::vector<int> order(bx);
    for (int z = 0; z < gz; ++z) for (int y = 0; y < gy; ++y) for (int x = 0; x < gx; ++x) {
        blockIdx = {(unsigned)x, (unsigned)y, (unsigned)z};
        for (int t = 0; t < bx; ++t) {
            emu_tidx[t] = {(unsigned)t, 0, 0};
            getcontext(&emu_ctx[t]);
            emu_ctx[t].uc_stack.ss_sp = &stacks[stack_size * t];
            emu_ctx[t].uc_stack.ss_size = stack_size;
            emu_ctx[t].uc_link = &emu_sched_ctx;
            makecontext(&emu_ctx[t], emu_entry, 0);
            emu_state[t] = 0;
            order[t] = t;
        }
        for (;;) {
            // a shuffled order in every barrier interval makes a missing barrier a wrong result
            std::shuffle(order.begin(), order.end(), emu_rng);
            for (int t : order) {
                if (emu_state[t] == 2) continue;
                emu_state[t] = 0;
                emu_cur = t;
                swapcontext(&emu_sched_ctx, &emu_ctx[t]);
            }
            int waiting = 0, done = 0;
            for (int t = 0; t < bx; ++t) { waiting += emu_state[t] == 1; done += emu_state[t] == 2; }
            if (done == bx) break;
            if (done > 0 && waiting > 0) { std::fprintf(stderr, "divergent __syncthreads\n"); std::abort(); }
        }
    }
}
"""

_EMULATOR_LAUNCHERS = r"""
#include "sgemm.cu"
#include "relu.cu"
#include "im2col.cu"
#define SG_PARAMS const float* A, const float* B, float* C, int M, int N, int K, long long lda, \
    long long ldb, long long ldc, long long sa, long long sb, long long sc, int batch, int va, int vb, int vc
#define SG(NAME) extern "C" void emu_##NAME(int gx, int gy, int gz, int bx, SG_PARAMS) { \
    emu_run(gx, gy, gz, bx, [=] { NAME(A, B, C, M, N, K, lda, ldb, ldc, sa, sb, sc, batch, va, vb, vc); }); }
SG(sgemm_128x128_nn) SG(sgemm_128x128_nt) SG(sgemm_128x128_tn) SG(sgemm_128x128_tt)
SG(sgemm_64x64_nn) SG(sgemm_64x64_nt) SG(sgemm_64x64_tn) SG(sgemm_64x64_tt)
extern "C" void emu_dgemm_tiled(int gx, int gy, int gz, int bx, const double* A, const double* B, double* C,
        int M, int N, int K, long long ars, long long acs, long long brs, long long bcs, long long ldc,
        long long sa, long long sb, long long sc, int batch, int akf, int bnf) {
    emu_run(gx, gy, gz, bx, [=] { dgemm_tiled(A, B, C, M, N, K, ars, acs, brs, bcs, ldc, sa, sb, sc, batch, akf, bnf); });
}
#define RF(NAME, T) extern "C" void emu_##NAME(int gx, int gy, int gz, int bx, const T* x, T* y, long long n) { \
    emu_run(gx, gy, gz, bx, [=] { NAME(x, y, n); }); }
#define RB(NAME, T) extern "C" void emu_##NAME(int gx, int gy, int gz, int bx, const T* g, const T* x, T* y, \
    long long n) { emu_run(gx, gy, gz, bx, [=] { NAME(g, x, y, n); }); }
RF(relu_forward_f32, float) RF(relu_forward_f64, double) RF(relu_forward_f32_vec4, float)
RB(relu_backward_f32, float) RB(relu_backward_f64, double) RB(relu_backward_f32_vec4, float)
#define GEO_PARAMS long long n, long long c, long long h, long long w, long long kh, long long kw, \
    long long sh, long long sw, long long ph, long long pw, long long dh, long long dw, long long oh, long long ow, \
    int batch_layout
#define GEO n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, batch_layout
#define I2C(NAME, T) extern "C" void emu_##NAME(int gx, int gy, int gz, int bx, const T* x, T* cols, \
    GEO_PARAMS, T pad) { emu_run(gx, gy, gz, bx, [=] { NAME(x, cols, GEO, pad); }); }
#define C2I(NAME, T) extern "C" void emu_##NAME(int gx, int gy, int gz, int bx, const T* cols, T* x, \
    GEO_PARAMS) { emu_run(gx, gy, gz, bx, [=] { NAME(cols, x, GEO); }); }
I2C(im2col_f32, float) I2C(im2col_f64, double) C2I(col2im_f32, float) C2I(col2im_f64, double)
"""


class _EmulatedKernels:
    """Stands in for the backend's CuPy launcher: numpy arrays, kernels run by the emulator."""
    sm_count = 4
    device_name = "CPU emulator"

    def __init__(self, library):
        self.library = library
        self.launched = []

    @staticmethod
    def pointer(array):
        return array.ctypes.data

    def launch(self, source, name, grid, block, args):
        assert name in cuda_backend.KERNEL_NAMES[source]
        assert block[1:] == (1, 1) and all(g >= 1 for g in grid)
        converted = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                converted.append(ctypes.c_void_p(arg.ctypes.data))
            elif isinstance(arg, np.int32):
                converted.append(ctypes.c_int32(int(arg)))
            elif isinstance(arg, np.int64):
                converted.append(ctypes.c_int64(int(arg)))
            elif isinstance(arg, np.float32):
                converted.append(ctypes.c_float(float(arg)))
            elif isinstance(arg, np.float64):
                converted.append(ctypes.c_double(float(arg)))
            else:  # CuPy would pass a Python int as a 64-bit long long: never rely on that
                raise TypeError(f"kernel {name}: argument of type {type(arg).__name__}; "
                                "pass numpy.int32/int64/float32/float64 so the C type is explicit")
        self.launched.append(name)
        getattr(self.library, "emu_" + name)(*(ctypes.c_int(v) for v in grid), ctypes.c_int(block[0]),
                                             *converted)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """A CUDABackend over numpy whose kernels run on the CPU emulator."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not on PATH")
    folder = tmp_path_factory.mktemp("emulator")
    (folder / "emulator.h").write_text(_EMULATOR_HEADER)
    (folder / "launchers.cpp").write_text(_EMULATOR_LAUNCHERS)
    library = folder / "libemulated_kernels.so"
    command = [compiler, "-O1", "-std=c++17", "-shared", "-fPIC", "-Wno-unknown-pragmas",
               "-include", str(folder / "emulator.h"), "-I", KERNEL_DIR, "-x", "c++",
               str(folder / "launchers.cpp"), "-o", str(library)]
    build = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, "the .cu files don't build under the CPU emulator:\n" + build.stderr
    backend = cuda_backend.CUDABackend(np, _EmulatedKernels(ctypes.CDLL(str(library))))
    backend.name = "cuda-emulated"
    return backend


def _random(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


AWKWARD_SHAPES = [(1, 7, 9), (9, 1, 7), (7, 9, 1), (1, 1, 1), (5, 4, 8), (128, 8, 128),
                  (130, 33, 70), (67, 131, 129), (3, 17, 200)]  # (M, K, N)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_emulated_gemm_awkward_shapes_and_transposes(emulated, dtype, trans_a, trans_b):
    rng = np.random.default_rng(0)
    tiles = ("128x128", "64x64") if dtype == "float32" else (None,)
    first_launch = len(emulated.kernels.launched)
    for m, k, n in AWKWARD_SHAPES:
        a = _random(rng, (k, m), dtype).T if trans_a else _random(rng, (m, k), dtype)
        b = _random(rng, (n, k), dtype).T if trans_b else _random(rng, (k, n), dtype)
        for tile in tiles:
            _assert_matmul_close(emulated.matmul(a, b, tile=tile), a, b)
    # transposed views reach the kernels as flags, not copies
    if dtype == "float32":
        expected = f"sgemm_64x64_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}"
        assert expected in emulated.kernels.launched[first_launch:]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_gemm_batches_broadcasting_and_1d(emulated, dtype):
    rng = np.random.default_rng(1)
    cases = [((3, 13, 6), (3, 6, 5)), ((3, 13, 6), (6, 5)), ((13, 6), (2, 3, 6, 5)),
             ((2, 1, 4, 6), (1, 3, 6, 5)),  # batch dims that need cupy.matmul's general path
             ((6,), (3, 6, 5)), ((3, 4, 6), (6,)), ((6,), (6,)), ((1, 6), (6, 1))]
    for shape_a, shape_b in cases:
        a, b = _random(rng, shape_a, dtype), _random(rng, shape_b, dtype)
        _assert_matmul_close(emulated.matmul(a, b), a, b)
    a = _random(rng, (2, 5, 3), dtype).transpose(0, 2, 1)
    b = _random(rng, (2, 4, 5), dtype).transpose(0, 2, 1)
    _assert_matmul_close(emulated.matmul(a, b), a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_gemm_views_offsets_strides_and_empty(emulated, dtype):
    rng = np.random.default_rng(2)
    big = _random(rng, (40, 41), dtype)
    cases = [(big[1:18, 3:22], big[2:21, 1:10]),     # offsets: rows not 16-byte aligned
             (big[::2, ::3], big[:14, ::2]),         # no unit stride: a copy (sgemm) or strides (dgemm)
             (big[::-1][:10, :7], big[:7, ::-1][:, :12]),  # negative strides
             (np.broadcast_to(big[0, :40], (5, 40)), big[:, :3]),  # zero row stride
             (big[:5, :3], np.broadcast_to(big[:3, :1], (3, 9))),  # zero column stride
             (np.zeros((0, 3), dtype), np.zeros((3, 4), dtype)),
             (np.zeros((2, 0), dtype), np.zeros((0, 4), dtype))]
    for a, b in cases:
        _assert_matmul_close(emulated.matmul(a, b), a, b)


def test_emulated_gemm_shape_errors(emulated):
    a, b = np.ones((2, 3), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 5\) don't align"):
        emulated.matmul(a, b)
    with pytest.raises(ValueError, match="don't broadcast"):
        emulated.matmul(np.ones((2, 3, 4), np.float32), np.ones((5, 4, 2), np.float32))


GEMM_CASES = dict(m=st.integers(1, 70), k=st.integers(1, 40), n=st.integers(1, 70),
                  batch=st.integers(0, 3), trans_a=st.booleans(), trans_b=st.booleans(),
                  offset=st.integers(0, 3), dtype=st.sampled_from(["float32", "float64"]),
                  tile=st.sampled_from(["128x128", "64x64"]))


def _check_gemm_case(backend, m, k, n, batch, trans_a, trans_b, offset, dtype, tile):
    """One generated case: operands are views `offset` elements into a buffer (so float4
    alignment varies), optionally transposed, optionally batched; compared with numpy."""
    xp = backend.xp
    rng = np.random.default_rng(m * 10007 + k * 101 + n)
    lead = (batch,) if batch else ()

    def operand(rows, cols, transposed):
        shape = lead + ((cols, rows) if transposed else (rows, cols))
        flat = xp.asarray(_random(rng, offset + int(np.prod(shape)), dtype))[offset:]
        array = flat.reshape(shape)
        return xp.swapaxes(array, -1, -2) if transposed else array

    a, b = operand(m, k, trans_a), operand(k, n, trans_b)
    got = backend.matmul(a, b, tile=tile if dtype == "float32" else None)
    _assert_matmul_close(backend.to_numpy(got), backend.to_numpy(a), backend.to_numpy(b))


@settings(max_examples=25, deadline=None)
@given(**GEMM_CASES)
def test_emulated_gemm_matches_numpy_property(emulated, **case):
    _check_gemm_case(emulated, **case)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 9, 1027])
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply")  # numpy's inf * 0
def test_emulated_relu_forward_backward_match_numpy(emulated, dtype, size):
    rng = np.random.default_rng(size)
    x, g = _random(rng, size, dtype), _random(rng, size, dtype)
    if size >= 9:
        x[:5] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
        g[4:9] = [np.inf, np.nan, -np.inf, np.nan, 1.0]   # inf * 0 where x <= 0 -> NaN, as numpy
    np.testing.assert_array_equal(emulated.relu(x), np.maximum(x, 0))
    np.testing.assert_array_equal(emulated.relu_backward(g, x), g * (x > 0))
    # one element in: not 16-byte aligned, so the scalar kernels run
    shifted_x, shifted_g = np.concatenate([x, x])[1:size + 1], np.concatenate([g, g])[1:size + 1]
    np.testing.assert_array_equal(emulated.relu(shifted_x), np.maximum(shifted_x, 0))
    np.testing.assert_array_equal(emulated.relu_backward(shifted_g, shifted_x), shifted_g * (shifted_x > 0))
    # non-contiguous input keeps its shape
    matrix = _random(rng, (4, 6), dtype)[:, ::2]
    np.testing.assert_array_equal(emulated.relu(matrix), np.maximum(matrix, 0))


def _mlp_second_order(device, dtype="float64"):
    """d/dW1 of |d loss/dW1|^2 for a 2-layer ReLU MLP: exercises matmul with transposed
    operands (backward), relu and relu_backward (the double backward), batched shapes."""
    rng = np.random.default_rng(7)
    x = tgm.Tensor(rng.standard_normal((5, 3)), dtype=dtype, device=device)
    y = tgm.Tensor(rng.standard_normal((5, 2)), dtype=dtype, device=device)
    w1 = tgm.Tensor(rng.standard_normal((3, 8)), dtype=dtype, device=device, requires_grad=True)
    w2 = tgm.Tensor(rng.standard_normal((8, 2)), dtype=dtype, device=device, requires_grad=True)
    loss = (((x @ w1).relu() @ w2 - y) ** 2).mean()
    g1, g2 = tgm.grad(loss, [w1, w2], create_graph=True)
    penalty = (g1 * g1).sum() + (g2 * g2).sum()
    h1, h2 = tgm.grad(penalty, [w1, w2])
    return [t.numpy() for t in (loss, g1, g2, h1, h2)]


def _batched_meta_gradient(device, dtype="float64"):
    """A MAML-shaped step with a task axis: per-task weights (T, in, out), one inner SGD
    step, the meta-gradient through it. The backward runs batched g @ W.mT and x.mT @ g
    (transposed batched views) and their derivatives."""
    rng = np.random.default_rng(11)
    x = tgm.Tensor(rng.standard_normal((4, 5, 3)), dtype=dtype, device=device)
    y = tgm.Tensor(rng.standard_normal((4, 5, 1)), dtype=dtype, device=device)
    w1 = tgm.Tensor(rng.standard_normal((3, 6)), dtype=dtype, device=device, requires_grad=True)
    w2 = tgm.Tensor(rng.standard_normal((6, 1)), dtype=dtype, device=device, requires_grad=True)

    def loss(a, b):
        return ((((x @ a).relu()) @ b - y) ** 2).mean()

    task_w1 = w1.broadcast_to((4, 3, 6))
    task_w2 = w2.broadcast_to((4, 6, 1))
    g1, g2 = tgm.grad(loss(task_w1, task_w2), [task_w1, task_w2], create_graph=True)
    adapted = loss(task_w1 - 0.1 * g1, task_w2 - 0.1 * g2)
    return [t.numpy() for t in (adapted, *tgm.grad(adapted, [w1, w2]))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_backend_batched_meta_gradient_matches_cpu(emulated, dtype):
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    launched = len(emulated.kernels.launched)
    for got, want in zip(_batched_meta_gradient(emulated, dtype), _batched_meta_gradient("cpu", dtype)):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    if dtype == "float32":  # the transposed batched products ran as flags on our kernels
        kinds = {name[-2:] for name in emulated.kernels.launched[launched:] if name.startswith("sgemm")}
        assert {"nn", "tn"} <= kinds  # tn: x.mT @ g, the weight gradient


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_backend_second_order_gradients_match_cpu(emulated, dtype):
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    for got, want in zip(_mlp_second_order(emulated, dtype), _mlp_second_order("cpu", dtype)):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


# im2col/col2im (convolution's gather and its adjoint): the reference's exact result

CONV_CASES = dict(n=st.integers(0, 2), c=st.integers(0, 3), h=st.integers(0, 7), w=st.integers(0, 7),
                  kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
                  stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
                  padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
                  dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
                  dtype=st.sampled_from(["float32", "float64"]),
                  pad_value=st.sampled_from([0.0, -np.inf]), layout=st.sampled_from(["image", "batch"]))


def _check_im2col_case(backend, n, c, h, w, kernel, stride, padding, dilation, dtype, pad_value,
                       layout):
    """One case on ``backend`` against the numpy reference: im2col copies, so it must be
    equal; col2im adds the taps in the reference's order, so it must be equal too."""
    from tinygrad_meta.backends import im2col as reference
    xp = backend.xp
    rng = np.random.default_rng(n * 1000 + c * 100 + h * 10 + w)
    x = _random(rng, (n, c, h, w), dtype)
    geometry = (kernel, stride, padding, dilation)
    try:
        want = reference.im2col(x, *geometry, pad_value=pad_value, layout=layout)
    except ValueError as error:   # the kernel does not fit: the same message on the device
        with pytest.raises(ValueError, match="larger than the padded input"):
            backend.im2col(xp.asarray(x), *geometry, pad_value=pad_value, layout=layout)
        assert "larger than the padded input" in str(error)
        return
    got = backend.to_numpy(backend.im2col(xp.asarray(x), *geometry, pad_value=pad_value, layout=layout))
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    cols = _random(rng, want.shape, dtype)
    got = backend.to_numpy(backend.col2im(xp.asarray(cols), x.shape, *geometry, layout=layout))
    np.testing.assert_array_equal(got, reference.col2im(cols, x.shape, *geometry, layout=layout))


@settings(max_examples=40, deadline=None)
@given(**CONV_CASES)
def test_emulated_im2col_col2im_equal_the_reference_property(emulated, **case):
    _check_im2col_case(emulated, **case)


def test_emulated_im2col_col2im_run_our_kernels_at_omniglot_shapes(emulated):
    from tinygrad_meta.backends import im2col as reference
    rng = np.random.default_rng(3)
    launched = len(emulated.kernels.launched)
    for shape, stride in (((2, 3, 14, 14), 2), ((2, 2, 7, 7), 1)):
        x = _random(rng, shape, "float32")
        geometry = ((3, 3), (stride, stride), (1, 1), (1, 1))
        cols = emulated.im2col(x, *geometry)
        np.testing.assert_array_equal(cols, reference.im2col(x, *geometry))
        np.testing.assert_array_equal(emulated.col2im(cols, shape, *geometry),
                                      reference.col2im(cols, shape, *geometry))
        # a non-contiguous input is read after one copy, same result
        view = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        np.testing.assert_array_equal(emulated.im2col(view, *geometry), reference.im2col(x, *geometry))
        cols = emulated.im2col(x, *geometry, layout="batch")
        np.testing.assert_array_equal(cols, reference.im2col(x, *geometry, layout="batch"))
        np.testing.assert_array_equal(emulated.col2im(cols, shape, *geometry, layout="batch"),
                                      reference.col2im(cols, shape, *geometry, layout="batch"))
    assert {"im2col_f32", "col2im_f32"} <= set(emulated.kernels.launched[launched:])


def test_emulated_col2im_rejects_columns_of_the_wrong_shape(emulated):
    with pytest.raises(ValueError, match=r"col2im: columns of shape \(1, 9, 5\) do not fit"):
        emulated.col2im(np.zeros((1, 9, 5), np.float32), (1, 1, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1))


def test_emulated_conv_as_im2col_and_sgemm_matches_cpu(emulated):
    """A convolution on the (emulated) GPU path, forward and both gradients: im2col,
    our SGEMM, col2im; the same maths on the CPU backend's kernels agrees."""
    from tinygrad_meta.backends.cpu import BACKEND as host
    rng = np.random.default_rng(5)
    x, weight = _random(rng, (2, 3, 9, 9), "float32"), _random(rng, (4, 3 * 9), "float32")
    geometry = ((3, 3), (2, 2), (1, 1), (1, 1))
    results = []
    for backend in (emulated, host):
        cols = backend.im2col(x, *geometry)
        out = backend.matmul(weight, cols)
        grad_out = np.ones_like(out)
        grad_x = backend.col2im(backend.matmul(weight.T, grad_out), x.shape, *geometry)
        grad_w = backend.matmul(grad_out, cols.transpose(0, 2, 1)).sum(0)
        results.append([backend.to_numpy(a) for a in (out, grad_x, grad_w)])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------
# Without CuPy or without a GPU: clear errors (always run)
# ----------------------------------------------------------------------------------

@pytest.fixture
def fresh_backend(monkeypatch):
    """Forget any created backend so get_backend() checks CuPy and the GPU again."""
    monkeypatch.setattr(cuda_backend, "_backend", None)


def test_missing_cupy_names_the_install_command(monkeypatch, fresh_backend):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    with pytest.raises(RuntimeError, match=r"CuPy is not installed: pip install 'tinygrad-meta\[gpu\]'"):
        tgm.Tensor([1.0, 2.0], device="cuda")
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        tgm.Tensor([1.0]).to("cuda")
    assert cuda_backend.kernel_info()["available"] is False


def test_cupy_without_gpu_says_no_gpu_is_visible(monkeypatch, fresh_backend):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(RuntimeError, match="CuPy is installed but no CUDA GPU is visible: cudaErrorNoDevice"):
        tgm.zeros((2, 2), device="cuda")
    fake.cuda.runtime.getDeviceCount = lambda: 0
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        tgm.Tensor([1.0], device="cuda:0")


def test_importing_tinygrad_meta_needs_no_cupy():
    code = ("import sys; sys.modules['cupy'] = None; import tinygrad_meta as tgm; "
            "print((tgm.Tensor([2.0]) * 3).item())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "6.0"


def test_other_gpu_indices_are_refused_clearly():
    with pytest.raises(ValueError, match="only one GPU"):
        tgm.Tensor([1.0], device="cuda:1")
    with pytest.raises(ValueError, match="unknown device"):
        tgm.Tensor([1.0], device="cuda:x")


def test_kernel_sources_are_found():
    assert all(os.path.isfile(os.path.join(KERNEL_DIR, name)) for name in cuda_backend.KERNEL_FILES)


# ----------------------------------------------------------------------------------
# On a real GPU (pytest -m gpu; skipped without CuPy or a GPU)
# ----------------------------------------------------------------------------------

def _gpu_backend_or_skip():
    try:
        return cuda_backend.get_backend("cuda")
    except RuntimeError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def gpu():
    return _gpu_backend_or_skip()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gpu_gemm_matches_cupy_on_awkward_shapes(gpu, dtype, trans_a, trans_b):
    cp = gpu.xp
    rng = np.random.default_rng(0)
    shapes = AWKWARD_SHAPES + [(127, 251, 509), (1, 300, 1), (257, 1, 129), (1024, 64, 1)]
    tiles = ("128x128", "64x64") if dtype == "float32" else (None,)
    for m, k, n in shapes:
        a = _random(rng, (k, m), dtype).T if trans_a else _random(rng, (m, k), dtype)
        b = _random(rng, (n, k), dtype).T if trans_b else _random(rng, (k, n), dtype)
        da = cp.asarray(a.T).T if trans_a else cp.asarray(a)   # keep the transposed layout on the GPU
        db = cp.asarray(b.T).T if trans_b else cp.asarray(b)
        for tile in tiles:
            got = gpu.matmul(da, db, tile=tile)
            _assert_matmul_close(cp.asnumpy(got), a, b)
            reference = cp.asnumpy(cp.matmul(da, db))
            np.testing.assert_allclose(cp.asnumpy(got), reference, rtol=_tolerance(dtype, k),
                                       atol=_tolerance(dtype, k))


@pytest.mark.gpu
@settings(max_examples=60, deadline=None)
@given(**GEMM_CASES)
def test_gpu_gemm_matches_numpy_property(gpu, **case):
    _check_gemm_case(gpu, **case)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_batched_broadcast_and_1d_matmul(gpu, dtype):
    cp = gpu.xp
    rng = np.random.default_rng(3)
    cases = [((7, 33, 17), (7, 17, 65)), ((70000, 2, 3), (3, 2)),  # batch beyond gridDim.z's limit
             ((25, 40), (40, 40)), ((25, 1), (1, 40)), ((25, 40), (40, 1)), ((4, 25, 40), (40,)),
             ((40,), (4, 40, 3)), ((40,), (40,)), ((2, 1, 5, 6), (1, 3, 6, 4)), ((0, 4, 5), (5, 6))]
    for shape_a, shape_b in cases:
        a, b = _random(rng, shape_a, dtype), _random(rng, shape_b, dtype)
        _assert_matmul_close(cp.asnumpy(gpu.matmul(cp.asarray(a), cp.asarray(b))), a, b)
    big = cp.asarray(_random(rng, (64, 65), dtype))
    for da, db in [(big[1:30, 3:40], big[2:39, 1:20]), (big[::2, ::3], big[:22, ::2]),
                   (big[::-1][:10, :7], big[:7, ::-1][:, :12])]:
        _assert_matmul_close(cp.asnumpy(gpu.matmul(da, db)), cp.asnumpy(da), cp.asnumpy(db))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply")  # numpy's inf * 0
def test_gpu_relu_matches_numpy_with_nan_and_inf(gpu, dtype):
    cp = gpu.xp
    rng = np.random.default_rng(4)
    for size in (0, 1, 5, 1027, 1 << 20):
        x, g = _random(rng, size, dtype), _random(rng, size, dtype)
        if size >= 9:
            x[:5] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
            g[4:9] = [np.inf, np.nan, -np.inf, np.nan, 1.0]
        for offset in (0, 1):  # 1: not 16-byte aligned, scalar kernels
            dx, dg = cp.asarray(np.concatenate([x, x]))[offset:offset + size], \
                cp.asarray(np.concatenate([g, g]))[offset:offset + size]
            np.testing.assert_array_equal(cp.asnumpy(gpu.relu(dx)), np.maximum(x, 0))
            np.testing.assert_array_equal(cp.asnumpy(gpu.relu_backward(dg, dx)), g * (x > 0))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_second_order_gradient_matches_cpu(gpu, dtype):
    for got, want in zip(_mlp_second_order("cuda", dtype), _mlp_second_order("cpu", dtype)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_batched_meta_gradient_matches_cpu(gpu, dtype):
    for got, want in zip(_batched_meta_gradient("cuda", dtype), _batched_meta_gradient("cpu", dtype)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@settings(max_examples=60, deadline=None)
@given(**CONV_CASES)
def test_gpu_im2col_col2im_equal_the_reference_property(gpu, **case):
    _check_im2col_case(gpu, **case)


@pytest.mark.gpu
def test_gpu_tensor_round_trip_and_every_op_family(gpu):
    x_cpu = tgm.Tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    x = x_cpu.to("cuda")
    assert x.device == "cuda" and x.to("cuda") is x
    y = (x.exp().log() * 2 - 1).tanh().sigmoid() + x.abs().sqrt() + x.relu() + x.clip(-1, 1)
    z = tgm.functional.log_softmax(y, axis=-1).sum() + tgm.functional.logsumexp(y) + y.max() + y[0, 1:].sum()
    z.backward()
    assert x_cpu.grad.device == "cpu"  # the gradient flows back through .to("cuda")
    x_ref = tgm.Tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    y_ref = (x_ref.exp().log() * 2 - 1).tanh().sigmoid() + x_ref.abs().sqrt() + x_ref.relu() + x_ref.clip(-1, 1)
    z_ref = (tgm.functional.log_softmax(y_ref, axis=-1).sum() + tgm.functional.logsumexp(y_ref)
             + y_ref.max() + y_ref[0, 1:].sum())
    z_ref.backward()
    np.testing.assert_allclose(z.item(), z_ref.item(), rtol=1e-5)
    np.testing.assert_allclose(x_cpu.grad.numpy(), x_ref.grad.numpy(), rtol=1e-5, atol=1e-6)
    logits = tgm.Tensor(np.random.default_rng(5).standard_normal((4, 3)), device="cuda", requires_grad=True)
    loss = tgm.functional.cross_entropy(logits, np.array([0, 2, 1, 2]))
    loss.backward()
    assert logits.grad.shape == (4, 3) and np.isfinite(loss.item())
    assert isinstance(x.cpu().numpy(), np.ndarray)


@pytest.mark.gpu
def test_gpu_mixing_devices_is_a_clear_error(gpu):
    a = tgm.Tensor([1.0, 2.0], device="cuda")
    b = tgm.Tensor([1.0, 2.0])
    for operation in (lambda: a + b, lambda: b * a, lambda: a @ b, lambda: a > b,
                      lambda: tgm.where(b > 0, a, a)):
        with pytest.raises(RuntimeError, match="cpu|cuda"):
            operation()
    with pytest.raises(RuntimeError, match="different devices"):
        a - b
    labels = tgm.Tensor(np.array([0, 1]))
    with pytest.raises(RuntimeError, match="labels are on cpu"):
        tgm.functional.cross_entropy(tgm.Tensor(np.zeros((2, 2)), device="cuda"), labels)
