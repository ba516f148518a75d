"""A PyTorch-style module written here, which no library code knows, under every
meta-learner and the unrolled hypergradient: the answers are each task's own, vectorised
equals looped, and meta-training lowers the loss.

The module multiplies by a per-feature parameter of shape (hidden,). Broadcast to a task
axis it becomes (T, hidden), which against activations (T, K, hidden) lines up with the
shot axis when T == K: the silent wrong meta-gradient of issue 10. So T == K == 5 here."""
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinygrad_meta as tgm
from tinygrad_meta.functional import mse_loss
from tinygrad_meta.meta import MAML, MetaSGD, Reptile
from tinygrad_meta.meta.hyperopt import (evaluate_hyperparameters, make_hyperparameters,
                                         unrolled_hypergradient)

TASKS = SHOTS = 5


class ScaledNet(tgm.nn.Module):
    """body -> tanh -> times a learned per-feature scale -> head."""

    def __init__(self, hidden=4, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.body = tgm.nn.Linear(1, hidden, dtype="float64", rng=rng)
        self.scale = tgm.Tensor(rng.uniform(0.5, 1.5, hidden), dtype="float64", requires_grad=True)
        self.head = tgm.nn.Linear(hidden, 1, dtype="float64", rng=rng)

    def forward(self, x):
        return self.head(self.body(x).tanh() * self.scale)


def batch(seed=0, tasks=TASKS, shots=SHOTS):
    rng = np.random.default_rng(seed)
    amplitude = rng.uniform(0.5, 2.0, (tasks, 1, 1))
    phase = rng.uniform(0, np.pi, (tasks, 1, 1))
    sx = rng.uniform(-3, 3, (tasks, shots, 1))
    qx = rng.uniform(-3, 3, (tasks, shots, 1))
    return sx, amplitude * np.sin(sx - phase), qx, amplitude * np.sin(qx - phase)


def manual_meta_loss(model, data, inner_lr, steps, first_order, adapt=None):
    """Each task on its own, written out with functional_call: the reference answer."""
    sx, sy, qx, qy = (tgm.Tensor(a, dtype="float64") for a in data)
    params = model.parameter_dict()
    adapt = list(params) if adapt is None else adapt
    total = 0.0
    for t in range(sx.shape[0]):
        fast = OrderedDict(params)
        for _ in range(steps):
            loss = mse_loss(tgm.func.functional_call(model, fast, sx[t]), sy[t])
            grads = tgm.grad(loss, [fast[n] for n in adapt], create_graph=not first_order)
            for name, g in zip(adapt, grads):
                fast[name] = fast[name] - inner_lr * (g.detach() if first_order else g)
        total = total + mse_loss(tgm.func.functional_call(model, fast, qx[t]), qy[t])
    return total * (1.0 / sx.shape[0])


def assert_same_step(a, b, tol=1e-6):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=tol)
    assert list(grads_a) == list(grads_b)
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name].numpy(), grads_b[name].numpy(), rtol=tol,
                                   atol=tol * 1e-3, err_msg=name)


def meta_train(learner, iters=30, lr=0.01):
    """Mean query loss after adaptation on a held-out batch, before and after meta-training."""
    held_out = batch(seed=1000)
    optimizer = tgm.optim.Adam(learner.meta_parameters(), lr=lr)
    before = learner.evaluate(held_out, steps=learner.inner_steps)[learner.inner_steps].mean()
    for i in range(iters):
        _, grads = learner.meta_step(batch(seed=i))
        if isinstance(learner, Reptile):
            learner.outer_update(grads)
        else:
            optimizer.step(grads)
    after = learner.evaluate(held_out, steps=learner.inner_steps)[learner.inner_steps].mean()
    return before, after


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_on_a_custom_module_is_each_tasks_own_answer_vectorised_and_looped(first_order):
    data = batch()
    steps = []
    for vectorize in (True, False):
        model = ScaledNet()
        steps.append(MAML(model, inner_lr=0.1, inner_steps=2, first_order=first_order,
                          vectorize=vectorize).meta_step(data))
    assert_same_step(steps[0], steps[1])
    model = ScaledNet()
    reference = manual_meta_loss(model, data, 0.1, 2, first_order)
    expected = tgm.grad(reference, list(model.parameters()))
    assert steps[0][0] == pytest.approx(float(reference.item()), rel=1e-12)
    for g, e in zip(steps[0][1].values(), expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-10, atol=1e-13)


