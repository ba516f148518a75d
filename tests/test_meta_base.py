"""The one inner loop (meta/base.py): any differentiable functional step as the inner
optimizer, learned rates through it, and the evaluation code running it."""
import functools
from collections import OrderedDict

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import evaluate
from tinygrad_meta.functional import mse_loss
from tinygrad_meta.meta import MAML, MetaSGD, Reptile
from tinygrad_meta.nn import MLP

from meta_checks import central_differences, small_batch
from tinygrad_meta.optim import adam_step, sgd_step


def model64(seed=0, sizes=(1, 5, 5, 1)):
    return MLP(list(sizes), dtype="float64", rng=np.random.default_rng(seed))


@pytest.mark.parametrize("vectorize", [True, False])
def test_second_order_maml_with_an_adam_inner_loop_matches_central_differences(vectorize):
    model = model64(1)
    adam = functools.partial(adam_step, betas=(0.8, 0.9))
    maml = MAML(model, inner_lr=0.05, inner_steps=3, inner_optimizer=adam, vectorize=vectorize)
    data = small_batch(seed=1)
    _, grads = maml.meta_step(data)
    numerical = central_differences(lambda: float(maml.meta_loss(data).item()),
                                    model.parameter_dict())
    for name in grads:
        np.testing.assert_allclose(grads[name].numpy(), numerical[name], rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    # and Adam is really what ran: plain SGD at the same rate gives another meta-loss
    sgd = MAML(model, inner_lr=0.05, inner_steps=3, vectorize=vectorize)
    assert abs(float(sgd.meta_loss(data).item()) - float(maml.meta_loss(data).item())) > 1e-4


def test_adam_inner_loop_vectorised_equals_looped():
    data = small_batch(tasks=4, seed=2)
    out = [MAML(model64(2), inner_lr=0.02, inner_steps=2, inner_optimizer=adam_step,
                vectorize=v).meta_step(data) for v in (True, False)]
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-10)
    for name in out[0][1]:
        np.testing.assert_allclose(out[0][1][name].numpy(), out[1][1][name].numpy(), rtol=1e-9,
                                   atol=1e-12)


def test_the_fused_sgd_fast_path_equals_sgd_step_itself():
    # sgd_step as given runs as one fused node per parameter; wrapped, it runs the general
    # path through optim.sgd_step: both must be the same inner loop
    data = small_batch(seed=3)
    for learner in (functools.partial(MAML, inner_lr=0.1, inner_steps=2),
                    functools.partial(MetaSGD, init_lr=0.1, inner_steps=2)):
        fused = learner(model64(3)).meta_step(data)
        general = learner(model64(3), inner_optimizer=functools.partial(sgd_step)).meta_step(data)
        assert fused[0] == pytest.approx(general[0], rel=1e-12)
        for name in fused[1]:
            np.testing.assert_allclose(fused[1][name].numpy(), general[1][name].numpy(), rtol=1e-10,
                                       atol=1e-14)


def test_sgd_momentum_in_the_inner_loop_differs_from_plain_sgd():
    data = small_batch(seed=4)
    plain = MAML(model64(4), inner_lr=0.1, inner_steps=3).meta_step(data)[0]
    momentum = MAML(model64(4), inner_lr=0.1, inner_steps=3,
                    inner_optimizer=functools.partial(sgd_step, momentum=0.9)).meta_step(data)[0]
    assert abs(plain - momentum) > 1e-4


@pytest.mark.parametrize("vectorize", [True, False])
def test_metasgd_rates_reach_an_adam_inner_step_as_its_per_parameter_lr(vectorize):
    metasgd = MetaSGD(model64(5, sizes=(1, 3, 1)), init_lr=0.05, inner_steps=2,
                      inner_optimizer=adam_step, vectorize=vectorize)
    rng = np.random.default_rng(0)
    for lr in metasgd.inner_learning_rates().values():
        lr.data = lr.data + rng.uniform(-0.02, 0.02, lr.shape)
    data = small_batch(seed=5)
    _, grads = metasgd.meta_step(data)
    numerical = central_differences(lambda: float(metasgd.meta_loss(data).item()),
                                    metasgd.inner_learning_rates())
    for name, g in numerical.items():
        np.testing.assert_allclose(grads[f"lr.{name}"].numpy(), g, rtol=1e-5, atol=1e-8, err_msg=name)


