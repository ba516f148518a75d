"""Functional ops on Tensors: activations, softmax family and losses.

Each function with a numerically delicate forward (softmax, log_softmax, logsumexp)
is a primitive with its own backward rule written in Tensor ops, so it stays stable
for inputs of magnitude 1e4 and is still differentiable to any order.
"""
from __future__ import annotations

import numpy as np

from .autograd import _GradMode
from .tensor import (Tensor, _constant, _keepdims_shape, _make, _normalize_axis, _relu_grad,
                     unbroadcast)

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
    One graph node; its backward is written in Tensor ops, so it can be differentiated
    again (MAML's second order goes through it).

    >>> import tinygrad_meta as tgm
    >>> float(mse_loss(tgm.Tensor([1.0, 3.0]), tgm.Tensor([0.0, 0.0])).item())
    5.0
    """
    prediction = _tensor(prediction, "mse_loss")
    if not isinstance(target, Tensor):
        target = Tensor(target, dtype=prediction.dtype, device=prediction.device)
    elif target._be is not prediction._be:
        raise RuntimeError(f"mse_loss: prediction is on {prediction.device}, target on {target.device}")
    if prediction.shape != target.shape:
        raise ValueError(f"mse_loss: prediction shape {prediction.shape} != target shape {target.shape}")
    diff = (prediction.data - target.data).reshape(-1)
    xp = prediction._be.xp
    # a dot product is one C call; ndarray.mean goes through Python-level numpy code
    data = xp.asarray(xp.dot(diff, diff) / max(diff.size, 1), dtype=prediction.data.dtype)
    return _make(data, prediction._be, (prediction, target), _mse_rule, 2.0 / max(diff.size, 1))


def _mse_grad_rule(out, g):
    prediction, target, upstream = out._parents
    scale = out._ctx
    # out = (p - t) * u * scale: linear in (p - t) and in u
    grad_diff = g * upstream * scale
    grad_u = ((prediction - target) * g).sum() * scale if upstream.requires_grad else None
    return (grad_diff if prediction.requires_grad else None,
            -grad_diff if target.requires_grad else None, grad_u)


def _mse_rule(out, g):
    prediction, target = out._parents
    scale = out._ctx
    if not _GradMode.enabled:  # nothing recorded: work on raw arrays
        grad_p = (prediction.data - target.data) * (g.data * scale)
        be = prediction._be
        return (_constant(grad_p, be) if prediction.requires_grad else None,
                _constant(-grad_p, be) if target.requires_grad else None)
    # (p - t) * g * scale as one node whose own rule is in Tensor ops
    grad_p = _make((prediction.data - target.data) * (g.data * scale), prediction._be,
                   (prediction, target, g), _mse_grad_rule, scale)
    return (grad_p if prediction.requires_grad else None,
            -grad_p if target.requires_grad else None)


# ----------------------------------------------------------------------------------
# Fused layers: one graph node per layer, backward rules in differentiable Tensor ops.
# When the backward pass records nothing (create_graph=False, the common case) the
# rules compute on raw arrays instead: same numbers, no per-op Tensor overhead.
# ----------------------------------------------------------------------------------

def _sum_to(array, shape):
    """Raw-array unbroadcast: sum ``array`` down to ``shape``."""
    if array.shape == shape:
        return array
    extra = array.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(extra + i for i, n in enumerate(shape)
                                       if n == 1 and array.shape[extra + i] != 1)
    if axes:
        array = array.sum(axis=axes, keepdims=True)
    return array.reshape(shape)


def _unbroadcast(g, shape):
    return g if g.shape == shape else unbroadcast(g, shape)


def _t(array):
    return array.swapaxes(-1, -2)


def _mm(be, a, b):
    """a @ b on raw arrays through the backend's kernels."""
    if a.ndim == 3 and b.ndim == 3 and b.strides[0] == 0 and a.shape[0] == b.shape[0] > 1:
        # one matrix broadcast over the batch (fast weights before their first update):
        # a single large matmul instead of a batch of small ones
        out = be.matmul(a.reshape(-1, a.shape[-1]), b[0])
        return out.reshape(a.shape[:-1] + b.shape[-1:])
    return be.matmul(a, b)


def _matmul_t_rule(out, g):
    a, b = out._parents
    trans_a, trans_b = out._ctx
    grad_a = grad_b = None
    # C = op(A) @ op(B):  d op(A) = G @ op(B)^T,  d op(B) = op(A)^T @ G
    if not _GradMode.enabled:
        be, gd, ad, bd = a._be, g.data, a.data, b.data
        if a.requires_grad:
            raw = _mm(be, _t(bd) if trans_b else bd, _t(gd)) if trans_a \
                else _mm(be, gd, bd if trans_b else _t(bd))
            grad_a = _constant(_sum_to(raw, a.shape), be)
        if b.requires_grad:
            raw = _mm(be, _t(gd), _t(ad) if trans_a else ad) if trans_b \
                else _mm(be, ad if trans_a else _t(ad), gd)
            grad_b = _constant(_sum_to(raw, b.shape), be)
        return grad_a, grad_b
    if a.requires_grad:
        grad_a = (matmul_t(b, g, trans_b, True) if trans_a
                  else matmul_t(g, b, False, not trans_b))
        grad_a = _unbroadcast(grad_a, a.shape)
    if b.requires_grad:
        grad_b = (matmul_t(g, a, True, trans_a) if trans_b
                  else matmul_t(a, g, not trans_a, False))
        grad_b = _unbroadcast(grad_b, b.shape)
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
    xa = _t(a.data) if trans_a else a.data
    xb = _t(b.data) if trans_b else b.data
    try:
        data = _mm(a._be, xa, xb)
    except ValueError:
        raise ValueError(f"matmul_t: shapes {xa.shape} and {xb.shape} don't align") from None
    return _make(data, a._be, (a, b), _matmul_t_rule, (trans_a, trans_b))


def _batched_bias(weight, bias):
    """True when bias has the weight's task axes ((T, out) with weight (T, in, out))."""
    return weight.ndim > 2 and bias.ndim == weight.ndim - 1


def _check_linear(x, weight, bias, name):
    if type(x) is not Tensor:
        x = _tensor(x, name)
    if type(weight) is not Tensor:
        weight = _tensor(weight, name)
    xs, ws = x.data.shape, weight.data.shape
    if len(ws) < 2:
        raise ValueError(f"{name}: weight must be (in, out) or (T, in, out), got shape {ws}")
    if len(xs) < 2 or xs[-1] != ws[-2]:
        raise ValueError(f"{name}: input of shape {xs} does not match weight of shape "
                         f"{ws} (need (..., {ws[-2]}))")
    if x._be is not weight._be:
        raise RuntimeError(f"{name}: input is on {x.device}, weight on {weight.device}")
    if bias is not None:
        if type(bias) is not Tensor:
            bias = _tensor(bias, name)
        bs = bias.data.shape
        if bs != ws[:-2] + ws[-1:] and bs != ws[-1:]:
            raise ValueError(f"{name}: bias of shape {bs} does not match weight of shape "
                             f"{ws} (expected {ws[:-2] + ws[-1:]})")
        if bias._be is not weight._be:
            raise RuntimeError(f"{name}: bias is on {bias.device}, weight on {weight.device}")
    return x, weight, bias


def _affine_data(x, weight, bias):
    data = _mm(x._be, x.data, weight.data)
    if bias is not None:
        b = bias.data[..., None, :] if _batched_bias(weight, bias) else bias.data
        data += b
    return data


def _linear_grads_raw(parents, gd):
    x, weight = parents[0], parents[1]
    bias = parents[2] if len(parents) > 2 else None
    be = x._be
    grad_x = grad_w = grad_b = None
    if x.requires_grad:
        raw = _mm(be, gd, _t(weight.data))
        grad_x = _constant(_sum_to(raw, x.shape), be)
    if weight.requires_grad:
        grad_w = _constant(_sum_to(_mm(be, _t(x.data), gd), weight.shape), be)
    if bias is None:
        return grad_x, grad_w
    if bias.requires_grad:
        if _batched_bias(weight, bias):
            grad_b = _sum_to(gd.sum(axis=-2), bias.shape)
        else:
            grad_b = gd.sum(axis=tuple(range(gd.ndim - 1))) if gd.ndim > 1 else gd
            grad_b = _sum_to(grad_b, bias.shape)
        grad_b = _constant(grad_b, be)
    return grad_x, grad_w, grad_b


def _linear_grads(parents, g):
    x, weight = parents[0], parents[1]
    bias = parents[2] if len(parents) > 2 else None
    grad_x = _unbroadcast(matmul_t(g, weight, False, True), x.shape) if x.requires_grad else None
    grad_w = _unbroadcast(matmul_t(x, g, True, False), weight.shape) if weight.requires_grad else None
    if bias is None:
        return grad_x, grad_w
    grad_b = None
    if bias.requires_grad:
        if _batched_bias(weight, bias):
            grad_b = _unbroadcast(_sum_axes(g, (g.ndim - 2,)), bias.shape)
        else:
            # sum the leading axes in one node rather than sum-keepdims plus reshape
            grad_b = _sum_axes(g, tuple(range(g.ndim - 1))) if g.ndim > 1 else g
            grad_b = _unbroadcast(grad_b, bias.shape)
    return grad_x, grad_w, grad_b


def _sum_axes_rule(out, g):
    (x,) = out._parents
    kept_shape = out._ctx
    if not _GradMode.enabled:
        # bias gradients are small: filling a fresh array beats building a broadcast view
        data = x._be.xp.empty(x.shape, dtype=g.data.dtype)
        data[...] = g.data.reshape(kept_shape)
        return (_constant(data, x._be),)
    return (g.reshape(kept_shape).broadcast_to(x.shape),)


def _sum_axes(x, axes):
    """x summed over the (non-negative, sorted) ``axes``: a lean Tensor.sum for bias
    gradients, whose backward also has a raw-array path."""
    kept_shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
    return _make(x.data.sum(axis=axes), x._be, (x,), _sum_axes_rule, kept_shape)


def _linear_rule(out, g):
    if not _GradMode.enabled:
        return _linear_grads_raw(out._parents, g.data)
    return _linear_grads(out._parents, g)


def _linear_relu_rule(out, g):
    # relu'(z) is a step: mask g by (out > 0), i.e. (z > 0); the mask has no derivative
    if not _GradMode.enabled:
        return _linear_grads_raw(out._parents, out._be.relu_backward(g.data, out.data))
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
    data = x._be.relu(_affine_data(x, weight, bias))
    return _make(data, x._be, parents, _linear_relu_rule)
