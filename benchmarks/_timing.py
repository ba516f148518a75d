"""A tiny timing helper shared by the benchmarks: medians of repeated calls after warm-up.

>>> from benchmarks._timing import median_time, compare
>>> t = median_time(lambda: sum(range(100)))            # seconds per call
>>> ours, ref = compare(lambda: sorted([3, 1, 2]), lambda: [1, 2, 3])
"""
from __future__ import annotations

import time

__all__ = ["median_time", "compare", "compare_stats", "calls_for"]


def calls_for(fn, target_s=2e-3, max_calls=100_000):
    """How many back-to-back calls of ``fn`` take about ``target_s`` seconds (>= 1),
    so that one timed sample is long enough for the clock to resolve it."""
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    if once <= 0:
        return max_calls
    return max(1, min(max_calls, int(target_s / once)))


def _sample(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def _compare_blocked(ours, reference, repeats, warmup, target_s, settle_s):
    samples = {ours: [], reference: []}
    for _ in range(2):
        for fn in (ours, reference):
            time.sleep(settle_s)
            for _ in range(warmup):
                fn()
            calls = calls_for(fn, target_s)
            samples[fn] += [_sample(fn, calls) for _ in range((repeats + 1) // 2)]
    return {"ours_median": _median(samples[ours]), "ref_median": _median(samples[reference]),
            "ours_min": min(samples[ours]), "ref_min": min(samples[reference])}


def median_time(fn, repeats=15, warmup=3, target_s=2e-3):
    """Median seconds per call of ``fn()`` over ``repeats`` samples, after ``warmup``
    untimed calls; each sample times enough calls to last about ``target_s``."""
    for _ in range(warmup):
        fn()
    calls = calls_for(fn, target_s)
    return _median([_sample(fn, calls) for _ in range(repeats)])


def compare(ours, reference, repeats=15, warmup=3, target_s=2e-3):
    """Median seconds per call of two functions, sampled alternately (ours, reference,
    ours, ...) so that load from other processes hits both alike.

    Returns ``(ours_s, reference_s)``; the speed ratio is ``reference_s / ours_s``.
    """
    stats = compare_stats(ours, reference, repeats, warmup, target_s)
    return stats["ours_median"], stats["ref_median"]


def compare_stats(ours, reference, repeats=15, warmup=3, target_s=2e-3, settle_s=None):
    """Like :func:`compare`, returning a dict with the medians (``ours_median``,
    ``ref_median``) and the minima (``ours_min``, ``ref_min``) of the samples: on a
    shared machine the minimum is the run least disturbed by other processes.

    ``settle_s``: time in blocks instead (all samples of one function, then the other,
    twice over), pausing this long before each block. For multi-threaded code: thread
    pools keep spinning for a while after their last call (OpenBLAS's for ~0.1 s), and
    alternating calls would make each pay for the other's idle spinning.
    """
    if settle_s is not None:
        return _compare_blocked(ours, reference, repeats, warmup, target_s, settle_s)
    for _ in range(warmup):
        ours()
        reference()
    calls_ours = calls_for(ours, target_s)
    calls_ref = calls_for(reference, target_s)
    ours_samples, ref_samples = [], []
    for _ in range(repeats):
        ours_samples.append(_sample(ours, calls_ours))
        ref_samples.append(_sample(reference, calls_ref))
    return {"ours_median": _median(ours_samples), "ref_median": _median(ref_samples),
            "ours_min": min(ours_samples), "ref_min": min(ref_samples)}
