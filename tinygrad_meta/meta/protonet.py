"""Prototypical Networks (Snell, Swersky and Zemel 2017): metric-based few-shot classification.

An embedding network f maps every image to a vector. In an N-way episode the prototype
of class n is the mean embedding of its support examples, c_n = mean_{y_i = n} f(x_i);
a query x is classified by a softmax over negative squared Euclidean distances,
logits_n(x) = -||f(x) - c_n||^2, and trained with cross-entropy on the query labels.
There is no inner loop: "adapting" to a task is computing its prototypes, so the
meta-gradient is an ordinary first-order gradient of the episode loss.

The same training interface as the gradient-based learners (meta/base.py):
``meta_loss(task_batch)``, ``meta_step(task_batch) -> (loss, grads)``,
``predictions(task_batch)``, ``evaluate(task_batch)``, ``meta_parameters()``,
``state_dict()`` / ``load_state_dict()``. A task batch is ``(support_x, support_y,
query_x, query_y)`` with a leading task axis; labels are integers in [0, N) and every
class appears in each task's support set. All T tasks' images go through the embedding
as one batch (one call, so a batch norm sees the whole meta-batch, as the reference code's
single episode per step does with T = 1).

>>> import numpy as np, tinygrad_meta as tgm
>>> net = ProtoNet(tgm.nn.MLP([4, 8, 3], rng=np.random.default_rng(0)))
>>> rng = np.random.default_rng(1)
>>> batch = (rng.normal(size=(2, 6, 4)), np.tile(np.arange(3).repeat(2), (2, 1)),
...          rng.normal(size=(2, 9, 4)), np.tile(np.arange(3).repeat(3), (2, 1)))
>>> net.logits(*batch[:3]).shape
(2, 9, 3)
>>> loss, grads = net.meta_step(batch)
>>> sorted(grads)[:2]
['layers.0.bias', 'layers.0.weight']
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np

from ..autograd import enable_grad, grad, no_grad
from ..functional import cross_entropy
from ..tensor import Tensor, _constant, concatenate
from .base import MetaLearner, _check_steps

__all__ = ["ProtoNet", "class_counts"]


def class_counts(support_y) -> tuple:
    """``(ways, one_hot)`` of integer support labels (T, S): N and the float64 (T, N, S)
    indicator of which support example belongs to which class, each row divided by its
    class's count (so ``one_hot @ embeddings`` is the class means). Every class 0..N-1 must
    appear in every task (else a ValueError naming the task and the class).

    >>> ways, weights = class_counts(np.array([[0, 0, 1]]))
    >>> ways, weights[0].tolist()
    (2, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    """
    labels = np.asarray(support_y)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"ProtoNet: support labels must be integers of shape (T, S), got "
                         f"{labels.dtype} {labels.shape}")
    if labels.size == 0 or labels.min() < 0:
        raise ValueError("ProtoNet: support labels must be integers >= 0 and not empty")
    ways = int(labels.max()) + 1
    one_hot = (labels[:, None, :] == np.arange(ways)[None, :, None]).astype(np.float64)  # (T, N, S)
    counts = one_hot.sum(axis=2)                                                          # (T, N)
    if (counts == 0).any():
        task, label = map(int, np.argwhere(counts == 0)[0])
        raise ValueError(f"ProtoNet: task {task} has no support example of class {label} (labels must "
                         f"cover 0..{ways - 1} in every task)")
    return ways, one_hot / counts[:, :, None]


class ProtoNet(MetaLearner):
    """``ProtoNet(model, loss_fn=cross_entropy, test_mode="eval")``.

    ``model``: the embedding network, any ``tgm.nn.Module`` mapping a batch of inputs
    (B, ...) to (B, D) or (B, C, H, W) (flattened to (B, C*H*W)). ``loss_fn``: the
    loss of the (T, Q, N) logits against the (T, Q) query labels. ``test_mode``: the
    module mode ``predictions``/``evaluate`` run in: "eval" (batch norm on its running
    statistics, as the reference code tests) or "train" (as meta-training runs).
    Meta-train it with Adam (the paper: lr 1e-3, halved every 2,000 episodes).
    """

    def __init__(self, model, loss_fn=cross_entropy, test_mode="eval", **unknown):
        super().__init__(model, inner_lr=0.0, inner_steps=0, loss_fn=loss_fn, adapt_only=[], **unknown)
        if test_mode not in ("eval", "train"):
            raise ValueError(f"ProtoNet: test_mode must be 'eval' or 'train', got {test_mode!r}")
        self.test_mode = test_mode

    # ---- the model ------------------------------------------------------------------
    def embed(self, x):
        """The embeddings (B, D) of a batch of inputs (B, ...)."""
        out = self.model(x)
        if out.ndim < 2:
            raise ValueError(f"ProtoNet: the embedding of inputs {x.shape} has shape {out.shape}; it "
                             "needs a batch axis and features")
        return out.reshape(out.shape[0], -1) if out.ndim > 2 else out

    def logits(self, support_x, support_y, query_x):
        """Negative squared distances (T, Q, N) of each query embedding to each class prototype."""
        support_x, weights, query_x = self._episode(support_x, support_y, query_x)
        return self._prototype_logits(support_x, weights, query_x)

    def _episode(self, support_x, support_y, query_x):
        """(support_x, class weights (T, N, S) from ``class_counts``, query_x), the shapes
        checked: what ``_prototype_logits`` takes, read from the labels' values."""
        like = self._like()
        support_x, query_x = (_tensor(v, like) for v in (support_x, query_x))
        support_y = support_y.numpy() if isinstance(support_y, Tensor) else np.asarray(support_y)
        if support_x.ndim < 3 or query_x.ndim != support_x.ndim or support_x.shape[0] != query_x.shape[0] \
                or support_x.shape[2:] != query_x.shape[2:] or support_y.shape != support_x.shape[:2]:
            raise ValueError(f"ProtoNet: support_x (T, S, ...) {support_x.shape}, support_y (T, S) "
                             f"{support_y.shape} and query_x (T, Q, ...) {query_x.shape} do not fit together")
        return support_x, class_counts(support_y)[1], query_x

    def _prototype_logits(self, support_x, weights, query_x):
        """``logits`` from the (T, N, S) class weights of ``class_counts``: the part that is
        one array program for given shapes (``compile=True`` traces it; the labels'
        values, which decide N and the weights, are read before)."""
        like = self._like()
        ways = weights.shape[1]
        tasks, shots, queries = support_x.shape[0], support_x.shape[1], query_x.shape[1]
        item = support_x.shape[2:]
        images = concatenate([support_x.reshape((tasks * shots,) + item),
                              query_x.reshape((tasks * queries,) + item)])
        embedded = self.embed(images)
        dim = embedded.shape[1]
        support = embedded[:tasks * shots].reshape(tasks, shots, dim)
        query = embedded[tasks * shots:].reshape(tasks, queries, dim)
        weights = weights if isinstance(weights, Tensor) else \
            _constant(like._be.asarray(weights.astype(like.dtype)), like._be)
        prototypes = weights @ support  # (T, N, D)
        difference = query.reshape(tasks, queries, 1, dim) - prototypes.reshape(tasks, 1, ways, dim)
        return -(difference * difference).sum(axis=-1)

    # ---- training -------------------------------------------------------------------
    def meta_loss(self, task_batch):
        """Mean query cross-entropy of the episodes (a scalar Tensor with a graph)."""
        support_x, support_y, query_x, query_y = self._task_batch(task_batch)
        with enable_grad():
            return self.loss_fn(self.logits(support_x, support_y, query_x), query_y)

    def meta_step(self, task_batch):
        """(episode loss as a float, OrderedDict name -> gradient) for ``meta_parameters()``;
        with ``compile=True`` the step after the support labels is compiled (``tgm.compile``,
        one program per batch shape and number of ways)."""
        if not (self.compile and self._like().device == "cpu"):
            return super().meta_step(task_batch)
        support_x, support_y, query_x, query_y = self._task_batch(task_batch)
        # the class structure is read from the labels' values, which a trace cannot follow
        support_x, weights, query_x = self._episode(support_x, support_y, query_x)
        if self._compiled_step is None:
            from ..compile import compile as compile_function
            self._compiled_step = compile_function(self._weighted_step, cache_size=4)
        loss, grads = self._compiled_step(support_x, weights.astype(support_x.dtype), query_x, query_y)
        return float(loss.item()), grads

    def _weighted_step(self, support_x, weights, query_x, query_y):
        with enable_grad():
            loss = self.loss_fn(self._prototype_logits(support_x, weights, query_x), query_y)
        return loss, self._gradients(loss)

    def _meta_step_tensors(self, task_batch):
        """(episode loss as a 0-d Tensor, OrderedDict name -> gradient) for ``meta_parameters()``;
        ``meta_step`` (meta/base.py) returns it with the loss as a float."""
        loss = self.meta_loss(task_batch)
        return loss, self._gradients(loss)

    def _gradients(self, loss):
        params = self.meta_parameters()
        grads = grad(loss, list(params.values()), allow_unused=True)
        out = OrderedDict()
        for (name, p), g in zip(params.items(), grads):
            out[name] = g if g is not None else Tensor(np.zeros(p.shape), dtype=p.dtype, device=p.device)
        return out

    # ---- evaluation -----------------------------------------------------------------
    @contextlib.contextmanager
    def _test_mode(self):
        was = self.model.training
        self.model.train(self.test_mode == "train")
        try:
            yield
        finally:
            self.model.train(was)

    def predictions(self, task_batch, steps=(0,), params=None):
        """Query logits (T, Q, N), without a graph, as ``{step: logits}`` for each of ``steps``:
        ProtoNet has no inner loop, so every step count gives the same logits."""
        steps = _check_steps(steps, "predictions")
        if params is not None:
            raise TypeError("ProtoNet.predictions: there are no fast weights to start from (params=)")
        support_x, support_y, query_x, _ = self._task_batch(task_batch)
        with no_grad(), self._test_mode():
            logits = self.logits(support_x, support_y, query_x).detach()
        return {step: logits for step in steps}

    def evaluate(self, task_batch, steps=(0,), params=None):
        """Each task's query loss, ``{step: numpy array (T,)}`` (the same for every step)."""
        _, _, _, query_y = self._task_batch(task_batch)
        logits = self.predictions(task_batch, steps, params)
        with no_grad():
            first = next(iter(logits.values()))
            losses = np.array([float(self.loss_fn(first[t], query_y[t]).item())
                               for t in range(first.shape[0])], dtype=np.float64)
        return {step: losses for step in logits}

    def __repr__(self):
        return f"ProtoNet(test_mode={self.test_mode!r}, {len(self.model.parameter_dict())} parameter tensors)"


def _tensor(value, like):
    if isinstance(value, Tensor):
        return value
    return Tensor(np.asarray(value), dtype=like.dtype, device=like.device)
