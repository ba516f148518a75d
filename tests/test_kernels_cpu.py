"""The compiled CPU kernels (kernels/cpu): matmul and ReLU against numpy, the routing in
the CPU backend, and the engine giving the same gradients with and without them."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinygrad_meta as tgm
from tinygrad_meta.backends import cpu

# Every test here runs the compiled kernels. Never built (no compiled module at all):
# they skip, saying how to build (tests/test_kernels_cpu_selection.py covers that case).
# Built but broken (it does not load, or fails its self-check): they fail, starting with
# test_compiled_kernels_are_loaded, which says why, as they should in CI.
pytestmark = pytest.mark.skipif(
    not cpu.kernel_info()["built"],
    reason=f"compiled CPU kernels are not built ({cpu.kernel_info()['error']})")

_cpu_matmul = cpu._cpu_matmul
_cpu_relu = cpu._cpu_relu


def test_compiled_kernels_are_loaded():
    # The test environment builds the extension: a broken build must fail here, not
    # fall back to numpy in silence.
    info = cpu.kernel_info()
    assert info["compiled"] is True, f"CPU kernels not loaded: {info['error']}"
    assert info["error"] is None
    assert "-O3" in info["cflags"]
    assert info["vector_bits"] in (128, 256, 512)
    assert isinstance(info["openmp"], bool)


@pytest.fixture
def cython_mode():
    old = cpu.set_kernels("cython")
    yield
    cpu.set_kernels(old)


def _reference(a, b):
    """float64 product and the elementwise scale |a| @ |b| for the error bound."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.matmul(a64, b64), np.matmul(np.abs(a64), np.abs(b64))


def _assert_matmul_close(got, a, b):
    want, scale = _reference(a, b)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.result_type(a, b)
    assert got.flags.c_contiguous
    k = max(a.shape[-1], 1)
    # rtol per the issue: 1e-5 (float32) / 1e-12 (float64), scaled by K because a
    # K-term dot product's rounding error grows with K; relative to |a| @ |b| so
    # cancellation in the exact result cannot make the bound meaningless.
    rtol = 1e-5 if got.dtype == np.float32 else 1e-12
    bound = rtol * k * scale + np.finfo(got.dtype).tiny
    excess = np.abs(got.astype(np.float64) - want) - bound
    assert np.all(excess <= 0), f"max error over bound {excess.max():.3g} for {a.shape} @ {b.shape}"


def _layout(x, kind):
    """The same values as ``x`` in a chosen memory layout."""
    if kind == "contiguous":
        return np.ascontiguousarray(x)
    if kind == "transposed":       # a C-contiguous array's .T of the transposed data
        return np.ascontiguousarray(np.swapaxes(x, -1, -2)).swapaxes(-1, -2)
    if kind == "strided":          # every other element of a larger buffer
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
    if kind == "reversed":         # negative strides
        return np.ascontiguousarray(x[..., ::-1, ::-1])[..., ::-1, ::-1]
    raise ValueError(kind)


LAYOUTS = ["contiguous", "transposed", "strided", "reversed"]
dims = st.integers(min_value=0, max_value=40)


@settings(max_examples=80, deadline=None)
@given(m=dims, k=dims, n=dims, dtype=st.sampled_from([np.float32, np.float64]),
       layout_a=st.sampled_from(LAYOUTS), layout_b=st.sampled_from(LAYOUTS),
       batch=st.sampled_from([None, 1, 3]), packed=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_matches_numpy(m, k, n, dtype, layout_a, layout_b, batch, packed, seed):
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    a = _layout(rng.standard_normal(lead + (m, k)).astype(dtype), layout_a)
    b = _layout(rng.standard_normal(lead + (k, n)).astype(dtype), layout_b)
    # packed=True: no product reads A in place, so small shapes take the packed path too
    old = _cpu_matmul.set_blocking(direct_max_a=0 if packed else -1)
    try:
        _assert_matmul_close(_cpu_matmul.gemm(a, b), a, b)
    finally:
        _cpu_matmul.set_blocking(*old)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 30), k=st.integers(1, 30), n=st.integers(1, 30),
       dtype=st.sampled_from([np.float32, np.float64]), trans_a=st.booleans(),
       trans_b=st.booleans(), batch=st.sampled_from([None, 2]), seed=st.integers(0, 2**16))
