"""MAML: meta-gradients against finite differences, first order, vectorised == looped, ANIL."""
from collections import OrderedDict

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta.functional import mse_loss
from tinygrad_meta.meta import MAML, MetaSGD, Reptile
from tinygrad_meta.nn import MLP

from meta_checks import central_differences, small_batch


def model64(seed=0, sizes=(1, 6, 6, 1)):
    return MLP(list(sizes), dtype="float64", rng=np.random.default_rng(seed))


@pytest.mark.parametrize("vectorize", [True, False])
def test_second_order_meta_gradient_equals_central_differences(vectorize):
    model = model64()
    maml = MAML(model, inner_lr=0.1, inner_steps=2, vectorize=vectorize)
    batch = small_batch()
    loss, grads = maml.meta_step(batch)
    numerical = central_differences(lambda: float(maml.meta_loss(batch).item()),
                                    model.parameter_dict())
    for name in grads:
        np.testing.assert_allclose(grads[name].numpy(), numerical[name], rtol=1e-5, atol=1e-7,
                                   err_msg=name)


def manual_first_order_meta_gradient(model, batch, inner_lr, inner_steps):
    """Per-task loop written out by hand: inner gradients detached, averaged query loss."""
    sx, sy, qx, qy = (tgm.Tensor(a, dtype="float64") for a in batch)
    params = model.parameter_dict()
    total = None
    for t in range(sx.shape[0]):
        fast = OrderedDict(params)
        for _ in range(inner_steps):
            inner = mse_loss(tgm.func.functional_call(model, fast, sx[t]), sy[t])
            grads = tgm.grad(inner, list(fast.values()))
            fast = OrderedDict((n, p - g.detach() * inner_lr) for (n, p), g in zip(fast.items(), grads))
        query = mse_loss(tgm.func.functional_call(model, fast, qx[t]), qy[t])
        total = query if total is None else total + query
    loss = total * (1.0 / sx.shape[0])
    return float(loss.item()), tgm.grad(loss, list(params.values()))


@pytest.mark.parametrize("vectorize", [True, False])
def test_first_order_equals_meta_gradient_with_inner_gradients_detached(vectorize):
    model = model64(1)
    batch = small_batch(seed=1)
    loss, grads = MAML(model, inner_lr=0.1, inner_steps=2, first_order=True,
                       vectorize=vectorize).meta_step(batch)
    expected_loss, expected = manual_first_order_meta_gradient(model, batch, 0.1, 2)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    for g, e in zip(grads.values(), expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-10, atol=1e-12)
    # and it is not the second-order gradient
    _, second = MAML(model, inner_lr=0.1, inner_steps=2).meta_step(batch)
    assert not np.allclose(second["layers.0.weight"].numpy(), grads["layers.0.weight"].numpy())


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("inner_steps", [1, 3])
@pytest.mark.parametrize("adapt_only", [None, ["layers.2"]])
def test_vectorised_equals_looped_in_float32(first_order, inner_steps, adapt_only):
    batch = small_batch(tasks=5, shots=10, seed=2, dtype=np.float32)
    results = []
    for vectorize in (True, False):
        model = MLP([1, 40, 40, 1], rng=np.random.default_rng(3))
        maml = MAML(model, inner_lr=0.01, inner_steps=inner_steps, first_order=first_order,
                    vectorize=vectorize, adapt_only=adapt_only)
        results.append(maml.meta_step(batch))
    (loss_v, grads_v), (loss_l, grads_l) = results
    assert loss_v == pytest.approx(loss_l, rel=1e-5)
    for name in grads_v:
        scale = np.abs(grads_l[name].numpy()).max()
        np.testing.assert_allclose(grads_v[name].numpy(), grads_l[name].numpy(),
                                   atol=1e-5 * max(scale, 1.0), err_msg=name)


def test_anil_adapts_only_the_head():
    model = MLP([1, 8, 8, 1], rng=np.random.default_rng(0))
    maml = MAML(model, inner_lr=0.5, adapt_only="layers.2")
    assert maml.adapt_names == ["layers.2.weight", "layers.2.bias"]
    sx, sy, qx, qy = small_batch(tasks=4, dtype=np.float32)
    fast = maml.adapt(sx, sy)
    params = model.parameter_dict()
    for name in ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"):
        assert fast[name] is params[name]
    assert fast["layers.2.weight"].shape == (4, 1, 8)
    assert not np.allclose(fast["layers.2.weight"].numpy()[0], params["layers.2.weight"].numpy())
    # the body still gets a meta-gradient through the query loss
    _, grads = maml.meta_step((sx, sy, qx, qy))
    assert np.abs(grads["layers.0.weight"].numpy()).max() > 0


