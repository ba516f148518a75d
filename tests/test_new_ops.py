"""The op set of issue 9: every new differentiable op matches numpy (math.erf for erf) in
its forward, and finite differences at first and second order in float64 (gradcheck +
gradgradcheck on whole Jacobians), over random shapes; the rest (rounding, argmax,
__array__) behave as specified; bad arguments get errors that name the op and the value.

Inputs avoid the points where an op is not differentiable: the grid k/10 + 0.05 (see
float64_checks) is never whole or half-whole (floor, round, mod's jumps), never 0 (the
kinks of leaky_relu and abs); continuous random values (rng) where sums must not tie.
"""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_meta as tgm
from float64_checks import (EXAMPLES, T, arrays, assert_forward, check_orders_1_and_2, grid,
                            shape_and_axis)
from tinygrad_meta.testing import broadcastable_shapes, shapes


def grid_range(low, high):
    """Grid values k/10 + 0.05 within [low, high]."""
    return st.integers(int(round(low * 10 - 0.5)), int(round(high * 10 - 0.5))).map(lambda k: k / 10 + 0.05)


def random_values(data, shape):
    """Continuous random values: no ties, no zeros (with probability 1)."""
    seed = data.draw(st.integers(0, 2 ** 32 - 1))
    return np.random.default_rng(seed).standard_normal(shape)


math_erf = np.vectorize(math.erf, otypes=[np.float64])


M = tgm.Tensor(np.ones((2, 3)))
V = tgm.Tensor(np.ones(4))


def check_errors(cases, name):
    call, error, message = cases[name]
    with pytest.raises(error, match=message):
        call()


def check_float32(f):
    x = tgm.Tensor([0.8, 2.0], requires_grad=True)
    y = f(x)
    assert y.dtype == np.float32
    (g,) = tgm.grad(y.sum(), [x])
    assert g.dtype == np.float32


# ---- elementwise -----------------------------------------------------------------------

def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


UNARY = {
    "sin": (np.sin, grid),
    "cos": (np.cos, grid),
    "tan": (np.tan, grid_range(-1.2, 1.2)),
    "arcsin": (np.arcsin, grid_range(-0.9, 0.9)),
    "arccos": (np.arccos, grid_range(-0.9, 0.9)),
    "arctan": (np.arctan, grid),
    "sinh": (np.sinh, grid),
    "cosh": (np.cosh, grid),
    "erf": (math_erf, grid),
}


@pytest.mark.parametrize("name", list(UNARY))
@EXAMPLES
@given(data=st.data())
def test_elementwise_op_method_and_module_function(name, data):
    reference, elements = UNARY[name]
    x = data.draw(arrays(shapes(), elements))
    assert_forward(getattr(T(x), name)(), reference(x))
    assert_forward(getattr(tgm, name)(T(x)), reference(x))
    check_orders_1_and_2(lambda t: getattr(t, name)(), T(x))


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu"])
def test_existing_elementwise_ops_have_module_functions(name):
    x = T([0.5, 1.5, 2.0])
    assert_forward(getattr(tgm, name)(x), getattr(x, name)().numpy())


def test_clip_has_a_module_function():
    assert_forward(tgm.clip(T([-2.0, 0.5, 3.0]), -1.0, 1.0), [-1.0, 0.5, 1.0])


def test_erf_is_within_1e15_of_math_erf_across_its_range():
    x = np.concatenate([np.linspace(-7, 7, 20001), np.geomspace(1e-300, 7, 2000),
                        -np.geomspace(1e-300, 7, 2000), [0.0, 1.0, -1.0, 6.0, -6.0]])
    np.testing.assert_allclose(tgm.erf(T(x)).numpy(), math_erf(x), rtol=0, atol=1e-15)
    # relative accuracy where erf is tiny
    small = np.geomspace(1e-300, 1e-3, 50)
    np.testing.assert_allclose(tgm.erf(T(small)).numpy(), math_erf(small), rtol=1e-15)


def test_erf_at_infinities_nan_and_in_float32():
    out = tgm.erf(T([np.inf, -np.inf, np.nan, -0.0])).numpy()
    assert out[0] == 1.0 and out[1] == -1.0 and np.isnan(out[2]) and np.signbit(out[3])
    x32 = tgm.erf(tgm.Tensor([0.3, -2.5]))
    assert x32.dtype == np.float32
    np.testing.assert_allclose(x32.numpy(), [math.erf(0.3), math.erf(-2.5)], rtol=1e-6)


# ---- rounding: zero gradient -----------------------------------------------------------

ROUNDING = {
    "sign": np.sign, "floor": np.floor, "ceil": np.ceil, "round": np.round,
}


@pytest.mark.parametrize("name", list(ROUNDING))
@EXAMPLES
@given(x=arrays(shapes()))
def test_rounding_ops_match_numpy_and_have_gradient_zero(name, x):
    assert_forward(getattr(T(x), name)(), ROUNDING[name](x))
    assert_forward(getattr(tgm, name)(T(x)), ROUNDING[name](x))
    leaf = tgm.Tensor(x, dtype="float64", requires_grad=True)
    (g,) = tgm.grad((getattr(leaf, name)() * leaf).sum(), [leaf])  # d/dx x f(x) = f(x)
    assert_forward(g, ROUNDING[name](x))
    check_orders_1_and_2(lambda t: getattr(t, name)(), T(x))


