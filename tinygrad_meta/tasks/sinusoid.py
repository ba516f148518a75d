"""The sinusoid regression tasks of the MAML paper (Finn et al. 2017, section 5.1).

A task is y = A * sin(x - phase) with amplitude A ~ U[0.1, 5.0] and phase ~ U[0, pi];
its inputs are x ~ U[-5, 5]. A K-shot task gives K support points to adapt on and K
query points to measure the adapted model on. Evaluation measures the query loss on
100 evenly spaced points over [-5, 5] instead (``evaluation_batch``).

Everything is drawn from a ``numpy.random.Generator`` the caller passes in, so a
batch depends only on the generator's state. ``SINUSOID`` is the family behind the
:class:`~tinygrad_meta.tasks.base.Task` interface that training and evaluation use (its
generators come from named streams, ``tasks.base.stream_rng``); ``task_rng(seed,
iteration)`` is a plain seeded generator for scripts that call the functions directly.

>>> rng = task_rng(seed=0, iteration=0)
>>> batch = sample_batch(num_tasks=25, shots=10, rng=rng)
>>> batch.support_x.shape, batch.query_y.shape
((25, 10, 1), (25, 10, 1))
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..functional import mse_loss
from .base import Task, TaskBatch, per_task_mse

__all__ = [
    "AMPLITUDE_RANGE", "PHASE_RANGE", "INPUT_RANGE", "TaskBatch", "task_rng",
    "sample_parameters", "sinusoid", "sample_batch", "true_curve", "evaluation_batch",
    "SinusoidTask", "SINUSOID", "STREAM_TRAIN", "STREAM_EVAL", "STREAM_PRETRAIN", "STREAM_VALIDATION",
]

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)

# ``task_rng``'s stream numbers, for scripts that draw batches themselves; training and
# evaluation use the named streams of ``tasks.base.stream_rng`` instead.
STREAM_TRAIN = 0
STREAM_EVAL = 1
STREAM_PRETRAIN = 2
STREAM_VALIDATION = 3


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"sinusoid: {name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"sinusoid: {name} must be at least 1, got {value}")
    return int(value)


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"sinusoid: rng must be a numpy.random.Generator (e.g. task_rng(seed, iteration)), "
            f"got {type(rng).__name__}")
    return rng


def task_rng(seed: int, iteration: int, stream: int = STREAM_TRAIN) -> np.random.Generator:
    """The generator for one iteration, derived from (seed, iteration, stream) only.

    In: non-negative integers. Out: a fresh ``numpy.random.Generator`` (PCG64).
    >>> task_rng(1, 5).uniform() == task_rng(1, 5).uniform()
    True
    """
    for value, name in ((seed, "seed"), (iteration, "iteration"), (stream, "stream")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"task_rng: {name} must be a non-negative integer, got {value!r}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream), int(iteration)])))


def sample_parameters(num_tasks: int, rng: np.random.Generator):
    """Amplitudes and phases of ``num_tasks`` tasks: two float64 arrays of shape (T,).

    >>> amplitude, phase = sample_parameters(3, task_rng(0, 0))
    >>> amplitude.shape
    (3,)
    """
    num_tasks = _positive_int(num_tasks, "number of tasks T")
    rng = _check_rng(rng)
    amplitude = rng.uniform(*AMPLITUDE_RANGE, size=num_tasks)
    phase = rng.uniform(*PHASE_RANGE, size=num_tasks)
    return amplitude, phase


def sinusoid(x, amplitude, phase):
    """A * sin(x - phase) for x of shape (T, N, 1) (or (N,) with scalar A, phase).

    ``amplitude`` and ``phase`` of shape (T,) broadcast over the points of each task.
    >>> float(sinusoid(np.array(0.5), 2.0, 0.5))
    0.0
    """
    amplitude = np.asarray(amplitude, dtype=np.float64)
    phase = np.asarray(phase, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if amplitude.ndim == 1 and x.ndim == 3:
        amplitude = amplitude[:, None, None]
        phase = phase[:, None, None]
    return amplitude * np.sin(x - phase)


def sample_batch(num_tasks: int, shots: int, rng: np.random.Generator, query_shots: int | None = None,
                 dtype="float32", return_parameters: bool = False):
    """A meta-batch of ``num_tasks`` fresh tasks with ``shots`` support points each.

    In: T >= 1 tasks, K >= 1 support points, Q query points (default K), a generator.
    Out: a ``TaskBatch`` of arrays of shape (T, K, 1) and (T, Q, 1) in ``dtype``; with
    ``return_parameters=True`` the tuple ``(batch, amplitude, phase)``.
    >>> sample_batch(2, 5, task_rng(0, 0), query_shots=7).query_x.shape
    (2, 7, 1)
    """
    num_tasks = _positive_int(num_tasks, "number of tasks T")
    shots = _positive_int(shots, "shots K")
    query_shots = shots if query_shots is None else _positive_int(query_shots, "query shots")
    amplitude, phase = sample_parameters(num_tasks, rng)
    x = rng.uniform(*INPUT_RANGE, size=(num_tasks, shots + query_shots, 1))
    y = sinusoid(x, amplitude, phase)
    x = x.astype(dtype)
    y = y.astype(dtype)
    batch = TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])
    if return_parameters:
        return batch, amplitude, phase
    return batch


def true_curve(amplitude, phase, num_points: int = 100, dtype="float32"):
    """The task's whole curve on ``num_points`` evenly spaced x over [-5, 5].

    In: amplitudes and phases of shape (T,) (or scalars). Out: ``(x, y)`` with x of
    shape (num_points,) and y of shape (T, num_points) (or (num_points,) for scalars).
    >>> x, y = true_curve(1.0, 0.0, num_points=3)
    >>> x.tolist()
    [-5.0, 0.0, 5.0]
    """
    num_points = _positive_int(num_points, "num_points")
    x = np.linspace(*INPUT_RANGE, num_points)
    amplitude = np.asarray(amplitude, dtype=np.float64)
    phase = np.asarray(phase, dtype=np.float64)
    y = amplitude[..., None] * np.sin(x - phase[..., None])
    return x.astype(dtype), y.astype(dtype)


def evaluation_batch(num_tasks: int, shots: int, rng: np.random.Generator, num_points: int = 100,
                     dtype="float32"):
    """Tasks for evaluation: K random support points, queries on ``num_points`` evenly spaced x.

    This is the evaluation protocol of the MAML paper's sinusoid results: adapt on the
    K support points, measure the MSE on the whole curve over [-5, 5].
    Out: ``(TaskBatch, amplitude, phase)``; support arrays (T, K, 1), query (T, num_points, 1).
    >>> batch, amplitude, phase = evaluation_batch(4, 5, task_rng(0, 0, STREAM_EVAL))
    >>> batch.query_x.shape
    (4, 100, 1)
    """
    num_tasks = _positive_int(num_tasks, "number of tasks T")
    shots = _positive_int(shots, "shots K")
    amplitude, phase = sample_parameters(num_tasks, rng)
    support_x = rng.uniform(*INPUT_RANGE, size=(num_tasks, shots, 1))
    support_y = sinusoid(support_x, amplitude, phase)
    grid_x, grid_y = true_curve(amplitude, phase, num_points, dtype="float64")
    query_x = np.broadcast_to(grid_x[None, :, None], (num_tasks, num_points, 1))
    query_y = grid_y[:, :, None]
    batch = TaskBatch(support_x.astype(dtype), support_y.astype(dtype),
                      np.ascontiguousarray(query_x, dtype=dtype), query_y.astype(dtype))
    return batch, amplitude, phase


class SinusoidTask(Task):
    """The sinusoid family behind the ``Task`` interface: MSE loss, per-task MSE metric.

    ``evaluation_batch`` follows the MAML paper: K random support points, queries on 100
    evenly spaced x over [-5, 5] (so the query set is the task's whole curve).
    >>> SINUSOID.meta_batch(seed=0, iteration=0, num_tasks=3, shots=5).support_x.shape
    (3, 5, 1)
    >>> SINUSOID.evaluation_tasks(seed=0, num_tasks=2, shots=5).query_x.shape
    (2, 100, 1)
    """

    name = "sinusoid"
    metric_name = "mse"
    # the MSE of predicting 0 everywhere is A^2/2 <= 12.5, so 1000 means the adaptation blew up
    diverged_above = 1e3
    evaluation_shots = (5, 10, 20)
    query_description = "query MSE on 100 evenly spaced points over [-5, 5]"
    curve_plot = True  # 1-D inputs: the evaluation plot draws each task's curve

    def sample_batch(self, num_tasks, shots, rng, query_shots=None):
        return sample_batch(num_tasks, shots, rng, query_shots=query_shots)

    def evaluation_batch(self, num_tasks, shots, rng):
        return evaluation_batch(num_tasks, shots, rng)[0]

    loss = staticmethod(mse_loss)  # the function itself, so the meta-learners see plain mse_loss

    def metric(self, prediction, target):
        return np.asarray(per_task_mse(np.asarray(prediction), np.asarray(target)), dtype=np.float64)


SINUSOID = SinusoidTask()
