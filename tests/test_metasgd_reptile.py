"""Meta-SGD's learned learning rates and Reptile's update."""
from collections import OrderedDict

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta.functional import mse_loss
from tinygrad_meta.meta import MAML, MetaSGD, Reptile
from tinygrad_meta.nn import MLP
from tinygrad_meta.optim import SGD


def small_batch(tasks=3, shots=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    amplitude = rng.uniform(0.5, 2.0, (tasks, 1, 1))
    phase = rng.uniform(0, np.pi, (tasks, 1, 1))
    sx = rng.uniform(-3, 3, (tasks, shots, 1))
    qx = rng.uniform(-3, 3, (tasks, shots, 1))
    return tuple(a.astype(dtype) for a in (sx, amplitude * np.sin(sx - phase),
                                           qx, amplitude * np.sin(qx - phase)))


def model64(seed=0):
    return MLP([1, 5, 1], dtype="float64", rng=np.random.default_rng(seed))


def test_metasgd_meta_parameters_hold_one_lr_per_parameter():
    metasgd = MetaSGD(model64(), init_lr=0.03)
    names = list(metasgd.meta_parameters())
    assert names[:4] == list(metasgd.model.parameter_dict())
    assert names[4:] == [f"lr.{n}" for n in metasgd.model.parameter_dict()]
    assert metasgd.inner_learning_rates() is metasgd.lrs
    for name, p in metasgd.model.named_parameters():
        lr = metasgd.meta_parameters()[f"lr.{name}"]
        assert lr.shape == p.shape and np.all(lr.numpy() == 0.03) and lr.requires_grad


def test_metasgd_with_uniform_lrs_equals_maml():
    batch = small_batch()
    maml_loss = MAML(model64(1), inner_lr=0.07, inner_steps=2).meta_loss(batch)
    metasgd_loss = MetaSGD(model64(1), init_lr=0.07, inner_steps=2).meta_loss(batch)
    assert float(metasgd_loss.item()) == pytest.approx(float(maml_loss.item()), rel=1e-12)


@pytest.mark.parametrize("vectorize", [True, False])
def test_metasgd_lr_gradients_match_finite_differences(vectorize):
    metasgd = MetaSGD(model64(2), init_lr=0.1, inner_steps=2, vectorize=vectorize)
    rng = np.random.default_rng(0)
    for lr in metasgd.lrs.values():  # distinct rates, so a mix-up between entries shows
        lr.data = lr.data + rng.uniform(-0.05, 0.05, lr.shape)
    batch = small_batch(seed=2)
    _, grads = metasgd.meta_step(batch)
    eps = 1e-6
    for name, lr in metasgd.lrs.items():
        for index in np.ndindex(*lr.shape):
            original = lr.data[index]
            lr.data[index] = original + eps
            up = float(metasgd.meta_loss(batch).item())
            lr.data[index] = original - eps
            down = float(metasgd.meta_loss(batch).item())
            lr.data[index] = original
            numerical = (up - down) / (2 * eps)
            assert grads[f"lr.{name}"].numpy()[index] == pytest.approx(numerical, rel=1e-5, abs=1e-8)


def test_metasgd_vectorised_equals_looped():
    batch = small_batch(tasks=4, seed=3, dtype=np.float32)
    out = [MetaSGD(MLP([1, 16, 1], rng=np.random.default_rng(4)), vectorize=v).meta_step(batch)
           for v in (True, False)]
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    for name in out[0][1]:
        np.testing.assert_allclose(out[0][1][name].numpy(), out[1][1][name].numpy(), atol=1e-5)


def test_metasgd_state_dict_round_trip_includes_lrs():
    a = MetaSGD(model64(5), init_lr=0.2)
    b = MetaSGD(model64(6), init_lr=0.5)
    b.load_state_dict(a.state_dict())
    for name, p in b.meta_parameters().items():
        np.testing.assert_array_equal(p.numpy(), a.meta_parameters()[name].numpy())


def manual_reptile_phi(model, batch, inner_lr, inner_steps):
    """Plain SGD on each task's support set, written out by hand."""
    sx, sy = (tgm.Tensor(a, dtype="float64") for a in batch[:2])
    phis = []
    for t in range(sx.shape[0]):
        fast = OrderedDict((n, p.detach().requires_grad_()) for n, p in model.named_parameters())
        for _ in range(inner_steps):
            loss = mse_loss(tgm.func.functional_call(model, fast, sx[t]), sy[t])
            grads = tgm.grad(loss, list(fast.values()))
            fast = OrderedDict((n, (p - g * inner_lr).detach().requires_grad_())
                               for (n, p), g in zip(fast.items(), grads))
        phis.append(OrderedDict((n, p.numpy()) for n, p in fast.items()))
    return phis


@pytest.mark.parametrize("vectorize", [True, False])
def test_reptile_pseudo_gradient_and_update_match_the_formula(vectorize):
    model = model64(7)
    batch = small_batch(tasks=4, seed=7)
    theta = OrderedDict((n, p.numpy().copy()) for n, p in model.named_parameters())
    phis = manual_reptile_phi(model, batch, 0.05, 3)
    reptile = Reptile(model, inner_lr=0.05, inner_steps=3, outer_stepsize=0.25, vectorize=vectorize)
    loss, grads = reptile.meta_step(batch)
    for name in theta:
        mean_phi = np.mean([phi[name] for phi in phis], axis=0)
        np.testing.assert_allclose(grads[name].numpy(), theta[name] - mean_phi, rtol=1e-10,
                                   atol=1e-13)
    SGD(reptile.meta_parameters(), lr=0.25).step(grads)
    for name, p in model.named_parameters():
        mean_phi = np.mean([phi[name] for phi in phis], axis=0)
        np.testing.assert_allclose(p.numpy(), theta[name] + 0.25 * (mean_phi - theta[name]),
                                   rtol=1e-10, atol=1e-13)
    assert np.isfinite(loss)


def manual_minibatch_phi(model, batch, inner_lr, inner_steps, batches):
    """Plain SGD by hand on each task's support and query samples pooled, step s on the
    samples i with i % batches == s % batches."""
    x = np.concatenate([batch[0], batch[2]], axis=1)
    y = np.concatenate([batch[1], batch[3]], axis=1)
    phis = []
    for t in range(x.shape[0]):
        fast = OrderedDict((n, p.detach().requires_grad_()) for n, p in model.named_parameters())
        for s in range(inner_steps):
            chosen = [i for i in range(x.shape[1]) if i % batches == s % batches]
            loss = mse_loss(tgm.func.functional_call(model, fast, tgm.Tensor(x[t, chosen], dtype="float64")),
                            tgm.Tensor(y[t, chosen], dtype="float64"))
            grads = tgm.grad(loss, list(fast.values()))
            fast = OrderedDict((n, (p - g * inner_lr).detach().requires_grad_())
                               for (n, p), g in zip(fast.items(), grads))
        phis.append(OrderedDict((n, p.numpy()) for n, p in fast.items()))
    return phis


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("compile", [False, True])
def test_reptile_minibatches_of_support_and_query_match_the_formula(vectorize, compile):
    # the inner loop on support+query, a different mini-batch each step (what few-shot
    # classification trains with); compiled, a second batch must not replay the first's data
    model = model64(5)
    reptile = Reptile(model, inner_lr=0.05, inner_steps=4, outer_stepsize=0.5, vectorize=vectorize,
                      compile=compile, inner_data="support+query", inner_batches=3)
    theta = OrderedDict((n, p.numpy().copy()) for n, p in model.named_parameters())
    for seed in (5, 6):
        batch = small_batch(tasks=3, shots=4, seed=seed)
        phis = manual_minibatch_phi(model, batch, 0.05, 4, 3)
        full_batch = manual_reptile_phi(model, batch, 0.05, 4)
        _, grads = reptile.meta_step(batch)
        for name in theta:
            mean_phi = np.mean([phi[name] for phi in phis], axis=0)
            np.testing.assert_allclose(grads[name].numpy(), theta[name] - mean_phi, rtol=1e-10, atol=1e-13)
        # and it is not the support-only full-batch update
        name = "layers.0.weight"
        assert not np.allclose(grads[name].numpy(), theta[name] - np.mean([f[name] for f in full_batch], axis=0))
    SGD(reptile.meta_parameters(), lr=0.5).step(grads)  # as train.py steps it
    for name, p in model.named_parameters():
        mean_phi = np.mean([phi[name] for phi in phis], axis=0)
        np.testing.assert_allclose(p.numpy(), theta[name] + 0.5 * (mean_phi - theta[name]), rtol=1e-10, atol=1e-13)


def test_reptile_rejects_bad_inner_data():
    with pytest.raises(ValueError, match="inner_data"):
        Reptile(model64(), inner_data="query")
    with pytest.raises(ValueError, match="inner_batches"):
        Reptile(model64(), inner_batches=0)
    with pytest.raises(ValueError, match="inner_batches=9 is more than the 8 samples"):
        Reptile(model64(), inner_data="support+query", inner_batches=9).meta_step(small_batch())


def test_reptile_outer_update_equals_outer_sgd():
    batch = small_batch(seed=8)
    a, b = Reptile(model64(8), outer_stepsize=0.3), Reptile(model64(8), outer_stepsize=0.3)
    _, grads = a.meta_step(batch)
    a.outer_update(grads)
    SGD(b.meta_parameters(), lr=0.3).step(b.meta_step(batch)[1])
    for name, p in a.model.named_parameters():
        np.testing.assert_allclose(p.numpy(), b.model.parameter_dict()[name].numpy(), rtol=1e-12)


def test_reptile_has_no_differentiable_meta_loss():
    with pytest.raises(TypeError, match="meta_step"):
        Reptile(model64()).meta_loss(small_batch())
