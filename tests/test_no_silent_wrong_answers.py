"""Each case here once gave a wrong number or a confusing error without complaint (issue 9's
list, reproduced); now it is right, or it raises an error that names the problem."""
import math
import warnings

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import functional as F
from tinygrad_meta.optim import AdamHD, SGDHD
from tinygrad_meta.optim import SGD, Adam, adam_step, sgd_step


def leaf(values, dtype="float32"):
    return tgm.Tensor(np.asarray(values, dtype=np.float64), dtype=dtype, requires_grad=True)


# ---- optimizers check every gradient's name and shape ---------------------------------

@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1), lambda ps: Adam(ps, lr=0.1),
                                  lambda ps: SGDHD(ps, lr=0.1), lambda ps: AdamHD(ps, lr=0.1)],
                         ids=["SGD", "Adam", "SGDHD", "AdamHD"])
def test_an_optimizer_step_rejects_a_gradient_of_the_wrong_shape(make):
    w = leaf([1.0, 2.0, 3.0])
    opt = make([w])
    with pytest.raises(ValueError, match=r"gradient of '0' has shape \(2, 3\), the parameter has shape \(3,\)"):
        opt.step({"0": tgm.ones((2, 3))})
    assert w.shape == (3,) and w.numpy().tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1), lambda ps: Adam(ps, lr=0.1),
                                  lambda ps: SGDHD(ps, lr=0.1), lambda ps: AdamHD(ps, lr=0.1)],
                         ids=["SGD", "Adam", "SGDHD", "AdamHD"])
def test_an_optimizer_step_rejects_unexpected_and_swapped_gradients(make):
    a, b = leaf([1.0, 2.0]), leaf([[1.0, 2.0, 3.0]])
    opt = make({"a": a, "b": b})
    with pytest.raises(KeyError, match=r"unexpected \['c'\]"):
        opt.step({"a": tgm.ones(2), "b": tgm.ones((1, 3)), "c": tgm.ones(1)})
    # swapped: the same total size would once have been misassigned element by element
    with pytest.raises(ValueError, match="gradient of 'a' has shape"):
        opt.step({"a": tgm.ones((1, 3)), "b": tgm.ones(2)})


def test_an_optimizer_step_rejects_a_gradient_of_another_float_dtype():
    w = leaf([1.0, 2.0])
    with pytest.raises(TypeError, match="gradient of '0' is float64, the parameter float32"):
        SGD([w], lr=0.1).step({"0": tgm.ones(2, dtype="float64")})


@pytest.mark.parametrize("step", [lambda p, g: sgd_step(p, g, lr=0.1),
                                  lambda p, g: adam_step(p, g, lr=0.1)], ids=["sgd_step", "adam_step"])
def test_functional_steps_check_names_and_shapes(step):
    params = {"w": leaf([1.0, 2.0])}
    with pytest.raises(ValueError, match=r"gradient of 'w' has shape \(1, 2\)"):
        step(params, {"w": tgm.ones((1, 2))})
    with pytest.raises(KeyError, match=r"missing \['w'\]"):
        step(params, {"v": tgm.ones(2)})


# ---- integer tensors in floating ops compute in float32, like PyTorch ------------------

def test_sigmoid_of_an_integer_tensor_is_the_float_sigmoid():
    out = tgm.Tensor(np.array([1, 2, 3])).sigmoid()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), 1 / (1 + np.exp(-np.array([1.0, 2.0, 3.0]))), rtol=1e-6)


def test_mse_loss_of_an_integer_prediction_is_the_float_mean():
    # ((1-0)^2 + (2-0.5)^2 ... ) computed by hand: [1, 2] vs [0, 0]: (1 + 4) / 2 = 2.5
    loss = F.mse_loss(tgm.Tensor(np.array([1, 2])), tgm.Tensor([0.0, 0.0]))
    assert loss.dtype == np.float32 and loss.item() == 2.5


