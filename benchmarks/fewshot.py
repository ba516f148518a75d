"""Few-shot Omniglot training speed, ours vs PyTorch eager, each in its own process.

Cases (the issue's):
* ``protonet-5w5s15q``: one ProtoNet training episode, 5-way 5-shot 15 queries per class
  (100 images through the max-pool conv net, loss, backward, Adam step);
* ``maml2-5w1s-T4`` / ``maml2-5w1s-T32``: one second-order MAML meta-iteration, 5-way
  1-shot, 5 queries per class, 1 inner SGD step (lr 0.4), 4 or 32 tasks, strided conv
  net with a linear head, outer Adam. Ours runs the tasks vectorised (``tgm.vmap``),
  PyTorch eager loops over them with ``torch.autograd.grad(create_graph=True)``.

Both start from the same weights (ours, copied) and see the same episodes (drawn from
the procedural glyphs, so no data download is needed; the shapes are Omniglot's).
Every (case, engine) runs in a fresh process, alternating ours / PyTorch for
``--rounds`` rounds so that load on a shared machine hits both alike; each process
times ``--iters`` steps after a warm-up and reports their median; the table prints the
median over rounds and the ratio ours / PyTorch (below 1: ours is faster).

    python benchmarks/fewshot.py                      # all cases, 3 rounds
    python benchmarks/fewshot.py --case protonet-5w5s15q --rounds 5 --torch-threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

CASES = {
    "protonet-5w5s15q": {"algo": "protonet", "ways": 5, "shots": 5, "queries": 15, "tasks": 1},
    "maml2-5w1s-T4": {"algo": "maml", "ways": 5, "shots": 1, "queries": 5, "tasks": 4},
    "maml2-5w1s-T32": {"algo": "maml", "ways": 5, "shots": 1, "queries": 5, "tasks": 32},
}
INNER_LR, META_LR = 0.4, 1e-3


def _episodes(case, count, seed=0):
    from tinygrad_meta.tasks.fewshot import glyph_task
    task = glyph_task(ways=case["ways"], queries=case["queries"], num_classes=300)
    return [tuple(task.meta_batch(seed, i, case["tasks"], case["shots"])) for i in range(count)]


def _model(case):
    import tinygrad_meta as tgm
    variant = "protonet" if case["algo"] == "protonet" else "maml"
    return tgm.nn.omniglot_convnet(None if variant == "protonet" else case["ways"], variant=variant, seed=0)


def _ours_step(case, kernels, compiled=False):
    from tinygrad_meta import meta, optim
    from tinygrad_meta.backends import cpu
    cpu.set_kernels(kernels)
    from tinygrad_meta.functional import cross_entropy
    model = _model(case)
    if case["algo"] == "protonet":
        learner = meta.ProtoNet(model, compile=compiled)
    else:
        learner = meta.MAML(model, inner_lr=INNER_LR, inner_steps=1, loss_fn=cross_entropy,
                            compile=compiled)
    optimizer = optim.Adam(learner.meta_parameters(), lr=META_LR)

    def step(batch):
        loss, grads = learner.meta_step(batch)
        optimizer.step(grads)
        return loss
    return step


def _torch_step(case, threads):
    import torch
    from _torch_fewshot import MAMLTwin, ProtoNetTwin
    if threads:
        torch.set_num_threads(threads)
    model = _model(case)
    twin = ProtoNetTwin(model, lr=META_LR) if case["algo"] == "protonet" else \
        MAMLTwin(model, inner_lr=INNER_LR, inner_steps=1, first_order=False, lr=META_LR)
    return twin.step


def measure(name, engine, iters, warmup, threads, kernels="cython"):
    """Median seconds per step of one (case, engine), in this process."""
    case = CASES[name]
    batches = _episodes(case, warmup + iters)
    step = (_torch_step(case, threads) if engine == "torch"
            else _ours_step(case, kernels, compiled=engine == "compiled"))
    for batch in batches[:warmup]:
        step(batch)
    times = []
    for batch in batches[warmup:]:
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _child(name, engine, args):
    command = [sys.executable, os.path.abspath(__file__), "--child", name, engine, "--iters", str(args.iters),
               "--warmup", str(args.warmup), "--torch-threads", str(args.torch_threads), "--kernels", args.kernels]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{name} on {engine} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="default: every case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--no-torch", action="store_true", help="time ours only")
    parser.add_argument("--kernels", choices=("cython", "numpy", "auto"), default="cython",
                        help="our CPU kernels, pinned as a training run pins them (default cython)")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, engine = args.child
        print(json.dumps({"seconds": measure(name, engine, args.iters, args.warmup, args.torch_threads,
                                             args.kernels)}))
        return 0
    # "ours": eager; "compiled": the same step through tgm.compile, as training runs it
    engines = ["ours", "compiled"] if args.no_torch else ["ours", "compiled", "torch"]
    version = None
    if not args.no_torch:
        try:
            import torch
            version = torch.__version__
        except ImportError:
            print("torch is not installed: timing ours only")
            engines, version = ["ours", "compiled"], None
    from tinygrad_meta.backends import cpu
    if args.kernels == "cython" and not cpu.kernel_info()["compiled"]:
        print("our compiled kernels are not built (python setup.py build_ext --inplace): using numpy")
        args.kernels = "numpy"
    print(f"our CPU kernels: {args.kernels}; "
          f"torch {version or '-'}, threads {args.torch_threads or 'default'}; "
          f"{os.cpu_count()} CPUs (a shared machine: load hits both engines alike, round by round)")
    names = args.case or list(CASES)
    samples = {(n, e): [] for n in names for e in engines}
    for round_index in range(args.rounds):
        for name in names:
            for engine in (engines if round_index % 2 == 0 else engines[::-1]):
                samples[name, engine].append(_child(name, engine, args))
                print(f"round {round_index + 1}: {name} {engine} {1000 * samples[name, engine][-1]:.1f} ms",
                      flush=True)
    print(f"\nmedian ms per step over {args.rounds} rounds of {args.iters} steps (each round's median)")
    print(f"{'case':<20}{'ours':>10}{'compiled':>10}{'torch':>10}{'ours/torch':>12}{'compiled/torch':>16}")
    for name in names:
        ours = 1000 * statistics.median(samples[name, "ours"])
        compiled = 1000 * statistics.median(samples[name, "compiled"]) if samples[name, "compiled"] else float("nan")
        if "torch" in engines:
            theirs = 1000 * statistics.median(samples[name, "torch"])
            print(f"{name:<20}{ours:>10.1f}{compiled:>10.1f}{theirs:>10.1f}{ours / theirs:>11.2f}x"
                  f"{compiled / theirs:>15.2f}x")
        else:
            print(f"{name:<20}{ours:>10.1f}{compiled:>10.1f}{'-':>10}{'-':>12}{'-':>16}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
