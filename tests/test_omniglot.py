"""The Omniglot loader reads the official files, splits them as documented, caches, and fails clearly.

Tests marked by the ``minimal_dir`` fixture run twice: on the real minimal sets in
``../shared/data/omniglot`` (or ``$TGM_OMNIGLOT_DIR``), skipped when absent, and on a small
generated fixture in the same layout. ``TGM_OMNIGLOT_FIXTURE=1`` skips the real data.
"""
import io
import json
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the Omniglot loader decodes PNGs with Pillow (the vision extra)")

from omniglot_fixture import FULL_LAYOUT, MINIMAL_LAYOUT, write_omniglot_fixture  # noqa: E402
from PIL import Image  # noqa: E402
from tinygrad_meta.tasks import omniglot  # noqa: E402
from tinygrad_meta.tasks.episodes import EpisodeSampler  # noqa: E402
from tinygrad_meta.tasks.omniglot import MINIMAL_SETS, find_sets, load_omniglot, load_set  # noqa: E402

REAL_DIR = Path(os.environ.get("TGM_OMNIGLOT_DIR")
                or Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot")
FORCE_FIXTURE = os.environ.get("TGM_OMNIGLOT_FIXTURE", "0") not in ("", "0")
HAVE_REAL = not FORCE_FIXTURE and all((REAL_DIR / f"{name}.zip").is_file() for name in MINIMAL_SETS)
needs_real = pytest.mark.skipif(not HAVE_REAL, reason=f"real Omniglot minimal sets not in {REAL_DIR}"
                                if not FORCE_FIXTURE else "TGM_OMNIGLOT_FIXTURE=1")


class Loaded:
    """A minimal-set folder, the cache the session decoded it into, and how long that took."""

    def __init__(self, data_dir, cache_dir):
        self.data_dir, self.cache_dir = data_dir, cache_dir
        start = time.perf_counter()
        self.splits = load_omniglot(data_dir, cache_dir=cache_dir)
        self.first_seconds = time.perf_counter() - start


@pytest.fixture(scope="session")
def generated_minimal(tmp_path_factory, fixture_dir):
    return Loaded(fixture_dir, tmp_path_factory.mktemp("cache-generated"))


@pytest.fixture(scope="session")
def real_minimal(tmp_path_factory):
    if not HAVE_REAL:
        pytest.skip(f"real Omniglot minimal sets not in {REAL_DIR}" if not FORCE_FIXTURE
                    else "TGM_OMNIGLOT_FIXTURE=1")
    return Loaded(REAL_DIR, tmp_path_factory.mktemp("cache-real"))


@pytest.fixture(params=["real", "generated"])
def minimal(request):
    return request.getfixturevalue(f"{request.param}_minimal")


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory):
    """The generated minimal sets as zips; shared, so tests must not change them."""
    return write_omniglot_fixture(tmp_path_factory.mktemp("omniglot-zips"))


@pytest.fixture(scope="session")
def unpacked_dir(tmp_path_factory):
    """The same sets unpacked into folders; shared, so tests must not change them."""
    return write_omniglot_fixture(tmp_path_factory.mktemp("omniglot-folders"), unpacked=True)


@pytest.fixture(scope="session")
def full_dir(tmp_path_factory):
    """A generated full set (images_background + images_evaluation zips, 26 characters); shared."""
    return write_omniglot_fixture(tmp_path_factory.mktemp("omniglot-full"), FULL_LAYOUT)


@pytest.fixture
def own_unpacked_dir(tmp_path, unpacked_dir):
    """A copy of the unpacked small1 set that a test may change."""
    name = "images_background_small1"
    shutil.copytree(unpacked_dir / name, tmp_path / "data" / name)
    return tmp_path / "data"


# ---------------------------------------------------------------------------------------------
# Splits, pixels and episodes, on the real data and on the generated fixture


