"""Reading a checkpoint is bounded, and every malformed file is a CheckpointError naming it.

Each bad file is built here byte by byte (a small zip writer below), so every field a
reader could trust (sizes, flags, compression method, npy header) is under the test's
control. The zip bombs are about 1 MB on disk and claim over 1 GiB.
"""
import io
import json
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from tinygrad_meta.checkpoint import (MAX_CHECKPOINT_BYTES, MAX_MANIFEST_BYTES, MAX_MANIFEST_DEPTH,
                                      MAX_MEMBERS, CheckpointError, load_checkpoint, restore_generator,
                                      save_checkpoint)

MiB = 2 ** 20


# ---- building files ------------------------------------------------------------------

def zip_bytes(members, end_record=None):
    """A zip archive of ``(name, payload, fields)``: ``payload`` is stored as given;
    ``fields`` may set method, flags, crc and size (the declared uncompressed size),
    which default to an honest stored member."""
    out, directory = bytearray(), bytearray()
    for name, payload, fields in members:
        name = name.encode()
        method, flags = fields.get("method", 0), fields.get("flags", 0)
        crc, size = fields.get("crc", zlib.crc32(payload)), fields.get("size", len(payload))
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, flags, method, 0, 33, crc,
                                 len(payload), size, len(name), 0, 0, 0, 0, 0, len(out)) + name
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 33, crc, len(payload),
                           size, len(name), 0) + name + payload
    count = min(len(members), 0xFFFF)
    fields = dict({"disk": 0, "count": count, "size": len(directory), "offset": len(out)}, **(end_record or {}))
    return bytes(out + directory + struct.pack("<4s4H2LH", b"PK\x05\x06", fields["disk"], 0, count,
                                               fields["count"], fields["size"], fields["offset"], 0))


def npy_header(shape, descr="<f4"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array))
    return buffer.getvalue()


def manifest_member(manifest):
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return ("__manifest__.npy", npy(np.frombuffer(text.encode(), np.uint8)), {})


def good_manifest(params=("a0",)):
    return {"format": "tinygrad_meta checkpoint", "version": 1, "iteration": 3, "config": {"seed": 0},
            "param_names": ["w%d" % i for i in range(len(params))],
            "params": {"__dict__": {"w%d" % i: {"__array__": key} for i, key in enumerate(params)}},
            "optimizer_state": None, "rng_state": None, "extra": {"__dict__": {}}}


