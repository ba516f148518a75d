"""Hyperparameter meta-optimization: unrolled and implicit hypergradients, the outer loop,
online hypergradient descent (SGDHD / AdamHD) and the ``hyperopt`` command."""
import os

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import optim
from tinygrad_meta.__main__ import main
from tinygrad_meta.optim import AdamHD, SGDHD
from tinygrad_meta.meta.hyperopt import (HyperOptimizer, evaluate_hyperparameters,
                                         flatten_hyperparameters, implicit_hypergradient,
                                         make_hyperparameters, unrolled_hypergradient)
from tinygrad_meta.tasks.classification import classification_losses, classifier, make_classification

ALL_KINDS = ("lr-schedule", "weight-decay", "momentum", "init-scale")


def tiny_problem(seed=0):
    data = make_classification("spirals", n_train=24, n_val=24, seed=seed)
    model = classifier([2, 4, 3], seed=seed + 1)
    train_loss, val_loss = classification_losses(data, model)
    init = model.state_dict()
    groups = {name: name.rsplit(".", 1)[0] for name in init}
    return train_loss, val_loss, init, groups


def all_kinds_hyper(steps, optimizer):
    lr = 0.3 if optimizer == "sgd" else 0.05
    return make_hyperparameters(steps, lr=np.linspace(lr, lr / 2, steps),
                                weight_decay={"layers.0": 1e-2, "layers.1": 3e-3}, momentum=0.7,
                                init_scale=1.3, tune=ALL_KINDS)


def central_differences(train_loss, val_loss, init, hyper, steps, optimizer, groups, eps=1e-6):
    """dL_val/d(raw hyperparameter), element by element, from evaluations without a graph."""
    out = {}
    for key, leaf in flatten_hyperparameters(hyper).items():
        base = leaf.data.copy()
        estimate = np.zeros(base.shape)
        for index in np.ndindex(base.shape):
            values = []
            for sign in (1.0, -1.0):
                shifted = base.copy()
                shifted[index] += sign * eps
                leaf.data = shifted
                values.append(evaluate_hyperparameters(train_loss, val_loss, init, hyper, steps,
                                                       optimizer, groups=groups)[0])
            estimate[index] = (values[0] - values[1]) / (2 * eps)
        leaf.data = base
        out[key] = estimate
    return out


# ----------------------------------------------------------------------------------
# Unrolled hypergradients
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_unrolled_hypergradients_match_central_differences_for_every_kind(optimizer):
    train_loss, val_loss, init, groups = tiny_problem()
    steps = 4
    hyper = all_kinds_hyper(steps, optimizer)
    result = unrolled_hypergradient(train_loss, val_loss, init, hyper, steps, optimizer=optimizer,
                                    groups=groups)
    analytic = flatten_hyperparameters(result.hypergrads)
    numeric = central_differences(train_loss, val_loss, init, hyper, steps, optimizer, groups)
    assert set(analytic) == {"log_lr", "log_weight_decay/layers.0", "log_weight_decay/layers.1",
                             "logit_momentum", "log_init_scale"}
    for key in analytic:
        assert np.all(np.abs(numeric[key]) > 0), key  # every entry really is exercised
        np.testing.assert_allclose(analytic[key], numeric[key], rtol=1e-5, atol=1e-9, err_msg=key)