def test_minimal_split_trains_on_small1_and_tests_on_the_alphabets_small2_adds(minimal):
    splits = minimal.splits
    alphabets = {split: {name.split("/")[0] for name in splits[split].names} for split in ("train", "val", "test")}
    small1 = set(MINIMAL_LAYOUT["images_background_small1"])
    small2 = set(MINIMAL_LAYOUT["images_background_small2"])
    assert alphabets["train"] <= small1 and alphabets["val"] <= small1
    assert alphabets["test"] == small2 - small1 == {"Japanese_(katakana)", "Sanskrit", "Tagalog"}
    assert not set(splits.train.names) & set(splits.val.names)
    assert splits.train.rotations == (0, 90, 180, 270)
    assert splits.val.rotations == (0,) and splits.test.rotations == (0,)


def test_episodes_are_float32_in_0_1_with_strokes_1_and_paper_0(minimal):
    sampler = EpisodeSampler(minimal.splits.train, ways=5, shots=1, queries=5, meta_batch_size=4, seed=0)
    support_x, support_y, query_x, query_y = sampler.sample()
    assert support_x.shape == (4, 5, 1, 28, 28) and query_x.shape == (4, 25, 1, 28, 28)
    assert support_x.dtype == np.float32 and support_y.dtype == np.int64
    assert support_x.min() == 0.0 and support_x.max() == 1.0
    # the default (nearest) resize keeps Omniglot's two colours; strokes are the minority
    assert set(np.unique(query_x)) == {0.0, 1.0}
    assert 0.02 < query_x.mean() < 0.3


def test_cached_load_gives_the_same_arrays_faster(minimal):
    start = time.perf_counter()
    again = load_omniglot(minimal.data_dir, cache_dir=minimal.cache_dir)
    cached_seconds = time.perf_counter() - start
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(again[split].images, minimal.splits[split].images)
        assert again[split].names == minimal.splits[split].names
    print(f"\nOmniglot minimal sets from {minimal.data_dir}: first load {minimal.first_seconds:.2f} s, "
          f"cached {cached_seconds:.3f} s")
    assert cached_seconds < max(0.5, minimal.first_seconds / 3)


# ---------------------------------------------------------------------------------------------
# The real minimal sets


@needs_real
def test_real_minimal_split_sizes(real_minimal):
    splits = real_minimal.splits
    assert (len(splits.train.names), len(splits.val.names), len(splits.test.names)) == (116, 20, 106)
    assert (splits.train.num_classes, splits.val.num_classes, splits.test.num_classes) == (464, 20, 106)
    assert splits.train.images.shape[1:] == (20, 28, 28)


