"""tinygrad_meta.testing: the checks accept right derivatives, catch wrong ones at the
order where they go wrong, and say where; the hypothesis strategies generate what they
promise; the module imports without hypothesis."""
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import tinygrad_meta as tgm
from tinygrad_meta.ops import Op
from tinygrad_meta.tensor import record
from tinygrad_meta.testing import (GradcheckError, broadcastable_shapes, check_grads, gradcheck,
                                   gradgradcheck, shapes, tensors)


# ---- deliberately wrong ops, declared like the engine's own table entries ------------

def _rule(vjp):
    return lambda o, g, out, ins, params, needs: (vjp(o, g, ins[0]),)


SQUARE_WRONG = Op("square_wrong", lambda x: x ** 2, 1, _rule(lambda o, g, x: g * x * 3.0))
# right first derivative (2x) from the raw values, a constant to autograd: its second
# derivative comes out 0 instead of 2
SQUARE_RIGHT_ONCE = Op("square_right_once", lambda x: x ** 2, 1,
                       _rule(lambda o, g, x: g * o.raw(x) * 2.0))
# 3 * square_right_once(x): first and second derivatives right, third 0 instead of 6
CUBE_RIGHT_TWICE = Op("cube_right_twice", lambda x: x ** 3, 1,
                      _rule(lambda o, g, x: g * o.apply(SQUARE_RIGHT_ONCE, x) * 3.0))


def square_with_wrong_gradient(x):
    """x**2 whose backward claims 3x."""
    return record(SQUARE_WRONG, x)


def square_right_once(x):
    return record(SQUARE_RIGHT_ONCE, x)


def cube_right_twice(x):
    return record(CUBE_RIGHT_TWICE, x)


def vector(*values):
    return tgm.Tensor(list(values), dtype="float64")


# ---- right derivatives pass ------------------------------------------------------------

def test_gradcheck_accepts_a_correct_function_of_several_inputs():
    a = tgm.Tensor([[0.5, -1.0, 2.0]])
    b = tgm.Tensor([[1.5], [0.25], [-0.75]])
    assert gradcheck(lambda u, v: (u @ v).tanh() * u.sum(), [a, b]) is True


def test_gradgradcheck_accepts_a_correct_function():
    assert gradgradcheck(lambda t: (t * t.sigmoid()).sum(axis=0), [tgm.Tensor([[0.5, -1.0], [2.0, 0.1]])]) is True


def test_check_grads_accepts_order_four():
    assert check_grads(lambda t: (t.exp() * t.tanh()).sum(), [vector(0.3, -0.4)], order=4) is True


def test_inputs_reach_f_as_float64_copies():
    seen = []

    def f(t):
        seen.append(t.dtype)
        return t * 2.0

    x = tgm.Tensor([1.0, 2.0])  # float32
    assert gradcheck(f, [x])
    assert set(seen) == {np.dtype("float64")}
    assert x.dtype == np.float32 and not x.requires_grad  # the caller's tensor is untouched


def test_integer_inputs_are_passed_through_unchanged():
    labels = np.array([2, 0])
    logits = tgm.Tensor([[0.1, 0.5, -0.3], [1.0, -1.0, 0.2]])
    assert gradcheck(tgm.functional.cross_entropy, [logits, labels])
    assert gradgradcheck(tgm.functional.cross_entropy, [logits, labels])


def test_several_outputs_and_an_unused_input():
    f = lambda a, b: (a * 2.0, a.exp().sum())
    assert gradcheck(f, [vector(0.5, 1.0), vector(3.0)])
    assert gradgradcheck(f, [vector(0.5, 1.0), vector(3.0)])


def test_an_output_that_does_not_depend_on_the_inputs_has_a_zero_jacobian():
    assert gradcheck(lambda t: tgm.Tensor([1.0, 2.0], dtype="float64"), [vector(0.5)])


def test_value_inputs_are_checked_like_0d_tensors():
    f = lambda a, b: (a * b).tanh() + a ** 3 / b
    assert check_grads(f, [tgm.Value(0.7), tgm.Value(-1.3)], order=3)


def test_projection_mode_accepts_a_large_correct_function():
    x = tgm.Tensor(np.linspace(-1.0, 1.0, 200).reshape(10, 20))
    w = tgm.Tensor(np.linspace(0.5, -0.5, 60).reshape(20, 3))
    assert gradcheck(lambda a, b: (a @ b).tanh(), [x, w], mode="auto")  # 200 > full_limit
    assert gradgradcheck(lambda a, b: (a @ b).tanh(), [x, w], mode="projection")


def test_gradgradcheck_uses_given_grad_outputs():
    calls = []

    def f(t):
        calls.append(1)
        return t ** 3

    assert gradgradcheck(f, [vector(1.0, -0.5)], grad_outputs=[vector(0.0, 2.0)])
    assert calls


# ---- wrong derivatives fail, at the order where they are wrong --------------------------

