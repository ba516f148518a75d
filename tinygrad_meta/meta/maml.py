"""MAML (Finn et al. 2017): second order, first order (FOMAML), and ANIL, task-vectorised.

A task batch is ``(support_x, support_y, query_x, query_y)``, each a Tensor or array with
a leading task axis: (T, K, features). The meta-loss is the mean over tasks of the query
loss of the model after ``inner_steps`` steps of gradient descent on the support set.

Vectorised (the default): every adapted parameter is broadcast to a leading task axis,
``weight (in, out) -> (T, in, out)``, and all tasks run as ONE batched computation. The
inner loss is the sum over tasks of each task's mean loss; since task t's loss depends
only on slice t of the stacked fast weights, its gradient with respect to the stack is
exactly each task's own gradient, stacked. For a ``loss_fn`` that averages over all
elements (``mse_loss``, ``cross_entropy``) and tasks of equal size, that sum is
T * loss_fn(all predictions, all targets), which we get by seeding the backward pass
with T instead of 1 (no extra node). ``vectorize=False`` loops over tasks instead; both
give the same loss and meta-gradient.

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
(['layers.0.weight', 'layers.0.bias'], (1, 40))
"""
from __future__ import annotations

import numbers
from collections import OrderedDict

import numpy as np

from .. import ops
from ..autograd import enable_grad, grad, no_grad
from ..functional import mse_loss
from ..nn import Module, load_parameters
from ..tensor import Tensor, _constant, record

__all__ = ["MAML", "MetaLearner", "sgd_update"]


# ----------------------------------------------------------------------------------
# The inner-loop update as one node
# ----------------------------------------------------------------------------------

def _expand_tasks(param, tasks):
    """``param`` repeated along a new leading task axis, as a zero-copy broadcast view
    (which the fused linear ops turn into one large matmul); its gradient sums the tasks."""
    return param.broadcast_to((tasks,) + param.shape)


def sgd_update(param, gradient, lr):
    """``param - lr * gradient`` as one graph node (differentiable in all three).

    ``lr``: a number, or a Tensor broadcastable to the result (Meta-SGD's per-element
    rates). ``param`` may lack the task axis that ``gradient`` has; the result has it.

    >>> import tinygrad_meta as tgm
    >>> sgd_update(tgm.Tensor([1.0]), tgm.Tensor([2.0]), 0.25).numpy().tolist()
    [0.5]
    """
    if type(lr) is float or isinstance(lr, numbers.Real):
        return record(ops.sgd_update, (param, gradient), -float(lr))
    return record(ops.sgd_update, (param, gradient, lr), None)


# ----------------------------------------------------------------------------------
# Shared machinery
# ----------------------------------------------------------------------------------

def _as_tensor(value, like, label):
    """``value`` as a constant Tensor on the model's device, floats in the model's dtype."""
    if isinstance(value, Tensor):
        if value._be is not like._be:
            raise RuntimeError(f"{label} is on {value.device}, the model on {like.device}")
        if value.dtype.kind == "f" and value.dtype != like.dtype:
            raise TypeError(f"{label} has dtype {value.dtype}, the model {like.dtype}")
        return value.detach()
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{label}: cannot use an array of dtype {array.dtype}")
    if array.dtype.kind == "f":
        array = array.astype(like.dtype, copy=False)
    return _constant(like._be.asarray(array), like._be)


def _task_count(x):
    """The scalar T (tasks on x's leading axis) that seeds a vectorised inner backward."""
    return _constant(x._be.xp.asarray(float(x.shape[0]), dtype=x.dtype), x._be)


