"""Minibatches over arrays: shuffled (seeded), fixed size, optionally dropping the rest.

>>> import numpy as np
>>> x, y = np.arange(10).reshape(5, 2), np.arange(5)
>>> batches = list(minibatches(x, y, batch_size=2, rng=0))
>>> [len(batch_y) for _, batch_y in batches], sorted(np.concatenate([b for _, b in batches]).tolist())
([2, 2, 1], [0, 1, 2, 3, 4])
>>> [b.tolist() for _, b in minibatches(x, y, batch_size=2, shuffle=False, drop_last=True)]
[[0, 1], [2, 3]]
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["minibatches"]


def minibatches(*arrays, batch_size, shuffle=True, drop_last=False, rng=None):
    """An iterator over tuples ``(a[idx], b[idx], ...)``: consecutive batches along axis 0.

    ``arrays``: one or more numpy arrays (or Tensors) with the same length N along axis
    0; each batch is a tuple with one entry per array, also for a single array.
    ``batch_size``: examples per batch; the last batch is smaller when N is not a
    multiple, unless ``drop_last``. ``shuffle``: visit the examples in a random order
    drawn from ``rng`` (a seed or a ``np.random.Generator``; required, so every run is
    reproducible): a seed gives the same order on every call, a Generator a new order per
    call (per epoch) that is still determined by its seed. ``shuffle=False``: in order.
    Example: see the module docstring.
    """
    if not arrays:
        raise ValueError("minibatches: give at least one array")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"minibatches: batch_size must be an integer >= 1, got {batch_size!r}")
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"minibatches: the arrays have different lengths along axis 0: {lengths}")
    count = lengths[0]
    if shuffle:
        if rng is None:
            raise ValueError("minibatches: shuffle=True needs rng= (a seed or a np.random.Generator) "
                             "so the order is reproducible; or pass shuffle=False")
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        order = generator.permutation(count)
    else:
        order = np.arange(count)
    stop = count - count % batch_size if drop_last else count
    return _batches(arrays, order, stop, batch_size)


def _batches(arrays, order, stop, batch_size):
    # a separate generator, so that bad arguments fail at the call, not at the first batch
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        yield tuple(a[index] for a in arrays)