def test_gemm_transpose_flags(m, k, n, dtype, trans_a, trans_b, batch, seed):
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    a = rng.standard_normal(lead + ((k, m) if trans_a else (m, k))).astype(dtype)
    b = rng.standard_normal(lead + ((n, k) if trans_b else (k, n))).astype(dtype)
    got = _cpu_matmul.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    op_a = np.swapaxes(a, -1, -2) if trans_a else a
    op_b = np.swapaxes(b, -1, -2) if trans_b else b
    _assert_matmul_close(got, op_a, op_b)


@pytest.fixture
def tiny_blocks():
    # Cache blocks of a few elements make small products cross every KC/NC/MC block
    # boundary (and the accumulate-into-C path) that real sizes only reach at hundreds.
    old = _cpu_matmul.set_blocking(kc_f32=8, kc_f64=5, nc=1, mc=1, direct_max_a=0)
    yield
    _cpu_matmul.set_blocking(*old)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fixture state is per-test
@given(m=st.integers(1, 50), k=st.integers(1, 50), n=st.integers(1, 80),
       dtype=st.sampled_from([np.float32, np.float64]),
       layout_a=st.sampled_from(LAYOUTS), layout_b=st.sampled_from(LAYOUTS),
       seed=st.integers(0, 2**16))
def test_matmul_across_cache_blocks(tiny_blocks, m, k, n, dtype, layout_a, layout_b, seed):
    rng = np.random.default_rng(seed)
    a = _layout(rng.standard_normal((m, k)).astype(dtype), layout_a)
    b = _layout(rng.standard_normal((k, n)).astype(dtype), layout_b)
    _assert_matmul_close(_cpu_matmul.gemm(a, b), a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [
    (1, 1, 1), (1, 97, 1), (1, 300, 1), (97, 1, 89), (1, 53, 101), (101, 53, 1),
    (13, 17, 19), (0, 5, 7), (5, 0, 7), (5, 7, 0), (0, 0, 0),
    (211, 397, 523),          # primes past every default cache block (KC, NC, MC)
    (64, 64, 64), (96, 96, 97),
])
def test_matmul_edge_shapes(dtype, shape):
    m, k, n = shape
    rng = np.random.default_rng(m * 10007 + k * 101 + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    got = _cpu_matmul.gemm(a, b)
    _assert_matmul_close(got, a, b)
    if k == 0:
        assert np.all(got == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("packed", [False, True])
def test_a_column_of_the_product_does_not_depend_on_the_other_columns(dtype, packed):
    # Every element is the same k fused multiply-adds in k order, whichever tile (rows x
    # vectors) computes it, so the first n1 columns of A @ B are bit for bit A @ B[:, :n1].
    # (The 1-row, 1-vector tile used to round twice and broke this on a product's last
    # odd row; the conv's chunked schedule relies on it.)
    rng = np.random.default_rng(7)
    old = _cpu_matmul.set_blocking(direct_max_a=0) if packed else None
    try:
        for m in range(1, 14):
            a = rng.standard_normal((m, 19)).astype(dtype)
            b = rng.standard_normal((19, 67)).astype(dtype)
            full = _cpu_matmul.gemm(a, b)
            for n1 in (3, 5, 8, 13, 24, 40):
                np.testing.assert_array_equal(_cpu_matmul.gemm(a, b[:, :n1].copy()), full[:, :n1],
                                              err_msg=f"m={m}, n1={n1}")
    finally:
        if old is not None:
            _cpu_matmul.set_blocking(*old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_matrix_vector_products(dtype, layout):
    # n == 1 has its own loops (rows four at a time with vector and half-vector steps
    # along k, or axpy updates for a transposed A): cover every k remainder
    rng = np.random.default_rng(7)
    for m in (1, 3, 4, 5, 250):
        for k in (1, 7, 8, 9, 16, 23, 24, 25, 40, 100):
            a = _layout(rng.standard_normal((m, k)).astype(dtype), layout)
            b = rng.standard_normal((k, 1)).astype(dtype)
            _assert_matmul_close(_cpu_matmul.gemm(a, b), a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shapes", [
    ((3, 150, 130), (3, 130, 170)),     # batch < threads x ... splits rows
    ((5, 40, 60), (5, 60, 70)),          # batch >= threads
    ((1, 200, 150), (4, 150, 120)),      # broadcast batch of A
    ((200, 150), (3, 150, 120)),         # 2-D @ 3-D
    ((3, 200, 150), (150, 120)),         # 3-D @ 2-D, merged into one product
])
def test_matmul_batched_and_threaded(threads, shapes):
    old = _cpu_matmul.set_num_threads(threads)
    try:
        rng = np.random.default_rng(1)
        a = rng.standard_normal(shapes[0]).astype(np.float32)
        b = rng.standard_normal(shapes[1]).astype(np.float32)
        _assert_matmul_close(_cpu_matmul.matmul(a, b), a, b)
        _assert_matmul_close(_cpu_matmul.matmul(a.astype(np.float64), b.astype(np.float64)),
                             a.astype(np.float64), b.astype(np.float64))
    finally:
        _cpu_matmul.set_num_threads(old)


def test_matmul_3d_at_2d_with_gapped_batch_is_not_merged():
    # rows of consecutive batch entries are not evenly spaced: merging the batch into
    # rows would read the gap
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 7, 9)).astype(np.float32)[:, :5, :]
    b = rng.standard_normal((9, 6)).astype(np.float32)
    _assert_matmul_close(_cpu_matmul.matmul(a, b), a, b)


