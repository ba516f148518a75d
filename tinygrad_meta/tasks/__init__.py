"""Few-shot task distributions that the meta-learners train on.

``get_task(name)`` returns the module of a task family; each offers
``sample_batch(num_tasks, shots, rng)`` and ``evaluation_batch(num_tasks, shots, rng)``.

>>> get_task("sinusoid").sample_batch(2, 5, get_task("sinusoid").task_rng(0, 0)).support_x.shape
(2, 5, 1)
"""
from __future__ import annotations

from . import sinusoid

__all__ = ["TASKS", "get_task", "sinusoid"]

# name -> module; the regression tasks the command line trains on
TASKS = {"sinusoid": sinusoid}


def get_task(name: str):
    """The task family called ``name``, or a ValueError that lists the known ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
