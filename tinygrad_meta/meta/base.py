"""The one inner loop every meta-learner (MAML, FOMAML, ANIL, Meta-SGD, Reptile) and the
evaluation code run, and the training interface they share.

A task batch is ``(support_x, support_y, query_x, query_y)``, each a Tensor or array with
a leading task axis: (T, K, features). Adapting a task means ``inner_steps`` steps of the
inner optimizer (``inner_optimizer``, SGD by default; ``optim.adam_step`` or any
differentiable functional step with ``sgd_step``'s signature) on ``loss_fn`` of the
model's support predictions, starting from the model's parameters. The model is any
``tgm.nn.Module``; it runs on the fast weights through ``tgm.func.functional_call``.

Vectorised (``vectorize=True``, the default): every adapted parameter is broadcast to a
leading task axis, ``weight (out, in) -> (T, out, in)``, and all tasks run as ONE batched
computation. The inner loss is the sum over tasks of each task's mean loss; since task
t's loss depends only on slice t of the stacked fast weights, its gradient with respect
to the stack is exactly each task's own gradient, stacked. For a ``loss_fn`` that
averages over all elements (``mse_loss``, ``cross_entropy``) and tasks of equal size,
that sum is T * loss_fn(all predictions, all targets), which we get by seeding the
backward pass with T instead of 1 (no extra node). Models known to run every
task independently on task-axis weights (``nn.MLP``, ``nn.Linear`` and stacks of them with
activations: ``nn.batches_over_tasks``) take the task axis directly, the fast path; any
other module runs per task under ``tgm.vmap`` (``MetaLearner._vectorized_forward``), so
it sees exactly the shapes it was written for and gives the looped loss and meta-gradient.

>>> import numpy as np, tinygrad_meta as tgm
>>> from tinygrad_meta.tasks.sinusoid import sample_batch
>>> from tinygrad_meta.meta import MAML
>>> maml = MAML(tgm.nn.MLP([1, 8, 1], rng=np.random.default_rng(0)), inner_steps=2)
>>> result = maml.evaluate(sample_batch(3, 5, np.random.default_rng(1)), steps=(0, 2))
>>> sorted(result), result[2].shape
([0, 2], (3,))
"""
from __future__ import annotations

import numbers
from collections import OrderedDict

import numpy as np

from ..autograd import enable_grad, grad, no_grad
from ..func import functional_call
from ..functional import mse_loss
from ..nn import Module, batches_over_tasks, load_parameters
from ..optim import sgd_step
from ..optim.rules import descend
from ..tensor import Tensor, _constant, stack
from ..vmap import vmap

__all__ = ["MetaLearner", "sgd_update"]


def sgd_update(param, gradient, lr):
    """``param - lr * gradient`` as one graph node (differentiable in all three): the
    inner SGD step's fast path (ops.sgd_update holds the formula).

    ``lr``: a number, or a Tensor broadcastable to the result (Meta-SGD's per-element
    rates). ``param`` may lack the task axis that ``gradient`` has; the result has it.

    >>> import tinygrad_meta as tgm
    >>> sgd_update(tgm.Tensor([1.0]), tgm.Tensor([2.0]), 0.25).numpy().tolist()
    [0.5]
    """
    # the one SGD update (optim/rules.py), recorded on Tensors
    return descend(Tensor._graph_ops, param, gradient,
                   float(lr) if isinstance(lr, numbers.Real) else lr)


def _expand_tasks(param, tasks):
    """``param`` repeated along a new leading task axis, as a zero-copy broadcast view
    (which the fused linear ops turn into one large matmul); its gradient sums the tasks."""
    return param.broadcast_to((tasks,) + param.shape)


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


