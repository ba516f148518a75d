"""Instructions per op and per MAML meta-step, counted by valgrind: a speed comparison that
a busy machine cannot blur.

Wall-clock timings on a shared 2-core machine move by 2-3x with the load; instruction
counts (``valgrind --tool=callgrind``) repeat to within about 1% when threads, hashing and
address layout are pinned (one BLAS/OpenMP thread, PYTHONHASHSEED=0, ``setarch -R``).
Python-overhead-bound code like ours runs in time roughly proportional to them. Each
figure is the difference between a long and a short run, so start-up and imports cancel.

Measured for each source tree given (this checkout by default, plus ``--baseline DIR``,
e.g. a ``git worktree`` of an older commit with its kernels built in place):

* the 100-op elementwise chain of ``overhead.py`` (forward; forward + backward), per op;
* a sinusoid MAML meta-iteration of ``maml.py`` (second and first order, vectorised), per
  iteration, Cython kernels on.

    python benchmarks/instruction_counts.py [--baseline ../baseline] [--quick]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent

CHAIN = """
import sys, numpy as np
import tinygrad_meta as tgm
mode, n = sys.argv[1], int(sys.argv[2])
x = tgm.Tensor(np.random.default_rng(0).standard_normal((8, 8)), requires_grad=True)
w = tgm.Tensor(np.random.default_rng(1).standard_normal((8, 8)))
def chain():
    y = x
    for _ in range(25):
        y = y * w
        y = y + 0.1
        y = y.tanh()
        y = y * 1.01
    return y.sum()
for _ in range(10):
    chain().backward()
for _ in range(n):
    chain() if mode == "forward" else chain().backward()
"""

MAML_STEP = """
import sys, numpy as np
sys.path.insert(0, sys.argv[3])
import maml as bench
first_order, n = sys.argv[1] == "first", int(sys.argv[2])
step = bench.ours_step_fn(first_order, vectorize=True)
batches = bench.make_batches(4, 25, 10)
for i in range(5):
    step(batches[i % 4])
for i in range(n):
    step(batches[i % 4])
"""


def count(tree, script, args, kernels):
    """Instructions callgrind counts for ``script args`` with ``tree`` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", TGM_CPU_KERNELS=kernels)
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "script.py"
        path.write_text(script)
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out",
                   os.path.realpath(sys.executable), str(path), *map(str, args)]
        if shutil.which("setarch"):
            command = ["setarch", "-R"] + command
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    match = re.search(r"refs:\s*([\d,]+)", run.stderr)
    if run.returncode != 0 or not match:
        raise SystemExit(f"callgrind failed for {tree}:\n{run.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def per_unit(tree, script, extra, short, long, units, kernels):
    low = count(tree, script, [*extra[:1], short, *extra[1:]], kernels)
    high = count(tree, script, [*extra[:1], long, *extra[1:]], kernels)
    return (high - low) / ((long - short) * units)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=pathlib.Path, help="another source tree to compare")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt install valgrind)")
    trees = [("this tree", HERE.parent)]
    if args.baseline:
        trees.append(("baseline", args.baseline.resolve()))
    reps = 10 if args.quick else 40
    rows = {}
    for label, tree in trees:
        rows[label] = [
            per_unit(tree, CHAIN, ["forward"], 5, 5 + 4 * reps, 100, "numpy"),
            per_unit(tree, CHAIN, ["backward"], 5, 5 + 2 * reps, 100, "numpy"),
            per_unit(tree, MAML_STEP, ["second", str(tree / "benchmarks")], 3, 3 + reps // 2, 1, "cython"),
            per_unit(tree, MAML_STEP, ["first", str(tree / "benchmarks")], 3, 3 + reps // 2, 1, "cython"),
        ]
    names = ["chain forward, per op", "chain forward + backward, per op",
             "MAML second order vectorised, per iteration", "MAML first order vectorised, per iteration"]
    print(f"{'instructions':45s}" + "".join(f"{label:>16s}" for label, _ in trees)
          + ("       ratio" if args.baseline else ""))
    for i, name in enumerate(names):
        line = f"{name:45s}" + "".join(f"{rows[label][i]:16,.0f}" for label, _ in trees)
        if args.baseline:
            line += f"  {rows['this tree'][i] / rows['baseline'][i]:10.3f}"
        print(line)


if __name__ == "__main__":
    main()
