"""07: the same second-order computation on the CPU and on the GPU, and our CUDA kernels vs CuPy's.

What it teaches:
* A tensor lives on one device (`device="cuda"` or `model.to("cuda")`); every op, every
  backward rule and therefore every derivative of a derivative runs there too. Nothing
  in MAML changes: the meta-gradient (backprop through the inner gradient) is computed
  on the GPU by the same code, and it matches the CPU result.
* On the GPU, matmul and ReLU (forward and backward) run our own CUDA kernels
  (kernels/cuda/*.cu, loaded by CuPy's RawModule); everything else runs through CuPy.
  We time one MAML meta-step with our kernels and with CuPy's (cuBLAS matmul,
  elementwise ReLU) swapped in, and each kernel on its own.
* Without CuPy or a GPU it says so and exits cleanly (exit status 0).

Run: python examples/07_gpu_demo.py [--quick]
Ends with printed tables. Timings are wall-clock with the GPU synchronised, best of
several runs.
"""
import sys
import time
from collections import OrderedDict

import numpy as np

from _common import quick_mode, table

import tinygrad_meta as tgm
from tinygrad_meta.backends import get_backend
from tinygrad_meta.meta import MAML
from tinygrad_meta.tasks.sinusoid import sample_batch, task_rng

QUICK = quick_mode()
HIDDEN = 40 if QUICK else 256
TASKS = 25 if QUICK else 100
REPEATS = 3 if QUICK else 10
MATMUL_SIZES = (256, 1024) if QUICK else (256, 1024, 2048, 4096)
RELU_ELEMENTS = 1 << (20 if QUICK else 24)


def gpu_backend_or_exit():
    """The CUDA backend, or a clear message and exit status 0 when there is none."""
    try:
        return get_backend("cuda")
    except RuntimeError as error:
        print(f"No GPU demo on this machine: {error}")
        print("This example needs CuPy and a CUDA GPU (pip install 'tinygrad-meta[gpu]'); "
              "everything else in tinygrad_meta runs on the CPU. Exiting cleanly.")
        sys.exit(0)


def best_time(function, synchronize, repeats):
    """Fastest of ``repeats`` runs in seconds, after one warm-up run (kernel compilation)."""
    function()
    synchronize()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


class cupy_kernels:
    """Inside this block the CUDA backend runs CuPy's matmul and ReLU instead of ours."""

    def __init__(self, backend):
        self.backend = backend

    def __enter__(self):
        xp = self.backend.xp
        self.backend.matmul = lambda a, b, tile=None: xp.matmul(a, b)
        self.backend.relu = lambda x: xp.maximum(x, 0)
        self.backend.relu_backward = lambda g, x: g * (x > 0)
        return self

    def __exit__(self, *exc):
        for name in ("matmul", "relu", "relu_backward"):
            delattr(self.backend, name)  # back to the class's methods: our kernels
        return False


def meta_gradient(model, batch):
    maml = MAML(model, inner_lr=0.01, inner_steps=1, first_order=False)
    loss, grads = maml.meta_step(batch)
    return loss, OrderedDict((name, g.numpy()) for name, g in grads.items())


def main():
    backend = gpu_backend_or_exit()
    cupy = backend.xp
    synchronize = cupy.cuda.Device().synchronize
    print(f"GPU: {getattr(backend.kernels, 'device_name', 'CUDA device')}\n")

    # 1. the same MAML meta-gradient (second order) on both devices
    batch = sample_batch(TASKS, 10, task_rng(0, 0))
    cpu_model = tgm.nn.MLP([1, HIDDEN, HIDDEN, 1], rng=np.random.default_rng(0))
    gpu_model = tgm.nn.MLP([1, HIDDEN, HIDDEN, 1], rng=np.random.default_rng(0)).to("cuda")
    cpu_loss, cpu_grads = meta_gradient(cpu_model, batch)
    gpu_loss, gpu_grads = meta_gradient(gpu_model, batch)
    scale = max(np.abs(g).max() for g in cpu_grads.values())
    worst = max(np.abs(cpu_grads[n] - gpu_grads[n]).max() for n in cpu_grads) / scale
    print(f"MAML meta-gradient, MLP [1, {HIDDEN}, {HIDDEN}, 1], {TASKS} tasks, 1 inner step:")
    print(f"  meta-loss CPU {cpu_loss:.6f}, GPU {gpu_loss:.6f}; largest gradient difference "
          f"{worst:.1e} of the largest entry")
    # float32 on both sides, summed in different orders: differences of a few 1e-6
    # relative are rounding; 1e-3 would mean a wrong kernel
    assert worst < 1e-3, "the GPU meta-gradient disagrees with the CPU one"

    def cpu_step():
        meta_gradient(cpu_model, batch)

    def gpu_step():
        meta_gradient(gpu_model, batch)

    t_cpu = best_time(cpu_step, lambda: None, REPEATS)
    t_ours = best_time(gpu_step, synchronize, REPEATS)
    with cupy_kernels(backend):
        t_cupy = best_time(gpu_step, synchronize, REPEATS)
    print()
    table(["one MAML meta-step", "time", "vs CPU"],
          [["CPU (numpy + our Cython kernels)", f"{t_cpu * 1e3:.2f} ms", "1.0x"],
           ["GPU, our CUDA kernels", f"{t_ours * 1e3:.2f} ms", f"{t_cpu / t_ours:.1f}x"],
           ["GPU, CuPy's matmul/ReLU", f"{t_cupy * 1e3:.2f} ms", f"{t_cpu / t_cupy:.1f}x"]])

    # 2. the kernels on their own
    rows = []
    rng = np.random.default_rng(1)
    for n in MATMUL_SIZES:
        a = cupy.asarray(rng.standard_normal((n, n), dtype=np.float32))
        b = cupy.asarray(rng.standard_normal((n, n), dtype=np.float32))
        ours = best_time(lambda: backend.matmul(a, b), synchronize, REPEATS)
        theirs = best_time(lambda: cupy.matmul(a, b), synchronize, REPEATS)
        error = float(cupy.abs(backend.matmul(a, b) - cupy.matmul(a, b)).max() / cupy.abs(cupy.matmul(a, b)).max())
        flops = 2.0 * n ** 3
        rows.append([f"matmul f32 {n}x{n}", f"{flops / ours / 1e9:.0f} GFLOP/s",
                     f"{flops / theirs / 1e9:.0f} GFLOP/s", f"{theirs / ours:.2f}", f"{error:.1e}"])
    x = cupy.asarray(rng.standard_normal(RELU_ELEMENTS, dtype=np.float32))
    g = cupy.asarray(rng.standard_normal(RELU_ELEMENTS, dtype=np.float32))
    for name, ours_fn, theirs_fn, touched in (
            ("relu forward", lambda: backend.relu(x), lambda: cupy.maximum(x, 0), 2),
            ("relu backward", lambda: backend.relu_backward(g, x), lambda: g * (x > 0), 3)):
        ours = best_time(ours_fn, synchronize, REPEATS)
        theirs = best_time(theirs_fn, synchronize, REPEATS)
        moved = touched * RELU_ELEMENTS * 4
        error = float(cupy.abs(ours_fn() - theirs_fn()).max())
        rows.append([f"{name} f32, {RELU_ELEMENTS:,} elements", f"{moved / ours / 1e9:.0f} GB/s",
                     f"{moved / theirs / 1e9:.0f} GB/s", f"{theirs / ours:.2f}", f"{error:.1e}"])
    print()
    table(["kernel", "ours", "CuPy", "speed-up (CuPy time / ours)", "max difference"], rows)


if __name__ == "__main__":
    main()
