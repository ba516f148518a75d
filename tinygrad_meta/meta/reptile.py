"""Reptile (Nichol et al. 2018): first-order meta-learning without a meta-loss gradient.

For each task, run ``inner_steps`` plain SGD steps from the shared parameters θ on the
task's support set, reaching φ_t; then move θ towards the average: θ ← θ + ε (mean_t φ_t − θ)
with ε = ``outer_stepsize``.

To share the training interface of MAML, ``meta_step`` returns the *pseudo-gradient*
θ − mean_t φ_t: an outer ``SGD`` with ``lr=outer_stepsize`` then performs exactly
Reptile's update (``outer_update(grads)`` does that in place). Any other outer optimizer
(Adam, as in the paper's sinusoid experiment) can take the same pseudo-gradient.

>>> import numpy as np, tinygrad_meta as tgm
>>> from tinygrad_meta.tasks.sinusoid import sample_batch
>>> reptile = Reptile(tgm.nn.MLP([1, 8, 1], rng=np.random.default_rng(0)), inner_steps=2)
>>> loss, grads = reptile.meta_step(sample_batch(3, 5, np.random.default_rng(0)))
>>> grads["layers.0.weight"].shape
(1, 8)
"""
from __future__ import annotations

import numbers
from collections import OrderedDict

import numpy as np

from ..autograd import enable_grad, no_grad
from ..functional import mse_loss
from ..tensor import Tensor, _constant
from .maml import MetaLearner

__all__ = ["Reptile"]


class Reptile(MetaLearner):
    """``Reptile(model, inner_lr=0.02, inner_steps=5, outer_stepsize=0.1, loss_fn=mse_loss,
    vectorize=True, adapt=None)``.

    ``meta_step(task_batch) -> (loss, grads)``: ``loss`` is the mean query loss after
    adaptation (a float, for monitoring); ``grads[name]`` is θ − mean_t φ_t (zero for
    parameters not adapted). Nothing is differentiated through the inner loop.
    """

    def __init__(self, model, inner_lr=0.02, inner_steps=5, outer_stepsize=0.1, loss_fn=mse_loss,
                 vectorize=True, adapt=None):
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, loss_fn=loss_fn,
                         vectorize=vectorize, adapt=adapt)
        if not isinstance(outer_stepsize, numbers.Real) or outer_stepsize < 0:
            raise ValueError(f"Reptile: outer_stepsize must be a number >= 0, got {outer_stepsize!r}")
        self.outer_stepsize = float(outer_stepsize)

    def meta_loss(self, task_batch):
        raise TypeError("Reptile has no differentiable meta-loss; use meta_step(), which returns "
                        "the pseudo-gradient θ − mean φ")

    def _adapted(self, support_x, support_y):
        """Per-task adapted parameters φ as raw arrays with a leading task axis."""
        params = self._adapt_leaves(self.model.parameters())
        tasks = support_x.shape[0]
        with enable_grad():
            if self.vectorize:
                fast = self._inner_loop(support_x, support_y, params, 0, False, task_axis=True)
                fast = self._continue(fast, support_x, support_y, self.inner_steps)
                return fast
            per_task = []
            for t in range(tasks):
                per_task.append(self._continue(OrderedDict(params), support_x[t], support_y[t],
                                               self.inner_steps, task_axis=False))
        be = support_x._be
        out = OrderedDict(params)
        for name in self.adapt_names:
            out[name] = _constant(be.xp.stack([f[name].data for f in per_task]), be)
        return out

    def meta_step(self, task_batch):
        """(mean query loss after adaptation, OrderedDict name -> θ − mean_t φ_t)."""
        support_x, support_y, query_x, query_y = self._task_batch(task_batch)
        fast = self._adapted(support_x, support_y)
        with no_grad():
            if self.vectorize:
                loss = float(self.loss_fn(self.model(query_x, params=fast), query_y).item())
            else:
                losses = []
                for t in range(support_x.shape[0]):
                    task_params = OrderedDict(
                        (n, _constant(p.data[t], p._be) if n in self.adapt_names else p)
                        for n, p in fast.items())
                    losses.append(float(self.loss_fn(self.model(query_x[t], params=task_params),
                                                     query_y[t]).item()))
                loss = float(np.mean(losses))
        grads = OrderedDict()
        for name, theta in self.model.parameters().items():
            if name in self.adapt_names:
                phi_mean = fast[name].data.mean(axis=0)
                grads[name] = _constant((theta.data - phi_mean).astype(theta.dtype, copy=False),
                                        theta._be)
            else:
                grads[name] = Tensor(np.zeros(theta.shape), dtype=theta.dtype, device=theta.device)
        return loss, grads

    def outer_update(self, grads):
        """θ ← θ − outer_stepsize · grads, in place: with meta_step's grads, Reptile's update."""
        for name, theta in self.model.parameters().items():
            theta.data = theta.data - self.outer_stepsize * grads[name].data

    def __repr__(self):
        return (f"Reptile(inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
                f"outer_stepsize={self.outer_stepsize}, vectorize={self.vectorize})")
