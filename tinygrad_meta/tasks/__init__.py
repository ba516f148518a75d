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

import functools

from . import sinusoid
from .base import STREAMS, Task, TaskBatch, stream_rng
from .fewshot import glyph_task, omniglot_task

__all__ = ["TASKS", "FEWSHOT_TASKS", "get_task", "make_task", "is_fewshot", "sinusoid", "Task", "TaskBatch",
           "stream_rng", "STREAMS"]

# name -> Task; the families the command line trains on
TASKS = {"sinusoid": sinusoid.SINUSOID}
# image classification families, built from a run's settings (ways, queries, data folder): make_task
FEWSHOT_TASKS = ("omniglot", "glyphs")


def is_fewshot(name) -> bool:
    """Whether ``name`` is an image-classification family (built by ``make_task``)."""
    return name in FEWSHOT_TASKS


@functools.lru_cache(maxsize=4)
def _fewshot_task(name, data_dir, ways, queries, eval_queries):
    if name == "glyphs":
        return glyph_task(ways=ways, queries=queries, eval_queries=eval_queries)
    return omniglot_task(data_dir, ways=ways, queries=queries, eval_queries=eval_queries)


def make_task(name: str, data_dir=None, ways=5, queries=5, eval_queries=None) -> Task:
    """The task family ``name``: a registered one (``get_task``), or a few-shot
    classification family (``FEWSHOT_TASKS``) of ``ways``-way episodes with ``queries``
    queries per class in training (``eval_queries`` in validation and evaluation episodes;
    None: the same), Omniglot read from ``data_dir``. The same settings give the same
    object (the decoded images are loaded once per process)."""
    if is_fewshot(name):
        return _fewshot_task(name, None if data_dir is None else str(data_dir), int(ways), int(queries),
                             None if eval_queries is None else int(eval_queries))
    return get_task(name)


def get_task(name: str) -> Task:
    """The task family called ``name``, or a ValueError that lists the known ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        if is_fewshot(name):
            raise ValueError(f"task {name!r} is built from a run's settings: use make_task({name!r}, "
                             "data_dir=..., ways=..., queries=...)") from None
        raise ValueError(f"unknown task {name!r}; known tasks: "
                         f"{', '.join(sorted(set(TASKS) | set(FEWSHOT_TASKS)))}") from None