def test_gradcheck_names_the_input_the_element_and_both_values():
    x = vector(1.0, 2.0)
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda a, t: square_with_wrong_gradient(t), [vector(0.0), x])
    message = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert "order 1" in message and "input 1" in message
    # the largest disagreement: d out[1] / d x[1] is 2*2 = 4, the rule claims 3*2 = 6
    assert re.search(r"d\(output 0\[1\]\)/d\(input 1\[1\]\)", message), message
    assert re.search(r"analytic 6\.0 vs numerical 4\.0000", message), message


def test_a_wrong_second_derivative_passes_gradcheck_and_fails_gradgradcheck():
    x = [vector(0.5, -1.5)]
    assert gradcheck(square_right_once, x)
    with pytest.raises(GradcheckError, match="order 2"):
        gradgradcheck(square_right_once, x)
    with pytest.raises(GradcheckError, match="order 2"):
        check_grads(square_right_once, x, order=2)


def test_a_wrong_third_derivative_is_caught_only_at_order_three():
    x = [vector(0.5, -1.5)]
    assert check_grads(cube_right_twice, x, order=2)
    with pytest.raises(GradcheckError, match="order 3"):
        check_grads(cube_right_twice, x, order=3)


def test_projection_mode_catches_a_wrong_gradient_and_names_the_input():
    x = tgm.Tensor(np.linspace(0.1, 2.0, 100))
    with pytest.raises(GradcheckError, match=r"random projection 0 .* input 0.*analytic .* vs numerical"):
        gradcheck(square_with_wrong_gradient, [x])


def test_a_gradient_of_the_wrong_shape_is_reported():
    bad_sum_op = Op("bad_sum", lambda x: x.sum(), 1,
                    _rule(lambda o, g, x: o.reshape(g, (1,)) * 1.0))

    def bad_sum(x):
        return record(bad_sum_op, x)

    with pytest.raises(GradcheckError, match=r"gradient for input 0 has shape \(1,\).*shape \(3,\)"):
        gradcheck(bad_sum, [vector(1.0, 2.0, 3.0)])


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="no floating-point input"):
        gradcheck(lambda t: t, [np.array([1, 2])])
    with pytest.raises(TypeError, match="output 0 is a float"):
        gradcheck(lambda t: 1.0, [vector(1.0)])
    with pytest.raises(ValueError, match="order must be a positive integer"):
        check_grads(lambda t: t, [vector(1.0)], order=0)
    with pytest.raises(ValueError, match="mode must be"):
        gradcheck(lambda t: t, [vector(1.0)], mode="sideways")


# ---- strategies ------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(pair=broadcastable_shapes())
def test_broadcastable_shapes_broadcast_with_numpy(pair):
    shape_a, shape_b = pair
    np.broadcast_shapes(shape_a, shape_b)


def test_shapes_include_0d_size_1_dims_and_broadcasting_of_unequal_rank():
    assert find(shapes(), lambda s: s == ()) == ()
    assert 1 in find(shapes(), lambda s: len(s) >= 2 and 1 in s)
    a, b = find(broadcastable_shapes(), lambda p: len(p[0]) != len(p[1]) and 1 in p[0] + p[1])
    assert len(a) != len(b)


@settings(max_examples=25, deadline=None)
@given(x=tensors(shape=(2, 3), dtype="float32", requires_grad=True))
def test_tensors_honours_shape_dtype_and_requires_grad(x):
    assert isinstance(x, tgm.Tensor)
    assert x.shape == (2, 3) and x.dtype == np.float32 and x.requires_grad
    assert np.isfinite(x.numpy()).all() and np.abs(x.numpy()).max() <= 2.0


@settings(max_examples=25, deadline=None)
@given(x=tensors(shape=shapes(min_dims=1, max_dims=2), elements=st.floats(3.0, 4.0)))
def test_tensors_takes_a_shape_strategy_and_an_elements_strategy(x):
    assert 1 <= x.ndim <= 2 and x.dtype == np.float64 and not x.requires_grad
    assert ((x.numpy() >= 3.0) & (x.numpy() <= 4.0)).all()


def _run_without_hypothesis(code):
    # None in sys.modules makes "import hypothesis" raise ImportError
    prelude = "import sys; sys.modules['hypothesis'] = None; "
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True)


def test_the_module_imports_and_gradchecks_without_hypothesis():
    result = _run_without_hypothesis(
        "import tinygrad_meta as tgm; from tinygrad_meta.testing import gradcheck; "
        "print(gradcheck(lambda t: t.exp(), [tgm.Tensor([1.0])]))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_strategies_without_hypothesis_name_the_test_extra():
    result = _run_without_hypothesis("from tinygrad_meta.testing import tensors; tensors()")
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "tinygrad-meta[test]" in result.stderr


def test_a_failure_from_a_float32_output_says_so():
    with pytest.raises(GradcheckError, match="output 0 is float32.*float64 throughout"):
        gradcheck(lambda t: (t * 1.001).astype("float32").exp(), [vector(0.5, 1.5)])
