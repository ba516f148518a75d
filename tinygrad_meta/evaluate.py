"""Few-shot evaluation of a trained run, next to a "pretrained on all tasks" baseline.

The protocol of the MAML paper's sinusoid results: for each of N fresh tasks, take K
random support points, adapt the network with plain gradient descent on them
(learning rate = the run's inner learning rate; Meta-SGD uses its learned
per-parameter rates), and measure the MSE on 100 evenly spaced points over [-5, 5]
after 0, 1, 5 and 10 steps. The table reports the mean and a 95% confidence interval
(1.96 standard errors) over the tasks, for K = 5, 10, 20.

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
import os
from collections import OrderedDict

import numpy as np

from .autograd import grad
from .checkpoint import CheckpointError, load_checkpoint, run_file, save_checkpoint
from .functional import mse_loss
from .meta import MAML
from .tasks import get_task
from .tasks.sinusoid import STREAM_EVAL, STREAM_PRETRAIN, task_rng
from .tensor import Tensor

__all__ = ["adapt_curve", "adapted_mse", "train_pretrained_baseline", "evaluate_run",
           "format_table", "format_cell", "save_plot", "EVAL_STEPS", "EVAL_SHOTS", "DIVERGED_MSE"]

EVAL_STEPS = (0, 1, 5, 10)
EVAL_SHOTS = (5, 10, 20)
PRETRAINED_NAME = "pretrained.npz"
PRETRAIN_DEFAULTS = {"iters": 5000, "tasks_per_batch": 25, "points_per_task": 10, "lr": 1e-3}


def _fine_tuner(model, lr):
    """The inner loop of meta/base.py as plain gradient descent on the support MSE, from
    whatever parameters it is given: ``lr`` a float, or name -> array of per-parameter rates."""
    if isinstance(lr, dict):
        lr = OrderedDict((name, np.asarray(rate)) for name, rate in lr.items())
    else:
        lr = float(lr)
    return MAML(model, inner_lr=lr, inner_steps=0, first_order=True, loss_fn=mse_loss)


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


def adapted_mse(algorithm, batch, steps=EVAL_STEPS, inner_lr=0.01, device="cpu"):
    """``adapt_curve`` for a meta-learner: from its model's parameters, at its inner rates."""
    model = algorithm.model
    params = OrderedDict((name, p.numpy()) for name, p in model.parameter_dict().items())
    rates = _learned_rates(algorithm)
    return adapt_curve(model, params, batch, steps, rates if rates is not None else inner_lr, device)


# A task "diverged" when plain SGD on its support set blew up: the MSE of predicting 0
# everywhere is A^2/2 <= 12.5 for these tasks, so 1000 is far beyond any sane model.
DIVERGED_MSE = 1e3


