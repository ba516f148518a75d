"""Differentiable sgd_step / adam_step and the in-place SGD / Adam optimizers."""
from collections import OrderedDict

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import ops
from tinygrad_meta.optim import (SGD, SGDHD, Adam, AdamHD, AdamW, Optimizer, adam_step, safe_sqrt,
                                 sgd_step)
from tinygrad_meta.testing import gradcheck, gradgradcheck


def t64(array, requires_grad=False):
    return tgm.Tensor(np.asarray(array, dtype=np.float64), dtype="float64",
                      requires_grad=requires_grad)


def random_problem(seed=0, shapes=(("w", (3, 2)), ("b", (2,)))):
    rng = np.random.default_rng(seed)
    params = OrderedDict((n, t64(rng.standard_normal(s), True)) for n, s in shapes)
    grads = [OrderedDict((n, t64(rng.standard_normal(s))) for n, s in shapes) for _ in range(3)]
    return params, grads


# ---- reference implementations in plain numpy (the textbook formulas) -------------

def numpy_sgd(p, gs, lr, momentum=0.0, wd=0.0, nesterov=False):
    buf = None
    for g in gs:
        g = g + wd * p
        if momentum:
            buf = g if buf is None else momentum * buf + g
            d = g + momentum * buf if nesterov else buf
        else:
            d = g
        p = p - lr * d
    return p


def numpy_adam(p, gs, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    m = v = 0.0
    for t, g in enumerate(gs, start=1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                  (0.9, True, 0.1), (0.0, False, 0.05)])
def test_sgd_step_matches_the_formula_over_three_steps(momentum, nesterov, wd):
    params, grads = random_problem()
    state = None
    current = params
    for g in grads:
        current, state = sgd_step(current, g, lr=0.1, momentum=momentum, weight_decay=wd,
                                  nesterov=nesterov, state=state)
    for name in params:
        expected = numpy_sgd(params[name].numpy(), [g[name].numpy() for g in grads], 0.1,
                             momentum, wd, nesterov)
        np.testing.assert_allclose(current[name].numpy(), expected, rtol=1e-12)
    assert list(current) == list(params)


def test_adam_step_matches_the_formula_over_three_steps():
    params, grads = random_problem(1)
    state, current = None, params
    for g in grads:
        current, state = adam_step(current, g, lr=0.01, betas=(0.8, 0.99), weight_decay=0.01,
                                   state=state)
    assert state["step"] == 3
    for name in params:
        expected = numpy_adam(params[name].numpy(), [g[name].numpy() for g in grads], 0.01,
                              0.8, 0.99, 1e-8, 0.01)
        np.testing.assert_allclose(current[name].numpy(), expected, rtol=1e-10)


def test_sgd_step_per_parameter_hyperparameters():
    params, grads = random_problem(2)
    new, _ = sgd_step(params, grads[0], lr={"w": 0.1, "b": t64(0.5)})
    np.testing.assert_allclose(new["w"].numpy(), params["w"].numpy() - 0.1 * grads[0]["w"].numpy())
    np.testing.assert_allclose(new["b"].numpy(), params["b"].numpy() - 0.5 * grads[0]["b"].numpy())


def test_hyperparameter_dict_missing_a_name_is_an_error():
    params, grads = random_problem()
    with pytest.raises(KeyError, match="'b'"):
        sgd_step(params, grads[0], lr={"w": 0.1})


def test_grads_that_do_not_match_params_are_an_error():
    params, grads = random_problem()
    with pytest.raises(KeyError, match="missing"):
        sgd_step(params, {"w": grads[0]["w"]}, lr=0.1)
    bad = dict(grads[0], w=t64(np.zeros((2, 3))))
    with pytest.raises(ValueError, match="shape"):
        adam_step(params, bad, lr=0.1)


def _unrolled_sgd(w, g1, g2, lr, momentum):
    state = None
    p = {"w": w}
    p, state = sgd_step(p, {"w": g1}, lr=lr, momentum=momentum, state=state)
    p, state = sgd_step(p, {"w": g2 * p["w"]}, lr=lr, momentum=momentum, nesterov=True, state=state)
    return p["w"]


