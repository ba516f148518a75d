"""Functional ops on Tensors: activations, softmax family, losses and fused layers.

The user-facing half: argument checks, then one call into the op table (ops.py), where
each forward and its backward rule live. The numerically delicate forwards (softmax,
log_softmax, logsumexp) are primitives of their own there, stable for inputs of
magnitude 1e4 and differentiable to any order.
"""
from __future__ import annotations

from . import ops
from .tensor import Tensor, _floating, _normalize_axis, _pair, record

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


def _softmax_input(x, axis, name):
    x = _floating(_tensor(x, name))
    axes = _normalize_axis(axis, x.ndim, name)
    if x.size == 0 or axes is not None and any(x.shape[i] == 0 for i in axes):
        raise ValueError(f"{name}: cannot normalise over an empty axis of shape {x.shape}")
    return x, axes


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, computed stably."""
    x, axes = _softmax_input(x, axis, "softmax")
    return record(ops.softmax, x, axes)


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along ``axis``, computed stably (a +inf entry gets log 1 = 0)."""
    x, axes = _softmax_input(x, axis, "log_softmax")
    return record(ops.log_softmax, x, axes)


def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) over ``axis``, stable for large inputs (shifts by the max)."""
    x, axes = _softmax_input(x, axis, "logsumexp")
    return record(ops.logsumexp, x, axes, bool(keepdims))


def cross_entropy(logits, labels):
    """Mean negative log-likelihood of integer ``labels`` under softmax(``logits``).

    ``logits``: shape (..., C). ``labels``: integers in [0, C) with shape (...).
    """
    logits = _floating(_tensor(logits, "cross_entropy"))
    xp = logits._be.xp
    if isinstance(labels, Tensor) and labels._be is not logits._be:
        raise RuntimeError(f"cross_entropy: labels are on {labels.device} but logits on "
                           f"{logits.device}; move them with .to(device)")
    if labels is None or isinstance(labels, str):
        raise TypeError(f"cross_entropy: labels must be integers, got {type(labels).__name__}")
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
    again (MAML's second order goes through it). Integer inputs compute in float32;
    float32 and float64 do not mix.

    >>> import tinygrad_meta as tgm
    >>> float(mse_loss(tgm.Tensor([1.0, 3.0]), tgm.Tensor([0.0, 0.0])).item())
    5.0
    """
    prediction = _tensor(prediction, "mse_loss")
    prediction, target = _pair(prediction, target, "mse_loss")
    prediction, target = _floating(prediction), _floating(target)
    if prediction.shape != target.shape:
        raise ValueError(f"mse_loss: prediction shape {prediction.shape} != target shape {target.shape}")
    return record(ops.mse, prediction, target)


def matmul_t(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) as one node, where op transposes the last two axes when asked.

    Saves the permute nodes that ``a.mT @ b`` would record (backward rules of matmul-like
    ops need transposes). Both operands need at least 2 dims; batch dims broadcast.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> a = tgm.Tensor(np.ones((2, 3))); b = tgm.Tensor(np.ones((4, 3)))
    >>> matmul_t(a, b, trans_b=True).shape
    (2, 4)
    """
    a, b = _pair(_tensor(a, "matmul_t"), b, "matmul_t")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul_t: operands need at least 2 dims, got shapes {a.shape} and {b.shape}")
    try:
        return record(ops.matmul, a, b, bool(trans_a), bool(trans_b), a._be)
    except ValueError:
        shape_a = a.shape[:-2] + a.shape[-2:][::-1] if trans_a else a.shape
        shape_b = b.shape[:-2] + b.shape[-2:][::-1] if trans_b else b.shape
        raise ValueError(f"matmul_t: shapes {shape_a} and {shape_b} don't align") from None


def _check_linear(x, weight, bias, name):
    if type(x) is Tensor and type(weight) is Tensor and x._be is weight._be and \
            x._data.dtype is weight._data.dtype and (bias is None or type(bias) is Tensor and
                                                      bias._data.dtype is weight._data.dtype):
        xs, ws = x._data.shape, weight._data.shape  # the everyday case: only shapes to check
        if len(ws) >= 2 and len(xs) >= 2 and xs[-1] == ws[-1] and (
                bias is None or bias._be is x._be and bias._data.shape in (ws[:-1], ws[-2:-1])):
            return (x, weight) if bias is None else (x, weight, bias)
    x = _tensor(x, name)
    weight = _tensor(weight, name)
    if x.device != weight.device:
        raise RuntimeError(f"{name}: input is on {x.device}, weight on {weight.device}")
    if weight.dtype.kind != "f" or weight.dtype != x.dtype and x.dtype.kind == "f":
        raise TypeError(f"{name}: dtype mismatch: input {x.dtype}, weight {weight.dtype}; "
                        "cast one with .astype() (no implicit promotion)")
    x, weight = _pair(x, weight, name)
    xs, ws = x.shape, weight.shape
    if len(ws) < 2:
        raise ValueError(f"{name}: weight must be (out, in) or (T, out, in), got shape {ws}")
    if len(xs) < 2 or xs[-1] != ws[-1]:
        raise ValueError(f"{name}: input of shape {xs} does not match weight of shape "
                         f"{ws} (weight is (out, in): need input (..., {ws[-1]}))")
    if bias is None:
        return (x, weight)
    bias = _tensor(bias, name)
    if bias.device != weight.device:
        raise RuntimeError(f"{name}: bias is on {bias.device}, weight on {weight.device}")
    if bias.dtype != weight.dtype:
        raise TypeError(f"{name}: dtype mismatch: bias {bias.dtype}, weight {weight.dtype}")
    bs = bias.shape
    if bs != ws[:-1] and bs != ws[-2:-1]:
        raise ValueError(f"{name}: bias of shape {bs} does not match weight of shape "
                         f"{ws} (expected {ws[:-1]})")
    return (x, weight, bias)


def linear(x, weight, bias=None):
    """x @ weight.T + bias as one graph node (fused forward and backward), PyTorch's layout.

    ``x``: (..., in). ``weight``: (out, in), or (T, out, in) with a task axis, then x is
    (T, K, in). ``bias``: (out,), or (T, out) with the task axis. Returns (..., out).
    The backward is matmul's rule (with the weight transposed) plus a sum for the bias
    (ops.py), differentiable again.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.ones((5, 3))); w = tgm.Tensor(np.ones((2, 3))); b = tgm.Tensor([1.0, 2.0])
    >>> linear(x, w, b).numpy()[0].tolist()
    [4.0, 5.0]
    """
    inputs = _check_linear(x, weight, bias, "linear")
    return record(ops.linear, inputs, inputs[0]._be)


def linear_relu(x, weight, bias=None):
    """relu(x @ weight.T + bias) as one graph node; shapes as in ``linear``.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.ones((1, 2))); w = tgm.Tensor([[1.0, 1.0], [-1.0, -1.0]])
    >>> linear_relu(x, w).numpy().tolist()
    [[2.0, 0.0]]
    """
    inputs = _check_linear(x, weight, bias, "linear_relu")
    return record(ops.linear_relu, inputs, inputs[0]._be)
