"""Reptile (Nichol et al. 2018): first-order meta-learning without a meta-loss gradient.

For each task, run ``inner_steps`` inner-optimizer steps (plain SGD by default) from the
shared parameters θ on the task's support set, reaching φ_t; then move θ towards the
average: θ ← θ + ε (mean_t φ_t − θ) with ε = ``outer_stepsize``.

Which data the inner loop trains on matters for classification. Reptile learns through
the inner product of gradients taken on *different* mini-batches of a task (Nichol et al.
2018, section 5); when every step takes the same full batch, that term becomes "make this
batch's gradient larger", and with labels permuted per task the rest is joint training,
which cannot learn a few-shot classifier (5-way 1-shot Omniglot fell from 38 % to 34 % over
training this way). The paper trains the inner loop on more examples than the test-time
shots, in mini-batches. ``inner_data="support+query"`` trains on both parts of each task
(the query loss reported is then a training loss), and ``inner_batches=B`` splits that pool
into B strided mini-batches (sample i goes to batch i mod B), step s training on batch
s mod B.

To share the training interface of MAML, ``meta_step`` returns the *pseudo-gradient*
θ − mean_t φ_t: an outer ``SGD`` with ``lr=outer_stepsize`` then performs exactly
Reptile's update (``outer_update(grads)`` does that in place). Any other outer optimizer
(Adam, as in the paper's sinusoid experiment) can take the same pseudo-gradient.

>>> import numpy as np, tinygrad_meta as tgm
>>> from tinygrad_meta.tasks.sinusoid import sample_batch
>>> reptile = Reptile(tgm.nn.MLP([1, 8, 1], rng=np.random.default_rng(0)), inner_steps=2)
>>> loss, grads = reptile.meta_step(sample_batch(3, 5, np.random.default_rng(0)))
>>> grads["layers.0.weight"].shape
(8, 1)
"""
from __future__ import annotations

import numbers
from collections import OrderedDict

import numpy as np

from ..autograd import enable_grad, no_grad
from ..functional import mse_loss
from ..optim import sgd_step
from ..tensor import Tensor, _constant, concatenate, stack
from .base import MetaLearner, _last

__all__ = ["Reptile"]

# what the inner loop may train on: the support set (the default), or support and query
INNER_DATA = ("support", "support+query")


class Reptile(MetaLearner):
    """``Reptile(model, inner_lr=0.02, inner_steps=5, outer_stepsize=0.1, loss_fn=mse_loss,
    vectorize=True, adapt_only=None, inner_optimizer=sgd_step, inner_data="support",
    inner_batches=1)``: ``inner_data`` and ``inner_batches`` as in the module docstring.

    ``meta_step(task_batch) -> (loss, grads)``: ``loss`` is the mean query loss after
    adaptation (a float, for monitoring); ``grads[name]`` is θ − mean_t φ_t (zero for
    parameters not adapted). Nothing is differentiated through the inner loop.
    """

    def __init__(self, model, inner_lr=0.02, inner_steps=5, outer_stepsize=0.1, loss_fn=mse_loss,
                 vectorize=True, adapt_only=None, inner_optimizer=sgd_step, inner_data="support",
                 inner_batches=1, **unknown):
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, loss_fn=loss_fn,
                         vectorize=vectorize, adapt_only=adapt_only, inner_optimizer=inner_optimizer,
                         **unknown)
        if not isinstance(outer_stepsize, numbers.Real) or outer_stepsize < 0:
            raise ValueError(f"Reptile: outer_stepsize must be a number >= 0, got {outer_stepsize!r}")
        if inner_data not in INNER_DATA:
            raise ValueError(f"Reptile: inner_data must be one of {', '.join(INNER_DATA)}, got {inner_data!r}")
        if isinstance(inner_batches, bool) or not isinstance(inner_batches, numbers.Integral) or inner_batches < 1:
            raise ValueError(f"Reptile: inner_batches must be an integer >= 1, got {inner_batches!r}")
        self.outer_stepsize = float(outer_stepsize)
        self.inner_data = inner_data
        self.inner_batches = int(inner_batches)

    def _inner_batches(self, support_x, support_y, query_x, query_y):
        """The inner loop's data: (x, y) Tensors with a task axis, or lists of mini-batches."""
        if self.inner_data == "support+query":
            x, y = concatenate([support_x, query_x], axis=1), concatenate([support_y, query_y], axis=1)
        else:
            x, y = support_x, support_y
        if self.inner_batches == 1:
            return x, y
        pool = x.shape[1]
        if self.inner_batches > pool:
            raise ValueError(f"Reptile: inner_batches={self.inner_batches} is more than the {pool} samples "
                             f"per task in the inner data ({self.inner_data})")
        # recorded slices, not raw arrays: a compiled meta_step must read each new batch's data
        picks = [slice(b, None, self.inner_batches) for b in range(self.inner_batches)]
        return [x[:, i] for i in picks], [y[:, i] for i in picks]

    def meta_loss(self, task_batch):
        raise TypeError("Reptile has no differentiable meta-loss; use meta_step(), which returns "
                        "the pseudo-gradient θ − mean φ")

    def _meta_step_tensors(self, task_batch):
        """(mean query loss after adaptation, OrderedDict name -> θ − mean_t φ_t); ``meta_step``
        gives the loss as a float."""
        support_x, support_y, query_x, query_y = self._task_batch(task_batch)
        inner_x, inner_y = self._inner_batches(support_x, support_y, query_x, query_y)
        params = self.model.parameter_dict()
        tasks = support_x.shape[0]
        steps = self.inner_steps
        with enable_grad():
            if self._batches_tasks():
                fast = _last(self._adaptation(params, inner_x, inner_y, steps, False, False, True))
                with no_grad():
                    loss = self.loss_fn(self._vectorized_forward(fast, query_x), query_y)
                phi = {name: fast[name].data for name in self.adapt_names}
            else:
                per_task, losses = [], []
                for t in range(tasks):
                    task_x = [b[t] for b in inner_x] if isinstance(inner_x, list) else inner_x[t]
                    task_y = [b[t] for b in inner_y] if isinstance(inner_y, list) else inner_y[t]
                    fast = _last(self._adaptation(params, task_x, task_y, steps, False, False, False))
                    with no_grad():
                        losses.append(self.loss_fn(self._forward(fast, query_x[t]), query_y[t]))
                    per_task.append(fast)
                # the mean in float64, as np.mean of the per-task floats
                with no_grad():
                    loss = stack(losses).astype("float64").mean()
                xp = support_x._be.xp
                phi = {name: xp.stack([f[name].data for f in per_task]) for name in self.adapt_names}
        grads = OrderedDict()
        for name, theta in params.items():
            if name in phi:
                # φ has a task axis, or is θ itself broadcast when no step ran
                phi_mean = phi[name].mean(axis=0) if phi[name].ndim > theta.ndim else phi[name]
                grads[name] = _constant((theta.data - phi_mean).astype(theta.dtype, copy=False),
                                        theta._be)
            else:
                grads[name] = Tensor(np.zeros(theta.shape), dtype=theta.dtype, device=theta.device)
        return loss, grads

    def outer_update(self, grads):
        """θ ← θ − outer_stepsize · grads, in place: with meta_step's grads, Reptile's update."""
        for name, theta in self.model.parameter_dict().items():
            theta.data = theta.data - self.outer_stepsize * grads[name].data

    def __repr__(self):
        return (f"Reptile(inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
                f"outer_stepsize={self.outer_stepsize}, inner_data={self.inner_data!r}, "
                f"inner_batches={self.inner_batches}, vectorize={self.vectorize})")
