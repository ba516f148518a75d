"""The one SGD update and the one Adam update, written once over a namespace ``o``.

As in the op table (ops.py), the arithmetic is numpy-style code over ``o``:

* the in-place optimizers (SGD, Adam, AdamW, SGD-HD, Adam-HD) call it with
  ``o = ops.RAW`` on raw flat arrays and number hyperparameters: no Tensor wrappers,
  no graph, one array op per formula term for all parameters at once;
* the differentiable steps (``sgd_step``, ``adam_step``) call it with the Tensor
  namespace on Tensors, whose hyperparameters may be Tensors too, so every term is a
  graph node and an unrolled run can be differentiated to any order.

The parameter moves by one fused ``sgd_update`` node, ``param - lr * direction``, in both
(one node instead of a scale and a subtraction: it matters at second order).
A hyperparameter is a Python float (checked by the callers) or, in the Tensor
namespace, a Tensor; a float 0 switches its term off.

>>> import numpy as np
>>> from tinygrad_meta import ops
>>> new, buffer, direction = sgd_rule(ops.RAW, np.array([1.0]), np.array([2.0]), lr=0.25)
>>> new.tolist(), buffer
([0.5], None)
"""
from __future__ import annotations

__all__ = ["sgd_rule", "adam_rule", "descend"]


def _is_zero(value):
    return isinstance(value, float) and value == 0.0


def _scale(x, factor):
    """factor * x for a float or Tensor factor (a Tensor may be per-element, x's shape)."""
    if isinstance(factor, float):
        return x if factor == 1.0 else x * factor
    return factor * x


def _one_minus_times(beta, x):
    """(1 - beta) * x; for a Tensor beta written x - beta*x (two nodes, as (1-beta)*x)."""
    return x * (1.0 - beta) if isinstance(beta, float) else x - beta * x


def _divide(x, d):
    return x * (1.0 / d) if isinstance(d, float) else x / d


def descend(o, param, direction, lr):
    """``param - lr * direction`` as one ``sgd_update`` node (a Tensor ``lr``: the
    three-input form, differentiable in the rate too)."""
    if isinstance(lr, float):
        return o.sgd_update((param, direction), -lr)
    return o.sgd_update((param, direction, lr), None)


def sgd_rule(o, param, grad, lr, momentum=0.0, weight_decay=0.0, nesterov=False, buffer=None):
    """One SGD step: ``(new_param, new_buffer, direction)``.

    With weight decay the gradient is ``g + wd * p``; with momentum the buffer is
    ``b = momentum * b + g`` (``b = g`` on the first step, ``buffer=None``, as in
    PyTorch) and the direction is ``b``, or ``g + momentum * b`` with ``nesterov``.
    ``new_buffer`` is None without momentum. ``new_param = param - lr * direction``.
    Example: see the module docstring.
    """
    if not _is_zero(weight_decay):
        grad = grad + _scale(param, weight_decay)
    direction, new_buffer = grad, None
    if not _is_zero(momentum):
        new_buffer = grad if buffer is None else _scale(buffer, momentum) + grad
        direction = grad + _scale(new_buffer, momentum) if nesterov else new_buffer
    return descend(o, param, direction, lr), new_buffer, direction


def adam_rule(o, param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0, decoupled=False):
    """One bias-corrected Adam step (Kingma & Ba): ``(new_param, m, v, direction)``.

    ``m``, ``v``: the moment estimates before this step (None on the first), ``step``:
    this step's number t >= 1. The direction is ``m_hat / (sqrt(v_hat) + eps)`` with
    ``m_hat = m / (1 - beta1**t)`` and ``v_hat = v / (1 - beta2**t)``; the square root is
    ``o.safe_sqrt``, whose derivatives are 0 where ``v_hat == 0`` (finite at every
    order where the gradients are exactly zero). Weight decay is L2 (``g + wd * p``,
    torch.optim.Adam) or, with ``decoupled``, AdamW's ``p <- p - lr * wd * p`` before the
    step (Loshchilov & Hutter; torch.optim.AdamW). ``new_param = p - lr * direction``.

    >>> import numpy as np
    >>> from tinygrad_meta import ops
    >>> new, m, v, d = adam_rule(ops.RAW, np.array([1.0]), np.array([3.0]), None, None, 1, lr=0.1)
    >>> round(float(new[0]), 6), round(float(d[0]), 6)   # first step: direction sign(g)
    (0.9, 1.0)
    """
    if not _is_zero(weight_decay):
        if decoupled:
            param = _scale(param, 1.0 - lr * weight_decay)
        else:
            grad = grad + _scale(param, weight_decay)
    new_m = _one_minus_times(beta1, grad)
    if m is not None:
        new_m = _scale(m, beta1) + new_m
    new_v = _one_minus_times(beta2, grad * grad)
    if v is not None:
        new_v = _scale(v, beta2) + new_v
    m_hat = _divide(new_m, 1.0 - beta1 ** step)
    v_hat = _divide(new_v, 1.0 - beta2 ** step)
    direction = m_hat / (o.safe_sqrt(v_hat) + eps)
    return descend(o, param, direction, lr), new_m, new_v, direction