def test_second_order_maml_on_a_custom_module_matches_central_differences():
    model = ScaledNet()
    maml = MAML(model, inner_lr=0.1, inner_steps=2)
    data = batch(seed=3)
    _, grads = maml.meta_step(data)
    eps = 1e-6
    for name, p in model.named_parameters():
        for index in np.ndindex(*p.shape):
            original = p.data[index]
            p.data[index] = original + eps
            up = float(maml.meta_loss(data).item())
            p.data[index] = original - eps
            down = float(maml.meta_loss(data).item())
            p.data[index] = original
            assert grads[name].numpy()[index] == pytest.approx((up - down) / (2 * eps), rel=1e-5,
                                                               abs=1e-8), (name, index)


def test_broadcasting_a_custom_module_over_tasks_would_give_another_answer(monkeypatch):
    # why a module of unknown batching runs under vmap: fed the task-axis weights directly,
    # the (T, hidden) scale meets (T, K, hidden) activations and mixes tasks and shots
    data = batch()
    honest = MAML(ScaledNet(), inner_lr=0.1, vectorize=False).meta_step(data)[0]
    forced = MAML(ScaledNet(), inner_lr=0.1)
    monkeypatch.setattr(tgm.meta.base, "batches_over_tasks", lambda model: True)
    assert abs(forced.meta_step(data)[0] - honest) > 1e-6


def test_a_custom_module_vectorised_runs_under_vmap(monkeypatch):
    calls = []
    original = tgm.meta.base.vmap
    monkeypatch.setattr(tgm.meta.base, "vmap", lambda *a, **k: calls.append(1) or original(*a, **k))
    MAML(ScaledNet(), inner_lr=0.1, inner_steps=2).meta_step(batch())
    assert calls  # the vectorised path, not the per-task loop


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_trains_a_custom_module(first_order):
    before, after = meta_train(MAML(ScaledNet(), inner_lr=0.1, first_order=first_order))
    assert after < 0.9 * before


def test_anil_adapts_only_the_custom_modules_head_and_trains_it():
    data = batch()
    steps = [MAML(ScaledNet(), inner_lr=0.1, adapt_only="head", vectorize=v).meta_step(data)
             for v in (True, False)]
    assert_same_step(steps[0], steps[1])
    model = ScaledNet()
    reference = manual_meta_loss(model, data, 0.1, 1, False, adapt=["head.weight", "head.bias"])
    assert steps[0][0] == pytest.approx(float(reference.item()), rel=1e-12)
    assert np.abs(steps[0][1]["scale"].numpy()).max() > 0  # the body learns through the query loss
    before, after = meta_train(MAML(ScaledNet(), inner_lr=0.1, adapt_only="head"))
    assert after < 0.9 * before


def test_metasgd_learns_rates_for_every_custom_parameter():
    data = batch()
    steps = [MetaSGD(ScaledNet(), init_lr=0.1, vectorize=v).meta_step(data) for v in (True, False)]
    assert_same_step(steps[0], steps[1])
    assert "lr.scale" in steps[0][1] and np.abs(steps[0][1]["lr.scale"].numpy()).max() > 0
    before, after = meta_train(MetaSGD(ScaledNet(), init_lr=0.1))
    assert after < 0.9 * before


def test_reptile_on_a_custom_module_moves_towards_each_tasks_own_sgd_solution():
    data = batch()
    steps = [Reptile(ScaledNet(), inner_lr=0.05, inner_steps=3, vectorize=v).meta_step(data)
             for v in (True, False)]
    assert_same_step(steps[0], steps[1])
    model = ScaledNet()
    sx, sy = (tgm.Tensor(a, dtype="float64") for a in data[:2])
    theta = model.parameter_dict()
    phis = []
    for t in range(TASKS):
        fast = OrderedDict((n, p.detach().requires_grad_()) for n, p in theta.items())
        for _ in range(3):
            loss = mse_loss(tgm.func.functional_call(model, fast, sx[t]), sy[t])
            grads = tgm.grad(loss, list(fast.values()))
            fast = OrderedDict((n, (p - 0.05 * g).detach().requires_grad_())
                               for (n, p), g in zip(fast.items(), grads))
        phis.append(fast)
    for name, p in theta.items():
        mean_phi = np.mean([phi[name].numpy() for phi in phis], axis=0)
        np.testing.assert_allclose(steps[0][1][name].numpy(), p.numpy() - mean_phi, rtol=1e-10,
                                   atol=1e-13)
    before, after = meta_train(Reptile(ScaledNet(), inner_lr=0.05, inner_steps=3, outer_stepsize=0.3),
                               iters=40)
    assert after < 0.9 * before


