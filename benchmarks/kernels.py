"""Our compiled CPU kernels against numpy, side by side in the same run.

Every row times ours and the reference alternately on the same arrays (medians of
repeated calls after warm-up, benchmarks/_timing.py) and prints ref_time / our_time:
above 1.0 we are faster. Targets are judged on that median ratio; ``best`` is the ratio
of the fastest samples, what a run undisturbed by other processes gets.

* matmul float32/float64, n = 64 ... 2048, on 1 and 2 threads, vs numpy's BLAS. Each
  thread count runs in a fresh subprocess with OMP_NUM_THREADS / OPENBLAS_NUM_THREADS
  (and threadpoolctl's limit, when installed) set before numpy is imported, so both
  sides get the same number of cores. Multi-threaded rows time each side in blocks
  after a pause, not alternately: an idle thread pool keeps spinning for a while
  after its last call and would slow the other side's threads.
* the MAML shapes (25,1)@(1,40), (25,40)@(40,40), (25,40)@(40,1), the backward's
  transposed products and the task-batched (25,10,40)@(25,40,40): the raw kernel vs
  numpy's ``a @ b``, and ``Tensor @ Tensor`` with our kernels vs with numpy's.
* ReLU forward and backward at 1e3, 1e5, 1e7 elements vs ``np.maximum(x, 0)`` and
  ``g * (x > 0)``.
* one whole MAML meta-step (benchmarks/maml.py's setting) with the kernels vs in
  numpy mode: the end-to-end effect (no target).
* the GPU rows from benchmarks/kernels_gpu.py when CuPy and a GPU are present.

Targets (issue 3): float32 >= 0.90 at n = 512 and 1024 on one thread, >= 0.80 on two;
float64 >= 0.80; MAML shapes >= 1.0; ReLU >= 1.5 at 1e3 and 1e5.

    python benchmarks/kernels.py            # full table (a few minutes)
    python benchmarks/kernels.py --quick    # n <= 512, fewer repeats (about a minute)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SIZES = (64, 128, 256, 512, 1024, 2048)
QUICK_SIZES = (64, 128, 256, 512)
THREADS = (1, 2)
MAML_SHAPES = [((25, 1), (1, 40)), ((25, 40), (40, 40)), ((25, 40), (40, 1))]
RELU_SIZES = (10 ** 3, 10 ** 5, 10 ** 7)


def _matmul_target(dtype, n, threads):
    if n not in (512, 1024):
        return None
    if dtype == "float32":
        return 0.90 if threads == 1 else 0.80
    return 0.80


def _row(kernel, size, dtype, threads, stats, reference, target=None, **extra):
    """One table row from compare_stats(): the target is judged on the medians; the
    ratio of the minima (``best``) shows what an undisturbed run gets."""
    ours_s, ref_s = stats["ours_median"], stats["ref_median"]
    ratio = ref_s / ours_s
    row = {"kernel": kernel, "size": size, "dtype": dtype, "threads": threads,
           "ours_us": ours_s * 1e6, "ref_us": ref_s * 1e6, "ratio": ratio,
           "best_ratio": stats["ref_min"] / stats["ours_min"],
           "reference": reference, "target": target,
           "meets_target": None if target is None else ratio >= target}
    row.update(extra)
    return row


def _max_rel_diff(ours, ref):
    import numpy as np
    ref64 = np.asarray(ref, dtype=np.float64)
    scale = max(float(np.abs(ref64).max()), 1e-30)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - ref64).max()) / scale


def matmul_rows(threads, sizes, quick):
    """Square matmul rows for one thread count (run inside a worker process)."""
    import numpy as np

    from benchmarks._timing import compare_stats
    from tinygrad_meta import _cpu_matmul
    _cpu_matmul.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for dtype in ("float32", "float64"):
        for n in sizes:
            a = rng.standard_normal((n, n)).astype(dtype)
            b = rng.standard_normal((n, n)).astype(dtype)
            # the raw kernel, no routing: this row is about the kernel itself
            # threaded rows are timed in blocks (see compare_stats): our OpenMP pool and
            # OpenBLAS's must not spin against each other between alternating calls
            stats = compare_stats(lambda: _cpu_matmul.gemm(a, b), lambda: np.matmul(a, b),
                                  repeats=(7 if quick else 11) if n < 1024 else (3 if quick else 5),
                                  target_s=0.005, settle_s=0.25 if threads > 1 else None)
            rows.append(_row("matmul", f"{n}x{n}x{n}", dtype, threads, stats, "numpy BLAS",
                             _matmul_target(dtype, n, threads),
                             gflops=2 * n ** 3 / stats["ours_median"] / 1e9,
                             ref_gflops=2 * n ** 3 / stats["ref_median"] / 1e9,
                             max_rel_diff=_max_rel_diff(_cpu_matmul.gemm(a, b), a @ b)))
    return rows


def small_rows(quick):
    """MAML-shape matmuls (raw and through Tensor @) and ReLU rows."""
    import numpy as np

    import tinygrad_meta as tgm
    from benchmarks._timing import compare_stats
    from tinygrad_meta import _cpu_matmul, _cpu_relu
    from tinygrad_meta.backends import cpu
    # many short samples: a sample that another process interrupts moves the median less
    repeats = 21 if quick else 41

    def compare(ours, reference):
        return compare_stats(ours, reference, repeats=repeats, target_s=5e-4)

    rng = np.random.default_rng(0)
    rows = []
    cases = [(f"{sa}@{sb}", rng.standard_normal(sa), rng.standard_normal(sb))
             for sa, sb in MAML_SHAPES]
    w = rng.standard_normal((40, 40))
    g = rng.standard_normal((25, 40))
    x = rng.standard_normal((25, 40))
    cases += [("g@W.T (25,40)@(40,40)T", g, w.T), ("X.T@g (25,40)T@(25,40)", x.T, g),
              ("batched (25,10,40)@(25,40,40)", rng.standard_normal((25, 10, 40)),
               rng.standard_normal((25, 40, 40)))]
    old_mode = cpu.set_kernels("cython")
    try:
        for dtype in ("float32", "float64"):
            for name, a, b in cases:
                a, b = a.astype(dtype), b.astype(dtype)
                stats = compare(lambda: _cpu_matmul.matmul(a, b), lambda: a @ b)
                rows.append(_row("matmul per call", name, dtype, 1, stats, "numpy a @ b", 1.0,
                                 max_rel_diff=_max_rel_diff(_cpu_matmul.matmul(a, b), a @ b)))
            # the numpy-mode reference gets a backend object of its own (numpy's
            # matmul), so both sides can be timed alternately in one process
            numpy_backend = cpu.CPUBackend()
            for sa, sb in MAML_SHAPES:
                a = rng.standard_normal(sa).astype(dtype)
                b = rng.standard_normal(sb).astype(dtype)
                ta, tb = tgm.Tensor(a, dtype=dtype), tgm.Tensor(b, dtype=dtype)
                na, nb = tgm.Tensor(a, dtype=dtype), tgm.Tensor(b, dtype=dtype)
                na._be = nb._be = numpy_backend
                rows.append(_row("Tensor @ (cython)", f"{sa}@{sb}", dtype, 1,
                                 compare(lambda: ta @ tb, lambda: a @ b), "numpy a @ b", 1.0))
                rows.append(_row("Tensor @ (cython)", f"{sa}@{sb}", dtype, 1,
                                 compare(lambda: ta @ tb, lambda: na @ nb),
                                 "Tensor @ (numpy mode)", 1.0))
        for dtype in ("float32", "float64"):
            for size in RELU_SIZES:
                xs = rng.standard_normal(size).astype(dtype)
                gs = rng.standard_normal(size).astype(dtype)
                target = 1.5 if size <= 10 ** 5 else None
                threads = _cpu_relu.BUILD_INFO["max_threads"] if size >= _cpu_relu.BUILD_INFO[
                    "thread_min_size"] else 1
                stats = compare(lambda: _cpu_relu.relu(xs), lambda: np.maximum(xs, 0, dtype=xs.dtype))
                rows.append(_row("relu forward", f"{size:.0e}", dtype, threads, stats,
                                 "np.maximum(x, 0)", target,
                                 gbps=2 * xs.nbytes / stats["ours_median"] / 1e9))
                stats = compare(lambda: _cpu_relu.relu_backward(gs, xs), lambda: gs * (xs > 0))
                rows.append(_row("relu backward", f"{size:.0e}", dtype, threads, stats,
                                 "g * (x > 0)", target,
                                 gbps=3 * xs.nbytes / stats["ours_median"] / 1e9))
        rows += maml_rows(compare)
    finally:
        cpu.set_kernels(old_mode)
    return rows


def maml_rows(compare):
    """One MAML meta-step (benchmarks/maml.py's sinusoid setting, vectorised over the
    task batch) with the kernels in "cython" and "auto" mode vs "numpy" mode, in one
    process, alternating: the end-to-end effect. No target; [] if that benchmark's
    helpers cannot be imported."""
    import itertools

    from tinygrad_meta.backends import cpu
    try:
        from benchmarks.maml import make_batches, ours_step_fn
    except Exception as error:  # another file's API: never let it break this table
        print(f"MAML rows skipped: benchmarks/maml.py unusable ({type(error).__name__}: {error})",
              file=sys.stderr)
        return []
    rows = []
    for order in ("second", "first"):
        step = ours_step_fn(order == "first", True)
        batches = itertools.cycle(make_batches(8, 25, 10))

        def run(mode):
            cpu.set_kernels(mode)
            step(next(batches))
        for mode in ("cython", "auto"):
            stats = compare(lambda: run(mode), lambda: run("numpy"))
            rows.append(_row(f"MAML step ({mode})", f"{order}-order, 25 tasks", "float32", 1,
                             stats, "numpy mode"))
    return rows


def _worker(args):
    limiter = None
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(limits=args.threads)
    except ImportError:
        pass   # the env vars set by the parent already fixed the BLAS thread count
    if args.worker == "matmul":
        rows = matmul_rows(args.threads, QUICK_SIZES if args.quick else SIZES, args.quick)
    else:
        rows = small_rows(args.quick)
    if limiter is not None:
        limiter.unregister()
    for row in rows:
        print(json.dumps(row), flush=True)


def _run_worker(kind, threads, quick):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["TGM_CPU_KERNELS"] = "cython"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--threads", str(threads)]
    if quick:
        cmd.append("--quick")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker {kind} (threads={threads}) failed:\n{result.stderr}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def format_rows(rows):
    header = (f"{'kernel':<20} {'size':<30} {'dtype':<8} {'thr':>3} {'ours us':>11} "
              f"{'ref us':>11} {'ref/ours':>8} {'best':>5}  {'reference':<22} {'target':<10} note")
    lines = [header, "-" * len(header)]
    for row in rows:
        target = ""
        if row["target"] is not None:
            target = f">={row['target']:.2f} " + ("ok" if row["meets_target"] else "MISS")
        note = ""
        if "gflops" in row:
            note = f"{row['gflops']:.1f} vs {row['ref_gflops']:.1f} GFLOP/s"
        elif "gbps" in row:
            note = f"{row['gbps']:.1f} GB/s"
        if "max_rel_diff" in row:
            note += f"  diff {row['max_rel_diff']:.1e}"
        lines.append(f"{row['kernel']:<20} {row['size']:<30} {row['dtype']:<8} {row['threads']:>3} "
                     f"{row['ours_us']:>11.2f} {row['ref_us']:>11.2f} {row['ratio']:>8.2f} "
                     f"{row['best_ratio']:>5.2f}  "
                     f"{row['reference']:<22} {target:<10} {note}")
    return "\n".join(lines)


def _gpu_section():
    """The GPU rows as text, or one line saying why they were skipped."""
    try:
        import cupy  # noqa: F401
    except ImportError as error:
        return f"GPU rows skipped: CuPy is not installed ({error})"
    try:
        from benchmarks import kernels_gpu
    except ImportError as error:
        return f"GPU rows skipped: benchmarks/kernels_gpu.py could not be imported ({error})"
    reason = kernels_gpu.unavailable_reason()
    if reason is not None:
        return f"GPU rows skipped: {reason}"
    return kernels_gpu.format_table(kernels_gpu.gpu_rows())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n <= 512 and fewer repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    parser.add_argument("--worker", choices=["matmul", "small"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0

    from tinygrad_meta.backends import cpu
    info = cpu.kernel_info()
    if not info["compiled"]:
        print(f"compiled CPU kernels unavailable: {info['error']}")
        return 1
    print(f"cpu kernels: cflags={info['cflags']!r} openmp={info['openmp']} "
          f"vector_bits={info['vector_bits']} tile f32={info['micro_tile_f32']} "
          f"f64={info['micro_tile_f64']} cores={os.cpu_count()}")
    print("timings: medians of alternating samples; on a shared machine expect +-10% noise\n",
          flush=True)
    rows = []
    for threads in THREADS:
        rows += _run_worker("matmul", threads, args.quick)
        print(format_rows([r for r in rows if r["threads"] == threads]), "\n", flush=True)
    small = _run_worker("small", os.cpu_count() or 1, args.quick)
    print(format_rows(small), "\n", flush=True)
    rows += small
    print(_gpu_section())
    missed = [r for r in rows if r["meets_target"] is False]
    print(f"\n{len(missed)} of {sum(r['target'] is not None for r in rows)} targeted rows "
          "below target" + (":" if missed else ""))
    for r in missed:
        print(f"  {r['kernel']} {r['size']} {r['dtype']} threads={r['threads']}: "
              f"{r['ratio']:.2f} < {r['target']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
