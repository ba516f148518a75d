"""nn modules (parameters, functional call, state dicts) and the fused functional ops."""
from collections import OrderedDict

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import functional as F
from tinygrad_meta.nn import (MLP, Dropout, Flatten, Identity, Linear, Module, ModuleList, ReLU,
                               Sequential, Sigmoid, Tanh, batches_over_tasks)
from tinygrad_meta.testing import check_grads, gradcheck, gradgradcheck


def t64(array):
    return tgm.Tensor(np.asarray(array, dtype=np.float64), dtype="float64")


def test_mlp_parameters_are_ordered_layer_by_layer_weight_then_bias():
    model = MLP([1, 40, 40, 1], rng=np.random.default_rng(0))
    params = model.parameter_dict()
    assert isinstance(params, OrderedDict)
    assert list(params) == ["layers.0.weight", "layers.0.bias", "layers.1.weight",
                            "layers.1.bias", "layers.2.weight", "layers.2.bias"]
    # PyTorch's layout: weight (out_features, in_features)
    assert params["layers.0.weight"].shape == (40, 1) and params["layers.2.weight"].shape == (1, 40)
    assert params["layers.1.weight"].shape == (40, 40) and params["layers.2.bias"].shape == (1,)
    assert all(p.requires_grad and p.dtype == np.float32 for p in params.values())
    assert model.num_parameters() == 40 + 40 + 1600 + 40 + 40 + 1


def test_parameters_yields_tensors_and_named_parameters_pairs_as_in_pytorch():
    model = MLP([2, 3, 1], rng=np.random.default_rng(0))
    tensors = list(model.parameters())
    pairs = list(model.named_parameters())
    assert all(isinstance(p, tgm.Tensor) for p in tensors)
    assert [name for name, _ in pairs] == list(model.parameter_dict())
    assert all(p is q for p, (_, q) in zip(tensors, pairs))
    assert model.layers[0].weight is tensors[0]


