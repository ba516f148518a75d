"""The graph core: accumulation over shared subexpressions, grad() and backward()
semantics, create_graph, no_grad/enable_grad, detach, requires_grad_, and deep graphs."""
import sys

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta.autograd import toposort


def leaf(*values):
    return tgm.Tensor(list(values), dtype="float64", requires_grad=True)


# ---- accumulation ----------------------------------------------------------------------

def test_a_diamond_sums_both_paths():
    x = leaf(0.5, -1.0)
    a = x * 3.0          # two paths from a to the output ...
    b = a.exp()
    c = a * a
    y = (b + c).sum()    # ... meet again here
    (g,) = tgm.grad(y, [x])
    # dy/dx = 3 exp(3x) + 2 (3x) 3
    np.testing.assert_allclose(g.numpy(), 3 * np.exp(3 * x.numpy()) + 18 * x.numpy(), rtol=1e-12)


def test_a_tensor_used_many_times_accumulates_every_use():
    x = leaf(2.0, -0.5)
    y = (x * x * x * x + x + x).sum()   # x**4 + 2x
    (g,) = tgm.grad(y, [x])
    np.testing.assert_allclose(g.numpy(), 4 * x.numpy() ** 3 + 2, rtol=1e-12)


def test_the_same_tensor_on_both_sides_of_an_op():
    x = leaf(3.0)
    (g,) = tgm.grad((x * x).sum(), [x])
    assert g.numpy().tolist() == [6.0]
    (g,) = tgm.grad((x / x).sum(), [x])
    assert g.numpy().tolist() == [0.0]


def test_grad_with_respect_to_an_intermediate_tensor():
    x = leaf(1.0, 2.0)
    hidden = x * 2.0
    y = (hidden ** 2).sum()
    g_hidden, g_x = tgm.grad(y, [hidden, x])
    np.testing.assert_array_equal(g_hidden.numpy(), 2 * hidden.numpy())
    np.testing.assert_array_equal(g_x.numpy(), 8 * x.numpy())


def test_grad_of_several_outputs_sums_their_contributions():
    x = leaf(1.0, 2.0)
    (g,) = tgm.grad([(x * 2.0).sum(), (x * x).sum()], [x])
    np.testing.assert_array_equal(g.numpy(), 2.0 + 2 * x.numpy())


def test_grad_is_linear_in_grad_outputs():
    x = leaf(0.3, -0.7, 1.1)
    y = x.tanh() * x
    u = tgm.Tensor([1.0, -2.0, 0.5], dtype="float64")
    w = tgm.Tensor([0.25, 3.0, -1.0], dtype="float64")
    (gu,) = tgm.grad(y, [x], grad_outputs=[u])
    (gw,) = tgm.grad(y, [x], grad_outputs=[w])
    (g,) = tgm.grad(y, [x], grad_outputs=[u * 2.0 - w * 3.0])
    np.testing.assert_allclose(g.numpy(), 2 * gu.numpy() - 3 * gw.numpy(), rtol=1e-12, atol=1e-15)


def test_grad_does_not_touch_dot_grad():
    x = leaf(1.0)
    tgm.grad((x * 2.0).sum(), [x])
    assert x.grad is None


def test_backward_accumulates_into_leaf_grad_across_calls():
    x = leaf(1.0, 2.0)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 3.0 + 2 * x.numpy())


def test_backward_fills_every_leaf_and_no_intermediate():
    a, b = leaf(1.0), leaf(2.0)
    hidden = a * b
    (hidden * 2.0).sum().backward()
    assert a.grad.numpy().tolist() == [4.0] and b.grad.numpy().tolist() == [2.0]
    assert hidden.grad is None


def test_backward_with_an_explicit_gradient_for_a_non_scalar_output():
    x = leaf(1.0, 2.0)
    (x * x).backward(tgm.Tensor([1.0, 10.0], dtype="float64"))
    assert x.grad.numpy().tolist() == [2.0, 40.0]


def test_toposort_puts_parents_before_children():
    x = leaf(1.0)
    a = x * 2.0
    b = a + x
    c = b * a
    order = toposort([c])
    position = {id(node): i for i, node in enumerate(order)}
    for node in order:
        for parent in node._parents:
            if parent.requires_grad:
                assert position[id(parent)] < position[id(node)]
    assert order[-1] is c and len(order) == 4


