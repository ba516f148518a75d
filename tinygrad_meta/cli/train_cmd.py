"""``python -m tinygrad_meta train``: meta-train on a task family, then print the eval table.

With no flags this is the main job: MAML on sinusoids, about two minutes on two cores.
``--resume DIR`` continues an interrupted run exactly where its last checkpoint left off.
"""
from __future__ import annotations

import sys

from ..checkpoint import MAX_CHECKPOINT_BYTES, format_bytes
from ..train import ALGORITHMS, DEFAULTS, MAX_INNER_STEPS
from .arguments import whole_number


def register(subparsers):
    parser = subparsers.add_parser(
        "train", help="meta-train MAML, first-order MAML, Meta-SGD or Reptile",
        description="Meta-train on few-shot tasks, checkpointing atomically as it goes, then "
                    "evaluate (query MSE after 0/1/5/10 steps for K=5/10/20 next to a "
                    "pretrained baseline). With no flags: MAML on sinusoids, the README's main job.",
        epilog="Sizes are checked before training starts: --inner-steps is at most "
               f"{MAX_INNER_STEPS}; the memory one meta-iteration needs (estimated from --hidden, "
               "--meta-batch, --shots and --inner-steps) and the final evaluation needs (from "
               "--eval-tasks) must fit this machine's memory; a checkpoint (parameters and "
               f"optimizer state) may take at most {format_bytes(MAX_CHECKPOINT_BYTES)}. Counts "
               "take 1e4-style numbers too.")
    # None means "not given": on --resume only given flags are checked against the checkpoint
    parser.add_argument("--algo", choices=ALGORITHMS, default=None, help=f"default {DEFAULTS['algo']}")
    parser.add_argument("--task", default=None, help=f"task family (default {DEFAULTS['task']})")
    parser.add_argument("--shots", type=whole_number, default=None, metavar="K",
                        help=f"support (and query) points per task (default {DEFAULTS['shots']})")
    parser.add_argument("--inner-lr", type=float, default=None,
                        help=f"inner-loop SGD learning rate alpha (default {DEFAULTS['inner_lr']})")
    parser.add_argument("--inner-steps", type=whole_number, default=None,
                        help=f"inner-loop steps, at most {MAX_INNER_STEPS} (default 1; 5 for reptile)")
    parser.add_argument("--meta-batch", type=whole_number, default=None,
                        help=f"tasks per meta-iteration (default {DEFAULTS['meta_batch']})")
    parser.add_argument("--meta-lr", type=float, default=None,
                        help="outer learning rate (default 1e-3 for Adam; 0.1, the outer stepsize, for reptile)")
    parser.add_argument("--iters", type=whole_number, default=None,
                        help=f"meta-iterations in total (default {DEFAULTS['iters']})")
    parser.add_argument("--seed", type=whole_number, default=None, help=f"default {DEFAULTS['seed']}")
    parser.add_argument("--hidden", default=None, help="hidden layer widths, comma-separated (default 40,40)")
    parser.add_argument("--init", choices=("default", "maml"), default=None,
                        help="weight init: PyTorch-style uniform, or the MAML paper's truncated normal "
                             f"(default {DEFAULTS['init']})")
    parser.add_argument("--cpu-kernels", choices=("cython", "numpy"), default=None,
                        help="pin matmul/ReLU to our compiled kernels or numpy for the run (default: "
                             "TGM_CPU_KERNELS, with auto pinned to cython when built, so a resume is exact)")
    parser.add_argument("--out", default=None, help="run folder (default runs/<algo>-<task>)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    parser.add_argument("--checkpoint-every", type=whole_number, default=None,
                        help=f"iterations between checkpoints (default {DEFAULTS['checkpoint_every']})")
    parser.add_argument("--eval-every", type=whole_number, default=None,
                        help=f"iterations between validation prints, 0 for none (default {DEFAULTS['eval_every']})")
    parser.add_argument("--eval-tasks", type=whole_number, default=None,
                        help=f"tasks per K in the final table, 0 to skip it (default {DEFAULTS['eval_tasks']})")
    parser.add_argument("--baseline-iters", type=whole_number, default=None,
                        help=f"regression steps of the pretrained baseline (default {DEFAULTS['baseline_iters']})")
    parser.add_argument("--resume", metavar="DIR", default=None, help="continue the run in DIR")
    parser.add_argument("--force", action="store_true", help="overwrite a different run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plot", action="store_true", help="do not save the evaluation plot")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import CheckpointError
    from ..evaluate import evaluate_run, format_table
    from ..train import ConfigConflictError, train

    overrides = {key: getattr(args, key) for key in DEFAULTS if getattr(args, key, None) is not None}
    if args.resume is not None and args.out is not None and args.out != args.resume:
        print(f"error: --out {args.out} and --resume {args.resume} name different folders", file=sys.stderr)
        return 2
    try:
        result = train(overrides, resume=args.resume, force=args.force, progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, CheckpointError,
            ConfigConflictError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    num_tasks = result.config["eval_tasks"]
    if num_tasks:
        report = evaluate_run(result.out, num_tasks=max(num_tasks, 2), algorithm=result.algorithm,
                              config=result.config, plot=not args.no_plot)
        report_iteration = result.iteration
        print()
        print(format_table(dict(report, iteration=report_iteration)))
        print(f"\n(table saved in {result.out}/eval.json; re-run with: python -m tinygrad_meta eval {result.out})")
    return 0