def test_rounding_gradient_is_zeros_not_none():
    x = tgm.Tensor([[0.3, -1.7]], dtype="float64", requires_grad=True)
    for name in ROUNDING:
        (g,) = tgm.grad(getattr(x, name)().sum(), [x])
        np.testing.assert_array_equal(g.numpy(), np.zeros((1, 2)))


def test_round_to_decimals_rounds_halves_to_even():
    assert_forward(T([0.125, 0.375, -2.5, 3.5]).round(2), np.round([0.125, 0.375, -2.5, 3.5], 2))
    assert_forward(T([0.5, 1.5, 2.5]).round(), [0.0, 2.0, 2.0])
    assert_forward(T([1234.5]).round(-2), [1200.0])


def test_rounding_integer_and_boolean_tensors_keeps_their_dtype():
    ints = tgm.Tensor(np.array([-3, 0, 4]))
    for name in ROUNDING:
        out = getattr(ints, name)()
        assert out.dtype == ints.dtype
        np.testing.assert_array_equal(out.numpy(), ROUNDING[name](ints.numpy()))
    flags = tgm.Tensor(np.array([True, False]))
    assert flags.sign().dtype == bool and flags.sign().tolist() == [True, False]


# ---- activations ------------------------------------------------------------------------

def _softplus(x, beta, threshold):
    return np.where(beta * x > threshold, x, np.log1p(np.exp(beta * x)) / beta)


