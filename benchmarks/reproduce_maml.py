"""Reproduce the MAML paper's sinusoid regression results (Finn et al. 2017, Appendix C).

Trains MAML, first-order MAML and Meta-SGD with the paper's settings (K=10 support
points, 1 inner SGD step with alpha=0.01, 25 tasks per meta-batch, Adam at 1e-3,
70,000 meta-iterations), then evaluates each on 600 fresh tasks per K (K = 5, 10, 20)
with the query MSE on 100 evenly spaced points over [-5, 5] after 0/1/5/10 steps, next
to a same-size network pretrained on all tasks and fine-tuned the same way. Prints the
table and checks it against the targets of issue 4.

Runs live in ``runs/reproduce/<algo>`` and resume from their checkpoints, so an
interrupted reproduction picks up where it stopped:

    python benchmarks/reproduce_maml.py                      # the full reproduction
    python benchmarks/reproduce_maml.py --iters 2000 --tasks 100 --algos maml   # a quick look
    python benchmarks/reproduce_maml.py --algos maml --train-shots 5 --out runs/reproduce-k5
                                        # meta-trained at K=5, as the paper's code does per K
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from tinygrad_meta.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tinygrad_meta.evaluate import format_cell, evaluate_run, format_table
from tinygrad_meta.train import train

# (K, steps) -> upper bound on MAML's mean query MSE; the MAML paper's Table 2 for K=5,
# our JAX reference's protocol for K=10 (issue 4)
TARGETS = {(5, 1): 0.67, (5, 5): 0.38, (5, 10): 0.35, (10, 1): 0.35, (10, 10): 0.15}
# what the paper reports for its pretrained baseline at K=5 (tuned fine-tuning step size)
PAPER_BASELINE = {(5, 1): 2.41, (5, 5): 2.23, (5, 10): 2.19}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=70000, help="meta-iterations per algorithm")
    parser.add_argument("--algos", default="maml,fomaml,metasgd", help="comma-separated")
    parser.add_argument("--tasks", type=int, default=600, help="evaluation tasks per K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-shots", type=int, default=10,
                        help="K during meta-training (the paper's code trains one model per K: "
                             "--train-shots 5 for its 5-shot numbers)")
    parser.add_argument("--init", default="default", choices=("default", "maml"))
    parser.add_argument("--out", default=os.path.join("runs", "reproduce"))
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)

    reports = []
    for algo in [a.strip() for a in args.algos.split(",") if a.strip()]:
        run_dir = os.path.join(args.out, algo)
        settings = {"algo": algo, "task": "sinusoid", "shots": args.train_shots, "inner_lr": 0.01, "inner_steps": 1,
                    "meta_batch": 25, "meta_lr": 1e-3, "iters": args.iters, "seed": args.seed,
                    "init": args.init, "out": run_dir, "eval_every": 5000, "checkpoint_every": 2000,
                    "eval_tasks": 0}
        resume = None
        if os.path.exists(os.path.join(run_dir, CHECKPOINT_NAME)):
            resume = run_dir
            if load_checkpoint(run_dir).iteration >= args.iters:
                print(f"{algo}: {run_dir} already trained to {args.iters} iterations", flush=True)
        began = time.perf_counter()
        result = train(settings if resume is None else {"iters": args.iters}, resume=resume,
                       progress=args.progress, log=lambda text: print(f"{algo}: {text}", flush=True))
        print(f"{algo}: {result.iteration} iterations, {time.perf_counter() - began:.0f} s this session",
              flush=True)
        report = evaluate_run(run_dir, num_tasks=args.tasks, log=lambda text: print(f"{algo}: {text}"))
        reports.append(report)
        print(format_table(report), flush=True)

    print(f"\n== Sinusoid regression, {args.tasks} fresh tasks per K, MSE on 100 evenly spaced points ==")
    print(combined_table(reports))
    failures = check_targets(reports)
    print("\ntargets (issue 4, MAML): " + ("all met" if not failures else "MISSED: " + "; ".join(failures)))
    return 0


def combined_table(reports) -> str:
    """One markdown table: every algorithm and the pretrained baseline, K = 5, 10, 20."""
    if not reports:
        return "(nothing evaluated)"
    steps = reports[0]["steps"]
    header = "| K | model | iterations | " + " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in steps) + " |"
    lines = [header, "|" + "---|" * (3 + len(steps))]
    rows = []
    for report in reports:
        for row in report["rows"]:
            if row["model"] == "pretrained" and report is not reports[0]:
                continue  # one baseline is enough: every run's baseline uses the same seed and settings
            rows.append((row["shots"], 0 if row["model"] != "pretrained" else 1, report, row))
    for shots, _, report, row in sorted(rows, key=lambda item: (item[0], item[1])):
        iterations = report["iteration"] if row["model"] != "pretrained" else "-"
        cells = " | ".join(format_cell(*row["steps"][s], row["diverged"][s]).strip() for s in steps)
        lines.append(f"| {shots} | {row['model']} | {iterations} | {cells} |")
    notes = [line for report in reports for line in format_table(report).splitlines() if line.startswith("* ")]
    return "\n".join(lines + notes)


def check_targets(reports):
    """The targets MAML missed, as readable strings (empty when all are met)."""
    failures = []
    for report in reports:
        if report["algo"] != "maml":
            continue
        for row in report["rows"]:
            for (shots, steps), bound in TARGETS.items():
                if row["model"] == "maml" and row["shots"] == shots and steps in row["steps"]:
                    mean = row["steps"][steps][0]
                    if not mean <= bound:  # NaN (a diverged task) fails too
                        failures.append(f"K={shots} after {steps} step(s): {mean:.3f} > {bound}")
    return failures


if __name__ == "__main__":
    sys.exit(main())
