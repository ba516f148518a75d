"""conv2d forward + backward at the Omniglot shapes, ours against PyTorch CPU in the same run.

Layers (3x3 kernels, 64 filters, float32), both of the issue's networks:

* MAML's strided net: stride 2, padding 1; 1->64->64->64->64 channels, 28->14->7->4->2.
  N = 80 images: one 5-way 1-shot task's 5 support + 75 query images (15 per class).
* ProtoNet's net: stride 1, padding 1 (then a 2x2 max pool, not timed here); inputs
  28, 14, 7, 3. N = 100: a 5-way 5-shot 15-query episode (25 support + 75 query).

One timed call is the forward (with bias) and the gradients of the input, the weight
and the bias for an all-ones output gradient. Ours runs as

* ``engine``: ``tgm.functional.conv2d`` and ``tgm.grad`` (when the op exists), and
* ``per-image`` / ``batch``: the CPU backend's kernels called directly (im2col, our
  GEMM, col2im), with the columns laid out per image, (N, C*9, L) and one product per
  image as the engine's conv2d does, or as one (C*9, N*L) matrix for the whole batch, so
  the forward and both gradients are one GEMM each (``layout="batch"``);
* ``mixed``: the batch layout, but when an image has more than ``ONE_GEMM_MAX_COLUMNS``
  output positions the forward runs as N products on a view of the columns, (N, C*9, L)
  with strides, which also gives the output in (N, O, L) order without a transpose: one
  (64, C*9) @ (C*9, N*L) product is slower in our GEMM than N of (C*9, L) (its B operand
  is too long to pack and stream well), while at L = 4 or 9 the N small products are
  the slow ones. The gradients are one GEMM each.

* ``whole``: ``engine`` with the chunked CPU schedule turned off (ops.py: convolutions
  with large im2col columns run a few images at a time so the columns stay in cache);
  the ``engine/whole`` line says what the chunks gain in the same run.

Our variants run in the ``cython`` kernel mode (our GEMM for every product); the default
``auto`` mode would send the larger products to numpy's BLAS.

PyTorch runs in its own process (``--torch-worker``; this process never imports torch),
asked over a pipe to time one layer at a time between ours, so that load from other
processes on a shared machine hits both alike; each number is the median of all calls
over all rounds. Before timing, the worker computes the same
layer on the same arrays and we compare (max relative difference printed).

    python benchmarks/conv.py                  # per-layer and total ms, ratios ours / torch
    python benchmarks/conv.py --kernels        # also im2col/col2im: ours vs the numpy reference,
                                               # and our row loops vs our offset table vs
                                               # our stride-2 passes
    python benchmarks/conv.py --no-torch       # ours only
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

# (network, N, C_in, H, stride); every layer 3x3, padding 1, 64 output channels
LAYERS = [("maml", 80, 1, 28, 2), ("maml", 80, 64, 14, 2), ("maml", 80, 64, 7, 2), ("maml", 80, 64, 4, 2),
          ("protonet", 100, 1, 28, 1), ("protonet", 100, 64, 14, 1), ("protonet", 100, 64, 7, 1),
          ("protonet", 100, 64, 3, 1)]
OUT_CHANNELS = 64
# mixed: one forward GEMM for layers with at most this many output positions per image,
# N products above. Measured here (interleaved runs on a shared 2-core machine): at L = 4
# one GEMM took a fifth to a third of the time of N products (each of 4 columns runs our
# matmul's unpacked small-N loop), at L = 9 it won in 4 of 5 runs, at L = 16 and above
# the N products won.
ONE_GEMM_MAX_COLUMNS = 9
KERNEL = 3
PADDING = 1


def layer_name(layer):
    net, n, c, h, stride = layer
    return f"{net} N={n} {c}x{h}x{h} s{stride}"


def layer_arrays(layer, seed=0):
    """(x, weight, bias) float32 for one layer, the same in every process."""
    _, n, c, h, _ = layer
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    weight = (rng.standard_normal((OUT_CHANNELS, c, KERNEL, KERNEL)) / np.sqrt(c * 9)).astype(np.float32)
    bias = rng.standard_normal(OUT_CHANNELS).astype(np.float32)
    return x, weight, bias


# ----------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------

def kernel_step(layer, layout):
    """Forward + the three gradients on the CPU backend's kernels, columns in ``layout``.
    Returns a function of no arguments that returns (out, grad_x, grad_w, grad_b)."""
    from tinygrad_meta.backends.cpu import BACKEND as be
    from tinygrad_meta.backends.im2col import output_size
    x, weight, bias = layer_arrays(layer)
    _, n, c, h, s = layer
    geometry = ((KERNEL, KERNEL), (s, s), (PADDING, PADDING), (1, 1))
    w2 = weight.reshape(OUT_CHANNELS, -1)

    def per_image():
        cols = be.im2col(x, *geometry)                       # (N, K, L)
        out = be.matmul(w2, cols) + bias[:, None]            # (N, O, L): N products
        g = np.ones_like(out)
        grad_x = be.col2im(be.matmul(w2.T, g), x.shape, *geometry)
        grad_w = be.matmul(g, cols.transpose(0, 2, 1)).sum(axis=0)
        return out, grad_x, grad_w, g.sum(axis=(0, 2))

    def batch(one_gemm=True):
        cols = be.im2col(x, *geometry, layout="batch")      # (K, N*L)
        if one_gemm:
            out_t = be.matmul(w2, cols)                      # (O, N*L): one product
            out = out_t.reshape(OUT_CHANNELS, n, -1).transpose(1, 0, 2) + bias[:, None]
        else:                                                # N products on a strided view
            out = be.matmul(w2, cols.reshape(cols.shape[0], n, -1).transpose(1, 0, 2)) + bias[:, None]
        g = np.ones_like(out)
        g_t = np.ascontiguousarray(g.transpose(1, 0, 2)).reshape(OUT_CHANNELS, -1)
        grad_x = be.col2im(be.matmul(w2.T, g_t), x.shape, *geometry, layout="batch")
        grad_w = be.matmul(g_t, cols.T)
        return out, grad_x, grad_w, g.sum(axis=(0, 2))

    if layout == "mixed":
        columns = output_size(h, KERNEL, s, PADDING, 1) ** 2
        return lambda: batch(one_gemm=columns <= ONE_GEMM_MAX_COLUMNS)
    return per_image if layout == "per-image" else batch


def engine_step(layer):
    """The same through tgm.functional.conv2d and tgm.grad, or None if there is no conv2d."""
    import tinygrad_meta as tgm
    conv2d = getattr(tgm.functional, "conv2d", None)
    if conv2d is None:
        return None
    x, weight, bias = layer_arrays(layer)
    stride = layer[4]
    tx = tgm.Tensor(x, requires_grad=True)
    tw = tgm.Tensor(weight, requires_grad=True)
    tb = tgm.Tensor(bias, requires_grad=True)

    def step():
        out = conv2d(tx, tw, tb, stride=stride, padding=PADDING)
        grads = tgm.grad(out, [tx, tw, tb], grad_outputs=tgm.Tensor(np.ones(out.shape, np.float32)))
        return (out.numpy(), *(g.numpy() for g in grads))
    return step


def whole_batch_step(layer):
    """``engine_step`` with the chunked CPU schedule turned off (ops._CHUNK_COLUMN_BYTES
    unbounded: every conv runs as one im2col and one GEMM over the batch), for the
    ``engine/whole`` ratio: what chunking gains in the same run. None without conv2d."""
    from tinygrad_meta import ops
    step = engine_step(layer)
    if step is None or not hasattr(ops, "_CHUNK_COLUMN_BYTES"):
        return None

    def whole():
        old = ops._CHUNK_COLUMN_BYTES
        ops._CHUNK_COLUMN_BYTES = 1 << 62
        try:
            return step()
        finally:
            ops._CHUNK_COLUMN_BYTES = old
    return whole


def time_calls(fn, seconds, min_calls=3):
    """Per-call seconds of ``fn`` for about ``seconds`` (at least ``min_calls`` calls), after one warm-up."""
    fn()
    samples = []
    stop = time.perf_counter() + seconds
    while len(samples) < min_calls or time.perf_counter() < stop:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


# ----------------------------------------------------------------------------------
# PyTorch, in its own process
# ----------------------------------------------------------------------------------

def torch_worker(args):
    """Serve requests on stdin, one JSON line each: {"check": folder} writes every layer's
    output and gradients there; {"time": layer index, "seconds": s} times that layer."""
    import torch
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    functional = torch.nn.functional
    steps = []
    for layer in LAYERS:
        x, weight, bias = (torch.from_numpy(a).requires_grad_() for a in layer_arrays(layer))

        def step(x=x, weight=weight, bias=bias, stride=layer[4]):
            out = functional.conv2d(x, weight, bias, stride=stride, padding=PADDING)
            return (out, *torch.autograd.grad(out, [x, weight, bias], torch.ones_like(out)))
        steps.append(step)
    print(json.dumps({"version": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "check" in request:
            for layer, step in zip(LAYERS, steps):
                out, grad_x, grad_w, grad_b = (t.detach().numpy() for t in step())
                np.savez(os.path.join(request["check"], f"{layer_name(layer)}.npz"), out=out,
                         grad_x=grad_x, grad_w=grad_w, grad_b=grad_b)
            reply = {"done": True}
        else:
            reply = {"samples": time_calls(steps[request["time"]], request["seconds"])}
        print(json.dumps(reply), flush=True)


class TorchWorker:
    """PyTorch in its own process, asked to time one layer at a time, so that its
    samples interleave with ours at a fine grain (load on a shared machine hits both)."""

    def __init__(self, torch_threads):
        command = [sys.executable, os.path.abspath(__file__), "--torch-worker",
                   "--torch-threads", str(torch_threads)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.meta = self._reply()

    def _reply(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the torch worker failed:\n{self.process.stderr.read()[-3000:]}")
        return json.loads(line)

    def ask(self, **request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def max_relative_difference(ours, theirs):
    worst = 0.0
    for a, b in zip(ours, theirs):
        a = np.asarray(a, np.float64).reshape(np.shape(b))
        worst = max(worst, float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30)))
    return worst


# ----------------------------------------------------------------------------------
# im2col / col2im: ours against the numpy reference (what auto mode's choice rests on)
# ----------------------------------------------------------------------------------

def kernel_rows(seconds):
    from tinygrad_meta.backends import cpu
    from tinygrad_meta.backends import im2col as reference
    ours = cpu._cpu_conv
    if ours is None:
        print(f"im2col/col2im kernels unavailable: {cpu.kernel_info()['error']}")
        return
    print(f"\n{'im2col/col2im (float32)':<34} {'ours ms':>8} {'numpy ms':>9} {'numpy/ours':>10}"
          f" {'loops ms':>9} {'table ms':>9} {'loops/table':>11} {'stride-2 ms':>11} {'loops/s2':>8}")
    only_loops, only_table = (0, 0, 0), (1 << 30, 1 << 30, 1 << 30)
    geometry_of = {}
    for layer in LAYERS:
        x, _, _ = layer_arrays(layer)
        s = layer[4]
        geometry = ((KERNEL, KERNEL), (s, s), (PADDING, PADDING), (1, 1))
        geometry_of[layer] = geometry
        cols = reference.im2col(x, *geometry)
        for name, mine, theirs in (
                ("im2col", lambda: ours.im2col(x, *geometry), lambda: reference.im2col(x, *geometry)),
                ("col2im", lambda: ours.col2im(cols, x.shape, *geometry),
                 lambda: reference.col2im(cols, x.shape, *geometry))):
            mine_s, theirs_s, loops_s, table_s, stride2_s = [], [], [], [], []
            for _ in range(3):  # alternate blocks
                mine_s += time_calls(mine, seconds / 6)
                theirs_s += time_calls(theirs, seconds / 6)
                # our paths forced (kernels/cpu/conv.pyx picks one per call); the
                # stride-2 passes only for column stride 2 (else the column is blank)
                forced = [(only_loops, False, loops_s), (only_table, False, table_s)]
                if s == 2:
                    forced.append((only_loops, True, stride2_s))
                for limits, stride2, into in forced:
                    old = ours.set_table_limits(*limits)
                    old_stride2 = ours.set_stride2(stride2, 1)
                    try:
                        into += time_calls(mine, seconds / 6)
                    finally:
                        ours.set_table_limits(*old)
                        ours.set_stride2(*old_stride2)
            a, b = statistics.median(mine_s), statistics.median(theirs_s)
            loops, table = statistics.median(loops_s), statistics.median(table_s)
            s2 = (f" {statistics.median(stride2_s) * 1e3:11.3f} {loops / statistics.median(stride2_s):8.2f}"
                  if stride2_s else "")
            print(f"{name + ' ' + layer_name(layer):<34} {a * 1e3:8.3f} {b * 1e3:9.3f} {b / a:10.2f}"
                  f" {loops * 1e3:9.3f} {table * 1e3:9.3f} {loops / table:11.2f}{s2}")


# ----------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="ours/torch alternations")
    parser.add_argument("--seconds", type=float, default=0.1,
                        help="timing per layer, variant and round")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--kernels", action="store_true", help="also time im2col/col2im vs the reference")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_worker:
        torch_worker(args)
        return 0

    from tinygrad_meta.backends import cpu
    # variant -> the CPU kernel mode it runs under ("cython": our GEMM and im2col/col2im
    # throughout)
    mode_of = {"per-image": "cython", "batch": "cython", "mixed": "cython"}
    steps = {}
    for layer in LAYERS:
        steps[layer] = {name: kernel_step(layer, name) for name in mode_of}
        engine = engine_step(layer)
        if engine is not None:
            steps[layer]["engine"] = engine
            mode_of["engine"] = "cython"
        whole = whole_batch_step(layer)
        if whole is not None:
            steps[layer]["whole"] = whole
            mode_of["whole"] = "cython"
    variants = list(steps[LAYERS[0]])
    with_torch = not args.no_torch
    worker = None
    if with_torch:
        try:
            worker = TorchWorker(args.torch_threads)
            with tempfile.TemporaryDirectory() as folder:
                worker.ask(check=folder)
                for layer in LAYERS:
                    reference = np.load(os.path.join(folder, f"{layer_name(layer)}.npz"))
                    want = [reference[k] for k in ("out", "grad_x", "grad_w", "grad_b")]
                    for variant, step in steps[layer].items():
                        cpu.set_kernels(mode_of[variant])
                        diff = max_relative_difference(step(), want)
                        if diff > 1e-4:   # float32 sums of up to N*L = 78400 terms
                            raise SystemExit(f"{variant} {layer_name(layer)} differs from torch: {diff:.2e}")
            print("check: every variant's output and gradients match torch (max relative difference "
                  "<= 1e-4) at every layer")
        except RuntimeError as error:
            print(f"torch unavailable, timing ours only ({str(error).splitlines()[-1]})")
            with_torch = False
    samples = {layer: {v: [] for v in variants + ["torch"]} for layer in LAYERS}
    torch_meta = worker.meta if with_torch else None
    for _ in range(args.rounds):
        for index, layer in enumerate(LAYERS):
            for variant in variants:
                cpu.set_kernels(mode_of[variant])
                samples[layer][variant] += time_calls(steps[layer][variant], args.seconds)
            if with_torch:
                samples[layer]["torch"] += worker.ask(time=index, seconds=args.seconds)["samples"]
    if worker is not None:
        worker.close()
    columns = variants + (["torch"] if with_torch else [])
    cpu.set_kernels("auto")
    info = cpu.kernel_info()
    print(f"conv2d 3x3, 64 filters, float32, forward + input/weight/bias gradients; median ms over "
          f"{args.rounds} rounds of {args.seconds:.2f} s per layer and variant, interleaved")
    print("ours: " + ", ".join(f"{v} in mode {m}" for v, m in mode_of.items())
          + f"; auto mode's matmul: {info['matmul']}; {info.get('threads')} threads"
          + (f" | torch {torch_meta['version']}, {torch_meta['threads']} threads, own process"
             if torch_meta else ""))
    header = f"{'layer':<28}" + "".join(f"{c:>11}" for c in columns)
    if with_torch:
        header += "".join(f"{c + '/torch':>17}" for c in variants)
    print(header)
    totals = {c: {"maml": 0.0, "protonet": 0.0} for c in columns}
    for layer in LAYERS:
        medians = {c: statistics.median(samples[layer][c]) for c in columns}
        for c in columns:
            totals[c][layer[0]] += medians[c]
        line = f"{layer_name(layer):<28}" + "".join(f"{medians[c] * 1e3:11.3f}" for c in columns)
        if with_torch:
            line += "".join(f"{medians[c] / medians['torch']:17.2f}" for c in variants)
        print(line)
    for net in ("maml", "protonet"):
        line = f"{'total ' + net:<28}" + "".join(f"{totals[c][net] * 1e3:11.3f}" for c in columns)
        if with_torch:
            line += "".join(f"{totals[c][net] / totals['torch'][net]:17.2f}" for c in variants)
        print(line + ("   (target <= 1.00)" if with_torch else ""))
    if "whole" in columns:
        print("engine/whole (the chunked CPU schedule against one im2col + GEMM over the batch): "
              + ", ".join(f"{layer_name(layer)} {statistics.median(samples[layer]['engine']) / statistics.median(samples[layer]['whole']):.2f}"
                          for layer in LAYERS))
    if args.kernels:
        kernel_rows(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
