"""The hyperparameter format: a dict of raw (unconstrained) values, one key per kind.

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
dict from ordinary values; the checks here are shared by both hypergradient methods.

>>> h = make_hyperparameters(3, lr=0.1, weight_decay=1e-3, tune=("lr-schedule",))
>>> list(h), h["log_lr"].shape, round(hyperparameter_values(h)["weight_decay"], 12)
(['log_lr', 'log_weight_decay'], (3,), 0.001)
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import numpy as np

from ...tensor import Tensor

__all__ = ["HYPER_KINDS", "make_hyperparameters", "hyperparameter_values",
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


def as_numpy(value):
    """A hyperparameter value (Tensor, number or array) as a numpy array."""
    return np.array(value.numpy()) if isinstance(value, Tensor) else np.asarray(value, dtype=np.float64)


def hyperparameter_values(hyper):
    """Human-readable values: ``{"lr": array (T,) or float, "weight_decay": float or dict,
    "momentum": float, "init_scale": float}`` for the keys present."""
    out = OrderedDict()
    for key, value in hyper.items():
        if key == "log_lr":
            lr = np.exp(as_numpy(value))
            out["lr"] = lr if lr.ndim else float(lr)
        elif key == "log_weight_decay":
            if isinstance(value, dict):
                out["weight_decay"] = OrderedDict((g, float(np.exp(as_numpy(v)))) for g, v in value.items())
            else:
                out["weight_decay"] = float(np.exp(as_numpy(value)))
        elif key == "logit_momentum":
            out["momentum"] = float(1.0 / (1.0 + np.exp(-as_numpy(value))))
        elif key == "log_init_scale":
            out["init_scale"] = float(np.exp(as_numpy(value)))
    return out


# ----------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------

def check_hyperparameters(hyper, steps, names, groups, optimizer, caller):
    """Raise (naming ``caller``) unless ``hyper`` is a valid raw dict for a run of ``steps``
    steps of ``optimizer`` ("sgd" or "adam") over parameters ``names`` in ``groups``."""
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
        if key in hyper and np.size(as_numpy(hyper[key])) != 1:
            raise ValueError(f"{caller}: {key!r} must be a scalar, got shape {np.shape(as_numpy(hyper[key]))}")
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


def parameter_groups(names, groups, caller):
    """The weight-decay group of each parameter name (default: each its own group)."""
    if groups is None:
        return OrderedDict((name, name) for name in names)
    missing = [name for name in names if name not in groups]
    if missing:
        raise KeyError(f"{caller}: groups has no entry for parameter(s) {missing}")
    extra = [name for name in groups if name not in names]
    if extra:
        raise KeyError(f"{caller}: groups names unknown parameter(s) {extra}; parameters are {list(names)}")
    return OrderedDict((name, groups[name]) for name in names)


def scalar_loss(loss, what, caller):
    """``loss`` as a 0-d Tensor; a TypeError / ValueError naming ``what`` otherwise."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"{caller}: {what} must return a Tensor, got {type(loss).__name__}")
    if loss.size != 1:
        raise ValueError(f"{caller}: {what} must return a scalar loss, got shape {loss.shape}; "
                         "reduce it (e.g. .mean()) first")
    return loss.reshape(()) if loss.shape != () else loss