def test_sgd_step_passes_gradgradcheck_in_params_grads_and_hyperparameters():
    rng = np.random.default_rng(3)
    args = [t64(rng.standard_normal(3)), t64(rng.standard_normal(3)), t64(rng.standard_normal(3)),
            t64(0.3), t64(0.7)]
    assert gradcheck(_unrolled_sgd, args)
    assert gradgradcheck(_unrolled_sgd, args)


def _unrolled_adam(w, g1, g2, lr, beta1, beta2):
    p, state = adam_step({"w": w}, {"w": g1}, lr=lr, betas=(beta1, beta2))
    # the second gradient depends on the parameters, like a real loss would
    p, state = adam_step(p, {"w": g2 * p["w"] * p["w"]}, lr=lr, betas=(beta1, beta2), state=state)
    return p["w"]


def test_adam_step_passes_gradgradcheck_in_params_grads_and_hyperparameters():
    rng = np.random.default_rng(4)
    args = [t64(rng.standard_normal(3)), t64(rng.standard_normal(3)), t64(rng.standard_normal(3)),
            t64(0.05), t64(0.85), t64(0.95)]
    assert gradcheck(_unrolled_adam, args)
    assert gradgradcheck(_unrolled_adam, args)


def test_adam_derivatives_are_finite_where_gradients_are_exactly_zero():
    lr, eps = 0.1, 1e-3
    w = t64([1.0, 2.0, -1.0], True)
    g = t64([0.0, 0.0, 0.5], True)  # two gradients exactly zero
    new, state = adam_step({"w": w}, {"w": g}, lr=lr, eps=eps)
    new, _ = adam_step(new, {"w": g * 1.0}, lr=lr, eps=eps, state=state)
    (first,) = tgm.grad(new["w"].sum(), [g], create_graph=True)
    (second,) = tgm.grad(first.sum(), [g])
    assert np.isfinite(first.numpy()).all() and np.isfinite(second.numpy()).all()
    # at g = 0 each step moves w by -lr*g/(|g|+eps) (bias corrections cancel for a constant g):
    # derivative -lr/eps per step, two steps
    np.testing.assert_allclose(first.numpy()[:2], [-2 * lr / eps] * 2, rtol=1e-12)
    # the update lr*g/(|g|+eps) has a kink in its derivative at 0; the masked sqrt rule
    # gives the average of the one-sided second derivatives, 0
    np.testing.assert_allclose(second.numpy()[:2], [0.0, 0.0], atol=0)


def test_safe_sqrt_is_exact_away_from_zero_and_zero_slope_at_zero():
    v = t64([0.0, 4.0, 9.0], True)
    (d1,) = tgm.grad(safe_sqrt(v).sum(), [v], create_graph=True)
    (d2,) = tgm.grad(d1.sum(), [v])
    np.testing.assert_allclose(d1.numpy(), [0.0, 0.25, 1 / 6])
    np.testing.assert_allclose(d2.numpy(), [0.0, -0.25 * 4 ** -1.5, -0.25 * 9 ** -1.5])
    assert gradgradcheck(safe_sqrt, [t64([0.5, 2.0, 3.0])])


# ---- in-place optimizers ----------------------------------------------------------

def _quadratic_grads(params):
    return OrderedDict((n, p * 2.0 + 1.0) for n, p in params.items())


@pytest.mark.parametrize("make,functional_step", [
    (lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda p, g, s: sgd_step(p, g, 0.1, momentum=0.9, weight_decay=0.01, nesterov=True, state=s)),
    (lambda p: Adam(p, lr=0.05, weight_decay=0.01),
     lambda p, g, s: adam_step(p, g, 0.05, weight_decay=0.01, state=s)),
    (lambda p: AdamW(p, lr=0.05, betas=(0.8, 0.99), weight_decay=0.1),
     lambda p, g, s: adam_step(p, g, 0.05, (0.8, 0.99), weight_decay=0.1, state=s,
                               decoupled_weight_decay=True))], ids=["SGD", "Adam", "AdamW"])
