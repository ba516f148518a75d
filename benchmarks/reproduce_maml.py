"""Reproduce the MAML paper's sinusoid regression results (Finn et al. 2017, Appendix C).

Trains MAML, first-order MAML and Meta-SGD with the paper's settings (K=10 support
points, 1 inner SGD step with alpha=0.01, 25 tasks per meta-batch, Adam at 1e-3,
70,000 meta-iterations), then evaluates each on 600 fresh tasks per K (K = 5, 10, 20)
with the query MSE on 100 evenly spaced points over [-5, 5] after 0/1/5/10 steps, next
to a same-size network pretrained on all tasks and fine-tuned the same way. Prints the
table, the git commit(s) that trained and evaluated it, and checks MAML against the
paper's 5-shot numbers (Finn et al. 2017, sinusoid regression) and 10-shot targets on
the same protocol.

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
import subprocess
import sys
import time

from tinygrad_meta.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tinygrad_meta.evaluate import format_cell, evaluate_run, format_table
from tinygrad_meta.train import train

# (K, steps) -> upper bound on MAML's mean query MSE. 5-shot: the MAML paper's sinusoid
# regression numbers (Finn et al. 2017, Appendix C, Table 2). 10-shot: the same protocol
# (600 tasks, 100 evenly spaced query points) as measured by a JAX reimplementation
# (0.32 ± 0.03 after 1 step, 0.13 ± 0.02 after 10), with a margin.
TARGETS = {(5, 1): 0.67, (5, 5): 0.38, (5, 10): 0.35, (10, 1): 0.35, (10, 10): 0.15}
TARGET_SOURCES = {5: "Finn et al. 2017 (MAML), sinusoid regression, Appendix C Table 2",
                  10: "the same protocol, as a JAX reimplementation of MAML measures it"}
# what the paper reports for its pretrained baseline at K=5 (tuned fine-tuning step size)
PAPER_BASELINE = {(5, 1): 2.41, (5, 5): 2.23, (5, 10): 2.19}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINED_AT = "trained_at.txt"  # in each run folder: the commits whose code trained it, one a line


def source_commit(folder=REPO) -> str:
    """The short git commit of ``folder``'s checkout, "+changes" when its tracked files differ
    from it, or "unknown (not a git checkout)".

    >>> isinstance(source_commit(), str)
    True
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True,
                                text=True, timeout=30)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if commit.returncode != 0 or not commit.stdout.strip():
        return "unknown (not a git checkout)"
    return commit.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def record_training_commit(run_dir, commit):
    """Append ``commit`` to ``run_dir``'s list of the commits that trained it (once in a row)."""
    commits = trained_at(run_dir)
    if not commits or commits[-1] != commit:
        with open(os.path.join(run_dir, TRAINED_AT), "a", encoding="utf-8") as handle:
            handle.write(commit + "\n")


def trained_at(run_dir):
    """The commits that trained the run in ``run_dir``, oldest first ([] when not recorded)."""
    try:
        with open(os.path.join(run_dir, TRAINED_AT), encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        return []


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

    commit = source_commit()
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
        if resume is None or load_checkpoint(run_dir).iteration < args.iters:
            os.makedirs(run_dir, exist_ok=True)
            record_training_commit(run_dir, commit)
        began = time.perf_counter()
        result = train(settings if resume is None else {"iters": args.iters}, resume=resume,
                       progress=args.progress, log=lambda text: print(f"{algo}: {text}", flush=True))
        print(f"{algo}: {result.iteration} iterations, {time.perf_counter() - began:.0f} s this session",
              flush=True)
        report = evaluate_run(run_dir, num_tasks=args.tasks, log=lambda text: print(f"{algo}: {text}"))
        reports.append(report)
        print(format_table(report), flush=True)

    print(f"\n== Sinusoid regression, {args.tasks} fresh tasks per K, MSE on 100 evenly spaced points ==")
    print(provenance(reports, commit))
    print(combined_table(reports))
    print("\n" + targets_report(check_targets(reports)))
    return 0


def provenance(reports, commit) -> str:
    """Which code produced the table: the commits that trained each run, the one that evaluated it."""
    trained = {}
    for report in reports:
        trained.setdefault(", ".join(trained_at(report["run"])) or "not recorded", []).append(report["algo"])
    parts = [f"{' + '.join(algos)} trained at {commits}" for commits, algos in trained.items()]
    return f"(commit {commit}: evaluated here; " + "; ".join(parts) + ")"


def targets_report(failures) -> str:
    """One paragraph: what the MAML targets are and where they come from, then met or missed."""
    sources = "; ".join(f"{k}-shot: {source}" for k, source in TARGET_SOURCES.items())
    bounds = ", ".join(f"K={k} {s} step{'s' if s != 1 else ''} <= {bound}" for (k, s), bound in TARGETS.items())
    verdict = "all met" if not failures else "MISSED: " + "; ".join(failures)
    return f"MAML targets ({sources}): {bounds}\n  -> {verdict}"


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