def test_evaluate_runs_the_inner_optimizer_too():
    data = small_batch(seed=6)
    sgd = MAML(model64(6), inner_lr=0.05).evaluate(data, steps=(0, 3))
    adam = MAML(model64(6), inner_lr=0.05, inner_optimizer=adam_step).evaluate(data, steps=(0, 3))
    np.testing.assert_array_equal(sgd[0], adam[0])
    assert not np.allclose(sgd[3], adam[3])
    # one inner run observed at more step counts is the same run (Adam state carries on)
    both = MAML(model64(6), inner_lr=0.05, inner_optimizer=adam_step).evaluate(data, steps=(1, 3))
    np.testing.assert_allclose(both[3], adam[3], rtol=1e-12)


def test_reptile_with_an_adam_inner_loop_moves_to_the_adam_solution():
    data = small_batch(seed=7)
    model = model64(7)
    reptile = Reptile(model, inner_lr=0.05, inner_steps=2, inner_optimizer=adam_step, vectorize=False)
    _, grads = reptile.meta_step(data)
    sx, sy = (tgm.Tensor(a, dtype="float64") for a in data[:2])
    theta = model.parameter_dict()
    phis = []
    for t in range(sx.shape[0]):
        fast, state = OrderedDict((n, p.detach().requires_grad_()) for n, p in theta.items()), None
        for _ in range(2):
            loss = mse_loss(tgm.func.functional_call(model, fast, sx[t]), sy[t])
            g = OrderedDict(zip(fast, tgm.grad(loss, list(fast.values()))))
            fast, state = adam_step(fast, g, 0.05, state=state)
            fast = OrderedDict((n, p.detach().requires_grad_()) for n, p in fast.items())
        phis.append(fast)
    for name, p in theta.items():
        mean_phi = np.mean([phi[name].numpy() for phi in phis], axis=0)
        np.testing.assert_allclose(grads[name].numpy(), p.numpy() - mean_phi, rtol=1e-10, atol=1e-13)


def test_an_inner_optimizer_that_is_not_callable_is_an_error():
    with pytest.raises(TypeError, match="inner_optimizer"):
        MAML(model64(), inner_optimizer="adam")


def test_learned_rates_come_from_the_learners_method_not_its_attribute_names():
    maml, metasgd = MAML(model64(8)), MetaSGD(model64(8), init_lr=0.03)
    assert maml.inner_learning_rates() is None and evaluate._learned_rates(maml) is None
    rates = evaluate._learned_rates(metasgd)
    assert list(rates) == list(metasgd.model.parameter_dict())
    assert all(np.all(r == 0.03) for r in rates.values())

    class Renamed(MAML):  # rates under a name evaluate.py could never have guessed
        def inner_learning_rates(self):
            return OrderedDict((n, tgm.Tensor(np.full(p.shape, 0.5), dtype="float64"))
                               for n, p in self.model.named_parameters())

    data = small_batch(seed=8)
    renamed = Renamed(model64(8), inner_lr=0.01)
    curve = evaluate.adapted_mse(renamed, data, steps=(1,), inner_lr=0.01)
    expected = MAML(model64(8), inner_lr=0.5).evaluate(data, steps=(1,))
    np.testing.assert_allclose(curve[1], expected[1], rtol=1e-12)


def test_adapt_curve_is_the_learners_inner_loop():
    data = small_batch(tasks=4, seed=9)
    model = model64(9)
    for lr in (0.05, OrderedDict((n, np.full(p.shape, 0.02)) for n, p in model.named_parameters())):
        curves = evaluate.adapt_curve(model, model.state_dict(), data, steps=(0, 2, 4), lr=lr)
        expected = MAML(model, inner_lr=lr).evaluate(data, steps=(0, 2, 4))
        for step in (0, 2, 4):
            np.testing.assert_allclose(curves[step], expected[step], rtol=1e-12)
    assert curves[4].mean() < curves[0].mean()
