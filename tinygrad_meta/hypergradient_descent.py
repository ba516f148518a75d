"""Online hypergradient descent: SGD and Adam that tune their own learning rate.

Baydin et al. 2018, "Online Learning Rate Adaptation with Hypergradient Descent". The
update θ_t = θ_{t-1} + u_t depends on the learning rate α only through the last step,
so d f(θ_t)/dα = ∇f(θ_t) · ∂u_t/∂α is available for free from the gradient the next
step computes anyway. Each step therefore first nudges α by gradient descent on that
hypergradient (step size β, ``hypergrad_lr``), then takes its ordinary step with it:

* SGD-HD:  α_t = α_{t-1} + β ∇f(θ_{t-1}) · ∇f(θ_{t-2}),   θ_t = θ_{t-1} - α_t ∇f(θ_{t-1})
* Adam-HD: α_t = α_{t-1} + β ∇f(θ_{t-1}) · d_{t-1},        θ_t = θ_{t-1} - α_t d_t
  where d = m̂ / (√v̂ + ε) is Adam's (bias-corrected) update direction.

Consecutive gradients that agree grow α, ones that disagree (overshoot) shrink it. The
defaults β = 1e-3 (SGD) and 1e-7 (Adam) are the paper's. α is not clipped; with a too
large β it can turn negative, as in the paper's algorithm.

Both classes have the interface of ``optim.SGD`` / ``optim.Adam``: construct with the
parameters (an ordered dict name -> Tensor, or a list), call ``backward()`` then
``step()``, ``zero_grad()``; ``lr`` is the current learning rate and ``lr_history`` the
learning rate each step used. They import only the tensor layer, so ``optim`` can
re-export them without an import cycle.

>>> import tinygrad_meta as tgm
>>> w = tgm.Tensor([1.0], requires_grad=True)
>>> opt = SGDHD({"w": w}, lr=0.1, hypergrad_lr=0.01)
>>> for _ in range(2):
...     opt.zero_grad(); (w * w).sum().backward(); opt.step()
>>> [round(a, 4) for a in opt.lr_history]   # second step: 0.1 + 0.01 * (1.6 * 2.0)
[0.1, 0.132]
"""
from __future__ import annotations

import numbers
from collections import OrderedDict

import numpy as np

from .gradient_checks import checked_gradients
from .tensor import Tensor

__all__ = ["SGDHD", "AdamHD"]


class _HypergradientOptimizer:
    """Shared parameter handling, gradient gathering and checkpoint state."""
    _hyper_names = ("lr", "hypergrad_lr")

    def __init__(self, params, lr, hypergrad_lr):
        name = type(self).__name__
        items = list(params.items()) if isinstance(params, dict) else \
            [(str(i), p) for i, p in enumerate(params)]
        if not items:
            raise ValueError(f"{name}: got an empty parameter list")
        for key, p in items:
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: parameter {key!r} is a {type(p).__name__}, expected a Tensor")
            if p.data.dtype.kind != "f":
                raise TypeError(f"{name}: parameter {key!r} has dtype {p.dtype}; it must be floating")
        for label, value in (("lr", lr), ("hypergrad_lr", hypergrad_lr)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"{name}: {label} must be a number >= 0, got {value!r}")
        self.params = OrderedDict(items)
        self.lr = float(lr)
        self.hypergrad_lr = float(hypergrad_lr)
        self.lr_history = []
        self._previous = None  # the direction the learning rate multiplied last step

    def zero_grad(self):
        """Forget the accumulated ``.grad`` of every parameter."""
        for p in self.params.values():
            p.grad = None

    def _gather(self, grads):
        grads = checked_gradients(self.params, grads, f"{type(self).__name__}.step",
                                  use_dot_grad=True)
        return OrderedDict((key, g.data) for key, g in grads.items())

    def _adapt_lr(self, grads):
        # the hypergradient step on α: its sign says whether the last step undershot
        if self._previous is not None:
            h = sum(float((grads[k] * self._previous[k]).sum()) for k in grads)
            self.lr += self.hypergrad_lr * h
        self.lr_history.append(self.lr)

    # ---- checkpointing --------------------------------------------------------
    def state_dict(self):
        """Plain numpy arrays: ``hyper.lr``, ``hyper.hypergrad_lr``, ``lr_history``,
        ``previous.<param>`` and any subclass state; saveable with ``np.savez``."""
        out = {f"hyper.{n}": np.asarray(getattr(self, n), dtype=np.float64) for n in self._hyper_names}
        out["lr_history"] = np.asarray(self.lr_history, dtype=np.float64)
        if self._previous is not None:
            for key, value in self._previous.items():
                out[f"previous.{key}"] = np.array(self.params[key]._be.to_numpy(value))
        out.update(self._extra_state())
        return out

    def load_state_dict(self, state_dict):
        """Restore what :meth:`state_dict` returned (values may be 0-d arrays)."""
        name = type(self).__name__
        sd = dict(state_dict)
        for hyper in self._hyper_names:
            key = f"hyper.{hyper}"
            if key not in sd:
                raise KeyError(f"{name}.load_state_dict: missing {key!r}")
            value = np.asarray(sd.pop(key))
            setattr(self, hyper, tuple(float(x) for x in value) if value.ndim else float(value))
        self.lr_history = [float(x) for x in np.asarray(sd.pop("lr_history", []))]
        previous = OrderedDict()
        for key in list(sd):
            prefix, _, param = key.partition(".")
            if prefix == "previous":
                previous[param] = self._array(param, sd.pop(key), key)
        self._previous = previous or None
        self._load_extra_state(sd)
        if sd:
            raise KeyError(f"{name}.load_state_dict: unexpected keys {sorted(sd)}")

    def _array(self, param, value, key):
        p = self.params.get(param)
        if p is None:
            raise KeyError(f"{type(self).__name__}.load_state_dict: {key!r} names no parameter")
        value = np.asarray(value)
        if value.shape != p.data.shape:
            raise ValueError(f"{type(self).__name__}.load_state_dict: {key!r} has shape "
                             f"{value.shape}, the parameter has shape {p.data.shape}")
        return p._be.asarray(value, dtype=p.data.dtype)

    def _extra_state(self):
        return {}

    def _load_extra_state(self, sd):
        pass

    def __repr__(self):
        return (f"{type(self).__name__}({len(self.params)} parameters, lr={self.lr!r}, "
                f"hypergrad_lr={self.hypergrad_lr!r})")


