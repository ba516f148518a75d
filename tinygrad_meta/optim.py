"""Optimizers: differentiable functional update steps, and in-place SGD / Adam.

Two layers:

* ``sgd_step`` and ``adam_step`` are pure functions ``(params, grads, ...) ->
  (new_params, new_state)`` over ordered dicts ``name -> Tensor``. They are written in
  Tensor ops and never detach, so an unrolled sequence of steps can be differentiated
  with respect to the initial parameters, the gradients, and every hyperparameter
  given as a Tensor (learning rates, momentum, betas, weight decay). This is what
  MAML's inner loop, Meta-SGD and hyperparameter optimisation build on.
* ``SGD`` and ``Adam`` are the everyday stateful optimizers: the same arithmetic on
  raw arrays (no graph; Adam updates all parameters through one flat buffer), written
  into ``param.data`` in place. Tests check them against the functional steps.

A hyperparameter may be a Python number, a scalar Tensor, or a dict ``name -> number
or Tensor`` giving each parameter its own value (every parameter name must be present).
"""
from __future__ import annotations

import numbers
from collections import OrderedDict

import numpy as np

from . import ops
from .gradient_checks import checked_gradients
from .tensor import Tensor, _constant, record

__all__ = ["sgd_step", "adam_step", "SGD", "Adam", "Optimizer"]


def safe_sqrt(v):
    """sqrt(v) for v >= 0 whose derivatives (of every order) are 0 where v == 0 (the
    rule and why: ops.safe_sqrt).

    >>> import tinygrad_meta as tgm
    >>> v = tgm.Tensor([0.0, 4.0], requires_grad=True)
    >>> tgm.grad(safe_sqrt(v).sum(), [v])[0].numpy().tolist()
    [0.0, 0.25]
    """
    return record(ops.safe_sqrt, v)


# ----------------------------------------------------------------------------------
# Hyperparameters and argument checks
# ----------------------------------------------------------------------------------

def _check_dicts(params, grads, caller):
    if not isinstance(params, dict):
        raise TypeError(f"{caller}: params must be a dict name -> Tensor, got {type(params).__name__}")
    for name, p in params.items():
        if not isinstance(p, Tensor):
            raise TypeError(f"{caller}: params[{name!r}] must be a Tensor, got {type(p).__name__}")
    return checked_gradients(params, grads, caller)


def _hyper(value, name, hyper_name, caller):
    """The value of a hyperparameter for parameter ``name``: a number or a Tensor."""
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


def _scale(x, factor):
    """factor * x for a number or Tensor factor (a Tensor may be per-element, x's shape)."""
    if isinstance(factor, float):
        return x if factor == 1.0 else x * factor
    return factor * x


# ----------------------------------------------------------------------------------
# Functional steps
# ----------------------------------------------------------------------------------

