"""Unrolled hypergradients: reverse mode through T steps of a differentiable optimizer.

Maclaurin et al. 2015 ("Gradient-based hyperparameter optimization through reversible
learning"), Franceschi et al. 2017 ("Forward and reverse gradient-based hyperparameter
optimization"): the training run is T steps of ``optim.sgd_step`` / ``optim.adam_step``
with the hyperparameters (hyperparameters.py) as Tensors, and the validation loss after
it is differentiated with respect to them. Exact for the unrolled run; memory grows
linearly in T (every step's graph is kept), ``truncate=k`` keeps only the last k steps.

>>> import numpy as np, tinygrad_meta as tgm
>>> from tinygrad_meta.meta.hyperopt import make_hyperparameters
>>> x = tgm.Tensor(np.linspace(-1, 1, 8), dtype="float64"); y = 3.0 * x
>>> train = lambda p, step: ((p["w"] * x - y) ** 2).mean()
>>> val = lambda p: ((p["w"] * x - y) ** 2).mean()
>>> hyper = make_hyperparameters(steps=5, lr=0.1, tune=("lr-schedule",))
>>> result = unrolled_hypergradient(train, val, {"w": np.array(0.0)}, hyper, steps=5)
>>> result.hypergrads["log_lr"].shape, bool(result.hypergrads["log_lr"].max() < 0)
((5,), True)
"""
from __future__ import annotations

import numbers
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ... import optim
from ...autograd import enable_grad, grad, no_grad
from ...tensor import Tensor, zeros_like
from .hyperparameters import (check_hyperparameters, flatten_hyperparameters, parameter_groups,
                              scalar_loss, unflatten_hyperparameters)

__all__ = ["unrolled_hypergradient", "evaluate_hyperparameters", "HypergradientResult"]


class _Materialized:
    """The hyperparameters in the form the optimizer steps take (numbers or Tensors)."""

    def __init__(self, hyper, names, groups, detach):
        def get(value):
            if isinstance(value, Tensor):
                return value.detach() if detach else value
            return np.asarray(value, dtype=np.float64)

        log_lr = get(hyper["log_lr"])
        # exp once for the whole schedule; each step then indexes its entry
        self.lr_all = log_lr.exp() if isinstance(log_lr, Tensor) else np.exp(log_lr)
        self.lr_is_schedule = int(np.size(self.lr_all.data if isinstance(self.lr_all, Tensor)
                                          else self.lr_all)) > 1
        self.weight_decay = 0.0
        if "log_weight_decay" in hyper:
            wd = hyper["log_weight_decay"]
            if isinstance(wd, dict):
                per_group = {g: _exp(get(v)) for g, v in wd.items()}
                self.weight_decay = OrderedDict(
                    (name, per_group.get(groups[name], 0.0)) for name in names)
            else:
                self.weight_decay = _exp(get(wd))
        self.momentum = 0.0
        if "logit_momentum" in hyper:
            raw = get(hyper["logit_momentum"])
            self.momentum = (raw.reshape(()).sigmoid() if isinstance(raw, Tensor)
                             else float(1.0 / (1.0 + np.exp(-raw))))
        self.init_scale = None
        if "log_init_scale" in hyper:
            self.init_scale = _exp(get(hyper["log_init_scale"]))

    def lr(self, step):
        lr = self.lr_all
        if self.lr_is_schedule:
            return lr[step]
        return lr.reshape(()) if isinstance(lr, Tensor) else float(np.asarray(lr).reshape(()))


def _exp(value):
    if isinstance(value, Tensor):
        return value.reshape(()).exp() if value.size == 1 else value.exp()
    return float(np.exp(np.asarray(value).reshape(())))


def _initial_params(init_params, hyper_values, dtype, device):
    out = OrderedDict()
    scale = hyper_values.init_scale
    for name, value in init_params.items():
        base = value.detach() if isinstance(value, Tensor) else \
            Tensor(np.asarray(value), dtype=dtype, device=device)
        out[name] = base if scale is None else base * scale
    return out


def _optimizer_step(optimizer, params, grads, values, step, state, betas, eps, nesterov):
    lr = values.lr(step)
    if optimizer == "sgd":
        return optim.sgd_step(params, grads, lr, momentum=values.momentum,
                              weight_decay=values.weight_decay, nesterov=nesterov, state=state)
    beta1 = betas[0] if isinstance(values.momentum, float) and values.momentum == 0.0 else values.momentum
    return optim.adam_step(params, grads, lr, betas=(beta1, betas[1]), eps=eps,
                           weight_decay=values.weight_decay, state=state)


def _train_gradients(train_loss, params, step, create_graph, caller):
    names = list(params)
    loss = scalar_loss(train_loss(params, step), "train_loss", caller)
    if not loss.requires_grad:
        raise ValueError(f"{caller}: train_loss does not depend on the parameters")
    grads = grad(loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True)
    out = OrderedDict()
    for name, g in zip(names, grads):
        out[name] = g if g is not None else zeros_like(params[name])
    return loss, out