class SGDHD(_HypergradientOptimizer):
    """SGD whose learning rate follows the hypergradient ∇f(θ_t)·∇f(θ_{t-1}) (β = 1e-3).

    ``params``: ordered dict name -> Tensor or list of Tensors. ``lr``: the initial α.
    ``hypergrad_lr``: β. ``step(grads=None)`` uses each parameter's ``.grad`` (or a dict
    name -> Tensor) and updates the parameters in place; ``lr_history[i]`` is the
    learning rate step i used. Example: see the module docstring.
    """

    def __init__(self, params, lr, hypergrad_lr=1e-3):
        super().__init__(params, lr, hypergrad_lr)

    def step(self, grads=None):
        grads = self._gather(grads)
        self._adapt_lr(grads)
        for key, p in self.params.items():
            p.data = (p.data - self.lr * grads[key]).astype(p.data.dtype, copy=False)
        self._previous = OrderedDict((k, g.copy()) for k, g in grads.items())


class AdamHD(_HypergradientOptimizer):
    """Adam whose learning rate follows the hypergradient ∇f(θ_t)·d_{t-1} (β = 1e-7),
    d = m̂/(√v̂ + ε) the previous bias-corrected update direction.

    ``params``, ``lr``, ``hypergrad_lr``: as for :class:`SGDHD`; ``betas``, ``eps``:
    Adam's. ``lr_history[i]`` is the learning rate step i used.

    >>> import tinygrad_meta as tgm
    >>> w = tgm.Tensor([1.0], requires_grad=True)
    >>> opt = AdamHD([w], lr=0.1)
    >>> (w * w).sum().backward(); opt.step(); round(float(w.item()), 4)
    0.9
    """
    _hyper_names = ("lr", "hypergrad_lr", "betas", "eps")

    def __init__(self, params, lr=1e-3, hypergrad_lr=1e-7, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr, hypergrad_lr)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamHD: betas must be two numbers in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"AdamHD: eps must be >= 0, got {eps!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.step_count = 0
        self.m = None
        self.v = None

    def step(self, grads=None):
        grads = self._gather(grads)
        self._adapt_lr(grads)
        beta1, beta2 = self.betas
        self.step_count += 1
        if self.m is None:
            self.m = OrderedDict((k, g * 0) for k, g in grads.items())
            self.v = OrderedDict((k, g * 0) for k, g in grads.items())
        directions = OrderedDict()
        for key, p in self.params.items():
            g = grads[key]
            xp = p._be.xp
            self.m[key] = beta1 * self.m[key] + (1.0 - beta1) * g
            self.v[key] = beta2 * self.v[key] + (1.0 - beta2) * g * g
            m_hat = self.m[key] / (1.0 - beta1 ** self.step_count)
            v_hat = self.v[key] / (1.0 - beta2 ** self.step_count)
            directions[key] = m_hat / (xp.sqrt(v_hat) + self.eps)
            p.data = (p.data - self.lr * directions[key]).astype(p.data.dtype, copy=False)
        self._previous = directions

    def _extra_state(self):
        out = {"step": np.asarray(self.step_count, dtype=np.int64)}
        if self.m is not None:
            for key in self.params:
                to_numpy = self.params[key]._be.to_numpy
                out[f"m.{key}"] = np.array(to_numpy(self.m[key]))
                out[f"v.{key}"] = np.array(to_numpy(self.v[key]))
        return out

    def _load_extra_state(self, sd):
        self.step_count = int(np.asarray(sd.pop("step", 0)))
        m, v = OrderedDict(), OrderedDict()
        for key in list(sd):
            prefix, _, param = key.partition(".")
            if prefix in ("m", "v"):
                (m if prefix == "m" else v)[param] = self._array(param, sd.pop(key), key)
        self.m, self.v = (m, v) if m else (None, None)