def test_inplace_optimizer_matches_functional_step_and_records_no_graph(make, functional_step):
    params, _ = random_problem(5)
    reference = OrderedDict((n, t64(p.numpy().copy())) for n, p in params.items())
    optimizer = make(params)
    state = None
    for _ in range(3):
        optimizer.step(_quadratic_grads(OrderedDict((n, p.detach()) for n, p in params.items())))
        reference, state = functional_step(reference, _quadratic_grads(reference), state)
    for name, p in params.items():
        np.testing.assert_allclose(p.numpy(), reference[name].numpy(), rtol=1e-12)
        assert p.is_leaf and p.requires_grad


def test_step_uses_grad_attributes_and_zero_grad_clears_them():
    w = t64([1.0, -2.0], True)
    optimizer = SGD({"w": w}, lr=0.25)
    (w * w).sum().backward()
    optimizer.step()
    np.testing.assert_allclose(w.numpy(), [0.5, -1.0])
    optimizer.zero_grad()
    assert w.grad is None
    with pytest.raises(RuntimeError, match="no .grad"):
        optimizer.step()


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.5),
                                  lambda p: Adam(p, lr=0.01, betas=(0.8, 0.9))])
def test_state_dict_round_trip_through_npz_resumes_identically(tmp_path, make):
    params_a, _ = random_problem(6)
    params_b = OrderedDict((n, t64(p.numpy().copy(), True)) for n, p in params_a.items())
    opt_a = make(params_a)
    for _ in range(2):
        opt_a.step(_quadratic_grads(params_a))
    np.savez(tmp_path / "opt.npz", **opt_a.state_dict())
    for name, p in params_b.items():
        p.data = params_a[name].data.copy()
    opt_b = make(params_b)
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as loaded:
        opt_b.load_state_dict(dict(loaded))
    for _ in range(2):
        opt_a.step(_quadratic_grads(params_a))
        opt_b.step(_quadratic_grads(params_b))
    for name in params_a:
        np.testing.assert_array_equal(params_a[name].numpy(), params_b[name].numpy())


def test_load_state_dict_rejects_wrong_shapes():
    params, _ = random_problem()
    optimizer = Adam(params, lr=0.1)
    optimizer.step(_quadratic_grads(params))
    sd = optimizer.state_dict()
    sd["m.w"] = np.zeros((5, 5))
    with pytest.raises(ValueError, match="m.w"):
        Adam(params, lr=0.1).load_state_dict(sd)


def test_bad_hyperparameters_are_rejected():
    params, _ = random_problem()
    with pytest.raises(ValueError, match="nesterov"):
        SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam(params, betas=(0.9, 1.5))


def test_adam_with_mixed_dtypes_matches_the_formula():
    # parameters of different dtypes cannot share one flat buffer: the per-parameter path
    rng = np.random.default_rng(9)
    w32 = tgm.Tensor(rng.standard_normal(3), dtype="float32", requires_grad=True)
    w64 = t64(rng.standard_normal(2), True)
    start = {"a": w32.numpy().astype(np.float64), "b": w64.numpy().copy()}
    optimizer = Adam({"a": w32, "b": w64}, lr=0.1)
    history = {"a": [], "b": []}
    for _ in range(2):
        grads = {"a": w32 * 2.0, "b": w64 * 2.0}
        for name in grads:
            history[name].append(grads[name].numpy().astype(np.float64))
        optimizer.step({n: g.detach() for n, g in grads.items()})
    assert w32.dtype == np.float32 and w64.dtype == np.float64
    np.testing.assert_allclose(w32.numpy(), numpy_adam(start["a"], history["a"], 0.1), rtol=1e-5)
    np.testing.assert_allclose(w64.numpy(), numpy_adam(start["b"], history["b"], 0.1), rtol=1e-12)


# ---- AdamW: decoupled weight decay ------------------------------------------------

