"""``python -m tinygrad_meta info``: versions, compiled kernels and devices."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import sys

import numpy

import tinygrad_meta
from ..backends.cpu import kernel_info


def register(subparsers):
    parser = subparsers.add_parser("info", help="versions, compiled kernels and devices",
                                   description="Print the versions of Python, numpy, tinygrad_meta "
                                               "and optional packages, which CPU kernels run, and "
                                               "whether a CUDA device can be used (or why not).")
    parser.set_defaults(func=run)


def _optional_version(name):
    # read the installed metadata instead of importing: importing torch or matplotlib
    # just to print a version takes seconds
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    if importlib.util.find_spec(name) is None:
        return "not installed"
    return "installed (version unknown)"


def _cupy_version():
    if importlib.util.find_spec("cupy") is None:
        return "not installed"
    try:
        import cupy
    except Exception as error:  # a broken install should be reported, not crash info
        return f"installed but fails to import ({type(error).__name__}: {error})"
    return cupy.__version__


def cuda_status():
    """(available, description): whether ``device="cuda"`` can be used, or why not."""
    try:
        import cupy
    except ImportError:
        return False, "no: cupy is not installed (pip install cupy-cuda12x)"
    except Exception as error:
        return False, f"no: cupy fails to import ({type(error).__name__}: {error})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError without a driver or a GPU
        return False, f"no: cupy found no usable GPU ({type(error).__name__}: {error})"
    if count < 1:
        return False, "no: cupy sees 0 GPUs"
    names = []
    for index in range(count):
        try:
            props = cupy.cuda.runtime.getDeviceProperties(index)
            name = props["name"]
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        except Exception:
            names.append(f"device {index}")
    return True, f"yes: {count} GPU(s): {', '.join(names)}"


def info_lines():
    """The report as a list of "key: value" lines."""
    lines = [
        f"python: {platform.python_version()} ({sys.executable})",
        f"platform: {platform.platform()}",
        f"numpy: {numpy.__version__}",
        f"tinygrad_meta: {tinygrad_meta.__version__} ({tinygrad_meta.__file__.rsplit('/', 1)[0]})",
    ]
    try:
        kernels = kernel_info()
        lines.append("cpu kernels: " + ", ".join(f"{k}={v}" for k, v in kernels.items()))
    except Exception as error:
        lines.append(f"cpu kernels: unavailable ({type(error).__name__}: {error})")
    for name in ("cython", "tqdm", "matplotlib", "torch"):
        lines.append(f"{name}: {_optional_version(name)}")
    # cupy ships as cupy-cuda11x / cupy-cuda12x, so ask the module itself
    lines.append(f"cupy: {_cupy_version()}")
    available, description = cuda_status()
    lines.append(f"cuda: {description}")
    lines.append("devices: cpu" + (", cuda" if available else ""))
    return lines


def run(args) -> int:
    for line in info_lines():
        print(line)
    return 0
