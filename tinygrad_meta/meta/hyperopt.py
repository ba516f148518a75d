"""Hyperparameter meta-optimization: gradients of a validation loss w.r.t. hyperparameters.

Three ways to get such a hypergradient live here:

* :func:`unrolled_hypergradient` -- reverse mode through T steps of a differentiable
  optimizer (``optim.sgd_step`` / ``optim.adam_step``), as in Maclaurin et al. 2015
  ("Gradient-based hyperparameter optimization through reversible learning") and
  Franceschi et al. 2017 ("Forward and reverse gradient-based hyperparameter
  optimization"). Exact for the unrolled training run; memory grows linearly in T
  (every step's graph is kept), ``truncate=k`` keeps only the last k steps.
* :func:`implicit_hypergradient` -- the implicit function theorem at a (near) optimum
  θ*(λ) of the training loss: dL_val/dλ = -∂²L_train/∂λ∂θ · H⁻¹ ∂L_val/∂θ, with
  H⁻¹ applied by conjugate gradient on Hessian-vector products (``tgm.hvp``). No
  trajectory is stored, so memory does not depend on how long training ran.
* :class:`HyperOptimizer` -- an outer loop that runs Adam on the hyperparameters with
  unrolled hypergradients, with history, progress bar and checkpoint/resume.

Hyperparameters are held in an unconstrained ("raw") space, in a dict with these keys
(every key optional except ``log_lr``; each value is a Tensor to tune it, or a plain
number / numpy array to hold it fixed):

=================  ===============================  =====================================
key                value                            meaning
=================  ===============================  =====================================
``log_lr``         shape (T,) or ()                 learning rate of step t: exp(log_lr[t])
``log_weight_decay`` scalar, or dict group -> scalar  L2 weight decay exp(.) per group
``logit_momentum`` scalar                           SGD momentum sigmoid(.); Adam's beta1
``log_init_scale`` scalar                           θ₀ = exp(.) · init_params
=================  ===============================  =====================================

Parameter groups (for weight decay) map each parameter name to a group name; by
default every parameter is its own group. :func:`make_hyperparameters` builds such a
dict from ordinary values.

>>> import numpy as np, tinygrad_meta as tgm
>>> x = tgm.Tensor(np.linspace(-1, 1, 8), dtype="float64"); y = 3.0 * x
>>> train = lambda p, step: ((p["w"] * x - y) ** 2).mean()
>>> val = lambda p: ((p["w"] * x - y) ** 2).mean()
>>> hyper = make_hyperparameters(steps=5, lr=0.1, tune=("lr-schedule",))
>>> result = unrolled_hypergradient(train, val, {"w": np.array(0.0)}, hyper, steps=5)
>>> result.hypergrads["log_lr"].shape, bool(result.hypergrads["log_lr"].max() < 0)
((5,), True)
"""
from __future__ import annotations

import math
import numbers
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..autograd import enable_grad, grad, no_grad
from ..derivatives import hvp
from ..tensor import Tensor, zeros_like
from .. import optim

__all__ = ["HYPER_KINDS", "make_hyperparameters", "hyperparameter_values",
           "unrolled_hypergradient", "evaluate_hyperparameters", "HypergradientResult",
           "implicit_hypergradient", "ImplicitResult", "HyperOptimizer",
           "flatten_hyperparameters", "unflatten_hyperparameters"]

# command-line names of the hyperparameter kinds -> raw key
HYPER_KINDS = OrderedDict([
    ("lr-schedule", "log_lr"),
    ("weight-decay", "log_weight_decay"),
    ("momentum", "logit_momentum"),
    ("init-scale", "log_init_scale"),
])
_RAW_KEYS = tuple(HYPER_KINDS.values())
_OPTIMIZERS = ("sgd", "adam")


# ----------------------------------------------------------------------------------
# Building, flattening and reading hyperparameter dicts
# ----------------------------------------------------------------------------------