def test_functional_call_runs_on_given_params_and_leaves_the_module_unchanged():
    model = MLP([2, 3, 1], dtype="float64", rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    other = OrderedDict((n, t64(rng.standard_normal(p.shape))) for n, p in model.named_parameters())
    x = rng.standard_normal((4, 2))
    w0, b0, w1, b1 = (other[n].numpy() for n in other)
    expected = np.maximum(x @ w0.T + b0, 0) @ w1.T + b1
    own = model.parameter_dict()
    np.testing.assert_allclose(tgm.func.functional_call(model, other, t64(x)).numpy(), expected,
                               rtol=1e-12)
    assert all(getattr(model.layers[i], k) is own[f"layers.{i}.{k}"]
               for i in (0, 1) for k in ("weight", "bias"))
    assert not np.allclose(model(t64(x)).numpy(), expected)


def test_functional_call_restores_the_parameters_when_forward_raises():
    model = MLP([2, 3, 1], dtype="float64", rng=np.random.default_rng(0))
    own = model.parameter_dict()
    other = {n: t64(np.zeros(p.shape)) for n, p in own.items()}
    with pytest.raises(ValueError):
        tgm.func.functional_call(model, other, t64(np.ones((4, 5))))  # wrong input width
    assert model.layers[0].weight is own["layers.0.weight"]


def test_functional_call_takes_a_partial_dict_and_rejects_unknown_names():
    model = MLP([2, 3, 1], dtype="float64", rng=np.random.default_rng(0))
    x = t64(np.ones((4, 2)))
    zero_head = {"layers.1.weight": t64(np.zeros((1, 3))), "layers.1.bias": t64(np.zeros(1))}
    assert not tgm.func.functional_call(model, zero_head, x).numpy().any()
    with pytest.raises(KeyError, match="layers.7.weight"):
        tgm.func.functional_call(model, {"layers.7.weight": t64(np.zeros(1))}, x)
    with pytest.raises(KeyError, match="strict"):
        tgm.func.functional_call(model, zero_head, x, strict=True)
    with pytest.raises(TypeError, match="layers.1.bias"):
        tgm.func.functional_call(model, {"layers.1.bias": np.zeros(1)}, x)


def test_functional_calls_nest():
    model = MLP([1, 2, 1], dtype="float64", rng=np.random.default_rng(0))
    x = t64(np.ones((1, 1)))
    outer = {n: t64(np.ones(p.shape)) for n, p in model.named_parameters()}
    inner = {"layers.1.bias": t64(np.full(1, 10.0))}

    class Probe(Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            inside = tgm.func.functional_call(self.net, inner, x)
            return inside, self.net(x)

    probe = Probe()
    inside, after = tgm.func.functional_call(probe, {f"net.{n}": v for n, v in outer.items()}, x)
    # ones everywhere: hidden relu(1 + 1) = 2 per unit, output 2 + 2 + bias
    assert inside.item() == 14.0 and after.item() == 5.0
    assert model(x).item() != 5.0


def test_the_old_params_keyword_is_an_error_that_names_functional_call():
    model = MLP([1, 2, 1])
    with pytest.raises(TypeError, match="functional_call"):
        model(tgm.Tensor(np.ones((1, 1))), params=model.parameter_dict())


def test_params_with_a_task_axis_equal_a_loop_over_tasks():
    model = MLP([3, 5, 2], dtype="float64", rng=np.random.default_rng(0))
    rng = np.random.default_rng(2)
    tasks = 4
    stacked = OrderedDict((n, t64(rng.standard_normal((tasks,) + p.shape)))
                          for n, p in model.named_parameters())
    x = rng.standard_normal((tasks, 6, 3))
    batched = tgm.func.functional_call(model, stacked, t64(x)).numpy()
    for t in range(tasks):
        single = OrderedDict((n, t64(p.numpy()[t])) for n, p in stacked.items())
        np.testing.assert_allclose(batched[t], tgm.func.functional_call(model, single, t64(x[t])).numpy(),
                                   rtol=1e-12)


def test_state_dict_round_trip():
    source = MLP([2, 4, 1], rng=np.random.default_rng(0))
    target = MLP([2, 4, 1], rng=np.random.default_rng(1))
    target.load_state_dict(source.state_dict())
    for name, p in target.named_parameters():
        np.testing.assert_array_equal(p.numpy(), source.parameter_dict()[name].numpy())
    # a state dict is a copy, not a view of the live parameters
    sd = source.state_dict()
    sd["layers.0.bias"][:] = 99.0
    assert not np.any(source.parameter_dict()["layers.0.bias"].numpy() == 99.0)
    # Tensors are accepted too, and the dtype is kept
    target.load_state_dict(OrderedDict((n, tgm.Tensor(v, dtype="float64")) for n, v in sd.items()))
    assert target.parameter_dict()["layers.0.bias"].dtype == np.float32


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
        np.testing.assert_array_equal(model.parameter_dict()[name].numpy(), value)


def test_state_saved_with_in_out_weights_fails_naming_the_parameter_and_the_transpose():
    model = MLP([1, 40, 40, 1], rng=np.random.default_rng(0))
    before = model.state_dict()
    old_layout = OrderedDict((n, v.T if v.ndim == 2 else v) for n, v in before.items())
    with pytest.raises(ValueError, match=r"'layers.0.weight' has shape \(1, 40\).*\(40, 1\).*transpose"):
        model.load_state_dict(old_layout)
    for name, value in before.items():  # and nothing was loaded, not even the square layer
        np.testing.assert_array_equal(model.parameter_dict()[name].numpy(), value)


def test_default_init_is_uniform_within_one_over_sqrt_fan_in():
    layer = Linear(16, 300, rng=np.random.default_rng(0))
    w = layer.weight.numpy()
    assert w.shape == (300, 16)
    assert np.abs(w).max() <= 0.25 and np.abs(w).max() > 0.24
    assert np.abs(layer.bias.numpy()).max() <= 0.25


def test_init_draws_as_the_in_out_layer_did_then_transposes():
    # same seed, same function as before the layout change: the (in, out) draw, transposed
    for init in ("default", "maml", "lecun"):
        layer = Linear(3, 5, init=init, dtype="float64", rng=np.random.default_rng(4))
        rng = np.random.default_rng(4)
        if init == "default":
            expected = rng.uniform(-1 / np.sqrt(3), 1 / np.sqrt(3), (3, 5))
        elif init == "lecun":
            expected = rng.standard_normal((3, 5)) / np.sqrt(3)
        else:
            expected = rng.standard_normal((3, 5))
            expected = np.where(np.abs(expected) > 2, np.nan, expected) * 0.01
        got = layer.weight.numpy()
        mask = ~np.isnan(expected)  # truncated-normal redraws replace the entries beyond 2 std
        np.testing.assert_array_equal(got.T[mask], expected[mask])


def test_lecun_init_is_normal_with_variance_one_over_fan_in_and_zero_bias():
    layer = Linear(400, 300, init="lecun", dtype="float64", rng=np.random.default_rng(0))
    assert abs(layer.weight.numpy().std() * np.sqrt(400) - 1.0) < 0.01
    assert not layer.bias.numpy().any()


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
    assert list(seq.parameter_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = np.ones((2, 2), dtype=np.float32)
    p = {n: v.numpy() for n, v in seq.named_parameters()}
    expected = np.maximum(x @ p["0.weight"].T + p["0.bias"], 0) @ p["2.weight"].T + p["2.bias"]
    np.testing.assert_allclose(seq(tgm.Tensor(x)).numpy(), expected, rtol=1e-6)


def test_activation_modules_match_the_functions_and_flatten_matches_reshape():
    x = t64(np.random.default_rng(0).standard_normal((2, 3, 4)))
    for module, function in ((ReLU(), F.relu), (Tanh(), F.tanh), (Sigmoid(), F.sigmoid)):
        np.testing.assert_array_equal(module(x).numpy(), function(x).numpy())
    assert Identity()(x) is x
    assert Flatten()(x).shape == (2, 12) and Flatten(0)(x).shape == (24,)
    np.testing.assert_array_equal(Flatten()(x).numpy(), x.numpy().reshape(2, 12))
    with pytest.raises(ValueError, match="Flatten"):
        Flatten(2, 1)(x)


def test_module_list_registers_its_items_by_index():
    layers = ModuleList([Linear(2, 2, rng=0), Linear(2, 1, rng=1)])
    layers.append(Linear(1, 1, rng=2))
    assert len(layers) == 3 and layers[2].in_features == 1
    assert list(layers.parameter_dict())[-2:] == ["2.weight", "2.bias"]
    with pytest.raises(TypeError, match="item 3"):
        layers.append(F.relu)


def test_train_and_eval_set_training_on_every_submodule():
    model = Sequential(Linear(2, 2, rng=0), Dropout(0.5, rng=0))
    assert model.training and model[1].training
    assert model.eval() is model
    assert not model.training and not model[0].training and not model[1].training
    model.train()
    assert all(m.training for m in model.modules())


def test_dropout_zeroes_with_probability_p_and_rescales_in_training_only():
    drop = Dropout(0.25, rng=np.random.default_rng(0))
    x = t64(np.ones((200, 100)))
    out = drop(x).numpy()
    kept = out != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(out[kept], 1.0 / 0.75)
    (g,) = tgm.grad((drop(x.requires_grad_()) * 1.0).sum(), [x])
    assert set(np.unique(g.numpy())) <= {0.0, 1.0 / 0.75}
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match="p must be"):
        Dropout(1.0)


def test_dropout_masks_resume_bit_exactly_from_a_saved_state_dict():
    def model_for(seed):
        return Sequential(Linear(3, 8, dtype="float64", rng=seed), ReLU(),
                          Dropout(0.5, rng=np.random.default_rng(seed)), Linear(8, 1, dtype="float64", rng=seed))

    def train(model, steps, opt_state=None):
        opt = tgm.optim.SGD(model.parameter_dict(), lr=0.1)
        x = t64(np.random.default_rng(9).standard_normal((16, 3)))
        losses = []
        for _ in range(steps):
            loss = (model(x) ** 2).mean()
            opt.step(OrderedDict(zip(model.parameter_dict(),
                                     tgm.grad(loss, list(model.parameters())))))
            losses.append(float(loss.item()))
        return losses

    uninterrupted = model_for(3)
    want = train(uninterrupted, 6)
    first = model_for(3)
    got = train(first, 3)
    saved = first.state_dict()
    assert "2.rng_state" in saved
    resumed = model_for(11)  # another seed: only the saved state makes it match
    resumed.load_state_dict(saved)
    got += train(resumed, 3)
    assert got == want
    bad = dict(saved, **{"2.rng_state": np.zeros(4, dtype=np.uint8)})
    with pytest.raises(ValueError, match="rng_state"):
        resumed.load_state_dict(bad)
    without = {k: v for k, v in saved.items() if k != "2.rng_state"}
    with pytest.raises(KeyError, match="2.rng_state"):
        resumed.load_state_dict(without)


def test_custom_module_registers_submodules_and_parameters():
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.scale = tgm.Tensor([2.0], requires_grad=True)
            self.body = Linear(2, 2, rng=np.random.default_rng(0))

        def forward(self, x):
            return self.body(x) * self.scale

    net = Net()
    assert list(net.parameter_dict()) == ["scale", "body.weight", "body.bias"]
    loss = net(tgm.Tensor(np.ones((1, 2)))).sum()
    grads = tgm.grad(loss, list(net.parameters()))
    assert [g.shape for g in grads] == [(1,), (2, 2), (2,)]
    net.scale = tgm.Tensor([1.0])  # a constant now: no longer a parameter
    assert list(net.parameter_dict()) == ["body.weight", "body.bias"]
    del net.body
    assert list(net.parameter_dict()) == []


def test_batches_over_tasks_is_true_only_for_the_known_modules():
    assert batches_over_tasks(MLP([1, 2, 1])) and batches_over_tasks(Linear(1, 1))
    assert batches_over_tasks(Sequential(Linear(1, 2), ReLU(), F.tanh, Linear(2, 1)))
    assert not batches_over_tasks(Sequential(Linear(1, 2), Flatten()))

    class Subclass(MLP):
        pass

    assert not batches_over_tasks(Subclass([1, 2, 1]))  # its forward might differ


def test_module_to_same_device_keeps_parameters():
    model = MLP([1, 2, 1], rng=np.random.default_rng(0))
    before = model.parameter_dict()
    assert model.to("cpu") is model
    assert all(before[n] is p for n, p in model.named_parameters())


# ---- fused ops ----------------------------------------------------------------------

SHAPES = [((4, 3), (2, 3), (2,)), ((2, 4, 3), (2, 2, 3), (2, 2)), ((2, 4, 3), (2, 3), (2,)),
          # one input feature and one output (the sinusoid net's first and last layers):
          # inner dimensions of 1 take the broadcast-multiply path
          ((2, 4, 1), (2, 3, 1), (2, 3)), ((2, 4, 3), (2, 1, 3), (2, 1))]


@pytest.mark.parametrize("op", [F.linear, F.linear_relu])
@pytest.mark.parametrize("shapes", SHAPES)
def test_fused_linear_ops_match_unfused_and_pass_gradgradcheck(op, shapes):
    rng = np.random.default_rng(0)
    x, w, b = (t64(rng.standard_normal(s)) for s in shapes)
    bias = b.numpy()[..., None, :] if w.ndim == 3 else b.numpy()
    reference = x.numpy() @ np.swapaxes(w.numpy(), -1, -2) + bias  # x @ weight.T + bias
    if op is F.linear_relu:
        reference = np.maximum(reference, 0)
    np.testing.assert_allclose(op(x, w, b).numpy(), reference, rtol=1e-12)
    assert gradcheck(op, [x, w, b])
    assert gradgradcheck(op, [x, w, b])


def test_linear_takes_a_square_weight_as_pytorch_does_not_transposed():
    w = np.array([[1.0, 2.0], [3.0, 4.0]])
    x = np.array([[1.0, 0.0]])
    # row i of the weight gives output i: PyTorch's x @ weight.T
    assert F.linear(t64(x), t64(w)).numpy().tolist() == [[1.0, 3.0]]


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
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 2\).*\(out, in\)"):
        F.linear(t64(np.ones((4, 3))), t64(np.ones((3, 2))))  # the old (in, out) layout
    with pytest.raises(ValueError, match="bias"):
        F.linear(t64(np.ones((4, 3))), t64(np.ones((2, 3))), t64(np.ones(5)))


def test_linear_on_weights_broadcast_over_tasks_equals_copied_weights():
    # fast weights before their first update are a broadcast view: a one-matmul path
    rng = np.random.default_rng(3)
    x = t64(rng.standard_normal((4, 5, 3)))
    w = tgm.Tensor(rng.standard_normal((2, 3)), dtype="float64", requires_grad=True)
    b = t64(rng.standard_normal((4, 2)))
    broadcast = w.broadcast_to((4, 2, 3))
    copied = tgm.stack([w] * 4)
    for stacked in (broadcast, copied):
        assert stacked.shape == (4, 2, 3)
    assert broadcast.data.strides[0] == 0
    out_b, out_c = F.linear_relu(x, broadcast, b), F.linear_relu(x, copied, b)
    np.testing.assert_allclose(out_b.numpy(), out_c.numpy(), rtol=1e-12)
    seed = t64(rng.standard_normal(out_b.shape))
    (g_b,) = tgm.grad(out_b, [w], grad_outputs=seed)
    (g_c,) = tgm.grad(out_c, [w], grad_outputs=seed)
    np.testing.assert_allclose(g_b.numpy(), g_c.numpy(), rtol=1e-12)
    assert gradgradcheck(lambda x, w: F.linear(x, w.broadcast_to((4, 2, 3)), b), [x, w])


def test_a_weight_broadcast_over_tasks_runs_as_one_large_matmul(monkeypatch):
    from tinygrad_meta import ops
    calls = []
    real = ops._cpu.BACKEND.matmul
    monkeypatch.setattr(ops._cpu.BACKEND, "matmul", lambda a, b: calls.append((a.shape, b.shape)) or real(a, b))
    w = tgm.Tensor(np.ones((2, 3)), dtype="float64")
    F.linear(t64(np.ones((4, 5, 3))), w.broadcast_to((4, 2, 3)))
    assert calls == [((20, 3), (3, 2))]


def test_resuming_a_run_saved_with_in_out_weights_is_an_error_naming_the_parameter(capsys, tmp_path):
    from tinygrad_meta.__main__ import main
    from tinygrad_meta.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
    out = tmp_path / "run"
    tiny = ["--hidden", "8,8", "--meta-batch", "2", "--shots", "4", "--no-progress", "--no-plot",
            "--eval-every", "0", "--eval-tasks", "0"]
    assert main(["train", "--iters", "2", "--out", str(out), *tiny]) == 0
    saved = load_checkpoint(out)
    # what a checkpoint written before the (out, in) layout holds: every weight transposed
    old = {n: (v.T.copy() if n.endswith("weight") else v) for n, v in saved.params.items()}
    save_checkpoint(out / CHECKPOINT_NAME, params=old, optimizer_state=saved.optimizer_state,
                    rng_state=saved.rng_state, iteration=saved.iteration, config=saved.config,
                    extra=saved.extra)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--iters", "4", *tiny]) == 2
    err = capsys.readouterr().err
    assert "'layers.0.weight' has shape (1, 8)" in err and "transpose" in err


def test_two_threads_running_one_module_on_their_own_parameters_each_get_their_own_answer():
    import sys
    import threading
    model = MLP([1, 8, 8, 1], dtype="float64", rng=np.random.default_rng(0))
    x = t64(np.linspace(-1, 1, 5).reshape(5, 1))
    params = [{n: t64(np.full(p.shape, value)) for n, p in model.named_parameters()}
              for value in (0.5, -0.25)]
    expected = [tgm.func.functional_call(model, p, x).numpy() for p in params]
    wrong = []

    def work(i):
        for _ in range(2000):  # without the module's lock, about 1 call in 200 goes wrong
            if not np.array_equal(tgm.func.functional_call(model, params[i], x).numpy(), expected[i]):
                wrong.append(i)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so the two calls interleave
    try:
        workers = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(switch)
    assert not wrong
    assert model.layers[0].weight is model.parameter_dict()["layers.0.weight"]