class MetaLearner:
    """Base of MAML, Meta-SGD and Reptile: parameter bookkeeping, adaptation, evaluation.

    ``model``: a ``tgm.nn.Module``. ``inner_lr``, ``inner_steps``: the inner SGD loop.
    ``loss_fn(prediction, target) -> scalar Tensor``: must average over examples (see
    the module docstring). ``vectorize``: batch all tasks into one computation.
    ``adapt``: None (adapt every parameter) or names of the parameters adapted in the
    inner loop; a module prefix such as "layers.2" selects its weight and bias (ANIL:
    adapt the head only). The others stay shared across tasks.
    """

    first_order = True

    def __init__(self, model, inner_lr=0.01, inner_steps=1, loss_fn=mse_loss, vectorize=True,
                 adapt=None):
        if not isinstance(model, Module):
            raise TypeError(f"{type(self).__name__}: model must be a tgm.nn.Module, "
                            f"got {type(model).__name__}")
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, numbers.Integral) \
                or inner_steps < 0:
            raise ValueError(f"{type(self).__name__}: inner_steps must be an integer >= 0, "
                             f"got {inner_steps!r}")
        if not isinstance(inner_lr, numbers.Real) or inner_lr < 0:
            raise ValueError(f"{type(self).__name__}: inner_lr must be a number >= 0, got {inner_lr!r}")
        if not callable(loss_fn):
            raise TypeError(f"{type(self).__name__}: loss_fn must be callable")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.loss_fn = loss_fn
        self.vectorize = bool(vectorize)
        self.adapt_names = self._select(adapt)

    def _select(self, adapt):
        names = list(self.model.parameters())
        if adapt is None:
            return names
        if isinstance(adapt, str):
            adapt = [adapt]
        chosen = []
        for item in adapt:
            matches = [n for n in names if n == item or n.startswith(item + ".")]
            if not matches:
                raise KeyError(f"{type(self).__name__}: adapt names {item!r}, which matches no "
                               f"parameter of the model (parameters: {names})")
            chosen.extend(m for m in matches if m not in chosen)
        return [n for n in names if n in chosen]  # keep the model's order

    # ---- the training interface -------------------------------------------------
    def meta_parameters(self):
        """OrderedDict name -> Tensor: what the outer optimizer updates."""
        return self.model.parameters()

    def state_dict(self):
        """name -> numpy array for every meta-parameter (checkpointable with np.savez)."""
        return OrderedDict((n, np.array(p.numpy())) for n, p in self.meta_parameters().items())

    def load_state_dict(self, state_dict):
        """Copy values into the meta-parameters in place; names and shapes must match."""
        load_parameters(self.meta_parameters(), state_dict, f"{type(self).__name__}.load_state_dict")
        return self

    # ---- task batches ----------------------------------------------------------------
    def _task_batch(self, task_batch):
        try:
            support_x, support_y, query_x, query_y = task_batch
        except (TypeError, ValueError):
            raise ValueError(f"{type(self).__name__}: task_batch must be (support_x, support_y, "
                             "query_x, query_y)") from None
        like = next(iter(self.model.parameters().values()))
        items = [_as_tensor(v, like, label) for v, label in
                 zip((support_x, support_y, query_x, query_y),
                     ("support_x", "support_y", "query_x", "query_y"))]
        tasks = {v.shape[0] if v.ndim else None for v in items}
        if any(v.ndim < 2 for v in items) or len(tasks) != 1:
            raise ValueError(f"{type(self).__name__}: every part of task_batch needs a leading task "
                             f"axis of one length (T, K, ...); got shapes "
                             f"{[tuple(v.shape) for v in items]}")
        return items

    def _lr(self, name):
        """The inner learning rate of parameter ``name`` (a number; Meta-SGD: a Tensor)."""
        return self.inner_lr

    def _adapt_leaves(self, params):
        """Own copies of the adapted parameters that accept gradients (evaluation without
        a meta-gradient: cut from the outer graph)."""
        out = OrderedDict(params)
        for name in self.adapt_names:
            out[name] = params[name].detach().requires_grad_(True)
        return out

    def _inner_loop(self, x, y, params, steps, create_graph, task_axis):
        """``steps`` SGD steps on loss_fn(model(x, fast), y); returns the fast params.

        ``task_axis``: x has a leading task axis that the fast weights get too (vectorised).
        """
        fast = OrderedDict(params)
        names = self.adapt_names
        seed = None
        if task_axis:
            tasks = x.shape[0]
            for name in names:
                fast[name] = _expand_tasks(fast[name], tasks)
            # d(sum of per-task means) = T * d(mean over all): seed the backward with T
            seed = _task_count(x)
        if not names:
            return fast
        for _ in range(steps):
            loss = self.loss_fn(self.model(x, params=fast), y)
            grads = grad(loss, [fast[n] for n in names], grad_outputs=seed,
                         create_graph=create_graph)
            for name, g in zip(names, grads):
                fast[name] = sgd_update(fast[name], g, self._lr(name))
        return fast

    def adapt(self, support_x, support_y, params=None, steps=None):
        """Fast parameters after ``steps`` (default ``inner_steps``) inner SGD steps.

        ``support_x``, ``support_y``: (T, K, ...) with a leading task axis (one task: add
        it with ``x[None]``). ``params``: the starting parameters (default the model's).
        Returns an OrderedDict name -> Tensor; adapted parameters get the task axis (T, ...)
        when vectorised; run the model on them with ``model(x, params=fast)``.
        With ``first_order`` the inner gradients are detached; otherwise the result is
        differentiable through them.
        """
        like = next(iter(self.model.parameters().values()))
        x = _as_tensor(support_x, like, "support_x")
        y = _as_tensor(support_y, like, "support_y")
        params = self.model.parameters() if params is None else OrderedDict(params)
        steps = self.inner_steps if steps is None else int(steps)
        for name in self.adapt_names:  # a starting point without a graph: our own leaf
            if not params[name].requires_grad:
                params[name] = params[name].detach().requires_grad_(True)
        with enable_grad():
            if self.vectorize:
                return self._inner_loop(x, y, params, steps, not self.first_order, True)
            per_task = [self._inner_loop(x[t], y[t], params, steps, not self.first_order, False)
                        for t in range(x.shape[0])]
        from ..tensor import stack
        return OrderedDict((n, stack([f[n] for f in per_task]) if n in self.adapt_names
                            else params[n]) for n in params)

    def evaluate(self, task_batch, steps=(0, 1, 5, 10)):
        """Query loss of each task after each number of inner steps, without meta-gradients.

        Returns a dict ``steps -> numpy array (T,)`` of per-task query losses.

        >>> import numpy as np, tinygrad_meta as tgm
        >>> from tinygrad_meta.tasks.sinusoid import sample_batch
        >>> maml = MAML(tgm.nn.MLP([1, 8, 1], rng=np.random.default_rng(0)))
        >>> result = maml.evaluate(sample_batch(3, 5, np.random.default_rng(1)), steps=(0, 2))
        >>> sorted(result), result[2].shape
        ([0, 2], (3,))
        """
        steps = sorted({int(s) for s in ([steps] if isinstance(steps, numbers.Integral) else steps)})
        if not steps or steps[0] < 0:
            raise ValueError(f"evaluate: steps must be integers >= 0, got {steps}")
        support_x, support_y, query_x, query_y = self._task_batch(task_batch)
        tasks = support_x.shape[0]
        params = self._adapt_leaves(self.model.parameters())
        results = {}
        with enable_grad():
            if self.vectorize:
                fast, done = self._inner_loop(support_x, support_y, params, 0, False, True), 0
                for target in steps:
                    fast = self._continue(fast, support_x, support_y, target - done)
                    done = target
                    with no_grad():
                        prediction = self.model(query_x, params=fast)
                        results[target] = np.array([float(self.loss_fn(prediction[t], query_y[t]).item())
                                                    for t in range(tasks)])
            else:
                for target in steps:
                    results[target] = np.zeros(tasks)
                for t in range(tasks):
                    fast, done = OrderedDict(params), 0
                    for target in steps:
                        fast = self._continue(fast, support_x[t], support_y[t], target - done,
                                              task_axis=False)
                        done = target
                        with no_grad():
                            prediction = self.model(query_x[t], params=fast)
                            results[target][t] = float(self.loss_fn(prediction, query_y[t]).item())
        return results

    def _continue(self, fast, x, y, steps, task_axis=True):
        """More inner steps from fast weights that already have their task axis."""
        if steps == 0:
            return fast
        names = self.adapt_names
        seed = _task_count(x) if task_axis else None
        for _ in range(steps):
            loss = self.loss_fn(self.model(x, params=fast), y)
            grads = grad(loss, [fast[n] for n in names], grad_outputs=seed)
            for name, g in zip(names, grads):
                new = sgd_update(fast[name].detach(), g, self._lr(name))
                fast[name] = new.detach().requires_grad_(True)
        return fast


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning.

    ``MAML(model, inner_lr=0.01, inner_steps=1, first_order=False, loss_fn=mse_loss,
    vectorize=True, adapt=None)``. ``first_order=True`` is FOMAML: the inner gradients
    are detached, so the meta-gradient is the query-loss gradient at the fast weights.
    ``adapt=["layers.2"]`` adapts only those parameters in the inner loop (ANIL).

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
                 vectorize=True, adapt=None):
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, loss_fn=loss_fn,
                         vectorize=vectorize, adapt=adapt)
        self.first_order = bool(first_order)

    def meta_loss(self, task_batch):
        """Mean over tasks of the query loss after adaptation (scalar Tensor with a graph)."""
        support_x, support_y, query_x, query_y = self._task_batch(task_batch)
        params = self.model.parameters()
        create_graph = not self.first_order
        with enable_grad():
            if self.vectorize:
                fast = self._inner_loop(support_x, support_y, params, self.inner_steps,
                                        create_graph, task_axis=True)
                # mean over all query points = mean over tasks of each task's mean
                return self.loss_fn(self.model(query_x, params=fast), query_y)
            total = None
            for t in range(support_x.shape[0]):
                fast = self._inner_loop(support_x[t], support_y[t], params, self.inner_steps,
                                        create_graph, task_axis=False)
                loss = self.loss_fn(self.model(query_x[t], params=fast), query_y[t])
                total = loss if total is None else total + loss
            return total * (1.0 / support_x.shape[0])

    def meta_step(self, task_batch):
        """(meta-loss as a float, OrderedDict name -> gradient) for ``meta_parameters()``."""
        loss = self.meta_loss(task_batch)
        params = self.meta_parameters()
        grads = grad(loss, list(params.values()), allow_unused=True)
        out = OrderedDict()
        for (name, p), g in zip(params.items(), grads):
            out[name] = g if g is not None else Tensor(np.zeros(p.shape), dtype=p.dtype,
                                                       device=p.device)
        return float(loss.item()), out

    def __repr__(self):
        return (f"{type(self).__name__}(inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
                f"first_order={self.first_order}, vectorize={self.vectorize}, "
                f"adapt={len(self.adapt_names)} of {len(self.model.parameters())} parameters)")
