"""Every Tensor op: forward equals numpy, and first- and second-order gradients match
finite differences in float64 (gradcheck + gradgradcheck), over random shapes with
broadcasting pairs, size-1 dims and 0-d tensors.

Inputs are drawn from a grid (k/10 + 0.05) so they stay at least 0.05 away from the
kinks of relu/abs/clip and never tie for max/min unless a test wants ties; finite
differences use eps=1e-6, far smaller than that margin.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_meta as tgm
from float64_checks import (EXAMPLES, T, arrays, assert_forward, check_orders_1_and_2, grid,
                            shape_and_axis)
from tinygrad_meta.testing import broadcastable_shapes, gradcheck, gradgradcheck, shapes


positive = st.integers(2, 25).map(lambda k: k / 10 + 0.05)


# ---- binary arithmetic with broadcasting ----------------------------------------------

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
}


@pytest.mark.parametrize("name", list(BINARY))
@EXAMPLES
@given(data=st.data())
def test_binary_op_broadcasts_and_matches_finite_differences(name, data):
    op, reference = BINARY[name]
    shape_a, shape_b = data.draw(broadcastable_shapes())
    a = data.draw(arrays(shape_a))
    b = data.draw(arrays(shape_b))
    assert_forward(op(T(a), T(b)), reference(a, b))
    check_orders_1_and_2(op, T(a), T(b))


@pytest.mark.parametrize("name", list(BINARY))
@EXAMPLES
@given(x=arrays(shapes()), number=grid)
def test_binary_op_with_a_python_number_on_either_side(name, x, number):
    op, reference = BINARY[name]
    assert_forward(op(T(x), number), reference(x, number))
    assert_forward(op(number, T(x)), reference(number, x))
    check_orders_1_and_2(lambda t: op(t, number), T(x))
    check_orders_1_and_2(lambda t: op(number, t), T(x))


def test_reflected_operators_accept_numpy_arrays():
    a = np.array([[1.5, 2.5]])  # positive, so it can also be a base of **
    x = tgm.Tensor([[0.5], [-2.0]], dtype="float64", requires_grad=True)
    for op in (lambda u, v: u + v, lambda u, v: u - v, lambda u, v: u * v, lambda u, v: u / v,
               lambda u, v: u ** v, lambda u, v: u @ v):
        assert_forward(op(a, x), op(a, x.numpy()))
        check_orders_1_and_2(lambda t: op(a, t), x)


@EXAMPLES
@given(x=arrays(shapes()))
def test_neg(x):
    assert_forward(-T(x), -x)
    check_orders_1_and_2(lambda t: -t, T(x))


# ---- pow -----------------------------------------------------------------------------

@pytest.mark.parametrize("exponent", [2, 3, -1, -2, 0, 0.5, 1.5, -2.5])
@EXAMPLES
@given(data=st.data())
def test_pow_with_a_number_exponent(exponent, data):
    # non-integer powers need a positive base; integer powers take any nonzero base
    elements = positive if exponent != int(exponent) else grid
    x = data.draw(arrays(shapes(), elements))
    assert_forward(T(x) ** exponent, x ** exponent)
    check_orders_1_and_2(lambda t: t ** exponent, T(x))


@EXAMPLES
@given(data=st.data())
def test_pow_with_a_tensor_exponent_broadcasts(data):
    shape_a, shape_b = data.draw(broadcastable_shapes())
    base = data.draw(arrays(shape_a, positive))
    exponent = data.draw(arrays(shape_b))
    assert_forward(T(base) ** T(exponent), base ** exponent)
    check_orders_1_and_2(lambda a, b: a ** b, T(base), T(exponent))


@EXAMPLES
@given(x=arrays(shapes()), base=positive)
def test_rpow_number_base(x, base):
    assert_forward(base ** T(x), base ** x)
    check_orders_1_and_2(lambda t: base ** t, T(x))


# ---- matmul --------------------------------------------------------------------------

@EXAMPLES
@given(data=st.data())
def test_matmul_1d_2d_and_batched_with_broadcasting(data):
    # numpy's own matmul signature: optional dims give 1-D operands, extra leading dims
    # give batches that broadcast against each other
    shape_a, shape_b = data.draw(hnp.mutually_broadcastable_shapes(
        signature=np.matmul.signature, max_dims=2, max_side=3)).input_shapes
    a = data.draw(arrays(shape_a))
    b = data.draw(arrays(shape_b))
    assert_forward(T(a) @ T(b), a @ b)
    check_orders_1_and_2(lambda u, v: u @ v, T(a), T(b))


@pytest.mark.parametrize("shape_a, shape_b", [
    ((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 2)), ((2, 3), (3, 4)),
    ((2, 1, 2, 3), (4, 3, 2)), ((3,), (2, 3, 2)), ((2, 2, 3), (3,))])
def test_matmul_each_layout(shape_a, shape_b):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    assert_forward(T(a) @ T(b), a @ b)
    check_orders_1_and_2(lambda u, v: u @ v, T(a), T(b))


# ---- reductions ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
@EXAMPLES
@given(data=st.data())
def test_reduction_over_axis_with_keepdims(name, data):
    shape, axis, keepdims = data.draw(shape_and_axis())
    # unique grid values: no ties, so max/min are differentiable at the sample point
    x = data.draw(arrays(shape, unique=True))
    op = lambda t: getattr(t, name)(axis=axis, keepdims=keepdims)
    assert_forward(op(T(x)), getattr(np, name)(x, axis=axis, keepdims=keepdims))
    check_orders_1_and_2(op, T(x))


@pytest.mark.parametrize("name", ["max", "min"])
def test_tied_extrema_split_the_gradient_evenly(name):
    sign = 1.0 if name == "max" else -1.0
    x = tgm.Tensor(sign * np.array([1.0, 3.0, 3.0, 3.0, 2.0]), dtype="float64", requires_grad=True)
    getattr(x, name)().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 1 / 3, 1 / 3, 1 / 3, 0.0])


def test_tied_extrema_split_per_row_along_an_axis():
    x = tgm.Tensor([[5.0, 5.0, 1.0], [0.0, 2.0, 1.0]], dtype="float64", requires_grad=True)
    (g,) = tgm.grad(x.max(axis=1), [x], grad_outputs=[tgm.Tensor([2.0, 4.0], dtype="float64")])
    np.testing.assert_array_equal(g.numpy(), [[1.0, 1.0, 0.0], [0.0, 4.0, 0.0]])


def test_tied_pairwise_maximum_gives_each_side_half():
    a = tgm.Tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    b = tgm.Tensor([1.0, 0.0], dtype="float64", requires_grad=True)
    ga, gb = tgm.grad(tgm.maximum(a, b).sum(), [a, b])
    np.testing.assert_array_equal(ga.numpy(), [0.5, 1.0])
    np.testing.assert_array_equal(gb.numpy(), [0.5, 0.0])


# ---- shape ops -----------------------------------------------------------------------

@st.composite
def shape_and_reshape(draw):
    shape = draw(shapes())
    # same number of elements: permute the sides and sprinkle in size-1 dims
    target = list(draw(st.permutations(shape)))
    for _ in range(draw(st.integers(0, 2))):
        target.insert(draw(st.integers(0, len(target))), 1)
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return shape, tuple(target)


@EXAMPLES
@given(data=st.data())
def test_reshape(data):
    shape, target = data.draw(shape_and_reshape())
    x = data.draw(arrays(shape))
    assert_forward(T(x).reshape(target), x.reshape(target))
    check_orders_1_and_2(lambda t: t.reshape(target), T(x))


@EXAMPLES
@given(data=st.data())
def test_permute_and_transpose(data):
    shape = data.draw(shapes())
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    x = data.draw(arrays(shape))
    assert_forward(T(x).permute(*axes), np.transpose(x, axes))
    assert_forward(T(x).transpose(), x.T)
    assert_forward(T(x).T, x.T)
    check_orders_1_and_2(lambda t: t.permute(*axes), T(x))
    check_orders_1_and_2(lambda t: t.T, T(x))


@EXAMPLES
@given(data=st.data())
def test_matrix_transpose_mT_swaps_the_last_two_axes(data):
    x = data.draw(arrays(shapes(min_dims=2)))
    assert_forward(T(x).mT, np.swapaxes(x, -1, -2))
    check_orders_1_and_2(lambda t: t.mT, T(x))


@EXAMPLES
@given(data=st.data())
def test_broadcast_to_and_expand(data):
    shape_a, shape_b = data.draw(broadcastable_shapes())
    target = np.broadcast_shapes(shape_a, shape_b)
    x = data.draw(arrays(shape_a))
    assert_forward(T(x).broadcast_to(target), np.broadcast_to(x, target))
    assert_forward(T(x).expand(target), np.broadcast_to(x, target))
    check_orders_1_and_2(lambda t: t.broadcast_to(target), T(x))


# ---- indexing ------------------------------------------------------------------------

@EXAMPLES
@given(data=st.data())
def test_getitem_with_ints_slices_none_and_ellipsis(data):
    shape = data.draw(shapes(min_dims=1))
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    x = data.draw(arrays(shape))
    assert_forward(T(x)[index], x[index])
    check_orders_1_and_2(lambda t: t[index], T(x))


@EXAMPLES
@given(data=st.data())
def test_getitem_with_integer_arrays_accumulates_repeats(data):
    shape = data.draw(shapes(min_dims=1))
    index = data.draw(hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)))
    x = data.draw(arrays(shape))
    assert_forward(T(x)[index], x[index])
    check_orders_1_and_2(lambda t: t[index], T(x))


def test_getitem_repeated_integer_index_counts_each_use():
    x = tgm.Tensor([1.0, 2.0, 3.0], dtype="float64", requires_grad=True)
    x[np.array([2, 0, 2, 2])].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 0.0, 3.0])
    check_orders_1_and_2(lambda t: (t[[2, 0, 2, 2]] ** 2).sum(), x)


MIXED_INDICES = {
    "slice then repeated ints": (slice(None), [2, 0, 2]),
    "repeated ints then slice": ([1, 1, 0], slice(1, None)),
    "newaxis, ints, ellipsis, int": (None, [0, 1, 0], Ellipsis, 1),
    "2-d boolean mask on 3-d": (np.array([[True, False, True], [False, True, True]]),),
    "integer Tensor index": (tgm.Tensor(np.array([1, 0, 1])),),
    "negative step slice": (slice(None, None, -1), slice(0, 3, 2)),
}


@pytest.mark.parametrize("name", list(MIXED_INDICES))
def test_getitem_mixing_basic_and_advanced_indices(name):
    index = MIXED_INDICES[name]
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 10 + 0.05
    plain = tuple(i.numpy() if isinstance(i, tgm.Tensor) else i for i in index)
    assert_forward(T(x)[index], x[plain])
    check_orders_1_and_2(lambda t: t[index] * t[index], T(x))


@EXAMPLES
@given(data=st.data())
def test_getitem_with_a_boolean_mask(data):
    shape = data.draw(shapes(min_dims=1))
    mask = data.draw(hnp.arrays(bool, shape))
    x = data.draw(arrays(shape))
    assert_forward(T(x)[mask], x[mask])
    assert_forward(T(x)[tgm.Tensor(mask)], x[mask])
    if mask.any():
        check_orders_1_and_2(lambda t: t[mask], T(x))


# ---- joining -------------------------------------------------------------------------

@EXAMPLES
@given(data=st.data())
def test_concatenate_along_an_axis(data):
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    parts = []
    for _ in range(data.draw(st.integers(1, 3))):
        part_shape = list(shape)
        part_shape[axis] = data.draw(st.integers(1, 3))
        parts.append(data.draw(arrays(tuple(part_shape))))
    assert_forward(tgm.concatenate([T(p) for p in parts], axis=axis), np.concatenate(parts, axis=axis))
    check_orders_1_and_2(lambda *ts: tgm.concatenate(ts, axis=axis), *[T(p) for p in parts])


@EXAMPLES
@given(data=st.data())
def test_stack_along_a_new_axis(data):
    shape = data.draw(shapes())
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    parts = [data.draw(arrays(shape)) for _ in range(data.draw(st.integers(1, 3)))]
    assert_forward(tgm.stack([T(p) for p in parts], axis=axis), np.stack(parts, axis=axis))
    check_orders_1_and_2(lambda *ts: tgm.stack(ts, axis=axis), *[T(p) for p in parts])


# ---- elementwise ---------------------------------------------------------------------

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


UNARY = {
    "exp": (lambda t: t.exp(), np.exp, grid),
    "log": (lambda t: t.log(), np.log, positive),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, positive),
    "abs": (lambda t: t.abs(), np.abs, grid),
    "builtin abs": (lambda t: abs(t), np.abs, grid),
    "tanh": (lambda t: t.tanh(), np.tanh, grid),
    "sigmoid": (lambda t: t.sigmoid(), _sigmoid, grid),
    "relu": (lambda t: t.relu(), lambda x: np.maximum(x, 0.0), grid),
    "functional.relu": (tgm.functional.relu, lambda x: np.maximum(x, 0.0), grid),
}


@pytest.mark.parametrize("name", list(UNARY))
@EXAMPLES
@given(data=st.data())
def test_elementwise_op(name, data):
    op, reference, elements = UNARY[name]
    x = data.draw(arrays(shapes(), elements))
    assert_forward(op(T(x)), reference(x))
    check_orders_1_and_2(op, T(x))


def test_relu_second_derivative_is_zero_away_from_the_kink():
    x = tgm.Tensor([-1.5, 0.5, 2.0], dtype="float64", requires_grad=True)
    (g,) = tgm.grad((x.relu() * x).sum(), [x], create_graph=True)  # d/dx x*relu(x) = 2 relu(x)
    (h,) = tgm.grad(g.sum(), [x])
    np.testing.assert_array_equal(g.numpy(), [0.0, 1.0, 4.0])
    np.testing.assert_array_equal(h.numpy(), [0.0, 2.0, 2.0])


@EXAMPLES
@given(data=st.data())
def test_where_with_three_way_broadcasting(data):
    cond_shape, shape_a, shape_b = data.draw(hnp.mutually_broadcastable_shapes(
        num_shapes=3, max_dims=3, max_side=3)).input_shapes
    cond = data.draw(hnp.arrays(bool, cond_shape))
    a = data.draw(arrays(shape_a))
    b = data.draw(arrays(shape_b))
    assert_forward(tgm.where(cond, T(a), T(b)), np.where(cond, a, b))
    check_orders_1_and_2(lambda u, v: tgm.where(cond, u, v), T(a), T(b))


@EXAMPLES
@given(data=st.data())
def test_clip(data):
    low, high = sorted(data.draw(st.lists(st.integers(-10, 10), min_size=2, max_size=2, unique=True)))
    low, high = low / 5, high / 5  # bounds on a 0.2 grid; inputs sit on the 0.05-offset grid
    x = data.draw(arrays(shapes()))
    assert_forward(T(x).clip(low, high), np.clip(x, low, high))
    assert_forward(T(x).clip(min=low), np.clip(x, low, None))
    assert_forward(T(x).clip(max=high), np.clip(x, None, high))
    check_orders_1_and_2(lambda t: t.clip(low, high), T(x))


@pytest.mark.parametrize("name", ["maximum", "minimum"])
@EXAMPLES
@given(data=st.data())
def test_pairwise_maximum_and_minimum_broadcast(name, data):
    shape_a, shape_b = data.draw(broadcastable_shapes())
    a = data.draw(arrays(shape_a))
    b = data.draw(arrays(shape_b)) + 0.025  # offset grid: a and b never tie
    op = getattr(tgm, name)
    assert_forward(op(T(a), T(b)), getattr(np, name)(a, b))
    check_orders_1_and_2(op, T(a), T(b))


def test_astype_gradient_comes_back_in_the_input_dtype():
    x = tgm.Tensor([1.0, -2.0], dtype="float64", requires_grad=True)
    y = (x.astype("float32") * 3.0).astype("float64")
    assert y.dtype == np.float64
    (g,) = tgm.grad((y * y).sum(), [x], create_graph=True)
    assert g.dtype == np.float64
    np.testing.assert_allclose(g.numpy(), 18.0 * x.numpy(), rtol=1e-6)
    (h,) = tgm.grad(g.sum(), [x])
    np.testing.assert_allclose(h.numpy(), [18.0, 18.0], rtol=1e-6)


def test_astype_matches_finite_differences():
    # eps=1e-6 is below float32 resolution; eps=1e-3 with atol=1e-3 absorbs the float32
    # rounding (~1e-7 relative) of the intermediate
    f = lambda t: (t.astype("float32").tanh() * 2.0).astype("float64")
    x = [tgm.Tensor([0.3, -1.2, 0.8], dtype="float64")]
    assert gradcheck(f, x, eps=1e-3, atol=1e-3)
    assert gradgradcheck(f, x, eps=1e-3, atol=1e-3)


# ---- float32 stays float32 -----------------------------------------------------------

FLOAT32_OPS = {
    "numpy float64 scalar": lambda t: t * np.float64(0.5) + np.float64(1.0),
    "reflected numpy scalars": lambda t: np.float64(2.0) / t - np.float64(1.0) ** t,
    "float64 numpy array": lambda t: t + np.array([1.0, 2.0]),
    "integer numpy array": lambda t: t * np.array([1, 2]),
    "clip with numpy bounds": lambda t: t.clip(np.float64(0.5), np.float64(1.5)),
    "maximum with a number": lambda t: tgm.maximum(t, 1.5),
    "where with a number": lambda t: tgm.where(t > 1.0, t, 0.0),
    "reductions": lambda t: t.mean() + t.max() + t.sum(),
}


@pytest.mark.parametrize("name", list(FLOAT32_OPS))
def test_float32_tensors_stay_float32_through_numbers_and_numpy_operands(name):
    x = tgm.Tensor([0.8, 2.0], requires_grad=True)
    y = FLOAT32_OPS[name](x)
    assert y.dtype == np.float32
    (g,) = tgm.grad(y.sum(), [x])
    assert g.dtype == np.float32