@needs_real
def test_nearest_resize_gives_the_pixels_of_mamls_resize_script(real_minimal):
    # MAML's data/omniglot_resized/resize_images.py: Image.open(f).resize((28, 28), LANCZOS), inverted
    decoded = load_set(REAL_DIR / "images_background_small1.zip", cache_dir=real_minimal.cache_dir)
    with zipfile.ZipFile(REAL_DIR / "images_background_small1.zip") as archive:
        members = sorted(name for name in archive.namelist() if name.endswith(".png"))
        for index in range(0, len(members), 97):
            with Image.open(io.BytesIO(archive.read(members[index]))) as image:
                theirs = 1.0 - np.asarray(image.resize((28, 28), resample=Image.LANCZOS), np.float32)
            ours = decoded.images[index // 20, index % 20] / np.float32(255)
            np.testing.assert_array_equal(ours, theirs, err_msg=members[index])


# ---------------------------------------------------------------------------------------------
# Sources: zips, folders, and which set a folder holds


def test_unpacked_folders_decode_like_the_zips(fixture_dir, unpacked_dir):
    from_zips = load_omniglot(fixture_dir, cache_dir=False)
    from_folders = load_omniglot(unpacked_dir, cache_dir=False)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(from_folders[split].images, from_zips[split].images)
        assert from_folders[split].names == from_zips[split].names


def test_a_set_folder_nested_once_more_by_an_unzip_tool_is_found(tmp_path, fixture_dir, unpacked_dir):
    nested = tmp_path / "nested" / "images_background_small1"
    shutil.copytree(unpacked_dir / "images_background_small1", nested / "images_background_small1")
    expected = load_set(fixture_dir / "images_background_small1.zip", cache_dir=False)
    np.testing.assert_array_equal(load_set(nested, cache_dir=False).images, expected.images)


def test_auto_picks_the_full_set_when_both_are_present(tmp_path, fixture_dir, full_dir):
    for zip_file in list(fixture_dir.glob("*.zip")) + list(full_dir.glob("*.zip")):
        shutil.copy(zip_file, tmp_path)
    splits = load_omniglot(tmp_path, cache_dir=False, num_train=12, num_val=4)
    assert splits.description.startswith("Omniglot full set")
    assert load_omniglot(tmp_path, variant="minimal", cache_dir=False).description.startswith("Omniglot minimal")


def test_full_split_shuffles_both_sets_into_train_val_test(full_dir, tmp_path):
    def split(**settings):
        return load_omniglot(full_dir, variant="full", cache_dir=tmp_path, num_train=12, num_val=4, **settings)

    splits = split()
    names = [set(splits[part].names) for part in ("train", "val", "test")]
    assert [len(n) for n in names] == [12, 4, 10]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    every = {f"{alphabet}/character{i:02d}" for alphabets in FULL_LAYOUT.values()
             for alphabet, count in alphabets.items() for i in range(1, count + 1)}
    assert names[0] | names[1] | names[2] == every
    assert splits.train.num_classes == 48 and splits.train.rotations == (0, 90, 180, 270)
    assert splits.val.rotations == (0,) and splits.test.rotations == (0,)
    # the same seed gives the same split on every call; another seed another split
    assert split().train.names == splits.train.names
    assert split(split_seed=2).train.names != splits.train.names


def test_full_split_with_the_default_sizes_needs_more_than_1200_characters(full_dir):
    with pytest.raises(ValueError, match="has 26 characters: not enough for 1100 meta-train"):
        load_omniglot(full_dir, cache_dir=False)


def test_rotations_can_cover_every_split_or_none(generated_minimal):
    data_dir, cache_dir = generated_minimal.data_dir, generated_minimal.cache_dir
    upright = load_omniglot(data_dir, cache_dir=cache_dir, rotations="none")
    assert [upright[s].rotations for s in ("train", "val", "test")] == [(0,)] * 3
    turned = load_omniglot(data_dir, cache_dir=cache_dir, rotations="all")
    assert [turned[s].rotations for s in ("train", "val", "test")] == [(0, 90, 180, 270)] * 3
    assert turned.test.num_classes == 4 * len(turned.test.names)
    with pytest.raises(ValueError, match="rotations must be one of"):
        load_omniglot(data_dir, cache_dir=cache_dir, rotations=True)


# ---------------------------------------------------------------------------------------------
# The cache


def _count_decodes(monkeypatch):
    calls = []
    original = omniglot._decode_source

    def counting(*args, **kwargs):
        calls.append(args[0].path)
        return original(*args, **kwargs)

    monkeypatch.setattr(omniglot, "_decode_source", counting)
    return calls


def test_second_load_reads_the_cache_without_decoding(tmp_path, fixture_dir, monkeypatch):
    source = fixture_dir / "images_background_small1.zip"
    first = load_set(source, cache_dir=tmp_path / "cache")
    calls = _count_decodes(monkeypatch)
    second = load_set(source, cache_dir=tmp_path / "cache")
    assert calls == []
    np.testing.assert_array_equal(second.images, first.images)


def test_a_changed_zip_rebuilds_the_cache(tmp_path, fixture_dir, monkeypatch):
    source = Path(shutil.copy(fixture_dir / "images_background_small1.zip", tmp_path))
    load_set(source, cache_dir=tmp_path / "cache")
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    calls = _count_decodes(monkeypatch)
    load_set(source, cache_dir=tmp_path / "cache")
    assert calls == [source.resolve()]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1        # replaced, not piled up


def test_a_changed_png_in_a_folder_rebuilds_the_cache(tmp_path, own_unpacked_dir, monkeypatch):
    folder = own_unpacked_dir / "images_background_small1"
    before = load_set(folder, cache_dir=tmp_path / "cache")
    png = sorted(folder.glob("Greek/character01/*.png"))[0]
    Image.new("1", (105, 105), 1).save(png)                         # a blank drawing now
    calls = _count_decodes(monkeypatch)
    after = load_set(folder, cache_dir=tmp_path / "cache")
    assert len(calls) == 1
    index = after.names.index("Greek/character01")
    assert after.images[index, 0].max() == 0 and before.images[index, 0].max() == 255


def test_resize_settings_are_part_of_the_cache_key(tmp_path, fixture_dir):
    source = fixture_dir / "images_background_small1.zip"
    nearest = load_set(source, cache_dir=tmp_path)
    lanczos = load_set(source, cache_dir=tmp_path, resample="lanczos")
    bigger = load_set(source, cache_dir=tmp_path, image_size=32)
    assert set(np.unique(nearest.images)) == {0, 255}
    assert len(np.unique(lanczos.images)) > 2                        # anti-aliased grey
    assert bigger.images.shape[2:] == (32, 32)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_a_corrupt_cache_is_rebuilt_not_trusted(tmp_path, fixture_dir, monkeypatch):
    source = fixture_dir / "images_background_small1.zip"
    expected = load_set(source, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:1000])           # truncated
    calls = _count_decodes(monkeypatch)
    np.testing.assert_array_equal(load_set(source, cache_dir=tmp_path).images, expected.images)
    assert len(calls) == 1
    np.testing.assert_array_equal(load_set(source, cache_dir=tmp_path).images, expected.images)
    assert len(calls) == 1                                           # and the rewritten cache is used