def make_hyperparameters(steps, lr=0.1, weight_decay=None, momentum=None, init_scale=None,
                         groups=None, tune=("lr-schedule",), dtype="float64", device="cpu"):
    """A raw hyperparameter dict (see the module docstring) from ordinary values.

    ``steps``: T, the length of the learning-rate schedule. ``lr``: a number (constant
    start) or a length-T sequence. ``weight_decay``: a number, or a dict group -> number;
    None leaves it out (no decay). ``momentum`` (in (0, 1)) and ``init_scale`` (> 0):
    numbers or None. ``groups``: group names to give each its own copy of a single
    ``weight_decay`` number (None: one scalar shared by every parameter).
    ``tune``: the kinds (names of ``HYPER_KINDS``) returned as Tensors requiring grad;
    the others are returned as fixed numpy values. ``dtype``, ``device``: of the tuned Tensors.

    >>> h = make_hyperparameters(3, lr=0.1, momentum=0.9, tune=("lr-schedule", "momentum"))
    >>> h["log_lr"].shape, round(float(h["logit_momentum"].item()), 4)
    ((3,), 2.1972)
    """
    if not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"make_hyperparameters: steps must be an integer >= 1, got {steps!r}")
    unknown = [kind for kind in tune if kind not in HYPER_KINDS]
    if unknown:
        raise ValueError(f"make_hyperparameters: unknown hyperparameter kind(s) {unknown}; "
                         f"choose from {list(HYPER_KINDS)}")
    lr = np.asarray(lr, dtype=np.float64)
    if lr.ndim == 0:
        lr = np.full(steps, float(lr))
    if lr.shape != (steps,) or np.any(lr <= 0):
        raise ValueError(f"make_hyperparameters: lr must be a positive number or {steps} positive "
                         f"values, got shape {lr.shape}")

    def wrap(kind, value):
        value = np.asarray(value, dtype=np.float64)
        if kind in tune:
            return Tensor(value, dtype=dtype, device=device, requires_grad=True)
        return value

    raw = OrderedDict()
    raw["log_lr"] = wrap("lr-schedule", np.log(lr))
    if "weight-decay" in tune and weight_decay is None:
        raise ValueError("make_hyperparameters: tuning weight-decay needs a starting weight_decay")
    if weight_decay is not None:
        if isinstance(weight_decay, dict):
            bad = {g: w for g, w in weight_decay.items() if not w > 0}
            if bad:
                raise ValueError(f"make_hyperparameters: weight decay must be > 0 (log space), got {bad}")
            raw["log_weight_decay"] = OrderedDict(
                (group, wrap("weight-decay", math.log(w))) for group, w in weight_decay.items())
        elif groups is not None:
            raw["log_weight_decay"] = OrderedDict(
                (group, wrap("weight-decay", math.log(weight_decay))) for group in groups)
        else:
            if not weight_decay > 0:
                raise ValueError(f"make_hyperparameters: weight decay must be > 0, got {weight_decay}")
            raw["log_weight_decay"] = wrap("weight-decay", math.log(weight_decay))
    for kind, key, value, convert in (
            ("momentum", "logit_momentum", momentum, lambda m: math.log(m / (1.0 - m))),
            ("init-scale", "log_init_scale", init_scale, math.log)):
        if value is None:
            if kind in tune:
                raise ValueError(f"make_hyperparameters: tuning {kind} needs a starting value")
            continue
        if kind == "momentum" and not 0.0 < value < 1.0:
            raise ValueError(f"make_hyperparameters: momentum must lie in (0, 1), got {value}")
        if kind == "init-scale" and not value > 0:
            raise ValueError(f"make_hyperparameters: init_scale must be > 0, got {value}")
        raw[key] = wrap(kind, convert(value))
    return raw


def flatten_hyperparameters(hyper):
    """``OrderedDict`` flat key -> value: nested weight-decay groups become
    ``"log_weight_decay/<group>"``."""
    flat = OrderedDict()
    for key, value in hyper.items():
        if isinstance(value, dict):
            for group, item in value.items():
                flat[f"{key}/{group}"] = item
        else:
            flat[key] = value
    return flat


def unflatten_hyperparameters(flat):
    """The inverse of :func:`flatten_hyperparameters`."""
    hyper = OrderedDict()
    for key, value in flat.items():
        top, sep, group = key.partition("/")
        if sep:
            hyper.setdefault(top, OrderedDict())[group] = value
        else:
            hyper[key] = value
    return hyper


def _numpy(value):
    return np.array(value.numpy()) if isinstance(value, Tensor) else np.asarray(value, dtype=np.float64)


