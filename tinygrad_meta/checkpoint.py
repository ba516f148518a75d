"""Checkpoints: one ``.npz`` file, written atomically, read within fixed bounds, without pickle.

A checkpoint holds the model's parameters, the optimizer's state, random-generator
states, the iteration reached and the run's config. Arrays go into the archive as
ordinary ``.npy`` members; the rest (nested dicts and lists of numbers, strings, the
config, a generator's ``bit_generator.state`` with its 128-bit integers) goes into one
JSON document stored as a uint8 array.

Writing goes to a temporary file in the same folder, is flushed and fsync'ed, then
``os.replace``d over the old file: a crash (even ``kill -9``) at any moment leaves
either the old checkpoint or the new one, never a half-written file.

Reading trusts nothing in the file. Before any member is read, the zip's end record
must describe a directory a checkpoint could have (at most ``MAX_MEMBERS`` members) and
the members' declared sizes must add up to at most ``MAX_CHECKPOINT_BYTES`` (1 GiB), so
a zip bomb is rejected without inflating it. Each member's npy header must be a numeric
dtype (never an object array: nothing is unpickled) and declare exactly the bytes the
member holds; its data is then read in chunks into one array of that size, so a member
that inflates past its declared size is cut off there and fails its CRC. The manifest
may take ``MAX_MANIFEST_BYTES`` and nest ``MAX_MANIFEST_DEPTH`` levels. Whatever else is
wrong (not a zip, truncated, encrypted, an unsupported compression method, a bad npy
header, a manifest of the wrong shape) is a ``CheckpointError`` naming the file and the
problem. ``save_checkpoint`` refuses state beyond these limits before it writes anything.

>>> import tempfile, os
>>> folder = tempfile.mkdtemp()
>>> path = save_checkpoint(os.path.join(folder, "checkpoint.npz"),
...                        params={"w": np.ones(2, np.float32)}, iteration=3, config={"seed": 0})
>>> ckpt = load_checkpoint(path)
>>> ckpt.iteration, ckpt.params["w"].tolist(), ckpt.config
(3, [1.0, 1.0], {'seed': 0})
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint",
           "generator_state", "restore_generator", "CHECKPOINT_NAME", "FORMAT_VERSION",
           "MAX_CHECKPOINT_BYTES", "MAX_MANIFEST_BYTES", "MAX_MANIFEST_DEPTH", "MAX_MEMBERS",
           "RunFileError", "run_file", "make_folder", "check_writable", "format_bytes"]

CHECKPOINT_NAME = "checkpoint.npz"
FORMAT_VERSION = 1
_MANIFEST = "__manifest__"
_FORMAT = "tinygrad_meta checkpoint"

# What a checkpoint may hold, and so the most that reading one allocates: its arrays,
# about 25 times the manifest's text once parsed, and the zip directory's entries.
MAX_CHECKPOINT_BYTES = 2 ** 30      # all members together, as the zip directory declares them
MAX_MANIFEST_BYTES = 16 * 2 ** 20   # the JSON text; a run's history takes ~150 bytes an entry
MAX_MANIFEST_DEPTH = 64             # nesting of the JSON; our own manifests nest about 8 deep
MAX_MEMBERS = 0xFFFF                # the most a zip holds without ZIP64 records
_DIRECTORY_ENTRY_BYTES = 64         # one directory entry: 46 bytes and a name such as a123.npy
_MAX_NPY_HEADER = 10_000            # numpy's own bound on a header it parses
_READ_CHUNK = 16 * 2 ** 20
_ZIP_FLAGS_UNSUPPORTED = 0x60       # compressed patched data, strong encryption


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the run."""


class RunFileError(OSError):
    """An OSError on one of a run's files, said in one line: ``cannot write checkpoint PATH: reason``.

    Keeps the original ``errno``; ``what`` says what was being done to which file.
    """

    def __init__(self, what, path, error):
        super().__init__(error.errno, error.strerror or str(error), os.fspath(path))
        self.what = what

    def __str__(self):
        return f"{self.what} {self.filename}: {self.strerror}"


@contextlib.contextmanager
def run_file(what, path):
    """Turn an OSError inside the block into a ``RunFileError`` naming ``what`` and ``path``.

    >>> with run_file("cannot write metrics", "/no/such/folder/metrics.jsonl"):  # doctest: +SKIP
    ...     open("/no/such/folder/metrics.jsonl", "w")
    RunFileError: cannot write metrics /no/such/folder/metrics.jsonl: No such file or directory
    """
    try:
        yield
    except RunFileError:
        raise
    except OSError as error:
        raise RunFileError(what, path, error) from error


