"""``python -m tinygrad_meta train``: meta-train on a task family, then print the eval table.

With no flags this is the main job: MAML on sinusoids, about two minutes on two cores.
``--resume DIR`` continues an interrupted run exactly where its last checkpoint left off.
"""
from __future__ import annotations

import shlex
import sys

from ..checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError, format_bytes
from ..evaluate import REPORT_NAME, evaluate_run, format_table
from ..run import ALGORITHMS, DEFAULTS, MAX_INNER_STEPS, ConfigConflictError
from ..train import TrainingInterrupted, train
from .arguments import INTERRUPTED, whole_number


def register(subparsers):
    parser = subparsers.add_parser(
        "train", help="meta-train MAML, first-order MAML, ANIL, Meta-SGD, Reptile or ProtoNet",
        description="Meta-train on few-shot tasks, checkpointing atomically as it goes, then "
                    "evaluate (query MSE after 0/1/5/10 steps for K=5/10/20 next to a "
                    "pretrained baseline). With no flags: MAML on sinusoids, the README's main job.",
        epilog="Sizes are checked before training starts: --inner-steps is at most "
               f"{MAX_INNER_STEPS}; the memory one meta-iteration needs (estimated from --hidden, "
               "--meta-batch, --shots and --inner-steps) and the final evaluation needs (from "
               "--eval-tasks) must fit this machine's memory; a checkpoint (parameters and "
               f"optimizer state) may take at most {format_bytes(MAX_CHECKPOINT_BYTES)}. Counts "
               "take 1e4-style numbers too. Ctrl-C stops at the end of the current iteration, saves a "
               "checkpoint and prints the --resume command (exit status 130); a second Ctrl-C stops at once.")
    # None means "not given": on --resume only given flags are checked against the checkpoint
    parser.add_argument("--algo", choices=ALGORITHMS, default=None, help=f"default {DEFAULTS['algo']}")
    parser.add_argument("--task", default=None,
                        help=f"task family: sinusoid, omniglot or glyphs (default {DEFAULTS['task']})")
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
    parser.add_argument("--hidden", default=None,
                        help="hidden layer widths, comma-separated (default 40,40); 'none' for a linear model")
    parser.add_argument("--init", choices=("default", "maml"), default=None,
                        help="weight init: PyTorch-style uniform, or the MAML paper's truncated normal "
                             f"(default {DEFAULTS['init']})")
    parser.add_argument("--cpu-kernels", choices=("cython", "numpy"), default=None,
                        help="pin matmul/ReLU to our compiled kernels or numpy for the run (default: "
                             "TGM_CPU_KERNELS, with auto pinned to cython when built, so a resume is exact)")
    parser.add_argument("--no-compile", dest="compile", action="store_const", const=False,
                        default=None, help="run each meta-step eagerly instead of replaying it "
                        "through tgm.compile (the numbers are the same)")
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
    fewshot = parser.add_argument_group(
        "few-shot image classification (--task omniglot or --task glyphs)",
        "N-way K-shot episodes (--shots is K); --algo protonet|maml|fomaml|anil|metasgd|reptile. Defaults: "
        "5-way 1-shot, 5 queries per class, the 4-block conv net, inner lr 0.4, meta-batch 8 (protonet 1), "
        "1000 iterations, then the accuracy table (5/20-way, 1/5-shot, 95% CIs over --eval-tasks episodes).")
    fewshot.add_argument("--data-dir", default=None, metavar="DIR",
                         help="folder with the official Omniglot zips or their unpacked folders (--task omniglot)")
    fewshot.add_argument("--ways", type=whole_number, default=None, metavar="N", help="classes per episode (default 5)")
    fewshot.add_argument("--queries", type=whole_number, default=None, metavar="Q",
                         help="query examples per class (default 5)")
    fewshot.add_argument("--eval-queries", type=whole_number, default=None, metavar="Q",
                         help="query examples per class of the validation and evaluation episodes "
                              "(default: --queries)")
    fewshot.add_argument("--model", choices=("conv", "mlp"), default=None,
                         help="the 4-block conv net (default) or the MAML paper's fully connected net")
    fewshot.add_argument("--test-steps", type=whole_number, default=None,
                         help="inner steps at evaluation for gradient-based learners (default 3; reptile 10)")
    fewshot.add_argument("--lr-halve-every", type=whole_number, default=None, metavar="ITERS",
                         help="halve the outer learning rate every ITERS iterations (default: protonet 2000, "
                              "others never)")
    parser.add_argument("--resume", metavar="DIR", default=None, help="continue the run in DIR")
    parser.add_argument("--force", action="store_true", help="overwrite a different run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plot", action="store_true", help="do not save the evaluation plot")
    parser.set_defaults(func=run)


def run(args) -> int:
    overrides = {key: getattr(args, key) for key in DEFAULTS if getattr(args, key, None) is not None}
    if args.resume is not None and args.out is not None and args.out != args.resume:
        print(f"error: --out {args.out} and --resume {args.resume} name different folders", file=sys.stderr)
        return 2
    try:
        result = train(overrides, resume=args.resume, force=args.force, progress=not args.no_progress)
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was trained", file=sys.stderr)
        return INTERRUPTED
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, CheckpointError,
            ConfigConflictError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    num_tasks = result.config["eval_tasks"]
    if num_tasks and (result.trained or args.resume is None):
        again = f"python -m tinygrad_meta eval {shlex.quote(result.out)}"
        try:
            report = evaluate_run(result.out, num_tasks=max(num_tasks, 2), algorithm=result.algorithm,
                                  config=result.config, plot=not args.no_plot)
        except KeyboardInterrupt:
            print(f"interrupted during the final evaluation; training is complete (iteration {result.iteration}); "
                  f"the table: {again}", file=sys.stderr)
            return INTERRUPTED
        print()
        print(format_table(dict(report, iteration=result.iteration)))
        print(f"\n(table saved in {result.out}/{REPORT_NAME}; re-run with: {again})")
    return 0
