"""GPU kernels: our SGEMM vs cuBLAS (cupy.matmul, TF32 off), our ReLU vs CuPy's elementwise.

Each row times ours and the reference in the same run on the same arrays: medians of
repeated calls timed with CUDA events after warm-up, and the ratio reference_time /
our_time (1.0 = as fast as the reference). Also checks that both agree, which would
expose cuBLAS silently using TF32 (its error would be ~1e-3 instead of ~1e-6).

Targets (issue 3): SGEMM >= 75% of cuBLAS at n = 4096, >= 50% at n = 1024.

    python benchmarks/kernels_gpu.py [--sizes 1024 2048 4096 8192] [--repeats 10]

``gpu_rows()`` returns the rows as dicts (for benchmarks/kernels.py's table); it returns
an empty list when there is no CuPy or no GPU (``unavailable_reason()`` says why).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

# cuBLAS must compute in full fp32: CuPy reads CUPY_TF32 (default off) and cuBLAS reads
# NVIDIA_TF32_OVERRIDE when they start, so these must be set before cupy is imported.
os.environ["CUPY_TF32"] = "0"
os.environ["NVIDIA_TF32_OVERRIDE"] = "0"


SGEMM_SIZES = (1024, 2048, 4096, 8192)
SGEMM_TARGETS = {1024: 0.50, 4096: 0.75}     # fraction of cuBLAS speed
RELU_SIZES = (10 ** 5, 10 ** 7, 10 ** 8)

__all__ = ["gpu_rows", "unavailable_reason", "format_table", "main"]


def unavailable_reason():
    """None when the cuda backend can run here, else why not (no CuPy, no GPU)."""
    from tinygrad_meta.backends import cuda
    try:
        cuda.get_backend("cuda")
    except RuntimeError as error:
        return str(error)
    return None


def _gpu_median_ms(cupy, fn, repeats, warmup=2):
    """Median milliseconds of ``fn()`` on the GPU, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    samples = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(samples)


def _compare(cupy, ours, reference, repeats):
    """(our ms, reference ms), each a median; sampled alternately so that clock and
    thermal drift hit both alike."""
    ours_ms, ref_ms = [], []
    for _ in range(3):
        ours_ms.append(_gpu_median_ms(cupy, ours, max(1, repeats // 3)))
        ref_ms.append(_gpu_median_ms(cupy, reference, max(1, repeats // 3)))
    return statistics.median(ours_ms), statistics.median(ref_ms)


def _sgemm_rows(backend, sizes, repeats):
    cupy = backend.xp
    rows = []
    rng = cupy.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=cupy.float32)
        b = rng.standard_normal((n, n), dtype=cupy.float32)
        reference = cupy.matmul(a, b)
        scale = float(cupy.abs(reference).max())
        flops = 2.0 * n ** 3
        auto_tile = backend._pick_tile(n, n, 1)
        for tile in (None, "128x128", "64x64"):
            ours = backend.matmul(a, b, tile=tile)
            diff = float(cupy.abs(ours - reference).max()) / scale
            ours_ms, ref_ms = _compare(cupy, lambda: backend.matmul(a, b, tile=tile),
                                       lambda: cupy.matmul(a, b), repeats)
            ratio = ref_ms / ours_ms
            target = SGEMM_TARGETS.get(n) if tile is None else None
            rows.append({
                "kernel": f"sgemm {'auto=' + auto_tile if tile is None else tile}",
                "size": f"{n}x{n}x{n}", "ours_ms": ours_ms, "reference": "cuBLAS fp32",
                "reference_ms": ref_ms, "ratio": ratio,
                "ours_tflops": flops / ours_ms / 1e9, "reference_tflops": flops / ref_ms / 1e9,
                "max_rel_diff": diff, "target": target,
                "meets_target": None if target is None else ratio >= target,
            })
        del a, b, reference
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


def _relu_rows(backend, sizes, repeats):
    cupy = backend.xp
    rows = []
    rng = cupy.random.default_rng(1)
    for size in sizes:
        x = rng.standard_normal(size, dtype=cupy.float32)
        g = rng.standard_normal(size, dtype=cupy.float32)
        assert bool((backend.relu(x) == cupy.maximum(x, 0)).all())
        assert bool((backend.relu_backward(g, x) == g * (x > 0)).all())
        cases = [("relu forward", lambda: backend.relu(x), lambda: cupy.maximum(x, 0),
                  "cupy.maximum(x, 0)", 2),
                 ("relu backward", lambda: backend.relu_backward(g, x), lambda: g * (x > 0),
                  "g * (x > 0)", 3)]
        for name, ours, reference, label, arrays in cases:
            ours_ms, ref_ms = _compare(cupy, ours, reference, repeats)
            rows.append({
                "kernel": name, "size": f"{size:.0e}", "ours_ms": ours_ms, "reference": label,
                "reference_ms": ref_ms, "ratio": ref_ms / ours_ms,
                # bytes read + written by the fused kernel, per second
                "ours_gbps": arrays * 4 * size / ours_ms / 1e6,
                "target": None, "meets_target": None,
            })
        del x, g
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


def gpu_rows(sizes=SGEMM_SIZES, relu_sizes=RELU_SIZES, repeats=9):
    """Benchmark rows (dicts) for the GPU kernels; [] without CuPy or a GPU."""
    if unavailable_reason() is not None:
        return []
    from tinygrad_meta.backends import cuda
    backend = cuda.get_backend("cuda")
    return _sgemm_rows(backend, sizes, repeats) + _relu_rows(backend, relu_sizes, repeats)


def format_table(rows):
    """The rows as a fixed-width text table."""
    header = (f"{'kernel':<22} {'size':>16} {'ours ms':>10} {'ref ms':>10} {'ref/ours':>9} "
              f"{'ours':>12} {'reference':>20} {'max rel diff':>12} {'target':>8}")
    lines = [header, "-" * len(header)]
    for row in rows:
        if "ours_tflops" in row:
            rate = f"{row['ours_tflops']:.1f} TFLOP/s"
        else:
            rate = f"{row['ours_gbps']:.0f} GB/s"
        diff = f"{row['max_rel_diff']:.1e}" if "max_rel_diff" in row else ""
        target = ""
        if row.get("target") is not None:
            target = f">={row['target']:.2f} " + ("ok" if row["meets_target"] else "MISS")
        lines.append(f"{row['kernel']:<22} {row['size']:>16} {row['ours_ms']:>10.3f} "
                     f"{row['reference_ms']:>10.3f} {row['ratio']:>9.2f} {rate:>12} "
                     f"{row['reference']:>20} {diff:>12} {target:>8}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SGEMM_SIZES))
    parser.add_argument("--relu-sizes", type=int, nargs="+", default=list(RELU_SIZES))
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"GPU benchmark skipped: {reason}")
        return 0
    from tinygrad_meta.backends import cuda
    info = cuda.kernel_info()
    print(f"device: {info.get('device')} ({info.get('sm_count')} SMs); "
          f"CUPY_TF32={os.environ.get('CUPY_TF32')} NVIDIA_TF32_OVERRIDE={os.environ.get('NVIDIA_TF32_OVERRIDE')}")
    rows = gpu_rows(args.sizes, args.relu_sizes, args.repeats)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
