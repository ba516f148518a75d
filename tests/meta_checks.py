"""Small sinusoid task batches and central differences, shared by the meta-learner tests."""
from collections import OrderedDict

import numpy as np


def small_batch(tasks=3, shots=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    amplitude = rng.uniform(0.5, 2.0, (tasks, 1, 1))
    phase = rng.uniform(0, np.pi, (tasks, 1, 1))
    sx = rng.uniform(-3, 3, (tasks, shots, 1))
    qx = rng.uniform(-3, 3, (tasks, shots + 1, 1))
    return tuple(a.astype(dtype) for a in (sx, amplitude * np.sin(sx - phase),
                                           qx, amplitude * np.sin(qx - phase)))


def central_differences(f, params, eps=1e-6):
    """d f / d p for every parameter entry, by (f(p + eps) - f(p - eps)) / (2 eps)."""
    out = OrderedDict()
    for name, p in params.items():
        g = np.zeros(p.shape)
        for index in np.ndindex(*p.shape):
            original = p.data[index]
            p.data[index] = original + eps
            up = f()
            p.data[index] = original - eps
            down = f()
            p.data[index] = original
            g[index] = (up - down) / (2 * eps)
        out[name] = g
    return out
