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

``SGDHD`` is an :class:`SGD` and ``AdamHD`` an :class:`Adam` (same update, same
interface: ``backward()`` then ``step()``, ``zero_grad()``); ``lr`` is the current
learning rate and ``lr_history`` the learning rate each step used.

>>> import tinygrad_meta as tgm
>>> w = tgm.Tensor([1.0], requires_grad=True)
>>> opt = SGDHD({"w": w}, lr=0.1, hypergrad_lr=0.01)
>>> for _ in range(2):
...     opt.zero_grad(); (w * w).sum().backward(); opt.step()
>>> [round(a, 4) for a in opt.lr_history]   # second step: 0.1 + 0.01 * (1.6 * 2.0)
[0.1, 0.132]
"""
from __future__ import annotations

import numpy as np

from .adam import Adam
from .sgd import SGD

__all__ = ["SGDHD", "AdamHD"]


class _Hypergradient:
    """What SGD-HD and Adam-HD add to their optimizer: before each step, α moves by
    β times the dot product of the new gradient with the last step's direction
    (kept as the per-parameter state ``previous``)."""

    def _init_hypergradient(self, hypergrad_lr):
        self.hypergrad_lr = self._check_hyper("hypergrad_lr", hypergrad_lr)
        self.lr_history = []

    def _begin_step(self, flat_grads):
        super()._begin_step(flat_grads)
        # the hypergradient step on α: its sign says whether the last step undershot
        if all("previous" in state for state in self._bucket_state):
            h = sum(float((g * state["previous"]).sum())
                    for g, state in zip(flat_grads, self._bucket_state))
            self.lr += self.hypergrad_lr * h
        self.lr_history.append(self.lr)

    def _end_update(self, state, direction, grad):
        # SGD's direction is the gradient array itself, which its owner may reuse
        state["previous"] = direction.copy() if direction is grad else direction

    def _extra_state(self):
        out = super()._extra_state()
        out["lr_history"] = np.asarray(self.lr_history, dtype=np.float64)
        return out

    def _load_extra_state(self, sd):
        self.lr_history = [float(x) for x in np.asarray(sd.pop("lr_history", []))]
        super()._load_extra_state(sd)


class SGDHD(_Hypergradient, SGD):
    """SGD whose learning rate follows the hypergradient ∇f(θ_t)·∇f(θ_{t-1}) (β = 1e-3).

    ``params``: see ``Optimizer``. ``lr``: the initial α. ``hypergrad_lr``: β.
    ``step(grads=None)`` uses each parameter's ``.grad`` (or a dict name -> Tensor) and
    updates the parameters in place; ``lr_history[i]`` is the learning rate step i used.
    Checkpoint keys: ``hyper.lr``, ``hyper.hypergrad_lr``, ``lr_history``,
    ``previous.<param>``. Example: see the module docstring.
    """
    _hyper_names = ("lr", "hypergrad_lr")
    _state_names = ("previous",)

    def __init__(self, params, lr, hypergrad_lr=1e-3):
        super().__init__(params, lr)
        self._init_hypergradient(hypergrad_lr)


class AdamHD(_Hypergradient, Adam):
    """Adam whose learning rate follows the hypergradient ∇f(θ_t)·d_{t-1} (β = 1e-7),
    d = m̂/(√v̂ + ε) the previous bias-corrected update direction.

    ``params``, ``lr``, ``hypergrad_lr``: as for :class:`SGDHD`; ``betas``, ``eps``:
    Adam's. ``lr_history[i]`` is the learning rate step i used. Checkpoint keys: those of
    SGD-HD plus ``hyper.betas``, ``hyper.eps``, ``step``, ``m.<param>``, ``v.<param>``.

    >>> import tinygrad_meta as tgm
    >>> w = tgm.Tensor([1.0], requires_grad=True)
    >>> opt = AdamHD([w], lr=0.1)
    >>> (w * w).sum().backward(); opt.step(); round(float(w.item()), 4)
    0.9
    """
    _hyper_names = ("lr", "hypergrad_lr", "betas", "eps")
    _state_names = ("m", "v", "previous")

    def __init__(self, params, lr=1e-3, hypergrad_lr=1e-7, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr, betas, eps)
        self._init_hypergradient(hypergrad_lr)