def test_a_cache_of_another_format_version_is_rebuilt(tmp_path, fixture_dir, monkeypatch):
    source = fixture_dir / "images_background_small1.zip"
    load_set(source, cache_dir=tmp_path)
    monkeypatch.setattr(omniglot, "CACHE_FORMAT", omniglot.CACHE_FORMAT + 1)
    calls = _count_decodes(monkeypatch)
    load_set(source, cache_dir=tmp_path)
    assert len(calls) == 1


def test_the_default_cache_folder_follows_tgm_cache_dir(tmp_path, fixture_dir, monkeypatch):
    monkeypatch.setenv("TGM_CACHE_DIR", str(tmp_path / "mine"))
    load_set(fixture_dir / "images_background_small1.zip")
    assert len(list((tmp_path / "mine" / "omniglot").glob("images_background_small1-28px-nearest-*.npz"))) == 1


def test_the_cache_is_read_without_pillow(tmp_path, fixture_dir, monkeypatch):
    source = fixture_dir / "images_background_small1.zip"
    expected = load_set(source, cache_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)
    np.testing.assert_array_equal(load_set(source, cache_dir=tmp_path).images, expected.images)


# ---------------------------------------------------------------------------------------------
# Clear errors


def test_a_missing_data_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Omniglot data folder {tmp_path / 'nowhere'} does not exist"):
        load_omniglot(tmp_path / "nowhere")


def test_a_folder_without_the_sets_says_what_it_needs(tmp_path):
    (tmp_path / "README.md").write_text("hello")
    with pytest.raises(FileNotFoundError, match="holds neither the full Omniglot set.*images_background_small1"):
        load_omniglot(tmp_path)
    with pytest.raises(FileNotFoundError, match="lacks images_background, images_evaluation"):
        load_omniglot(tmp_path, variant="full")


def test_a_missing_set_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="images_background.zip does not exist"):
        load_set(tmp_path / "images_background.zip")


def test_a_zip_that_is_not_omniglot_is_refused(tmp_path):
    fake = tmp_path / "images_background_small1.zip"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("photos/cat.png", b"not really")
        archive.writestr("README.txt", "hello")
    with pytest.raises(ValueError, match=r"images_background_small1.zip is not an Omniglot zip: member "
                                         r"'photos/cat.png' is not laid out as"):
        load_set(fake, cache_dir=False)
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("README.txt", "hello")
    with pytest.raises(ValueError, match=r"not an Omniglot zip: no members laid out as .* \['README.txt'\]"):
        load_set(fake, cache_dir=False)


def test_a_file_that_is_not_a_zip_is_refused(tmp_path):
    fake = tmp_path / "images_background_small1.zip"
    fake.write_text("<html>404 not found</html>")
    with pytest.raises(ValueError, match="images_background_small1.zip is not a readable zip file"):
        load_set(fake, cache_dir=False)


