"""Meta-SGD (Li et al. 2017): MAML with a learned learning rate for every parameter entry.

The inner update is ``fast = param - lr * grad`` with ``lr`` a Tensor of the parameter's
shape, meta-learned together with the initialisation. The learning rates are
meta-parameters named ``"lr.<parameter name>"``; ``inner_learning_rates()`` returns them
(name -> Tensor), and the inner loop (meta/base.py) hands them to the inner optimizer
as its per-parameter ``lr``.

>>> import numpy as np, tinygrad_meta as tgm
>>> model = tgm.nn.MLP([1, 8, 1], rng=np.random.default_rng(0))
>>> metasgd = MetaSGD(model, init_lr=0.01)
>>> [n for n in metasgd.meta_parameters()][-2:]
['lr.layers.1.weight', 'lr.layers.1.bias']
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..functional import mse_loss
from ..optim import sgd_step
from ..tensor import Tensor
from .maml import MAML

__all__ = ["MetaSGD"]


class MetaSGD(MAML):
    """``MetaSGD(model, init_lr=0.01, inner_steps=1, first_order=False, loss_fn=mse_loss,
    vectorize=True, adapt_only=None, inner_optimizer=sgd_step)``.

    Every adapted parameter gets a learning-rate Tensor of its shape, filled with
    ``init_lr``; ``meta_parameters()`` holds the model's parameters followed by these
    rates ("lr.layers.0.weight", ...), and ``meta_step`` returns gradients for both.
    The rates are not constrained to be positive (as in the paper).
    """

    def __init__(self, model, init_lr=0.01, inner_steps=1, first_order=False, loss_fn=mse_loss,
                 vectorize=True, adapt_only=None, inner_optimizer=sgd_step, **unknown):
        super().__init__(model, inner_lr=init_lr, inner_steps=inner_steps, first_order=first_order,
                         loss_fn=loss_fn, vectorize=vectorize, adapt_only=adapt_only,
                         inner_optimizer=inner_optimizer, **unknown)
        params = model.parameter_dict()
        self.lrs = OrderedDict(
            (name, Tensor(np.full(params[name].shape, float(init_lr)), dtype=params[name].dtype,
                          device=params[name].device, requires_grad=True))
            for name in self.adapt_names)

    def inner_learning_rates(self):
        """The learned per-parameter rates: OrderedDict name -> Tensor (the live meta-parameters)."""
        return self.lrs

    def meta_parameters(self):
        out = self.model.parameter_dict()
        for name, lr in self.lrs.items():
            out[f"lr.{name}"] = lr
        return out