def test_matmul_odd_byte_strides_fall_back_correctly():
    # a field of a packed structured array has a 5-byte stride: not whole float32s
    rec = np.zeros((6, 4), dtype=[("x", "<f4"), ("pad", "u1")])
    rec["x"] = np.arange(24, dtype=np.float32).reshape(6, 4)
    a = rec["x"]
    assert a.strides[1] % 4 != 0
    b = np.ones((4, 3), dtype=np.float32)
    np.testing.assert_array_equal(_cpu_matmul.matmul(a, b), np.ascontiguousarray(a) @ b)


def test_matmul_and_relu_handle_swapped_and_unaligned_data():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((7, 5))
    b = rng.standard_normal((5, 3))
    swapped = a.astype(">f8")                              # big-endian float64
    raw = np.zeros(a.size * 8 + 1, dtype=np.uint8)[1:]     # one byte off alignment
    unaligned = raw.view(np.float64).reshape(a.shape)
    unaligned[...] = a
    assert not unaligned.flags.aligned
    for x in (swapped, unaligned):
        np.testing.assert_allclose(_cpu_matmul.matmul(x, b), a @ b, rtol=1e-12)
        np.testing.assert_array_equal(_cpu_relu.relu(x), np.maximum(a, 0))
        np.testing.assert_array_equal(_cpu_relu.relu_backward(x, x), a * (a > 0))


@pytest.mark.parametrize("a_shape, b_shape, dtypes", [
    ((3, 4), (4, 5), (np.int64, np.int64)),        # integers: numpy
    ((3, 4), (4, 5), (np.float32, np.float64)),    # mixed: numpy promotes
    ((4,), (4, 5), (np.float32, np.float32)),      # 1-D operand
    ((3, 4), (4,), (np.float64, np.float64)),
    ((4,), (4,), (np.float32, np.float32)),
    ((2, 2, 3, 4), (2, 2, 4, 5), (np.float32, np.float32)),   # 4-D
    ((2, 1, 3, 4), (3, 4, 5), (np.float64, np.float64)),      # N-d broadcasting
])
def test_matmul_keeps_numpy_semantics(a_shape, b_shape, dtypes):
    rng = np.random.default_rng(3)
    a = (rng.standard_normal(a_shape) * 10).astype(dtypes[0])
    b = (rng.standard_normal(b_shape) * 10).astype(dtypes[1])
    got, want = _cpu_matmul.matmul(a, b), np.matmul(a, b)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("a_shape, b_shape", [((3, 4), (5, 6)), ((2, 3, 4), (3, 4, 5)),
                                              ((3, 4), (2, 5, 6))])
def test_matmul_shape_mismatch_raises_numpy_error(a_shape, b_shape):
    a = np.ones(a_shape, np.float32)
    b = np.ones(b_shape, np.float32)
    with pytest.raises(ValueError):
        _cpu_matmul.matmul(a, b)


