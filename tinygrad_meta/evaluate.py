"""Few-shot evaluation of a trained run, next to a "pretrained on all tasks" baseline.

The protocol of the MAML paper's sinusoid results: for each of N fresh tasks (the
task's ``evaluation_tasks`` stream), take K random support points, adapt the network
with plain gradient descent on them (learning rate = the run's inner learning rate;
Meta-SGD uses its learned per-parameter rates), and score it with the task's metric
(for sinusoids the MSE on 100 evenly spaced points over [-5, 5]) after 0, 1, 5 and 10
steps. The table reports the mean and a 95% confidence interval (1.96 standard errors)
over the tasks, for each K of the task's ``evaluation_shots`` (5, 10, 20).

The baseline is a network of the same size trained by ordinary regression on points
from many random tasks (so it learns the average curve), then fine-tuned exactly the
same way. It is trained once per run folder and cached in ``pretrained.npz``.

Adaptation is the meta-learners' own inner loop (meta/base.py): for an MLP all N tasks
adapt at once (the fast weights carry a leading task axis and each step is one batched
forward and backward pass), any other module task by task.

>>> report = evaluate_run("runs/maml-sinusoid", num_tasks=600)  # doctest: +SKIP
>>> print(format_table(report))                                   # doctest: +SKIP
"""
from __future__ import annotations

import json
import numbers
import os
from collections import OrderedDict

import numpy as np

from . import optim
from .autograd import grad
from .checkpoint import CheckpointError, load_checkpoint, run_file, save_checkpoint
from .run import build_model, check_evaluation_size, load_run, pinned_kernels, task_of
from .evaluate_fewshot import fewshot_rows, format_fewshot_table
from .functional import mse_loss
from .meta import MAML
from .tasks import get_task, is_fewshot
from .tasks.base import TaskBatch, stream_rng
from .tasks.sinusoid import SINUSOID
from .tensor import Tensor

__all__ = ["adapt_curve", "adapted_mse", "adapted_metric", "train_pretrained_baseline", "evaluate_run",
           "format_table", "format_cell", "save_plot", "plot_figure", "EVAL_STEPS", "EVAL_SHOTS", "DIVERGED_MSE",
           "REPORT_NAME", "PLOT_NAME"]

EVAL_STEPS = (0, 1, 5, 10)
EVAL_SHOTS = (5, 10, 20)
PRETRAINED_NAME = "pretrained.npz"
REPORT_NAME = "eval.json"       # the training run's own table; `eval` writes files of its own
PLOT_NAME = "eval_plot.png"
PRETRAIN_DEFAULTS = {"iters": 5000, "tasks_per_batch": 25, "points_per_task": 10, "lr": 1e-3}


def _fine_tuner(model, lr, loss_fn=mse_loss):
    """The inner loop of meta/base.py as plain gradient descent on the support loss, from
    whatever parameters it is given: ``lr`` a float, or name -> array of per-parameter rates."""
    if isinstance(lr, dict):
        lr = OrderedDict((name, np.asarray(rate)) for name, rate in lr.items())
    else:
        lr = float(lr)
    return MAML(model, inner_lr=lr, inner_steps=0, first_order=True, loss_fn=loss_fn)


def _start(model, params):
    like = next(iter(model.parameters()))
    return OrderedDict((name, Tensor(np.asarray(value), dtype=like.dtype, device=like.device))
                       for name, value in params.items())


def adapt_curve(model, params, batch, steps=EVAL_STEPS, lr=0.01, device="cpu"):
    """Query MSE of every task after each number of plain gradient steps in ``steps``.

    In: ``model`` a Module; ``params`` name -> numpy array (the initialisation to adapt
    from); ``batch`` a TaskBatch (support (T, K, 1), query (T, Q, 1)); ``lr`` a float
    or name -> array of per-parameter rates (Meta-SGD). Out: dict step -> (T,) float64
    array of query MSEs. Each task adapts on its own support set only (the meta-learners'
    inner loop, meta/base.py); ``device`` is where the model lives.
    >>> curves = adapt_curve(model, model.state_dict(), batch, steps=(0, 1))  # doctest: +SKIP
    """
    steps = sorted(set(int(s) for s in steps))
    if not steps or steps[0] < 0:
        raise ValueError(f"adapt_curve: steps must be non-negative integers, got {steps}")
    # a task that diverges overflows to inf/nan; the table reports it, numpy need not warn
    with np.errstate(over="ignore", invalid="ignore"):
        return _fine_tuner(model, lr).evaluate(tuple(batch), steps, params=_start(model, params))