ACTIVATIONS = {
    # name: (call with the parameters, numpy reference, parameter choices)
    "softplus": (lambda f, x, p: f(x, beta=p[0], threshold=p[1]), lambda x, p: _softplus(x, *p),
                 [(1.0, 20.0), (2.0, 1.0), (0.5, 0.4)]),  # threshold / beta is never on the grid
    "leaky_relu": (lambda f, x, p: f(x, p), lambda x, p: np.where(x > 0, x, p * x), [0.01, 0.2]),
    "elu": (lambda f, x, p: f(x, alpha=p), lambda x, p: np.where(x > 0, x, p * np.expm1(x)), [1.0, 0.5]),
    "gelu": (lambda f, x, p: f(x, approximate=p),
             lambda x, p: _gelu_tanh(x) if p == "tanh" else 0.5 * x * (1 + math_erf(x / math.sqrt(2))),
             ["none", "tanh"]),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@EXAMPLES
@given(data=st.data())
def test_activation_matches_its_definition_in_every_namespace(name, data):
    call, reference, choices = ACTIVATIONS[name]
    p = data.draw(st.sampled_from(choices))
    x = data.draw(arrays(shapes()))
    expected = reference(x, p)
    method = lambda t, *a, **k: getattr(t, name)(*a, **k)
    for f in (method, getattr(tgm, name), getattr(tgm.functional, name)):
        assert_forward(call(f, T(x), p), expected)
    check_orders_1_and_2(lambda t: call(method, t, p), T(x))


def test_activation_defaults_are_pytorchs():
    x = T([-2.0, 25.0, 1.0])
    assert_forward(x.leaky_relu(), [-0.02, 25.0, 1.0])
    assert_forward(x.elu(), [math.expm1(-2.0), 25.0, 1.0])
    assert_forward(x.softplus(), [math.log1p(math.exp(-2.0)), 25.0, math.log1p(math.e)])
    assert_forward(x.gelu(), [-2.0 * (1 + math.erf(-2 / math.sqrt(2))) / 2, 25.0,
                              (1 + math.erf(1 / math.sqrt(2))) / 2])


def test_softplus_and_elu_are_finite_for_large_inputs():
    x = tgm.Tensor([-800.0, 800.0], dtype="float64", requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("softplus", "elu", "gelu"):
            (g,) = tgm.grad(getattr(x, name)().sum(), [x])
            assert np.isfinite(g.numpy()).all()


# ---- binary elementwise -------------------------------------------------------------------

tenths = st.integers(-20, 20).filter(bool).map(lambda m: m / 10)  # divisors: a / b never whole


BINARY = {
    "arctan2": (tgm.arctan2, np.arctan2, grid),
    "logaddexp": (tgm.logaddexp, np.logaddexp, grid),
    "mod": (lambda a, b: a % b, np.mod, tenths),
    "remainder": (tgm.remainder, np.remainder, tenths),
}


@pytest.mark.parametrize("name", list(BINARY))
@EXAMPLES
@given(data=st.data())
def test_binary_op_broadcasts_and_matches_numpy(name, data):
    op, reference, divisors = BINARY[name]
    shape_a, shape_b = data.draw(broadcastable_shapes())
    a, b = data.draw(arrays(shape_a)), data.draw(arrays(shape_b, divisors))
    assert_forward(op(T(a), T(b)), reference(a, b))
    check_orders_1_and_2(op, T(a), T(b))


@EXAMPLES
@given(x=arrays(shapes()), divisor=tenths, divisors=arrays(shapes(), tenths))
def test_mod_with_a_python_number_on_either_side(x, divisor, divisors):
    assert_forward(T(x) % divisor, np.mod(x, divisor))
    check_orders_1_and_2(lambda t: t % divisor, T(x))
    assert_forward(1.35 % T(divisors), np.mod(1.35, divisors))  # 27/20 over tenths: never whole
    check_orders_1_and_2(lambda t: 1.35 % t, T(divisors))


def test_mod_takes_the_sign_of_the_divisor_and_its_gradients():
    a = tgm.Tensor([-3.5, 3.5], dtype="float64", requires_grad=True)
    b = tgm.Tensor([2.0, -2.0], dtype="float64", requires_grad=True)
    assert_forward(a % b, [0.5, -0.5])
    ga, gb = tgm.grad((a % b).sum(), [a, b])
    np.testing.assert_array_equal(ga.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(gb.numpy(), -np.floor(a.numpy() / b.numpy()))


def test_integer_mod_stays_integer_and_floating_binaries_promote_integers():
    ints = tgm.Tensor(np.array([7, -7]))
    assert (ints % 3).dtype == ints.dtype and (ints % 3).tolist() == [1, 2]
    assert tgm.arctan2(ints, ints).dtype == np.float32
    assert tgm.logaddexp(ints, tgm.Tensor([0.0, 1.0], dtype="float64")).dtype == np.float64


def test_np_asarray_gives_the_values_without_the_graph():
    x = tgm.Tensor([[1.0, 2.0]], dtype="float64", requires_grad=True)
    y = x * 2.0
    values = np.asarray(y)
    assert type(values) is np.ndarray and values.dtype == np.float64
    np.testing.assert_array_equal(values, [[2.0, 4.0]])
    assert np.asarray(y, dtype=np.float32).dtype == np.float32
    np.testing.assert_array_equal(np.array(tgm.Tensor([1, 2])), [1, 2])


def test_elementwise_ops_keep_float32_and_compute_integers_in_float32():
    check_float32(lambda t: t.sin() + t.cos() + t.arctan() + t.erf() + t.floor())
    check_float32(lambda t: t.softplus(2.0) + t.leaky_relu(0.1) + t.elu(0.5) + t.gelu("tanh"))
    check_float32(lambda t: tgm.arctan2(t, 1.0) + tgm.logaddexp(t, 0.5) + t % 0.7)
    ints = tgm.Tensor(np.array([1, 2]))
    for out in (ints.sin(), ints.erf(), ints.gelu(), tgm.logaddexp(ints, 1)):
        assert out.dtype == np.float32


def test_elementwise_float32_and_float64_do_not_mix():
    with pytest.raises(TypeError, match="arctan2: dtype mismatch float32 and float64"):
        tgm.arctan2(tgm.Tensor([1.0]), tgm.Tensor([1.0], dtype="float64"))


ELEMENTWISE_ERRORS = {
    "gelu approximate": (lambda: M.gelu("erf"), ValueError, r"gelu: approximate must be 'none' or 'tanh', got 'erf'"),
    "softplus beta": (lambda: M.softplus(beta=0), ValueError, r"softplus: beta must be nonzero"),
    "leaky_relu slope": (lambda: M.leaky_relu("0.1"), TypeError, r"leaky_relu: negative_slope must be a number"),
    "round decimals": (lambda: M.round(0.5), TypeError, r"round: decimals must be an int"),
    "mod shapes": (lambda: M % V, ValueError, r"mod: shapes \(2, 3\) and \(4,\) are not compatible"),
    "logaddexp shapes": (lambda: tgm.logaddexp(M, V), ValueError, r"logaddexp: shapes \(2, 3\) and \(4,\)"),
    "arctan2 operands": (lambda: tgm.arctan2(1.0, 2.0), TypeError, r"arctan2: a or b must be a Tensor"),
    "module function argument": (lambda: tgm.sin([1.0]), TypeError, r"sin: expected a Tensor, got list"),
    "functional argument": (lambda: tgm.functional.gelu(1.0), TypeError, r"gelu: expected a Tensor, got float"),
}


@pytest.mark.parametrize("name", list(ELEMENTWISE_ERRORS))
def test_bad_elementwise_arguments_name_the_op_and_the_value(name):
    check_errors(ELEMENTWISE_ERRORS, name)


def test_star_import_does_not_shadow_python_abs_and_round():
    namespace = {}
    exec("from tinygrad_meta import *", namespace)
    assert "sin" in namespace and "abs" not in namespace and "round" not in namespace
    assert tgm.abs(T([-1.0])).tolist() == [1.0] and tgm.round(T([1.4])).tolist() == [1.0]


# ---- prod, cumsum, var, std -------------------------------------------------------------

@EXAMPLES
@given(data=st.data())
def test_prod_with_zeros_in_the_input(data):
    shape, axis, keepdims = data.draw(shape_and_axis())
    x = data.draw(arrays(shape, st.one_of(grid, st.just(0.0))))
    op = lambda t: t.prod(axis=axis, keepdims=keepdims)
    assert_forward(op(T(x)), np.prod(x, axis=axis, keepdims=keepdims))
    assert_forward(tgm.prod(T(x), axis, keepdims), np.prod(x, axis=axis, keepdims=keepdims))
    check_orders_1_and_2(op, T(x))


def test_prod_gradient_with_one_zero_is_the_product_of_the_others():
    x = tgm.Tensor([2.0, 0.0, 3.0], dtype="float64", requires_grad=True)
    (g,) = tgm.grad(x.prod(), [x])
    np.testing.assert_array_equal(g.numpy(), [0.0, 6.0, 0.0])


def test_prod_with_two_zeros_has_gradient_zero_but_a_second_derivative():
    x = tgm.Tensor([0.0, 0.0, 3.0], dtype="float64", requires_grad=True)
    (g,) = tgm.grad(x.prod(), [x], create_graph=True)
    np.testing.assert_array_equal(g.numpy(), [0.0, 0.0, 0.0])
    (h0,) = tgm.grad(g[0], [x])  # d2/dx0 dx1 of x0 x1 x2 = x2
    np.testing.assert_array_equal(h0.numpy(), [0.0, 3.0, 0.0])


def test_prod_of_an_empty_axis_is_one_with_an_empty_gradient():
    x = tgm.Tensor(np.zeros((0, 2)), dtype="float64", requires_grad=True)
    assert_forward(x.prod(axis=0), [1.0, 1.0])
    (g,) = tgm.grad(x.prod(axis=0).sum(), [x])
    assert g.shape == (0, 2)


@st.composite
def shape_and_one_axis(draw, min_dims=1):
    shape = draw(shapes(min_dims=min_dims))
    return shape, draw(st.integers(-len(shape), len(shape) - 1))


@EXAMPLES
@given(data=st.data())
def test_cumsum_along_an_axis_or_flattened(data):
    shape, axis = data.draw(shape_and_one_axis())
    axis = data.draw(st.sampled_from([axis, None]))
    x = data.draw(arrays(shape))
    assert_forward(T(x).cumsum(axis), np.cumsum(x, axis=axis))
    assert_forward(tgm.cumsum(T(x), axis), np.cumsum(x, axis=axis))
    check_orders_1_and_2(lambda t: t.cumsum(axis), T(x))


@pytest.mark.parametrize("name", ["var", "std"])
@EXAMPLES
@given(data=st.data())
def test_var_and_std_with_ddof(name, data):
    shape, axis, keepdims = data.draw(shape_and_axis())
    ddof = data.draw(st.sampled_from([0, 1]))
    x = data.draw(arrays(shape, unique=True))
    count = x.size if axis is None else int(np.prod([shape[i] for i in np.atleast_1d(axis)]))
    if count <= ddof:
        return
    op = lambda t: getattr(t, name)(axis=axis, ddof=ddof, keepdims=keepdims)
    expected = getattr(np, name)(x, axis=axis, ddof=ddof, keepdims=keepdims)
    assert_forward(op(T(x)), expected)
    assert_forward(getattr(tgm, name)(T(x), axis=axis, ddof=ddof, keepdims=keepdims), expected)
    if count > 1:  # a slice of one value has variance 0, where std has no derivative
        check_orders_1_and_2(op, T(x))


def test_std_and_2_norm_of_a_constant_have_gradient_zero_without_warnings():
    x = tgm.Tensor(np.full((2, 3), 0.0), dtype="float64", requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in (lambda t: t.std(axis=1).sum(), lambda t: tgm.norm(t)):
            (g,) = tgm.grad(f(x), [x], create_graph=True)
            (h,) = tgm.grad(g.sum(), [x])
            np.testing.assert_array_equal(g.numpy(), np.zeros((2, 3)))
            np.testing.assert_array_equal(h.numpy(), np.zeros((2, 3)))


# ---- norm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ord", [None, 2, 1, np.inf, -np.inf])
@EXAMPLES
@given(data=st.data())
def test_vector_norms(ord, data):
    shape, axis = data.draw(shape_and_one_axis())
    keepdims = data.draw(st.booleans())
    x = random_values(data, shape)
    expected = np.linalg.norm(x, ord, axis=axis, keepdims=keepdims)
    assert_forward(tgm.norm(T(x), ord, axis=axis, keepdims=keepdims), expected)
    assert_forward(T(x).norm(ord, axis, keepdims), expected)
    check_orders_1_and_2(lambda t: tgm.norm(t, ord, axis=axis, keepdims=keepdims), T(x))


@pytest.mark.parametrize("ord", [None, "fro", 1, -1, np.inf, -np.inf])
@EXAMPLES
@given(data=st.data())
def test_matrix_norms(ord, data):
    shape = data.draw(shapes(min_dims=2))
    axes = tuple(data.draw(st.permutations(range(len(shape))))[:2])
    axis = data.draw(st.sampled_from([axes, None] if len(shape) == 2 else [axes]))
    keepdims = data.draw(st.booleans())
    x = random_values(data, shape)
    expected = np.linalg.norm(x, ord, axis=axis, keepdims=keepdims)
    assert_forward(tgm.norm(T(x), ord, axis=axis, keepdims=keepdims), expected)
    check_orders_1_and_2(lambda t: tgm.norm(t, ord, axis=axis, keepdims=keepdims), T(x))


@EXAMPLES
@given(x=arrays(shapes()))
def test_norm_of_all_entries_of_any_tensor(x):
    assert_forward(tgm.norm(T(x)), np.linalg.norm(x))
    check_orders_1_and_2(tgm.norm, T(x))


# ---- argmax, argmin ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["argmax", "argmin"])
@EXAMPLES
@given(data=st.data())
def test_argmax_and_argmin_are_integer_constants(name, data):
    shape, axis = data.draw(shape_and_one_axis()) if data.draw(st.booleans()) else \
        (data.draw(shapes()), None)
    keepdims = data.draw(st.booleans())
    x = data.draw(arrays(shape))
    leaf = tgm.Tensor(x, dtype="float64", requires_grad=True)
    out = getattr(leaf, name)(axis=axis, keepdims=keepdims)
    expected = getattr(np, name)(x, axis=axis, keepdims=keepdims)
    assert out.dtype.kind == "i" and not out.requires_grad
    np.testing.assert_array_equal(out.numpy(), expected)
    np.testing.assert_array_equal(getattr(tgm, name)(leaf, axis, keepdims=keepdims).numpy(), expected)


def test_reductions_keep_float32_and_compute_integers_in_float32():
    check_float32(lambda t: t.prod() + t.var() + t.std() + t.cumsum().sum() + tgm.norm(t, 1))
    ints = tgm.Tensor(np.array([1, 2]))
    for out in (ints.var(), ints.std(), tgm.norm(ints)):
        assert out.dtype == np.float32


REDUCTION_ERRORS = {
    "cumsum axis": (lambda: M.cumsum(2), ValueError, r"cumsum: axis 2 is out of range for a tensor with 2 dims"),
    "cumsum tuple axis": (lambda: M.cumsum((0, 1)), TypeError, r"cumsum: axis must be an int"),
    "prod axis": (lambda: M.prod(axis=-3), ValueError, r"prod: axis -3 is out of range"),
    "var ddof": (lambda: V.var(ddof=4), ValueError, r"var: 4 values per slice of shape \(4,\) .*ddof=4"),
    "argmax empty": (lambda: tgm.Tensor(np.ones((0, 2))).argmax(), ValueError, r"argmax: empty tensor of shape \(0, 2\)"),
    "argmin axis": (lambda: M.argmin(axis=5), ValueError, r"argmin: axis 5 is out of range"),
    "norm vector ord": (lambda: tgm.norm(V, 3), ValueError, r"norm: vector ord must be None, 1, 2, inf or -inf, got 3"),
    "norm matrix ord": (lambda: tgm.norm(M, 2), ValueError, r"norm: matrix ord .* got 2 .*singular-value"),
    "norm ndim": (lambda: tgm.norm(tgm.Tensor(np.ones((2, 2, 2))), 1), ValueError,
                  r"norm: ord=1 needs a 1-D or 2-D tensor or an axis, got shape \(2, 2, 2\)"),
    "norm axes": (lambda: tgm.norm(M, axis=(1, 1)), ValueError, r"norm: axis must be an int or two different axes"),
}


@pytest.mark.parametrize("name", list(REDUCTION_ERRORS))
def test_bad_reduction_arguments_name_the_op_and_the_value(name):
    check_errors(REDUCTION_ERRORS, name)


# ---- einsum, tensordot, outer -------------------------------------------------------------

@st.composite
def einsum_problems(draw):
    """Random explicit subscripts over i, j, k with one to three operands: repeated
    indices within an operand (diagonals), indices summed out of one operand only, and
    0-d operands all occur."""
    sizes = dict(zip("ijk", draw(st.lists(st.integers(1, 3), min_size=3, max_size=3))))
    letters = st.sampled_from("ijk")
    inputs = draw(st.lists(st.lists(letters, max_size=3).map("".join), min_size=1, max_size=3))
    used = sorted(set("".join(inputs)))
    output = "".join(draw(st.permutations(used))[:draw(st.integers(0, len(used)))])
    return f"{','.join(inputs)}->{output}", [tuple(sizes[c] for c in sub) for sub in inputs]


@EXAMPLES
@given(data=st.data())
def test_einsum_random_subscripts(data):
    spec, operand_shapes = data.draw(einsum_problems())
    xs = [data.draw(arrays(shape)) for shape in operand_shapes]
    assert_forward(tgm.einsum(spec, *[T(x) for x in xs]), np.einsum(spec, *xs))
    check_orders_1_and_2(lambda *ts: tgm.einsum(spec, *ts), *[T(x) for x in xs])


EINSUMS = {
    "trace": ("ii->", [(3, 3)]),
    "diagonal": ("ii->i", [(3, 3)]),
    "diagonal of a batch": ("bii->bi", [(2, 3, 3)]),
    "sum out a lone index": ("ij->i", [(2, 3)]),
    "transpose": ("ij->ji", [(2, 3)]),
    "matmul": ("ij,jk->ik", [(2, 3), (3, 4)]),
    "batch matmul": ("bij,bjk->bik", [(2, 2, 3), (2, 3, 2)]),
    "outer": ("i,j->ij", [(2,), (3,)]),
    "dot": ("i,i->", [(4,), (4,)]),
    "chain of three": ("ij,jk,kl->il", [(2, 3), (3, 2), (2, 3)]),
    "three sharing an index": ("i,i,i->i", [(3,), (3,), (3,)]),
    "bilinear form": ("i,ij,j->", [(2,), (2, 3), (3,)]),
    "implicit output": ("ij,jk", [(2, 3), (3, 2)]),
    "implicit transpose": ("ji", [(2, 3)]),
    "spaces": ("ij , jk -> ik", [(2, 2), (2, 2)]),
}


@pytest.mark.parametrize("name", list(EINSUMS))
def test_einsum_named_cases(name):
    spec, operand_shapes = EINSUMS[name]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(shape) for shape in operand_shapes]
    assert_forward(tgm.einsum(spec, *[T(x) for x in xs]), np.einsum(spec, *xs))
    check_orders_1_and_2(lambda *ts: tgm.einsum(spec, *ts), *[T(x) for x in xs])


def test_einsum_the_same_tensor_twice():
    x = tgm.Tensor([1.0, 2.0, 3.0], dtype="float64", requires_grad=True)
    (g,) = tgm.grad(tgm.einsum("i,i->", x, x), [x])
    np.testing.assert_array_equal(g.numpy(), [2.0, 4.0, 6.0])


TENSORDOTS = {
    "int 0": ((2, 3), (4,), 0),
    "int 1": ((2, 3), (3, 4), 1),
    "int 2": ((2, 3, 2), (3, 2), 2),
    "pairs": ((2, 3, 2), (3, 2, 2), ([1, 0], [0, 2])),
    "single axes": ((3, 2), (2, 3), (0, 1)),
}


@pytest.mark.parametrize("name", list(TENSORDOTS))
def test_tensordot(name):
    shape_a, shape_b, axes = TENSORDOTS[name]
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    assert_forward(tgm.tensordot(T(a), T(b), axes), np.tensordot(a, b, axes))
    check_orders_1_and_2(lambda u, v: tgm.tensordot(u, v, axes), T(a), T(b))


@EXAMPLES
@given(data=st.data())
def test_outer_flattens_its_operands(data):
    a, b = data.draw(arrays(shapes(max_dims=2))), data.draw(arrays(shapes(max_dims=2)))
    assert_forward(tgm.outer(T(a), T(b)), np.outer(a, b))
    check_orders_1_and_2(tgm.outer, T(a), T(b))


def test_einsum_keeps_float32_and_does_not_mix_it_with_float64():
    check_float32(lambda t: tgm.einsum("i,i->i", t, t) + tgm.tensordot(t, t, 0).sum(axis=0))
    with pytest.raises(TypeError, match="einsum: dtype mismatch"):
        tgm.einsum("i,i->", tgm.Tensor([1.0]), tgm.Tensor([1.0], dtype="float64"))


EINSUM_ERRORS = {
    "einsum operand count": (lambda: tgm.einsum("ij,jk->ik", M), ValueError,
                             r"einsum: 'ij,jk->ik' names 2 operands but 1 were given \(shapes \[\(2, 3\)\]\)"),
    "einsum ndim": (lambda: tgm.einsum("ijk->i", M), ValueError,
                    r"einsum: operand 0 has shape \(2, 3\) but 'ijk' names 3 axes"),
    "einsum sizes": (lambda: tgm.einsum("ij,jk->ik", M, M), ValueError,
                     r"einsum: index 'j' has size 3 in operand 0 \(shape \(2, 3\)\) but 2 in operand 1 \(shape \(2, 3\)\)"),
    "einsum diagonal sizes": (lambda: tgm.einsum("ii->i", M), ValueError,
                              r"einsum: index 'i' has size 2 in operand 0 \(shape \(2, 3\)\) but 3 in operand 0"),
    "einsum output": (lambda: tgm.einsum("ij->k", M), ValueError, r"einsum: output index 'k' is in no operand"),
    "einsum repeated output": (lambda: tgm.einsum("ij->ii", M), ValueError, r"einsum: output index 'i' repeats"),
    "einsum ellipsis": (lambda: tgm.einsum("...j->j", M), ValueError, r"einsum: ellipsis .* not supported"),
    "einsum characters": (lambda: tgm.einsum("i1->i", M), ValueError, r"einsum: 'i1->i' contains '1'"),
    "einsum subscripts": (lambda: tgm.einsum(M, M), TypeError, r"einsum: subscripts must be a string"),
    "tensordot axes": (lambda: tgm.tensordot(M, M, 1), ValueError,
                       r"tensordot: axes \(1,\) of shape \(2, 3\) and \(0,\) of shape \(2, 3\) do not pair up"),
    "tensordot count": (lambda: tgm.tensordot(M, V, 3), ValueError, r"tensordot: cannot contract 3 axes"),
    "tensordot pairs": (lambda: tgm.tensordot(M, M, (0,)), TypeError, r"tensordot: axes must be an int or a pair"),
}


@pytest.mark.parametrize("name", list(EINSUM_ERRORS))
def test_bad_einsum_arguments_name_the_shapes(name):
    check_errors(EINSUM_ERRORS, name)


# ---- matrices: diagonal, trace, triu, tril ------------------------------------------

@st.composite
def matrix_axes(draw):
    shape = draw(shapes(min_dims=2))
    axis1, axis2 = draw(st.permutations(range(len(shape))))[:2]
    return shape, axis1, axis2, draw(st.integers(-3, 3))


@pytest.mark.parametrize("name", ["diagonal", "trace"])
@EXAMPLES
@given(data=st.data())
def test_diagonal_and_trace_with_offsets_and_axes(name, data):
    shape, axis1, axis2, offset = data.draw(matrix_axes())
    x = data.draw(arrays(shape))
    op = lambda t: getattr(t, name)(offset, axis1, axis2)
    expected = getattr(np, name)(x, offset, axis1, axis2)
    assert_forward(op(T(x)), expected)
    assert_forward(getattr(tgm, name)(T(x), offset, axis1, axis2), expected)
    if expected.size:
        check_orders_1_and_2(op, T(x))


@pytest.mark.parametrize("name", ["triu", "tril"])
@EXAMPLES
@given(x=arrays(shapes(min_dims=2)), k=st.integers(-3, 3))
def test_triu_and_tril(name, x, k):
    assert_forward(getattr(T(x), name)(k), getattr(np, name)(x, k))
    assert_forward(getattr(tgm, name)(T(x), k=k), getattr(np, name)(x, k))
    check_orders_1_and_2(lambda t: getattr(t, name)(k), T(x))


# ---- shape ---------------------------------------------------------------------------------

@EXAMPLES
@given(data=st.data())
def test_squeeze_all_or_some_size_1_axes(data):
    shape = data.draw(shapes(min_side=1, max_side=2))
    ones = [i for i, n in enumerate(shape) if n == 1]
    axis = data.draw(st.sampled_from([None] + ([tuple(ones)] if ones else []) +
                                     [ax - len(shape) for ax in ones]))
    x = data.draw(arrays(shape))
    assert_forward(T(x).squeeze(axis), np.squeeze(x, axis))
    assert_forward(tgm.squeeze(T(x), axis), np.squeeze(x, axis))
    check_orders_1_and_2(lambda t: t.squeeze(axis), T(x))


@EXAMPLES
@given(data=st.data())
def test_expand_dims_and_unsqueeze(data):
    shape = data.draw(shapes())
    dim = data.draw(st.integers(-len(shape) - 1, len(shape)))
    count = data.draw(st.integers(1, 2))
    axes = tuple(data.draw(st.lists(st.integers(0, len(shape) + count - 1), min_size=count,
                                    max_size=count, unique=True)))
    x = data.draw(arrays(shape))
    assert_forward(T(x).unsqueeze(dim), np.expand_dims(x, dim))
    assert_forward(tgm.unsqueeze(T(x), dim), np.expand_dims(x, dim))
    assert_forward(T(x).expand_dims(axes), np.expand_dims(x, axes))
    assert_forward(tgm.expand_dims(T(x), axes), np.expand_dims(x, axes))
    check_orders_1_and_2(lambda t: t.expand_dims(axes), T(x))


@EXAMPLES
@given(data=st.data())
def test_flatten_and_ravel(data):
    shape = data.draw(shapes(min_dims=1))
    start, end = sorted(data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=2, max_size=2)))
    x = data.draw(arrays(shape))
    expected = x.reshape(shape[:start] + (-1,) + shape[end + 1:])
    assert_forward(T(x).flatten(start, end), expected)
    assert_forward(tgm.flatten(T(x), start, end), expected)
    assert_forward(T(x).flatten(), x.flatten())
    assert_forward(tgm.ravel(T(x)), np.ravel(x))
    check_orders_1_and_2(lambda t: t.flatten(start, end), T(x))


def test_flatten_and_ravel_of_a_0d_tensor_give_one_entry():
    assert T(2.0).flatten().shape == (1,) and T(2.0).ravel().shape == (1,)


@EXAMPLES
@given(data=st.data())
def test_repeat_with_a_count_or_one_count_per_entry(data):
    shape, axis = data.draw(shape_and_one_axis())
    per_entry = data.draw(st.lists(st.integers(0, 3), min_size=shape[axis], max_size=shape[axis]))
    repeats = data.draw(st.sampled_from([2, per_entry]))
    axis = data.draw(st.sampled_from([axis, None])) if repeats == 2 else axis
    x = data.draw(arrays(shape))
    assert_forward(T(x).repeat(repeats, axis), np.repeat(x, repeats, axis))
    assert_forward(tgm.repeat(T(x), repeats, axis=axis), np.repeat(x, repeats, axis))
    check_orders_1_and_2(lambda t: t.repeat(repeats, axis), T(x))


@EXAMPLES
@given(x=arrays(shapes(max_dims=2)), reps=st.lists(st.integers(1, 2), max_size=3))
def test_tile_with_fewer_or_more_reps_than_axes(x, reps):
    reps = tuple(reps) if reps else 2
    assert_forward(T(x).tile(reps), np.tile(x, reps))
    assert_forward(tgm.tile(T(x), reps), np.tile(x, reps))
    check_orders_1_and_2(lambda t: t.tile(reps), T(x))


@st.composite
def pad_widths(draw, ndim):
    side = st.integers(0, 2)
    return draw(st.one_of(
        side,
        st.tuples(side, side),
        st.tuples(*[st.tuples(side, side)] * ndim)))


@EXAMPLES
@given(data=st.data())
def test_pad_with_a_constant(data):
    x = data.draw(arrays(shapes(min_dims=1)))
    widths = data.draw(pad_widths(x.ndim))
    value = data.draw(grid)
    expected = np.pad(x, widths, constant_values=value)
    assert_forward(tgm.pad(T(x), widths, constant_values=value), expected)
    check_orders_1_and_2(lambda t: tgm.pad(t, widths, constant_values=value), T(x))


@EXAMPLES
@given(data=st.data())
def test_flip(data):
    shape, axis, _ = data.draw(shape_and_axis())
    x = data.draw(arrays(shape))
    assert_forward(T(x).flip(axis), np.flip(x, axis))
    assert_forward(tgm.flip(T(x), axis), np.flip(x, axis))
    check_orders_1_and_2(lambda t: t.flip(axis), T(x))


@EXAMPLES
@given(data=st.data())
def test_roll(data):
    shape = data.draw(shapes())
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), max_size=2)) if shape else []
    shift = data.draw(st.integers(-4, 4))
    axis, shift = ((None, shift) if not axes else (axes[0], shift) if len(axes) == 1 else
                   (tuple(axes), tuple(data.draw(st.lists(st.integers(-4, 4), min_size=2, max_size=2)))))
    x = data.draw(arrays(shape))
    assert_forward(T(x).roll(shift, axis), np.roll(x, shift, axis))
    assert_forward(tgm.roll(T(x), shift, axis), np.roll(x, shift, axis))
    check_orders_1_and_2(lambda t: t.roll(shift, axis), T(x))


