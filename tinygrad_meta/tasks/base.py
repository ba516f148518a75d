"""The one interface every task family offers to training and evaluation.

A :class:`Task` knows how to draw task batches (``sample_batch``), how to draw tasks for
measuring an adapted model (``evaluation_batch``), which loss the meta-learner trains on
(``loss``) and which number says how good an adapted model is (``metric``: per-task MSE
for regression, per-task accuracy for classification). Training and evaluation never
pick generators themselves: they ask for a named stream, and ``stream_rng(seed, name,
index)`` derives its generator from the run's seed, the stream's name and an index (the
iteration, or K) alone. So the training tasks of iteration i are the same in every
process, a resumed run draws exactly what an uninterrupted one would, and no two
streams of one seed coincide.

>>> rng = stream_rng(seed=0, stream="train", index=3)
>>> float(rng.uniform()) == float(stream_rng(0, "train", 3).uniform())
True
>>> float(rng.uniform()) == float(stream_rng(0, "validation", 3).uniform())
False
"""
from __future__ import annotations

import abc
import hashlib
import numbers
from typing import NamedTuple

import numpy as np

__all__ = ["Task", "TaskBatch", "stream_rng", "STREAMS", "per_task_mse", "per_task_accuracy"]

# The streams a run draws from, by what they are for. A name not listed here is a typo.
STREAMS = {
    "train": "the meta-batch of each training iteration (index: the iteration)",
    "validation": "the fixed validation tasks training reports on",
    "evaluation": "the fresh tasks of the evaluation table (index: K)",
    "model-init": "the meta-learned model's initial weights",
    "baseline-init": "the pretrained baseline's initial weights",
    "baseline": "the pooled regression batches the baseline trains on (index: its step)",
}


class TaskBatch(NamedTuple):
    """T tasks with support and query sets, each field with a leading task axis T.

    It unpacks as ``support_x, support_y, query_x, query_y = batch``, the
    ``task_batch`` the meta-learning algorithms take.
    """
    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray


def _stream_key(name: str) -> int:
    # a stable hash: Python's hash() of a str changes from process to process
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def stream_rng(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    """The generator of one named stream at one index, derived from (seed, stream, index) only.

    In: a non-negative ``seed`` and ``index``, a ``stream`` name from ``STREAMS``.
    Out: a fresh ``numpy.random.Generator`` (PCG64 seeded by a SeedSequence).
    >>> int(stream_rng(1, "evaluation", 5).integers(100)) == int(stream_rng(1, "evaluation", 5).integers(100))
    True
    """
    for value, name in ((seed, "seed"), (index, "index")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"stream_rng: {name} must be a non-negative integer, got {value!r}")
    if stream not in STREAMS:
        raise ValueError(f"stream_rng: unknown stream {stream!r}; the streams are {', '.join(STREAMS)}")
    sequence = np.random.SeedSequence([int(seed), _stream_key(stream), int(index)])
    return np.random.Generator(np.random.PCG64(sequence))


def _as_array(values):
    return np.asarray(values.numpy() if hasattr(values, "numpy") else values)


def per_task_mse(prediction, target):
    """Mean squared error of each task: (T, N, D) predictions and targets -> (T,).

    Works on Tensors (a differentiable Tensor comes out) and on numpy arrays alike.
    >>> per_task_mse(np.zeros((2, 3, 1)), np.ones((2, 3, 1))).tolist()
    [1.0, 1.0]
    """
    diff = prediction - target
    return (diff * diff).mean(axis=tuple(range(1, len(diff.shape))))


def per_task_accuracy(logits, labels):
    """Fraction of each task's queries whose highest logit is the label: (T, N, C), (T, N) -> (T,).

    >>> per_task_accuracy(np.array([[[2.0, 1.0], [0.0, 3.0]]]), np.array([[0, 0]])).tolist()
    [0.5]
    """
    logits, labels = _as_array(logits), _as_array(labels)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"accuracy: logits {logits.shape} need labels of shape {logits.shape[:-1]}, "
                         f"got {labels.shape}")
    return (logits.argmax(axis=-1) == labels).mean(axis=1).astype(np.float64)


class Task(abc.ABC):
    """A family of few-shot tasks, as training and evaluation see it.

    A subclass sets ``name``, ``metric_name`` ("mse", "accuracy"), ``diverged_above`` (a
    score beyond which a task counts as diverged, or None when only a non-finite score
    does), ``evaluation_shots`` (the K values of the evaluation table),
    ``query_description`` (what the metric is measured on, for the table's header),
    ``curve_plot``, and implements
    ``sample_batch``, ``evaluation_batch``, ``loss`` and ``metric``. The stream methods
    (``meta_batch``, ``validation_tasks``, ``evaluation_tasks``) are what train and
    evaluate call; they derive every generator through ``stream_rng``.
    """

    name: str = "task"
    metric_name: str = "mse"
    diverged_above: float | None = None
    evaluation_shots: tuple = (5, 10, 20)
    query_description: str = "the query set"
    curve_plot: bool = False  # True for 1-D regression, whose evaluation plot draws curves

    @abc.abstractmethod
    def sample_batch(self, num_tasks: int, shots: int, rng: np.random.Generator) -> TaskBatch:
        """``num_tasks`` training tasks with ``shots`` support examples each, drawn from ``rng``."""

    @abc.abstractmethod
    def evaluation_batch(self, num_tasks: int, shots: int, rng: np.random.Generator) -> TaskBatch:
        """``num_tasks`` tasks for measuring an adapted model, drawn from ``rng``."""

    @abc.abstractmethod
    def loss(self, prediction, target):
        """The scalar Tensor loss the meta-learner trains on (e.g. ``mse_loss``, ``cross_entropy``)."""

    @abc.abstractmethod
    def metric(self, prediction, target) -> np.ndarray:
        """Each task's score of an adapted model's query predictions: a float64 array (T,)."""

    def meta_batch(self, seed: int, iteration: int, num_tasks: int, shots: int) -> TaskBatch:
        """The training tasks of ``iteration``: the same for a given seed in every process."""
        return self.sample_batch(num_tasks, shots, stream_rng(seed, "train", iteration))

    def validation_tasks(self, seed: int, num_tasks: int, shots: int) -> TaskBatch:
        """The fixed validation tasks of a run (the same at every report and after a resume)."""
        return self.evaluation_batch(num_tasks, shots, stream_rng(seed, "validation"))

    def evaluation_tasks(self, seed: int, num_tasks: int, shots: int) -> TaskBatch:
        """The fresh tasks of the evaluation table at K = ``shots`` (one stream per K)."""
        return self.evaluation_batch(num_tasks, shots, stream_rng(seed, "evaluation", shots))

    def __repr__(self):
        return f"<task {self.name}: metric {self.metric_name}>"