def test_a_corrupt_png_is_named(tmp_path, fixture_dir):
    source = fixture_dir / "images_background_small2.zip"
    broken = tmp_path / "images_background_small2.zip"
    victim = "images_background_small2/Sanskrit/character02/"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(broken, "w") as copy:
        for info in original.infolist():
            data = original.read(info)
            if info.filename.startswith(victim) and info.filename.endswith("_05.png"):
                bad_member, data = info.filename, data[:40] + b"\0" * 60   # a PNG header, then garbage
            copy.writestr(info, data)
    with pytest.raises(ValueError, match=f"{bad_member} in {broken}: corrupt or unreadable PNG"):
        load_set(broken, cache_dir=False)


def test_a_corrupt_png_in_a_folder_is_named(own_unpacked_dir):
    root = own_unpacked_dir
    png = sorted((root / "images_background_small1" / "Korean" / "character03").glob("*.png"))[2]
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk")
    with pytest.raises(ValueError, match=f"{png}: corrupt or unreadable PNG"):
        load_set(root / "images_background_small1", cache_dir=False)


def test_a_character_with_a_missing_drawing_is_named(own_unpacked_dir):
    root = own_unpacked_dir
    sorted((root / "images_background_small1" / "Latin" / "character02").glob("*.png"))[0].unlink()
    with pytest.raises(ValueError, match="character Latin/character02 has 19 drawings, most have 20"):
        load_set(root / "images_background_small1", cache_dir=False)


def test_missing_pillow_names_the_vision_extra(tmp_path, fixture_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'needs Pillow, the optional "vision" extra: '
                                          r'pip install "tinygrad-meta\[vision\]"'):
        load_set(fixture_dir / "images_background_small1.zip", cache_dir=tmp_path)


def test_more_ways_or_shots_than_a_split_holds_are_refused_with_the_counts(generated_minimal):
    test = generated_minimal.splits.test                              # 9 characters, unrotated
    with pytest.raises(ValueError, match=r"20-way episodes need 20 classes, but split 'test' has 9 "
                                         r"\(9 characters x 1 rotations\)"):
        EpisodeSampler(test, ways=20, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"10 shots \+ 15 queries need 25 drawings per class, but split "
                                         r"'test' has 20 per class"):
        EpisodeSampler(test, ways=5, shots=10, queries=15)


def test_bad_settings_are_refused(fixture_dir):
    with pytest.raises(ValueError, match="resample must be one of"):
        load_set(fixture_dir / "images_background_small1.zip", resample="bicubic")
    with pytest.raises(ValueError, match="variant must be 'auto', 'full' or 'minimal'"):
        load_omniglot(fixture_dir, variant="large")
    with pytest.raises(ValueError, match="has 26 characters: not enough for 1 meta-train \\+ 26 validation"):
        load_omniglot(fixture_dir, num_val=26, cache_dir=False)


def test_find_sets_prefers_an_unpacked_folder_to_its_zip(tmp_path, fixture_dir):
    shutil.copy(fixture_dir / "images_background_small2.zip", tmp_path)
    write_omniglot_fixture(tmp_path, {"images_background_small1": {"Greek": 1}}, unpacked=True)
    found = find_sets(tmp_path)
    assert found["images_background_small1"].is_dir()
    assert found["images_background_small2"].name == "images_background_small2.zip"


def test_the_state_of_a_sampler_on_omniglot_survives_json(generated_minimal):
    sampler = EpisodeSampler(generated_minimal.splits.train, ways=5, shots=1, queries=2, meta_batch_size=3, seed=7)
    sampler.sample()
    saved = json.loads(json.dumps(sampler.state()))
    expected = sampler.sample()
    resumed = EpisodeSampler(generated_minimal.splits.train, ways=5, shots=1, queries=2, meta_batch_size=3, seed=0)
    resumed.set_state(saved)
    for got, want in zip(resumed.sample(), expected):
        np.testing.assert_array_equal(got, want)


def test_a_folder_that_is_not_an_omniglot_set_is_refused(tmp_path):
    (tmp_path / "images_background_small1" / "notes").mkdir(parents=True)
    (tmp_path / "images_background_small1" / "notes" / "todo.txt").write_text("hello")
    with pytest.raises(ValueError, match="images_background_small1 is not an Omniglot set folder"):
        load_set(tmp_path / "images_background_small1", cache_dir=False)
