"""The compiled batch norm and tiled max pooling (kernels/cpu/norm_pool.pyx) against the
reference (tinygrad_meta/backends/norm_pool.py), and how the CPU backend selects them.

Max pooling is compared for exact equality: the forward takes numpy's maximum tap by
tap in the reference's order, and the backward does the reference's arithmetic (the
same division g / ties and product with the hit) per element.

Batch norm sums in another order (double precision, shifted by the channel's first
value) than the reference's float32 numpy reductions, so both are compared with the
float64 reference on the same inputs, within bounds derived from the float32 rounding
of the kernel's last steps (see ``_rounding_bound``)."""
import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import functional as F
from tinygrad_meta.backends import cpu
from tinygrad_meta.backends import norm_pool as reference

pytestmark = pytest.mark.skipif(
    not cpu.kernel_info()["built"],
    reason=f"compiled CPU kernels are not built ({cpu.kernel_info()['error']})")

_kernels = cpu._cpu_norm_pool
EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


# ---------------------------------------------------------------------------------
# Max pooling: bit-exact
# ---------------------------------------------------------------------------------

def _pool_input(rng, shape, dtype):
    # few distinct values, so that tiles with tied maxima are common; plus a NaN and infs
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    if x.size >= 8:
        flat = x.reshape(-1)
        flat[rng.integers(x.size)] = np.nan
        flat[rng.integers(x.size)] = np.inf
        flat[rng.integers(x.size)] = -np.inf
    return x


def _check_pool(x, kernel, rng):
    want = reference.max_pool_tiles(x, kernel)
    got = _kernels.max_pool_tiles(x, kernel)
    assert got.dtype == want.dtype and got.shape == want.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))   # -0.0 vs +0.0 too
    g = rng.standard_normal(want.shape).astype(x.dtype)
    if g.size:
        g.reshape(-1)[0] = np.inf   # inf * (not a hit) is NaN in the reference: here too
    with np.errstate(invalid="ignore"):   # the inf * 0 above
        want_grad = reference.max_pool_tiles_backward(g, x, want, kernel)
    got_grad = _kernels.max_pool_tiles_backward(g, x, want, kernel)
    assert got_grad.shape == x.shape and got_grad.dtype == x.dtype and got_grad.flags.c_contiguous
    np.testing.assert_array_equal(got_grad, want_grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,kernel", [((3, 4, 8, 6), (2, 2)), ((2, 3, 6, 6), (3, 2)),
                                          ((2, 5, 4, 4), (1, 1)), ((7, 9), (1, 3)),
                                          ((2, 2, 3, 4, 6), (2, 3)), ((1, 1, 2, 2), (2, 2)),
                                          ((0, 3, 4, 4), (2, 2))])
