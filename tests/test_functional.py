"""functional: softmax, log_softmax, logsumexp, cross_entropy, mse_loss. Forward equals
numpy, first and second derivatives match finite differences in float64, and the
softmax family stays exact and finite at magnitude 1e4.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_meta as tgm
from float64_checks import EXAMPLES, T, arrays, assert_forward, check_orders_1_and_2, shape_and_axis
from tinygrad_meta.testing import shapes


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@EXAMPLES
@given(data=st.data())
def test_softmax_family_along_an_axis(name, data):
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(arrays(shape))
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    expected = shifted / shifted.sum(axis=axis, keepdims=True)
    if name == "log_softmax":
        expected = np.log(expected)
    op = lambda t: getattr(tgm.functional, name)(t, axis=axis)
    assert_forward(op(T(x)), expected)
    check_orders_1_and_2(op, T(x))


@EXAMPLES
@given(data=st.data())
def test_logsumexp_over_axis_with_keepdims(data):
    shape, axis, keepdims = data.draw(shape_and_axis())
    x = data.draw(arrays(shape))
    op = lambda t: tgm.functional.logsumexp(t, axis=axis, keepdims=keepdims)
    assert_forward(op(T(x)), np.log(np.exp(x).sum(axis=axis, keepdims=keepdims)))
    check_orders_1_and_2(op, T(x))


def test_logsumexp_is_exact_and_finite_at_magnitude_1e4():
    x = tgm.Tensor([1e4, 1e4, -1e4], dtype="float64", requires_grad=True)
    out = tgm.functional.logsumexp(x)
    # exp(-2e4) underflows to 0 in float64, so the exact value is 1e4 + log 2
    assert out.item() == 1e4 + np.log(2.0)
    out.backward()
    # the rule exp(x - out) inherits out's rounding at magnitude 1e4 (ulp ~2e-12)
    np.testing.assert_allclose(x.grad.numpy(), [0.5, 0.5, 0.0], rtol=1e-11, atol=0)
    negative = tgm.functional.logsumexp(tgm.Tensor([-1e4, -1e4], dtype="float64"))
    assert negative.item() == -1e4 + np.log(2.0)


def test_softmax_family_is_finite_at_magnitude_1e4():
    x = tgm.Tensor([[1e4, 1e4 - 1.0, -1e4]], dtype="float64", requires_grad=True)
    logp = tgm.functional.log_softmax(x, axis=-1)
    expected = np.array([0.0, -1.0, -2e4]) - np.log1p(np.exp(-1.0))
    np.testing.assert_allclose(logp.numpy()[0], expected, rtol=1e-12)
    p = tgm.functional.softmax(x, axis=-1)
    np.testing.assert_allclose(p.numpy()[0], np.exp(expected), rtol=1e-12)
    (g,) = tgm.grad(logp[0, 0], [x])
    assert np.isfinite(g.numpy()).all()


@EXAMPLES
@given(data=st.data())
def test_cross_entropy_with_integer_labels(data):
    batch = data.draw(st.integers(1, 4))
    classes = data.draw(st.integers(1, 4))
    logits = data.draw(arrays((batch, classes)))
    labels = data.draw(hnp.arrays(np.int64, (batch,), elements=st.integers(0, classes - 1)))
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -logp[np.arange(batch), labels].mean()
    assert_forward(tgm.functional.cross_entropy(T(logits), labels), expected)
    check_orders_1_and_2(lambda t, y: tgm.functional.cross_entropy(t, y), T(logits), labels)


@EXAMPLES
@given(data=st.data())
def test_mse_loss(data):
    shape = data.draw(shapes())
    prediction = data.draw(arrays(shape))
    target = data.draw(arrays(shape))
    assert_forward(tgm.functional.mse_loss(T(prediction), T(target)), ((prediction - target) ** 2).mean())
    check_orders_1_and_2(tgm.functional.mse_loss, T(prediction), T(target))