@EXAMPLES
@given(data=st.data())
def test_split_into_sections_or_at_indices(data):
    shape, axis = data.draw(shape_and_one_axis())
    n = shape[axis]
    how = data.draw(st.one_of(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]),
                              st.lists(st.integers(-n, n + 1), max_size=3).map(sorted)))
    x = data.draw(arrays(shape))
    pieces = T(x).split(how, axis)
    expected = np.split(x, how, axis)
    assert len(pieces) == len(expected)
    for piece, reference in zip(pieces, expected):
        assert_forward(piece, reference)
    assert len(tgm.split(T(x), how, axis=axis)) == len(expected)
    check_orders_1_and_2(lambda t: tuple(p * p for p in t.split(how, axis)), T(x))


@pytest.mark.parametrize("n, chunks, sizes", [
    (6, 3, [2, 2, 2]), (5, 3, [2, 2, 1]), (6, 4, [2, 2, 2]), (2, 5, [1, 1]), (1, 1, [1])])
def test_chunk_sizes_as_pytorch(n, chunks, sizes):
    x = T(np.arange(2.0 * n).reshape(2, n))
    pieces = x.chunk(chunks, axis=1)
    assert [p.shape[1] for p in pieces] == sizes
    assert_forward(tgm.concatenate(tgm.chunk(x, chunks, axis=-1), axis=1), x.numpy())
    check_orders_1_and_2(lambda t: tuple(p * p for p in t.chunk(chunks, axis=1)), x)


