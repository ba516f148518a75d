"""Glyphs, the offline stand-in for Omniglot: enough classes, deterministic, learnable, varied."""
import time

import numpy as np
import pytest

from tinygrad_meta.tasks.episodes import EpisodeSampler
from tinygrad_meta.tasks.glyphs import DRAWINGS, NUM_CLASSES, glyph_splits, make_glyphs


@pytest.fixture(scope="module")
def default_splits():
    """glyph_splits() with the defaults, generated once for the module, and how long it took."""
    start = time.perf_counter()
    splits = glyph_splits()
    seconds = time.perf_counter() - start
    print(f"\nglyph_splits(): {NUM_CLASSES} classes x {DRAWINGS} drawings in {seconds:.2f} s")
    return splits, seconds


@pytest.fixture(scope="module")
def full_set(default_splits):
    splits, seconds = default_splits
    return np.concatenate([splits.train.images, splits.val.images, splits.test.images]), seconds


def test_the_default_set_has_at_least_1600_classes_of_20_drawings_in_seconds(full_set):
    images, seconds = full_set
    assert NUM_CLASSES >= 1600 and DRAWINGS == 20
    assert images.shape == (NUM_CLASSES, 20, 28, 28) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert seconds < 30                        # 2-4 s on the project's shared 2-core machine


def test_every_drawing_has_strokes_on_empty_paper_inside_the_frame(full_set):
    images, _ = full_set
    ink = images.sum(axis=(2, 3))
    assert ink.min() > 5                                         # no blank drawings
    assert 0.03 < images.mean() < 0.2                            # mostly paper, as Omniglot
    border = np.concatenate([images[:, :, [0, -1], :].reshape(-1, 56), images[:, :, :, [0, -1]].reshape(-1, 56)], 1)
    assert (border.max(axis=1) > 0.5).mean() < 0.05              # strokes rarely reach the edge


def test_generation_is_bit_for_bit_deterministic_and_prefix_stable():
    first, second = make_glyphs(70, seed=3), make_glyphs(70, seed=3)          # two 64-class blocks
    assert first.tobytes() == second.tobytes()
    assert make_glyphs(10, seed=3).tobytes() == first[:10].tobytes()
    assert not np.array_equal(make_glyphs(10, seed=4), first[:10])


def test_drawings_of_a_class_vary_but_stay_closer_to_each_other_than_to_other_classes(full_set):
    images = full_set[0][:200].reshape(200, 20, -1).astype(np.float64)
    # no two drawings of a class are the same (jitter + affine distortion)
    for drawings in images[:50]:
        distances = ((drawings[:, None] - drawings[None]) ** 2).sum(-1)
        assert distances[~np.eye(20, dtype=bool)].min() > 1.0
    means = images.mean(axis=1)
    own = ((images - means[:, None]) ** 2).sum(-1).mean()
    other = ((images - np.roll(means, 1, axis=0)[:, None]) ** 2).sum(-1).mean()
    assert own < 0.7 * other


def test_a_nearest_class_mean_on_raw_pixels_beats_chance_by_far_on_5_way_episodes(default_splits):
    splits = default_splits[0]
    tasks = 300
    for shots, floor in ((1, 0.45), (5, 0.65)):                  # chance is 0.2; measured 0.58 and 0.79
        sampler = EpisodeSampler(splits.test, ways=5, shots=shots, queries=5, meta_batch_size=tasks, seed=0)
        support_x, _, query_x, query_y = sampler.sample()
        means = support_x.reshape(tasks, 5, shots, -1).mean(axis=2)
        distances = ((query_x.reshape(tasks, 25, 1, -1) - means[:, None]) ** 2).sum(-1)
        assert (distances.argmin(-1) == query_y).mean() > floor


def test_splits_are_sized_like_omniglot_with_rotations_only_for_meta_training(default_splits):
    splits = default_splits[0]
    assert (len(splits.train.names), len(splits.val.names), len(splits.test.names)) == (1100, 100, 423)
    assert splits.train.num_classes == 4400
    assert splits.train.rotations == (0, 90, 180, 270)
    assert splits.val.rotations == (0,) and splits.test.rotations == (0,)
    # the classes in order: meta-train first (make_glyphs' prefix), meta-test last
    np.testing.assert_array_equal(splits.train.images[:70], make_glyphs(70))
    assert not set(splits.train.names) & set(splits.test.names)
    upright = glyph_splits(60, num_train=40, num_val=10, rotations="none")
    assert upright.train.num_classes == 40 and upright.test.num_classes == 10
    assert glyph_splits(60, num_train=40, num_val=10, rotations="all").test.num_classes == 40


@pytest.mark.parametrize("settings, message", [
    ({"num_classes": 0}, "num_classes must be a positive integer"),
    ({"drawings": 2.0}, "drawings must be a positive integer"),
    ({"seed": -1}, "seed must be a non-negative integer")])
def test_bad_generation_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        make_glyphs(**settings)


def test_splits_need_classes_left_for_testing():
    with pytest.raises(ValueError, match="300 classes are not enough for 250 meta-train \\+ 50 validation"):
        glyph_splits(300, num_train=250, num_val=50)
