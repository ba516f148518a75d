"""Functional ops on Tensors: activations, softmax family and losses.

Each function with a numerically delicate forward (softmax, log_softmax, logsumexp)
is a primitive with its own backward rule written in Tensor ops, so it stays stable
for inputs of magnitude 1e4 and is still differentiable to any order.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, _make, _normalize_axis, _keepdims_shape, _relu_grad, unbroadcast

__all__ = ["relu", "tanh", "sigmoid", "exp", "log", "softmax", "log_softmax", "logsumexp",
           "cross_entropy", "mse_loss", "linear", "linear_relu", "matmul_t"]


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
    if isinstance(labels, Tensor) and labels._be is not logits._be:
        raise RuntimeError(f"cross_entropy: labels are on {labels.device} but logits on "
                           f"{logits.device}; move them with .to(device)")
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
    # one node (forward and backward fused); its backward is in Tensor ops, so it can
    # be differentiated again (MAML's second order goes through it)
    diff = prediction.data - target.data
    data = (diff * diff).mean(dtype=prediction.data.dtype)
    if not isinstance(data, type(diff)):
        data = prediction._be.asarray(data, dtype=prediction.data.dtype)
    return _make(data, prediction._be, (prediction, target), _mse_rule, 2.0 / diff.size)


def _mse_rule(out, g):
    prediction, target = out._parents
    scale = out._ctx
    grad_p = (prediction - target) * (g * scale)
    return (grad_p if prediction.requires_grad else None,
            -grad_p if target.requires_grad else None)


# ----------------------------------------------------------------------------------
# Fused layers: one graph node per layer, backward rules in differentiable Tensor ops
# ----------------------------------------------------------------------------------

def _matmul_t_rule(out, g):
    a, b = out._parents
    trans_a, trans_b = out._ctx
    grad_a = grad_b = None
    # C = op(A) @ op(B):  d op(A) = G @ op(B)^T,  d op(B) = op(A)^T @ G
    if a.requires_grad:
        grad_a = (matmul_t(b, g, trans_b, True) if trans_a
                  else matmul_t(g, b, False, not trans_b))
        grad_a = unbroadcast(grad_a, a.shape)
    if b.requires_grad:
        grad_b = (matmul_t(g, a, True, trans_a) if trans_b
                  else matmul_t(a, g, not trans_a, False))
        grad_b = unbroadcast(grad_b, b.shape)
    return grad_a, grad_b


def matmul_t(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) as one node, where op transposes the last two axes when asked.

    Saves the permute nodes that ``a.mT @ b`` would record (backward rules of matmul-like
    ops need transposes). Both operands need at least 2 dims; batch dims broadcast.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> a = tgm.Tensor(np.ones((2, 3))); b = tgm.Tensor(np.ones((4, 3)))
    >>> matmul_t(a, b, trans_b=True).shape
    (2, 4)
    """
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul_t: operands need at least 2 dims, got shapes {a.shape} and {b.shape}")
    if b._be is not a._be:
        raise RuntimeError(f"matmul_t: tensors are on different devices ({a.device} and {b.device})")
    xa = a.data.swapaxes(-1, -2) if trans_a else a.data
    xb = b.data.swapaxes(-1, -2) if trans_b else b.data
    try:
        data = a._be.matmul(xa, xb)
    except ValueError:
        raise ValueError(f"matmul_t: shapes {xa.shape} and {xb.shape} don't align") from None
    return _make(data, a._be, (a, b), _matmul_t_rule, (trans_a, trans_b))


def _batched_bias(weight, bias):
    """True when bias has the weight's task axes ((T, out) with weight (T, in, out))."""
    return weight.ndim > 2 and bias.ndim == weight.ndim - 1


def _check_linear(x, weight, bias, name):
    x = _tensor(x, name)
    weight = _tensor(weight, name)
    if weight.ndim < 2:
        raise ValueError(f"{name}: weight must be (in, out) or (T, in, out), got shape {weight.shape}")
    if x.ndim < 2 or x.shape[-1] != weight.shape[-2]:
        raise ValueError(f"{name}: input of shape {x.shape} does not match weight of shape "
                         f"{weight.shape} (need (..., {weight.shape[-2]}))")
    if x._be is not weight._be:
        raise RuntimeError(f"{name}: input is on {x.device}, weight on {weight.device}")
    if bias is not None:
        bias = _tensor(bias, name)
        expected = weight.shape[:-2] + weight.shape[-1:]
        if bias.shape != expected and bias.shape != weight.shape[-1:]:
            raise ValueError(f"{name}: bias of shape {bias.shape} does not match weight of shape "
                             f"{weight.shape} (expected {expected})")
    return x, weight, bias


def _affine_data(x, weight, bias):
    data = x._be.matmul(x.data, weight.data)
    if bias is not None:
        b = bias.data[..., None, :] if _batched_bias(weight, bias) else bias.data
        data += b
    return data


def _linear_grads(parents, g):
    x, weight = parents[0], parents[1]
    bias = parents[2] if len(parents) > 2 else None
    grad_x = unbroadcast(matmul_t(g, weight, False, True), x.shape) if x.requires_grad else None
    grad_w = unbroadcast(matmul_t(x, g, True, False), weight.shape) if weight.requires_grad else None
    if bias is None:
        return grad_x, grad_w
    grad_b = None
    if bias.requires_grad:
        grad_b = unbroadcast(g.sum(axis=-2) if _batched_bias(weight, bias) else g, bias.shape)
    return grad_x, grad_w, grad_b


def _linear_rule(out, g):
    return _linear_grads(out._parents, g)


def _linear_relu_rule(out, g):
    # relu'(z) is a step: mask g by (out > 0), i.e. (z > 0); the mask has no derivative
    return _linear_grads(out._parents, _relu_grad(g, out))


def linear(x, weight, bias=None):
    """x @ weight + bias as one graph node (fused forward and backward).

    ``x``: (..., in). ``weight``: (in, out), or (T, in, out) with a task axis, then x is
    (T, K, in). ``bias``: (out,), or (T, out) with the task axis. Returns (..., out).
    The backward is written in Tensor ops (``matmul_t``), so it is differentiable again.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.ones((5, 3))); w = tgm.Tensor(np.ones((3, 2))); b = tgm.Tensor([1.0, 2.0])
    >>> linear(x, w, b).numpy()[0].tolist()
    [4.0, 5.0]
    """
    x, weight, bias = _check_linear(x, weight, bias, "linear")
    parents = (x, weight) if bias is None else (x, weight, bias)
    return _make(_affine_data(x, weight, bias), x._be, parents, _linear_rule)


def linear_relu(x, weight, bias=None):
    """relu(x @ weight + bias) as one graph node; shapes as in ``linear``.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.ones((1, 2))); w = tgm.Tensor([[1.0, -1.0], [1.0, -1.0]])
    >>> linear_relu(x, w).numpy().tolist()
    [[2.0, 0.0]]
    """
    x, weight, bias = _check_linear(x, weight, bias, "linear_relu")
    parents = (x, weight) if bias is None else (x, weight, bias)
    data = _affine_data(x, weight, bias)
    data = x._be.relu(data)
    return _make(data, x._be, parents, _linear_relu_rule)