def test_layout_ops_keep_float32():
    check_float32(lambda t: tgm.pad(t, 1, constant_values=0.5)[1:-1].flip(0).roll(1).tile(2).repeat(2))
    check_float32(lambda t: t.reshape(2, 1).tile((1, 2)).triu().tril().diagonal() + t.unsqueeze(0).flatten())


LAYOUT_ERRORS = {
    "split sections": (lambda: M.split(2, axis=1), ValueError,
                       r"split: axis 1 of shape \(2, 3\) has 3 entries, which do not split into 2 equal sections"),
    "split zero sections": (lambda: M.split(0), ValueError, r"split: the number of sections must be positive"),
    "chunk count": (lambda: M.chunk(0), ValueError, r"chunk: chunks must be positive, got 0"),
    "pad negative": (lambda: tgm.pad(M, ((1, -1), (0, 0))), ValueError, r"pad: pad widths must be >= 0"),
    "pad shape": (lambda: tgm.pad(M, ((1, 1), (0, 0), (2, 2))), ValueError,
                  r"pad: pad_width .* does not fit shape \(2, 3\)"),
    "pad mode": (lambda: tgm.pad(M, 1, mode="reflect"), ValueError, r"pad: only mode='constant' is supported, got 'reflect'"),
    "pad widths type": (lambda: tgm.pad(M, 1.5), TypeError, r"pad: pad_width must be integers"),
    "squeeze": (lambda: M.squeeze(1), ValueError, r"squeeze: axis 1 of shape \(2, 3\) has size 3, not 1"),
    "expand_dims": (lambda: M.expand_dims(4), ValueError, r"expand_dims: axis 4 is out of range"),
    "unsqueeze type": (lambda: M.unsqueeze(1.0), TypeError, r"unsqueeze: dim must be an int"),
    "flatten order": (lambda: M.flatten(1, 0), ValueError, r"flatten: start_dim 1 comes after end_dim 0"),
    "repeat negative": (lambda: M.repeat(-1, axis=0), ValueError, r"repeat: repeats must be >= 0"),
    "repeat counts": (lambda: M.repeat([1, 2], axis=1), ValueError,
                      r"repeat: 2 counts for the 3 entries of axis 1 of shape \(2, 3\)"),
    "tile negative": (lambda: M.tile((1, -2)), ValueError, r"tile: reps must be >= 0"),
    "roll lengths": (lambda: M.roll((1, 2), axis=0), ValueError, r"roll: 2 shifts for 1 axes"),
    "roll axis": (lambda: M.roll(1, axis=2), ValueError, r"roll: axis 2 is out of range"),
    "flip axis": (lambda: M.flip(3), ValueError, r"flip: axis 3 is out of range"),
    "diagonal 1-d": (lambda: V.diagonal(), ValueError, r"diagonal: needs a tensor with at least 2 dims, got shape \(4,\)"),
    "diagonal axes": (lambda: M.diagonal(0, 1, -1), ValueError, r"diagonal: axis1 and axis2 are both axis 1"),
    "triu 1-d": (lambda: V.triu(), ValueError, r"triu: needs a tensor with at least 2 dims"),
    "tril k": (lambda: M.tril(0.5), TypeError, r"tril: k must be an int, got 0.5"),
}


@pytest.mark.parametrize("name", list(LAYOUT_ERRORS))
def test_bad_layout_arguments_name_the_op_and_the_value(name):
    check_errors(LAYOUT_ERRORS, name)