def test_clip_of_integers_with_fractional_bounds_keeps_the_fractions():
    out = tgm.Tensor(np.array([1, 2, 3])).clip(0.5, 1.5)
    assert out.numpy().tolist() == [1.0, 1.5, 1.5]


@pytest.mark.parametrize("op", [lambda t: t.exp(), lambda t: t.log(), lambda t: t.sqrt(),
                                lambda t: t.tanh(), lambda t: t / 2, lambda t: t.mean(),
                                lambda t: 1.5 * t, lambda t: t + 0.5, lambda t: F.softmax(t)],
                         ids=["exp", "log", "sqrt", "tanh", "div", "mean", "rmul", "add", "softmax"])
def test_integer_tensors_in_floating_ops_give_float32(op):
    out = op(tgm.Tensor(np.array([1, 2, 4])))
    assert out.dtype == np.float32
    assert np.allclose(out.numpy(), op(tgm.Tensor([1.0, 2.0, 4.0])).numpy())


def test_an_int_plus_float32_op_gives_a_float32_leaf_a_float32_grad():
    w = leaf([1.0, 2.0])
    (tgm.Tensor(np.array([3, 4])) * w).sum().backward()  # the int on the left
    assert w.grad.dtype == np.float32 and w.grad.numpy().tolist() == [3.0, 4.0]


# ---- None and other non-numbers are a TypeError naming the op --------------------------

@pytest.mark.parametrize("call,op", [
    (lambda t: t + None, "add"), (lambda t: None * t, "mul"),
    (lambda t: tgm.where(np.array([True]), t, None), "where"),
    (lambda t: tgm.maximum(t, None), "maximum"), (lambda t: t - "1", "sub"),
    (lambda t: t ** None, "pow"), (lambda t: t @ None, "matmul")])
def test_none_and_strings_as_operands_raise_a_type_error_naming_the_op(call, op):
    with pytest.raises(TypeError, match=rf"^{op}: cannot use"):
        call(tgm.Tensor([1.0]))


@pytest.mark.parametrize("call", [lambda x: tgm.grad(None, [x]), lambda x: tgm.grad(x.sum(), None),
                                  lambda x: tgm.grad(x.sum(), [None]), lambda x: tgm.grad([x.sum(), 3.0], [x])])
def test_grad_of_none_or_non_nodes_raises_a_type_error(call):
    with pytest.raises(TypeError, match="not a Tensor or a Value"):
        call(leaf([1.0]))


# ---- in-place changes between forward and backward -----------------------------------

def test_an_optimizer_step_between_forward_and_backward_is_an_error():
    w = leaf([1.0, 2.0])
    loss = (w * w).sum()
    SGD([w], lr=0.1).step({"0": tgm.ones(2)})
    with pytest.raises(RuntimeError, match=r"an input of 'mul' \(shape \(2,\)\) was modified in place"):
        loss.backward()


def test_assigning_data_between_forward_and_backward_is_an_error():
    w = leaf([1.0, 2.0])
    y = w.exp()
    loss = y.sum()
    y.data = np.zeros(2, dtype=np.float32)   # exp's rule uses its own output
    with pytest.raises(RuntimeError, match="was modified in place"):
        tgm.grad(loss, [w])


def test_a_forward_recomputed_after_the_change_differentiates_fine():
    w = leaf([1.0, 2.0])
    w.data = np.array([3.0, 4.0], dtype=np.float32)
    (g,) = tgm.grad((w * w).sum(), [w])
    assert g.numpy().tolist() == [6.0, 8.0]


# ---- requires_grad as an attribute, as in PyTorch --------------------------------------

def test_setting_requires_grad_true_makes_a_leaf():
    x = tgm.Tensor([1.0, 2.0])
    x.requires_grad = True
    (x * x).sum().backward()
    assert x.grad.numpy().tolist() == [2.0, 4.0]


def test_setting_requires_grad_on_an_integer_tensor_is_refused():
    with pytest.raises(TypeError, match="only floating point tensors can require grad"):
        tgm.Tensor(np.array([1, 2])).requires_grad = True


