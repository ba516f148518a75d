"""nn modules (parameters, functional call, state dicts) and the fused functional ops."""
from collections import OrderedDict

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import functional as F
from tinygrad_meta.nn import MLP, Linear, Module, Sequential
from tinygrad_meta.testing import check_grads, gradcheck, gradgradcheck


def t64(array):
    return tgm.Tensor(np.asarray(array, dtype=np.float64), dtype="float64")


def test_mlp_parameters_are_ordered_layer_by_layer_weight_then_bias():
    model = MLP([1, 40, 40, 1], rng=np.random.default_rng(0))
    params = model.parameters()
    assert isinstance(params, OrderedDict)
    assert list(params) == ["layers.0.weight", "layers.0.bias", "layers.1.weight",
                            "layers.1.bias", "layers.2.weight", "layers.2.bias"]
    assert params["layers.1.weight"].shape == (40, 40) and params["layers.2.bias"].shape == (1,)
    assert all(p.requires_grad and p.dtype == np.float32 for p in params.values())
    assert model.num_parameters() == 40 + 40 + 1600 + 40 + 40 + 1


def test_call_with_params_runs_on_them_instead_of_own():
    model = MLP([2, 3, 1], dtype="float64", rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    other = OrderedDict((n, t64(rng.standard_normal(p.shape))) for n, p in model.parameters().items())
    x = rng.standard_normal((4, 2))
    w0, b0, w1, b1 = (other[n].numpy() for n in other)
    expected = np.maximum(x @ w0 + b0, 0) @ w1 + b1
    np.testing.assert_allclose(model(t64(x), params=other).numpy(), expected, rtol=1e-12)
    assert not np.allclose(model(t64(x)).numpy(), expected)


def test_params_with_a_task_axis_equal_a_loop_over_tasks():
    model = MLP([3, 5, 2], dtype="float64", rng=np.random.default_rng(0))
    rng = np.random.default_rng(2)
    tasks = 4
    stacked = OrderedDict((n, t64(rng.standard_normal((tasks,) + p.shape)))
                          for n, p in model.parameters().items())
    x = rng.standard_normal((tasks, 6, 3))
    batched = model(t64(x), params=stacked).numpy()
    for t in range(tasks):
        single = OrderedDict((n, t64(p.numpy()[t])) for n, p in stacked.items())
        np.testing.assert_allclose(batched[t], model(t64(x[t]), params=single).numpy(), rtol=1e-12)


def test_state_dict_round_trip():
    source = MLP([2, 4, 1], rng=np.random.default_rng(0))
    target = MLP([2, 4, 1], rng=np.random.default_rng(1))
    target.load_state_dict(source.state_dict())
    for name, p in target.parameters().items():
        np.testing.assert_array_equal(p.numpy(), source.parameters()[name].numpy())
    # a state dict is a copy, not a view of the live parameters
    sd = source.state_dict()
    sd["layers.0.bias"][:] = 99.0
    assert not np.any(source.parameters()["layers.0.bias"].numpy() == 99.0)
    # Tensors are accepted too, and the dtype is kept
    target.load_state_dict(OrderedDict((n, tgm.Tensor(v, dtype="float64")) for n, v in sd.items()))
    assert target.parameters()["layers.0.bias"].dtype == np.float32


def test_load_state_dict_errors_name_the_problem_and_change_nothing():
    model = MLP([2, 4, 1], rng=np.random.default_rng(0))
    before = model.state_dict()
    sd = model.state_dict()
    del sd["layers.1.bias"]
    with pytest.raises(KeyError, match="layers.1.bias"):
        model.load_state_dict(sd)
    sd = dict(model.state_dict(), extra=np.zeros(1))
    with pytest.raises(KeyError, match="extra"):
        model.load_state_dict(sd)
    sd = model.state_dict()
    sd["layers.0.weight"] = np.zeros((5, 5))
    sd["layers.0.bias"] = np.full(4, 7.0)
    with pytest.raises(ValueError, match=r"layers.0.weight.*\(5, 5\)"):
        model.load_state_dict(sd)
    for name, value in before.items():
        np.testing.assert_array_equal(model.parameters()[name].numpy(), value)


def test_default_init_is_uniform_within_one_over_sqrt_fan_in():
    layer = Linear(16, 300, rng=np.random.default_rng(0))
    w = layer.weight.numpy()
    assert np.abs(w).max() <= 0.25 and np.abs(w).max() > 0.24
    assert np.abs(layer.bias.numpy()).max() <= 0.25


def test_maml_init_is_truncated_normal_with_zero_bias():
    layer = Linear(100, 100, init="maml", rng=np.random.default_rng(0))
    w = layer.weight.numpy()
    assert np.abs(w).max() <= 0.02
    # std of a normal truncated at 2 sigma is 0.8796 sigma
    assert abs(w.std() - 0.01 * 0.8796) < 0.0005
    assert not layer.bias.numpy().any()


def test_same_rng_seed_gives_same_model():
    a = MLP([1, 8, 1], rng=np.random.default_rng(7)).state_dict()
    b = MLP([1, 8, 1], rng=np.random.default_rng(7)).state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="init"):
        Linear(2, 2, init="xavier")
    with pytest.raises(ValueError, match="activation"):
        MLP([1, 2, 1], activation="gelu")
    with pytest.raises(ValueError, match="in_features"):
        Linear(0, 2)


