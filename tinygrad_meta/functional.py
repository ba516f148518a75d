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
    # one bool() of the whole check, so tgm.compile keeps it as a value guard re-checked at
    # every replay (reading the values themselves would end the trace)
    if labels.size and bool(((labels < 0) | (labels >= classes)).any()):
        from .compile import TraceError
        try:
            seen = f"got values in [{int(labels.min())}, {int(labels.max())}]"
        except TraceError:  # inside tgm.compile the values can't be read; the check still holds
            seen = "got values outside it"
        raise ValueError(f"cross_entropy: labels must lie in [0, {classes}), {seen}")
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


# ---- more activations (issue 9): PyTorch's definitions and defaults; the Tensor methods
# check the arguments and hold the docs

__all__ += ["softplus", "leaky_relu", "elu", "gelu"]


def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta, reverting to x where beta x > threshold (PyTorch's)."""
    return _tensor(x, "softplus").softplus(beta, threshold)


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x."""
    return _tensor(x, "leaky_relu").leaky_relu(negative_slope)


def elu(x, alpha=1.0):
    """x where x > 0, else alpha * (exp(x) - 1)."""
    return _tensor(x, "elu").elu(alpha)


def gelu(x, approximate="none"):
    """x * Phi(x) with Phi the standard normal CDF (exact, via erf, as PyTorch's default);
    approximate="tanh" is PyTorch's tanh approximation.

    >>> import tinygrad_meta as tgm
    >>> round(float(gelu(tgm.Tensor(1.0)).item()), 6)
    0.841345
    """
    return _tensor(x, "gelu").gelu(approximate)
# ----------------------------------------------------------------------------------
# Binary classification: losses (PyTorch's names and semantics) and accuracy
# ----------------------------------------------------------------------------------

__all__ += ["binary_cross_entropy", "binary_cross_entropy_with_logits", "accuracy"]


def _binary_pair(inputs, targets, name):
    """(inputs, targets) as floating Tensors of one shape, device and dtype."""
    inputs = _floating(_tensor(inputs, name))
    if isinstance(targets, Tensor):
        if targets._be is not inputs._be:
            raise RuntimeError(f"{name}: targets are on {targets.device} but inputs on "
                               f"{inputs.device}; move them with .to(device)")
        if targets.dtype.kind != "f":
            targets = targets.astype(inputs.dtype)
    else:
        if targets is None or isinstance(targets, str):
            raise TypeError(f"{name}: targets must be numbers in [0, 1], got {type(targets).__name__}")
        targets = Tensor(targets, dtype=inputs.dtype, device=inputs.device)
    if targets.dtype != inputs.dtype:
        raise TypeError(f"{name}: targets are {targets.dtype}, inputs {inputs.dtype} (no implicit promotion)")
    if targets.shape != inputs.shape:
        raise ValueError(f"{name}: targets of shape {targets.shape} must have the inputs' shape "
                         f"{inputs.shape}")
    return inputs, targets


def binary_cross_entropy_with_logits(logits, targets):
    """Mean of ``-(y log σ(x) + (1 - y) log(1 - σ(x)))`` over all elements, from logits.

    ``logits``: a Tensor of any shape; ``targets``: numbers in [0, 1] (soft labels allowed)
    of the same shape, a Tensor or an array. As torch's (mean reduction), and computed as
    ``(1 - y) x + log(1 + exp(-x))`` with the log term a logsumexp, so it is exact for
    |logits| ~ 1e4 (no overflow, no log 0) and smooth: differentiable to any order.

    >>> import tinygrad_meta as tgm
    >>> loss = binary_cross_entropy_with_logits(tgm.Tensor([0.0, 1e4]), [1.0, 1.0])
    >>> round(float(loss.item()), 6)   # (log 2 + 0) / 2
    0.346574
    """
    name = "binary_cross_entropy_with_logits"
    logits, targets = _binary_pair(logits, targets, name)
    zeros = Tensor(logits._be.xp.zeros(logits.shape, dtype=logits.dtype), dtype=logits.dtype,
                   device=logits.device)
    softplus_of_minus_x = record(ops.logsumexp, record(ops.stack, (zeros, -logits), 0), (0,), False)
    return ((1.0 - targets) * logits + softplus_of_minus_x).mean()


def binary_cross_entropy(probabilities, targets):
    """Mean of ``-(y log p + (1 - y) log(1 - p))`` over all elements, from probabilities.

    ``probabilities``: a Tensor with values in [0, 1] (e.g. a sigmoid's output);
    ``targets``: numbers in [0, 1] of the same shape. As torch's: each log is clamped at
    -100, so p = 0 or 1 gives a finite loss (100 per wrong element). Prefer
    :func:`binary_cross_entropy_with_logits` on logits: it is exact where σ saturates.

    >>> import tinygrad_meta as tgm
    >>> loss = binary_cross_entropy(tgm.Tensor([0.5, 0.0]), [1.0, 1.0])
    >>> round(float(loss.item()), 4)   # (log 2 + 100) / 2
    50.3466
    """
    name = "binary_cross_entropy"
    probabilities, targets = _binary_pair(probabilities, targets, name)
    raw = probabilities._data
    if raw.size and not bool(((raw >= 0) & (raw <= 1)).all()):
        raise ValueError(f"{name}: probabilities must lie in [0, 1], got values in "
                         f"[{float(raw.min())}, {float(raw.max())}]; for logits use "
                         "binary_cross_entropy_with_logits")
    return -(targets * _clamped_log(probabilities)
             + (1.0 - targets) * _clamped_log(1.0 - probabilities)).mean()


def _clamped_log(x):
    """max(log x, -100) for x >= 0, without evaluating log 0 (its gradient is 0 there)."""
    positive = x._data > 0
    ones = Tensor(x._be.xp.ones(x.shape, dtype=x.dtype), dtype=x.dtype, device=x.device)
    floor = ones * -100.0
    return record(ops.where, record(ops.where, x, ones, positive).log(), floor, positive).clip(min=-100.0)


def accuracy(logits, labels):
    """The fraction of correct predictions, as a float (no graph is recorded).

    ``logits``: shape (..., C) with integer ``labels`` of shape (...): the prediction is
    the argmax over the last axis. Or ``logits`` of the labels' own shape, one logit per
    example for two classes: the prediction is ``logits > 0`` and labels are 0 or 1.

    >>> import tinygrad_meta as tgm
    >>> accuracy(tgm.Tensor([[2.0, 0.1], [0.3, 0.9], [1.0, 0.0]]), [0, 1, 1])
    0.6666666666666666
    """
    logits = _tensor(logits, "accuracy")
    labels = labels._data if isinstance(labels, Tensor) else logits._be.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise TypeError(f"accuracy: labels must be integers, got dtype {labels.dtype}")
    if labels.shape == logits.shape:
        predicted = logits._data > 0
    elif logits.ndim >= 1 and labels.shape == logits.shape[:-1]:
        predicted = logits._data.argmax(axis=-1)
    else:
        raise ValueError(f"accuracy: logits of shape {logits.shape} need labels of shape "
                         f"{logits.shape[:-1]} (or {logits.shape} for one logit per example), "
                         f"got {labels.shape}")
    if labels.size == 0:
        raise ValueError("accuracy: no examples (labels are empty)")
    return float((predicted == labels).mean())


# ---- convolution, pooling and normalisation (issue 11): the code lives in
# convolution.py and normalization.py, one idea each; here they join the functional API

from .convolution import avg_pool2d, conv2d, max_pool2d  # noqa: E402
from .normalization import batch_norm, batch_norm_relu, layer_norm  # noqa: E402

__all__ += ["conv2d", "max_pool2d", "avg_pool2d", "batch_norm", "batch_norm_relu", "layer_norm"]