def _learned_rates(algorithm):
    """The learner's per-parameter inner rates as numpy arrays (Meta-SGD), or None."""
    rates = algorithm.inner_learning_rates()
    if rates is None:
        return None
    return OrderedDict((name, np.asarray(r.numpy() if isinstance(r, Tensor) else r))
                       for name, r in rates.items())


def _parameters(model):
    return OrderedDict((name, p.numpy()) for name, p in model.parameter_dict().items())


def adapted_mse(algorithm, batch, steps=EVAL_STEPS, inner_lr=0.01, device="cpu"):
    """``adapt_curve`` for a meta-learner: from its model's parameters, at its inner rates."""
    model = algorithm.model
    rates = _learned_rates(algorithm)
    return adapt_curve(model, _parameters(model), batch, steps, rates if rates is not None else inner_lr, device)


def _query_predictions(model, params, batch, steps, lr, device, loss_fn=mse_loss):
    """The model's predictions on ``batch.query_x`` after each step count in ``steps``:
    dict step -> numpy array (T, Q, outputs), each task adapted on its own support set
    by the meta-learners' inner loop (meta/base.py) on ``loss_fn``."""
    steps = sorted(set(int(s) for s in steps))
    like = next(iter(model.parameters()))
    tasks = tuple(np.asarray(a, dtype=like.dtype) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
                  for a in batch[:4])
    # a task that diverges overflows to inf/nan; the table reports it, numpy need not warn
    with np.errstate(over="ignore", invalid="ignore"):
        predictions = _fine_tuner(model, lr, loss_fn).predictions(tasks, steps, params=_start(model, params))
    return OrderedDict((step, np.asarray(predictions[step].numpy())) for step in steps)


def _metric_curves(task, model, params, batch, steps, lr, device):
    with np.errstate(over="ignore", invalid="ignore"):
        return {step: task.metric(prediction, np.asarray(batch.query_y))
                for step, prediction in _query_predictions(model, params, batch, steps, lr, device,
                                                           task.loss).items()}


def adapted_metric(task, algorithm, batch, steps=EVAL_STEPS, inner_lr=0.01, device="cpu"):
    """Each task's ``task.metric`` after each number of plain gradient steps in ``steps``.

    In: a Task, a meta-learner (adapted from its model's parameters, at its learned
    rates if it has them, else ``inner_lr``), a TaskBatch. Out: dict step -> (T,)
    float64 array. For sinusoids this is ``adapted_mse``'s query MSE.
    >>> curves = adapted_metric(get_task("sinusoid"), algorithm, batch, steps=(0, 1))  # doctest: +SKIP
    """
    steps = sorted(set(int(s) for s in steps))
    if not steps or steps[0] < 0:
        raise ValueError(f"adapted_metric: steps must be non-negative integers, got {steps}")
    rates = _learned_rates(algorithm)
    return _metric_curves(task, algorithm.model, _parameters(algorithm.model), batch, steps,
                          rates if rates is not None else inner_lr, device)


# A sinusoid task "diverged" when plain SGD on its support set blew up (the task's
# ``diverged_above``; kept here under its old name for scripts that use it)
DIVERGED_MSE = SINUSOID.diverged_above


