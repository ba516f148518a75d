"""The compiled im2col/col2im (kernels/cpu/conv.pyx) against the numpy reference
(tinygrad_meta/backends/im2col.py), and how the CPU backend selects them.

Both are compared for exact equality: im2col only copies, and col2im adds each input
element's taps in the reference's order starting from 0, so every sum is the same
floating-point operations in the same order."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_meta.backends import cpu
from tinygrad_meta.backends import im2col as reference

pytestmark = pytest.mark.skipif(
    not cpu.kernel_info()["built"],
    reason=f"compiled CPU kernels are not built ({cpu.kernel_info()['error']})")

_cpu_conv = cpu._cpu_conv

GEOMETRY = dict(kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
                stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
                padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
                dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)))


def _fits(h, w, kernel, padding, dilation):
    return all(size + 2 * p >= d * (k - 1) + 1
               for size, k, p, d in zip((h, w), kernel, padding, dilation))


def _check_equal(x, kernel, stride, padding, dilation, pad_value, layout="image"):
    geometry = (kernel, stride, padding, dilation)
    want = reference.im2col(x, *geometry, pad_value=pad_value, layout=layout)
    got = _cpu_conv.im2col(x, *geometry, pad_value=pad_value, layout=layout)
    assert got.dtype == want.dtype and got.shape == want.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    cols = np.random.default_rng(x.size).standard_normal(want.shape).astype(x.dtype)
    want_image = reference.col2im(cols, x.shape, *geometry, layout=layout)
    got_image = _cpu_conv.col2im(cols, x.shape, *geometry, layout=layout)
    assert got_image.dtype == want_image.dtype and got_image.shape == x.shape
    np.testing.assert_array_equal(got_image, want_image)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(0, 4), h=st.integers(0, 9), w=st.integers(0, 9),
       dtype=st.sampled_from(["float32", "float64"]), pad_value=st.sampled_from([0.0, -np.inf, 2.5]),
       layout=st.sampled_from(["image", "batch"]), **GEOMETRY)
def test_im2col_and_col2im_equal_the_reference(n, c, h, w, dtype, pad_value, layout, kernel, stride,
                                               padding, dilation):
    if not _fits(h, w, kernel, padding, dilation):
        return   # test_kernel_larger_than_padded_input_is_a_clear_error covers these
    x = np.random.default_rng(n + 10 * c + 100 * h + 1000 * w).standard_normal((n, c, h, w)).astype(dtype)
    _check_equal(x, kernel, stride, padding, dilation, pad_value, layout)


@pytest.mark.parametrize("shape,stride", [((80, 1, 28, 28), 2), ((5, 64, 14, 14), 2), ((5, 64, 4, 4), 2),
                                          ((6, 64, 7, 7), 1), ((6, 64, 3, 3), 1)])
@pytest.mark.parametrize("layout", ["image", "batch"])
def test_omniglot_shapes_equal_the_reference(shape, stride, layout):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _check_equal(x, (3, 3), (stride, stride), (1, 1), (1, 1), 0.0, layout)
    _check_equal(x, (2, 2), (2, 2), (0, 0), (1, 1), -np.inf, layout)     # max pooling's gather


@pytest.mark.parametrize("h,w,kernel,padding,dilation", [
    (5, 6, (3, 3), (1, 1), (1, 1)), (4, 4, (5, 5), (2, 2), (1, 1)), (6, 5, (3, 3), (2, 2), (2, 2)),
    (3, 7, (1, 3), (0, 1), (1, 1)), (1, 1, (3, 3), (1, 1), (1, 1)), (2, 9, (5, 3), (2, 1), (1, 1))])
def test_same_geometry_fast_path_equals_the_reference(h, w, kernel, padding, dilation):
    # unit strides with OW == W copy each tap's rows in one run, then reset the
    # padding columns: taps whose rows are all padding or all inside are edge cases
    x = np.random.default_rng(h * w).standard_normal((2, 3, h, w))
    for layout in ("image", "batch"):
        for pad_value in (0.0, -np.inf):
            _check_equal(x, kernel, (1, 1), padding, dilation, pad_value, layout)


@pytest.mark.parametrize("limits", [(0, 0, 0, -1), (1 << 30, 1 << 30, 1 << 30, -1),
                                    (1 << 30, 1 << 30, 1 << 30, 1)],
                         ids=["row-loops-only", "offset-table-only", "offset-table-one-plane-per-pass"])
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       dtype=st.sampled_from(["float32", "float64"]), pad_value=st.sampled_from([0.0, -np.inf]),
       layout=st.sampled_from(["image", "batch"]), **GEOMETRY)
def test_row_loops_and_offset_table_each_equal_the_reference(limits, n, c, h, w, dtype, pad_value,
                                                             layout, kernel, stride, padding, dilation):
    # The kernels pick per call between loops over tap rows and one table of input
    # offsets (small or strided outputs); forced to either, both are exact.
    if not _fits(h, w, kernel, padding, dilation):
        return
    x = np.random.default_rng(n + 10 * c + 100 * h + 1000 * w).standard_normal((n, c, h, w)).astype(dtype)
    old = _cpu_conv.set_table_limits(*limits)
    old_stride2 = _cpu_conv.set_stride2(False)
    try:
        _check_equal(x, kernel, stride, padding, dilation, pad_value, layout)
    finally:
        _cpu_conv.set_table_limits(*old)
        _cpu_conv.set_stride2(*old_stride2)


def _check_bitwise(x, geometry, pad_value, layout, cols):
    # assert_array_equal takes -0.0 == 0.0: compare the bits (col2im's vector path
    # rewrites elements it does not add to, which must come back unchanged)
    want = reference.im2col(x, *geometry, pad_value=pad_value, layout=layout)
    got = _cpu_conv.im2col(x, *geometry, pad_value=pad_value, layout=layout)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    want_image = reference.col2im(cols, x.shape, *geometry, layout=layout)
    got_image = _cpu_conv.col2im(cols, x.shape, *geometry, layout=layout)
    assert got_image.shape == want_image.shape and got_image.dtype == want_image.dtype
    np.testing.assert_array_equal(got_image.view(np.uint8), want_image.view(np.uint8))


@pytest.mark.parametrize("group_columns", [1, 128, 1 << 20], ids=["one-plane", "default", "all-planes"])
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 40),
       pad_value=st.sampled_from([0.0, -np.inf, 2.5]), layout=st.sampled_from(["image", "batch"]),
       kernel=GEOMETRY["kernel"], row_stride=st.integers(1, 3), padding=GEOMETRY["padding"],
       dilation=GEOMETRY["dilation"], negative_zeros=st.booleans())
def test_stride2_passes_equal_the_reference_bit_for_bit(group_columns, n, c, h, w, pad_value, layout,
                                                        kernel, row_stride, padding, dilation,
                                                        negative_zeros):
    # float32 with column stride 2 runs 8 columns at a time (AVX2), down to outputs one
    # column wide here; rows of 8+ columns, run ends and odd widths are the edge cases
    if not _fits(h, w, kernel, padding, dilation):
        return
    geometry = (kernel, (row_stride, 2), padding, dilation)
    rng = np.random.default_rng(n + 10 * c + 100 * h + 1000 * w)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    shape = reference.im2col(x, *geometry, layout=layout).shape
    cols = rng.standard_normal(shape).astype(np.float32)
    if negative_zeros:   # sums of -0.0 alone stay -0.0; elements no tap reaches stay +0.0
        x[..., ::3] = -0.0
        cols[..., ::2] = -0.0
    old_limits = _cpu_conv.set_table_limits(-1, -1, -1, group_columns)
    old = _cpu_conv.set_stride2(True, 1)
    try:
        _check_bitwise(x, geometry, pad_value, layout, cols)
        view = np.repeat(x, 2, axis=3)[..., ::2]   # non-contiguous, the same values
        _check_bitwise(view, geometry, pad_value, layout, cols)
    finally:
        _cpu_conv.set_stride2(*old)
        _cpu_conv.set_table_limits(*old_limits)


@pytest.mark.parametrize("shape", [(25, 64, 14, 14), (5, 64, 28, 28), (25, 1, 28, 28), (7, 3, 15, 17)])
@pytest.mark.parametrize("layout", ["image", "batch"])
def test_stride2_passes_at_the_omniglot_shapes(shape, layout):
    # the default choice (these take the stride-2 passes where AVX2 is built in)
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    _check_equal(x, (3, 3), (2, 2), (1, 1), (1, 1), 0.0, layout)


def test_the_offset_table_serves_small_and_strided_outputs_by_default():
    # which path runs is not observable in the result, so check the choice's inputs:
    # the defaults send the 3x3/4x4 and strided Omniglot layers to the table and keep
    # the 14x14 and 28x28 "same" layers on the row loops (kernels/cpu/conv.pyx says why)
    same_max, strided_max, entries, group_columns = _cpu_conv.set_table_limits()
    assert 9 < same_max <= 49 and 49 < strided_max <= 196 and entries >= 9 * 196 and group_columns >= 1
    enabled, min_columns = _cpu_conv.set_stride2(True)
    _cpu_conv.set_stride2(enabled)
    assert enabled == _cpu_conv.STRIDE2_BUILT and 4 < min_columns <= 7   # 14x14 -> 7x7 takes them


def test_batch_layout_is_the_image_layout_with_images_side_by_side():
    # column n * L + l of the batch matrix is column l of image n's columns
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 7, 6))
    geometry = ((3, 2), (2, 1), (1, 0), (1, 2))
    per_image = _cpu_conv.im2col(x, *geometry)
    n, k, length = per_image.shape
    stacked = per_image.transpose(1, 0, 2).reshape(k, n * length)
    np.testing.assert_array_equal(_cpu_conv.im2col(x, *geometry, layout="batch"), stacked)
    cols = rng.standard_normal(per_image.shape)
    np.testing.assert_array_equal(
        _cpu_conv.col2im(cols.transpose(1, 0, 2).reshape(k, n * length), x.shape, *geometry, layout="batch"),
        _cpu_conv.col2im(cols, x.shape, *geometry))


def test_unknown_layout_is_a_clear_error():
    for implementation in (_cpu_conv, reference):
        with pytest.raises(ValueError, match=r"im2col: layout must be one of \('image', 'batch'\), got 'nkl'"):
            implementation.im2col(np.zeros((1, 1, 3, 3)), (3, 3), (1, 1), (0, 0), (1, 1), layout="nkl")


def test_threaded_planes_give_the_same_result():
    old_min = _cpu_conv.set_thread_min_elements(0)
    old_threads = _cpu_conv.set_num_threads(2)
    try:
        x = np.random.default_rng(1).standard_normal((3, 5, 11, 10))
        for layout in ("image", "batch"):
            _check_equal(x, (3, 2), (2, 1), (1, 2), (2, 1), 0.0, layout)
            _check_equal(x.astype(np.float32), (3, 3), (1, 1), (1, 1), (1, 1), -np.inf, layout)
            # each thread has its own scratch planes (stride-2 passes: 15 output columns)
            wide = np.random.default_rng(8).standard_normal((3, 5, 9, 30)).astype(np.float32)
            _check_equal(wide, (3, 3), (2, 2), (1, 1), (1, 1), 0.0, layout)
            _check_equal(wide[:, :, :4, :8], (3, 3), (2, 2), (1, 1), (1, 1), 0.0, layout)   # table
    finally:
        _cpu_conv.set_thread_min_elements(old_min)
        _cpu_conv.set_num_threads(old_threads)


def test_col2im_is_the_adjoint_of_im2col():
    # <im2col(x), y> == <x, col2im(y)>: what makes each the other's gradient
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 8, 7))
    geometry = ((3, 2), (2, 3), (1, 2), (2, 1))
    cols = _cpu_conv.im2col(x, *geometry)
    y = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(np.vdot(cols, y), np.vdot(x, _cpu_conv.col2im(y, x.shape, *geometry)),
                               rtol=1e-12)


def test_non_contiguous_inputs_give_the_reference_result():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    view = x[:, ::2, :, ::-1]
    geometry = ((3, 3), (2, 1), (1, 1), (1, 2))
    np.testing.assert_array_equal(_cpu_conv.im2col(view, *geometry), reference.im2col(view, *geometry))
    shape = (2, 2, 9, 8)
    cols = np.asfortranarray(rng.standard_normal(reference.im2col(np.zeros(shape), *geometry).shape))
    np.testing.assert_array_equal(_cpu_conv.col2im(cols, shape, *geometry),
                                  reference.col2im(cols, shape, *geometry))


@pytest.mark.parametrize("dtype", ["float16", "int32"])
def test_other_dtypes_go_to_the_reference(dtype):
    x = np.arange(2 * 3 * 5 * 5).reshape(2, 3, 5, 5).astype(dtype)
    geometry = ((3, 3), (1, 1), (1, 1), (1, 1))
    got = _cpu_conv.im2col(x, *geometry)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, reference.im2col(x, *geometry))
    np.testing.assert_array_equal(_cpu_conv.col2im(got, x.shape, *geometry),
                                  reference.col2im(got, x.shape, *geometry))


@pytest.mark.parametrize("implementation", [_cpu_conv, reference], ids=["cython", "reference"])
def test_kernel_larger_than_padded_input_is_a_clear_error(implementation):
    x = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"im2col: kernel 6x3 with dilation 1x1 spans 6x3, larger than "
                                         r"the padded input 5x6 \(input 3x4, padding 1x1\)"):
        implementation.im2col(x, (6, 3), (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="col2im: kernel 3x3 with dilation 2x2 spans 5x5"):
        implementation.col2im(np.zeros((1, 18, 1), np.float32), (1, 2, 3, 4), (3, 3), (1, 1), (0, 0), (2, 2))


@pytest.mark.parametrize("implementation", [_cpu_conv, reference], ids=["cython", "reference"])
def test_bad_shapes_and_geometry_are_clear_errors(implementation):
    with pytest.raises(ValueError, match=r"im2col: input must be 4-D \(N, C, H, W\), got shape \(3, 5, 5\)"):
        implementation.im2col(np.zeros((3, 5, 5)), (3, 3), (1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match=r"im2col: stride must be a \(row, column\) pair of ints >= 1, got \(0, 1\)"):
        implementation.im2col(np.zeros((1, 1, 5, 5)), (3, 3), (0, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match=r"im2col: padding must be .* >= 0, got \(-1, 0\)"):
        implementation.im2col(np.zeros((1, 1, 5, 5)), (3, 3), (1, 1), (-1, 0), (1, 1))
    with pytest.raises(ValueError, match=r"col2im: columns of shape \(1, 9, 8\) do not fit the input shape "
                                         r"\(1, 1, 5, 5\) and kernel 3x3: expected \(1, 9, 9\)"):
        implementation.col2im(np.zeros((1, 9, 8)), (1, 1, 5, 5), (3, 3), (1, 1), (0, 0), (1, 1))


def test_zero_size_inputs_give_empty_or_zero_results():
    geometry = ((3, 3), (1, 1), (1, 1), (1, 1))
    for shape in [(0, 3, 5, 5), (2, 0, 5, 5)]:
        _check_equal(np.zeros(shape, np.float32), *geometry, 0.0)
    geometry = ((3, 3), (1, 1), (2, 1), (1, 1))    # no input rows: padding alone fits the kernel
    _check_equal(np.zeros((2, 3, 0, 4), np.float32), *geometry, 0.0)
    cols = _cpu_conv.im2col(np.zeros((2, 3, 0, 4), np.float32), *geometry, pad_value=7.0)
    assert cols.shape == (2, 27, 2 * 4) and np.all(cols == 7.0)   # every tap is padding


# ---------------------------------------------------------------------------------
# Selection: TGM_CPU_KERNELS / set_kernels and kernel_info
# ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["cython", "auto", "numpy"])
def test_set_kernels_selects_the_conv_kernels(mode):
    old = cpu.set_kernels(mode)
    try:
        info = cpu.kernel_info()
        if mode == "numpy":
            assert cpu.BACKEND.im2col is reference.im2col and cpu.BACKEND.col2im is reference.col2im
            assert info["im2col"] == info["col2im"] == "numpy"
        else:
            assert cpu.BACKEND.im2col is _cpu_conv.im2col and cpu.BACKEND.col2im is _cpu_conv.col2im
            assert info["im2col"].startswith(mode) and info["col2im"].startswith(mode)
        x = np.random.default_rng(4).standard_normal((2, 3, 6, 6)).astype(np.float32)
        geometry = ((3, 3), (2, 2), (1, 1), (1, 1))
        np.testing.assert_array_equal(cpu.BACKEND.im2col(x, *geometry), reference.im2col(x, *geometry))
    finally:
        cpu.set_kernels(old)


def test_self_check_covers_im2col_and_col2im(monkeypatch):
    # a kernel that drops a tap must be caught at import time, not computed with
    broken = lambda *args, **kwargs: np.zeros_like(reference.im2col(*args, **kwargs))
    monkeypatch.setattr(cpu, "_cpu_conv", type("Broken", (), {"im2col": staticmethod(broken),
                                                              "col2im": _cpu_conv.col2im}))
    assert "im2col float32" in cpu._self_check()
