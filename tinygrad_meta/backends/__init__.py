"""Array backends: where a Tensor's raw arrays live and which kernels compute on them.

A backend object has ``name`` ("cpu" or "cuda"), ``xp`` (the numpy-like module for
everything without a kernel of ours), and ``asarray``, ``to_numpy``, ``matmul``,
``relu``, ``relu_backward``. Tensors keep a reference to their backend, and every op
checks that its operands share one (a tensor never changes device implicitly).
"""
from __future__ import annotations

from . import cpu

__all__ = ["get_backend", "cpu"]


def get_backend(device):
    """The backend for ``device`` ("cpu", "cuda", "cuda:0", or a backend object)."""
    if device is None or device == "cpu":
        return cpu.BACKEND
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        from . import cuda
        return cuda.get_backend(device)
    if hasattr(device, "xp") and hasattr(device, "name"):
        return device
    raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")