def test_the_unrolled_hypergradient_tunes_a_custom_modules_learning_rate():
    model = ScaledNet()
    sx, sy, qx, qy = (tgm.Tensor(a[0], dtype="float64") for a in batch(seed=5))

    def train_loss(params, step):
        return mse_loss(tgm.func.functional_call(model, params, sx), sy)

    def val_loss(params):
        return mse_loss(tgm.func.functional_call(model, params, qx), qy)

    init = model.state_dict()
    hyper = make_hyperparameters(4, lr=0.05, tune=("lr-schedule",))
    result = unrolled_hypergradient(train_loss, val_loss, init, hyper, steps=4)
    eps = 1e-6
    log_lr = hyper["log_lr"]
    for t in range(4):
        original = log_lr.data[t]
        log_lr.data[t] = original + eps
        up, _, _ = evaluate_hyperparameters(train_loss, val_loss, init, hyper, steps=4)
        log_lr.data[t] = original - eps
        down, _, _ = evaluate_hyperparameters(train_loss, val_loss, init, hyper, steps=4)
        log_lr.data[t] = original
        assert result.hypergrads["log_lr"][t] == pytest.approx((up - down) / (2 * eps), rel=1e-5)
    # and the module itself was never changed by the unrolled run
    for name, value in init.items():
        np.testing.assert_array_equal(model.parameter_dict()[name].numpy(), value)


class RandomNet(tgm.nn.Module):
    """A small random custom module: a stack of layers, each an activation of a linear map
    times an optional per-feature parameter, plus an optional per-feature shift at the end."""

    def __init__(self, widths, activations, scaled, shift, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        sizes = [1] + list(widths) + [1]
        self.layers = tgm.nn.ModuleList([tgm.nn.Linear(a, b, dtype="float64", rng=rng)
                                         for a, b in zip(sizes[:-1], sizes[1:])])
        self.activations = activations
        self.scales = [tgm.Tensor(rng.uniform(0.5, 1.5, w), dtype="float64", requires_grad=True)
                       if s else None for w, s in zip(widths, scaled)]
        for i, scale in enumerate(self.scales):
            if scale is not None:
                setattr(self, f"scale{i}", scale)
        self.shift = tgm.Tensor(rng.normal(size=1), dtype="float64", requires_grad=True) if shift else None

    def forward(self, x):
        for i, layer in enumerate(self.layers[:-1]):
            x = getattr(layer(x), self.activations[i])()
            scale = getattr(self, f"scale{i}", None)
            if scale is not None:
                x = x * scale
        x = self.layers[len(self.layers) - 1](x)
        return x + self.shift if self.shift is not None else x



@settings(max_examples=12, deadline=None)
@given(depth=st.integers(1, 2), width=st.integers(1, 5), tasks=st.integers(1, 5), shots=st.integers(1, 5),
       activation=st.sampled_from(["tanh", "sigmoid", "relu"]), scaled=st.booleans(),
       shift=st.booleans(), first_order=st.booleans(), seed=st.integers(0, 100))
def test_vectorised_equals_looped_for_random_custom_modules(depth, width, tasks, shots, activation,
                                                           scaled, shift, first_order, seed):
    data = batch(seed, tasks=tasks, shots=shots)
    steps = []
    for vectorize in (True, False):
        model = RandomNet([width] * depth, [activation] * depth, [scaled] * depth, shift, seed)
        steps.append(MAML(model, inner_lr=0.1, inner_steps=2, first_order=first_order,
                          vectorize=vectorize).meta_step(data))
    assert steps[0][0] == pytest.approx(steps[1][0], rel=1e-6, abs=1e-9)
    for name in steps[1][1]:
        np.testing.assert_allclose(steps[0][1][name].numpy(), steps[1][1][name].numpy(),
                                   rtol=1e-6, atol=1e-9, err_msg=name)
