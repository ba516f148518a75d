"""``python -m tinygrad_meta eval DIR``: the few-shot table of a trained run."""
from __future__ import annotations

import sys

from .arguments import whole_number


def _shots(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--shots must be comma-separated integers like 5,10,20, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--shots needs K >= 1, got {text!r}")
    return values


def register(subparsers):
    parser = subparsers.add_parser(
        "eval", help="evaluate a trained run: query MSE after 0/1/5/10 steps vs a pretrained baseline",
        description="Load DIR/checkpoint.npz and print the query MSE (100 evenly spaced points over "
                    "[-5, 5]) after 0, 1, 5, 10 inner SGD steps, mean and 95%% CI over fresh tasks, "
                    "for K = 5, 10, 20, next to a 'pretrained on all tasks' baseline. Saves "
                    "DIR/eval.json and, with matplotlib, DIR/eval_plot.png.")
    parser.add_argument("run_dir", metavar="DIR", help="a run folder written by train")
    parser.add_argument("--tasks", type=whole_number, default=600,
                        help="fresh tasks per K, adapted at once: their memory must fit this machine's (default 600)")
    parser.add_argument("--shots", default="5,10,20", help="K values, comma-separated (default 5,10,20)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the pretrained baseline")
    parser.add_argument("--baseline-iters", type=whole_number, default=None,
                        help="regression steps of the pretrained baseline (default: the run's, 5000)")
    parser.add_argument("--no-plot", action="store_true", help="do not save the plot")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the run's)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import os

    from ..checkpoint import CheckpointError, check_writable
    from ..evaluate import evaluate_run, format_table
    try:
        if not os.path.isdir(args.run_dir):
            problem = "is not a folder" if os.path.exists(args.run_dir) else "does not exist"
            raise FileNotFoundError(f"run folder {args.run_dir} {problem}")
        # the table goes to DIR/eval.json: find out now, not after the evaluation
        check_writable(os.path.join(args.run_dir, "eval.json"), "evaluation table")
        report = evaluate_run(args.run_dir, num_tasks=args.tasks, shots=_shots(args.shots),
                              baseline=not args.no_baseline, plot=not args.no_plot, device=args.device,
                              baseline_iters=args.baseline_iters)
    except (ValueError, TypeError, FileNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    return 0