def make_folder(path, what="run folder"):
    """``os.makedirs(path, exist_ok=True)``, failing as ``RunFileError``: ``cannot create run folder PATH: ...``."""
    with run_file(f"cannot create {what}", path):
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", os.fspath(path))
        os.makedirs(path, exist_ok=True)


def check_writable(path, what="checkpoint"):
    """Raise ``RunFileError`` now if ``path`` could not be written atomically (as
    ``save_checkpoint`` writes): a folder that is missing or refuses new files, or a
    directory where the file goes. A run calls it before it starts, not at its first save.
    """
    path = os.fspath(path)
    with run_file(f"cannot write {what}", path):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", path)
        fd, probe = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        os.unlink(probe)


def format_bytes(count) -> str:
    """``1.5 GiB``, ``8.0 TiB``, ``512 bytes``: a size for a message."""
    for unit, scale in (("PiB", 2 ** 50), ("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


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
# ``depth`` counts the JSON containers around a node, the manifest itself being 1.
# ----------------------------------------------------------------------------------

def _to_numpy(value):
    if hasattr(value, "numpy") and hasattr(value, "_be"):  # a Tensor
        return np.asarray(value.numpy())
    if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
        return value.get()
    return value


def _encode(value, arrays, where, depth):
    value = _to_numpy(value)
    if isinstance(value, (np.ndarray, np.generic, dict, list, tuple)) and depth > MAX_MANIFEST_DEPTH:
        raise ValueError(f"save_checkpoint: {where} is nested deeper than {MAX_MANIFEST_DEPTH} levels, "
                         "more than a checkpoint's manifest may be")
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
            out[key] = _encode(item, arrays, f"{where}[{key!r}]", depth + 2)
        return {"__dict__": out}
    if isinstance(value, (list, tuple)):
        inner = depth + (2 if isinstance(value, tuple) else 1)
        items = [_encode(item, arrays, f"{where}[{i}]", inner) for i, item in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"save_checkpoint: cannot store {where} of type {type(value).__name__}")


def _decode(node, array, where, depth):
    """The value of manifest ``node``; ``array(key, where)`` reads a member. Raises
    ValueError saying what is wrong at ``where``."""
    if not isinstance(node, (list, dict)):
        return node
    if depth > MAX_MANIFEST_DEPTH:
        raise ValueError(f"has a manifest nested deeper than {MAX_MANIFEST_DEPTH} levels (at {where})")
    if isinstance(node, list):
        return [_decode(item, array, f"{where}[{i}]", depth + 1) for i, item in enumerate(node)]
    for tag, kind in (("__array__", str), ("__scalar__", str), ("__tuple__", list), ("__dict__", dict)):
        if tag in node:
            content = node[tag]
            if not isinstance(content, kind):
                raise ValueError(f"is malformed: {where} is a {tag} node holding a {type(content).__name__}, "
                                 f"not a {kind.__name__}")
            break
    else:
        raise ValueError(f"is malformed: {where} is an unknown node with keys {sorted(node)}")
    if tag == "__array__":
        return array(content, where)
    if tag == "__scalar__":
        value = array(content, where)
        if value.shape != ():
            raise ValueError(f"is malformed: {where} reads {content}.npy as a scalar, but it holds shape "
                             f"{value.shape}, not a scalar")
        return value[()]
    if tag == "__tuple__":
        return tuple(_decode(item, array, f"{where}[{i}]", depth + 2) for i, item in enumerate(content))
    return {key: _decode(item, array, f"{where}[{key!r}]", depth + 2) for key, item in content.items()}


def generator_state(rng: np.random.Generator) -> dict:
    """The state of a numpy Generator as plain JSON-able data (ints, strings, dicts)."""
    return rng.bit_generator.state


def restore_generator(state: dict) -> np.random.Generator:
    """A Generator in exactly the state ``generator_state`` captured."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    bit_generator_class = getattr(np.random, str(name), None)
    if not (isinstance(bit_generator_class, type) and issubclass(bit_generator_class, np.random.BitGenerator)
            and bit_generator_class is not np.random.BitGenerator):
        raise CheckpointError(f"checkpoint holds an unknown bit generator {name!r}")
    bit_generator = bit_generator_class()
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint holds a malformed {name} state ({type(error).__name__}: {error})") from None
    return np.random.Generator(bit_generator)


# ----------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------

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


def _check_storable(arrays, manifest_bytes):
    """ValueError, before anything is written, for state the reader would refuse."""
    if len(arrays) > MAX_MEMBERS:
        raise ValueError(f"save_checkpoint: the state holds {len(arrays)} arrays with the manifest; "
                         f"a checkpoint holds at most {MAX_MEMBERS} members")
    if manifest_bytes > MAX_MANIFEST_BYTES:
        raise ValueError(f"save_checkpoint: the manifest (config, numbers and strings) takes {manifest_bytes:,} "
                         f"bytes; a checkpoint's manifest takes at most {format_bytes(MAX_MANIFEST_BYTES)}")
    total = sum(array.nbytes for array in arrays.values())
    if total > MAX_CHECKPOINT_BYTES:
        raise ValueError(f"save_checkpoint: the state takes {format_bytes(total)}; a checkpoint holds at most "
                         f"{format_bytes(MAX_CHECKPOINT_BYTES)}")


def save_checkpoint(path, params, optimizer_state=None, rng_state=None, iteration=0, config=None,
                    extra=None) -> str:
    """Write a checkpoint atomically to ``path`` (a ``.npz`` file); returns the path.

    In: ``params`` a mapping name -> array (or Tensor); ``optimizer_state`` and
    ``rng_state`` nested dicts/lists of arrays, numbers and strings; ``iteration`` an
    int; ``config`` a JSON-able dict; ``extra`` anything else of the same kinds.
    The folder must exist. Raises ValueError (before writing) for state beyond the
    limits ``load_checkpoint`` enforces, and ``RunFileError`` when the file system
    refuses; either way the old file at ``path`` is untouched. Example: see the module
    docstring.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save_checkpoint: folder {folder} does not exist")
    arrays: dict = {}
    manifest = {
        "format": _FORMAT,
        "version": FORMAT_VERSION,
        "iteration": int(iteration),
        "config": config if config is not None else {},
        "param_names": list(params),
        "params": _encode(dict(params), arrays, "params", 2),
        "optimizer_state": _encode(optimizer_state, arrays, "optimizer_state", 2),
        "rng_state": _encode(rng_state, arrays, "rng_state", 2),
        "extra": _encode(extra if extra is not None else {}, arrays, "extra", 2),
    }
    try:
        text = json.dumps(manifest, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as error:
        raise TypeError(f"save_checkpoint: config or state is not JSON-serialisable ({error})") from None
    arrays[_MANIFEST] = np.frombuffer(text, dtype=np.uint8)
    _check_storable(arrays, len(text))

    with run_file("cannot write checkpoint", path):
        fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            with open(tmp_path, "rb") as handle:
                # the reader's own bounds on the zip directory, npy headers included
                _open_archive(handle, path).close()
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


# ----------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------

# what zipfile, zlib and struct raise on a damaged archive (BadZipFile, zlib.error,
# NotImplementedError for unknown methods, RuntimeError for encryption, OSError for a
# seek outside the file, ValueError, EOFError)
_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError, OSError,
           ValueError, NotImplementedError, RuntimeError, OverflowError)


def _fail(path, problem, member=None):
    where = f"checkpoint {path}, member {member}:" if member else f"checkpoint {path}"
    return CheckpointError(f"{where} {problem}")


def _open_archive(handle, path):
    """A ZipFile on ``handle``, once the end record bounds its directory and the members'
    declared sizes, flags and compression fit a checkpoint (``path`` is for messages)."""
    end = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, end - 22 - 0xFFFF))  # the end record, and a comment of at most 64 KiB
    tail = handle.read()
    at = tail.rfind(b"PK\x05\x06", 0, max(0, len(tail) - 18))
    if at < 0:
        raise _fail(path, "is corrupt or truncated: it has no zip end record (not a zip archive, or cut short)")
    _, disk, directory_disk, count_here, count, directory_bytes, _, _ = struct.unpack("<4s4H2LH", tail[at:at + 22])
    if disk or directory_disk or count_here != count:
        raise _fail(path, "is one part of an archive split over several disks; a checkpoint is one file")
    position = end - len(tail) + at
    if position >= 20:
        handle.seek(position - 20)
        if handle.read(4) == b"PK\x06\x07":
            raise _fail(path, "is a ZIP64 archive; a checkpoint never needs ZIP64 records")
    if directory_bytes > MAX_MEMBERS * _DIRECTORY_ENTRY_BYTES:
        raise _fail(path, f"has a zip directory of {directory_bytes:,} bytes, more than the "
                          f"{MAX_MEMBERS * _DIRECTORY_ENTRY_BYTES:,} of a checkpoint's (at most {MAX_MEMBERS} members)")
    handle.seek(0)
    archive = zipfile.ZipFile(handle)
    infos = archive.infolist()
    if len(infos) != count or len(infos) > MAX_MEMBERS:
        raise _fail(path, f"is corrupt or truncated: its directory lists {len(infos)} members, its end record "
                          f"{count} (a checkpoint has at most {MAX_MEMBERS} members)")
    names = set()
    for info in infos:
        name = info.filename
        if name in names:
            raise _fail(path, f"names member {name} twice")
        names.add(name)
        if info.flag_bits & 0x1:
            raise _fail(path, "is encrypted; checkpoints never are", name)
        if info.flag_bits & _ZIP_FLAGS_UNSUPPORTED:
            flags = info.flag_bits & _ZIP_FLAGS_UNSUPPORTED
            raise _fail(path, f"uses zip features checkpoints never use (flags {flags:#x})", name)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _fail(path, f"uses compression method {info.compress_type}; checkpoints are stored or deflated", name)
    total = sum(info.file_size for info in infos)
    if total > MAX_CHECKPOINT_BYTES:
        raise _fail(path, f"would inflate to {format_bytes(total)} ({total:,} bytes); a checkpoint holds at most "
                          f"{format_bytes(MAX_CHECKPOINT_BYTES)}")
    return archive