def hyperparameter_values(hyper):
    """Human-readable values: ``{"lr": array (T,) or float, "weight_decay": float or dict,
    "momentum": float, "init_scale": float}`` for the keys present."""
    out = OrderedDict()
    for key, value in hyper.items():
        if key == "log_lr":
            lr = np.exp(_numpy(value))
            out["lr"] = lr if lr.ndim else float(lr)
        elif key == "log_weight_decay":
            if isinstance(value, dict):
                out["weight_decay"] = OrderedDict((g, float(np.exp(_numpy(v)))) for g, v in value.items())
            else:
                out["weight_decay"] = float(np.exp(_numpy(value)))
        elif key == "logit_momentum":
            out["momentum"] = float(1.0 / (1.0 + np.exp(-_numpy(value))))
        elif key == "log_init_scale":
            out["init_scale"] = float(np.exp(_numpy(value)))
    return out


# ----------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------

def _check_hyper(hyper, steps, names, groups, optimizer, caller):
    if not isinstance(hyper, dict):
        raise TypeError(f"{caller}: hyperparams must be a dict (see make_hyperparameters), "
                        f"got {type(hyper).__name__}")
    unknown = [key for key in hyper if key not in _RAW_KEYS]
    if unknown:
        raise KeyError(f"{caller}: unknown hyperparameter key(s) {unknown}; allowed: {list(_RAW_KEYS)}")
    if "log_lr" not in hyper:
        raise KeyError(f"{caller}: hyperparams needs 'log_lr' (the learning rate in log space)")
    lr_shape = tuple(np.shape(hyper["log_lr"].data if isinstance(hyper["log_lr"], Tensor)
                              else hyper["log_lr"]))
    if lr_shape not in ((), (steps,), (1,)):
        raise ValueError(f"{caller}: 'log_lr' has shape {lr_shape}; a schedule for {steps} steps "
                         f"needs shape ({steps},), or () for one constant learning rate")
    for key in ("logit_momentum", "log_init_scale"):
        if key in hyper and np.size(_numpy(hyper[key])) != 1:
            raise ValueError(f"{caller}: {key!r} must be a scalar, got shape {np.shape(_numpy(hyper[key]))}")
    wd = hyper.get("log_weight_decay")
    if isinstance(wd, dict):
        used = set(groups.values())
        dead = [group for group in wd if group not in used]
        if dead:
            raise ValueError(
                f"{caller}: weight-decay group(s) {dead} contain no parameter, so they cannot "
                f"affect the validation loss; parameter groups are {sorted(used)}")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"{caller}: optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")


def _groups_for(names, groups, caller):
    if groups is None:
        return OrderedDict((name, name) for name in names)
    missing = [name for name in names if name not in groups]
    if missing:
        raise KeyError(f"{caller}: groups has no entry for parameter(s) {missing}")
    extra = [name for name in groups if name not in names]
    if extra:
        raise KeyError(f"{caller}: groups names unknown parameter(s) {extra}; parameters are {list(names)}")
    return OrderedDict((name, groups[name]) for name in names)


def _scalar(loss, what, caller):
    if not isinstance(loss, Tensor):
        raise TypeError(f"{caller}: {what} must return a Tensor, got {type(loss).__name__}")
    if loss.size != 1:
        raise ValueError(f"{caller}: {what} must return a scalar loss, got shape {loss.shape}; "
                         "reduce it (e.g. .mean()) first")
    return loss.reshape(()) if loss.shape != () else loss


