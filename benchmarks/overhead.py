"""Per-op cost of the engine on small arrays: the number that decides MAML's speed.

A chain of 100 elementwise ops (tensor multiply, add a number, tanh, scale: the mix a
small network's step is made of) on an 8x8 float32 array, timed three ways in one run:

* numpy     -- the same raw array ops, no graph (the floor);
* forward   -- our ops with graph recording;
* fwd+bwd   -- forward, then ``backward()`` through the whole chain.

Prints microseconds per op (median of repeats) and the ratio to numpy.
Target (issue 2): forward + backward <= 3 us per op.

    python benchmarks/overhead.py [--size 8] [--repeats 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import tinygrad_meta as tgm

OPS_PER_CHAIN = 100


def numpy_chain(x, w):
    y = x
    for _ in range(OPS_PER_CHAIN // 4):
        y = y * w
        y = y + 0.1
        y = np.tanh(y)
        y = y * 1.01
    return y.sum()


def tensor_chain(x, w):
    y = x
    for _ in range(OPS_PER_CHAIN // 4):
        y = y * w
        y = y + 0.1
        y = y.tanh()
        y = y * 1.01
    return y.sum()


def per_op_microseconds(function, repeats, inner=50):
    function()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            function()
        samples.append((time.perf_counter() - start) / inner / OPS_PER_CHAIN * 1e6)
    return statistics.median(samples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8, help="arrays are size x size")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((args.size, args.size)).astype(np.float32)
    w_np = (0.1 * rng.standard_normal((args.size, args.size))).astype(np.float32)
    x = tgm.Tensor(x_np, requires_grad=True)
    w = tgm.Tensor(w_np, requires_grad=True)

    def forward_backward():
        tensor_chain(x, w).backward()

    rows = [
        ("numpy raw ops", per_op_microseconds(lambda: numpy_chain(x_np, w_np), args.repeats)),
        ("forward (recording)", per_op_microseconds(lambda: tensor_chain(x, w), args.repeats)),
        ("forward + backward", per_op_microseconds(forward_backward, args.repeats)),
    ]
    with tgm.no_grad():
        rows.insert(2, ("forward under no_grad", per_op_microseconds(lambda: tensor_chain(x, w), args.repeats)))
    floor = rows[0][1]
    print(f"chain of {OPS_PER_CHAIN} elementwise ops on {args.size}x{args.size} float32")
    print(f"{'what':<24}{'us/op':>8}{'x numpy':>10}")
    for name, value in rows:
        print(f"{name:<24}{value:>8.2f}{value / floor:>10.2f}")
    fwd_bwd = rows[-1][1]
    verdict = "meets" if fwd_bwd <= 3.0 else "MISSES"
    print(f"target forward+backward <= 3.00 us/op: {fwd_bwd:.2f} ({verdict})")


if __name__ == "__main__":
    main()
