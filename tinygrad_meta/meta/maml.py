"""MAML (Finn et al. 2017): second order, first order (FOMAML), and ANIL, task-vectorised.

The meta-loss is the mean over tasks of the query loss of the model after
``inner_steps`` inner-optimizer steps on the support set (the inner loop, vectorisation
and the task-batch format: meta/base.py).

All algorithms share one small training interface, used by the command line:
``meta_parameters()`` (what the outer optimizer updates), ``meta_step(task_batch) ->
(loss, grads)``, ``evaluate(task_batch, steps)``, ``state_dict()``/``load_state_dict()``.

>>> import numpy as np, tinygrad_meta as tgm
>>> from tinygrad_meta.tasks.sinusoid import sample_batch
>>> model = tgm.nn.MLP([1, 40, 40, 1], rng=np.random.default_rng(0))
>>> maml = MAML(model, inner_lr=0.01, inner_steps=1)
>>> batch = sample_batch(num_tasks=4, shots=10, rng=np.random.default_rng(0))
>>> loss, grads = maml.meta_step(batch)
>>> list(grads)[:2], grads["layers.0.weight"].shape
(['layers.0.weight', 'layers.0.bias'], (40, 1))
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..autograd import enable_grad, grad
from ..functional import mse_loss
from ..optim import sgd_step
from ..tensor import Tensor
from .base import MetaLearner, _last, sgd_update

__all__ = ["MAML", "MetaLearner", "sgd_update"]


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning.

    ``MAML(model, inner_lr=0.01, inner_steps=1, first_order=False, loss_fn=mse_loss,
    vectorize=True, adapt_only=None, inner_optimizer=sgd_step)``. ``first_order=True`` is
    FOMAML: the inner gradients are detached, so the meta-gradient is the query-loss
    gradient at the fast weights. ``adapt_only=["layers.2"]`` adapts only those parameters
    in the inner loop (ANIL). ``inner_optimizer=optim.adam_step`` runs Adam in the inner
    loop (differentiated through, to second order); the rest: ``MetaLearner``.

    ``meta_loss(task_batch)``: mean over tasks of the adapted query loss, a scalar Tensor
    differentiable with respect to ``meta_parameters()``. ``meta_step(task_batch)``:
    ``(loss as float, OrderedDict of meta-gradients)`` for an outer optimizer.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> from tinygrad_meta.tasks.sinusoid import sample_batch
    >>> maml = MAML(tgm.nn.MLP([1, 8, 1], rng=np.random.default_rng(0)), vectorize=False)
    >>> loss = maml.meta_loss(sample_batch(2, 5, np.random.default_rng(0)))
    >>> loss.shape, loss.requires_grad
    ((), True)
    """

    def __init__(self, model, inner_lr=0.01, inner_steps=1, first_order=False, loss_fn=mse_loss,
                 vectorize=True, adapt_only=None, inner_optimizer=sgd_step, **unknown):
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, loss_fn=loss_fn,
                         vectorize=vectorize, adapt_only=adapt_only, inner_optimizer=inner_optimizer,
                         **unknown)
        self.first_order = bool(first_order)

    def meta_loss(self, task_batch):
        """Mean over tasks of the query loss after adaptation (scalar Tensor with a graph)."""
        support_x, support_y, query_x, query_y = self._task_batch(task_batch)
        params = self.model.parameter_dict()
        create_graph = not self.first_order
        steps = self.inner_steps
        with enable_grad():
            if self._batches_tasks():
                fast = _last(self._adaptation(params, support_x, support_y, steps, create_graph,
                                              True, True))
                # mean over all query points = mean over tasks of each task's mean
                return self.loss_fn(self._vectorized_forward(fast, query_x), query_y)
            total = None
            for t in range(support_x.shape[0]):
                fast = _last(self._adaptation(params, support_x[t], support_y[t], steps, create_graph,
                                              True, False))
                loss = self.loss_fn(self._forward(fast, query_x[t]), query_y[t])
                total = loss if total is None else total + loss
            return total * (1.0 / support_x.shape[0])

    def _meta_step_tensors(self, task_batch):
        loss = self.meta_loss(task_batch)
        params = self.meta_parameters()
        grads = grad(loss, list(params.values()), allow_unused=True)
        out = OrderedDict()
        for (name, p), g in zip(params.items(), grads):
            out[name] = g if g is not None else Tensor(np.zeros(p.shape), dtype=p.dtype,
                                                       device=p.device)
        return loss.detach(), out

    def __repr__(self):
        optimizer = getattr(self.inner_optimizer, "__name__", type(self.inner_optimizer).__name__)
        return (f"{type(self).__name__}(inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
                f"first_order={self.first_order}, vectorize={self.vectorize}, "
                f"inner_optimizer={optimizer}, "
                f"adapt_only={len(self.adapt_names)} of {len(self.model.parameter_dict())} parameters)")