# ----------------------------------------------------------------------------------
# The unrolled training run
# ----------------------------------------------------------------------------------

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
    loss = _scalar(train_loss(params, step), "train_loss", caller)
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

    Returns (val_loss Tensor, final params, train losses).
    """
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{caller}: steps (T) must be an integer >= 1, got {steps!r}")
    if not isinstance(init_params, dict) or not init_params:
        raise TypeError(f"{caller}: init_params must be a non-empty dict name -> array or Tensor")
    names = list(init_params)
    groups = _groups_for(names, groups, caller)
    _check_hyper(hyper, steps, names, groups, optimizer, caller)
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
            train_losses.append(float(loss.item()))
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
        train_losses.append(float(loss.item()))
        params, state = _optimizer_step(optimizer, params, grads, with_graph, step, state,
                                        betas, eps, nesterov)
    if graph_steps:
        val = _scalar(val_loss(params), "val_loss", caller)
    else:
        with no_grad():
            val = _scalar(val_loss(params), "val_loss", caller)
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
        hypergrads[key] = np.array(g.numpy())
    return HypergradientResult(float(val.item()), unflatten_hyperparameters(hypergrads),
                               OrderedDict((n, p.detach()) for n, p in params.items()), train_losses)


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
    return float(val.item()), params, train_losses


# ----------------------------------------------------------------------------------
# Implicit hypergradients
# ----------------------------------------------------------------------------------

@dataclass
class ImplicitResult:
    """What :func:`implicit_hypergradient` returns: ``hypergrads`` (numpy, per key),
    ``val_loss`` (float), CG ``iterations``, final relative ``residual``, ``converged``."""
    hypergrads: dict
    val_loss: float
    iterations: int
    residual: float
    converged: bool


def _dot(xs, ys):
    return sum(float((x * y).sum()) for x, y in zip(xs, ys))


def implicit_hypergradient(train_loss, val_loss, params, hyperparams, damping=0.0, cg_iters=100,
                           tol=1e-10) -> ImplicitResult:
    """Hypergradient at a (near) optimum of the training loss, by the implicit function theorem.

    At θ* with ∂L_train/∂θ(θ*, λ) = 0, dθ*/dλ = -H⁻¹ ∂²L_train/∂θ∂λ, so
    dL_val/dλ = -∂²L_train/∂λ∂θ · v with v = H⁻¹ ∂L_val/∂θ (H the training Hessian).
    v is found by conjugate gradient on Hessian-vector products (``tgm.hvp``), and the
    mixed term by differentiating (∂L_train/∂θ · v) w.r.t. λ; no training trajectory
    is needed, only the end point.

    ``train_loss(params, hyperparams) -> scalar``: the training objective, in which the
    hyperparameters appear (e.g. a penalty exp(λ)·||θ||²/2). ``val_loss(params)``.
    ``params``: dict name -> Tensor, the trained (converged) parameters.
    ``hyperparams``: dict name -> Tensor requiring grad (nested one level allowed).
    ``damping``: solve (H + damping·I) v = ∂L_val/∂θ instead, which regularises a
    singular or indefinite H (biasing the result). CG stops when the residual is below
    ``tol`` relative to ∂L_val/∂θ, or after ``cg_iters`` iterations, then warns
    (RuntimeWarning) that the result is approximate.

    The answer is exact only at an exact optimum; away from it the error is of the
    order of the remaining training gradient.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.array([1.0, 2.0]), dtype="float64")
    >>> lam = {"log_wd": tgm.Tensor(0.0, dtype="float64", requires_grad=True)}
    >>> train = lambda p, h: ((p["w"] * x - x) ** 2).sum() / 2 + h["log_wd"].exp() * (p["w"] ** 2) / 2
    >>> w_star = 5.0 / 6.0   # argmin: (sum x^2) w / (sum x^2 + 1)
    >>> res = implicit_hypergradient(train, lambda p: (p["w"] - 1.0) ** 2,
    ...                              {"w": tgm.Tensor(w_star, dtype="float64")}, lam)
    >>> round(float(res.hypergrads["log_wd"]), 6)  # d/dλ (5/(5+e^λ) - 1)^2 at λ=0
    0.046296
    """
    caller = "implicit_hypergradient"
    if not isinstance(params, dict) or not params:
        raise TypeError(f"{caller}: params must be a non-empty dict name -> Tensor")
    if damping < 0:
        raise ValueError(f"{caller}: damping must be >= 0, got {damping}")
    if cg_iters < 1:
        raise ValueError(f"{caller}: cg_iters must be >= 1, got {cg_iters}")
    flat = flatten_hyperparameters(hyperparams)
    for key, value in flat.items():
        if not isinstance(value, Tensor) or not value.requires_grad:
            raise ValueError(f"{caller}: hyperparameter {key!r} must be a Tensor that requires grad")
    names = list(params)
    theta = [params[n].detach().requires_grad_(True) for n in names]

    def as_dict(tensors):
        return OrderedDict(zip(names, tensors))

    val = _scalar(val_loss(as_dict(theta)), "val_loss", caller)
    val_grads = grad(val, theta, allow_unused=True)
    b = [t._be.xp.zeros(t.shape, dtype=t.data.dtype) if g is None else g.data
         for g, t in zip(val_grads, theta)]

    # the same structure as given, detached: H is taken at fixed hyperparameters
    fixed_hyper = OrderedDict(
        (k, OrderedDict((g, t.detach()) for g, t in v.items()) if isinstance(v, dict) else v.detach())
        for k, v in hyperparams.items())

    def train_of_theta(*tensors):
        return _scalar(train_loss(as_dict(list(tensors)), fixed_hyper), "train_loss", caller)

    def apply(vector):
        hv = _hvp_list(train_of_theta, theta, vector)
        if damping:
            hv = [h + damping * v for h, v in zip(hv, vector)]
        return hv

    # conjugate gradient for (H + damping I) v = b, on raw arrays
    v = [x * 0 for x in b]
    r = [x.copy() for x in b]
    p = [x.copy() for x in r]
    b_norm = math.sqrt(_dot(b, b))
    rr = _dot(r, r)
    iterations, converged = 0, b_norm == 0.0
    while not converged and iterations < cg_iters:
        hp = apply(p)
        curvature = _dot(p, hp)
        if curvature <= 0:
            warnings.warn(
                f"{caller}: the training Hessian is not positive definite along a CG direction "
                f"(pᵀHp = {curvature:.3g}); increase damping", RuntimeWarning, stacklevel=2)
            break
        alpha = rr / curvature
        v = [x + alpha * y for x, y in zip(v, p)]
        r = [x - alpha * y for x, y in zip(r, hp)]
        rr_new = _dot(r, r)
        iterations += 1
        if math.sqrt(rr_new) <= tol * b_norm:
            converged = True
            rr = rr_new
            break
        p = [x + (rr_new / rr) * y for x, y in zip(r, p)]
        rr = rr_new
    residual = math.sqrt(rr) / b_norm if b_norm else 0.0
    if not converged:
        warnings.warn(
            f"{caller}: conjugate gradient did not converge in {iterations} iterations "
            f"(relative residual {residual:.3g} > tol {tol:g}); the hypergradient is approximate. "
            "Raise cg_iters, or add damping for an ill-conditioned Hessian", RuntimeWarning, stacklevel=2)

    # mixed term: d/dλ (∂L_train/∂θ · v), with v held constant
    keys = list(flat)
    loss = _scalar(train_loss(as_dict(theta), hyperparams), "train_loss", caller)
    train_grads = grad(loss, theta, create_graph=True, allow_unused=True)
    dot = None
    for g, vec, t in zip(train_grads, v, theta):
        if g is None or not g.requires_grad:
            continue
        term = (g * Tensor(vec, dtype=t.dtype, device=t.device)).sum()
        dot = term if dot is None else dot + term
    mixed = grad(dot, [flat[k] for k in keys], allow_unused=True) if dot is not None else [None] * len(keys)
    flat_grads = OrderedDict()
    for key, m in zip(keys, mixed):
        if m is None:
            raise ValueError(f"{caller}: hyperparameter {key!r} does not affect the training "
                             "gradient, so it cannot move the optimum or the validation loss")
        flat_grads[key] = -np.array(m.numpy())
    # shaped like the input: nested groups stay nested, flat keys stay flat
    hypergrads = OrderedDict(
        (k, OrderedDict((g, flat_grads[f"{k}/{g}"]) for g in v) if isinstance(v, dict) else flat_grads[k])
        for k, v in hyperparams.items())
    return ImplicitResult(hypergrads, float(val.item()), iterations, residual, converged)


def _hvp_list(f, theta, vector):
    dtype = theta[0].dtype
    result = hvp(f, [t.detach() for t in theta],
                 [Tensor(x, dtype=dtype, device=t.device) for x, t in zip(vector, theta)])
    return [r.data.copy() for r in result]  # raw arrays, on the parameters' device


# ----------------------------------------------------------------------------------
# The outer loop
# ----------------------------------------------------------------------------------

class HyperOptimizer:
    """Meta-optimise hyperparameters with Adam on unrolled hypergradients.

    ``train_loss``, ``val_loss``, ``init_params``, ``steps``, ``optimizer``, ``truncate``,
    ``groups``, ``betas``, ``eps``, ``nesterov``, ``dtype``: as for
    :func:`unrolled_hypergradient`. ``hyperparams``: the raw dict; its Tensor entries are
    the leaves Adam updates in place (``self.hyperparams`` always holds the current
    values). ``meta_lr``: Adam's step size in the raw (log / logit) space, so 0.05 is
    about a 5% multiplicative change of a learning rate per outer step. ``clip``: when
    set, each hypergradient entry is clipped to [-clip, clip] before Adam sees it, a
    guard against the exploding hypergradients of a chaotic (too long, too fast) unroll.

    ``history``: dict of lists, one entry per outer step: ``"val_loss"`` (before the
    update), ``"hypergrad_norm"``, ``"seconds"``, and ``"lr"`` (the schedule before the
    update). ``run(iters, checkpoint=path)`` saves an atomic checkpoint every
    ``checkpoint_every`` steps and at the end; ``HyperOptimizer(...).load(path)``
    resumes from it exactly (the hypergradient is deterministic given the state).

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.linspace(-1, 1, 8), dtype="float64"); y = 3.0 * x
    >>> loss = lambda p, *step: ((p["w"] * x - y) ** 2).mean()
    >>> opt = HyperOptimizer(loss, loss, {"w": np.array(0.0)},
    ...                      make_hyperparameters(4, lr=0.01), steps=4, meta_lr=0.1)
    >>> history = opt.run(5, progress=False)
    >>> history["val_loss"][-1] < history["val_loss"][0]
    True
    """

    def __init__(self, train_loss, val_loss, init_params, hyperparams, steps, optimizer="sgd",
                 meta_lr=0.05, meta_betas=(0.9, 0.999), truncate=None, groups=None,
                 betas=(0.9, 0.999), eps=1e-8, nesterov=False, dtype="float64", clip=None):
        self.train_loss, self.val_loss = train_loss, val_loss
        self.init_params = init_params
        self.hyperparams = hyperparams
        self.steps, self.optimizer, self.truncate = steps, optimizer, truncate
        self.groups, self.betas, self.eps, self.nesterov, self.dtype = groups, betas, eps, nesterov, dtype
        if not meta_lr > 0:
            raise ValueError(f"HyperOptimizer: meta_lr must be > 0, got {meta_lr}")
        self.meta_lr, self.meta_betas, self.clip = float(meta_lr), tuple(meta_betas), clip
        self._leaves = OrderedDict((k, v) for k, v in flatten_hyperparameters(hyperparams).items()
                                   if isinstance(v, Tensor))
        if not self._leaves:
            raise ValueError("HyperOptimizer: no hyperparameter is a Tensor, nothing to optimise")
        self.state = None  # the outer Adam's state
        self.iteration = 0
        self.history = {"val_loss": [], "hypergrad_norm": [], "seconds": [], "lr": []}

    def hypergradient(self) -> HypergradientResult:
        """The unrolled hypergradient at the current hyperparameters."""
        return unrolled_hypergradient(
            self.train_loss, self.val_loss, self.init_params, self.hyperparams, self.steps,
            optimizer=self.optimizer, truncate=self.truncate, groups=self.groups, betas=self.betas,
            eps=self.eps, nesterov=self.nesterov, dtype=self.dtype)

    def evaluate(self) -> float:
        """The validation loss at the current hyperparameters (no graph recorded)."""
        return evaluate_hyperparameters(
            self.train_loss, self.val_loss, self.init_params, self.hyperparams, self.steps,
            optimizer=self.optimizer, groups=self.groups, betas=self.betas, eps=self.eps,
            nesterov=self.nesterov, dtype=self.dtype)[0]

    def step(self) -> float:
        """One outer step: hypergradient, then Adam on the raw hyperparameters.
        Returns the validation loss before the update."""
        start = time.perf_counter()
        lr_before = hyperparameter_values(self.hyperparams)["lr"]
        result = self.hypergradient()
        flat_grads = flatten_hyperparameters(result.hypergrads)
        grads = OrderedDict()
        for key, leaf in self._leaves.items():
            g = np.asarray(flat_grads[key], dtype=leaf.dtype)
            if not np.all(np.isfinite(g)):
                raise FloatingPointError(
                    f"HyperOptimizer: the hypergradient of {key!r} is not finite at outer step "
                    f"{self.iteration} (val loss {result.val_loss:g}); lower the learning rate or "
                    "meta_lr, or use truncate")
            if self.clip is not None:
                g = np.clip(g, -self.clip, self.clip)
            grads[key] = Tensor(g, dtype=leaf.dtype, device=leaf.device)
        with no_grad():
            current = OrderedDict((k, v.detach()) for k, v in self._leaves.items())
            new, self.state = optim.adam_step(current, grads, self.meta_lr, betas=self.meta_betas,
                                              state=self.state)
        for key, leaf in self._leaves.items():
            leaf.data = new[key].data.astype(leaf.data.dtype, copy=False)
        self.iteration += 1
        norm = math.sqrt(sum(float((g.data ** 2).sum()) for g in grads.values()))
        self.history["val_loss"].append(result.val_loss)
        self.history["hypergrad_norm"].append(norm)
        self.history["seconds"].append(time.perf_counter() - start)
        self.history["lr"].append(np.atleast_1d(np.asarray(lr_before, dtype=np.float64)).tolist())
        return result.val_loss

    def run(self, outer_iters, progress=True, checkpoint=None, checkpoint_every=10):
        """Run until ``outer_iters`` outer steps have been taken in total (a resumed run
        continues from ``self.iteration``). Returns ``history``."""
        if outer_iters < 0:
            raise ValueError(f"HyperOptimizer.run: outer_iters must be >= 0, got {outer_iters}")
        remaining = range(self.iteration, outer_iters)
        bar = None
        if progress:
            try:
                from tqdm import tqdm
                bar = tqdm(total=outer_iters, initial=self.iteration, desc="hyperopt", leave=False)
            except ImportError:  # tqdm is optional for the library
                bar = None
        try:
            for _ in remaining:
                val = self.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(val_loss=f"{val:.4f}")
                if checkpoint is not None and (self.iteration % checkpoint_every == 0
                                               or self.iteration == outer_iters):
                    self.save(checkpoint)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    # ---- checkpointing --------------------------------------------------------
    def _config(self):
        return {"steps": int(self.steps), "optimizer": self.optimizer,
                "truncate": None if self.truncate is None else int(self.truncate),
                "keys": list(self._leaves), "meta_lr": self.meta_lr}

    def save(self, path):
        """Write hyperparameters, outer Adam state, iteration and history atomically (.npz)."""
        from ..checkpoint import save_checkpoint
        values = OrderedDict((k, np.array(v.numpy())) for k, v in self._leaves.items())
        state = None
        if self.state is not None:
            state = {"step": int(self.state["step"]),
                     "m": {k: np.array(t.numpy()) for k, t in self.state["m"].items()},
                     "v": {k: np.array(t.numpy()) for k, t in self.state["v"].items()}}
        history = {key: [np.asarray(x, dtype=np.float64) for x in items]
                   for key, items in self.history.items()}
        return save_checkpoint(path, values, optimizer_state=state, iteration=self.iteration,
                               config=self._config(), extra={"history": history})

    def load(self, path):
        """Resume from :meth:`save`'s file; checks that it belongs to the same problem setup."""
        from ..checkpoint import CheckpointError, load_checkpoint
        ckpt = load_checkpoint(path)
        mine = self._config()
        for key in ("steps", "optimizer", "truncate", "keys"):
            if ckpt.config.get(key) != mine[key]:
                raise CheckpointError(
                    f"HyperOptimizer.load: checkpoint {ckpt.path} has {key}={ckpt.config.get(key)!r}, "
                    f"this run has {mine[key]!r}")
        for key, leaf in self._leaves.items():
            value = np.asarray(ckpt.params[key])
            if value.shape != leaf.shape:
                raise CheckpointError(f"HyperOptimizer.load: {key!r} has shape {value.shape} in "
                                      f"{ckpt.path}, expected {leaf.shape}")
            leaf.data = leaf._be.asarray(value, dtype=leaf.data.dtype)
        if ckpt.optimizer_state is None:
            self.state = None
        else:
            st = ckpt.optimizer_state
            self.state = {
                "step": int(st["step"]),
                "m": OrderedDict((k, Tensor(np.asarray(st["m"][k]), dtype=leaf.dtype, device=leaf.device))
                                 for k, leaf in self._leaves.items()),
                "v": OrderedDict((k, Tensor(np.asarray(st["v"][k]), dtype=leaf.dtype, device=leaf.device))
                                 for k, leaf in self._leaves.items())}
        self.iteration = ckpt.iteration
        history = ckpt.extra.get("history", {})
        self.history = {key: [] for key in self.history}
        for key in self.history:
            for item in history.get(key, []):
                item = np.asarray(item)
                self.history[key].append(item.tolist() if item.ndim else float(item))
        return self
