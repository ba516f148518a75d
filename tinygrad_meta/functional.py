"""Functional ops on Tensors: activations, softmax family and losses.

Each function with a numerically delicate forward (softmax, log_softmax, logsumexp)
is a primitive with its own backward rule written in Tensor ops, so it stays stable
for inputs of magnitude 1e4 and is still differentiable to any order.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, _make, _normalize_axis, _keepdims_shape

__all__ = ["relu", "tanh", "sigmoid", "exp", "log", "softmax", "log_softmax", "logsumexp",
           "cross_entropy", "mse_loss"]


def _tensor(x, name):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    return x


def relu(x):
    """max(x, 0) elementwise."""
    return _tensor(x, "relu").relu()


def tanh(x):
    return _tensor(x, "tanh").tanh()


def sigmoid(x):
    return _tensor(x, "sigmoid").sigmoid()


def exp(x):
    return _tensor(x, "exp").exp()


def log(x):
    return _tensor(x, "log").log()


def _single_axis(x, axis, name):
    return _normalize_axis(axis, x.ndim, name)


def _softmax_rule(out, g):
    axes = out._ctx
    return (out * (g - (g * out).sum(axis=axes, keepdims=True)),)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, computed stably."""
    x = _tensor(x, "softmax")
    axes = _single_axis(x, axis, "softmax")
    xp = x._be.xp
    shifted = xp.exp(x.data - x.data.max(axis=axes, keepdims=True))
    data = shifted / shifted.sum(axis=axes, keepdims=True)
    return _make(data, x._be, (x,), _softmax_rule, axes)


def _log_softmax_rule(out, g):
    axes = out._ctx
    return (g - out.exp() * g.sum(axis=axes, keepdims=True),)


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along ``axis``, computed stably."""
    x = _tensor(x, "log_softmax")
    axes = _single_axis(x, axis, "log_softmax")
    xp = x._be.xp
    shifted = x.data - x.data.max(axis=axes, keepdims=True)
    data = shifted - xp.log(xp.exp(shifted).sum(axis=axes, keepdims=True))
    return _make(data, x._be, (x,), _log_softmax_rule, axes)


def _logsumexp_rule(out, g):
    (x,) = out._parents
    axes, keepdims = out._ctx
    kept_shape = _keepdims_shape(x.shape, axes)
    if not keepdims:
        g = g.reshape(kept_shape)
        out = out.reshape(kept_shape)
    return (g * (x - out).exp(),)


def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) over ``axis``, stable for large inputs (shifts by the max)."""
    x = _tensor(x, "logsumexp")
    axes = _normalize_axis(axis, x.ndim, "logsumexp")
    xp = x._be.xp
    peak = x.data.max(axis=axes, keepdims=True)
    peak = xp.where(xp.isfinite(peak), peak, 0)
    data = xp.log(xp.exp(x.data - peak).sum(axis=axes, keepdims=True)) + peak
    if not keepdims:
        data = data.reshape([n for i, n in enumerate(data.shape) if axes is not None and i not in axes])
    return _make(data, x._be, (x,), _logsumexp_rule, (axes, keepdims))


def cross_entropy(logits, labels):
    """Mean negative log-likelihood of integer ``labels`` under softmax(``logits``).

    ``logits``: shape (..., C). ``labels``: integers in [0, C) with shape (...).
    """
    logits = _tensor(logits, "cross_entropy")
    xp = logits._be.xp
    labels = labels.data if isinstance(labels, Tensor) else logits._be.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy: logits of shape {logits.shape} need labels of shape "
            f"{logits.shape[:-1]}, got {labels.shape}")
    classes = logits.shape[-1]
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"cross_entropy: labels must lie in [0, {classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    logp = log_softmax(logits, axis=-1).reshape(-1, classes)
    flat = labels.reshape(-1)
    picked = logp[xp.arange(flat.shape[0]), flat]
    return -picked.mean()


def mse_loss(prediction, target):
    """Mean of (prediction - target)**2 over all elements; shapes must match exactly.

    Exact matching catches the classic silent bug of broadcasting (N, 1) against (N,).
    """
    prediction = _tensor(prediction, "mse_loss")
    if not isinstance(target, Tensor):
        target = Tensor(target, dtype=prediction.dtype, device=prediction.device)
    if prediction.shape != target.shape:
        raise ValueError(f"mse_loss: prediction shape {prediction.shape} != target shape {target.shape}")
    diff = prediction - target
    return (diff * diff).mean()