def test_sequential_names_and_forward():
    seq = Sequential(Linear(2, 3, rng=np.random.default_rng(0)), F.relu,
                     Linear(3, 1, rng=np.random.default_rng(1)))
    assert list(seq.parameters()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = np.ones((2, 2), dtype=np.float32)
    p = {n: v.numpy() for n, v in seq.parameters().items()}
    expected = np.maximum(x @ p["0.weight"] + p["0.bias"], 0) @ p["2.weight"] + p["2.bias"]
    np.testing.assert_allclose(seq(tgm.Tensor(x)).numpy(), expected, rtol=1e-6)


def test_custom_module_registers_submodules_and_parameters():
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.scale = tgm.Tensor([2.0], requires_grad=True)
            self.body = Linear(2, 2, rng=np.random.default_rng(0))

        def forward(self, x, params):
            return self.body.forward(x, self._subparams(params, "body")) * params["scale"]

    net = Net()
    assert list(net.parameters()) == ["scale", "body.weight", "body.bias"]
    loss = net(tgm.Tensor(np.ones((1, 2)))).sum()
    grads = tgm.grad(loss, list(net.parameters().values()))
    assert [g.shape for g in grads] == [(1,), (2, 2), (2,)]


def test_module_to_same_device_keeps_parameters():
    model = MLP([1, 2, 1], rng=np.random.default_rng(0))
    before = model.parameters()
    assert model.to("cpu") is model
    assert all(before[n] is p for n, p in model.parameters().items())


# ---- fused ops ----------------------------------------------------------------------

SHAPES = [((4, 3), (3, 2), (2,)), ((2, 4, 3), (2, 3, 2), (2, 2)), ((2, 4, 3), (3, 2), (2,)),
          # one input feature and one output (the sinusoid net's first and last layers):
          # inner dimensions of 1 take the broadcast-multiply path
          ((2, 4, 1), (2, 1, 3), (2, 3)), ((2, 4, 3), (2, 3, 1), (2, 1))]


@pytest.mark.parametrize("op", [F.linear, F.linear_relu])
@pytest.mark.parametrize("shapes", SHAPES)
def test_fused_linear_ops_match_unfused_and_pass_gradgradcheck(op, shapes):
    rng = np.random.default_rng(0)
    x, w, b = (t64(rng.standard_normal(s)) for s in shapes)
    bias = b.numpy()[..., None, :] if w.ndim == 3 else b.numpy()
    reference = x.numpy() @ w.numpy() + bias
    if op is F.linear_relu:
        reference = np.maximum(reference, 0)
    np.testing.assert_allclose(op(x, w, b).numpy(), reference, rtol=1e-12)
    assert gradcheck(op, [x, w, b])
    assert gradgradcheck(op, [x, w, b])


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)])
def test_matmul_t_to_third_order(trans_a, trans_b):
    rng = np.random.default_rng(1)
    a = t64(rng.standard_normal((2, 3, 4) if trans_a else (2, 4, 3)))
    b = t64(rng.standard_normal((5, 3) if trans_b else (3, 5)))
    expected = np.swapaxes(a.numpy(), -1, -2) if trans_a else a.numpy()
    expected = expected @ (b.numpy().T if trans_b else b.numpy())
    np.testing.assert_allclose(F.matmul_t(a, b, trans_a, trans_b).numpy(), expected, rtol=1e-12)
    assert check_grads(lambda a, b: F.matmul_t(a, b, trans_a, trans_b), [a, b], order=3)


def test_fused_mse_loss_value_and_derivatives():
    rng = np.random.default_rng(2)
    p, y = t64(rng.standard_normal((3, 2))), t64(rng.standard_normal((3, 2)))
    np.testing.assert_allclose(F.mse_loss(p, y).item(), ((p.numpy() - y.numpy()) ** 2).mean())
    assert check_grads(F.mse_loss, [p, y], order=3)
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(3,\)"):
        F.mse_loss(p, t64(np.zeros(3)))


def test_linear_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(2, 2\)"):
        F.linear(t64(np.ones((4, 3))), t64(np.ones((2, 2))))
    with pytest.raises(ValueError, match="bias"):
        F.linear(t64(np.ones((4, 3))), t64(np.ones((3, 2))), t64(np.ones(5)))


def test_linear_on_weights_broadcast_over_tasks_equals_copied_weights():
    # fast weights before their first update are a broadcast view: a one-matmul path
    rng = np.random.default_rng(3)
    x = t64(rng.standard_normal((4, 5, 3)))
    w = tgm.Tensor(rng.standard_normal((3, 2)), dtype="float64", requires_grad=True)
    b = t64(rng.standard_normal((4, 2)))
    broadcast = w.broadcast_to((4, 3, 2))
    copied = tgm.stack([w] * 4)
    for stacked in (broadcast, copied):
        assert stacked.shape == (4, 3, 2)
    out_b, out_c = F.linear_relu(x, broadcast, b), F.linear_relu(x, copied, b)
    np.testing.assert_allclose(out_b.numpy(), out_c.numpy(), rtol=1e-12)
    seed = t64(rng.standard_normal(out_b.shape))
    (g_b,) = tgm.grad(out_b, [w], grad_outputs=seed)
    (g_c,) = tgm.grad(out_c, [w], grad_outputs=seed)
    np.testing.assert_allclose(g_b.numpy(), g_c.numpy(), rtol=1e-12)
    assert gradgradcheck(lambda x, w: F.linear(x, w.broadcast_to((4, 3, 2)), b), [x, w])
