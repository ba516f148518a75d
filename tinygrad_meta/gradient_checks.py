"""One check for every optimizer: the gradients given for a set of parameters.

The functional steps (``sgd_step``, ``adam_step``), the in-place optimizers (SGD, Adam)
and the hypergradient ones (SGD-HD, Adam-HD) all take their gradients through
:func:`checked_gradients`, so a gradient of the wrong shape, dtype or device, a missing
one or one for a parameter that does not exist is an error naming the parameter, never
a silent reshape or a misassigned element.
"""
from __future__ import annotations

from collections import OrderedDict

from .tensor import Tensor

__all__ = ["checked_gradients"]


def checked_gradients(params, grads, caller, use_dot_grad=False):
    """``grads`` as an ordered dict name -> Tensor matching ``params`` exactly.

    ``params``: dict name -> Tensor. ``grads``: dict name -> Tensor or array; None with
    ``use_dot_grad`` takes each parameter's ``.grad``. Raises KeyError for missing or
    unexpected names, ValueError for a shape, TypeError for a dtype or a non-array,
    RuntimeError for a device or a missing ``.grad``.
    """
    if grads is None and use_dot_grad:
        grads = OrderedDict()
        for name, p in params.items():
            if p.grad is None:
                raise RuntimeError(f"{caller}: parameter {name!r} has no .grad; call "
                                   "backward() first or pass grads=")
            grads[name] = p.grad
    if not isinstance(grads, dict):
        raise TypeError(f"{caller}: grads must be a dict name -> Tensor, got {type(grads).__name__}")
    missing = [name for name in params if name not in grads]
    unexpected = [name for name in grads if name not in params]
    if missing or unexpected:
        raise KeyError(f"{caller}: grads do not match the parameters (missing {missing}, "
                       f"unexpected {unexpected})")
    out = OrderedDict()
    for name, p in params.items():
        g = grads[name]
        if type(g) is Tensor and g._be is p._be and g._data.dtype is p._data.dtype and \
                g._data.shape == p._data.shape:
            out[name] = g  # the everyday case, checked in one line
            continue
        if not isinstance(g, Tensor):
            if g is None or isinstance(g, (str, bytes)):
                raise TypeError(f"{caller}: the gradient of {name!r} is {type(g).__name__}, "
                                "expected a Tensor or an array")
            try:
                g = Tensor(g, dtype=p.dtype, device=p.device)
            except TypeError as error:
                raise TypeError(f"{caller}: the gradient of {name!r}: {error}") from None
        if g.device != p.device:
            raise RuntimeError(f"{caller}: the gradient of {name!r} is on {g.device}, the "
                               f"parameter on {p.device}")
        if g.shape != p.shape:
            raise ValueError(f"{caller}: the gradient of {name!r} has shape {g.shape}, the "
                             f"parameter has shape {p.shape}")
        if g.dtype != p.dtype:
            if g.dtype.kind == "f":
                raise TypeError(f"{caller}: the gradient of {name!r} is {g.dtype}, the "
                                f"parameter {p.dtype} (no implicit promotion)")
            g = g.astype(p.dtype)
        out[name] = g
    return out