def numpy_adamw(p, gs, lr, b1=0.9, b2=0.999, eps=1e-8, wd=1e-2):
    """torch.optim.AdamW's documented algorithm: decay the parameter, then Adam on g."""
    m = v = 0.0
    for t, g in enumerate(gs, start=1):
        p = p - lr * wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


def test_adamw_first_step_matches_a_hand_computation():
    # p = 2, g = 0.5, lr = 0.1, wd = 0.5: decay to 2 - 0.1*0.5*2 = 1.9; the first Adam
    # direction is m_hat/(sqrt(v_hat)+eps) = 0.5/(0.5+eps); so p = 1.9 - 0.1*0.5/(0.5+1e-8)
    w = t64([2.0], True)
    opt = AdamW([w], lr=0.1, weight_decay=0.5)
    opt.step({"0": t64([0.5])})
    np.testing.assert_allclose(w.numpy(), [1.9 - 0.1 * 0.5 / (0.5 + 1e-8)], rtol=1e-14)


def test_adamw_matches_the_formula_over_three_steps_and_differs_from_l2_adam():
    params, grads = random_problem(7)
    adamw_params = OrderedDict((n, t64(p.numpy().copy(), True)) for n, p in params.items())
    adam_params = OrderedDict((n, t64(p.numpy().copy(), True)) for n, p in params.items())
    adamw = AdamW(adamw_params, lr=0.01, betas=(0.8, 0.99), weight_decay=0.3)
    adam = Adam(adam_params, lr=0.01, betas=(0.8, 0.99), weight_decay=0.3)
    for g in grads:
        adamw.step(g)
        adam.step(g)
    for name in params:
        expected = numpy_adamw(params[name].numpy(), [g[name].numpy() for g in grads], 0.01,
                               0.8, 0.99, 1e-8, 0.3)
        np.testing.assert_allclose(adamw_params[name].numpy(), expected, rtol=1e-12)
        assert not np.allclose(adam_params[name].numpy(), expected, rtol=1e-6)


def test_adamw_defaults_are_pytorchs():
    opt = AdamW([t64([1.0], True)])
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 1e-2)
    assert opt.decoupled_weight_decay


def test_adamw_matches_torch_when_torch_is_installed():
    torch = pytest.importorskip("torch")
    params, grads = random_problem(8)
    ours = OrderedDict((n, t64(p.numpy().copy(), True)) for n, p in params.items())
    theirs = [torch.tensor(p.numpy().copy(), requires_grad=True) for p in params.values()]
    opt = AdamW(ours, lr=0.02, betas=(0.85, 0.98), eps=1e-6, weight_decay=0.2)
    torch_opt = torch.optim.AdamW(theirs, lr=0.02, betas=(0.85, 0.98), eps=1e-6, weight_decay=0.2)
    for g in grads:
        opt.step(g)
        for t, name in zip(theirs, params):
            t.grad = torch.tensor(g[name].numpy())
        torch_opt.step()
    for t, name in zip(theirs, params):
        # torch divides by sqrt(v)/sqrt(1-b2^t), we take sqrt(v/(1-b2^t)): rounding only
        np.testing.assert_allclose(ours[name].numpy(), t.detach().numpy(), rtol=1e-12)


def _unrolled_adamw(w, g1, g2, lr, weight_decay):
    p, state = adam_step({"w": w}, {"w": g1}, lr=lr, weight_decay=weight_decay,
                         decoupled_weight_decay=True)
    p, _ = adam_step(p, {"w": g2 * p["w"]}, lr=lr, weight_decay=weight_decay, state=state,
                     decoupled_weight_decay=True)
    return p["w"]


def test_decoupled_adam_step_passes_gradgradcheck_in_lr_and_weight_decay():
    rng = np.random.default_rng(10)
    args = [t64(rng.standard_normal(3)), t64(rng.standard_normal(3)), t64(rng.standard_normal(3)),
            t64(0.05), t64(0.4)]
    assert gradcheck(_unrolled_adamw, args)
    assert gradgradcheck(_unrolled_adamw, args)