def _mean_ci(values):
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"):
        mean = float(values.mean())
        ci = float(1.96 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return mean, ci


def _row(model, shots, curves, steps, diverged_above=DIVERGED_MSE):
    """Mean and 95% CI per step over all tasks, plus what diverged and the rest's statistics.

    A task diverged when its score is not finite or above ``diverged_above`` (None: only
    non-finite scores count, as for accuracies). ``without_diverged`` and
    ``median_without_diverged`` are over the tasks that did not diverge; ``median`` is
    over all tasks, a diverged one counting as the worst.
    """
    row = {"model": model, "shots": shots, "steps": {}, "diverged": {}, "without_diverged": {}, "median": {},
           "median_without_diverged": {}}
    for s in steps:
        values = np.asarray(curves[s], dtype=np.float64)
        diverged = ~np.isfinite(values)
        if diverged_above is not None:
            diverged |= values > diverged_above
        kept = values[~diverged]
        row["steps"][s] = list(_mean_ci(values))
        row["diverged"][s] = int(diverged.sum())
        row["without_diverged"][s] = list(_mean_ci(kept)) if kept.size else [None, None]
        row["median_without_diverged"][s] = float(np.median(kept)) if kept.size else None
        row["median"][s] = float(np.median(np.where(np.isnan(values), np.inf, values)))
    return row


# ----------------------------------------------------------------------------------
# The pretrained baseline
# ----------------------------------------------------------------------------------

def train_pretrained_baseline(config, run_dir=None, log=print, **settings):
    """A same-size MLP trained by plain regression on random tasks; returns its Module.

    In: the run's config (hidden sizes, init, seed, task, device); ``run_dir`` to cache
    the weights in ``pretrained.npz`` (reused when its settings match); ``settings``
    overrides ``PRETRAIN_DEFAULTS`` (iters, tasks_per_batch, points_per_task, lr).
    Its initial weights come from the seed's "baseline-init" stream, its batches from
    the "baseline" stream.
    """
    settings = dict(PRETRAIN_DEFAULTS, **settings)
    iters = settings["iters"]
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters < 0:
        raise ValueError(f"evaluate: the baseline's regression steps (--baseline-iters) must be a whole "
                         f"number >= 0, got {iters!r}")
    device = config.get("device", "cpu")
    # "streams" tells this baseline from caches drawn before the named RNG streams
    identity = {"hidden": list(config["hidden"]), "init": config["init"], "seed": config["seed"],
                "task": config["task"], "streams": "named", **settings}
    model = build_model(dict(config, device=device), stream="baseline-init")
    cache = os.path.join(run_dir, PRETRAINED_NAME) if run_dir else None
    if cache and os.path.exists(cache):
        try:
            saved = load_checkpoint(cache)
            if saved.config == identity:
                model.load_state_dict(saved.params)
                return model
        except (CheckpointError, OSError, KeyError, ValueError) as error:
            log(f"note: ignoring unreadable baseline cache {cache} ({error}); retraining it")
    task = get_task(config["task"])
    parameters = model.parameter_dict()
    optimizer = optim.Adam(parameters, lr=settings["lr"])
    for iteration in range(iters):
        batch = task.sample_batch(settings["tasks_per_batch"], settings["points_per_task"],
                                  stream_rng(config["seed"], "baseline", iteration))
        # pooled: one regression over every task's support points
        x = Tensor(batch.support_x.reshape(-1, batch.support_x.shape[-1]), device=device)
        y = Tensor(batch.support_y.reshape(-1, batch.support_y.shape[-1]), device=device)
        loss = task.loss(model(x), y)
        grads = grad(loss, list(parameters.values()))
        optimizer.step(OrderedDict(zip(parameters, grads)))
    if cache:
        save_checkpoint(cache, params=model.state_dict(), iteration=iters, config=identity)
    return model


# ----------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------

def _check_counts(num_tasks, baseline_iters):
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral) or num_tasks < 2:
        raise ValueError(f"evaluate: need at least 2 tasks for a confidence interval, got {num_tasks!r}")
    if baseline_iters is not None and (isinstance(baseline_iters, bool) or not isinstance(
            baseline_iters, numbers.Integral) or baseline_iters < 0):
        raise ValueError(f"evaluate: --baseline-iters must be a whole number >= 0, got {baseline_iters!r}")


def evaluate_run(run_dir, num_tasks=600, shots=None, steps=EVAL_STEPS, baseline=True,
                 plot=True, device=None, log=print, algorithm=None, config=None, baseline_iters=None,
                 report_path=None, plot_path=None):
    """Evaluate the checkpoint in ``run_dir``; returns a report dict (also saved as JSON).

    In: a run folder; ``num_tasks`` fresh tasks per K; ``shots`` the K values (default:
    the task's ``evaluation_shots``); ``steps`` the step counts to report; ``baseline``
    whether to add the pretrained baseline; ``plot`` whether to save a plot (needs
    matplotlib); ``baseline_iters`` the baseline's regression steps (default: the run's
    config, else 5000); ``report_path`` / ``plot_path`` where the JSON table and the plot
    go (default ``run_dir/eval.json`` and ``run_dir/eval_plot.png``, the run's own).
    Out: ``{"rows": [{"model", "shots", "steps": {s: [mean, ci]}}...], ...}``.
    """
    if algorithm is None or config is None:
        config, algorithm, checkpoint = load_run(run_dir, device=device)
        iteration = checkpoint.iteration
    else:
        iteration = None
    _check_counts(num_tasks, baseline_iters)
    task = task_of(config)
    shots = tuple(task.evaluation_shots if shots is None else shots)
    check_evaluation_size(config, int(num_tasks), shots)
    device = config.get("device", "cpu") if device is None else device
    if run_dir:
        report_path = os.path.join(run_dir, REPORT_NAME) if report_path is None else report_path
        plot_path = os.path.join(run_dir, PLOT_NAME) if plot_path is None else plot_path
    if is_fewshot(config["task"]):
        with pinned_kernels(config, log):
            return _evaluate_fewshot(run_dir, task, config, algorithm, iteration, int(num_tasks), shots, log,
                                     report_path)
    # the run's kernels, so that the same checkpoint always gives the same table
    with pinned_kernels(config, log):
        return _evaluate(run_dir, task, config, algorithm, iteration, int(num_tasks), shots, steps, baseline,
                         plot, device, log, baseline_iters, report_path, plot_path or PLOT_NAME)