def zeros_deflated(mebibytes):
    """A raw deflate stream that inflates to ``mebibytes`` MiB of zero bytes, built from one
    compressed MiB repeated: a full flush makes each copy independent of the ones before."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * mebibytes + compressor.flush()


def write_zip_bomb(path, mebibytes=1100, declared_mebibytes=None):
    """A checkpoint whose one array inflates to ``mebibytes`` MiB of zeros; the zip
    directory declares ``declared_mebibytes`` (default: the truth), and so does the npy
    header. About 1 KB on disk per inflated MiB."""
    declared = mebibytes if declared_mebibytes is None else declared_mebibytes
    header = npy_header((declared * MiB // 4,))
    stream = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = stream.compress(header) + stream.flush(zlib.Z_FULL_FLUSH) + zeros_deflated(mebibytes)
    path.write_bytes(zip_bytes([manifest_member(good_manifest()),
                                ("a0.npy", payload, {"method": 8, "size": len(header) + declared * MiB})]))
    return path


def peak_bytes_while(function):
    """The peak of traced allocations (numpy's buffers included) while ``function`` runs."""
    tracemalloc.start()
    try:
        function()
    except CheckpointError as error:
        return tracemalloc.get_traced_memory()[1], error
    finally:
        tracemalloc.stop()
    raise AssertionError("no CheckpointError")


def rejected(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)  # every message names the file
    return str(info.value)


# ---- the size of what reading allocates -------------------------------------------------

def test_a_zip_bomb_is_rejected_from_its_directory_before_anything_is_inflated(tmp_path):
    path = write_zip_bomb(tmp_path / "bomb.npz")
    assert path.stat().st_size < 2 * MiB
    peak, error = peak_bytes_while(lambda: load_checkpoint(path))
    assert peak < 4 * MiB
    assert "1.1 GiB" in str(error) and "at most 1.0 GiB" in str(error)


def test_a_member_that_inflates_past_its_declared_size_is_cut_off_there(tmp_path):
    # the directory and the npy header say 2 MiB; the stream goes on for 1.1 GiB
    path = write_zip_bomb(tmp_path / "liar.npz", mebibytes=1100, declared_mebibytes=2)
    peak, error = peak_bytes_while(lambda: load_checkpoint(path))
    assert peak < 12 * MiB
    assert "a0.npy" in str(error) and "corrupt or truncated" in str(error)


def test_an_npy_header_claiming_8_tb_is_rejected_before_any_allocation(tmp_path):
    path = tmp_path / "huge.npz"
    path.write_bytes(zip_bytes([manifest_member(good_manifest()),
                                ("a0.npy", npy_header((2 ** 40,), "<f8") + bytes(64), {})]))
    peak, error = peak_bytes_while(lambda: load_checkpoint(path))
    assert peak < 1 * MiB
    assert "a0.npy" in str(error) and "8.0 TiB" in str(error)


def test_a_directory_larger_than_a_checkpoints_is_rejected_from_the_end_record_before_it_is_read(tmp_path):
    # 70,000 entries (a zip's count field stops at 65,535): about 5 MB of directory
    path = tmp_path / "crowd.npz"
    path.write_bytes(zip_bytes([("member-with-a-long-name-%06d.npy" % i, b"", {}) for i in range(70_000)]))
    peak, error = peak_bytes_while(lambda: load_checkpoint(path))
    assert peak < 1 * MiB
    assert f"at most {MAX_MEMBERS} members" in str(error)


def test_an_npy_header_that_lies_about_its_size_is_rejected_before_reading_data(tmp_path):
    for shape, held in [((1000,), 16), ((2,), 4000)]:
        path = tmp_path / f"lie{held}.npz"
        path.write_bytes(zip_bytes([manifest_member(good_manifest()),
                                    ("a0.npy", npy_header(shape) + bytes(held), {})]))
        message = rejected(path, "a0.npy")
        assert f"{held:,} bytes" in message


# ---- malformed archives ----------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04" + bytes(40),
                                     b"\x80\x04K\x01.", npy(np.zeros(3))],
                         ids=["empty", "text", "local-header-only", "pickle", "plain-npy"])
def test_a_file_that_is_not_a_zip_archive_is_rejected(tmp_path, content):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(content)
    rejected(path, "corrupt or truncated")


@pytest.mark.parametrize("fields, match", [
    ({"flags": 0x1}, "encrypted"),
    ({"method": 9}, "compression method 9"),      # deflate64: zipfile cannot read it
    ({"method": 99}, "compression method 99"),    # AES
    ({"method": 12}, "compression method 12"),    # bzip2: readable, but never written by numpy
    ({"flags": 0x20}, "flags 0x20"),              # compressed patched data
])
def test_unsupported_zip_features_are_rejected(tmp_path, fields, match):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(zip_bytes([manifest_member(good_manifest()), ("a0.npy", npy(np.zeros(2)), fields)]))
    message = rejected(path, match)
    assert "a0.npy" in message


def test_an_archive_spanning_disks_or_naming_a_member_twice_is_rejected(tmp_path):
    members = [manifest_member(good_manifest()), ("a0.npy", npy(np.zeros(2)), {})]
    path = tmp_path / "disks.npz"
    path.write_bytes(zip_bytes(members, end_record={"disk": 1}))
    rejected(path, "split over several disks")
    path = tmp_path / "twice.npz"
    path.write_bytes(zip_bytes(members + [("a0.npy", npy(np.ones(2)), {})]))
    rejected(path, "a0.npy.*twice")


