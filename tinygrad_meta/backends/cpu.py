"""The CPU backend: numpy arrays, with matmul and ReLU through our compiled kernels."""
from __future__ import annotations

import numpy as np

__all__ = ["BACKEND", "CPUBackend", "kernel_info"]


def _relu(x):
    return np.maximum(x, 0, dtype=x.dtype) if x.dtype.kind == "f" else np.maximum(x, 0)


def _relu_backward(g, x):
    return g * (x > 0)


class CPUBackend:
    """numpy arrays on the host."""
    name = "cpu"
    xp = np

    def __init__(self):
        self.matmul = np.matmul
        self.relu = _relu
        self.relu_backward = _relu_backward

    @staticmethod
    def asarray(data, dtype=None):
        return np.asarray(data, dtype=dtype)

    @staticmethod
    def to_numpy(array):
        return array

    def __repr__(self):
        return "CPUBackend()"


BACKEND = CPUBackend()


def kernel_info() -> dict:
    """What implementation runs matmul and ReLU on the CPU."""
    return {"matmul": "numpy", "relu": "numpy", "compiled": False}
