"""Few-shot task families that the meta-learners train on, behind one interface.

``get_task(name)`` returns a :class:`~tinygrad_meta.tasks.base.Task`: ``meta_batch``,
``validation_tasks`` and ``evaluation_tasks`` draw task batches from named RNG streams
of the run's seed, ``loss`` is what the meta-learner trains on, ``metric`` scores an
adapted model per task (MSE for regression, accuracy for classification).

>>> task = get_task("sinusoid")
>>> task.meta_batch(seed=0, iteration=0, num_tasks=2, shots=5).support_x.shape, task.metric_name
((2, 5, 1), 'mse')
"""
from __future__ import annotations

from . import sinusoid
from .base import STREAMS, Task, TaskBatch, stream_rng

__all__ = ["TASKS", "get_task", "sinusoid", "Task", "TaskBatch", "stream_rng", "STREAMS"]

# name -> Task; the families the command line trains on
TASKS = {"sinusoid": sinusoid.SINUSOID}


def get_task(name: str) -> Task:
    """The task family called ``name``, or a ValueError that lists the known ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
