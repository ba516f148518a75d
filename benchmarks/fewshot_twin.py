"""Correct at scale: ProtoNet and first-order MAML (5-way 1-shot) trained twice, once with our
engine and once with a PyTorch twin, from the same initial weights on the same episodes.

Both see exactly the same training episodes (our sampler, the run's "train" stream) and
are tested on the same meta-test episodes; the script prints each engine's accuracy with
its 95% confidence interval, whether each lies inside the other's interval, the largest
difference of the training losses, and saves the two loss curves side by side.

    python benchmarks/fewshot_twin.py --data-dir ../shared/data/omniglot
    python benchmarks/fewshot_twin.py --model mlp --protonet-iters 300 --fomaml-iters 100   # quicker

Without ``--data-dir`` the episodes come from the procedural glyphs. torch is needed
(installed locally only; never a dependency of the package).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from tinygrad_meta import meta, optim  # noqa: E402
from tinygrad_meta.backends import cpu  # noqa: E402
from tinygrad_meta.evaluate_fewshot import episode_accuracy, mean_ci  # noqa: E402
from tinygrad_meta.tasks.fewshot import glyph_task, omniglot_task  # noqa: E402

SEED, WAYS, SHOTS, QUERIES = 0, 5, 1, 5
INNER_LR, TEST_STEPS = 0.4, 3


def _task(data_dir):
    if data_dir:
        return omniglot_task(data_dir, ways=WAYS, queries=QUERIES)
    return glyph_task(ways=WAYS, queries=QUERIES)


def _train(name, step, task, iters, meta_batch):
    losses, began = [], time.perf_counter()
    for iteration in range(iters):
        losses.append(step(task.meta_batch(SEED, iteration, meta_batch, SHOTS)))
    print(f"  {name}: {iters} iterations in {time.perf_counter() - began:.0f} s, final loss {losses[-1]:.4f}")
    return np.array(losses)


def _inside(a, b):
    return abs(a[0] - b[0]) <= b[1]


def twin_protonet(task, kind, iters, test):
    from _torch_fewshot import ProtoNetTwin
    ours = meta.ProtoNet(task.build_model("protonet", kind, rng=np.random.default_rng(SEED)))
    theirs = ProtoNetTwin(ours.model, kind, lr=1e-3)  # copies the initial weights
    optimizer = optim.Adam(ours.meta_parameters(), lr=1e-3)

    def our_step(batch):
        loss, grads = ours.meta_step(batch)
        optimizer.step(grads)
        return loss
    curves = (_train("ours ProtoNet", our_step, task, iters, 1), _train("torch ProtoNet", theirs.step, task, iters, 1))
    scores = (mean_ci(episode_accuracy(ours, test, 0)), mean_ci(theirs.accuracy(test)))
    return curves, scores


def twin_fomaml(task, kind, iters, meta_batch, test):
    from _torch_fewshot import MAMLTwin
    ours = meta.MAML(task.build_model("fomaml", kind, rng=np.random.default_rng(SEED)), inner_lr=INNER_LR,
                     inner_steps=1, first_order=True, loss_fn=task.loss)
    theirs = MAMLTwin(ours.model, kind, inner_lr=INNER_LR, inner_steps=1, first_order=True, lr=1e-3)
    optimizer = optim.Adam(ours.meta_parameters(), lr=1e-3)

    def our_step(batch):
        loss, grads = ours.meta_step(batch)
        optimizer.step(grads)
        return loss
    curves = (_train("ours FOMAML", our_step, task, iters, meta_batch),
              _train("torch FOMAML", theirs.step, task, iters, meta_batch))
    scores = (mean_ci(episode_accuracy(ours, test, TEST_STEPS)), mean_ci(theirs.accuracy(test, TEST_STEPS)))
    return curves, scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="the Omniglot folder (default: glyphs)")
    parser.add_argument("--model", choices=("conv", "mlp"), default="conv")
    parser.add_argument("--protonet-iters", type=int, default=600)
    parser.add_argument("--fomaml-iters", type=int, default=200)
    parser.add_argument("--meta-batch", type=int, default=4, help="FOMAML tasks per iteration")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes")
    parser.add_argument("--plot", default=os.path.join(HERE, "fewshot_twin.png"))
    args = parser.parse_args(argv)
    import torch
    torch.manual_seed(SEED)
    if cpu.kernel_info()["compiled"]:
        cpu.set_kernels("cython")
    task = _task(args.data_dir)
    test = task.evaluation_tasks(SEED, args.episodes, SHOTS)
    print(f"{task.name}, {args.model} net, 5-way 1-shot, {QUERIES} queries per class; torch {torch.__version__}")
    results = {"ProtoNet": twin_protonet(task, args.model, args.protonet_iters, test),
               "FOMAML": twin_fomaml(task, args.model, args.fomaml_iters, args.meta_batch, test)}
    print(f"\ntest accuracy over {args.episodes} meta-test episodes (mean ± 95% CI)")
    print(f"{'learner':<10}{'iterations':>11}{'ours':>18}{'torch':>18}  each inside the other's CI   "
          "|loss ours - torch| first, max")
    for name, ((ours_curve, torch_curve), (ours, theirs)) in results.items():
        both = _inside(ours, theirs) and _inside(theirs, ours)
        print(f"{name:<10}{len(ours_curve):>11}{100 * ours[0]:>11.2f} ± {100 * ours[1]:.2f}"
              f"{100 * theirs[0]:>11.2f} ± {100 * theirs[1]:.2f}  {'yes' if both else 'NO':<28}"
              f"{abs(ours_curve[0] - torch_curve[0]):.1e}, {np.abs(ours_curve - torch_curve).max():.1e}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return 0
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (name, ((ours_curve, torch_curve), _)) in zip(axes, results.items()):
        window = max(1, len(ours_curve) // 25)
        smooth = lambda c: np.convolve(c, np.ones(window) / window, mode="valid")  # noqa: E731
        ax.plot(smooth(ours_curve), label="tinygrad_meta")
        ax.plot(smooth(torch_curve), "--", label="PyTorch twin")
        ax.set_title(f"{name} 5-way 1-shot ({task.name}, {args.model} net)")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"training loss (moving average of {window})")
        ax.legend()
    figure.tight_layout()
    figure.savefig(args.plot, dpi=110)
    print(f"plot saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