@pytest.mark.parametrize("member, match", [
    (b"\x93NUMPX\x01\x00" + bytes(120), "not an npy array"),
    (b"\x93NUMPY\x09\x00" + bytes(120), "npy format version"),
    (b"\x93NUMPY\x01\x00\x08\x00[1, 2] \n", "bad npy header"),
    (b"\x93NUMPY\x01\x00\x20\x00__import__('os').system('x')   \n", "bad npy header"),
    (b"\x93NUMPY\x01\x00\xff\xff" + bytes(100), "npy header of 65,535 bytes"),
    (npy_header((-4,)) + bytes(16), "negative shape"),
    (npy_header((2,), "<q8x") + bytes(16), "bad npy header"),  # not a dtype numpy knows
], ids=["magic", "version", "not-a-dict", "code", "length-past-the-end", "negative-shape", "bad-descr"])
def test_a_bad_npy_header_is_rejected(tmp_path, member, match):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(zip_bytes([manifest_member(good_manifest()), ("a0.npy", member, {})]))
    message = rejected(path, match)
    assert "a0.npy" in message


@pytest.mark.parametrize("descr", ["|O", [("x", "<f4"), ("y", "|O")], "<U5", "|S3", "<M8[s]", [("x", "<f4")]],
                         ids=["object", "struct-with-object", "unicode", "bytes", "datetime", "struct"])
def test_only_numeric_arrays_are_read_and_pickled_objects_never(tmp_path, descr):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(zip_bytes([manifest_member(good_manifest()),
                                ("a0.npy", npy_header((2,), descr) + bytes(64), {})]))
    message = rejected(path, "a0.npy.*(pickled|not a numeric array)")
    assert "pickled" in message if "O" in str(descr) else "not a numeric array" in message


def test_a_member_the_manifest_does_not_mention_is_rejected(tmp_path):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(zip_bytes([manifest_member(good_manifest()), ("a0.npy", npy(np.zeros(2)), {}),
                                ("payload.npy", npy(np.zeros(2)), {})]))
    rejected(path, "payload.npy")


# ---- malformed manifests ---------------------------------------------------------------

def test_a_manifest_nested_too_deep_is_rejected(tmp_path):
    for depth in (100_000, MAX_MANIFEST_DEPTH + 1):
        manifest = json.dumps(good_manifest()).replace('"extra": {"__dict__": {}}',
                                                       '"extra": ' + "[" * depth + "]" * depth)
        path = tmp_path / f"deep{depth}.npz"
        path.write_bytes(zip_bytes([manifest_member(manifest), ("a0.npy", npy(np.zeros(2)), {})]))
        rejected(path, f"nested deeper than {MAX_MANIFEST_DEPTH}")


def test_a_manifest_larger_than_its_limit_is_rejected_from_its_header(tmp_path):
    path = tmp_path / "ckpt.npz"
    header = npy_header((MAX_MANIFEST_BYTES + 1,), "|u1")
    path.write_bytes(zip_bytes([("__manifest__.npy", header, {"size": len(header) + MAX_MANIFEST_BYTES + 1})]))
    rejected(path, "__manifest__.npy.*at most 16.0 MiB")


def _edit(key, value):
    def edit(manifest):
        manifest[key] = value
    return edit