def _detach_state(state):
    if state is None:
        return None
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out[key] = OrderedDict((n, t.detach()) for n, t in value.items())
        else:
            out[key] = value
    return out


def _run(train_loss, val_loss, init_params, hyper, steps, optimizer, graph_steps, groups,
         betas, eps, nesterov, dtype, caller):
    """Unroll ``steps`` optimizer steps; only the last ``graph_steps`` record a graph.

    Returns (val_loss Tensor, final params, train losses as 0-d Tensors): no value is read,
    so the run is one array program that ``tgm.compile`` can trace.
    """
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{caller}: steps (T) must be an integer >= 1, got {steps!r}")
    if not isinstance(init_params, dict) or not init_params:
        raise TypeError(f"{caller}: init_params must be a non-empty dict name -> array or Tensor")
    names = list(init_params)
    groups = parameter_groups(names, groups, caller)
    check_hyperparameters(hyper, steps, names, groups, optimizer, caller)
    if optimizer == "adam" and nesterov:
        raise ValueError(f"{caller}: nesterov applies to SGD only")
    detached_phase = steps - graph_steps
    # raw arrays become Tensors on the device the tuned hyperparameters live on
    device = next((v.device for v in flatten_hyperparameters(hyper).values() if isinstance(v, Tensor)),
                  "cpu")
    train_losses = []
    state = None
    with_graph = _Materialized(hyper, names, groups, detach=False) if graph_steps else None
    without_graph = _Materialized(hyper, names, groups, detach=True) if detached_phase else None

    if detached_phase:
        params = _initial_params(init_params, without_graph, dtype, device)
        for step in range(detached_phase):
            with enable_grad():
                leaves = OrderedDict((n, p.detach().requires_grad_(True)) for n, p in params.items())
                loss, grads = _train_gradients(train_loss, leaves, step, False, caller)
            train_losses.append(loss.detach())
            with no_grad():
                params, state = _optimizer_step(optimizer, leaves, grads, without_graph, step,
                                                state, betas, eps, nesterov)
        params = OrderedDict((n, p.detach().requires_grad_(True)) for n, p in params.items())
        state = _detach_state(state)
    else:
        params = _initial_params(init_params, with_graph, dtype, device)
        # the first step differentiates w.r.t. θ₀, which must be part of the graph
        params = OrderedDict((n, p if p.requires_grad else p.detach().requires_grad_(True))
                             for n, p in params.items())
    for step in range(detached_phase, steps):
        # grad() walks only nodes created after θ_t, so each inner gradient costs one step
        loss, grads = _train_gradients(train_loss, params, step, True, caller)
        train_losses.append(loss.detach())
        params, state = _optimizer_step(optimizer, params, grads, with_graph, step, state,
                                        betas, eps, nesterov)
    if graph_steps:
        val = scalar_loss(val_loss(params), "val_loss", caller)
    else:
        with no_grad():
            val = scalar_loss(val_loss(params), "val_loss", caller)
    return val, params, train_losses


@dataclass
class HypergradientResult:
    """What :func:`unrolled_hypergradient` returns.

    ``val_loss``: the validation loss after T steps (float). ``hypergrads``: for each
    tuned (Tensor) hyperparameter, dL_val/d(raw value) as numpy, nested like the input.
    ``params``: the trained parameters (detached Tensors). ``train_losses``: per step.
    """
    val_loss: float
    hypergrads: dict
    params: dict
    train_losses: list = field(default_factory=list)


def unrolled_hypergradient(train_loss, val_loss, init_params, hyperparams, steps, optimizer="sgd",
                           truncate=None, groups=None, betas=(0.9, 0.999), eps=1e-8,
                           nesterov=False, dtype="float64") -> HypergradientResult:
    """Validation loss after T optimizer steps, and its gradient w.r.t. every hyperparameter.

    ``train_loss(params, step) -> scalar Tensor`` (``step`` lets it pick a mini-batch);
    ``val_loss(params) -> scalar Tensor``; ``params`` are dicts name -> Tensor.
    ``init_params``: dict name -> numpy array or Tensor, the starting point (scaled by
    exp(log_init_scale) when that key is present). ``hyperparams``: the raw dict of the
    module docstring; the Tensor entries are differentiated. ``steps``: T >= 1.
    ``optimizer``: "sgd" (momentum = sigmoid(logit_momentum), ``nesterov``) or "adam"
    (beta1 = sigmoid(logit_momentum) when that key is present, else ``betas[0]``).
    ``groups``: parameter name -> weight-decay group (default: one group per parameter).

    ``truncate=k`` (1 <= k <= T): the first T-k steps run without recording a graph and
    the reverse pass goes through the last k steps only, so memory is that of k steps.
    The result is biased: how the hyperparameters shaped θ_{T-k} is ignored, so the
    learning rates of steps before T-k and the initialisation scale get exactly zero
    gradient, and the remaining entries see only the short-horizon effect of a change
    (Wu et al. 2018 show this favours too-small learning rates). ``truncate=T`` (or None)
    is the exact gradient.

    Raises ValueError for T < 1, a loss that is not a scalar, or a tuned hyperparameter
    that does not affect the validation loss (for example momentum with T = 1, where the
    first momentum buffer is the gradient itself, or an empty weight-decay group).

    Example: see the module docstring.
    """
    return hypergradient_result(*unrolled_hypergradient_tensors(
        train_loss, val_loss, init_params, hyperparams, steps, optimizer, truncate, groups, betas,
        eps, nesterov, dtype))


