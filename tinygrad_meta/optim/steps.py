"""The differentiable optimizer steps: ``(params, grads, ...) -> (new_params, new_state)``.

``sgd_step`` and ``adam_step`` run the one SGD / Adam update (rules.py) on Tensors and
never detach, so an unrolled sequence of steps can be differentiated with respect to
the initial parameters, the gradients, and every hyperparameter given as a Tensor
(learning rates, momentum, betas, weight decay). MAML's inner loop, Meta-SGD and
hyperparameter optimisation build on them.

A hyperparameter may be a Python number, a scalar Tensor, or a dict ``name -> number or
Tensor`` giving each parameter its own value (every parameter name must be present).
"""
from __future__ import annotations

import numbers
from collections import OrderedDict

from .. import ops
from ..gradient_checks import checked_gradients
from ..tensor import Tensor, _GraphOps, record
from .rules import adam_rule, sgd_rule

__all__ = ["sgd_step", "adam_step", "safe_sqrt"]

# the Tensor namespace of the op table: each term of a rule becomes a graph node
_TENSOR_OPS = _GraphOps.instance


def safe_sqrt(v):
    """sqrt(v) for v >= 0 whose derivatives (of every order) are 0 where v == 0 (the
    rule and why: ops.safe_sqrt).

    >>> import tinygrad_meta as tgm
    >>> v = tgm.Tensor([0.0, 4.0], requires_grad=True)
    >>> tgm.grad(safe_sqrt(v).sum(), [v])[0].numpy().tolist()
    [0.0, 0.25]
    """
    return record(ops.safe_sqrt, v)


def _check_dicts(params, grads, caller):
    if not isinstance(params, dict):
        raise TypeError(f"{caller}: params must be a dict name -> Tensor, got {type(params).__name__}")
    for name, p in params.items():
        if not isinstance(p, Tensor):
            raise TypeError(f"{caller}: params[{name!r}] must be a Tensor, got {type(p).__name__}")
    return checked_gradients(params, grads, caller)


def _hyper(value, name, hyper_name, caller):
    """The value of a hyperparameter for parameter ``name``: a float or a Tensor."""
    if isinstance(value, dict):
        if name not in value:
            raise KeyError(f"{caller}: per-parameter {hyper_name} has no entry for {name!r}")
        value = value[name]
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(f"{caller}: {hyper_name} must be a number, a Tensor or a dict of them, "
                        f"got {type(value).__name__}")
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _is_zero(value):
    return isinstance(value, float) and value == 0.0


def sgd_step(params, grads, lr, momentum=0.0, weight_decay=0.0, nesterov=False, state=None):
    """One differentiable SGD step: ``(new_params, new_state)``.

    ``params``, ``grads``: dicts name -> Tensor with matching shapes (order kept).
    ``lr``, ``momentum``, ``weight_decay``: a number, a scalar (or parameter-shaped) Tensor,
    or a dict name -> number/Tensor. With weight decay the gradient is g + wd*p; with
    momentum the buffer is b = momentum*b + g (b = g on the first step, as in PyTorch), and
    the step direction is b, or g + momentum*b with ``nesterov``. ``state`` is None on the
    first step, then the returned ``{"momentum": {name: Tensor}}``. Nothing is detached;
    without momentum and weight decay each parameter's step is one graph node.

    >>> import tinygrad_meta as tgm
    >>> p = {"w": tgm.Tensor([1.0, 2.0], requires_grad=True)}
    >>> g = {"w": tgm.Tensor([0.5, -1.0])}
    >>> new, state = sgd_step(p, g, lr=0.1)
    >>> new["w"].numpy().tolist()
    [0.949999988079071, 2.0999999046325684]
    """
    caller = "sgd_step"
    grads = _check_dicts(params, grads, caller)
    buffers = {} if state is None else state.get("momentum", {})
    new_params, new_buffers = OrderedDict(), OrderedDict()
    for name, p in params.items():
        mu = _hyper(momentum, name, "momentum", caller)
        if nesterov and _is_zero(mu):
            raise ValueError(f"{caller}: nesterov needs a nonzero momentum")
        new_params[name], buffer, _ = sgd_rule(
            _TENSOR_OPS, p, grads[name], _hyper(lr, name, "lr", caller), mu,
            _hyper(weight_decay, name, "weight_decay", caller), nesterov, buffers.get(name))
        if buffer is not None:
            new_buffers[name] = buffer
    return new_params, {"momentum": new_buffers}


def adam_step(params, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, state=None,
              decoupled_weight_decay=False):
    """One differentiable Adam step (Kingma & Ba, bias-corrected): ``(new_params, new_state)``.

    ``params``, ``grads``: dicts name -> Tensor. ``lr``, ``betas[0]``, ``betas[1]``,
    ``weight_decay``: numbers, Tensors, or dicts name -> number/Tensor. Weight decay is
    L2 (added to the gradient, as torch.optim.Adam), or with ``decoupled_weight_decay``
    AdamW's p <- p - lr*wd*p before the step (torch.optim.AdamW). ``state``: None on the
    first step, then the returned ``{"step": int, "m": {name: Tensor}, "v": {name: Tensor}}``.

    p_new = p - lr * m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - b1**t) and
    v_hat = v / (1 - b2**t). The sqrt has derivatives defined as 0 where v_hat == 0
    (see ``safe_sqrt``), so every derivative of the step is finite where the gradients
    are exactly zero.

    >>> import tinygrad_meta as tgm
    >>> p = {"w": tgm.Tensor([1.0], requires_grad=True)}
    >>> new, state = adam_step(p, {"w": tgm.Tensor([3.0])}, lr=0.1)
    >>> round(float(new["w"].item()), 4), state["step"]
    (0.9, 1)
    """
    caller = "adam_step"
    grads = _check_dicts(params, grads, caller)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{caller}: betas must be a pair (beta1, beta2), got {betas!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or eps < 0:
        raise ValueError(f"{caller}: eps must be a number >= 0, got {eps!r}")
    step = 1 if state is None else int(state["step"]) + 1
    m_prev = {} if state is None else state["m"]
    v_prev = {} if state is None else state["v"]
    new_params, new_m, new_v = OrderedDict(), OrderedDict(), OrderedDict()
    for name, p in params.items():
        new_params[name], new_m[name], new_v[name], _ = adam_rule(
            _TENSOR_OPS, p, grads[name], m_prev.get(name), v_prev.get(name), step,
            _hyper(lr, name, "lr", caller), _hyper(betas[0], name, "beta1", caller),
            _hyper(betas[1], name, "beta2", caller), float(eps),
            _hyper(weight_decay, name, "weight_decay", caller), bool(decoupled_weight_decay))
    return new_params, {"step": step, "m": new_m, "v": new_v}
