"""Per-op cost of the engine on small arrays: the number that decides MAML's speed.

A chain of 100 elementwise ops (tensor multiply, add a number, tanh, scale: the mix a
small network's step is made of) on an 8x8 float32 array, timed three ways in one run:

* numpy     -- the same raw array ops, no graph (the floor);
* forward   -- our ops with graph recording;
* fwd+bwd   -- forward, then ``backward()`` through the whole chain.

* compiled  -- forward + gradients through ``tgm.compile`` (traced once, then replayed
  as flat array calls: no graph, no rule dispatch);

and, when PyTorch is importable, the same chain in PyTorch eager (forward + backward)
as a second baseline. The configurations are timed round-robin, so a machine that
slows down mid-run slows all of them alike; each row is the median over rounds.
Prints microseconds per op and the ratio to numpy.
Targets: forward + backward <= 3 us per op (issue 2; PyTorch CPU: about 4 us);
compiled forward + backward <= 0.3x PyTorch eager (issue 12).

    python benchmarks/overhead.py [--size 8] [--repeats 30] [--no-torch]
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


def torch_chain(torch, x, w):
    y = x
    for _ in range(OPS_PER_CHAIN // 4):
        y = y * w
        y = y + 0.1
        y = torch.tanh(y)
        y = y * 1.01
    return y.sum()


def round_robin(functions, repeats, inner=50):
    """Median microseconds per op of each function, timed in alternation."""
    for function in functions.values():
        function()  # warm-up
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(inner):
                function()
            samples[name].append((time.perf_counter() - start) / inner / OPS_PER_CHAIN * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def no_grad_forward(x, w):
    with tgm.no_grad():
        return tensor_chain(x, w)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8, help="arrays are size x size")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-torch", action="store_true", help="never import torch")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((args.size, args.size)).astype(np.float32)
    w_np = (0.1 * rng.standard_normal((args.size, args.size))).astype(np.float32)
    x = tgm.Tensor(x_np, requires_grad=True)
    w = tgm.Tensor(w_np, requires_grad=True)

    def forward_backward():
        tensor_chain(x, w).backward()

    compiled = tgm.compile(lambda: tgm.grad(tensor_chain(x, w), [x, w]))
    eager_grads = tgm.grad(tensor_chain(x, w), [x, w])
    for ours, eager in zip(compiled(), eager_grads):  # trace, then check the replay is exact
        assert np.array_equal(compiled()[0].numpy(), eager_grads[0].numpy())
        assert np.array_equal(ours.numpy(), eager.numpy())
    functions = {
        "numpy raw ops": lambda: numpy_chain(x_np, w_np),
        "forward (recording)": lambda: tensor_chain(x, w),
        "forward under no_grad": lambda: no_grad_forward(x, w),
        "forward + backward": forward_backward,
        "compiled fwd+bwd": compiled,
    }
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("(PyTorch not importable: its row is skipped)")
        else:
            torch.set_num_threads(1)
            x_t = torch.tensor(x_np, requires_grad=True)
            w_t = torch.tensor(w_np, requires_grad=True)
            functions[f"torch {torch.__version__} fwd+bwd"] = lambda: torch_chain(torch, x_t, w_t).backward()
    times = round_robin(functions, args.repeats)
    rows = list(times.items())
    floor = rows[0][1]
    print(f"chain of {OPS_PER_CHAIN} elementwise ops on {args.size}x{args.size} float32")
    print(f"{'what':<24}{'us/op':>8}{'x numpy':>10}")
    for name, value in rows:
        print(f"{name:<24}{value:>8.2f}{value / floor:>10.2f}")
    fwd_bwd = times["forward + backward"]
    for name, value in rows:
        if name.startswith("torch"):
            print(f"ours / torch, forward + backward: {fwd_bwd / value:.2f}")
            ratio = times["compiled fwd+bwd"] / value
            print(f"ours compiled / torch eager, forward + backward: {ratio:.2f} "
                  f"(target <= 0.30: {'meets' if ratio <= 0.3 else 'MISSES'})")
    verdict = "meets" if fwd_bwd <= 3.0 else "MISSES"
    print(f"target forward+backward <= 3.00 us/op: {fwd_bwd:.2f} ({verdict})")


if __name__ == "__main__":
    main()