def _set_node(value):
    def edit(manifest):
        manifest["params"]["__dict__"]["w0"] = value
    return edit


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.clear() or m.update(items=[1, 2]), "not a tinygrad_meta checkpoint"),
    (_edit("config", [1, 2]), "config is a list, not an object"),
    (_edit("iteration", "3"), "iteration is a str, not a non-negative integer"),
    (_edit("iteration", -1), "iteration is -1"),
    (_edit("iteration", True), "iteration is a bool"),
    (_edit("param_names", 5), "param_names"),
    (_edit("param_names", ["w0", "w1"]), "param_names .* do not match"),
    (_edit("params", [1]), "params is a list"),
    (_edit("extra", [1]), "extra is a list"),
    (_edit("rng_state", [1]), "rng_state is a list"),
    (_set_node({"__array__": []}), r"params\['w0'\]"),
    (_set_node({"__array__": "a7"}), "a7.npy, which is not in the archive"),
    (_set_node({"__tuple__": 5}), r"params\['w0'\]"),
    (_set_node({"__dict__": [1]}), r"params\['w0'\]"),
    (_set_node({"__scalar__": "a0"}), "not a scalar"),
    (_set_node({"what": 1}), "unknown node"),
], ids=["top-level-not-a-checkpoint", "config-list", "iteration-str", "iteration-negative", "iteration-bool",
        "param-names-int", "param-names-mismatch", "params-list", "extra-list", "rng-list", "array-key-list",
        "array-missing", "tuple-int", "dict-list", "scalar-of-an-array", "unknown-node"])
def test_a_manifest_of_the_wrong_shape_is_rejected(tmp_path, edit, match):
    manifest = good_manifest()
    edit(manifest)
    path = tmp_path / "ckpt.npz"
    path.write_bytes(zip_bytes([manifest_member(manifest), ("a0.npy", npy(np.zeros(2)), {})]))
    rejected(path, match)


def test_a_top_level_manifest_that_is_not_an_object_is_rejected(tmp_path):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(zip_bytes([manifest_member("[1, 2]")]))
    rejected(path, "not a tinygrad_meta checkpoint")


def test_a_manifest_that_is_not_json_text_is_rejected(tmp_path):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(zip_bytes([manifest_member("[" + "9" * 5000 + "]")]))
    rejected(path, "corrupt manifest")
    path.write_bytes(zip_bytes([("__manifest__.npy", npy(np.zeros(3)), {})]))
    rejected(path, "manifest .*uint8")


def test_a_generator_state_that_is_not_a_numpy_bit_generator_is_rejected():
    with pytest.raises(CheckpointError, match="unknown bit generator 'Generator'"):
        restore_generator({"bit_generator": "Generator", "state": {}})
    with pytest.raises(CheckpointError, match="PCG64 state"):
        restore_generator({"bit_generator": "PCG64", "state": "not a state"})


# ---- the writer refuses what the reader would reject ------------------------------------

def test_saving_refuses_state_the_reader_would_reject_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params={"w": np.zeros(2)}, iteration=1)
    before = path.read_bytes()
    deep = []
    for _ in range(MAX_MANIFEST_DEPTH):
        deep = [deep]
    too_big = np.broadcast_to(np.zeros(1, np.float32), (MAX_CHECKPOINT_BYTES // 4 + 1,))  # no memory behind it
    cases = [({"extra": {"deep": deep}}, f"deeper than {MAX_MANIFEST_DEPTH}"),
             ({"optimizer_state": {"big": too_big}}, "at most 1.0 GiB"),
             ({"config": {"text": "x" * (MAX_MANIFEST_BYTES + 1)}}, "at most 16.0 MiB"),
             ({"optimizer_state": {f"s{i}": np.zeros(1) for i in range(MAX_MEMBERS)}}, f"at most {MAX_MEMBERS}")]
    for settings, match in cases:
        with pytest.raises(ValueError, match=match):
            save_checkpoint(path, params={"w": np.ones(2)}, iteration=2, **settings)
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def test_a_compressed_checkpoint_still_loads(tmp_path):
    # np.savez_compressed writes the same members, deflated: a legitimate variant
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params={"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, iteration=4)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    loaded = load_checkpoint(path)
    assert loaded.iteration == 4 and loaded.params["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert loaded.params["w"].flags.writeable
