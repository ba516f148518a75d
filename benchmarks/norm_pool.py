"""Batch norm (training mode) + ReLU and 2x2 max pooling at the ProtoNet Omniglot shapes:
our fused kernels (kernels/cpu/norm_pool.pyx) against what ran before them (the numpy
reference, backends/norm_pool.py, with our ReLU kernels between), and PyTorch's CPU ops
when importable.

Per layer of the 5-way 5-shot 15-query episode ((100, 64, S, S), S = 28, 14, 7, 3), each
array computation of one training step, milliseconds per call:

* bn+relu    -- normalise with the batch statistics, weight and bias, then ReLU (ours:
  ``batch_norm_relu_train``, one node, given the statistics below; before:
  ``batch_norm_train`` then ``relu``);
* stats      -- the per-channel mean and variance that feed the running statistics (ours:
  also the forward's);
* relu+bn bwd -- ReLU's gradient mask and the input, weight and bias gradients;
* pool       -- the 2x2 max pool (7 x 7 cropped to 6 x 6 as floor mode does);
* pool bwd   -- its gradient.

Every configuration is timed round-robin in one run (a machine that slows down mid-run
slows all alike); medians over rounds. PyTorch's column is its F.batch_norm (with
running statistics) + relu + F.max_pool2d forward and backward through autograd on one
thread, i.e. the same work as the five columns together.

    python benchmarks/norm_pool.py [--rounds 7] [--images 100] [--no-torch]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from tinygrad_meta.backends import cpu, norm_pool as reference

SIZES = (28, 14, 7, 3)
PARTS = ("bn+relu", "stats", "relu+bn bwd", "pool", "pool bwd")


def _ours(x, weight, bias, g, pooled_grad):
    kernels = cpu._cpu_norm_pool
    # the statistics taken for the running statistics, reused by the forward (as
    # normalization.batch_norm does)
    statistics = kernels.batch_norm_statistics(x)
    activations = kernels.batch_norm_relu_train(x, weight, bias, 1e-5)
    crop = activations[:, :, :x.shape[2] // 2 * 2, :x.shape[3] // 2 * 2]
    out = kernels.max_pool_tiles(crop, (2, 2))
    return {
        "bn+relu": lambda: kernels.batch_norm_relu_train(x, weight, bias, 1e-5, statistics),
        "stats": lambda: kernels.batch_norm_statistics(x),
        "relu+bn bwd": lambda: kernels.batch_norm_train_backward(x, g, weight, 1e-5, activations),
        "pool": lambda: kernels.max_pool_tiles(crop, (2, 2)),
        "pool bwd": lambda: kernels.max_pool_tiles_backward(pooled_grad, crop, out, (2, 2)),
    }


def _before(x, weight, bias, g, pooled_grad):
    relu, relu_backward = cpu._cpu_relu.relu, cpu._cpu_relu.relu_backward
    activations = relu(reference.batch_norm_train(x, weight, bias, 1e-5))
    crop = activations[:, :, :x.shape[2] // 2 * 2, :x.shape[3] // 2 * 2]
    out = reference.max_pool_tiles(crop, (2, 2))
    return {
        "bn+relu": lambda: relu(reference.batch_norm_train(x, weight, bias, 1e-5)),
        "stats": lambda: (x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))),
        "relu+bn bwd": lambda: reference.batch_norm_train_backward(
            x, relu_backward(g, activations), weight, 1e-5),
        "pool": lambda: reference.max_pool_tiles(crop, (2, 2)),
        "pool bwd": lambda: reference.max_pool_tiles_backward(pooled_grad, crop, out, (2, 2)),
    }


def _torch_call(x, weight, bias):
    import torch
    import torch.nn.functional as TF
    xt = torch.tensor(x, requires_grad=True)
    wt, bt = torch.tensor(weight, requires_grad=True), torch.tensor(bias, requires_grad=True)
    mean, var = torch.zeros(x.shape[1]), torch.ones(x.shape[1])

    def step():
        y = TF.max_pool2d(TF.relu(TF.batch_norm(xt, mean, var, wt, bt, training=True)), 2)
        torch.autograd.grad(y.sum(), (xt, wt, bt))
    return step


def _median_ms(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)
    if cpu._cpu_norm_pool is None:
        raise SystemExit(f"compiled kernels unavailable: {cpu.kernel_info()['error']}")
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(1)
        except ImportError:
            print("torch not importable: its column is skipped")
    rng = np.random.default_rng(0)
    configs = {}
    for size in SIZES:
        shape = (args.images, 64, size, size)
        x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
        weight, bias = (rng.standard_normal(64).astype(np.float32) for _ in range(2))
        g = rng.standard_normal(shape).astype(np.float32)
        pooled = rng.standard_normal((args.images, 64, size // 2, size // 2)).astype(np.float32)
        for name, calls in (("ours", _ours), ("before", _before)):
            for part, call in calls(x, weight, bias, g, pooled).items():
                configs[size, name, part] = call
        if torch is not None:
            configs[size, "torch", "all"] = _torch_call(x, weight, bias)
    samples = {key: [] for key in configs}
    for call in configs.values():
        call()   # warm-up: first-touch allocations, lazy imports
    for _ in range(args.rounds):
        for key, call in configs.items():   # round-robin: one sample of each per round
            samples[key].append(_median_ms(call, 3))
    print(f"milliseconds per call (median of {args.rounds} rounds), images={args.images}, float32")
    header = f"{'S':>3} {'impl':>10} " + " ".join(f"{p:>11}" for p in PARTS) + f" {'sum':>8}"
    print(header + ("  torch all" if torch is not None else ""))
    totals = {"ours": 0.0, "before": 0.0, "torch": 0.0}
    for size in SIZES:
        for name in ("ours", "before"):
            row = [statistics.median(samples[size, name, p]) for p in PARTS]
            totals[name] += sum(row)
            line = f"{size:>3} {name:>10} " + " ".join(f"{v:11.3f}" for v in row) + f" {sum(row):8.3f}"
            if torch is not None and name == "ours":
                torch_ms = statistics.median(samples[size, "torch", "all"])
                totals["torch"] += torch_ms
                line += f"  {torch_ms:9.3f}"
            print(line)
    print(f"episode forward+backward of the four layers: ours {totals['ours']:.2f} ms, before "
          f"{totals['before']:.2f} ms (ours/before {totals['ours'] / totals['before']:.2f}x, "
          f"saving {totals['before'] - totals['ours']:.1f} ms)")
    if torch is not None:
        print(f"  torch batch_norm + relu + max_pool2d forward+backward: {totals['torch']:.2f} ms "
              f"(ours/torch {totals['ours'] / totals['torch']:.2f}x)")


if __name__ == "__main__":
    main()
