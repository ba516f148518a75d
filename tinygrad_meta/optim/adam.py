"""Adam and AdamW, in place.

The update is rules.adam_rule, the same one ``adam_step`` differentiates; here it runs
on raw flat arrays (see optimizer.py): all parameters of one dtype in one buffer.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from .optimizer import Optimizer
from .rules import adam_rule

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam (Kingma & Ba, bias-corrected), with L2 weight decay as torch.optim.Adam, or
    with ``decoupled_weight_decay=True`` AdamW's decay (see :class:`AdamW`).

    ``params``: see :class:`Optimizer`. ``lr``, ``eps``, ``weight_decay``: numbers >= 0;
    ``betas``: two numbers in [0, 1). Checkpoint keys: ``hyper.lr``, ``hyper.betas``,
    ``hyper.eps``, ``hyper.weight_decay``, ``step``, ``m.<param>``, ``v.<param>`` (and
    ``decoupled_weight_decay`` for AdamW, so neither loads the other's state).

    >>> import tinygrad_meta as tgm
    >>> w = tgm.Tensor([1.0], requires_grad=True)
    >>> opt = Adam({"w": w}, lr=0.1)
    >>> (w * w).sum().backward(); opt.step(); round(float(w.item()), 4)
    0.9
    """
    _hyper_names = ("lr", "betas", "eps", "weight_decay")
    _state_names = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False):
        super().__init__(params)
        self.lr = self._check_hyper("lr", lr)
        self.eps = self._check_hyper("eps", eps)
        self.weight_decay = self._check_hyper("weight_decay", weight_decay)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{type(self).__name__}: betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = tuple(self._check_hyper("betas", b, 0.0, 1.0) for b in betas)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self.step_count = 0

    def _begin_step(self, flat_grads):
        super()._begin_step(flat_grads)
        self.step_count += 1

    def _update(self, param, grad, state):
        beta1, beta2 = self.betas
        new, state["m"], state["v"], direction = adam_rule(
            ops.RAW, param, grad, state.get("m"), state.get("v"), self.step_count, self.lr,
            beta1, beta2, self.eps, self.weight_decay, self.decoupled_weight_decay)
        return new, direction

    def _extra_state(self):
        out = {"step": np.asarray(self.step_count, dtype=np.int64)}
        if self.decoupled_weight_decay:
            out["decoupled_weight_decay"] = np.asarray(True)
        return out

    def _load_extra_state(self, sd):
        caller = f"{type(self).__name__}.load_state_dict"
        if "step" not in sd:
            raise KeyError(f"{caller}: missing 'step'")
        self.step_count = int(np.asarray(sd.pop("step")))
        decoupled = bool(np.asarray(sd.pop("decoupled_weight_decay", False)))
        if decoupled != self.decoupled_weight_decay:
            kinds = {True: "decoupled (AdamW)", False: "L2 (Adam)"}
            raise ValueError(f"{caller}: the state is from an optimizer with {kinds[decoupled]} "
                             f"weight decay, this one uses {kinds[self.decoupled_weight_decay]}")

    def _check_loaded_state(self, caller):
        if self.step_count == 0:
            self._bucket_state = [{} for _ in self._buckets]  # no step taken: no moments
        elif not all("m" in s and "v" in s for s in self._bucket_state):
            raise KeyError(f"{caller}: step {self.step_count} but no m/v state for the parameters")


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), torch.optim.AdamW's
    algorithm: each step first shrinks ``p <- p - lr * weight_decay * p``, then takes the
    Adam step with the plain gradient (the decay never enters m or v).

    ``weight_decay`` defaults to 1e-2, as in PyTorch; the rest as :class:`Adam`.

    >>> import tinygrad_meta as tgm
    >>> w = tgm.Tensor([1.0], requires_grad=True)
    >>> opt = AdamW([w], lr=0.1, weight_decay=0.5)
    >>> (w * w).sum().backward(); opt.step(); round(float(w.item()), 4)  # 1 - 0.05 - 0.1
    0.85
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True)
