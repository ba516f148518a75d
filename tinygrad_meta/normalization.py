"""Batch and layer normalisation on Tensors, PyTorch's signatures and semantics.

``layer_norm`` and evaluation-mode ``batch_norm`` are compositions of differentiable ops;
training-mode ``batch_norm`` is the table op ``batch_norm_train`` (a fused forward whose
rule is written in table ops). So both are differentiable to any order: second-order MAML
runs through batch norm's batch statistics.

``batch_norm`` in training mode also updates the running statistics in place, outside the
graph (they are state, not parameters). Under ``tgm.vmap`` each example normalises with its
own statistics, and the running statistics take the examples' updates one after another,
exactly as a Python loop over the examples would.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import numpy as np

from . import ops
from .backends import norm_pool as _norm_pool
from .tensor import Tensor, _floating, record

__all__ = ["batch_norm", "batch_norm_relu", "layer_norm"]


def _same_place(x, other, name, what):
    if not isinstance(other, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor or None, got {type(other).__name__}")
    if other._be is not x._be:
        raise RuntimeError(f"{name}: {what} is on {other.device} but the input on {x.device}; "
                           "move one with .to(device)")
    if other.dtype != x.dtype:
        raise TypeError(f"{name}: dtype mismatch: input {x.dtype}, {what} {other.dtype}; cast one "
                        "with .astype() (no implicit promotion)")
    return other


def _affine(y, weight, bias, shape):
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _batch_statistics(x):
    """The raw per-channel mean and biased variance of ``x`` (N, C, ...), one row per
    example: (1, C) for a plain Tensor, (B, C) inside ``tgm.vmap`` (the batch axes lead
    the data, outer vmaps first, so the rows come in the order a loop over the examples
    would visit them), and, for a plain Tensor, the backend's (mean, var) pair, which
    the forward may reuse (else None). Outside the graph: these feed the running
    statistics."""
    data = x._data
    lead = data.ndim - x.ndim
    if lead == 0:  # one pass of the backend's kernel (ours on the CPU)
        statistics = getattr(x._be, "batch_norm_statistics", None)
        mean, var = (statistics or _norm_pool.batch_norm_statistics)(data)
        return mean[None], var[None], (mean, var)
    data = data.reshape((-1,) + data.shape[lead:])
    axes = (1,) + tuple(range(3, data.ndim))
    return data.mean(axis=axes), data.var(axis=axes), None


def _update_running(running, stats, momentum):
    """running <- (1 - momentum) running + momentum stat, for each row of ``stats`` in turn."""
    value = running._data.reshape(-1)
    for row in stats.reshape(stats.shape[0], -1):
        value = value * (1.0 - momentum) + row.astype(value.dtype, copy=False) * momentum
    running._data[...] = value.reshape(running._data.shape)
    running._version += 1


def batch_norm(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalise each channel of ``x`` (N, C, ...) to zero mean and unit variance, then
    scale by ``weight`` (C,) and shift by ``bias`` (C,), as ``torch.nn.functional.batch_norm``.

    ``training=True``: the batch's statistics over every axis but the channel axis (biased
    variance), and ``running_mean`` / ``running_var`` (C,), when given, are updated in place,
    ``running = (1 - momentum) running + momentum batch_stat``, the variance unbiased (as
    PyTorch). ``training=False``: normalise with the running statistics (required).

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.arange(8.0).reshape(4, 2), dtype="float64")
    >>> mean, var = tgm.zeros(2, dtype="float64"), tgm.ones(2, dtype="float64")
    >>> y = batch_norm(x, mean, var, training=True)
    >>> np.round(y.numpy()[:, 0], 3).tolist(), np.round(mean.numpy(), 6).tolist()
    ([-1.342, -0.447, 0.447, 1.342], [0.3, 0.4])
    """
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                       relu=False)