# ---- create_graph ------------------------------------------------------------------------

def test_create_graph_false_records_nothing():
    x = leaf(1.0, 2.0)
    (g,) = tgm.grad((x ** 3).sum(), [x])
    assert not g.requires_grad and g._parents == () and g.is_leaf
    (x ** 3).sum().backward()
    assert not x.grad.requires_grad


def test_create_graph_true_records_a_graph_that_differentiates_again():
    x = leaf(1.0, 2.0)
    (g,) = tgm.grad((x ** 3).sum(), [x], create_graph=True)
    assert g.requires_grad and g._parents
    (h,) = tgm.grad(g.sum(), [x])
    np.testing.assert_array_equal(h.numpy(), 6 * x.numpy())


def test_backward_with_create_graph_gives_a_differentiable_dot_grad():
    x = leaf(2.0)
    (x ** 3).sum().backward(create_graph=True)
    assert x.grad.requires_grad
    (h,) = tgm.grad(x.grad.sum(), [x])
    assert h.numpy().tolist() == [12.0]


# ---- no_grad, enable_grad, detach, requires_grad_ -----------------------------------------

def test_no_grad_as_a_context_manager():
    x = leaf(1.0)
    with tgm.no_grad():
        y = x * 2.0
        assert not tgm.is_grad_enabled()
    assert tgm.is_grad_enabled()
    assert not y.requires_grad and y._parents == ()


def test_no_grad_as_a_decorator():
    @tgm.no_grad()
    def double(t):
        return t * 2.0

    y = double(leaf(1.0))
    assert not y.requires_grad and double.__name__ == "double"
    assert tgm.is_grad_enabled()


def test_no_grad_restores_the_mode_after_an_exception_and_when_nested():
    with pytest.raises(ZeroDivisionError):
        with tgm.no_grad():
            with tgm.no_grad():
                pass
            assert not tgm.is_grad_enabled()
            1 / 0
    assert tgm.is_grad_enabled()


def test_enable_grad_inside_no_grad_records_again():
    x = leaf(1.0)
    with tgm.no_grad():
        with tgm.enable_grad():
            y = x * 2.0
    assert y.requires_grad


def test_no_grad_also_stops_value_graphs():
    v = tgm.Value(2.0)
    with tgm.no_grad():
        w = v * v
    assert not w.requires_grad


def test_detach_shares_values_and_cuts_the_graph():
    x = leaf(1.0, 2.0)
    y = x * 2.0
    d = y.detach()
    assert not d.requires_grad and d.is_leaf
    np.testing.assert_array_equal(d.numpy(), y.numpy())
    assert np.shares_memory(d.data, y.data)
    (g,) = tgm.grad((y + d * d).sum(), [x])   # d is a constant: only y's path counts
    np.testing.assert_array_equal(g.numpy(), [2.0, 2.0])


def test_requires_grad_underscore_turns_a_tensor_into_a_leaf_and_returns_it():
    x = tgm.Tensor([1.0], dtype="float64")
    assert not x.requires_grad
    assert x.requires_grad_() is x and x.requires_grad
    (g,) = tgm.grad((x * 5.0).sum(), [x])
    assert g.numpy().tolist() == [5.0]
    x.requires_grad_(False)
    assert not (x * 5.0).requires_grad


def test_ops_on_tensors_without_requires_grad_record_nothing():
    y = tgm.Tensor([1.0]) * 2.0 + 1.0
    assert not y.requires_grad and y._parents == ()


# ---- deep graphs --------------------------------------------------------------------------

CHAIN = 200_000


def test_a_200000_op_tensor_chain_backprops_without_recursion():
    x = tgm.Tensor(1.0, dtype="float64", requires_grad=True)
    y = x
    for i in range(CHAIN):
        y = y + 1.0 if i % 2 else y * 1.0
    assert CHAIN > 100 * sys.getrecursionlimit()
    y.backward()
    assert x.grad.item() == 1.0
    del y   # freeing the chain must not overflow the C stack either


def test_a_200000_op_value_chain_backprops_without_recursion():
    x = tgm.Value(1.0)
    y = x
    for i in range(CHAIN):
        y = y + 1.0 if i % 2 else y * 1.0
    y.backward()
    assert x.grad.data == 1.0
    del y
