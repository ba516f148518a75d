"""Gradient and Hessian-vector product of an MLP: ours eager, ours compiled, JAX jit, torch.

Setting: MLP 64-256-256-10 with tanh, softmax cross-entropy over a batch of 64 (float32).
``gradient`` is dL/dθ; ``hvp`` is H v by reverse over reverse (differentiate ∇L · v),
what ``tgm.hvp`` and ``torch.autograd.grad(create_graph=True)`` do, and JAX's
``grad(lambda p: vdot(grad(L)(p), v))`` under ``jit``. All configurations are timed
round-robin (JAX in its own process, benchmarks/_jax_worker.py, alternated round by
round); each number is the median over every timed call. Before timing, ours are checked
against each other (compiled == eager bit for bit) and against JAX and torch (float32
rounding).

    python benchmarks/hvp.py [--calls 50] [--rounds 5] [--no-torch] [--no-jax]
    TGM_JAX_PATH=/tmp/jaxenv python benchmarks/hvp.py      # JAX installed in a side folder
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import tinygrad_meta as tgm  # noqa: E402
from tinygrad_meta.functional import cross_entropy  # noqa: E402

SIZES = [64, 256, 256, 10]
BATCH = 64


def problem(seed=0):
    rng = np.random.default_rng(seed)
    model = tgm.nn.MLP(SIZES, activation="tanh", rng=rng)
    params = list(model.parameters())
    vector = [tgm.Tensor(rng.standard_normal(p.shape).astype(np.float32)) for p in params]
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    labels = rng.integers(0, SIZES[-1], BATCH)
    return model, params, vector, x, labels


def ours(model, params, vector, x, labels):
    xt = tgm.Tensor(x)

    def loss_of(*ps):
        return cross_entropy(tgm.func.functional_call(model, dict(zip(model.parameter_dict(), ps)), xt),
                             labels)

    def gradient():
        return tgm.grad(loss_of(*params), params)

    def hvp():
        return tgm.hvp(loss_of, params, vector)
    return gradient, hvp


def torch_fns(params, vector, x, labels):
    import torch
    tp = [torch.tensor(p.numpy().copy(), requires_grad=True) for p in params]
    tv = [torch.tensor(v.numpy().copy()) for v in vector]
    tx, tl = torch.tensor(x), torch.tensor(labels)

    def loss():
        h = tx
        for i in range(0, len(tp), 2):
            h = torch.nn.functional.linear(h, tp[i], tp[i + 1])
            if i < len(tp) - 2:
                h = torch.tanh(h)
        return torch.nn.functional.cross_entropy(h, tl)

    def gradient():
        return torch.autograd.grad(loss(), tp)

    def hvp():
        g = torch.autograd.grad(loss(), tp, create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(g, tv))
        return torch.autograd.grad(dot, tp)
    return gradient, hvp


def time_round_robin(functions, calls, rounds):
    samples = {name: [] for name in functions}
    for function in functions.values():
        if not isinstance(function, tuple):
            for _ in range(3):
                function()
    for _ in range(rounds):
        for name, function in functions.items():
            if isinstance(function, tuple):
                worker, remote = function
                samples[name] += worker.times(remote, calls)
                continue
            for _ in range(calls):
                start = time.perf_counter()
                function()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-jax", action="store_true")
    args = parser.parse_args(argv)

    model, params, vector, x, labels = problem()
    gradient, hvp = ours(model, params, vector, x, labels)
    compiled_gradient, compiled_hvp = tgm.compile(gradient), tgm.compile(hvp)
    eager_g, eager_h = gradient(), hvp()
    for compiled, eager in ((compiled_gradient, eager_g), (compiled_hvp, eager_h)):
        for _ in range(2):  # the trace, then a replay
            assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(compiled(), eager))
    functions = {"ours eager gradient": gradient, "ours eager hvp": hvp,
                 "ours compiled gradient": compiled_gradient, "ours compiled hvp": compiled_hvp}
    worker = None
    if not args.no_jax:
        from _jax import JaxWorker
        arrays = {"hvp_layers": len(SIZES) - 1, "hvp_x": x, "hvp_labels": labels}
        for i in range(len(SIZES) - 1):
            arrays[f"hvp_w{i}"], arrays[f"hvp_b{i}"] = params[2 * i].numpy(), params[2 * i + 1].numpy()
            arrays[f"hvp_vw{i}"], arrays[f"hvp_vb{i}"] = vector[2 * i].numpy(), vector[2 * i + 1].numpy()
        worker = JaxWorker(arrays)
        if worker.available:
            # JAX flattens (w, b) pairs in order: the same order as ours
            for i, (a, b) in enumerate(zip(eager_h, [worker.outputs[f"hvp{i}"] for i in range(len(eager_h))])):
                np.testing.assert_allclose(a.numpy(), b, rtol=2e-3, atol=2e-5,
                                           err_msg=f"hvp of parameter {i}: ours vs JAX")
            functions["jax jit gradient"] = (worker, "grad")
            functions["jax jit hvp"] = (worker, "hvp")
        else:
            print(f"JAX not available ({worker.why}): its rows are skipped; set TGM_JAX_PATH")
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: its rows are skipped")
        else:
            torch.set_num_threads(1)
            torch_gradient, torch_hvp = torch_fns(params, vector, x, labels)
            for a, b in zip(eager_h, torch_hvp()):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3, atol=2e-5)
            functions["torch eager gradient"] = torch_gradient
            functions["torch eager hvp"] = torch_hvp
    times = time_round_robin(functions, args.calls, args.rounds)
    print(f"MLP {SIZES} tanh, cross-entropy, batch {BATCH}, float32; median of "
          f"{args.calls * args.rounds} calls, round-robin")
    if worker is not None and worker.available:
        print(f"JAX {worker.version}, in its own process")
        worker.close()
    print(f"{'configuration':28s}{'ms':>9s}")
    for name, seconds in times.items():
        print(f"{name:28s}{seconds * 1e3:9.3f}")
    print(f"ours eager: hvp / gradient = {times['ours eager hvp'] / times['ours eager gradient']:.2f}")
    print(f"ours compiled / ours eager: gradient "
          f"{times['ours compiled gradient'] / times['ours eager gradient']:.2f}, hvp "
          f"{times['ours compiled hvp'] / times['ours eager hvp']:.2f}")
    for theirs in ("jax jit", "torch eager"):
        if f"{theirs} hvp" in times:
            print(f"{theirs}: hvp / gradient = {times[f'{theirs} hvp'] / times[f'{theirs} gradient']:.2f}")
            for kind in ("gradient", "hvp"):
                for mode in ("eager", "compiled"):
                    ratio = times[f"ours {mode} {kind}"] / times[f"{theirs} {kind}"]
                    target = ""
                    if theirs == "jax jit" and kind == "hvp" and mode == "compiled":
                        target = f" (target <= 1.00: {'meets' if ratio <= 1.0 else 'MISSES'})"
                    print(f"ours {mode} {kind} / {theirs} = {ratio:.2f}{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