def test_gemm_rejects_bad_input_by_name():
    with pytest.raises(TypeError, match="float32 or two float64"):
        _cpu_matmul.gemm(np.ones((2, 2), np.float32), np.ones((2, 2), np.float64))
    with pytest.raises(ValueError, match=r"don't align \(3 != 4\)"):
        _cpu_matmul.gemm(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        _cpu_matmul.gemm(np.ones(3), np.ones((3, 2)))


# ---------------------------------------------------------------- ReLU

SPECIALS = [0.0, -0.0, 1.5, -1.5, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_propagates_nan_and_inf_like_numpy(dtype):
    x = np.array(SPECIALS, dtype=dtype)
    got = _cpu_relu.relu(x)
    want = np.maximum(x, 0)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)   # NaN == NaN for assert_array_equal
    assert np.isnan(got[4]) and np.isnan(got[5])
    assert got[6] == np.inf and got[7] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_matches_numpy_expression_on_specials(dtype):
    x = np.array(SPECIALS * len(SPECIALS), dtype=dtype)
    g = np.repeat(np.array(SPECIALS, dtype=dtype), len(SPECIALS))
    got = _cpu_relu.relu_backward(g, x)
    with np.errstate(invalid="ignore"):
        want = g * (x > 0)    # inf * 0 and nan * 0 are NaN there too
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [3, 8, 9, 37, 1000])
def test_relu_backward_bits_equal_numpy_in_vector_blocks_and_tail(dtype, n):
    # the kernel runs 32-byte vector blocks and a scalar tail; both must give numpy's
    # g * (x > 0) bit for bit, signed zeros (-g * 0 = -0.0) and NaN/inf included
    rng = np.random.default_rng(n)
    g = rng.standard_normal(n).astype(dtype)
    x = rng.standard_normal(n).astype(dtype)
    specials = np.array(SPECIALS, dtype=dtype)
    g[::5] = np.resize(specials, g[::5].shape)
    x[1::7] = np.resize(specials, x[1::7].shape)
    got = _cpu_relu.relu_backward(g, x)
    with np.errstate(invalid="ignore"):
        want = g * (x > 0)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(got.view(bits), want.view(bits))


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=0, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(["contiguous", "transposed", "strided"]),
       seed=st.integers(0, 2**16))