def test_val_loss_returned_equals_the_graph_free_evaluation():
    train_loss, val_loss, init, groups = tiny_problem()
    hyper = all_kinds_hyper(3, "sgd")
    result = unrolled_hypergradient(train_loss, val_loss, init, hyper, 3, groups=groups)
    plain = evaluate_hyperparameters(train_loss, val_loss, init, hyper, 3, groups=groups)[0]
    assert result.val_loss == pytest.approx(plain, rel=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_truncate_equal_to_steps_is_the_full_hypergradient(optimizer):
    train_loss, val_loss, init, groups = tiny_problem()
    hyper = all_kinds_hyper(5, optimizer)
    full = unrolled_hypergradient(train_loss, val_loss, init, hyper, 5, optimizer, groups=groups)
    same = unrolled_hypergradient(train_loss, val_loss, init, hyper, 5, optimizer, truncate=5,
                                  groups=groups)
    for key, value in flatten_hyperparameters(full.hypergrads).items():
        np.testing.assert_array_equal(flatten_hyperparameters(same.hypergrads)[key], value)


def test_truncated_hypergradient_is_the_exact_gradient_of_the_last_k_steps():
    # plain SGD has no state, so the last k steps from the (fixed) θ_{T-k} are a run of
    # their own: truncation must give exactly that run's hypergradient, and zeros before
    train_loss, val_loss, init, groups = tiny_problem()
    steps, k = 6, 2
    schedule = np.linspace(0.4, 0.2, steps)
    hyper = make_hyperparameters(steps, lr=schedule)
    truncated = unrolled_hypergradient(train_loss, val_loss, init, hyper, steps, truncate=k)
    head = make_hyperparameters(steps - k, lr=schedule[:steps - k], tune=())
    _, middle, _ = evaluate_hyperparameters(train_loss, val_loss, init, head, steps - k)
    tail = make_hyperparameters(k, lr=schedule[steps - k:])
    reference = unrolled_hypergradient(train_loss, val_loss,
                                       {n: p.numpy() for n, p in middle.items()}, tail, k)
    got = truncated.hypergrads["log_lr"]
    np.testing.assert_array_equal(got[:steps - k], 0.0)
    np.testing.assert_allclose(got[steps - k:], reference.hypergrads["log_lr"], rtol=1e-10)
    assert truncated.val_loss == pytest.approx(reference.val_loss, rel=1e-12)


def test_adam_hypergradient_is_finite_and_correct_where_a_gradient_is_exactly_zero():
    # "dead" never enters the training loss: its Adam second moment stays exactly 0,
    # where d sqrt(v)/dv is infinite; the hypergradient must still be finite and right
    x = tgm.Tensor(np.linspace(-1.0, 1.0, 6), dtype="float64")

    def train_loss(p, step):
        return ((p["w"] * x - 2.0 * x) ** 2).mean()

    def val_loss(p):
        return ((p["w"] * x - 2.0 * x) ** 2).mean() + (p["dead"] ** 2).sum()

    init = {"w": np.array(0.5), "dead": np.array([0.3, -0.2])}
    hyper = make_hyperparameters(3, lr=0.1, momentum=0.8, tune=("lr-schedule", "momentum"))
    result = unrolled_hypergradient(train_loss, val_loss, init, hyper, 3, optimizer="adam")
    for value in flatten_hyperparameters(result.hypergrads).values():
        assert np.all(np.isfinite(value))
    numeric = central_differences(train_loss, val_loss, init, hyper, 3, "adam", None)
    for key, value in flatten_hyperparameters(result.hypergrads).items():
        np.testing.assert_allclose(value, numeric[key], rtol=1e-5, atol=1e-10)


# ----------------------------------------------------------------------------------
# Clear errors
# ----------------------------------------------------------------------------------

def test_fewer_than_one_step_is_an_error():
    train_loss, val_loss, init, _ = tiny_problem()
    hyper = make_hyperparameters(1, lr=0.1)
    with pytest.raises(ValueError, match="steps"):
        unrolled_hypergradient(train_loss, val_loss, init, hyper, 0)
    with pytest.raises(ValueError, match="steps"):
        make_hyperparameters(0)


def test_non_scalar_losses_are_errors_that_name_the_loss():
    train_loss, val_loss, init, _ = tiny_problem()
    hyper = make_hyperparameters(2, lr=0.1)
    with pytest.raises(ValueError, match=r"val_loss must return a scalar loss, got shape \(3,\)"):
        unrolled_hypergradient(train_loss, lambda p: p["layers.1.bias"] * 2.0, init, hyper, 2)
    with pytest.raises(ValueError, match=r"train_loss must return a scalar loss, got shape \(3,\)"):
        unrolled_hypergradient(lambda p, s: p["layers.1.bias"] * 2.0, val_loss, init, hyper, 2)


def test_a_hyperparameter_that_cannot_affect_the_validation_loss_is_an_error():
    train_loss, val_loss, init, groups = tiny_problem()
    # the first momentum buffer is the gradient itself: with T = 1 momentum does nothing
    hyper = make_hyperparameters(1, lr=0.1, momentum=0.9, tune=("lr-schedule", "momentum"))
    with pytest.raises(ValueError, match="'logit_momentum' does not affect the validation loss"):
        unrolled_hypergradient(train_loss, val_loss, init, hyper, 1)
    # a weight-decay group with no parameter in it
    hyper = make_hyperparameters(2, lr=0.1, weight_decay={"layers.0": 1e-3, "layers.7": 1e-3},
                                 tune=("weight-decay",))
    with pytest.raises(ValueError, match=r"group\(s\) \['layers.7'\] contain no parameter"):
        unrolled_hypergradient(train_loss, val_loss, init, hyper, 2, groups=groups)


def test_bad_arguments_are_named():
    train_loss, val_loss, init, _ = tiny_problem()
    hyper = make_hyperparameters(3, lr=0.1)
    with pytest.raises(ValueError, match="truncate"):
        unrolled_hypergradient(train_loss, val_loss, init, hyper, 3, truncate=4)
    with pytest.raises(ValueError, match=r"'log_lr' has shape \(3,\); a schedule for 5 steps"):
        unrolled_hypergradient(train_loss, val_loss, init, hyper, 5)
    with pytest.raises(KeyError, match="unknown hyperparameter key"):
        unrolled_hypergradient(train_loss, val_loss, init, dict(hyper, lr=0.1), 3)
    with pytest.raises(ValueError, match="nothing to differentiate"):
        unrolled_hypergradient(train_loss, val_loss, init, make_hyperparameters(3, tune=()), 3)
    with pytest.raises(ValueError, match="optimizer"):
        unrolled_hypergradient(train_loss, val_loss, init, hyper, 3, optimizer="rmsprop")


# ----------------------------------------------------------------------------------
# Implicit hypergradients
# ----------------------------------------------------------------------------------

def ridge_problem(seed=0, n=40, d=6):
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(d)
    x_train, x_val = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    y_train = x_train @ w_true + 0.5 * rng.standard_normal(n)
    y_val = x_val @ w_true + 0.5 * rng.standard_normal(n)
    mask = np.zeros(d)
    mask[: d // 2] = 1.0  # group "a": the first half of the weights, "b": the rest
    return x_train, y_train, x_val, y_val, mask


def ridge_closed_form(x_train, y_train, x_val, y_val, mask, log_wd, damping=0.0):
    """w* = A⁻¹ Xᵀy/n with A = XᵀX/n + diag(λ_a mask + λ_b (1-mask)); dL_val/dlog λ_g."""
    n = len(y_train)
    decay = np.exp(log_wd[0]) * mask + np.exp(log_wd[1]) * (1 - mask)
    hessian = x_train.T @ x_train / n + np.diag(decay)
    w = np.linalg.solve(hessian, x_train.T @ y_train / n)
    g_val = x_val.T @ (x_val @ w - y_val) / len(y_val)
    v = np.linalg.solve(hessian + damping * np.eye(len(w)), g_val)
    # the mixed derivative of the training gradient (A w - Xᵀy/n) w.r.t. log λ_g is λ_g mask_g w
    return w, np.array([-(v * np.exp(log_wd[0]) * mask * w).sum(),
                        -(v * np.exp(log_wd[1]) * (1 - mask) * w).sum()])


def ridge_losses(x_train, y_train, x_val, y_val, mask):
    xt, yt = tgm.Tensor(x_train, dtype="float64"), tgm.Tensor(y_train, dtype="float64")
    xv, yv = tgm.Tensor(x_val, dtype="float64"), tgm.Tensor(y_val, dtype="float64")
    m_a, m_b = tgm.Tensor(mask, dtype="float64"), tgm.Tensor(1 - mask, dtype="float64")

    def train_loss(p, h):
        fit = ((xt @ p["w"] - yt) ** 2).mean() / 2
        penalty = h["log_wd/a"].exp() * (m_a * p["w"] ** 2).sum() + h["log_wd/b"].exp() * (m_b * p["w"] ** 2).sum()
        return fit + penalty / 2

    def val_loss(p):
        return ((xv @ p["w"] - yv) ** 2).mean() / 2

    return train_loss, val_loss


def test_implicit_hypergradient_matches_ridge_closed_form():
    problem = ridge_problem()
    log_wd = np.array([np.log(0.3), np.log(0.05)])
    w_star, expected = ridge_closed_form(*problem, log_wd)
    train_loss, val_loss = ridge_losses(*problem)
    hyper = {"log_wd/a": tgm.Tensor(log_wd[0], dtype="float64", requires_grad=True),
             "log_wd/b": tgm.Tensor(log_wd[1], dtype="float64", requires_grad=True)}
    result = implicit_hypergradient(train_loss, val_loss, {"w": tgm.Tensor(w_star, dtype="float64")}, hyper)
    assert result.converged
    got = np.array([result.hypergrads["log_wd/a"], result.hypergrads["log_wd/b"]])
    assert np.all(np.abs(expected) > 1e-4)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-10)


def test_implicit_damping_solves_the_damped_system():
    problem = ridge_problem(seed=1)
    log_wd = np.array([np.log(0.2), np.log(0.2)])
    w_star, expected = ridge_closed_form(*problem, log_wd, damping=0.5)
    _, undamped = ridge_closed_form(*problem, log_wd)
    train_loss, val_loss = ridge_losses(*problem)
    hyper = {"log_wd/a": tgm.Tensor(log_wd[0], dtype="float64", requires_grad=True),
             "log_wd/b": tgm.Tensor(log_wd[1], dtype="float64", requires_grad=True)}
    result = implicit_hypergradient(train_loss, val_loss, {"w": tgm.Tensor(w_star, dtype="float64")},
                                    hyper, damping=0.5)
    got = np.array([result.hypergrads["log_wd/a"], result.hypergrads["log_wd/b"]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.allclose(got, undamped, rtol=1e-3)


def test_implicit_warns_when_conjugate_gradient_does_not_converge():
    problem = ridge_problem()
    w_star, _ = ridge_closed_form(*problem, np.log([0.3, 0.05]))
    train_loss, val_loss = ridge_losses(*problem)
    hyper = {"log_wd/a": tgm.Tensor(np.log(0.3), dtype="float64", requires_grad=True),
             "log_wd/b": tgm.Tensor(np.log(0.05), dtype="float64", requires_grad=True)}
    with pytest.warns(RuntimeWarning, match="did not converge in 2 iterations"):
        result = implicit_hypergradient(train_loss, val_loss, {"w": tgm.Tensor(w_star, dtype="float64")},
                                        hyper, cg_iters=2)
    assert not result.converged


# ----------------------------------------------------------------------------------
# The outer loop
# ----------------------------------------------------------------------------------

def test_hyper_optimizer_lowers_the_validation_loss_and_resumes_exactly(tmp_path):
    train_loss, val_loss, init, groups = tiny_problem()

    def fresh():
        hyper = make_hyperparameters(5, lr=0.05, weight_decay={"layers.0": 1e-3, "layers.1": 1e-3},
                                     tune=("lr-schedule", "weight-decay"))
        return HyperOptimizer(train_loss, val_loss, init, hyper, 5, meta_lr=0.2, groups=groups)

    straight = fresh()
    straight.run(6, progress=False)
    assert straight.evaluate() < straight.history["val_loss"][0]
    path = str(tmp_path / "hyper.npz")
    first = fresh()
    first.run(4, progress=False, checkpoint=path, checkpoint_every=2)
    resumed = fresh().load(path)
    assert resumed.iteration == 4
    resumed.run(6, progress=False)
    np.testing.assert_allclose(resumed.history["val_loss"], straight.history["val_loss"], rtol=1e-12)
    for key, leaf in resumed._leaves.items():
        np.testing.assert_allclose(leaf.numpy(), straight._leaves[key].numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------------
# Online hypergradient descent
# ----------------------------------------------------------------------------------

def quadratic_gradient(w):
    # f(w) = 0.5 * (3 w0^2 + w1^2): gradient (3 w0, w1)
    return np.array([3.0 * w[0], w[1]])


def test_sgdhd_two_steps_match_a_hand_computation():
    w = tgm.Tensor([1.0, -2.0], dtype="float64", requires_grad=True)
    opt = SGDHD({"w": w}, lr=0.1, hypergrad_lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        (0.5 * (3.0 * w[0] ** 2 + w[1] ** 2)).backward()
        opt.step()
    # by hand: g1 = (3, -2); α1 = 0.1 (no previous gradient); w1 = (0.7, -1.8)
    # g2 = (2.1, -1.8); α2 = 0.1 + 0.01 * (3*2.1 + 2*1.8) = 0.199; w2 = w1 - 0.199 g2
    assert opt.lr_history == pytest.approx([0.1, 0.199], rel=1e-12)
    np.testing.assert_allclose(w.numpy(), [0.7 - 0.199 * 2.1, -1.8 + 0.199 * 1.8], rtol=1e-12)


def test_adamhd_two_steps_match_a_hand_computation():
    w = tgm.Tensor([1.0, -2.0], dtype="float64", requires_grad=True)
    b1, b2, eps, beta, lr = 0.9, 0.999, 1e-8, 0.01, 0.1
    opt = AdamHD([w], lr=lr, hypergrad_lr=beta, betas=(b1, b2), eps=eps)
    for _ in range(2):
        opt.zero_grad()
        (0.5 * (3.0 * w[0] ** 2 + w[1] ** 2)).backward()
        opt.step()
    # step 1: m̂ = g1, v̂ = g1², direction d1 = g1/(|g1|+eps) ≈ sign(g1); α1 = lr
    g1 = np.array([3.0, -2.0])
    d1 = g1 / (np.abs(g1) + eps)
    w1 = np.array([1.0, -2.0]) - lr * d1
    # step 2: α2 = α1 + β g2·d1, then the ordinary bias-corrected Adam step with α2
    g2 = quadratic_gradient(w1)
    alpha2 = lr + beta * (g2 @ d1)
    m2 = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v2 = b2 * (1 - b2) * g1 ** 2 + (1 - b2) * g2 ** 2
    d2 = (m2 / (1 - b1 ** 2)) / (np.sqrt(v2 / (1 - b2 ** 2)) + eps)
    assert opt.lr_history == pytest.approx([lr, alpha2], rel=1e-12)
    np.testing.assert_allclose(w.numpy(), w1 - alpha2 * d2, rtol=1e-12)


def test_hypergradient_optimizers_are_reexported_from_optim_and_checkpoint():
    assert optim.SGDHD is SGDHD and optim.AdamHD is AdamHD
    w = tgm.Tensor([1.0, -2.0], dtype="float64", requires_grad=True)
    opt = AdamHD({"w": w}, lr=0.1, hypergrad_lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        (w * w).sum().backward()
        opt.step()
    state = opt.state_dict()
    clone_w = tgm.Tensor(w.numpy(), dtype="float64", requires_grad=True)
    clone = AdamHD({"w": clone_w}, lr=1.0)
    clone.load_state_dict(state)
    for o, p in ((opt, w), (clone, clone_w)):
        o.zero_grad()
        (p * p).sum().backward()
        o.step()
    assert clone.lr_history == opt.lr_history
    np.testing.assert_array_equal(clone_w.numpy(), w.numpy())


def test_hypergradient_optimizers_reject_bad_arguments():
    w = tgm.Tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="lr must be a number >= 0"):
        SGDHD([w], lr=-1.0)
    with pytest.raises(RuntimeError, match="has no .grad"):
        SGDHD([w], lr=0.1).step()


# ----------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------

def test_hyperopt_command_runs_tiny_budget_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["hyperopt", "--steps", "3", "--outer-iters", "2", "--hidden", "4", "--n-train", "20",
            "--n-val", "20", "--hyper", "lr-schedule,weight-decay,momentum,init-scale",
            "--out", out, "--no-progress", "--no-plots"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "validation loss before:" in text and "validation loss after:" in text
    assert "learning-rate schedule (3 steps" in text and "momentum:" in text
    for name in ("checkpoint.npz", "hyperparams.json", "history.json"):
        assert os.path.exists(os.path.join(out, name))
    argv[argv.index("--outer-iters") + 1] = "3"
    assert main(argv + ["--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_hyperopt_command_rejects_an_unknown_kind(tmp_path, capsys):
    assert main(["hyperopt", "--hyper", "lr-schedule,dropout", "--out", str(tmp_path)]) == 2
    assert "dropout" in capsys.readouterr().out