def _evaluate(run_dir, task, config, algorithm, iteration, num_tasks, shots, steps, baseline, plot, device,
              log, baseline_iters, report_path, plot_path):
    pretrained = None
    if baseline:
        if baseline_iters is None:
            baseline_iters = config.get("baseline_iters", PRETRAIN_DEFAULTS["iters"])
        pretrained = train_pretrained_baseline(config, run_dir, log=log, iters=baseline_iters)
    diverged_above = task.diverged_above
    rows = []
    batches = {}
    for k in shots:
        batch = task.evaluation_tasks(config["seed"], num_tasks, k)
        batches[k] = batch
        curves = adapted_metric(task, algorithm, batch, steps, config["inner_lr"], device)
        rows.append(_row(config["algo"], k, curves, steps, diverged_above))
        if pretrained is not None:
            curves = _metric_curves(task, pretrained, _parameters(pretrained), batch, steps, config["inner_lr"],
                                    device)
            rows.append(_row("pretrained", k, curves, steps, diverged_above))
    report = {"run": run_dir, "iteration": iteration, "algo": config["algo"], "task": task.name,
              "metric": task.metric_name, "query": task.query_description, "diverged_above": diverged_above,
              "num_tasks": num_tasks,
              "inner_lr": config["inner_lr"], "learned_rates": _learned_rates(algorithm) is not None,
              "steps": list(steps), "rows": rows}
    if report_path:
        with run_file("cannot write evaluation table", report_path), \
                open(report_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        report["path"] = report_path
    if plot and task.curve_plot:
        k = 5 if 5 in batches else shots[0]
        report["plot"] = save_plot(plot_path, algorithm, pretrained, batches[k], config, device, log=log)
    elif plot:
        log(f"no evaluation plot for the {task.name} task (it draws curves of 1-D regression tasks)")
    return report


def _evaluate_fewshot(run_dir, task, config, algorithm, iteration, num_tasks, shots, log, report_path):
    rows, note = fewshot_rows(task, algorithm, config, num_tasks, shots=shots, log=log)
    report = {"run": run_dir, "iteration": iteration, "algo": config["algo"], "task": task.name,
              "metric": "accuracy", "query": task.query_description, "num_tasks": num_tasks,
              "inner_lr": config["inner_lr"], "learned_rates": _learned_rates(algorithm) is not None,
              "fewshot": True, "rows": rows, "note": note}
    if report_path:
        with run_file("cannot write evaluation table", report_path), \
                open(report_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        report["path"] = report_path
    return report


def format_table(report) -> str:
    """The report as a fixed-width text table (one row per K and model)."""
    if report.get("fewshot"):
        return format_fewshot_table(report)
    steps = report["steps"]
    rate = "learned per-parameter rates" if report.get("learned_rates") else f"SGD lr {report['inner_lr']}"
    query = report.get("query", "query MSE on 100 evenly spaced points over [-5, 5]")
    lines = [f"{query} after k inner steps ({rate}); mean ± 95% CI over {report['num_tasks']} tasks"
             + (f"; checkpoint at iteration {report['iteration']}" if report.get("iteration") is not None else "")]
    header = f"{'K':>3}  {'model':<11}" + "".join(f"{f'{s} step' + ('s' if s != 1 else ''):>18}" for s in steps)
    lines.append(header)
    lines.append("-" * len(header))
    notes = []
    for row in report["rows"]:
        cells = "".join(f"{format_cell(*row['steps'][s], row.get('diverged', {}).get(s, 0)):>18}" for s in steps)
        lines.append(f"{row['shots']:>3}  {row['model']:<11}{cells}")
        for s in steps:
            count = row.get("diverged", {}).get(s, 0)
            if count:
                notes.append(f"* K={row['shots']} {row['model']} after {s} steps: {count} of {report['num_tasks']} "
                             f"tasks diverged ({_divergence(report)}); " + _rest(report, row, s, count))
    return "\n".join(lines + notes)


def _divergence(report):
    """What counted as diverged, e.g. "MSE > 1000 or not finite"."""
    above = report.get("diverged_above", DIVERGED_MSE)  # reports written before the key: sinusoid's
    if above is None:
        return "not finite"
    metric = report.get("metric", "mse")
    return f"{'MSE' if metric == 'mse' else metric} > {above:g} or not finite"


def _rest(report, row, step, count):
    """The tasks that did not diverge: their mean ± CI and their median (the same tasks for both)."""
    mean, ci = row["without_diverged"][step]
    if mean is None:
        return "no task stayed finite"
    median = row.get("median_without_diverged", {}).get(step)
    return (f"the other {report['num_tasks'] - count}: mean {mean:.3f} ± {ci:.3f}"
            + (f", median {median:.3f}" if median is not None else ""))


def format_cell(mean, ci, diverged):
    """One table cell: "mean ± ci", marked with * when some task diverged.

    >>> format_cell(0.25, 0.01, 0), format_cell(float("nan"), float("nan"), 1)
    ('0.250 ± 0.010 ', 'not finite*')
    """
    mark = "*" if diverged else " "
    if mean is None or not np.isfinite(mean):
        return f"not finite{mark}"
    if mean >= 1e3:
        return f"{mean:.2e}{mark}"
    return f"{mean:.3f} ± {ci:.3f}{mark}"


def save_plot(path, algorithm, pretrained, evaluation, config, device="cpu", log=print, num_tasks=2):
    """MAML-paper Figure 2: true curve, support points, predictions after 0/1/10 steps.

    ``evaluation``: a sinusoid evaluation TaskBatch (its query set is each task's whole
    curve), or the ``(batch, amplitude, phase)`` of ``sinusoid.evaluation_batch``, whose
    amplitudes and phases then go into the titles. One row per task (the first
    ``num_tasks``), the meta-learned model on the left and the pretrained baseline on the
    right. Returns the path, or None when matplotlib is not installed (it says so
    through ``log``).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: skipped the plot (pip install matplotlib)")
        return None
    figure = plot_figure(plt, algorithm, pretrained, evaluation, config, device, num_tasks)
    try:
        with run_file("cannot write plot", path):
            figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    log(f"saved the plot to {path}")
    return path


def plot_figure(plt, algorithm, pretrained, evaluation, config, device="cpu", num_tasks=2):
    """The figure ``save_plot`` saves, drawn with ``plt`` (``matplotlib.pyplot``); the caller closes it."""
    if isinstance(evaluation, TaskBatch):
        batch, amplitude, phase = evaluation, None, None
    else:
        batch, amplitude, phase = evaluation
    num_tasks = min(num_tasks, batch.support_x.shape[0])
    batch = TaskBatch(*(np.asarray(a)[:num_tasks] for a in batch))
    shots = batch.support_x.shape[1]
    panels = [(config["algo"].upper(), algorithm.model, _parameters(algorithm.model),
               _learned_rates(algorithm) or config["inner_lr"])]
    if pretrained is not None:
        panels.append(("pretrained", pretrained, _parameters(pretrained), config["inner_lr"]))
    figure, axes = plt.subplots(num_tasks, len(panels), figsize=(5 * len(panels), 3.4 * num_tasks),
                                squeeze=False)
    order = np.argsort(batch.query_x[:, :, 0], axis=1)  # draw each curve left to right
    for column, (title, model, params, lr) in enumerate(panels):
        predictions = _query_predictions(model, params, batch, (0, 1, 10), lr, device)
        for row in range(num_tasks):
            ax = axes[row][column]
            x = batch.query_x[row, order[row], 0]
            ax.plot(x, batch.query_y[row, order[row], 0], color="red", label="ground truth")
            for (steps, curve), style in zip(predictions.items(), (":", "--", "-")):
                ax.plot(x, curve[row, order[row], 0], style, color="tab:green",
                        label=f"after {steps} step{'s' if steps != 1 else ''}")
            ax.plot(batch.support_x[row, :, 0], batch.support_y[row, :, 0], "^", color="purple",
                    label="support points")
            ax.set_xlim(-5, 5)
            task = f"task {row + 1}" + (f" (A={amplitude[row]:.2f}, phase={phase[row]:.2f})"
                                        if amplitude is not None else "")
            ax.set_title(f"{title}: {task}, K={shots}", fontsize=10)
            ax.set_xlabel("x")
            ax.set_ylabel("y")
            if row == 0 and column == 0:
                ax.legend(fontsize=7)
    figure.tight_layout()
    return figure
