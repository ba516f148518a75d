"""Checkpoints: one ``.npz`` file, written atomically, readable without pickle.

A checkpoint holds the model's parameters, the optimizer's state, random-generator
states, the iteration reached and the run's config. Arrays go into the archive as
ordinary ``.npy`` members; the rest (nested dicts and lists of numbers, strings, the
config, a generator's ``bit_generator.state`` with its 128-bit integers) goes into one
JSON document stored as a uint8 array. Loading uses ``allow_pickle=False`` throughout,
so opening a checkpoint never runs code.

Writing goes to a temporary file in the same folder, is flushed and fsync'ed, then
``os.replace``d over the old file: a crash (even ``kill -9``) at any moment leaves
either the old checkpoint or the new one, never a half-written file.

>>> import tempfile, os
>>> folder = tempfile.mkdtemp()
>>> path = save_checkpoint(os.path.join(folder, "checkpoint.npz"),
...                        params={"w": np.ones(2, np.float32)}, iteration=3, config={"seed": 0})
>>> ckpt = load_checkpoint(path)
>>> ckpt.iteration, ckpt.params["w"].tolist(), ckpt.config
(3, [1.0, 1.0], {'seed': 0})
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint",
           "generator_state", "restore_generator", "CHECKPOINT_NAME", "FORMAT_VERSION"]

CHECKPOINT_NAME = "checkpoint.npz"
FORMAT_VERSION = 1
_MANIFEST = "__manifest__"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the run."""


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns: plain numpy arrays, numbers and dicts."""
    params: dict
    optimizer_state: dict | None = None
    rng_state: dict | None = None
    iteration: int = 0
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    path: str = ""


# ----------------------------------------------------------------------------------
# Nested state <-> (JSON tree, arrays). Arrays are replaced by {"__array__": key}.
# ----------------------------------------------------------------------------------

def _to_numpy(value):
    if hasattr(value, "numpy") and hasattr(value, "_be"):  # a Tensor
        return np.asarray(value.numpy())
    if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
        return value.get()
    return value


def _encode(value, arrays, where):
    value = _to_numpy(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise TypeError(f"save_checkpoint: {where} has dtype {value.dtype}; only numeric arrays can be saved")
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, np.generic):
        # keep numpy scalars' dtype (a float32 step size must come back as float32)
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(value)
        return {"__scalar__": key}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"save_checkpoint: {where} has a non-string key {key!r}")
            out[key] = _encode(item, arrays, f"{where}[{key!r}]")
        return {"__dict__": out}
    if isinstance(value, (list, tuple)):
        items = [_encode(item, arrays, f"{where}[{i}]") for i, item in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"save_checkpoint: cannot store {where} of type {type(value).__name__}")


def _decode(node, arrays):
    if isinstance(node, list):
        return [_decode(item, arrays) for item in node]
    if isinstance(node, dict):
        if "__array__" in node:
            return arrays[node["__array__"]]
        if "__scalar__" in node:
            return arrays[node["__scalar__"]][()]
        if "__tuple__" in node:
            return tuple(_decode(item, arrays) for item in node["__tuple__"])
        if "__dict__" in node:
            return {key: _decode(item, arrays) for key, item in node["__dict__"].items()}
        raise CheckpointError(f"unknown node in checkpoint manifest: {sorted(node)}")
    return node


def generator_state(rng: np.random.Generator) -> dict:
    """The state of a numpy Generator as plain JSON-able data (ints, strings, dicts)."""
    return rng.bit_generator.state


def restore_generator(state: dict) -> np.random.Generator:
    """A Generator in exactly the state ``generator_state`` captured."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    bit_generator_class = getattr(np.random, str(name), None)
    if bit_generator_class is None or not isinstance(bit_generator_class, type):
        raise CheckpointError(f"checkpoint holds an unknown bit generator {name!r}")
    bit_generator = bit_generator_class()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _fsync_folder(folder):
    # make the rename itself durable; not every platform can open a folder
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, params, optimizer_state=None, rng_state=None, iteration=0, config=None,
                    extra=None) -> str:
    """Write a checkpoint atomically to ``path`` (a ``.npz`` file); returns the path.

    In: ``params`` a mapping name -> array (or Tensor); ``optimizer_state`` and
    ``rng_state`` nested dicts/lists of arrays, numbers and strings; ``iteration`` an
    int; ``config`` a JSON-able dict; ``extra`` anything else of the same kinds.
    The folder must exist. Example: see the module docstring.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save_checkpoint: folder {folder} does not exist")
    arrays: dict = {}
    manifest = {
        "format": "tinygrad_meta checkpoint",
        "version": FORMAT_VERSION,
        "iteration": int(iteration),
        "config": config if config is not None else {},
        "param_names": list(params),
        "params": _encode(dict(params), arrays, "params"),
        "optimizer_state": _encode(optimizer_state, arrays, "optimizer_state"),
        "rng_state": _encode(rng_state, arrays, "rng_state"),
        "extra": _encode(extra if extra is not None else {}, arrays, "extra"),
    }
    try:
        text = json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"save_checkpoint: config or state is not JSON-serialisable ({error})") from None
    arrays[_MANIFEST] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        # never leave temp files behind, and never touch the old checkpoint
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        raise
    _fsync_folder(folder)
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``.

    In: the ``.npz`` path, or a run folder holding ``checkpoint.npz``.
    Out: a ``Checkpoint``. Raises FileNotFoundError for a missing file or folder and
    CheckpointError (naming the file) for a corrupt, truncated or foreign one.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            # reading every member checks its CRC, so a flipped byte is caught here
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read ({type(error).__name__}: {error})"
        ) from None
    if _MANIFEST not in arrays:
        raise CheckpointError(f"{path} is not a tinygrad_meta checkpoint (no manifest inside)")
    try:
        manifest = json.loads(arrays.pop(_MANIFEST).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} has a corrupt manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "tinygrad_meta checkpoint":
        raise CheckpointError(f"{path} is not a tinygrad_meta checkpoint")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {manifest.get('version')}; this version reads {FORMAT_VERSION}")
    try:
        params = _decode(manifest["params"], arrays)
        # JSON objects keep their order, but be explicit: parameters come back in saved order
        params = {name: params[name] for name in manifest["param_names"]}
        return Checkpoint(
            params=params,
            optimizer_state=_decode(manifest["optimizer_state"], arrays),
            rng_state=_decode(manifest["rng_state"], arrays),
            iteration=int(manifest["iteration"]),
            config=manifest["config"],
            extra=_decode(manifest["extra"], arrays),
            path=path,
        )
    except KeyError as error:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing entry {error}") from None