def test_relu_fwd_bwd_any_shape_and_layout(shape, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    if layout == "transposed":
        x, g = x.T, g.T
    elif layout == "strided" and x.ndim:
        x = np.repeat(x, 2, axis=-1)[..., ::2]
        g = np.repeat(g, 2, axis=-1)[..., ::2]
    np.testing.assert_array_equal(_cpu_relu.relu(x), np.maximum(x, 0))
    np.testing.assert_array_equal(_cpu_relu.relu_backward(g, x), g * (x > 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_large_arrays_take_the_threaded_path(dtype):
    n = (1 << 20) + 12345       # past the thread threshold, not a multiple of the chunk
    x = np.random.default_rng(4).standard_normal(n).astype(dtype)
    x[::1000] = np.nan
    np.testing.assert_array_equal(_cpu_relu.relu(x), np.maximum(x, 0))
    np.testing.assert_array_equal(_cpu_relu.relu_backward(x, x), x * (x > 0))


def test_relu_other_dtypes_and_mismatched_shapes_use_numpy():
    xi = np.array([-2, 0, 3], dtype=np.int32)
    got = _cpu_relu.relu(xi)
    assert got.dtype == np.int32 and got.tolist() == [0, 0, 3]
    g = np.ones((2, 3), np.float32)
    x = np.array([-1.0, 0.5, 2.0], np.float32)          # broadcasts against g
    np.testing.assert_array_equal(_cpu_relu.relu_backward(g, x), g * (x > 0))


# ---------------------------------------------------------------- backend routing

def test_set_kernels_switches_the_backend_functions():
    old = cpu.set_kernels("numpy")
    try:
        assert cpu.BACKEND.matmul is np.matmul
        assert cpu.kernel_info()["matmul"] == "numpy"
        cpu.set_kernels("cython")
        assert cpu.BACKEND.matmul is _cpu_matmul.matmul
        assert cpu.BACKEND.relu is _cpu_relu.relu
        info = cpu.kernel_info()
        assert (info["mode"], info["matmul"], info["relu"]) == ("cython", "cython", "cython")
        assert cpu.get_kernels() == "cython"
    finally:
        cpu.set_kernels(old)


def test_auto_mode_measures_a_crossover_once():
    old = cpu.set_kernels("auto")
    try:
        a = np.ones((25, 40), np.float32)
        b = np.ones((40, 40), np.float32)
        np.testing.assert_array_equal(cpu.BACKEND.matmul(a, b), a @ b)
        info = cpu.kernel_info()
        crossover = info["crossover"]
        assert crossover is not None
        for key in ("matmul_float32_max_work", "matmul_float64_max_work", "relu_max_size",
                    "thread_min_work"):
            assert crossover[key] >= 0
        assert _cpu_matmul.get_thread_min_work() == crossover["thread_min_work"]
        # a budget, not a benchmark: the calibration stops probing after ~0.25 s; the
        # slack is for a CI machine shared with other jobs
        assert crossover["seconds"] < 2.0
        assert info["matmul"].startswith("auto: cython up to")
        seconds = crossover["seconds"]
        cpu.BACKEND.matmul(a, b)
        assert cpu.kernel_info()["crossover"]["seconds"] == seconds   # not re-measured
        enabled, f32_max, f64_max, pending = _cpu_matmul.get_auto()
        assert enabled and not pending
        assert f32_max == crossover["matmul_float32_max_work"]
    finally:
        cpu.set_kernels(old)


def test_auto_mode_routes_large_products_to_numpy_above_the_crossover():
    old = cpu.set_kernels("auto")
    saved = _cpu_matmul.get_auto()
    try:
        _cpu_matmul.set_auto(True, 1000.0, 1000.0)          # anything over 1000 MACs -> numpy
        big = np.ones((20, 20), np.float32)                  # 8000 MACs
        small = np.ones((5, 5), np.float32)                  # 125 MACs
        calls = []
        real = _cpu_matmul._np_matmul
        _cpu_matmul._np_matmul = lambda a, b: calls.append(a.shape) or real(a, b)
        try:
            cpu.BACKEND.matmul(big, big)
            cpu.BACKEND.matmul(small, small)
        finally:
            _cpu_matmul._np_matmul = real
        assert calls == [(20, 20)]
    finally:
        _cpu_matmul.set_auto(saved[0], saved[1], saved[2])
        cpu.set_kernels(old)


def _mlp_grads(dtype):
    """Loss, first- and second-order gradients of a small MLP with ReLU."""
    rng = np.random.default_rng(5)
    x = tgm.Tensor(rng.standard_normal((25, 3)), dtype=dtype)
    y = tgm.Tensor(rng.standard_normal((25, 1)), dtype=dtype)
    w1 = tgm.Tensor(rng.standard_normal((3, 40)) * 0.5, dtype=dtype, requires_grad=True)
    b1 = tgm.Tensor(rng.standard_normal(40) * 0.1, dtype=dtype, requires_grad=True)
    w2 = tgm.Tensor(rng.standard_normal((40, 40)) * 0.2, dtype=dtype, requires_grad=True)
    w3 = tgm.Tensor(rng.standard_normal((40, 1)) * 0.2, dtype=dtype, requires_grad=True)
    h = ((x @ w1 + b1).relu() @ w2).relu()
    loss = ((h @ w3 - y) ** 2).mean()
    grads = tgm.grad(loss, [w1, b1, w2, w3], create_graph=True)
    # second order: gradient of the squared gradient norm (what MAML differentiates)
    penalty = sum((g * g).sum() for g in grads)
    second = tgm.grad(penalty, [w1, b1, w2, w3])
    return [loss.numpy()] + [g.numpy() for g in grads] + [g.numpy() for g in second]


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-4)])
def test_engine_gradients_agree_between_cython_and_numpy(dtype, rtol):
    old = cpu.set_kernels("numpy")
    try:
        with_numpy = _mlp_grads(dtype)
        cpu.set_kernels("cython")
        with_cython = _mlp_grads(dtype)
    finally:
        cpu.set_kernels(old)
    for ours, ref in zip(with_cython, with_numpy):
        assert ours.dtype == ref.dtype
        # float32 sums in a different order than BLAS: agree to float32 rounding
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