def sgd_step(params, grads, lr, momentum=0.0, weight_decay=0.0, nesterov=False, state=None):
    """One differentiable SGD step: ``(new_params, new_state)``.

    ``params``, ``grads``: dicts name -> Tensor with matching shapes (order kept).
    ``lr``, ``momentum``, ``weight_decay``: a number, a scalar (or parameter-shaped) Tensor,
    or a dict name -> number/Tensor. With weight decay the gradient is g + wd*p; with
    momentum the buffer is b = momentum*b + g (b = g on the first step, as in PyTorch), and
    the step direction is b, or g + momentum*b with ``nesterov``. ``state`` is None on the
    first step, then the returned ``{"momentum": {name: Tensor}}``. Nothing is detached.

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
        g = grads[name]
        step_lr = _hyper(lr, name, "lr", caller)
        mu = _hyper(momentum, name, "momentum", caller)
        wd = _hyper(weight_decay, name, "weight_decay", caller)
        if not _is_zero(wd):
            g = g + _scale(p, wd)
        if not _is_zero(mu):
            previous = buffers.get(name)
            buf = g if previous is None else _scale(previous, mu) + g
            new_buffers[name] = buf
            direction = g + _scale(buf, mu) if nesterov else buf
        else:
            if nesterov:
                raise ValueError(f"{caller}: nesterov needs a nonzero momentum")
            direction = g
        new_params[name] = p - _scale(direction, step_lr)
    return new_params, {"momentum": new_buffers}


def adam_step(params, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, state=None):
    """One differentiable Adam step (Kingma & Ba, bias-corrected): ``(new_params, new_state)``.

    ``params``, ``grads``: dicts name -> Tensor. ``lr``, ``betas[0]``, ``betas[1]``,
    ``weight_decay``: numbers, Tensors, or dicts name -> number/Tensor. Weight decay is
    L2 (added to the gradient, as torch.optim.Adam). ``state``: None on the first step,
    then the returned ``{"step": int, "m": {name: Tensor}, "v": {name: Tensor}}``.

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
    if not isinstance(eps, numbers.Real) or eps < 0:
        raise ValueError(f"{caller}: eps must be a number >= 0, got {eps!r}")
    step = 1 if state is None else int(state["step"]) + 1
    m_prev = {} if state is None else state["m"]
    v_prev = {} if state is None else state["v"]
    new_params, new_m, new_v = OrderedDict(), OrderedDict(), OrderedDict()
    for name, p in params.items():
        g = grads[name]
        step_lr = _hyper(lr, name, "lr", caller)
        beta1 = _hyper(betas[0], name, "beta1", caller)
        beta2 = _hyper(betas[1], name, "beta2", caller)
        wd = _hyper(weight_decay, name, "weight_decay", caller)
        if not _is_zero(wd):
            g = g + _scale(p, wd)
        # (1 - b) * g written as g - b*g keeps a Tensor b on the left of nothing odd
        m = _scale(g, 1.0 - beta1) if isinstance(beta1, float) else g - beta1 * g
        if name in m_prev:
            m = _scale(m_prev[name], beta1) + m
        gg = g * g
        v = _scale(gg, 1.0 - beta2) if isinstance(beta2, float) else gg - beta2 * gg
        if name in v_prev:
            v = _scale(v_prev[name], beta2) + v
        new_m[name], new_v[name] = m, v
        correction1 = 1.0 - beta1 ** step
        correction2 = 1.0 - beta2 ** step
        if isinstance(correction1, float):
            m_hat = _scale(m, 1.0 / correction1)
        else:
            m_hat = m / correction1
        if isinstance(correction2, float):
            v_hat = _scale(v, 1.0 / correction2)
        else:
            v_hat = v / correction2
        update = m_hat / (safe_sqrt(v_hat) + float(eps))
        new_params[name] = p - _scale(update, step_lr)
    return new_params, {"step": step, "m": new_m, "v": new_v}


# ----------------------------------------------------------------------------------
# Stateful optimizers
# ----------------------------------------------------------------------------------

