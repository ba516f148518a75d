"""The episode sampler draws N-way K-shot Q-query task batches as specified, seeded and resumable."""
import json

import numpy as np
import pytest

from tinygrad_meta.tasks.episodes import ClassPool, EpisodeSampler, Episodes, FewShotSplits, split_rotations


def labelled_pool(characters=12, drawings=20, rotations=(0,)):
    """A float32 pool whose drawing (c, d) is blank except one pixel that encodes c and d,
    placed off the diagonals so that every rotation moves it somewhere recognisable."""
    images = np.zeros((characters, drawings, 28, 28), np.float32)
    for c in range(characters):
        for d in range(drawings):
            images[c, d, 3, 7] = (1 + c * drawings + d) / (characters * drawings + 1)
    return ClassPool(images, tuple(f"char{c}" for c in range(characters)), rotations, "toy")


def identify(pool, image):
    """(character, drawing, angle) of a sampled (1, 28, 28) image of ``labelled_pool``."""
    for angle in (0, 90, 180, 270):
        upright = np.rot90(image[0], -angle // 90)
        if upright[3, 7] > 0:
            code = int(round(upright[3, 7] * (pool.images.shape[0] * pool.drawings + 1))) - 1
            return code // pool.drawings, code % pool.drawings, angle
    raise AssertionError("no marker pixel")


def test_batches_have_the_documented_shapes_and_dtypes():
    sampler = EpisodeSampler(labelled_pool(), ways=5, shots=3, queries=4, meta_batch_size=6, seed=0)
    episodes = sampler.sample()
    assert isinstance(episodes, Episodes)
    support_x, support_y, query_x, query_y = episodes
    assert support_x.shape == (6, 15, 1, 28, 28) and support_x.dtype == np.float32
    assert query_x.shape == (6, 20, 1, 28, 28) and query_x.dtype == np.float32
    assert support_y.shape == (6, 15) and query_y.shape == (6, 20)
    assert support_y.dtype == np.int64 and query_y.dtype == np.int64
    assert support_x.flags.c_contiguous and query_x.flags.c_contiguous


def test_examples_are_laid_out_class_by_class_with_labels_0_to_n_minus_1():
    sampler = EpisodeSampler(labelled_pool(), ways=4, shots=2, queries=3, meta_batch_size=2, seed=0)
    _, support_y, _, query_y = sampler.sample()
    np.testing.assert_array_equal(support_y, [[0, 0, 1, 1, 2, 2, 3, 3]] * 2)
    np.testing.assert_array_equal(query_y, [[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]] * 2)


def test_each_label_holds_its_class_and_support_and_query_drawings_are_disjoint():
    pool = labelled_pool()
    sampler = EpisodeSampler(pool, ways=5, shots=2, queries=3, meta_batch_size=8, seed=1)
    (support_x, support_y, query_x, query_y), classes = sampler.sample(return_classes=True)
    for t in range(8):
        assert len(set(classes[t])) == 5                                 # distinct classes
        seen = {}
        for images, labels in ((support_x[t], support_y[t]), (query_x[t], query_y[t])):
            for image, label in zip(images, labels):
                character, drawing, angle = identify(pool, image)
                assert character == classes[t, label] and angle == 0
                assert (character, drawing) not in seen                  # never the same drawing twice
                seen[(character, drawing)] = label


def test_the_class_behind_each_label_is_shuffled_every_episode():
    sampler = EpisodeSampler(labelled_pool(characters=5), ways=5, shots=1, queries=1, meta_batch_size=2000, seed=2)
    _, classes = sampler.sample(return_classes=True)
    # with all 5 classes in every episode, only the labelling varies: each class takes each label ~1/5
    counts = np.array([[np.sum(classes[:, label] == c) for c in range(5)] for label in range(5)])
    assert counts.min() > 2000 / 5 * 0.8 and counts.max() < 2000 / 5 * 1.2
    assert len({tuple(row) for row in classes}) > 100                   # many of the 120 orders


def test_rotations_are_extra_classes_rotated_counterclockwise():
    pool = labelled_pool(characters=3, rotations=(0, 90, 180, 270))
    assert pool.num_classes == 12
    sampler = EpisodeSampler(pool, ways=12, shots=1, queries=1, meta_batch_size=3, seed=3)
    (support_x, _, _, _), classes = sampler.sample(return_classes=True)
    for t in range(3):
        for label in range(12):
            character, _, angle = identify(pool, support_x[t, label])
            assert (character, angle) == (classes[t, label] // 4, pool.rotations[classes[t, label] % 4])
    image = pool.class_images(1)                                         # char0 at 90 degrees
    np.testing.assert_array_equal(image[:, 0], np.rot90(pool.images[0], 1, axes=(1, 2)))
    assert pool.class_name(1) == "char0/rot090"


def test_uint8_pools_are_scaled_to_0_1():
    images = np.full((6, 4, 28, 28), 255, np.uint8)
    images[:, :, :14] = 0
    sampler = EpisodeSampler(ClassPool(images, tuple("abcdef")), ways=3, shots=1, queries=1, seed=0)
    support_x = sampler.sample().support_x
    assert set(np.unique(support_x)) == {0.0, 1.0}


def test_the_same_seed_gives_the_same_batches_and_another_seed_others():
    def batches(seed):
        sampler = EpisodeSampler(labelled_pool(), ways=5, shots=1, queries=2, meta_batch_size=4, seed=seed)
        return [sampler.sample() for _ in range(3)]

    for first, second in zip(batches(5), batches(5)):
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batches(5)[0].support_x, batches(6)[0].support_x)


def test_restoring_a_state_gives_exactly_the_episodes_that_followed_it():
    pool = labelled_pool(rotations=(0, 90, 180, 270))
    uninterrupted = EpisodeSampler(pool, ways=5, shots=2, queries=3, meta_batch_size=4, seed=11)
    for _ in range(3):
        uninterrupted.sample()
    saved = json.loads(json.dumps(uninterrupted.state()))               # e.g. through a checkpoint file
    expected = [uninterrupted.sample(return_classes=True) for _ in range(4)]

    resumed = EpisodeSampler(pool, ways=5, shots=2, queries=3, meta_batch_size=4, seed=999)
    resumed.set_state(saved)
    assert resumed.batches_drawn == 3
    for want_episodes, want_classes in expected:
        got_episodes, got_classes = resumed.sample(return_classes=True)
        np.testing.assert_array_equal(got_classes, want_classes)
        for got, want in zip(got_episodes, want_episodes):
            np.testing.assert_array_equal(got, want)
    assert resumed.batches_drawn == uninterrupted.batches_drawn == 7


def test_a_state_from_other_settings_is_refused():
    pool = labelled_pool()
    state = EpisodeSampler(pool, ways=5, shots=1, queries=1, seed=0).state()
    with pytest.raises(ValueError, match="saved with .*'ways': 5.* this sampler has .*'ways': 4"):
        EpisodeSampler(pool, ways=4, shots=1, queries=1, seed=0).set_state(state)
    with pytest.raises(ValueError, match="not a sampler state"):
        EpisodeSampler(pool, ways=5, shots=1, queries=1, seed=0).set_state({"seed": 0})


def test_the_sampler_is_an_endless_iterator():
    sampler = EpisodeSampler(labelled_pool(), ways=2, shots=1, queries=1, seed=0)
    first, second = next(iter(sampler)), next(sampler)
    assert first.support_x.shape == second.support_x.shape == (1, 2, 1, 28, 28)
    assert sampler.batches_drawn == 2


def test_too_many_ways_or_drawings_are_refused_with_the_counts():
    pool = labelled_pool(characters=6, drawings=20, rotations=(0, 180))
    with pytest.raises(ValueError, match=r"13-way episodes need 13 classes, but split 'toy' has 12 "
                                         r"\(6 characters x 2 rotations\)"):
        EpisodeSampler(pool, ways=13, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"5 shots \+ 16 queries need 21 drawings per class, but split 'toy' "
                                         r"has 20 per class"):
        EpisodeSampler(pool, ways=2, shots=5, queries=16)


@pytest.mark.parametrize("name, value, error", [
    ("ways", 0, ValueError), ("shots", 0, ValueError), ("queries", -1, ValueError),
    ("meta_batch_size", 0, ValueError), ("shots", 1.5, TypeError), ("ways", True, TypeError)])
def test_counts_must_be_positive_integers(name, value, error):
    settings = {"ways": 2, "shots": 1, "queries": 1, "meta_batch_size": 1, name: value}
    with pytest.raises(error, match=name):
        EpisodeSampler(labelled_pool(), **settings)


def test_class_pools_check_what_they_hold():
    with pytest.raises(ValueError, match="images must be an array"):
        ClassPool(np.zeros((3, 28, 28), np.float32), ("a", "b", "c"))
    with pytest.raises(ValueError, match="uint8 or float32"):
        ClassPool(np.zeros((1, 2, 28, 28)), ("a",))
    with pytest.raises(ValueError, match="2 names for 1 characters"):
        ClassPool(np.zeros((1, 2, 28, 28), np.uint8), ("a", "b"))
    with pytest.raises(ValueError, match="rotations must be distinct angles"):
        ClassPool(np.zeros((1, 2, 28, 28), np.uint8), ("a",), rotations=(0, 45))
    with pytest.raises(ValueError, match="quarter turns need square images"):
        ClassPool(np.zeros((1, 2, 28, 30), np.uint8), ("a",), rotations=(0, 90))


def test_few_shot_splits_index_by_name():
    pool = labelled_pool()
    splits = FewShotSplits(pool, pool, pool, "toy")
    assert splits["train"] is pool
    with pytest.raises(KeyError, match="unknown split 'valid'"):
        splits["valid"]


def test_split_rotations_name_which_splits_rotate():
    assert split_rotations() == ((0, 90, 180, 270), (0,), (0,))
    assert split_rotations("all") == ((0, 90, 180, 270),) * 3
    assert split_rotations("none") == ((0,),) * 3
    with pytest.raises(ValueError, match="rotations must be one of"):
        split_rotations("test")