def test_unknown_adapt_only_name_is_an_error():
    with pytest.raises(KeyError, match="head"):
        MAML(MLP([1, 2, 1]), adapt_only=["head"])


def test_the_old_adapt_keyword_says_it_is_now_adapt_only():
    for learner in (MAML, MetaSGD, Reptile):
        with pytest.raises(TypeError, match="adapt_only"):
            learner(MLP([1, 2, 1]), adapt=["layers.1"])


def test_adapt_one_step_equals_manual_sgd():
    model = model64(2)
    sx, sy, _, _ = small_batch(tasks=2, seed=3)
    fast = MAML(model, inner_lr=0.05).adapt(sx, sy)
    params = model.parameter_dict()
    for t in range(2):
        loss = mse_loss(model(tgm.Tensor(sx[t], dtype="float64")), tgm.Tensor(sy[t], dtype="float64"))
        grads = tgm.grad(loss, list(params.values()))
        for (name, p), g in zip(params.items(), grads):
            np.testing.assert_allclose(fast[name].numpy()[t], p.numpy() - 0.05 * g.numpy(),
                                       rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("vectorize", [True, False])
def test_evaluate_step_zero_is_the_unadapted_loss_and_loss_falls(vectorize):
    model = model64(4)
    batch = small_batch(tasks=3, seed=4)
    result = MAML(model, inner_lr=0.05, vectorize=vectorize).evaluate(batch, steps=(0, 1, 10))
    sx, sy, qx, qy = batch
    for t in range(3):
        expected = mse_loss(model(tgm.Tensor(qx[t], dtype="float64")),
                            tgm.Tensor(qy[t], dtype="float64")).item()
        assert result[0][t] == pytest.approx(expected, rel=1e-12)
    assert result[10].mean() < result[0].mean()
    # evaluation leaves no gradient behind on the model
    assert all(p.grad is None for p in model.parameters())


def test_evaluate_vectorised_equals_looped():
    batch = small_batch(tasks=3, seed=5)
    a = MAML(model64(5), inner_lr=0.05).evaluate(batch, steps=(0, 2, 5))
    b = MAML(model64(5), inner_lr=0.05, vectorize=False).evaluate(batch, steps=(0, 2, 5))
    for s in a:
        np.testing.assert_allclose(a[s], b[s], rtol=1e-10)


def test_meta_training_reduces_the_meta_loss():
    rng = np.random.default_rng(0)
    model = MLP([1, 20, 20, 1], rng=rng)
    maml = MAML(model, inner_lr=0.01)
    optimizer = tgm.optim.Adam(maml.meta_parameters(), lr=3e-3)
    evaluation = small_batch(tasks=50, shots=10, seed=100, dtype=np.float32)
    before = float(maml.meta_loss(evaluation).item())
    for i in range(150):
        _, grads = maml.meta_step(small_batch(tasks=10, shots=10, seed=i, dtype=np.float32))
        optimizer.step(grads)
    assert float(maml.meta_loss(evaluation).item()) < 0.7 * before


def test_bad_task_batches_are_rejected():
    maml = MAML(MLP([1, 4, 1]))
    sx, sy, qx, qy = small_batch(tasks=3, dtype=np.float32)
    with pytest.raises(ValueError, match="support_x, support_y"):
        maml.meta_loss((sx, sy, qx))
    with pytest.raises(ValueError, match="task axis"):
        maml.meta_loss((sx, sy, qx[:2], qy[:2]))
    with pytest.raises(ValueError, match="inner_steps"):
        MAML(MLP([1, 4, 1]), inner_steps=-1)


def test_second_order_graph_is_released_after_meta_step():
    import gc
    import weakref
    maml = MAML(MLP([1, 4, 1], rng=np.random.default_rng(0)))
    loss = maml.meta_loss(small_batch(dtype=np.float32))
    ref = weakref.ref(loss)
    tgm.grad(loss, list(maml.meta_parameters().values()))
    del loss
    gc.collect()
    assert ref() is None
