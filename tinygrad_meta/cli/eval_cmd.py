"""``python -m tinygrad_meta eval DIR``: the few-shot table of a trained run."""
from __future__ import annotations

import os
import sys
import time

from ..checkpoint import CheckpointError, check_writable
from ..evaluate import evaluate_run, format_table
from .arguments import INTERRUPTED, whole_number


def _shots(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--shots must be comma-separated integers like 5,10,20, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--shots needs K >= 1, got {text!r}")
    return values


def default_report_path(run_dir, now=None):
    """``DIR/eval-YYYYmmdd-HHMMSS.json`` (with -2, -3, ... when that name is taken): a new file,
    so that ``eval`` never replaces the table training wrote (``DIR/eval.json``) or an earlier one."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    path, count = os.path.join(run_dir, f"eval-{stamp}.json"), 1
    while os.path.lexists(path) or os.path.lexists(_plot_path(path)):
        count += 1
        path = os.path.join(run_dir, f"eval-{stamp}-{count}.json")
    return path


def _plot_path(report_path):
    return os.path.splitext(report_path)[0] + ".png"


def register(subparsers):
    parser = subparsers.add_parser(
        "eval", help="evaluate a trained run: query MSE after 0/1/5/10 steps vs a pretrained baseline "
                     "(sinusoid), or accuracy at 5/20-way, 1/5-shot (omniglot, glyphs)",
        description="Load DIR/checkpoint.npz and print the query MSE (100 evenly spaced points over "
                    "[-5, 5]) after 0, 1, 5, 10 inner SGD steps, mean and 95% CI over fresh tasks, "
                    "for K = 5, 10, 20, next to a 'pretrained on all tasks' baseline; for a few-shot "
                    "classification run, the query accuracy (mean and 95% CI over --tasks episodes of the "
                    "meta-test classes) at 5/20-way, 1/5-shot. Saves the table "
                    "to a new file, DIR/eval-<date>-<time>.json (or --out), and, with matplotlib, the "
                    "plot next to it (same name, .png); the eval.json that training wrote is left alone.")
    parser.add_argument("run_dir", metavar="DIR", help="a run folder written by train")
    parser.add_argument("--tasks", type=whole_number, default=600,
                        help="fresh tasks per K, adapted at once: their memory must fit this machine's (default 600)")
    parser.add_argument("--shots", default=None,
                        help="K values, comma-separated (default: the task's, 5,10,20 for sinusoid)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the pretrained baseline")
    parser.add_argument("--baseline-iters", type=whole_number, default=None,
                        help="regression steps of the pretrained baseline (default: the run's, 5000)")
    parser.add_argument("--no-plot", action="store_true", help="do not save the plot")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="where the JSON table goes, the plot next to it as FILE's name with .png "
                             "(default: a new DIR/eval-<date>-<time>.json; --out DIR/eval.json replaces "
                             "training's table)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the run's)")
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        if not os.path.isdir(args.run_dir):
            problem = "is not a folder" if os.path.exists(args.run_dir) else "does not exist"
            raise FileNotFoundError(f"run folder {args.run_dir} {problem}")
        report_path = args.out if args.out is not None else default_report_path(args.run_dir)
        # find out now, not after the evaluation, that the table cannot be written
        check_writable(report_path, "evaluation table")
        report = evaluate_run(args.run_dir, num_tasks=args.tasks, shots=None if args.shots is None else _shots(args.shots),
                              baseline=not args.no_baseline, plot=not args.no_plot, device=args.device,
                              baseline_iters=args.baseline_iters, report_path=report_path,
                              plot_path=_plot_path(report_path))
    except (ValueError, TypeError, FileNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no table was written", file=sys.stderr)
        return INTERRUPTED
    print(format_table(report))
    print(f"\n(table saved in {report['path']})")
    return 0
