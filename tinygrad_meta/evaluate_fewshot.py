"""Few-shot classification accuracy of a trained run: the 5/20-way, 1/5-shot table.

The protocol of the MAML and ProtoNet papers: draw fresh N-way K-shot episodes from the
meta-test classes (the task's ``evaluation_tasks`` stream of each (N, K)), let the
learner adapt on each episode's support set (ProtoNet: compute the prototypes;
MAML, ANIL, Meta-SGD, Reptile: ``test_steps`` inner steps of its own inner loop at its
inner rate(s)), and score the accuracy on the episode's queries. The table reports the
mean and a 95% confidence interval, 1.96 standard deviations of the per-episode
accuracies over sqrt(episodes) (at least 600 episodes by default, as both papers report).

A gradient-based learner's classifier has as many outputs as the ways it was trained
on, so its rows are those of its ``--ways``; a ProtoNet classifies any number of ways.
Episodes are adapted in chunks of about ``IMAGES_PER_CHUNK`` images at a time, so the
memory stays bounded whatever the number of episodes.

>>> mean_ci([1.0, 0.0, 1.0, 1.0])          # 1.96 * std(ddof=1) / sqrt(n)
(0.75, 0.49)
"""
from __future__ import annotations

import numpy as np

from .tasks.base import TaskBatch, per_task_accuracy
from .tasks.fewshot import EVALUATION_SHOTS, EVALUATION_WAYS

__all__ = ["mean_ci", "episode_accuracy", "evaluation_cells", "fewshot_rows", "format_fewshot_table",
           "IMAGES_PER_CHUNK"]

IMAGES_PER_CHUNK = 2000


def mean_ci(values) -> tuple:
    """(mean, half-width of the 95% confidence interval) of per-episode scores:
    1.96 * sample standard deviation / sqrt(n); nan for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan")
    return mean, float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


def _chunks(batch, tasks_per_chunk):
    tasks = batch.support_x.shape[0]
    for start in range(0, tasks, tasks_per_chunk):
        yield TaskBatch(*(np.asarray(a)[start:start + tasks_per_chunk] for a in batch))


def episode_accuracy(algorithm, batch, steps) -> np.ndarray:
    """The query accuracy (float64, one per episode) of ``algorithm`` adapted on each
    episode of ``batch`` (a TaskBatch of arrays) with ``steps`` inner steps."""
    per_task = batch.support_x.shape[1] + batch.query_x.shape[1]
    tasks_per_chunk = max(1, IMAGES_PER_CHUNK // per_task)
    scores = []
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged adaptation scores as it scores
        for chunk in _chunks(batch, tasks_per_chunk):
            logits = algorithm.predictions(tuple(chunk), steps=[steps])[steps]
            scores.append(per_task_accuracy(logits, chunk.query_y))
    return np.concatenate(scores)


def evaluation_cells(config, ways=EVALUATION_WAYS, shots=EVALUATION_SHOTS):
    """The (ways, shots) cells a run can be evaluated at, and a note on those it cannot."""
    cells = [(n, k) for n in ways for k in shots]
    if config["algo"] == "protonet":
        return cells, None
    kept = [(n, k) for n, k in cells if n == config["ways"]]
    skipped = sorted({n for n, _ in cells if n != config["ways"]})
    note = None
    if skipped:
        note = (f"{config['algo']} was trained {config['ways']}-way: its classifier has {config['ways']} outputs, so "
                f"the {'/'.join(map(str, skipped))}-way rows need a run trained with --ways "
                f"{'/'.join(map(str, skipped))}")
    return kept, note


def _steps(config):
    return 0 if config["algo"] == "protonet" else config["test_steps"]


def fewshot_rows(task, algorithm, config, num_tasks, ways=EVALUATION_WAYS, shots=EVALUATION_SHOTS, log=print):
    """One row per (ways, shots) cell: ``{"model", "ways", "shots", "steps", "accuracy": [mean, ci]}``,
    and a note on the cells left out (or None)."""
    cells, note = evaluation_cells(config, ways, shots)
    notes = [note] if note else []
    steps = _steps(config)
    rows = []
    for n, k in cells:
        try:
            task.check(k, n, splits=("test",))
        except ValueError as error:     # a small meta-test split (a test fixture) has no 20-way row
            notes.append(f"no {n}-way {k}-shot row: {error}")
            continue
        batch = task.evaluation_tasks(config["seed"], num_tasks, k, ways=n)
        accuracy = episode_accuracy(algorithm, batch, steps)
        rows.append({"model": config["algo"], "ways": n, "shots": k, "steps": steps,
                     "accuracy": list(mean_ci(accuracy))})
    for line in notes:
        log(f"note: {line}")
    return rows, "; ".join(notes) or None


def format_fewshot_table(report) -> str:
    """The accuracy table as text: one line per (ways, shots), percentages with 95% CIs."""
    lines = [f"{report['task']}: {report['query']}; mean ± 95% CI over {report['num_tasks']} episodes"
             + (f"; checkpoint at iteration {report['iteration']}" if report.get("iteration") is not None else "")]
    header = f"{'ways':>4} {'shots':>5}  {'model':<9} {'adaptation':<16} {'accuracy':>16}"
    lines += [header, "-" * len(header)]
    for row in report["rows"]:
        mean, ci = row["accuracy"]
        how = "prototypes" if row["model"] == "protonet" else f"{row['steps']} inner steps"
        lines.append(f"{row['ways']:>4} {row['shots']:>5}  {row['model']:<9} {how:<16} "
                     f"{100 * mean:>8.2f} ± {100 * ci:.2f} %")
    if report.get("note"):
        lines.append(f"({report['note']})")
    return "\n".join(lines)