def _mean_ci(values):
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"):
        mean = float(values.mean())
        ci = float(1.96 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return mean, ci


def _row(model, shots, curves, steps):
    """Mean and 95% CI per step over all tasks, plus what diverged and the rest's statistics."""
    row = {"model": model, "shots": shots, "steps": {}, "diverged": {}, "without_diverged": {}, "median": {}}
    for s in steps:
        values = np.asarray(curves[s], dtype=np.float64)
        diverged = ~np.isfinite(values) | (values > DIVERGED_MSE)
        row["steps"][s] = list(_mean_ci(values))
        row["diverged"][s] = int(diverged.sum())
        row["without_diverged"][s] = list(_mean_ci(values[~diverged])) if (~diverged).any() else [None, None]
        # a NaN task counts as the worst, not as "unknown", in the median
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
    """
    from . import nn, optim
    from .functional import mse_loss
    settings = dict(PRETRAIN_DEFAULTS, **settings)
    identity = {"hidden": list(config["hidden"]), "init": config["init"], "seed": config["seed"],
                "task": config["task"], **settings}
    model = nn.MLP([1, *config["hidden"], 1], init=config["init"],
                   rng=task_rng(config["seed"], 0, stream=5))
    if config.get("device", "cpu") != "cpu":
        model.to(config["device"])
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
    optimizer = optim.Adam(model.parameter_dict(), lr=settings["lr"])
    names = list(model.parameter_dict())
    for iteration in range(settings["iters"]):
        batch = task.sample_batch(settings["tasks_per_batch"], settings["points_per_task"],
                                  task_rng(config["seed"], iteration, STREAM_PRETRAIN), query_shots=1)
        x = Tensor(batch.support_x.reshape(-1, 1), device=config.get("device", "cpu"))
        y = Tensor(batch.support_y.reshape(-1, 1), device=config.get("device", "cpu"))
        loss = mse_loss(model(x), y)
        grads = grad(loss, list(model.parameter_dict().values()))
        optimizer.step(OrderedDict(zip(names, grads)))
    if cache:
        save_checkpoint(cache, params=model.state_dict(), iteration=settings["iters"], config=identity)
    return model


# ----------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------

def evaluate_run(run_dir, num_tasks=600, shots=EVAL_SHOTS, steps=EVAL_STEPS, baseline=True,
                 plot=True, device=None, log=print, algorithm=None, config=None, baseline_iters=None):
    """Evaluate the checkpoint in ``run_dir``; returns a report dict (also saved as eval.json).

    In: a run folder; ``num_tasks`` fresh tasks per K; ``shots`` the K values; ``steps``
    the step counts to report; ``baseline`` whether to add the pretrained baseline;
    ``plot`` whether to save ``eval_plot.png`` (needs matplotlib); ``baseline_iters``
    the baseline's regression steps (default: the run's config, else 5000).
    Out: ``{"rows": [{"model", "shots", "steps": {s: [mean, ci]}}...], ...}``.
    """
    from .train import check_evaluation_size, load_run, pinned_kernels
    if algorithm is None or config is None:
        config, algorithm, checkpoint = load_run(run_dir, device=device)
        iteration = checkpoint.iteration
    else:
        iteration = None
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) or num_tasks < 2:
        raise ValueError(f"evaluate: need at least 2 tasks for a confidence interval, got {num_tasks!r}")
    check_evaluation_size(config, int(num_tasks), shots)
    device = config.get("device", "cpu") if device is None else device
    # the run's kernels, so that the same checkpoint always gives the same table
    with pinned_kernels(config, log):
        return _evaluate(run_dir, config, algorithm, iteration, num_tasks, shots, steps, baseline, plot,
                         device, log, baseline_iters)


def _evaluate(run_dir, config, algorithm, iteration, num_tasks, shots, steps, baseline, plot, device, log,
              baseline_iters):
    task = get_task(config["task"])
    pretrained = None
    if baseline:
        if baseline_iters is None:
            baseline_iters = config.get("baseline_iters", PRETRAIN_DEFAULTS["iters"])
        pretrained = train_pretrained_baseline(config, run_dir, log=log, iters=baseline_iters)
    rows = []
    batches = {}
    for k in shots:
        batch, amplitude, phase = task.evaluation_batch(num_tasks, k, task_rng(config["seed"], k, STREAM_EVAL))
        batches[k] = (batch, amplitude, phase)
        curves = adapted_mse(algorithm, batch, steps, config["inner_lr"], device)
        rows.append(_row(config["algo"], k, curves, steps))
        if pretrained is not None:
            params = OrderedDict((n, p.numpy()) for n, p in pretrained.parameter_dict().items())
            curves = adapt_curve(pretrained, params, batch, steps, config["inner_lr"], device)
            rows.append(_row("pretrained", k, curves, steps))
    report = {"run": run_dir, "iteration": iteration, "algo": config["algo"], "num_tasks": num_tasks,
              "inner_lr": config["inner_lr"], "learned_rates": _learned_rates(algorithm) is not None,
              "steps": list(steps), "rows": rows}
    if run_dir:
        path = os.path.join(run_dir, "eval.json")
        with run_file("cannot write evaluation table", path), open(path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    if plot:
        k = 5 if 5 in batches else shots[0]
        report["plot"] = save_plot(os.path.join(run_dir or ".", "eval_plot.png"), algorithm, pretrained,
                                   batches[k], config, device, log=log)
    return report


def format_table(report) -> str:
    """The report as a fixed-width text table (one row per K and model)."""
    steps = report["steps"]
    rate = "learned per-parameter rates" if report.get("learned_rates") else f"SGD lr {report['inner_lr']}"
    lines = [f"query MSE on 100 evenly spaced points over [-5, 5] after k inner steps ({rate}); "
             f"mean ± 95% CI over {report['num_tasks']} tasks"
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
                rest_mean, rest_ci = row["without_diverged"][s]
                rest = (f"the other {report['num_tasks'] - count}: {rest_mean:.3f} ± {rest_ci:.3f}"
                        if rest_mean is not None else "no task stayed finite")
                notes.append(f"* K={row['shots']} {row['model']} after {s} steps: {count} of {report['num_tasks']} "
                             f"tasks diverged (MSE > {DIVERGED_MSE:g} or not finite); {rest}; "
                             f"median {row['median'][s]:.3f}")
    return "\n".join(lines + notes)


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

    One row per task (the first ``num_tasks`` of ``evaluation``), the meta-learned model
    on the left and the pretrained baseline on the right. Returns the path, or None when
    matplotlib is not installed (it says so through ``log``).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: skipped the plot (pip install matplotlib)")
        return None
    from .tasks.sinusoid import true_curve
    batch, amplitude, phase = evaluation
    grid_x, grid_y = true_curve(amplitude[:num_tasks], phase[:num_tasks])
    panels = [(config["algo"].upper(), algorithm.model,
               OrderedDict((n, p.numpy()) for n, p in algorithm.model.parameter_dict().items()),
               _learned_rates(algorithm) or config["inner_lr"])]
    if pretrained is not None:
        panels.append(("pretrained", pretrained,
                       OrderedDict((n, p.numpy()) for n, p in pretrained.parameter_dict().items()), config["inner_lr"]))
    figure, axes = plt.subplots(num_tasks, len(panels), figsize=(5 * len(panels), 3.2 * num_tasks),
                                squeeze=False)
    for column, (title, model, params, lr) in enumerate(panels):
        predictions = _predictions_after(model, params, batch, num_tasks, (0, 1, 10), lr, device, grid_x)
        for row in range(num_tasks):
            ax = axes[row][column]
            ax.plot(grid_x, grid_y[row], color="red", label="ground truth")
            for (steps, curve), style in zip(predictions.items(), (":", "--", "-")):
                ax.plot(grid_x, curve[row], style, color="tab:green",
                        label=f"after {steps} step{'s' if steps != 1 else ''}")
            ax.plot(batch.support_x[row, :, 0], batch.support_y[row, :, 0], "^", color="purple",
                    label="support points")
            ax.set_xlim(-5, 5)
            ax.set_title(f"{title}, K={batch.support_x.shape[1]}")
            if row == 0 and column == 0:
                ax.legend(fontsize=7)
    figure.tight_layout()
    try:
        with run_file("cannot write plot", path):
            figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    log(f"saved the plot to {path}")
    return path


def _predictions_after(model, params, batch, num_tasks, steps, lr, device, grid_x):
    """Each task's prediction on ``grid_x`` after each step count in ``steps``."""
    like = next(iter(model.parameters()))
    x = np.broadcast_to(grid_x[None, :, None], (num_tasks, len(grid_x), 1)).astype(like.dtype)
    tasks = (batch.support_x[:num_tasks], batch.support_y[:num_tasks], x, x)
    predictions = _fine_tuner(model, lr).predictions(tasks, steps, params=_start(model, params))
    return OrderedDict((step, np.asarray(predictions[step].numpy())[:, :, 0]) for step in sorted(steps))
