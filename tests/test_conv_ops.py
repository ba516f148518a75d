"""Convolution, pooling and normalisation ops (issue 11): forwards equal direct loop
definitions written here (not the im2col route the ops take), first and second derivatives
equal finite differences in float64 over random shapes, strides, paddings, dilations and
groups, third order on small cases, the running statistics follow PyTorch's update rule,
and bad arguments get errors naming the op. An optional cross-check against
torch.nn.functional (skipped without torch) compares forwards, gradients and the gradient
of a function of the input gradient.

Inputs are continuous random values, so max pooling never ties (ties are tested apart).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_meta as tgm
from tinygrad_meta import functional as F, ops
from tinygrad_meta.backends.im2col import col2im, im2col
from tinygrad_meta.tensor import record
from tinygrad_meta.testing import check_grads, gradcheck, gradgradcheck

FEW = settings(max_examples=12, deadline=None)


def T(array, grad=False):
    return tgm.Tensor(array, dtype="float64", requires_grad=grad)


def out_len(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# ---- reference definitions: one output element at a time -------------------------------

def conv_reference(x, w, b, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = out_len(h, kh, sh, ph, dh), out_len(wd, kw, sw, pw, dw)
    out = np.zeros((n, o, oh, ow))
    per_group = o // groups
    for oc in range(o):
        first = (oc // per_group) * cg
        for y in range(oh):
            for q in range(ow):
                rows = xp[:, first:first + cg, y * sh:y * sh + dh * (kh - 1) + 1:dh,
                          q * sw:q * sw + dw * (kw - 1) + 1:dw]
                out[:, oc, y, q] = (rows * w[oc]).sum(axis=(1, 2, 3)) + (0.0 if b is None else b[oc])
    return out


def pool_reference(x, kernel, stride, padding, reduce, pad_value, dilation=(1, 1)):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    oh, ow = out_len(h, kh, sh, ph, dh), out_len(w, kw, sw, pw, dw)
    out = np.zeros((n, c, oh, ow))
    for y in range(oh):
        for q in range(ow):
            window = xp[:, :, y * sh:y * sh + dh * (kh - 1) + 1:dh, q * sw:q * sw + dw * (kw - 1) + 1:dw]
            out[:, :, y, q] = reduce(window.reshape(n, c, -1))
    return out


@st.composite
def conv_cases(draw, max_size=5):
    groups = draw(st.sampled_from([1, 1, 2]))
    cg = draw(st.integers(1, 2))
    og = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    least_h = dilation[0] * (kh - 1) + 1 - 2 * padding[0]
    least_w = dilation[1] * (kw - 1) + 1 - 2 * padding[1]
    h = draw(st.integers(max(least_h, 1), max(least_h, 1) + max_size - 2))
    w = draw(st.integers(max(least_w, 1), max(least_w, 1) + max_size - 2))
    n = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2 ** 31))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cg * groups, h, w))
    weight = rng.standard_normal((og * groups, cg, kh, kw))
    bias = rng.standard_normal(og * groups) if draw(st.booleans()) else None
    return x, weight, bias, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


# ---- im2col / col2im ------------------------------------------------------------------------

def test_col2im_is_the_adjoint_of_im2col():
    # <im2col(x), c> == <x, col2im(c)> for every x, c: the two rules are each other's
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5))
    args = ((3, 2), (2, 1), (1, 1), (2, 1))
    cols = im2col(x, *args)
    c = rng.standard_normal(cols.shape)
    assert np.vdot(cols, c) == pytest.approx(np.vdot(x, col2im(c, x.shape, *args)), rel=1e-12)


def test_im2col_and_col2im_are_differentiable_to_third_order():
    rng = np.random.default_rng(1)
    be = tgm.Tensor(0.0)._be
    args = ((2, 2), (1, 2), (1, 0), (1, 1))
    x = rng.standard_normal((1, 2, 3, 4))

    def f(x):
        cols = record(ops.im2col, x, *args, 0.0, be)
        back = record(ops.col2im, cols * cols, (1, 2, 3, 4), *args, be)
        return (back * back).sum()
    assert check_grads(f, [T(x)], order=3)


@pytest.mark.parametrize("weight_batched", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_under_vmap_equals_a_loop_in_values_and_first_and_second_gradients(weight_batched, groups):
    rng = np.random.default_rng(2)
    xs = T(rng.standard_normal((3, 2, 4, 5, 4)), grad=True)
    w = T(rng.standard_normal((3, 4, 4 // groups, 3, 3) if weight_batched else (4, 4 // groups, 3, 3)), grad=True)

    def f(x, w):  # a scalar whose gradient in x depends on w and x: second order is not trivial
        y = F.conv2d(x, w, padding=1, stride=(2, 1), groups=groups)
        (gx,) = tgm.grad((y * y.tanh()).sum(), [x], create_graph=True)
        return (gx * gx).sum() + (y * y).sum()
    axes = (0, 0 if weight_batched else None)
    batched = tgm.vmap(f, in_axes=axes)(xs, w)
    looped = tgm.stack([f(xs[i], w[i] if weight_batched else w) for i in range(3)])
    np.testing.assert_allclose(batched.numpy(), looped.numpy(), rtol=1e-12)
    for a, b in zip(tgm.grad(batched.sum(), [xs, w]), tgm.grad(looped.sum(), [xs, w])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)


def test_conv2d_under_vmap_with_a_broadcast_weight_equals_per_example_weights():
    # MAML's fast weights before their first update are one weight broadcast over tasks
    rng = np.random.default_rng(14)
    xs = T(rng.standard_normal((3, 2, 2, 5, 5)))
    w = T(rng.standard_normal((4, 2, 3, 3)), grad=True)
    shared = w.reshape((1,) + w.shape).broadcast_to((3,) + w.shape)
    copies = tgm.stack([w * 1.0 for _ in range(3)])
    f = lambda x, w: (F.conv2d(x, w, padding=1) ** 2).sum()  # noqa: E731
    a, b = tgm.vmap(f)(xs, shared), tgm.vmap(f)(xs, copies)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-13)
    np.testing.assert_allclose(tgm.grad(a.sum(), [w])[0].numpy(), tgm.grad(b.sum(), [w])[0].numpy(),
                               rtol=1e-12)


@pytest.mark.parametrize("window", [(3, 2, 1), (2, None, 0)])  # im2col, and tiles cropped 5 -> 4
@pytest.mark.parametrize("pool", [F.max_pool2d, F.avg_pool2d])
def test_pools_under_vmap_equal_a_loop(pool, window):
    xs = T(np.random.default_rng(12).standard_normal((3, 2, 2, 5, 5)), grad=True)
    f = lambda x: (pool(x, *window) ** 2).sum()  # noqa: E731
    batched = tgm.vmap(f)(xs)
    looped = tgm.stack([f(xs[i]) for i in range(3)])
    np.testing.assert_allclose(batched.numpy(), looped.numpy(), rtol=1e-13)
    np.testing.assert_allclose(tgm.grad(batched.sum(), [xs])[0].numpy(),
                               tgm.grad(looped.sum(), [xs])[0].numpy(), rtol=1e-13)


# ---- conv2d ------------------------------------------------------------------------------

@FEW
@given(conv_cases())
def test_conv2d_forward_equals_the_direct_sum(case):
    x, w, b, kw = case
    got = F.conv2d(T(x), T(w), None if b is None else T(b), **kw)
    want = conv_reference(x, w, b, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@FEW
@given(conv_cases(max_size=4))
def test_conv2d_first_and_second_derivatives_match_finite_differences(case):
    x, w, b, kw = case
    inputs = [T(x), T(w)] + ([] if b is None else [T(b)])
    f = lambda *a: F.conv2d(*a, **kw)  # noqa: E731
    assert gradcheck(f, inputs)
    assert gradgradcheck(f, inputs)


def test_conv2d_third_derivatives_match_finite_differences():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((2, 1, 2, 2)), rng.standard_normal(2)
    f = lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=2).tanh()  # noqa: E731
    assert check_grads(f, [T(x), T(w), T(b)], order=3)


def test_conv2d_weight_gradient_is_the_same_from_cached_and_recomputed_columns():
    rng = np.random.default_rng(13)
    x, w = T(rng.standard_normal((2, 3, 6, 5)), grad=True), T(rng.standard_normal((4, 3, 3, 2)), grad=True)
    y = F.conv2d(x, w, stride=2, padding=1)
    first = tgm.grad((y * y).sum(), [w])[0].numpy()  # takes the forward's columns
    again = tgm.grad((y * y).sum(), [w])[0].numpy()  # they were used once: recomputed now
    # the weight gradient of sum(y^2), directly: sum over images and positions of 2 y * window
    grad = np.zeros(w.shape)
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
    yr = y.numpy()
    for i in range(3):
        for j in range(2):
            window = xp[:, :, i:i + 2 * (yr.shape[2] - 1) + 1:2, j:j + 2 * (yr.shape[3] - 1) + 1:2]
            grad[:, :, i, j] = np.einsum("nohw,nchw->oc", 2 * yr, window)
    np.testing.assert_allclose(first, grad, rtol=1e-12)
    np.testing.assert_array_equal(first, again)


def test_conv2d_takes_one_unbatched_image_as_pytorch():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    np.testing.assert_allclose(F.conv2d(T(x), T(w), stride=2).numpy(),
                               F.conv2d(T(x[None]), T(w), stride=2).numpy()[0], rtol=1e-14)


def test_conv2d_float32_stays_float32():
    x = tgm.Tensor(np.ones((1, 1, 4, 4)), requires_grad=True)
    w = tgm.Tensor(np.ones((1, 1, 3, 3)), requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    gx, gw = tgm.grad(y.sum(), [x, w])
    assert y.dtype == gx.dtype == gw.dtype == np.float32


# ---- pooling -----------------------------------------------------------------------------

@st.composite
def pool_cases(draw, max_extra=3):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 2), st.integers(1, 2))))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    h = draw(st.integers(kernel[0], kernel[0] + max_extra))
    w = draw(st.integers(kernel[1], kernel[1] + max_extra))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w)
    x = np.random.default_rng(draw(st.integers(0, 2 ** 31))).standard_normal(shape)
    return x, kernel, stride, padding


@FEW
@given(pool_cases(), st.booleans())
def test_max_pool2d_forward_and_derivatives(case, dilated):
    x, kernel, stride, padding = case
    dilation = (2, 1) if dilated and x.shape[2] >= 2 * (kernel[0] - 1) + 1 else (1, 1)
    got = F.max_pool2d(T(x), kernel, stride, padding, dilation)
    want = pool_reference(x, kernel, stride or kernel, padding, lambda v: v.max(axis=-1), -np.inf,
                          dilation)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14)
    f = lambda x: F.max_pool2d(x, kernel, stride, padding, dilation)  # noqa: E731
    assert gradcheck(f, [T(x)]) and gradgradcheck(f, [T(x)])


@FEW
@given(pool_cases(), st.booleans())
def test_avg_pool2d_forward_and_derivatives(case, include_pad):
    x, kernel, stride, padding = case
    got = F.avg_pool2d(T(x), kernel, stride, padding, count_include_pad=include_pad)
    ones = np.ones_like(x)
    total = pool_reference(x, kernel, stride or kernel, padding, lambda v: v.sum(axis=-1), 0.0)
    count = pool_reference(ones, kernel, stride or kernel, padding, lambda v: v.sum(axis=-1), 0.0)
    want = total / (kernel[0] * kernel[1] if include_pad else count)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-13)
    f = lambda x: F.avg_pool2d(x, kernel, stride, padding, count_include_pad=include_pad)  # noqa: E731
    assert gradcheck(f, [T(x)]) and gradgradcheck(f, [T(x)])


def test_pools_third_derivatives_match_finite_differences():
    x = np.random.default_rng(5).standard_normal((1, 1, 4, 3))
    assert check_grads(lambda x: (F.max_pool2d(x, 2, 1, 1) ** 3).sum(), [T(x)], order=3)
    assert check_grads(lambda x: (F.avg_pool2d(x, 2, 1) ** 3).sum(), [T(x)], order=3)


def test_max_pool2d_ties_share_the_gradient_and_a_nan_takes_it_as_tensor_max_does():
    x = T(np.array([[[[1.0, 1.0], [1.0, 0.0]]]]), grad=True)
    (g,) = tgm.grad(F.max_pool2d(x, 2).sum(), [x])
    (want,) = tgm.grad(x.reshape(4).max(), [x])
    np.testing.assert_array_equal(g.numpy(), want.numpy())
    np.testing.assert_array_equal(g.numpy().reshape(-1), [1 / 3, 1 / 3, 1 / 3, 0.0])
    y = T(np.array([[[[1.0, np.nan], [3.0, 0.0]]]]), grad=True)
    out = F.max_pool2d(y, 2)
    (g,) = tgm.grad(out.sum(), [y])
    assert math.isnan(float(out.numpy().item()))
    np.testing.assert_array_equal(g.numpy().reshape(-1), [0.0, 1.0, 0.0, 0.0])


def test_overlapping_max_pool_windows_add_their_gradients():
    x = T(np.array([[[[0.0, 5.0, 1.0]]]]), grad=True)
    (g,) = tgm.grad(F.max_pool2d(x, (1, 2), 1).sum(), [x])  # both windows pick the 5
    np.testing.assert_array_equal(g.numpy().reshape(-1), [0.0, 2.0, 0.0])


# ---- batch norm and layer norm -----------------------------------------------------------

def bn_reference(x, mean, var, weight, bias, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return y * weight.reshape(shape) + bias.reshape(shape)


@FEW
@given(st.integers(2, 4), st.integers(1, 3), st.sampled_from([(), (3,), (2, 3)]),
       st.integers(0, 2 ** 31))
def test_batch_norm_training_normalises_with_batch_statistics(n, c, spatial, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + spatial)
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    axes = (0,) + tuple(range(2, x.ndim))
    got = F.batch_norm(T(x), None, None, T(w), T(b), training=True, eps=1e-3)
    want = bn_reference(x, x.mean(axis=axes), x.var(axis=axes), w, b, 1e-3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    f = lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)  # noqa: E731
    assert gradcheck(f, [T(x), T(w), T(b)]) and gradgradcheck(f, [T(x), T(w), T(b)])


def test_batch_norm_training_updates_the_running_statistics_with_the_unbiased_variance():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 2, 2))
    mean0, var0 = rng.standard_normal(2), rng.uniform(0.5, 2.0, 2)
    mean, var = T(mean0.copy()), T(var0.copy())
    for _ in range(2):
        F.batch_norm(T(x), mean, var, training=True, momentum=0.3)
    axes = (0, 2, 3)
    want_mean, want_var = mean0, var0
    for _ in range(2):
        want_mean = 0.7 * want_mean + 0.3 * x.mean(axis=axes)
        want_var = 0.7 * want_var + 0.3 * x.var(axis=axes, ddof=1)
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-13)
    np.testing.assert_allclose(var.numpy(), want_var, rtol=1e-13)


def test_batch_norm_eval_uses_the_running_statistics_and_is_differentiable():
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((2, 3, 2)), rng.standard_normal(3), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    got = F.batch_norm(T(x), T(mean), T(var), T(w), T(b))
    np.testing.assert_allclose(got.numpy(), bn_reference(x, mean, var, w, b, 1e-5), rtol=1e-12)
    f = lambda x, w, b: F.batch_norm(x, T(mean), T(var), w, b)  # noqa: E731
    assert gradcheck(f, [T(x), T(w), T(b)]) and gradgradcheck(f, [T(x), T(w), T(b)])
    # eval mode leaves the running statistics alone
    running = T(mean.copy())
    F.batch_norm(T(x), running, T(var), training=False)
    np.testing.assert_array_equal(running.numpy(), mean)


def test_batch_norm_third_derivatives_match_finite_differences():
    x = np.random.default_rng(8).standard_normal((3, 2, 2))
    w = np.array([0.7, -1.2])
    assert check_grads(lambda x, w: F.batch_norm(x, None, None, w, training=True) ** 2,
                       [T(x), T(w)], order=3)


def test_batch_norm_under_vmap_takes_each_examples_statistics_and_loops_the_running_update():
    rng = np.random.default_rng(9)
    xs = rng.standard_normal((3, 4, 2, 2, 2)) * np.arange(1, 4)[:, None, None, None, None]
    m1, v1, m2, v2 = T(np.zeros(2)), T(np.ones(2)), T(np.zeros(2)), T(np.ones(2))
    batched = tgm.vmap(lambda x: F.batch_norm(x, m1, v1, training=True))(T(xs))
    looped = [F.batch_norm(T(x), m2, v2, training=True).numpy() for x in xs]
    np.testing.assert_allclose(batched.numpy(), np.stack(looped), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(m1.numpy(), m2.numpy(), rtol=1e-13)
    np.testing.assert_allclose(v1.numpy(), v2.numpy(), rtol=1e-13)



@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("weight_batched", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_norm_under_vmap_equals_a_loop_in_first_and_second_gradients(relu, weight_batched, dtype):
    # vmap runs the forward, and the backward at first order, example by example through
    # the backend's kernel, and records the rule under create_graph: all three as a loop
    rng = np.random.default_rng(11)
    norm = F.batch_norm_relu if relu else F.batch_norm
    xs = rng.standard_normal((3, 4, 2, 3, 3)) * np.arange(1, 4)[:, None, None, None, None]
    ws = rng.standard_normal((3, 2) if weight_batched else (2,))
    b, c = rng.standard_normal(2), rng.standard_normal((4, 2, 3, 3))
    x1, w1, b1, c1 = (T(a.astype(dtype), grad=True) for a in (xs, ws, b, c))
    x2, w2, b2 = (T(a.astype(dtype), grad=True) for a in (xs, ws, b))
    f = lambda x, w: norm(x, None, None, w, b1, training=True)  # noqa: E731
    batched = tgm.vmap(f, in_axes=(0, 0 if weight_batched else None))(x1, w1)
    looped = tgm.stack([norm(x2[t], None, None, w2[t] if weight_batched else w2, b2, training=True)
                        for t in range(3)])
    # both run the same kernels on the same examples; only numpy's reductions over a
    # batched array may add in another order (an ulp or so: float32's 1e-6)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batched.numpy(), looped.numpy(), **tol)
    for create_graph in (False, True):
        ga = tgm.grad((batched * c1).sum(), [x1, w1, b1], create_graph=create_graph)
        gb = tgm.grad((looped * c1).sum(), [x2, w2, b2], create_graph=create_graph)
        for name, u, v in zip("xwb", ga, gb):
            np.testing.assert_allclose(u.numpy(), v.numpy(), err_msg=f"{name} {create_graph}", **tol)
    # second order: through the recorded rule of the batched node
    hx = tgm.grad((ga[0] * ga[0]).sum() + (ga[1] * ga[1]).sum(), [x1, w1])
    hy = tgm.grad((gb[0] * gb[0]).sum() + (gb[1] * gb[1]).sum(), [x2, w2])
    for name, u, v in zip("xw", hx, hy):
        np.testing.assert_allclose(u.numpy(), v.numpy(), err_msg=f"second order {name}", **tol)


def test_batch_norm_under_nested_vmaps_equals_a_double_loop_in_first_gradients():
    # two vmap levels flatten into the kernel's one leading axis; the weight is batched by
    # the outer vmap only, so the inner examples share it
    rng = np.random.default_rng(12)
    xs = rng.standard_normal((2, 3, 4, 2, 3, 3)) * np.arange(1, 4)[None, :, None, None, None, None]
    ws, c = rng.standard_normal((2, 2)), rng.standard_normal((2, 3, 4, 2, 3, 3))
    x1, w1, x2, w2 = T(xs, grad=True), T(ws, grad=True), T(xs, grad=True), T(ws, grad=True)
    inner = lambda x, w: F.batch_norm_relu(x, None, None, w, training=True)  # noqa: E731
    batched = tgm.vmap(lambda x, w: tgm.vmap(inner, in_axes=(0, None))(x, w))(x1, w1)
    looped = tgm.stack([tgm.stack([inner(x2[i][j], w2[i]) for j in range(3)]) for i in range(2)])
    np.testing.assert_allclose(batched.numpy(), looped.numpy(), rtol=1e-12, atol=1e-12)
    ga = tgm.grad((batched * T(c)).sum(), [x1, w1])
    gb = tgm.grad((looped * T(c)).sum(), [x2, w2])
    for name, u, v in zip("xw", ga, gb):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)

@FEW
@given(st.sampled_from([((3, 4), (4,)), ((2, 2, 3), (2, 3)), ((2, 5), 5)]), st.booleans(),
       st.integers(0, 2 ** 31))
def test_layer_norm_forward_and_derivatives(shapes, affine, seed):
    shape, normalized = shapes
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    norm_shape = (normalized,) if isinstance(normalized, int) else normalized
    w, b = rng.standard_normal(norm_shape), rng.standard_normal(norm_shape)
    axes = tuple(range(x.ndim - len(norm_shape), x.ndim))
    want = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)
    if affine:
        want = want * w + b
        f = lambda x, w, b: F.layer_norm(x, normalized, w, b)  # noqa: E731
        inputs = [T(x), T(w), T(b)]
    else:
        f = lambda x: F.layer_norm(x, normalized)  # noqa: E731
        inputs = [T(x)]
    np.testing.assert_allclose(f(*inputs).numpy(), want, rtol=1e-12, atol=1e-12)
    assert gradcheck(f, inputs) and gradgradcheck(f, inputs)


@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "max_pool2d tiles", "avg_pool2d", "batch_norm",
                                  "layer_norm"])
def test_each_rule_gives_the_same_gradient_on_raw_arrays_and_recorded(name):
    # the rules are written once over ``o``: raw at first order, Tensor ops with create_graph
    rng = np.random.default_rng(15)
    x = T(rng.standard_normal((2, 2, 5, 4)), grad=True)
    w = T(rng.standard_normal((3, 1, 3, 2)) if name == "conv2d" else rng.standard_normal(2), grad=True)
    f = {"conv2d": lambda: F.conv2d(x, w[:2], stride=2, padding=1, groups=2),
         "max_pool2d": lambda: F.max_pool2d(x, 3, 1, 1) * w.sum(),
         "max_pool2d tiles": lambda: F.max_pool2d(x, 2) * w.sum(),  # 5 rows: floor mode drops one
         "avg_pool2d": lambda: F.avg_pool2d(x, 2) * w.sum(),
         "batch_norm": lambda: F.batch_norm(x, None, None, w, w * 2.0, training=True),
         "layer_norm": lambda: F.layer_norm(x, 4) * w.sum()}[name]
    raw = tgm.grad((f() ** 2).sum(), [x, w])
    recorded = tgm.grad((f() ** 2).sum(), [x, w], create_graph=True)
    for a, b in zip(raw, recorded):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-13, atol=1e-13)


def test_float32_first_order_rules_of_tiled_max_pool_and_batch_norm_stay_float32_and_agree():
    # their first-order rules run in place in x's dtype: float32 in, float32 out, equal to
    # the float64 gradient up to float32 rounding (rtol: a few float32 ulps of sums of 120)
    rng = np.random.default_rng(16)
    x64, w64 = rng.standard_normal((3, 2, 5, 4)), rng.standard_normal(2)
    ties = np.zeros((3, 2, 4, 4))  # all-equal tiles: each tap takes a quarter
    for dtype in ("float64", "float32"):
        x = tgm.Tensor(x64, dtype=dtype, requires_grad=True)
        w = tgm.Tensor(w64, dtype=dtype, requires_grad=True)
        y = F.batch_norm(F.max_pool2d(x, 2).relu() * 1.5 + x[:, :, :2, :2], None, None, w, w * 2.0,
                         training=True)
        grads = tgm.grad((y * y.exp()).sum(), [x, w])
        assert all(g.dtype == dtype for g in grads)
        if dtype == "float64":
            want = [g.numpy() for g in grads]
        else:
            for g, ref in zip(grads, want):
                np.testing.assert_allclose(g.numpy(), ref, rtol=2e-5, atol=2e-5)
        z = tgm.Tensor(ties, dtype=dtype, requires_grad=True)
        (g,) = tgm.grad(F.max_pool2d(z, 2).sum(), [z])
        np.testing.assert_array_equal(g.numpy(), np.full(ties.shape, 0.25))


def test_vmapped_tiled_max_pool_equals_a_loop_with_its_gradients():
    rng = np.random.default_rng(17)
    xs = T(rng.standard_normal((3, 2, 2, 5, 4)), grad=True)
    pooled = lambda x: (F.max_pool2d(x, 2) ** 2).sum()  # noqa: E731
    batched = tgm.vmap(pooled)(xs)
    looped = tgm.stack([pooled(xs[i]) for i in range(3)])
    np.testing.assert_allclose(batched.numpy(), looped.numpy(), rtol=1e-14)
    (g_batched,) = tgm.grad(batched.sum(), [xs])
    (g_looped,) = tgm.grad(looped.sum(), [xs])
    np.testing.assert_allclose(g_batched.numpy(), g_looped.numpy(), rtol=1e-14)
    (gg_batched,) = tgm.grad((tgm.grad(batched.sum(), [xs], create_graph=True)[0] ** 2).sum(), [xs])
    (gg_looped,) = tgm.grad((tgm.grad(looped.sum(), [xs], create_graph=True)[0] ** 2).sum(), [xs])
    np.testing.assert_allclose(gg_batched.numpy(), gg_looped.numpy(), rtol=1e-14)


# ---- errors name the op and the problem --------------------------------------------------

X = tgm.Tensor(np.ones((2, 4, 5, 5)))
W = tgm.Tensor(np.ones((6, 2, 3, 3)))
ERRORS = {
    "conv rank": (lambda: F.conv2d(tgm.Tensor(np.ones((5, 5))), W), ValueError, r"conv2d: input must be \(N, C, H, W\)"),
    "weight rank": (lambda: F.conv2d(X, tgm.Tensor(np.ones((6, 4)))), ValueError, "conv2d: weight must be"),
    "channels": (lambda: F.conv2d(X, tgm.Tensor(np.ones((6, 3, 3, 3)))), ValueError, "expects 3 input channels"),
    "groups divide": (lambda: F.conv2d(X, tgm.Tensor(np.ones((5, 2, 3, 3))), groups=2), ValueError,
                      "groups=2 must divide"),
    "groups value": (lambda: F.conv2d(X, W, groups=0), ValueError, "groups must be a positive integer"),
    "too small": (lambda: F.conv2d(X, tgm.Tensor(np.ones((6, 4, 7, 7)))), ValueError,
                  "conv2d: input of spatial size 5x5 .* output would be -1x-1"),
    "stride": (lambda: F.conv2d(X, W, groups=2, stride=0), ValueError, "conv2d: stride must be at least 1"),
    "padding type": (lambda: F.conv2d(X, W, groups=2, padding="same"), TypeError, "conv2d: padding must be an int"),
    "dtype": (lambda: F.conv2d(X, W.astype("float64"), groups=2), TypeError, "conv2d: dtype mismatch"),
    "bias shape": (lambda: F.conv2d(X, W, tgm.Tensor(np.ones(5)), groups=2), ValueError,
                   r"conv2d: bias must have shape \(6,\)"),
    "not a tensor": (lambda: F.conv2d(np.ones((1, 1, 3, 3)), W), TypeError, "conv2d: input must be a Tensor"),
    "pool padding": (lambda: F.max_pool2d(X, 2, padding=2), ValueError, "max_pool2d: padding"),
    "pool kernel": (lambda: F.avg_pool2d(X, 0), ValueError, "avg_pool2d: kernel_size must be at least 1"),
    "pool too small": (lambda: F.max_pool2d(X, 6), ValueError, "max_pool2d: input of spatial size 5x5"),
    "ceil mode": (lambda: F.avg_pool2d(X, 2, ceil_mode=True), NotImplementedError, "avg_pool2d: ceil_mode=True"),
    "indices": (lambda: F.max_pool2d(X, 2, return_indices=True), NotImplementedError,
                "max_pool2d: return_indices=True"),
    "bn one value": (lambda: F.batch_norm(tgm.Tensor(np.ones((1, 3))), None, None, training=True), ValueError,
                     "batch_norm: training needs more than one value per channel"),
    "bn eval stats": (lambda: F.batch_norm(X, None, None), ValueError, "batch_norm: evaluation mode"),
    "bn shape": (lambda: F.batch_norm(X, tgm.zeros(3), tgm.ones(3)), ValueError,
                 r"batch_norm: running_mean must have shape \(4,\)"),
    "bn dtype": (lambda: F.batch_norm(X, tgm.zeros(4, dtype="float64"), tgm.ones(4)), TypeError,
                 "batch_norm: dtype mismatch"),
    "bn momentum": (lambda: F.batch_norm(X, None, None, training=True, momentum=2.0), ValueError,
                    "batch_norm: momentum"),
    "ln shape": (lambda: F.layer_norm(X, (4, 5)), ValueError, "layer_norm: normalized_shape"),
    "ln weight": (lambda: F.layer_norm(X, 5, tgm.ones(4)), ValueError, r"layer_norm: weight must have shape \(5,\)"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_arguments_raise_errors_naming_the_op(name):
    call, error, message = ERRORS[name]
    with pytest.raises(error, match=message):
        call()


# ---- optional cross-check against PyTorch ------------------------------------------------

def _torch_cases():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    c = rng.standard_normal(4)
    return {
        "conv2d": (lambda F_, x, w, b: F_.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
                   (x, w, b)),
        "max_pool2d": (lambda F_, x: F_.max_pool2d(x, 3, 2, 1), (x,)),
        "avg_pool2d": (lambda F_, x: F_.avg_pool2d(x, 3, 2, 1, count_include_pad=False), (x,)),
        "batch_norm": (lambda F_, x, w, b: F_.batch_norm(x, None, None, w, b, training=True), (x, c, c[::-1].copy())),
        "layer_norm": (lambda F_, x, w, b: F_.layer_norm(x, (7, 6), w, b), (x, x[0, 0], x[1, 1])),
    }


@pytest.mark.parametrize("name", list(_torch_cases()))
def test_forward_gradients_and_second_derivatives_match_pytorch(name):
    torch = pytest.importorskip("torch")
    f, arrays = _torch_cases()[name]
    ours = [T(a, grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    y, yt = f(F, *ours), f(torch.nn.functional, *theirs)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    # a nonlinear scalar of the output, so its second derivatives are not all zero
    grads = tgm.grad((y * y.tanh()).sum(), ours, create_graph=True)
    grads_t = torch.autograd.grad((yt * yt.tanh()).sum(), theirs, create_graph=True)
    for g, gt in zip(grads, grads_t):
        np.testing.assert_allclose(g.numpy(), gt.detach().numpy(), rtol=1e-9, atol=1e-11)
    # second order: the gradient of a scalar function of the first gradients
    second = tgm.grad(sum((g * g).sum() for g in grads), ours)
    second_t = torch.autograd.grad(sum((g * g).sum() for g in grads_t), theirs)
    for g, gt in zip(second, second_t):
        np.testing.assert_allclose(g.numpy(), gt.numpy(), rtol=1e-8, atol=1e-10)


def test_running_statistics_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    mean, var = T(np.zeros(3)), T(np.ones(3))
    mean_t, var_t = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 2, 5))
        F.batch_norm(T(x), mean, var, training=True, momentum=0.2)
        torch.nn.functional.batch_norm(torch.tensor(x), mean_t, var_t, training=True, momentum=0.2)
    np.testing.assert_allclose(mean.numpy(), mean_t.numpy(), rtol=1e-13)
    np.testing.assert_allclose(var.numpy(), var_t.numpy(), rtol=1e-13)
