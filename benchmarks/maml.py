"""MAML meta-iteration speed (and memory) on the sinusoid setting, side by side with PyTorch.

Setting (MAML paper, section 5.1): MLP [1, 40, 40, 1] with ReLU, K = 10 support and 10
query points per task, meta-batch 25, 1 inner SGD step with lr 0.01, outer Adam 1e-3.
One meta-iteration = meta-loss, meta-gradient and the outer Adam step.

We time second and first order, vectorised (all tasks in one batched computation) and
looped (a Python loop over tasks). When torch is importable (and ``--no-torch`` is not
given) the same step runs in PyTorch eager (per-task loop with torch.autograd.grad) and
with torch.func (grad inside vmap), and the ratios ours / theirs are printed. Ours also
runs compiled (``MAML(..., compile=True)``: tgm.compile traces the step once and replays
flat array calls). When JAX can be started (installed, or in the folder ``TGM_JAX_PATH``
names; ``--no-jax`` skips it) the same iteration runs as ``jit(value_and_grad(mean(vmap(
task_loss))))`` with the Adam update inside the jit, in its own process
(benchmarks/_jax_worker.py), alternated with ours round by round. The
configurations are timed round-robin, several rounds, so that load on a shared machine
hits them alike; each number is the median over all timed iterations after warm-up.

    python benchmarks/maml.py                 # speed table, with torch when installed
    python benchmarks/maml.py --no-torch      # ours only; this process never imports torch
    python benchmarks/maml.py --memory        # peak memory vs inner steps; RSS over iterations
    TGM_JAX_PATH=/tmp/jaxenv python benchmarks/maml.py --no-torch   # ours vs JAX jit
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

import tinygrad_meta as tgm  # noqa: E402
from tinygrad_meta.meta import MAML  # noqa: E402
from tinygrad_meta.optim import Adam  # noqa: E402
from tinygrad_meta.tasks.sinusoid import sample_batch  # noqa: E402

SIZES = [1, 40, 40, 1]
INNER_LR = 0.01
META_LR = 1e-3


def make_batches(count, tasks, shots, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(np.asarray(a, dtype=np.float32) for a in sample_batch(tasks, shots, rng))
            for _ in range(count)]


# ----------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------

def ours_step_fn(first_order, vectorize, inner_steps=1, seed=0, compiled=False):
    model = tgm.nn.MLP(SIZES, rng=np.random.default_rng(seed))
    maml = MAML(model, inner_lr=INNER_LR, inner_steps=inner_steps, first_order=first_order,
                vectorize=vectorize, compile=compiled)
    optimizer = Adam(maml.meta_parameters(), lr=META_LR)

    def step(batch):
        loss, grads = maml.meta_step(batch)
        optimizer.step(grads)
        return loss
    return step


# ----------------------------------------------------------------------------------
# PyTorch, the same step
# ----------------------------------------------------------------------------------

def torch_step_fns(first_order, seed=0):
    """(eager per-task loop step, torch.func vmap step), each with its own copy of the
    same initial weights and its own torch.optim.Adam.

    The network is a plain function of a list of tensors (F.linear + relu), the leanest
    way to write it in PyTorch: torch.func.functional_call costs far more per call.
    """
    import torch
    from torch.func import grad, vmap

    functional = torch.nn.functional
    reference = tgm.nn.MLP(SIZES, rng=np.random.default_rng(seed)).parameter_dict()
    layers = len(SIZES) - 1

    def initial():
        params = []
        for i in range(layers):  # both weights are (out, in): PyTorch's layout
            params.append(torch.tensor(reference[f"layers.{i}.weight"].numpy().copy(),
                                       requires_grad=True))
            params.append(torch.tensor(reference[f"layers.{i}.bias"].numpy().copy(),
                                       requires_grad=True))
        return params

    def forward(params, x):
        for i in range(layers):
            x = functional.linear(x, params[2 * i], params[2 * i + 1])
            if i < layers - 1:
                x = torch.relu(x)
        return x

    def loss_of(params, x, y):
        return functional.mse_loss(forward(params, x), y)

    eager_params = initial()
    eager_opt = torch.optim.Adam(eager_params, lr=META_LR)

    def eager_step(batch):
        sx, sy, qx, qy = (torch.from_numpy(a) for a in batch)
        eager_opt.zero_grad()
        total = 0.0
        for t in range(sx.shape[0]):
            inner = loss_of(eager_params, sx[t], sy[t])
            grads = torch.autograd.grad(inner, eager_params, create_graph=not first_order)
            fast = [p - INNER_LR * g for p, g in zip(eager_params, grads)]
            total = total + loss_of(fast, qx[t], qy[t])
        loss = total / sx.shape[0]
        loss.backward()
        eager_opt.step()
        return float(loss.detach())

    vmap_params = initial()
    vmap_opt = torch.optim.Adam(vmap_params, lr=META_LR)

    def task_loss(params, sx, sy, qx, qy):
        g = grad(loss_of)(params, sx, sy)
        if first_order:
            g = [v.detach() for v in g]
        fast = [p - INNER_LR * gi for p, gi in zip(params, g)]
        return loss_of(fast, qx, qy)

    batched = vmap(task_loss, in_dims=(None, 0, 0, 0, 0))

    def vmap_step(batch):
        sx, sy, qx, qy = (torch.from_numpy(a) for a in batch)
        vmap_opt.zero_grad()
        loss = batched(vmap_params, sx, sy, qx, qy).mean()
        loss.backward()
        vmap_opt.step()
        return float(loss.detach())

    return eager_step, vmap_step


# ----------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------

def time_round_robin(steps, batches, warmup, iters, rounds):
    """Median seconds per call for each named step; configurations alternate per round."""
    samples = {name: [] for name in steps}
    for name, step in steps.items():
        if isinstance(step, tuple):  # (JaxWorker, its step name): warmed up when it started
            continue
        for i in range(warmup):
            step(batches[i % len(batches)])
    per_round = max(1, iters // rounds)
    for r in range(rounds):
        for name, step in steps.items():
            if isinstance(step, tuple):
                worker, remote = step
                samples[name] += worker.times(remote, per_round)
                continue
            for i in range(per_round):
                batch = batches[(r * per_round + i) % len(batches)]
                start = time.perf_counter()
                step(batch)
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def speed(args):
    batches = make_batches(16, args.meta_batch, args.shots)
    steps = {}
    for order in ("second", "first"):
        for mode in ("vectorised", "looped"):
            steps[f"ours {order}-order {mode}"] = ours_step_fn(order == "first", mode == "vectorised")
        steps[f"ours {order}-order compiled"] = ours_step_fn(order == "first", True, compiled=True)
    worker = None
    if not args.no_jax:
        from _jax import JaxWorker
        weights = tgm.nn.MLP(SIZES, rng=np.random.default_rng(0)).parameter_dict()
        arrays = {"inner_lr": INNER_LR, "meta_lr": META_LR, "maml_layers": len(SIZES) - 1,
                  "batches": len(batches)}
        for i in range(len(SIZES) - 1):
            arrays[f"maml_w{i}"] = weights[f"layers.{i}.weight"].numpy()
            arrays[f"maml_b{i}"] = weights[f"layers.{i}.bias"].numpy()
        for i, batch in enumerate(batches):
            for k, part in enumerate(batch):
                arrays[f"batch{i}_{k}"] = part
        worker = JaxWorker(arrays)
        if worker.available:
            steps["jax second-order jit(vmap)"] = (worker, "maml2")
            steps["jax first-order jit(vmap)"] = (worker, "maml1")
        else:
            print(f"JAX not available ({worker.why}): its rows are skipped; set TGM_JAX_PATH")
    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch
        except ImportError:
            with_torch = False
            print("torch is not installed: timing ours only")
    if with_torch:
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        for order in ("second", "first"):
            eager, vmapped = torch_step_fns(order == "first")
            steps[f"torch {order}-order eager loop"] = eager
            steps[f"torch {order}-order func.vmap"] = vmapped
    if with_torch:
        # the same computation: the first meta-loss agrees (same weights, same batch)
        first_ours = ours_step_fn(False, True)(batches[0])
        eager, vmapped = torch_step_fns(False)
        first_eager, first_vmap = eager(batches[0]), vmapped(batches[0])
        print(f"check: first second-order meta-loss ours {first_ours:.6f}, torch eager "
              f"{first_eager:.6f}, torch vmap {first_vmap:.6f}")
    results = time_round_robin(steps, batches, args.warmup, args.iters, args.rounds)
    print(f"MAML sinusoid: MLP {SIZES}, ReLU, K={args.shots}, meta-batch {args.meta_batch}, "
          f"1 inner step, outer Adam; median of {args.iters} iterations after {args.warmup} warm-up")
    print(f"torch imported in this process: {'torch' in sys.modules}"
          + (f" (torch {sys.modules['torch'].__version__}, {sys.modules['torch'].get_num_threads()} "
             "threads)" if 'torch' in sys.modules else ""))
    print(f"{'configuration':42s} {'ms/iter':>9s}")
    for name, seconds in results.items():
        print(f"{name:42s} {seconds * 1e3:9.3f}")
    if worker is not None and worker.available:
        print(f"JAX {worker.version}, in its own process")
        for order in ("second", "first"):
            ratio = results[f"ours {order}-order compiled"] / results[f"jax {order}-order jit(vmap)"]
            eager = results[f"ours {order}-order vectorised"] / results[f"jax {order}-order jit(vmap)"]
            print(f"{order}-order: ours compiled / JAX jit = {ratio:.3f} (target <= 0.70: "
                  f"{'meets' if ratio <= 0.7 else 'MISSES'}); ours eager / JAX jit = {eager:.3f}")
        worker.close()
    for order in ("second", "first"):
        print(f"{order}-order: ours compiled / ours eager (vectorised) = "
              f"{results[f'ours {order}-order compiled'] / results[f'ours {order}-order vectorised']:.3f}")
    if with_torch:
        print()
        for order in ("second", "first"):
            vec = results[f"ours {order}-order vectorised"]
            loop = results[f"ours {order}-order looped"]
            vmapped = results[f"torch {order}-order func.vmap"]
            eager = results[f"torch {order}-order eager loop"]
            target_vec, target_loop = ("  (target <= 0.35)", "  (target <= 0.60)") \
                if order == "second" else ("", "")
            print(f"{order}-order: ours vectorised / torch.func.vmap = {vec / vmapped:.3f}{target_vec}")
            print(f"{order}-order: ours looped / torch eager loop    = {loop / eager:.3f}{target_loop}")


# ----------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------

def _rss_mib():
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def memory(args):
    import tracemalloc

    batches = make_batches(4, args.meta_batch, args.shots)
    print("peak traced memory of one second-order vectorised meta-iteration (tracemalloc):")
    print(f"  {'inner steps':>11s} {'eager MiB':>10s} {'compiled MiB':>13s}")
    for inner_steps in (1, 5, 10):
        peaks = []
        for compiled in (False, True):
            step = ours_step_fn(False, True, inner_steps=inner_steps, compiled=compiled)
            step(batches[0])  # warm-up (and the trace): lazy imports and caches are not the step's
            tracemalloc.start()
            tracemalloc.reset_peak()
            step(batches[1])
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        print(f"  {inner_steps:11d} {peaks[0] / 2 ** 20:10.2f} {peaks[1] / 2 ** 20:13.2f}")
    if not os.path.exists("/proc/self/statm"):
        print("resident memory: /proc/self/statm not available on this system; skipped")
        return
    every = max(1, args.memory_iters // 10)
    for compiled in (False, True):
        step = ours_step_fn(False, True, compiled=compiled)
        label = "compiled" if compiled else "eager"
        print(f"resident memory over {args.memory_iters} second-order vectorised meta-iterations, "
              f"{label}:")
        first = None
        for i in range(args.memory_iters + 1):
            if i % every == 0:
                rss = _rss_mib()
                first = rss if first is None else first
                print(f"  iteration {i:6d}: RSS {rss:8.2f} MiB")
            if i < args.memory_iters:
                step(batches[i % len(batches)])
        print(f"  {label}: growth after warm-up: {_rss_mib() - first:+.2f} MiB")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=200, help="timed iterations per configuration")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds (noise control)")
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true", help="never import torch")
    parser.add_argument("--no-jax", action="store_true", help="do not start the JAX process")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--memory", action="store_true", help="memory report instead of speed")
    parser.add_argument("--memory-iters", type=int, default=10000)
    args = parser.parse_args(argv)
    if args.memory:
        memory(args)
    else:
        speed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
