"""Checkpoints round-trip exactly, are written atomically, and reject damaged files."""
import os
import zipfile

import numpy as np
import pytest

from tinygrad_meta.checkpoint import (CHECKPOINT_NAME, CheckpointError, generator_state,
                                      load_checkpoint, restore_generator, save_checkpoint)


def _state(rng):
    params = {"layers.0.weight": rng.standard_normal((1, 40)).astype(np.float32),
              "layers.0.bias": rng.standard_normal(40).astype(np.float32),
              "layers.1.weight": rng.standard_normal((40, 1)).astype(np.float32)}
    optimizer = {"hyper.lr": np.asarray(1e-3), "step": np.asarray(17, dtype=np.int64),
                 "m.layers.0.weight": rng.standard_normal((1, 40)).astype(np.float32),
                 "nested": {"betas": (0.9, 0.999), "count": 3, "name": "adam", "none": None}}
    return params, optimizer


def _save(path, rng=None, iteration=12, config=None):
    rng = rng or np.random.default_rng(0)
    params, optimizer = _state(rng)
    save_checkpoint(path, params=params, optimizer_state=optimizer,
                    rng_state={"tasks": generator_state(rng)}, iteration=iteration,
                    config=config or {"algo": "maml", "shots": 10, "hidden": [40, 40]})
    return params, optimizer


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    rng.standard_normal(5)
    path = tmp_path / "ckpt.npz"
    params, optimizer = _save(path, rng)
    expected_next = np.random.Generator(type(rng.bit_generator)())
    expected_next.bit_generator.state = rng.bit_generator.state
    loaded = load_checkpoint(path)
    assert list(loaded.params) == list(params)  # order kept
    for name in params:
        assert loaded.params[name].dtype == params[name].dtype
        assert np.array_equal(loaded.params[name], params[name])
    assert loaded.optimizer_state["step"] == 17 and loaded.optimizer_state["step"].dtype == np.int64
    assert np.array_equal(loaded.optimizer_state["m.layers.0.weight"], optimizer["m.layers.0.weight"])
    assert loaded.optimizer_state["nested"] == {"betas": (0.9, 0.999), "count": 3, "name": "adam", "none": None}
    assert loaded.iteration == 12
    assert loaded.config == {"algo": "maml", "shots": 10, "hidden": [40, 40]}
    # the restored generator continues the saved stream exactly
    restored = restore_generator(loaded.rng_state["tasks"])
    assert np.array_equal(restored.uniform(size=10), expected_next.uniform(size=10))


def test_loading_a_run_folder_finds_its_checkpoint(tmp_path):
    _save(tmp_path / CHECKPOINT_NAME)
    assert load_checkpoint(tmp_path).iteration == 12


def test_archive_needs_no_pickle(tmp_path):
    path = tmp_path / "ckpt.npz"
    _save(path)
    with np.load(path, allow_pickle=False) as archive:
        for name in archive.files:
            assert archive[name].dtype != object


def test_saving_leaves_no_temporary_files(tmp_path):
    for iteration in range(3):
        _save(tmp_path / "ckpt.npz", iteration=iteration)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    _save(path, iteration=5)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint(path, params={"w": np.zeros(2)}, optimizer_state={"bad": object()}, iteration=6)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_truncated_file_is_rejected_and_left_alone(tmp_path):
    path = tmp_path / "ckpt.npz"
    _save(path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"ckpt\.npz is corrupt or truncated"):
            load_checkpoint(path)
        assert path.read_bytes() == data[:cut]  # loading never rewrites the file


def test_flipped_bytes_in_an_array_are_caught(tmp_path):
    path = tmp_path / "ckpt.npz"
    _save(path)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("a0.npy")
    data = bytearray(path.read_bytes())
    # the member's data starts after its local header: 30 bytes, then the name and the
    # extra field, whose lengths sit at bytes 26-29. Flip a byte near the end of the
    # data, inside the float payload, so that only the CRC can notice.
    name_length, extra_length = np.frombuffer(bytes(data[info.header_offset + 26:info.header_offset + 30]), "<u2")
    start = info.header_offset + 30 + int(name_length) + int(extra_length)
    offset = start + info.file_size - 8
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_a_foreign_npz_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a tinygrad_meta checkpoint"):
        load_checkpoint(path)


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nothing.npz"):
        load_checkpoint(tmp_path / "nothing.npz")
    with pytest.raises(FileNotFoundError, match="folder .*missing-run does not exist"):
        load_checkpoint(tmp_path / "missing-run" / CHECKPOINT_NAME)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_checkpoint(tmp_path / "missing-run" / CHECKPOINT_NAME, params={"w": np.zeros(1)})