def test_max_pool_tiles_and_its_backward_equal_the_reference_bit_for_bit(shape, kernel, dtype):
    rng = np.random.default_rng(sum(shape) + kernel[0])
    _check_pool(_pool_input(rng, shape, dtype), kernel, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_of_strided_views_equals_the_reference(dtype):
    rng = np.random.default_rng(1)
    x = _pool_input(rng, (4, 6, 7, 9), dtype)
    # floor mode's crop (read in place), a step, a transposed view (copied first)
    for view in (x[:, :, :6, :8], x[:, :, :, ::-1][:, :, :6, 1:], x[..., ::2, ::2][:, :, :4, :4],
                 x.transpose(1, 0, 2, 3)[:, :, :6, :8]):
        _check_pool(view, (2, 2), rng)


def test_max_pool_takes_numpys_maximum_for_signed_zeros():
    # numpy's maximum returns its second argument when the two compare equal
    x = np.array([[[[-0.0, 0.0], [0.0, -0.0]]]], dtype=np.float32)
    _check_pool(x, (2, 2), np.random.default_rng(0))
    _check_pool(-x, (2, 2), np.random.default_rng(0))


def test_max_pool_at_the_omniglot_shapes_equals_the_reference():
    rng = np.random.default_rng(2)
    for size in (28, 14, 7, 3):   # 7 and 3: floor mode crops to 6 and 2
        x = np.maximum(rng.standard_normal((20, 64, size, size)), 0).astype(np.float32)
        _check_pool(x[:, :, :size // 2 * 2, :size // 2 * 2], (2, 2), rng)


def test_max_pool_other_dtypes_and_mismatches_go_to_the_reference():
    rng = np.random.default_rng(3)
    for x in (rng.integers(-5, 5, (2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4)).astype(np.float16)):
        out = _kernels.max_pool_tiles(x, (2, 2))
        np.testing.assert_array_equal(out, reference.max_pool_tiles(x, (2, 2)))
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    out = reference.max_pool_tiles(x, (2, 2))
    g = rng.standard_normal(out.shape)          # float64 gradient of a float32 pooling
    np.testing.assert_array_equal(_kernels.max_pool_tiles_backward(g, x, out, (2, 2)),
                                  reference.max_pool_tiles_backward(g, x, out, (2, 2)))


# ---------------------------------------------------------------------------------
# Batch norm: within float32 rounding of the float64 reference
# ---------------------------------------------------------------------------------

def _rounding_bound(eps, *terms):
    """Per element: the kernel's last steps are a few float roundings (each at most
    eps/2 relative to the magnitude it rounds) of sums of ``terms`` magnitudes. Four
    roundings cover the per-channel constants' conversion to the dtype plus the
    subtract, multiply and add per element."""
    return 4 * eps * sum(np.abs(t) for t in terms)


def _sum_error(count, magnitude):
    """Bound on the error of the kernel's statistics: a sum of ``count`` terms of mean
    magnitude ``magnitude`` in double precision over 8 partial sums (each a run of
    count / 8 additions) combined pairwise (3 more), relative to count * magnitude."""
    return (np.ceil(count / 8) + 3) * EPS[np.float64] * magnitude


# the truth for float64 inputs: the reference in extended precision where there is one
WIDE = np.longdouble if np.finfo(np.longdouble).eps < EPS[np.float64] else None


def _truth(dtype):
    if dtype == np.float64 and WIDE is None:
        pytest.skip("no floating type wider than float64 here for the float64 truth")
    return np.float64 if dtype == np.float32 else WIDE


def _bn_case(rng, shape, dtype, offset=0.0):
    x = (rng.standard_normal(shape) * 2.0 + offset).astype(dtype)
    weight = rng.standard_normal(shape[1]).astype(dtype)
    bias = rng.standard_normal(shape[1]).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    return x, weight, bias, g


def _channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(100, 8, 28, 28), (25, 64, 7, 7), (5, 3, 3, 3), (7, 4), (2, 3, 5),
                                   (1, 2, 1, 1), (3, 2, 2, 3, 4)])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_batch_norm_forward_is_within_rounding_of_the_float64_reference(shape, dtype, offset):
    rng = np.random.default_rng(len(shape) + shape[0])
    x, weight, bias, _ = _bn_case(rng, shape, dtype, offset)
    eps, wide = 1e-5, _truth(dtype)
    want = reference.batch_norm_train(*(a.astype(wide) for a in (x, weight, bias)), eps)
    got = _kernels.batch_norm_train(x, weight, bias, eps)
    assert got.dtype == x.dtype and got.shape == x.shape and got.flags.c_contiguous
    mean, var = reference.batch_norm_statistics(x.astype(wide))
    count = x.size // shape[1]
    # the statistics, shifted by the channel's first value (within a few spreads of the
    # mean): their double-precision sums' error, and one rounding of the mean and
    # variance, which stay in float64 (the forward may reuse them)
    spread = np.sqrt(var) + np.abs(x.reshape(shape[0], shape[1], -1)[0, :, 0] - mean)
    mean_error = _sum_error(count, spread) + _rounding_bound(EPS[np.float64], mean)
    var_error = _sum_error(count, spread ** 2) * 2 + _rounding_bound(EPS[np.float64], var)
    got_mean, got_var = _kernels.batch_norm_statistics(x)
    assert got_mean.dtype == got_var.dtype == np.float64
    assert np.all(np.abs(got_mean - mean) <= mean_error)
    assert np.all(np.abs(got_var - var) <= var_error)
    # given those statistics, the forward skips its own pass and computes the same bits
    for forward in (_kernels.batch_norm_train, _kernels.batch_norm_relu_train):
        np.testing.assert_array_equal(forward(x, weight, bias, eps, (got_mean, got_var)),
                                      forward(x, weight, bias, eps))
    # y = (x - mean) * scale + bias, each operand rounded to the dtype, plus the
    # statistics' error carried through: d(mean) * scale and (x - mean) * d(scale)
    scale = _channel(weight / np.sqrt(var + eps), x.ndim)
    centered = np.abs(x - _channel(mean, x.ndim))
    bound = _rounding_bound(EPS[dtype], (np.abs(x) + np.abs(_channel(mean, x.ndim))) * scale,
                            _channel(bias, x.ndim))
    bound = bound + np.abs(scale) * (_channel(_sum_error(count, spread), x.ndim)
                                     + centered * _channel(var_error / (var + eps), x.ndim))
    assert np.all(np.abs(got - want) <= bound)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(100, 8, 28, 28), (25, 64, 7, 7), (5, 3, 3, 3), (7, 4), (1, 2, 1, 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_is_within_rounding_of_the_float64_reference(shape, dtype, affine):
    rng = np.random.default_rng(shape[0] + shape[1])
    x, weight, _, g = _bn_case(rng, shape, dtype, offset=3.0)
    weight = weight if affine else None
    eps, truth = 1e-5, _truth(dtype)
    wide = [a.astype(truth) if a is not None else None for a in (x, g, weight)]
    want = reference.batch_norm_train_backward(wide[0], wide[1], wide[2], eps)
    got = _kernels.batch_norm_train_backward(x, g, weight, eps)
    assert [a.dtype for a in got] == [x.dtype] * 3 and got[0].shape == x.shape
    assert got[1].shape == got[2].shape == (shape[1],)
    mean, var = reference.batch_norm_statistics(wide[0])
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = _channel(inv_std * (wide[2] if affine else 1.0), x.ndim)
    axes = reference.statistics_axes(x.ndim)
    count = x.size // shape[1]
    normalized = (wide[0] - _channel(mean, x.ndim)) * _channel(inv_std, x.ndim)
    # dx = (g * scale - scale * mean(g)) - (x - mean) * (scale * inv_std * mean(g * normalized))
    mean_g = _channel(np.abs(wide[1]).sum(axis=axes) / count, x.ndim)
    mean_gn = _channel(np.abs(wide[1] * normalized).sum(axis=axes) / count, x.ndim)
    # the statistics' double-precision sums (of values within a few spreads of the
    # shift), relative to their magnitudes: at most this, carried into every term
    spread = np.sqrt(var) + np.abs(wide[0].reshape(shape[0], shape[1], -1)[0, :, 0] - mean)
    relative = _channel(_sum_error(count, spread ** 2) * 4 / (var + eps), x.ndim)
    terms = [wide[1] * scale, scale * mean_g,
             (np.abs(wide[0]) + np.abs(_channel(mean, x.ndim))) * scale * _channel(inv_std, x.ndim) * mean_gn]
    bound = _rounding_bound(EPS[dtype], *terms) + relative * sum(np.abs(t) for t in terms)
    assert np.all(np.abs(got[0] - want[0]) <= bound)
    # the weight and bias gradients: sums with that error, rounded once to the dtype
    total_gn = mean_gn.reshape(-1) * count
    assert np.all(np.abs(got[1] - want[1]) <= _rounding_bound(EPS[dtype], total_gn)
                  + relative.reshape(-1) * total_gn)
    assert np.all(np.abs(got[2] - want[2]) <= _rounding_bound(EPS[dtype], mean_g.reshape(-1) * count)
                  + _sum_error(count, mean_g.reshape(-1)))


def test_batch_norm_forward_uses_given_statistics_and_ignores_malformed_ones():
    rng = np.random.default_rng(14)
    x, weight, bias, _ = _bn_case(rng, (4, 3, 5, 5), np.float32)
    mean, var = _kernels.batch_norm_statistics(x)
    plain = _kernels.batch_norm_train(x, weight, bias, 1e-5)
    # other statistics are used as given (so normalization.py must pass x's own) ...
    shifted = _kernels.batch_norm_train(x, weight, bias, 1e-5, (mean + 1.0, var))
    np.testing.assert_allclose(shifted, plain - (weight / np.sqrt(var + 1e-5)).reshape(1, 3, 1, 1),
                               rtol=1e-5, atol=1e-5)
    # ... and anything but a pair of float64 (C,) arrays is ignored: recomputed from x
    for malformed in ((mean.astype(np.float32), var.astype(np.float32)), (mean[:2], var[:2]),
                      [mean, var], (mean,), (mean[::-1][::-1].repeat(2)[::2], var)):
        np.testing.assert_array_equal(_kernels.batch_norm_train(x, weight, bias, 1e-5, malformed), plain)


def test_batch_norm_variance_does_not_cancel_when_the_mean_is_large():
    # the one-pass sum of squares minus the squared mean would lose every digit here;
    # the shifted sums keep the variance to float32 rounding
    rng = np.random.default_rng(5)
    x = (1e4 + rng.standard_normal((50, 2, 6, 6))).astype(np.float32)
    mean, var = _kernels.batch_norm_statistics(x)
    want_mean, want_var = reference.batch_norm_statistics(x.astype(np.float64))
    np.testing.assert_allclose(var, want_var, rtol=4 * EPS[np.float32])
    np.testing.assert_allclose(mean, want_mean, rtol=4 * EPS[np.float32])


def test_batch_norm_other_dtypes_and_layouts_go_to_the_reference():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float16)
    w = np.ones(3, np.float16)
    np.testing.assert_array_equal(_kernels.batch_norm_train(x, w, None, 1e-5),
                                  reference.batch_norm_train(x, w, None, 1e-5))
    x32 = x.astype(np.float32)   # float64 weight for float32 input: the reference's promotion
    np.testing.assert_array_equal(_kernels.batch_norm_train(x32, w.astype(np.float64), None, 1e-5),
                                  reference.batch_norm_train(x32, w.astype(np.float64), None, 1e-5))
    # non-contiguous input and weight: copied, then the same as contiguous ones
    big = rng.standard_normal((4, 6, 5, 5)).astype(np.float32)
    weight = rng.standard_normal(6).astype(np.float32)
    np.testing.assert_array_equal(
        _kernels.batch_norm_train(big[:, ::2], weight[::2], None, 1e-5),
        _kernels.batch_norm_train(big[:, ::2].copy(), weight[::2].copy(), None, 1e-5))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weights", ["none", "shared", "per_example"])
def test_batch_norm_with_a_leading_batch_axis_is_each_example_alone(relu, dtype, weights):
    # lead=1 (vmap's call): each example through the same kernel as on its own, so bit
    # for bit the loop; weights (C,) shared by the examples or (B, C), one row each
    rng = np.random.default_rng(7)
    forward = _kernels.batch_norm_relu_train if relu else _kernels.batch_norm_train
    x = (rng.standard_normal((3, 4, 2, 5, 5)) * np.arange(1, 4)[:, None, None, None, None]).astype(dtype)
    w, b = {"none": (None, None),
            "shared": (rng.standard_normal(2).astype(dtype), rng.standard_normal(2).astype(dtype)),
            "per_example": (rng.standard_normal((3, 2)).astype(dtype),
                            rng.standard_normal((3, 2)).astype(dtype))}[weights]
    row = (lambda v, i: v) if weights != "per_example" else (lambda v, i: v[i])
    got = forward(x, w, b, 1e-5, None, lead=1)
    assert got.shape == x.shape and got.dtype == x.dtype and got.flags.c_contiguous
    want = np.stack([forward(x[i], row(w, i), row(b, i), 1e-5) for i in range(3)])
    np.testing.assert_array_equal(got, want)
    # a non-contiguous batch is copied first; the reference agrees within rounding
    strided = np.repeat(x, 2, axis=0)[::2]
    np.testing.assert_array_equal(forward(strided, w, b, 1e-5, None, lead=1), want)
    ref = (reference.batch_norm_relu_train if relu else reference.batch_norm_train)(
        x.astype(np.float64), *(None if v is None else v.astype(np.float64) for v in (w, b)),
        1e-5, lead=1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=200 * EPS[dtype])  # |values| < ~10
    with pytest.raises(ValueError, match="lead must be 0 or 1"):
        forward(x, w, b, 1e-5, None, lead=2)
    # the backward likewise: each example's (dx, dweight, dbias), the latter two (B, C)
    g = rng.standard_normal(x.shape).astype(dtype)
    relu_out = got if relu else None
    grads = _kernels.batch_norm_train_backward(x, g, w, 1e-5, relu_out, lead=1)
    loop = [_kernels.batch_norm_train_backward(x[i], g[i], row(w, i), 1e-5,
                                               None if relu_out is None else relu_out[i])
            for i in range(3)]
    for got_grad, want_grad in zip(grads, zip(*loop)):
        np.testing.assert_array_equal(got_grad, np.stack(want_grad))
    ref_grads = reference.batch_norm_train_backward(
        x.astype(np.float64), g.astype(np.float64), None if w is None else w.astype(np.float64),
        1e-5, None if relu_out is None else relu_out.astype(np.float64), lead=1)
    for got_grad, ref_grad in zip(grads, ref_grads):
        # the per-channel sums run over 50 values of |g * x| < ~30: float32 rounds each
        np.testing.assert_allclose(got_grad, ref_grad, rtol=0, atol=2000 * EPS[dtype])
    # weights of another shape go to the reference, which names the mismatch
    with pytest.raises(ValueError):
        forward(x, np.ones((2, 2), dtype), None, 1e-5, None, lead=1)


# ---------------------------------------------------------------------------------
# Selection and the op table
# ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["cython", "auto", "numpy"])
def test_set_kernels_selects_the_norm_pool_kernels(mode):
    old = cpu.set_kernels(mode)
    try:
        info = cpu.kernel_info()
        source = reference if mode == "numpy" else _kernels
        for name in cpu.NORM_POOL_KERNELS:
            assert getattr(cpu.BACKEND, name) is getattr(source, name)
        for key in ("batch_norm", "max_pool"):
            assert info[key].startswith(mode)
    finally:
        cpu.set_kernels(old)


def _episode_layer(mode, seed=7):
    """Gradients of a batch norm -> relu -> 2x2 max pool block, with the given kernels."""
    old = cpu.set_kernels(mode)
    try:
        rng = np.random.default_rng(seed)
        x = tgm.Tensor(rng.standard_normal((6, 4, 7, 7)), dtype="float32", requires_grad=True)
        w = tgm.Tensor(rng.standard_normal(4), dtype="float32", requires_grad=True)
        b = tgm.Tensor(rng.standard_normal(4), dtype="float32", requires_grad=True)
        mean, var = tgm.zeros(4, dtype="float32"), tgm.ones(4, dtype="float32")
        y = F.max_pool2d(F.relu(F.batch_norm(x, mean, var, w, b, training=True)), 2)
        (y * tgm.Tensor(rng.standard_normal(y.shape), dtype="float32")).sum().backward()
        return [t.numpy() for t in (y, x.grad, w.grad, b.grad, mean, var)]
    finally:
        cpu.set_kernels(old)


def test_the_ops_give_the_same_results_on_our_kernels_and_the_reference():
    ours, theirs = _episode_layer("cython"), _episode_layer("numpy")
    # the reference's float32 reductions and ours differ in the last bits; a relative
    # 1e-5 is ~80 float32 ulps, room for the reference's own pairwise-sum error
    for got, want in zip(ours, theirs):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_self_check_covers_batch_norm_and_max_pool(monkeypatch):
    # a kernel that gets a tie wrong must be caught at import time, not computed with
    def broken(g, x, out, kernel):
        return _kernels.max_pool_tiles_backward(g, x, out, kernel) * 1.5
    fake = type("Broken", (), {name: staticmethod(getattr(_kernels, name)) for name in cpu.NORM_POOL_KERNELS})
    fake.max_pool_tiles_backward = staticmethod(broken)
    monkeypatch.setattr(cpu, "_cpu_norm_pool", fake)
    assert "max_pool_tiles_backward float32" in cpu._self_check()


# ---------------------------------------------------------------------------------
# Batch norm + ReLU as one node
# ---------------------------------------------------------------------------------

@pytest.mark.parametrize("module_name", ["ours", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_relu_equals_batch_norm_then_relu_bit_for_bit(module_name, dtype):
    # the same arithmetic per element, the mask applied as ReLU's own kernels apply it
    module = _kernels if module_name == "ours" else reference
    relu, relu_backward = ((cpu._cpu_relu.relu, cpu._cpu_relu.relu_backward) if module_name == "ours"
                           else (cpu._relu, cpu._relu_backward))
    rng = np.random.default_rng(8)
    for shape in ((6, 5, 4, 3), (3, 2, 7), (40, 3, 5, 5)):   # runs of 12, 7, 25: vector tails
        x, weight, bias, g = _bn_case(rng, shape, dtype, offset=1.0)
        fused = module.batch_norm_relu_train(x, weight, bias, 1e-5)
        np.testing.assert_array_equal(fused, relu(module.batch_norm_train(x, weight, bias, 1e-5)))
        assert (fused == 0).mean() > 0.2   # the mask matters
        got = module.batch_norm_train_backward(x, g, weight, 1e-5, fused)
        want = module.batch_norm_train_backward(x, relu_backward(g, fused), weight, 1e-5)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        # an infinite gradient where ReLU was off: inf * 0 is NaN, as ReLU's own rule gives
        g.reshape(-1)[np.flatnonzero(fused.reshape(-1) == 0)[0]] = np.inf
        with np.errstate(invalid="ignore"):
            got = module.batch_norm_train_backward(x, g, weight, 1e-5, fused)
            want = module.batch_norm_train_backward(x, relu_backward(g, fused), weight, 1e-5)
        assert np.isnan(got[2]).any()
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def _block(fused, mode, create_graph=False, dtype="float32"):
    """Gradients of batch norm + relu, fused or as two nodes, with the given kernels."""
    old = cpu.set_kernels(mode)
    try:
        rng = np.random.default_rng(9)
        x = tgm.Tensor(rng.standard_normal((5, 3, 4, 4)) + 0.3, dtype=dtype, requires_grad=True)
        w = tgm.Tensor(rng.standard_normal(3), dtype=dtype, requires_grad=True)
        b = tgm.Tensor(rng.standard_normal(3), dtype=dtype, requires_grad=True)
        mean, var = tgm.zeros(3, dtype=dtype), tgm.ones(3, dtype=dtype)
        if fused:
            y = F.batch_norm_relu(x, mean, var, w, b, training=True)
        else:
            y = F.relu(F.batch_norm(x, mean, var, w, b, training=True))
        weights = tgm.Tensor(rng.standard_normal(y.shape), dtype=dtype)
        grads = tgm.grad((y * weights).sum(), [x, w, b], create_graph=create_graph)
        return [t.numpy() for t in [y, *grads, mean, var]]
    finally:
        cpu.set_kernels(old)


@pytest.mark.parametrize("mode", ["cython", "numpy"])
def test_batch_norm_relu_node_equals_batch_norm_then_relu(mode):
    for got, want in zip(_block(True, mode), _block(False, mode)):
        np.testing.assert_array_equal(got, want)
    # the recorded rule (create_graph) is the same maths in other passes: float64 rounding
    for got, want in zip(_block(True, mode, True, "float64"), _block(False, mode, False, "float64")):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_batch_norm_relu_gradients_to_second_order_match_finite_differences():
    from tinygrad_meta.testing import gradcheck, gradgradcheck
    rng = np.random.default_rng(10)
    inputs = [tgm.Tensor(rng.standard_normal(shape), dtype="float64", requires_grad=True)
              for shape in ((4, 3, 2, 2), (3,), (3,))]
    f = lambda x, w, b: F.batch_norm_relu(x, None, None, w, b, training=True)  # noqa: E731
    assert gradcheck(f, inputs) and gradgradcheck(f, inputs)
    # eval mode (running statistics): the composition, relu after the affine map
    mean = tgm.Tensor(rng.standard_normal(3), dtype="float64")
    var = tgm.Tensor(rng.uniform(0.5, 2, 3), dtype="float64")
    y = F.batch_norm_relu(inputs[0], mean, var, inputs[1], inputs[2])
    want = F.batch_norm(inputs[0], mean, var, inputs[1], inputs[2]).relu()
    np.testing.assert_array_equal(y.numpy(), want.numpy())


def test_batch_norm_relu_under_vmap_equals_a_loop():
    rng = np.random.default_rng(11)
    xs = tgm.Tensor(rng.standard_normal((3, 4, 2, 2, 2)), dtype="float64")
    w = tgm.Tensor(rng.standard_normal(2), dtype="float64")
    batched = tgm.vmap(lambda x: F.batch_norm_relu(x, None, None, w, training=True))(xs)
    looped = [F.batch_norm_relu(tgm.Tensor(x, dtype="float64"), None, None, w, training=True).numpy()
              for x in xs.numpy()]
    np.testing.assert_allclose(batched.numpy(), np.stack(looped), rtol=1e-13, atol=1e-13)


def test_the_omniglot_network_fuses_batch_norm_and_relu_and_computes_the_same():
    from tinygrad_meta import nn
    net = nn.omniglot_convnet(variant="protonet", filters=8, seed=12)
    x = tgm.Tensor(np.random.default_rng(13).standard_normal((6, 1, 28, 28)), dtype="float32")
    fused = net(x)
    seen, stack = set(), [fused]
    while stack:   # the op names of the recorded graph
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if getattr(node, "_op", None) is not None:
            seen.add(node._op.name)
        stack.extend(getattr(node, "_parents", None) or ())
    unfused = x
    for block in net.blocks:
        unfused = tgm.nn.Sequential.forward(block, unfused)   # step by step: no fusion
    np.testing.assert_array_equal(fused.numpy(), unfused.reshape(6, -1).numpy())
    names = sorted(name for name in seen if isinstance(name, str))
    assert "batch_norm_relu_train" in names and "relu" not in names, names