def hypergradient_result(val, hypergrads, params, train_losses) -> HypergradientResult:
    """What :func:`unrolled_hypergradient_tensors` returned, read into a HypergradientResult."""
    return HypergradientResult(
        float(val.item()),
        unflatten_hyperparameters(OrderedDict((k, np.array(g.numpy())) for k, g in hypergrads.items())),
        params, [float(loss.item()) for loss in train_losses])


def unrolled_hypergradient_tensors(train_loss, val_loss, init_params, hyperparams, steps,
                                   optimizer="sgd", truncate=None, groups=None, betas=(0.9, 0.999),
                                   eps=1e-8, nesterov=False, dtype="float64"):
    """:func:`unrolled_hypergradient` without reading a value: ``(val_loss, hypergrads,
    params, train_losses)`` as Tensors (``hypergrads`` flat, key -> Tensor), the array
    program ``HyperOptimizer(compile=True)`` traces."""
    caller = "unrolled_hypergradient"
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{caller}: steps (T) must be an integer >= 1, got {steps!r}")
    if truncate is None:
        truncate = steps
    if not isinstance(truncate, numbers.Integral) or not 1 <= truncate <= steps:
        raise ValueError(f"{caller}: truncate must be an integer in [1, T={steps}], got {truncate!r}")
    if not isinstance(hyperparams, dict):
        raise TypeError(f"{caller}: hyperparams must be a dict (see make_hyperparameters)")
    flat = flatten_hyperparameters(hyperparams)
    tuned = OrderedDict((k, v) for k, v in flat.items() if isinstance(v, Tensor))
    if not tuned:
        raise ValueError(f"{caller}: no hyperparameter is a Tensor, so there is nothing to "
                         "differentiate; pass the ones to tune as Tensors (make_hyperparameters(tune=...))")
    for key, value in tuned.items():
        if not value.requires_grad:
            raise ValueError(f"{caller}: hyperparameter {key!r} is a Tensor that does not require "
                             "grad; create it with requires_grad=True")
        if value.dtype != np.dtype(dtype):
            raise TypeError(f"{caller}: hyperparameter {key!r} has dtype {value.dtype}, but the run "
                            f"uses {dtype}; create it with dtype={dtype!r}")
    val, params, train_losses = _run(train_loss, val_loss, init_params, hyperparams, steps,
                                     optimizer, truncate, groups, betas, eps, nesterov, dtype, caller)
    keys = list(tuned)
    if val.requires_grad:
        grads = grad(val, [tuned[k] for k in keys], allow_unused=True)
    else:
        grads = [None] * len(keys)
    hypergrads = OrderedDict()
    for key, g in zip(keys, grads):
        if g is None:
            # with truncation, θ₀'s scale (and anything acting only before T-k) is cut off
            if truncate < steps and key == "log_init_scale":
                g = zeros_like(tuned[key])
            else:
                raise ValueError(
                    f"{caller}: hyperparameter {key!r} does not affect the validation loss "
                    f"(optimizer={optimizer!r}, T={steps}, truncate={truncate}); remove it or hold it "
                    "fixed (a plain number). Momentum has no effect when T = 1.")
        hypergrads[key] = g
    return val.detach(), hypergrads, OrderedDict((n, p.detach()) for n, p in params.items()), \
        train_losses


def evaluate_hyperparameters(train_loss, val_loss, init_params, hyperparams, steps, optimizer="sgd",
                             groups=None, betas=(0.9, 0.999), eps=1e-8, nesterov=False,
                             dtype="float64"):
    """``(val_loss, final params, train losses)`` of the training run, recording no graph.

    Same arguments as :func:`unrolled_hypergradient`; Tensor hyperparameters are read,
    not differentiated. What finite differences, grid searches and reports call.
    """
    val, params, train_losses = _run(train_loss, val_loss, init_params, hyperparams, steps,
                                     optimizer, 0, groups, betas, eps, nesterov, dtype,
                                     "evaluate_hyperparameters")
    return float(val.item()), params, [float(loss.item()) for loss in train_losses]
