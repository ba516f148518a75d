"""SGD: stochastic gradient descent, in place, with momentum, Nesterov and weight decay.

The update is rules.sgd_rule, the same one ``sgd_step`` differentiates; here it runs on
raw flat arrays (see optimizer.py).
"""
from __future__ import annotations

import numpy as np

from .. import ops
from .optimizer import Optimizer
from .rules import sgd_rule

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay
    (torch.optim.SGD's semantics, dampening 0).

    ``params``: see :class:`Optimizer`. ``lr``, ``momentum``, ``weight_decay``: numbers
    >= 0; ``nesterov`` needs a nonzero momentum. Checkpoint keys: ``hyper.lr``,
    ``hyper.momentum``, ``hyper.weight_decay``, ``nesterov``, ``momentum_buffer.<param>``.

    >>> import tinygrad_meta as tgm
    >>> w = tgm.Tensor([1.0], requires_grad=True)
    >>> opt = SGD({"w": w}, lr=0.5)
    >>> (w * w).sum().backward(); opt.step(); w.numpy().tolist()
    [0.0]
    """
    _hyper_names = ("lr", "momentum", "weight_decay")
    _state_names = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params)
        self.lr = self._check_hyper("lr", lr)
        self.momentum = self._check_hyper("momentum", momentum)
        self.weight_decay = self._check_hyper("weight_decay", weight_decay)
        if nesterov and self.momentum == 0:
            raise ValueError(f"{type(self).__name__}: nesterov needs a nonzero momentum")
        self.nesterov = bool(nesterov)

    def _update(self, param, grad, state):
        new, buffer, direction = sgd_rule(ops.RAW, param, grad, self.lr, self.momentum,
                                          self.weight_decay, self.nesterov,
                                          state.get("momentum_buffer"))
        if buffer is not None:
            state["momentum_buffer"] = buffer
        return new, direction

    def _extra_state(self):
        return {"nesterov": np.asarray(self.nesterov)}

    def _load_extra_state(self, sd):
        self.nesterov = bool(np.asarray(sd.pop("nesterov", self.nesterov)))