def test_adam_and_adamw_do_not_load_each_others_state():
    params, grads = random_problem(11)
    adamw = AdamW(params, lr=0.1)
    adamw.step(grads[0])
    with pytest.raises(ValueError, match=r"decoupled \(AdamW\) weight decay, this one uses L2"):
        Adam(params, lr=0.1).load_state_dict(adamw.state_dict())
    adam = Adam(params, lr=0.1)
    adam.step(grads[0])
    with pytest.raises(ValueError, match=r"L2 \(Adam\) weight decay, this one uses decoupled"):
        AdamW(params, lr=0.1).load_state_dict(adam.state_dict())


# ---- one update, one base ---------------------------------------------------------

def test_sgd_step_without_momentum_is_one_fused_node_per_parameter():
    params, grads = random_problem(12)
    new, _ = sgd_step(params, grads[0], lr=0.1)
    for name, p in new.items():
        assert p._op is ops.TABLE["sgd_update"]
        assert p._parents[0] is params[name] and p._parents[1] is grads[0][name]
    lr = t64(0.1, True)
    new, _ = sgd_step(params, grads[0], lr=lr)   # a Tensor rate: still one node, three inputs
    assert all(p._op is ops.TABLE["sgd_update"] and p._parents[2] is lr for p in new.values())


def test_every_inplace_optimizer_is_an_optimizer():
    for cls in (SGD, Adam, AdamW, SGDHD, AdamHD):
        assert issubclass(cls, Optimizer)
    assert issubclass(SGDHD, SGD) and issubclass(AdamHD, Adam) and issubclass(AdamW, Adam)


def test_optimizers_take_a_list_a_generator_or_named_pairs():
    w, b = t64([1.0, 2.0], True), t64([3.0], True)
    assert list(SGD(iter([w, b]), lr=0.1).params) == ["0", "1"]
    named = SGD([("layer.w", w), ("layer.b", b)], lr=0.1)
    assert list(named.params) == ["layer.w", "layer.b"] and named.params["layer.w"] is w


def test_optimizers_reject_a_repeated_tensor_and_integer_parameters():
    w = t64([1.0], True)
    with pytest.raises(ValueError, match="'0' and '1' are the same Tensor"):
        Adam([w, w])
    with pytest.raises(TypeError, match="parameter '0' has dtype int64; it must be floating"):
        SGD([tgm.Tensor(np.array([1, 2]))], lr=0.1)


@pytest.mark.parametrize("make,keys", [
    (lambda p: SGD(p, lr=0.1, momentum=0.5),
     {"hyper.lr", "hyper.momentum", "hyper.weight_decay", "nesterov",
      "momentum_buffer.w", "momentum_buffer.b"}),
    (lambda p: Adam(p, lr=0.1),
     {"hyper.lr", "hyper.betas", "hyper.eps", "hyper.weight_decay", "step", "m.w", "m.b", "v.w", "v.b"}),
    (lambda p: SGDHD(p, lr=0.1),
     {"hyper.lr", "hyper.hypergrad_lr", "lr_history", "nesterov", "previous.w", "previous.b"}),
    (lambda p: AdamHD(p, lr=0.1),
     {"hyper.lr", "hyper.hypergrad_lr", "hyper.betas", "hyper.eps", "lr_history", "step",
      "m.w", "m.b", "v.w", "v.b", "previous.w", "previous.b"})], ids=["SGD", "Adam", "SGDHD", "AdamHD"])
def test_state_dict_keys_are_the_documented_per_parameter_format(make, keys):
    params, grads = random_problem(13)
    opt = make(params)
    opt.step(grads[0])
    sd = opt.state_dict()
    assert set(sd) == keys
    assert sd[sorted(k for k in keys if k.endswith(".w"))[0]].shape == (3, 2)


def test_a_rejected_gradient_takes_no_adam_step():
    params, grads = random_problem(14)
    opt = Adam(params, lr=0.1)
    with pytest.raises(KeyError):
        opt.step({"w": grads[0]["w"]})
    assert opt.state_dict()["step"] == 0
