"""Value, the scalar engine: every op's value and derivative, derivatives of any order
(third order against finite differences), and agreement with Tensor at orders 1-4."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_meta as tgm
from tinygrad_meta import Value
from tinygrad_meta.testing import check_grads


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# name: (function of a Value or a 0-d Tensor, value, first derivative); evaluated at x
OPS = {
    "add": (lambda x: x + 2.5, lambda x: x + 2.5, lambda x: 1.0),
    "radd": (lambda x: 2.5 + x, lambda x: 2.5 + x, lambda x: 1.0),
    "sub": (lambda x: x - 2.5, lambda x: x - 2.5, lambda x: 1.0),
    "rsub": (lambda x: 2.5 - x, lambda x: 2.5 - x, lambda x: -1.0),
    "mul": (lambda x: x * 2.5, lambda x: x * 2.5, lambda x: 2.5),
    "rmul": (lambda x: 2.5 * x, lambda x: 2.5 * x, lambda x: 2.5),
    "div": (lambda x: x / 2.5, lambda x: x / 2.5, lambda x: 1 / 2.5),
    "rdiv": (lambda x: 2.5 / x, lambda x: 2.5 / x, lambda x: -2.5 / x ** 2),
    "neg": (lambda x: -x, lambda x: -x, lambda x: -1.0),
    "pow 3": (lambda x: x ** 3, lambda x: x ** 3, lambda x: 3 * x ** 2),
    "pow -2": (lambda x: x ** -2, lambda x: x ** -2, lambda x: -2 * x ** -3),
    "rpow": (lambda x: 2.5 ** x, lambda x: 2.5 ** x, lambda x: 2.5 ** x * math.log(2.5)),
    "exp": (lambda x: x.exp(), math.exp, math.exp),
    "log": (lambda x: x.log(), math.log, lambda x: 1 / x),
    "tanh": (lambda x: x.tanh(), math.tanh, lambda x: 1 - math.tanh(x) ** 2),
    "sigmoid": (lambda x: x.sigmoid(), sigmoid, lambda x: sigmoid(x) * (1 - sigmoid(x))),
    "relu": (lambda x: x.relu(), lambda x: max(x, 0.0), lambda x: float(x > 0)),
}


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("x", [0.7, 1.9, -0.4])
def test_value_op_and_its_derivative(name, x):
    op, value, derivative = OPS[name]
    if name == "log":
        x = abs(x)  # log's domain
    v = Value(x)
    out = op(v)
    assert out.data == pytest.approx(value(x), rel=1e-14, abs=1e-15)
    out.backward()
    assert isinstance(v.grad, Value)
    assert v.grad.data == pytest.approx(derivative(x), rel=1e-14, abs=1e-15)


def test_value_exponent_differentiates_both_base_and_exponent():
    a, b = Value(1.5), Value(-0.5)
    da, db = tgm.grad(a ** b, [a, b])
    assert da.data == pytest.approx(-0.5 * 1.5 ** -1.5, rel=1e-14)
    assert db.data == pytest.approx(1.5 ** -0.5 * math.log(1.5), rel=1e-14)


def test_derivatives_of_any_order_are_values():
    x = Value(1.5)
    derivatives = []
    g = x ** 5
    for _ in range(5):
        (g,) = tgm.grad(g, [x], create_graph=True)
        assert isinstance(g, Value)
        derivatives.append(g.data)
    # d^k/dx^k x**5 = 5!/(5-k)! x**(5-k)
    expected = [math.factorial(5) // math.factorial(5 - k) * 1.5 ** (5 - k) for k in range(1, 6)]
    assert derivatives == pytest.approx(expected, rel=1e-12)


def test_relu_has_a_zero_second_derivative():
    x = Value(2.0)
    (g,) = tgm.grad(x.relu() * 3.0, [x], create_graph=True)
    assert g.data == 3.0
    # relu' is a step, constant away from 0: the first derivative does not depend on x
    assert not g.requires_grad


def test_grad_accumulates_for_a_value_used_many_times():
    x = Value(3.0)
    y = x * x + x * 2.0 + x
    y.backward()
    assert x.grad.data == 2 * 3.0 + 3.0


def test_backward_accumulates_across_calls():
    x = Value(3.0)
    (x * 2.0).backward()
    (x * x).backward()
    assert x.grad.data == 2.0 + 6.0


def test_a_constant_value_gets_no_gradient():
    x, c = Value(2.0), Value(5.0, requires_grad=False)
    (x * c).backward()
    assert x.grad.data == 5.0 and c.grad is None


SCALAR_FUNCTIONS = {
    "tanh of product": lambda a, b: (a * b).tanh() + a,
    "sigmoid ratio": lambda a, b: (a / (b * b + 1.0)).sigmoid() * b,
    "exp log": lambda a, b: (a * a + 1.0).log() * (b * 0.5).exp(),
    "powers": lambda a, b: a ** 3 - 2.0 * b ** -1 + (a * b) ** 2,
    "value exponent": lambda a, b: (a * a + 0.5) ** b,
    "rpow and rdiv": lambda a, b: 2.0 ** (a - b) + 3.0 / (b * b + 1.0),
}


@pytest.mark.parametrize("name", list(SCALAR_FUNCTIONS))
@settings(max_examples=10, deadline=None)
@given(a=st.floats(-1.5, 1.5), b=st.floats(0.3, 1.5))
def test_value_functions_match_finite_differences_to_third_order(name, a, b):
    assert check_grads(SCALAR_FUNCTIONS[name], [Value(a), Value(b)], order=3)


# ---- Value and Tensor agree -------------------------------------------------------------

AGREEMENT = {
    "polynomial": lambda x: x ** 4 - 3.0 * x ** 2 + x * 0.5,
    "tanh": lambda x: (x * 1.3).tanh() * x,
    "exp over square": lambda x: x.exp() / (x * x + 1.0),
    "sigmoid": lambda x: (x * 2.0 - 0.5).sigmoid(),
    "log": lambda x: (x * x + 0.25).log() * x,
    "rpow": lambda x: 1.5 ** (x * x),
    "relu": lambda x: (x * 2.0).relu() * x.tanh(),
}


def derivatives_up_to(f, x, order):
    out = [f(x)]
    g = out[0]
    for _ in range(order):
        (g,) = tgm.grad(g, [x], create_graph=True, allow_unused=True)
        if g is None:
            break
        out.append(g)
    return [float(node.item()) for node in out]


@pytest.mark.parametrize("name", list(AGREEMENT))
@pytest.mark.parametrize("x", [-0.8, 0.35, 1.2])
def test_value_and_tensor_agree_at_orders_1_to_4(name, x):
    f = AGREEMENT[name]
    scalar = derivatives_up_to(f, Value(x), 4)
    tensor = derivatives_up_to(f, tgm.Tensor(x, dtype="float64", requires_grad=True), 4)
    # relu's step derivative ends the chain early in both engines alike
    assert len(scalar) == len(tensor)
    np.testing.assert_allclose(scalar, tensor, rtol=1e-12, atol=1e-12)
    assert len(scalar) == 5 or name == "relu"


def test_value_errors_name_the_problem():
    with pytest.raises(ValueError, match="log: argument must be positive, got -1.0"):
        Value(-1.0).log()
    with pytest.raises(ValueError, match="base -2.0 must be >= 0"):
        Value(-2.0) ** Value(0.5)
    with pytest.raises(TypeError, match="cannot combine a Value with a Tensor"):
        Value(1.0) + tgm.Tensor([1.0, 2.0])