def _read_array(archive, info, path, limit, what):
    """Member ``info`` as a numpy array, checking its npy header against ``limit`` bytes
    and against the member's declared size before any data is read."""
    name = info.filename
    try:
        with archive.open(info) as member:
            prefix = member.read(8)  # the magic string and the format version
            if len(prefix) < 8 or prefix[:6] != b"\x93NUMPY":
                raise _fail(path, "is not an npy array (no npy magic string)", name)
            version = (prefix[6], prefix[7])
            if version not in ((1, 0), (2, 0)):
                raise _fail(path, f"has npy format version {version[0]}.{version[1]}; checkpoints use 1.0 or 2.0", name)
            raw_length = member.read(2 if version == (1, 0) else 4)
            (header_length,) = struct.unpack("<H" if version == (1, 0) else "<I", raw_length)
            if header_length > _MAX_NPY_HEADER:
                raise _fail(path, f"has an npy header of {header_length:,} bytes; at most {_MAX_NPY_HEADER:,} "
                                  "are read", name)
            header = member.read(header_length)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            try:
                shape, fortran_order, dtype = read_header(io.BytesIO(raw_length + header),
                                                          max_header_size=_MAX_NPY_HEADER)
            except (ValueError, TypeError, SyntaxError, RecursionError) as error:
                raise _fail(path, f"has a bad npy header ({error})", name) from None
            if dtype.hasobject:
                raise _fail(path, f"holds pickled Python objects (dtype {dtype}); checkpoints are never "
                                  "unpickled", name)
            if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
                raise _fail(path, f"holds dtype {dtype}, not a numeric array", name)
            if any(extent < 0 for extent in shape):
                raise _fail(path, f"has a negative shape {shape}", name)
            data_bytes = math.prod(shape) * dtype.itemsize
            if data_bytes > limit:
                raise _fail(path, f"declares an array of shape {shape} and dtype {dtype}, {format_bytes(data_bytes)}; "
                                  f"{what} holds at most {format_bytes(limit)}", name)
            held = info.file_size - len(prefix) - len(raw_length) - header_length
            if data_bytes != held:
                raise _fail(path, f"its npy header declares {data_bytes:,} bytes of data (shape {shape}, "
                                  f"dtype {dtype}), but the member holds {held:,} bytes", name)
            array = np.empty(math.prod(shape), dtype)
            view = memoryview(array.view(np.uint8))
            done = 0
            while done < data_bytes:  # in chunks: reading never holds more than one chunk twice
                got = member.readinto(view[done:done + _READ_CHUNK])
                if not got:
                    raise _fail(path, f"is corrupt or truncated: member {name} ends after {done:,} of "
                                      f"{data_bytes:,} bytes")
                done += got
    except CheckpointError:
        raise
    except _DAMAGE as error:
        raise _fail(path, f"is corrupt or truncated: member {name} cannot be read "
                          f"({type(error).__name__}: {error})") from None
    return array.reshape(shape, order="F" if fortran_order else "C")


