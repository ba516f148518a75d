"""The design choices behind the convolution and batch-norm ops (issue 11), measured.

Forward + backward (gradients of a scalar of the output w.r.t. every input) at the
Omniglot shapes, each configuration timed round-robin in one run (a machine that slows
down mid-run slows all alike), medians over rounds, milliseconds per call:

* conv2d       -- ours (the ``conv2d`` table entry: one (O, K) @ (K, N*L) product on
  im2col columns, its gradients two more table entries) against the composition it
  replaced (``im2col`` + broadcast matmul + reshape, differentiable with no rule of its
  own: numpy runs the images one by one, the weight gradient as N products summed), and
  PyTorch when importable;
* batch_norm   -- ours (training mode: the ``batch_norm_train`` entry, fused forward,
  rule in table ops) against the composition of means, a square root and products, and
  PyTorch;
* network      -- the 4-block Omniglot network (``nn.omniglot_convnet``), ProtoNet's
  max-pool variant and MAML's strided one, against a PyTorch twin.

Prints the ratios ours / composition and ours / PyTorch (below 1: ours is faster).

    python benchmarks/conv_ops.py [--images 100] [--rounds 5] [--no-torch]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import tinygrad_meta as tgm
from tinygrad_meta import functional as F, ops
from tinygrad_meta.tensor import record


def conv_composition(x, w, bias, stride, padding):
    """conv2d as im2col + broadcast matmul (the first design; any order, no rule)."""
    n = x.shape[0]
    o, c, kh, kw = w.shape
    cols = record(ops.im2col, x, (kh, kw), (stride, stride), (padding, padding), (1, 1), 0.0, x._be)
    oh = (x.shape[2] + 2 * padding - kh) // stride + 1
    ow = (x.shape[3] + 2 * padding - kw) // stride + 1
    out = (w.reshape(o, c * kh * kw) @ cols).reshape(n, o, oh, ow)
    return out + bias.reshape(o, 1, 1)


def batch_norm_composition(x, weight, bias, eps=1e-5):
    axes = (0, 2, 3)
    centered = x - x.mean(axis=axes, keepdims=True)
    var = (centered * centered).mean(axis=axes, keepdims=True)
    return centered / (var + eps).sqrt() * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


def ours_step(function, arrays):
    leaves = [tgm.Tensor(a, requires_grad=True) for a in arrays]

    def step():
        y = function(*leaves)
        tgm.grad((y * y).mean(), leaves)
    return step


def torch_step(torch, function, arrays):
    leaves = [torch.tensor(a, requires_grad=True) for a in arrays]

    def step():
        y = function(*leaves)
        torch.autograd.grad((y * y).mean(), leaves)
    return step


def round_robin(steps, rounds):
    """Median milliseconds per call of each step, timed in turn, ``rounds`` times."""
    for step in steps.values():
        step()
    samples = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def report(title, times):
    ours = times["ours"]
    parts = [f"{name} {ms:8.1f} ms" for name, ms in times.items()]
    ratios = [f"ours/{name} {ours / ms:5.2f}" for name, ms in times.items() if name != "ours"]
    print(f"{title:<34} " + "  ".join(parts) + "  |  " + "  ".join(ratios))


def torch_network(torch, variant, ways=5):
    def block(channels, stride, pool):
        layers = [torch.nn.Conv2d(channels, 64, 3, stride=stride, padding=1),
                  torch.nn.BatchNorm2d(64, track_running_stats=variant == "protonet"), torch.nn.ReLU()]
        return layers + ([torch.nn.MaxPool2d(2)] if pool else [])
    if variant == "protonet":
        return torch.nn.Sequential(*block(1, 1, True), *block(64, 1, True), *block(64, 1, True),
                                   *block(64, 1, True), torch.nn.Flatten())
    body = torch.nn.Sequential(*block(1, 2, False), *block(64, 2, False), *block(64, 2, False),
                               *block(64, 2, False))
    head = torch.nn.Linear(64, ways)
    return lambda x: head(body(x).mean(dim=(2, 3))), list(body.parameters()) + list(head.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="N (a 5-way 5-shot 15-query episode: 100)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("(PyTorch not importable: its columns are left out)")
    if torch is not None:
        print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
    n, rng = args.images, np.random.default_rng(0)
    print(f"float32, N = {n} images, median of {args.rounds} rounds, ms per forward + backward")

    layers = [((n, 1, 28, 28), 1, 1), ((n, 64, 14, 14), 1, 1), ((n, 64, 7, 7), 1, 1),
              ((n, 64, 3, 3), 1, 1), ((n, 64, 14, 14), 2, 1), ((n, 64, 4, 4), 2, 1)]
    for shape, stride, padding in layers:
        arrays = [rng.standard_normal(shape).astype(np.float32),
                  rng.standard_normal((64, shape[1], 3, 3)).astype(np.float32) * 0.1,
                  np.zeros(64, np.float32)]
        steps = {
            "ours": ours_step(lambda x, w, b: F.conv2d(x, w, b, stride, padding), arrays),
            "composition": ours_step(lambda x, w, b: conv_composition(x, w, b, stride, padding), arrays),
        }
        if torch is not None:
            steps["torch"] = torch_step(torch, lambda x, w, b: torch.nn.functional.conv2d(
                x, w, b, stride=stride, padding=padding), arrays)
        report(f"conv2d {shape} s{stride} p{padding}", round_robin(steps, args.rounds))

    for shape in ((n, 64, 28, 28), (n, 64, 7, 7)):
        arrays = [rng.standard_normal(shape).astype(np.float32), np.ones(64, np.float32),
                  np.zeros(64, np.float32)]
        steps = {
            "ours": ours_step(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), arrays),
            "composition": ours_step(batch_norm_composition, arrays),
        }
        if torch is not None:
            steps["torch"] = torch_step(torch, lambda x, w, b: torch.nn.functional.batch_norm(
                x, None, None, w, b, training=True), arrays)
        report(f"batch_norm {shape}", round_robin(steps, args.rounds))

    images = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    for variant in ("protonet", "maml"):
        net = tgm.nn.omniglot_convnet(5 if variant == "maml" else None, variant=variant, seed=0)
        params = list(net.parameters())

        def ours():
            y = net(tgm.Tensor(images))
            tgm.grad((y * y).mean(), params)
        steps = {"ours": ours}
        if torch is not None:
            twin = torch_network(torch, variant)
            forward, twin_params = (twin, list(twin.parameters())) if variant == "protonet" else twin

            def theirs():
                y = forward(torch.tensor(images))
                torch.autograd.grad((y * y).mean(), twin_params)
            steps["torch"] = theirs
        report(f"network {variant}", round_robin(steps, args.rounds))


if __name__ == "__main__":
    main()