def _detached(value):
    """An optimizer state (nested dicts/lists of Tensors and numbers) with every Tensor detached."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return type(value)((key, _detached(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(item) for item in value)
    return value


def _last(iterator):
    item = None
    for item in iterator:
        pass
    return item


def _check_steps(steps, caller):
    steps = sorted({int(s) for s in ([steps] if isinstance(steps, numbers.Integral) else steps)})
    if not steps or steps[0] < 0:
        raise ValueError(f"{caller}: steps must be integers >= 0, got {steps}")
    return steps


class MetaLearner:
    """Base of MAML, Meta-SGD and Reptile: the inner loop, adaptation, evaluation, and the
    training interface (``meta_parameters``, ``state_dict`` / ``load_state_dict``).

    ``model``: any ``tgm.nn.Module`` (PyTorch-style ``forward(self, x)``).
    ``inner_lr``: the inner learning rate, a number, or a dict name -> number/array/Tensor
    of fixed per-parameter rates (one entry per adapted parameter). ``inner_steps``: steps
    per task. ``loss_fn(prediction, target) -> scalar Tensor``: must average over examples
    (see the module docstring). ``vectorize``: batch all tasks into one computation where
    the model allows it (otherwise loop; the results agree). ``adapt_only``: None (adapt
    every parameter) or names of the parameters adapted in the inner loop; a module prefix
    such as "layers.2" selects its weight and bias (ANIL: adapt the head only). The others
    stay shared across tasks. ``inner_optimizer``: a differentiable functional step
    ``step(params, grads, lr, state=state) -> (new_params, new_state)`` over dicts name ->
    Tensor, as ``optim.sgd_step`` (the default, run as one fused node per parameter) and
    ``optim.adam_step``; use ``functools.partial`` to set its other hyperparameters.
    """

    first_order = True

    def __init__(self, model, inner_lr=0.01, inner_steps=1, loss_fn=mse_loss, vectorize=True,
                 adapt_only=None, inner_optimizer=sgd_step, compile=False, **unknown):
        name = type(self).__name__
        if "adapt" in unknown:
            raise TypeError(f"{name}: the keyword adapt= is now adapt_only= (which parameters the "
                            "inner loop adapts); adapt() is the method that adapts")
        if unknown:
            raise TypeError(f"{name}: unexpected keyword argument(s) {sorted(unknown)}")
        if not isinstance(model, Module):
            raise TypeError(f"{name}: model must be a tgm.nn.Module, got {type(model).__name__}")
        if not any(True for _ in model.parameters()):
            raise ValueError(f"{name}: the model has no parameters to meta-learn")
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, numbers.Integral) \
                or inner_steps < 0:
            raise ValueError(f"{name}: inner_steps must be an integer >= 0, got {inner_steps!r}")
        if not callable(loss_fn):
            raise TypeError(f"{name}: loss_fn must be callable")
        if not callable(inner_optimizer):
            raise TypeError(f"{name}: inner_optimizer must be a functional step such as "
                            f"optim.sgd_step or optim.adam_step, got {type(inner_optimizer).__name__}")
        self.model = model
        # compile=True: meta_step runs through tgm.compile (traced once per batch shape,
        # then replayed as flat array calls: the same kernels in the same order, so the
        # same numbers); CPU only, so a model on another device keeps the eager path
        self.compile = bool(compile)
        self._compiled_step = None
        self.inner_steps = int(inner_steps)
        self.loss_fn = loss_fn
        self.vectorize = bool(vectorize)
        self.inner_optimizer = inner_optimizer
        self.adapt_names = self._select(adapt_only)
        self._fixed_rates = None
        if isinstance(inner_lr, dict):
            self.inner_lr = None
            self._fixed_rates = self._rate_tensors(inner_lr)
        elif isinstance(inner_lr, bool) or not isinstance(inner_lr, numbers.Real) or inner_lr < 0:
            raise ValueError(f"{name}: inner_lr must be a number >= 0 or a dict of per-parameter "
                             f"rates, got {inner_lr!r}")
        else:
            self.inner_lr = float(inner_lr)

    def meta_step(self, task_batch):
        """(meta-loss as a float, OrderedDict name -> gradient) for ``meta_parameters()``;
        compiled (``tgm.compile``) when the learner was made with ``compile=True``."""
        if self.compile and self._like().device == "cpu":
            if self._compiled_step is None:
                from ..compile import compile as compile_function
                self._compiled_step = compile_function(self._meta_step_tensors, cache_size=4)
            loss, grads = self._compiled_step(task_batch)
        else:
            loss, grads = self._meta_step_tensors(task_batch)
        return float(loss.item()), grads

    def _meta_step_tensors(self, task_batch):
        """(meta-loss as a 0-d Tensor, OrderedDict name -> gradient Tensor): one array
        program for a batch shape, which is what ``compile=True`` traces."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _meta_step_tensors")

    def _select(self, adapt_only):
        names = list(self.model.parameter_dict())
        if adapt_only is None:
            return names
        if isinstance(adapt_only, str):
            adapt_only = [adapt_only]
        chosen = []
        for item in adapt_only:
            matches = [n for n in names if n == item or n.startswith(item + ".")]
            if not matches:
                raise KeyError(f"{type(self).__name__}: adapt_only names {item!r}, which matches no "
                               f"parameter of the model (parameters: {names})")
            chosen.extend(m for m in matches if m not in chosen)
        return [n for n in names if n in chosen]  # keep the model's order

    def _rate_tensors(self, rates):
        params = self.model.parameter_dict()
        missing = [n for n in self.adapt_names if n not in rates]
        extra = [n for n in rates if n not in self.adapt_names]
        if missing or extra:
            raise KeyError(f"{type(self).__name__}: per-parameter inner_lr needs exactly the adapted "
                           f"parameters; missing {missing}, unexpected {extra}")
        out = OrderedDict()
        for name in self.adapt_names:
            value, like = rates[name], params[name]
            out[name] = value if isinstance(value, Tensor) else \
                Tensor(np.asarray(value), dtype=like.dtype, device=like.device)
        return out

    # ---- the inner loop ---------------------------------------------------------------
    def inner_learning_rates(self):
        """The per-parameter inner learning rates (OrderedDict name -> Tensor; Meta-SGD's
        are learned), or None when every parameter uses the number ``inner_lr``."""
        return self._fixed_rates

    def _batches_tasks(self):
        """Whether the inner loop runs all tasks at once (see the module docstring)."""
        return self.vectorize

    def _vectorized_forward(self, fast, x):
        """The model on task-axis fast weights and task-batched ``x`` (T, K, ...). A model of
        known batching (``nn.batches_over_tasks``) takes the task axis directly (the fast
        path); any other module runs per task under ``tgm.vmap``, so it sees exactly the
        shapes it was written for."""
        if batches_over_tasks(self.model):
            return functional_call(self.model, fast, x)
        adapted = set(self.adapt_names)
        axes = {name: 0 if name in adapted else None for name in fast}
        return vmap(lambda params, xs: functional_call(self.model, params, xs),
                    in_axes=(axes, 0))(fast, x)

    def _forward(self, fast, x):
        """The model on one task's fast weights."""
        return functional_call(self.model, fast, x)

    def _adaptation(self, params, x, y, steps, create_graph, differentiable, batched):
        """Yield the fast parameters after 0, 1, ..., ``steps`` inner steps: the one inner loop.

        ``params``: name -> Tensor, the starting point. ``x``, ``y``: one task's support
        set, or (``batched``) all tasks' with a leading task axis that the adapted fast
        weights get too. ``create_graph``: differentiate through the inner gradients
        (second order). ``differentiable``: keep the result connected to ``params`` (a
        meta-loss); otherwise every step is cut from the graph (evaluation, Reptile).
        Each yield is a new OrderedDict name -> Tensor. ``x`` and ``y`` may also be equal-length
        lists of mini-batches: step s then trains on ``x[s % len(x)]`` (Reptile's inner loop).
        """
        names = self.adapt_names
        fast = OrderedDict(params)
        seed = None
        forward = self._forward
        xs, ys = (x, y) if isinstance(x, list) else ([x], [y])
        x = xs[0]
        if batched:
            tasks = x.shape[0]
            for name in names:
                fast[name] = _expand_tasks(fast[name], tasks)
            # d(sum of per-task means) = T * d(mean over all): seed the backward with T
            seed = _task_count(x)
            forward = self._vectorized_forward
        if not differentiable:
            for name in names:
                fast[name] = fast[name].detach().requires_grad_(True)
        yield fast
        if not names:
            return
        rates = self.inner_learning_rates()
        lr = rates if rates is not None else self.inner_lr
        fused_sgd = self.inner_optimizer is sgd_step
        state = None
        for step in range(steps):
            loss = self.loss_fn(forward(fast, xs[step % len(xs)]), ys[step % len(ys)])
            grads = grad(loss, [fast[n] for n in names], grad_outputs=seed,
                         create_graph=create_graph)
            fast = OrderedDict(fast)
            if differentiable:  # the callers run the loop with grad mode on
                state = self._inner_step(fast, names, grads, lr, rates, fused_sgd, state)
            else:
                with no_grad():
                    state = _detached(self._inner_step(fast, names, grads, lr, rates, fused_sgd, state))
                for name in names:
                    fast[name] = fast[name].detach().requires_grad_(True)
            yield fast

    def _inner_step(self, fast, names, grads, lr, rates, fused_sgd, state):
        """One inner-optimizer step on the entries ``names`` of ``fast`` (in place);
        returns the optimizer's new state."""
        if fused_sgd:
            for name, g in zip(names, grads):
                fast[name] = sgd_update(fast[name], g, lr if rates is None else rates[name])
            return None
        new, state = self.inner_optimizer(OrderedDict((n, fast[n]) for n in names),
                                          OrderedDict(zip(names, grads)), lr, state=state)
        for name in names:
            fast[name] = new[name]
        return state

    def _stacked(self, per_task, params):
        """Per-task fast-weight dicts as one dict whose adapted entries have a task axis."""
        return OrderedDict((n, stack([f[n] for f in per_task]) if n in self.adapt_names else params[n])
                           for n in params)

    # ---- the training interface -------------------------------------------------------
    def meta_parameters(self):
        """OrderedDict name -> Tensor: what the outer optimizer updates."""
        return self.model.parameter_dict()

    def state_dict(self):
        """name -> numpy array for every meta-parameter, and the model's extra state (a
        Dropout's generator); checkpointable with np.savez."""
        out = self.model.state_dict()
        for name, p in self.meta_parameters().items():
            if name not in out:
                out[name] = np.array(p.numpy())
        return out

    def load_state_dict(self, state_dict):
        """Copy values into the meta-parameters (and the model's extra state) in place; names
        and shapes must match, and nothing is written unless everything does."""
        caller = f"{type(self).__name__}.load_state_dict"
        extra = self.model._check_extra_state(state_dict, caller)
        load_parameters(self.meta_parameters(),
                        {k: v for k, v in state_dict.items() if k not in extra}, caller)
        self.model._restore_extra_state(extra)
        return self

    # ---- task batches -------------------------------------------------------------------
    def _like(self):
        return self.model._named_parameter_list()[0][1]

    def _task_batch(self, task_batch):
        try:
            support_x, support_y, query_x, query_y = task_batch
        except (TypeError, ValueError):
            raise ValueError(f"{type(self).__name__}: task_batch must be (support_x, support_y, "
                             "query_x, query_y)") from None
        like = self._like()
        items = [_as_tensor(v, like, label) for v, label in
                 zip((support_x, support_y, query_x, query_y),
                     ("support_x", "support_y", "query_x", "query_y"))]
        tasks = {v.shape[0] if v.ndim else None for v in items}
        if any(v.ndim < 2 for v in items) or len(tasks) != 1:
            raise ValueError(f"{type(self).__name__}: every part of task_batch needs a leading task "
                             f"axis of one length (T, K, ...); got shapes "
                             f"{[tuple(v.shape) for v in items]}")
        return items

    def _start(self, params):
        """The starting parameters: the model's, or ``params`` (name -> Tensor or array)."""
        own = self.model.parameter_dict()
        if params is None:
            return own
        unknown = [n for n in params if n not in own]
        if unknown:
            raise KeyError(f"{type(self).__name__}: params names {unknown}, which the model does not "
                           f"have (parameters: {list(own)})")
        out = OrderedDict(own)
        for name, value in params.items():
            if not isinstance(value, Tensor):
                value = Tensor(np.asarray(value), dtype=own[name].dtype, device=own[name].device)
            out[name] = value
        for name in self.adapt_names:  # a starting point without a graph: our own leaf
            if not out[name].requires_grad:
                out[name] = out[name].detach().requires_grad_(True)
        return out

    # ---- adaptation and evaluation ----------------------------------------------------
    def adapt(self, support_x, support_y, params=None, steps=None):
        """Fast parameters after ``steps`` (default ``inner_steps``) inner steps.

        ``support_x``, ``support_y``: (T, K, ...) with a leading task axis (one task: add
        it with ``x[None]``). ``params``: the starting parameters (default the model's).
        Returns an OrderedDict name -> Tensor whose adapted entries have the task axis
        (T, ...); run one task's model with ``tgm.func.functional_call(model, {n: p[t]
        ...}, x)``. With ``first_order`` the inner gradients are detached; otherwise the
        result is differentiable through them.
        """
        like = self._like()
        x = _as_tensor(support_x, like, "support_x")
        y = _as_tensor(support_y, like, "support_y")
        params = self._start(params)
        steps = self.inner_steps if steps is None else int(steps)
        create_graph = not self.first_order
        with enable_grad():
            if self._batches_tasks():
                return _last(self._adaptation(params, x, y, steps, create_graph, True, True))
            per_task = [_last(self._adaptation(params, x[t], y[t], steps, create_graph, True, False))
                        for t in range(x.shape[0])]
        return self._stacked(per_task, params)

    def predictions(self, task_batch, steps=(0, 1, 5, 10), params=None):
        """Query predictions of every task after each number of inner steps (no meta-gradient).

        ``task_batch``: (support_x, support_y, query_x, query_y) with a task axis (the
        query targets are not used). ``params``: the starting point (default the model's;
        name -> Tensor or array). Returns a dict step -> Tensor (T, Q, ...) without a graph.
        """
        steps = _check_steps(steps, "predictions")
        support_x, support_y, query_x, _ = self._task_batch(task_batch)
        return self._predictions(self._start(params), support_x, support_y, query_x, steps)

    def _predictions(self, params, support_x, support_y, query_x, steps):
        wanted, last = set(steps), steps[-1]
        out = {}
        with enable_grad():
            if self._batches_tasks():
                for step, fast in enumerate(self._adaptation(params, support_x, support_y, last,
                                                             False, False, True)):
                    if step in wanted:
                        with no_grad():
                            out[step] = self._vectorized_forward(fast, query_x).detach()
                return out
            per_step = {step: [] for step in steps}
            for t in range(support_x.shape[0]):
                for step, fast in enumerate(self._adaptation(params, support_x[t], support_y[t], last,
                                                             False, False, False)):
                    if step in wanted:
                        with no_grad():
                            per_step[step].append(self._forward(fast, query_x[t]).detach())
        return {step: stack(values) for step, values in per_step.items()}

    def evaluate(self, task_batch, steps=(0, 1, 5, 10), params=None):
        """Query loss of each task after each number of inner steps, without meta-gradients.

        ``params``: the starting point (default the model's). Returns a dict ``steps ->
        numpy array (T,)`` of per-task query losses (``loss_fn`` on each task's query set).

        >>> import numpy as np, tinygrad_meta as tgm
        >>> from tinygrad_meta.tasks.sinusoid import sample_batch
        >>> maml = tgm.meta.MAML(tgm.nn.MLP([1, 8, 1], rng=np.random.default_rng(0)))
        >>> result = maml.evaluate(sample_batch(3, 5, np.random.default_rng(1)), steps=(0, 2))
        >>> sorted(result), result[2].shape
        ([0, 2], (3,))
        """
        steps = _check_steps(steps, "evaluate")
        support_x, support_y, query_x, query_y = self._task_batch(task_batch)
        predictions = self._predictions(self._start(params), support_x, support_y, query_x, steps)
        results = {}
        with no_grad():
            for step, prediction in predictions.items():
                results[step] = np.array([float(self.loss_fn(prediction[t], query_y[t]).item())
                                          for t in range(support_x.shape[0])], dtype=np.float64)
        return results