def _expect(path, key, value, fits, wanted):
    if not fits:
        shown = repr(value) if type(value) in (int, float) else f"a {type(value).__name__}"
        raise _fail(path, f"is malformed: its {key} is {shown}, not {wanted}")


def _read_checkpoint(archive, path):
    members = {info.filename: info for info in archive.infolist()}
    if _MANIFEST + ".npy" not in members:
        raise CheckpointError(f"{path} is not a tinygrad_meta checkpoint (no manifest inside)")
    raw = _read_array(archive, members[_MANIFEST + ".npy"], path, MAX_MANIFEST_BYTES, "a manifest")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _fail(path, f"has a manifest of dtype {raw.dtype} and shape {raw.shape}, not uint8 text")
    try:
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except RecursionError:
        raise _fail(path, f"has a manifest nested deeper than {MAX_MANIFEST_DEPTH} levels") from None
    except ValueError as error:  # not UTF-8, not JSON, an integer of over 4300 digits
        raise _fail(path, f"has a corrupt manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a tinygrad_meta checkpoint")
    if manifest.get("version") != FORMAT_VERSION:
        raise _fail(path, f"has format version {manifest.get('version')!r}; this version reads {FORMAT_VERSION}")
    for key in ("iteration", "config", "param_names", "params", "optimizer_state", "rng_state", "extra"):
        if key not in manifest:
            raise _fail(path, f"is incomplete: missing entry {key!r}")

    arrays, used = {}, set()

    def array(key, where):
        member = key + ".npy"
        if member not in members or member == _MANIFEST + ".npy":
            raise ValueError(f"is incomplete: {where} refers to member {member}, which is not in the archive")
        if key not in arrays:
            arrays[key] = _read_array(archive, members[member], path, MAX_CHECKPOINT_BYTES, "a checkpoint")
        used.add(member)
        return arrays[key]

    iteration, config, names = manifest["iteration"], manifest["config"], manifest["param_names"]
    _expect(path, "iteration", iteration, type(iteration) is int and iteration >= 0, "a non-negative integer")
    _expect(path, "config", config, isinstance(config, dict), "an object (a JSON dict)")
    _expect(path, "param_names", names, isinstance(names, list) and all(isinstance(n, str) for n in names),
            "a list of names")
    try:
        state = {key: _decode(manifest[key], array, key, 2)
                 for key in ("params", "optimizer_state", "rng_state", "extra")}
    except CheckpointError:
        raise
    except ValueError as error:
        raise _fail(path, str(error)) from None
    _expect(path, "params", state["params"], isinstance(state["params"], dict), "an object")
    _expect(path, "rng_state", state["rng_state"], state["rng_state"] is None or isinstance(state["rng_state"], dict),
            "an object or null")
    _expect(path, "extra", state["extra"], isinstance(state["extra"], dict), "an object")
    if sorted(names) != sorted(state["params"]) or len(set(names)) != len(names):
        raise _fail(path, f"is malformed: its param_names {names} do not match its params {sorted(state['params'])}")
    unused = sorted(set(members) - used - {_MANIFEST + ".npy"})
    if unused:
        raise _fail(path, f"holds members its manifest does not mention: {', '.join(unused[:5])}"
                          + (f" and {len(unused) - 5} more" if len(unused) > 5 else ""))
    return Checkpoint(
        # JSON objects keep their order, but be explicit: parameters come back in saved order
        params={name: state["params"][name] for name in names},
        optimizer_state=state["optimizer_state"],
        rng_state=state["rng_state"],
        iteration=iteration,
        config=config,
        extra=state["extra"],
        path=path,
    )


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``, within the limits above.

    In: the ``.npz`` path, or a run folder holding ``checkpoint.npz``.
    Out: a ``Checkpoint``. Raises FileNotFoundError for a missing file or folder,
    ``RunFileError`` when the file cannot be opened, and CheckpointError (naming the file
    and the problem) for a corrupt, truncated, oversized or foreign one.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
        raise FileNotFoundError(f"no checkpoint at {path}")
    with run_file("cannot read checkpoint", path):
        handle = open(path, "rb")
    with handle:
        try:
            with _open_archive(handle, path) as archive:
                return _read_checkpoint(archive, path)
        except CheckpointError:
            raise
        except _DAMAGE as error:
            raise _fail(path, f"is corrupt or truncated and cannot be read ({type(error).__name__}: {error})") from None