def batch_norm_relu(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                    weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                    training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``relu(batch_norm(x, ...))``, the same arguments and running-statistics update as
    :func:`batch_norm`; in training mode one fused node (``batch_norm_relu_train``: one
    pass writes the activations, and the backward masks the gradient as it reads it).

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.arange(8.0).reshape(4, 2), dtype="float64")
    >>> y = batch_norm_relu(x, None, None, training=True)
    >>> np.round(y.numpy()[:, 0], 3).tolist()
    [0.0, 0.0, 0.447, 1.342]
    """
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                       relu=True)


def _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, relu):
    name = "batch_norm_relu" if relu else "batch_norm"
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(x).__name__}")
    x = _floating(x)
    if x.ndim < 2:
        raise ValueError(f"{name}: input must be (N, C, ...), got shape {x.shape}")
    channels = x.shape[1]
    for what, value in (("running_mean", running_mean), ("running_var", running_var),
                        ("weight", weight), ("bias", bias)):
        if value is not None:
            _same_place(x, value, name, what)
            if value.shape != (channels,):
                raise ValueError(f"{name}: {what} must have shape ({channels},) for input of shape "
                                 f"{x.shape}, got {value.shape}")
    for what, value in (("running_mean", running_mean), ("running_var", running_var)):
        if value is not None and type(value) is not Tensor:
            raise ValueError(f"{name}: {what} differs between examples under vmap; running "
                             "statistics must be one tensor shared by every example")
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
        raise ValueError(f"{name}: momentum must be a number in [0, 1], got {momentum!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"{name}: eps must be a number >= 0, got {eps!r}")
    shape = (1, channels) + (1,) * (x.ndim - 2)
    if training:
        axes = (0,) + tuple(range(2, x.ndim))
        count = int(np.prod([x.shape[i] for i in axes]))
        if count <= 1:
            raise ValueError(f"{name}: training needs more than one value per channel to take "
                             f"statistics, got input of shape {x.shape}")
        statistics = None   # taken for the running statistics: the forward reuses them
        if running_mean is not None or running_var is not None:
            mean, var, statistics = _batch_statistics(x)
            if running_mean is not None:
                _update_running(running_mean, mean, float(momentum))
            if running_var is not None:
                _update_running(running_var, var * (count / (count - 1)), float(momentum))
        inputs = [x] + [t for t in (weight, bias) if t is not None]
        return record(ops.batch_norm_relu_train if relu else ops.batch_norm_train, inputs,
                      (weight is not None, bias is not None), float(eps), statistics)
    if running_mean is None or running_var is None:
        raise ValueError(f"{name}: evaluation mode (training=False) needs running_mean and "
                         "running_var")
    # a per-channel affine map: x * scale + shift, two passes over x
    scale = (running_var.detach() + float(eps)) ** -0.5
    if weight is not None:
        scale = scale * weight
    shift = -(running_mean.detach() * scale)
    if bias is not None:
        shift = shift + bias
    out = x * scale.reshape(shape) + shift.reshape(shape)
    return out.relu() if relu else out


def layer_norm(x: Tensor, normalized_shape: Union[int, Sequence[int]], weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    """Normalise over the last ``len(normalized_shape)`` axes of ``x`` (biased variance),
    then scale by ``weight`` and shift by ``bias`` (both of ``normalized_shape``), as
    ``torch.nn.functional.layer_norm``.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> y = layer_norm(tgm.Tensor([[1.0, 3.0]]), 2)
    >>> np.round(y.numpy(), 4).tolist()
    [[-1.0, 1.0]]
    """
    name = "layer_norm"
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(x).__name__}")
    x = _floating(x)
    normalized = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else \
        tuple(normalized_shape)
    if not normalized or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) for n in normalized):
        raise TypeError(f"{name}: normalized_shape must be an int or a non-empty tuple of ints, "
                        f"got {normalized_shape!r}")
    normalized = tuple(int(n) for n in normalized)
    if x.shape[x.ndim - len(normalized):] != normalized or len(normalized) > x.ndim:
        raise ValueError(f"{name}: normalized_shape {normalized} must be the trailing axes of the "
                         f"input's shape {x.shape}")
    for what, value in (("weight", weight), ("bias", bias)):
        if value is not None:
            _same_place(x, value, name, what)
            if value.shape != normalized:
                raise ValueError(f"{name}: {what} must have shape {normalized}, got {value.shape}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"{name}: eps must be a number >= 0, got {eps!r}")
    axes = tuple(range(x.ndim - len(normalized), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)
    return _affine(centered / (var + float(eps)).sqrt(), weight, bias, normalized)