class Optimizer:
    """Base of the in-place optimizers: holds the parameters and the step state.

    ``params``: an ordered dict name -> Tensor (e.g. ``model.parameters()``), or a list
    of Tensors (named "0", "1", ...). Subclasses set ``_hyper_names`` and implement
    ``_functional_step``.
    """
    _hyper_names = ()

    def __init__(self, params):
        if isinstance(params, dict):
            items = list(params.items())
        else:
            items = [(str(i), p) for i, p in enumerate(params)]
        if not items:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for name, p in items:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: parameter {name!r} is a "
                                f"{type(p).__name__}, expected a Tensor")
        self.params = OrderedDict(items)
        self.state = None

    def zero_grad(self):
        """Forget the accumulated ``.grad`` of every parameter."""
        for p in self.params.values():
            p.grad = None

    def _gather_grads(self, grads):
        grads = checked_gradients(self.params, grads, f"{type(self).__name__}.step",
                                  use_dot_grad=True)
        return OrderedDict((name, g.detach()) for name, g in grads.items())

    def step(self, grads=None):
        """Update every parameter in place. ``grads``: dict name -> Tensor, or None to use
        each parameter's ``.grad``. Records no graph."""
        grads = self._gather_grads(grads)
        # same arithmetic as the functional step, on raw arrays: an outer step of a
        # meta-iteration should cost microseconds, not a Tensor op per formula term
        self.state = self._raw_step(grads, self.state)

    # ---- checkpointing --------------------------------------------------------
    def state_dict(self):
        """Hyperparameters and step state as plain numbers and numpy arrays.

        Keys: ``"hyper.<name>"`` for each hyperparameter, plus subclass state such as
        ``"m.<param>"``; saveable with ``np.savez(path, **sd)`` (no pickling needed).
        """
        out = {f"hyper.{name}": np.asarray(getattr(self, name), dtype=np.float64)
               for name in self._hyper_names}
        out.update(self._state_arrays())
        return out

    def load_state_dict(self, state_dict):
        """Restore what ``state_dict()`` returned (values may be 0-d arrays, as from np.load)."""
        state_dict = dict(state_dict)
        for name in self._hyper_names:
            key = f"hyper.{name}"
            if key not in state_dict:
                raise KeyError(f"{type(self).__name__}.load_state_dict: missing {key!r}")
            value = np.asarray(state_dict.pop(key))
            current = np.asarray(getattr(self, name))
            if value.shape != current.shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key!r} has shape "
                                 f"{value.shape}, expected {current.shape}")
            setattr(self, name, tuple(float(x) for x in value) if value.ndim else float(value))
        self._load_state_arrays(state_dict)

    def _array_for(self, name, value, prefix):
        p = self.params.get(name)
        if p is None:
            raise KeyError(f"{type(self).__name__}.load_state_dict: {prefix}.{name} names no parameter")
        value = np.asarray(value)
        if value.shape != p.shape:
            raise ValueError(f"{type(self).__name__}.load_state_dict: {prefix}.{name} has shape "
                             f"{value.shape}, the parameter has shape {p.shape}")
        return Tensor(value.astype(p.dtype), dtype=p.dtype, device=p.device)

    def __repr__(self):
        hypers = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._hyper_names)
        return f"{type(self).__name__}({len(self.params)} parameters, {hypers})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay.

    >>> import tinygrad_meta as tgm
    >>> w = tgm.Tensor([1.0], requires_grad=True)
    >>> opt = SGD({"w": w}, lr=0.5)
    >>> (w * w).sum().backward(); opt.step(); w.numpy().tolist()
    [0.0]
    """
    _hyper_names = ("lr", "momentum", "weight_decay")

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params)
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got "
                             f"{lr}, {momentum}, {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov needs a nonzero momentum")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.nesterov = bool(nesterov)

    def _functional_step(self, params, grads, state):
        return sgd_step(params, grads, self.lr, self.momentum, self.weight_decay,
                        self.nesterov, state)

    def _raw_step(self, grads, state):
        buffers = OrderedDict()
        previous = {} if state is None else state["momentum"]
        for name, p in self.params.items():
            g = grads[name]._data
            if self.weight_decay:
                g = g + self.weight_decay * p._data
            if self.momentum:
                buf = g if name not in previous else self.momentum * previous[name]._data + g
                buffers[name] = _constant(buf, p._be)
                g = g + self.momentum * buf if self.nesterov else buf
            p.data = (p._data - self.lr * g).astype(p._data.dtype, copy=False)
        return {"momentum": buffers}

    def _state_arrays(self):
        out = {"nesterov": np.asarray(self.nesterov)}
        if self.state is not None:
            for name, buf in self.state["momentum"].items():
                out[f"momentum_buffer.{name}"] = np.array(buf.numpy())
        return out

    def _load_state_arrays(self, sd):
        self.nesterov = bool(np.asarray(sd.pop("nesterov", self.nesterov)))
        buffers = OrderedDict()
        for key, value in sd.items():
            prefix, _, name = key.partition(".")
            if prefix != "momentum_buffer":
                raise KeyError(f"SGD.load_state_dict: unexpected key {key!r}")
            buffers[name] = self._array_for(name, value, prefix)
        self.state = {"momentum": buffers} if buffers else None


class Adam(Optimizer):
    """Adam (bias-corrected, L2 weight decay as torch.optim.Adam).

    >>> import tinygrad_meta as tgm
    >>> w = tgm.Tensor([1.0], requires_grad=True)
    >>> opt = Adam({"w": w}, lr=0.1)
    >>> (w * w).sum().backward(); opt.step(); round(float(w.item()), 4)
    0.9
    """
    _hyper_names = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"Adam: lr, eps and weight_decay must be >= 0, got {lr}, {eps}, "
                             f"{weight_decay}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam: betas must be two numbers in [0, 1), got {betas!r}")
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.betas = (float(betas[0]), float(betas[1]))

    def _functional_step(self, params, grads, state):
        return adam_step(params, grads, self.lr, self.betas, self.eps, self.weight_decay, state)

    def _raw_step(self, grads, state):
        params = list(self.params.values())
        first = params[0]
        if any(p.dtype != first.dtype or p._be is not first._be for p in params):
            return self._raw_step_each(grads, state)
        # One set of flat buffers for all parameters: each formula term is one array op
        # over every parameter at once (like torch's foreach Adam), not one per parameter.
        xp, be = first._be.xp, first._be
        step = 1 if state is None else state["step"] + 1
        flat = getattr(self, "_flat", None)
        if state is None or flat is None or flat["state"] is not state:
            m = xp.zeros(sum(p.size for p in params), dtype=first.dtype)
            v = xp.zeros_like(m)
            if state is not None:  # e.g. after load_state_dict
                m[...] = xp.concatenate([state["m"][n]._data.reshape(-1) for n in self.params])
                v[...] = xp.concatenate([state["v"][n]._data.reshape(-1) for n in self.params])
            views_m, views_v, start = OrderedDict(), OrderedDict(), 0
            for name, p in self.params.items():
                views_m[name] = _constant(m[start:start + p.size].reshape(p.shape), be)
                views_v[name] = _constant(v[start:start + p.size].reshape(p.shape), be)
                start += p.size
            flat = {"m": m, "v": v, "views_m": views_m, "views_v": views_v}
        beta1, beta2 = self.betas
        g = xp.concatenate([grads[n]._data.reshape(-1) for n in self.params])
        if self.weight_decay:
            g += self.weight_decay * xp.concatenate([p._data.reshape(-1) for p in params])
        m, v = flat["m"], flat["v"]
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        g *= g
        v += (1.0 - beta2) * g
        denominator = xp.sqrt(v * (1.0 / (1.0 - beta2 ** step)))
        denominator += self.eps
        update = m * (self.lr / (1.0 - beta1 ** step))
        update /= denominator
        start = 0
        for p in params:
            p.data = p._data - update[start:start + p.size].reshape(p.shape)
            start += p.size
        new_state = {"step": step, "m": flat["views_m"], "v": flat["views_v"]}
        flat["state"] = new_state
        self._flat = flat
        return new_state

    def _raw_step_each(self, grads, state):
        step = 1 if state is None else state["step"] + 1
        beta1, beta2 = self.betas
        correction1, correction2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
        new_m, new_v = OrderedDict(), OrderedDict()
        for name, p in self.params.items():
            g = grads[name]._data
            xp = p._be.xp
            if self.weight_decay:
                g = g + self.weight_decay * p._data
            m = (1.0 - beta1) * g
            v = (1.0 - beta2) * (g * g)
            if state is not None:
                m += beta1 * state["m"][name]._data
                v += beta2 * state["v"][name]._data
            new_m[name], new_v[name] = _constant(m, p._be), _constant(v, p._be)
            denominator = xp.sqrt(v * (1.0 / correction2))
            denominator += self.eps
            update = m * (self.lr / correction1)
            update /= denominator
            p.data = (p._data - update).astype(p._data.dtype, copy=False)
        return {"step": step, "m": new_m, "v": new_v}

    def _state_arrays(self):
        if self.state is None:
            return {"step": np.asarray(0, dtype=np.int64)}
        out = {"step": np.asarray(self.state["step"], dtype=np.int64)}
        for name in self.params:
            out[f"m.{name}"] = np.array(self.state["m"][name].numpy())
            out[f"v.{name}"] = np.array(self.state["v"][name].numpy())
        return out

    def _load_state_arrays(self, sd):
        if "step" not in sd:
            raise KeyError("Adam.load_state_dict: missing 'step'")
        step = int(np.asarray(sd.pop("step")))
        m, v = OrderedDict(), OrderedDict()
        for key, value in sd.items():
            prefix, _, name = key.partition(".")
            if prefix not in ("m", "v"):
                raise KeyError(f"Adam.load_state_dict: unexpected key {key!r}")
            (m if prefix == "m" else v)[name] = self._array_for(name, value, prefix)
        if step == 0:
            self.state = None
            return
        missing = [n for n in self.params if n not in m or n not in v]
        if missing:
            raise KeyError(f"Adam.load_state_dict: no m/v state for parameters {missing}")
        self.state = {"step": step, "m": m, "v": v}
from .hypergradient_descent import SGDHD, AdamHD  # noqa: E402