# ---- 0 ** y -------------------------------------------------------------------------------

def test_the_gradient_of_zero_to_the_y_with_respect_to_y_is_zero():
    y = leaf([2.0, 0.5])
    (gy,) = tgm.grad((tgm.Tensor([0.0, 0.0]) ** y).sum(), [y])
    assert gy.numpy().tolist() == [0.0, 0.0]
    (gy,) = tgm.grad((0.0 ** y).sum(), [y])
    assert gy.numpy().tolist() == [0.0, 0.0]


def test_value_zero_to_the_y_differentiates_to_zero():
    y = tgm.Value(2.0)
    (gy,) = tgm.grad(tgm.Value(0.0, requires_grad=False) ** y, [y])
    assert gy.data == 0.0


# ---- shapes and dtypes ----------------------------------------------------------------------

@pytest.mark.parametrize("axes", [(1, 2), (0,), (0, 0), (0, 1, 2)])
def test_permute_validates_its_axes(axes):
    with pytest.raises(ValueError, match="permute: .* is not a permutation"):
        tgm.Tensor(np.ones((2, 3))).permute(*axes)


@pytest.mark.parametrize("call", [
    lambda a, b: F.linear(a, b), lambda a, b: F.linear_relu(a, b),
    lambda a, b: F.matmul_t(a, b), lambda a, b: F.mse_loss(a, b[:2])])
def test_float32_and_float64_do_not_mix_in_fused_ops(call):
    a = tgm.Tensor(np.ones((2, 3)), dtype="float32")
    b = tgm.Tensor(np.ones((3, 3)), dtype="float64")
    with pytest.raises(TypeError, match="dtype mismatch"):
        call(a, b)


def test_an_mlp_refuses_an_input_of_another_float_dtype():
    model = tgm.nn.MLP([2, 3, 1], rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="dtype mismatch"):
        model(tgm.Tensor(np.ones((4, 2)), dtype="float64"))


# ---- Values compare by value ---------------------------------------------------------------

def test_values_compare_by_value_and_hash_by_identity():
    a, b = tgm.Value(1.0), tgm.Value(1.0)
    assert a == b and a == 1.0 and not (a != b) and a < 2 and b >= 1.0
    assert len({a, b}) == 2


# ---- numerics at the edges -------------------------------------------------------------------

def test_log_softmax_of_a_row_holding_plus_inf_is_zero_there_and_minus_inf_elsewhere():
    out = F.log_softmax(tgm.Tensor([[1.0, np.inf, 2.0], [0.0, 0.0, 0.0]])).numpy()
    assert out[0].tolist() == [-np.inf, 0.0, -np.inf]
    np.testing.assert_allclose(out[1], np.log([1 / 3] * 3), rtol=1e-6)
    two = F.log_softmax(tgm.Tensor([np.inf, np.inf, 0.0])).numpy()
    np.testing.assert_allclose(two, [-math.log(2), -math.log(2), -np.inf])


@pytest.mark.parametrize("reduce", ["max", "min"])
def test_a_nan_in_max_or_min_takes_only_its_own_slice_gradient(reduce):
    x = leaf([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]], dtype="float64")
    (g,) = tgm.grad(getattr(x, reduce)(axis=1).sum(), [x])
    expected = [[0, 1, 0], [0, 0, 1]] if reduce == "max" else [[0, 1, 0], [1, 0, 0]]
    assert g.numpy().tolist() == expected


def test_the_gradient_of_sqrt_at_zero_is_inf_without_a_numpy_warning():
    x = leaf([0.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (g,) = tgm.grad(x.sqrt().sum(), [x])
    assert g.numpy().tolist() == [np.inf, 0.25]


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax, F.logsumexp])
def test_softmax_over_an_empty_axis_names_the_op(fn):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: cannot normalise over an empty axis"):
        fn(tgm.Tensor(np.ones((3, 0))), axis=-1)
