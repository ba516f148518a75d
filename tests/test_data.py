"""tinygrad_meta.data.minibatches: every example once per pass, seeded order, sizes."""
import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta.data import minibatches


def test_each_example_appears_exactly_once_and_rows_stay_aligned():
    x = np.arange(23 * 2).reshape(23, 2)
    y = np.arange(23)
    seen = []
    for batch_x, batch_y in minibatches(x, y, batch_size=5, rng=1):
        np.testing.assert_array_equal(batch_x, x[batch_y])   # x and y rows picked together
        seen.extend(batch_y.tolist())
    assert sorted(seen) == list(range(23)) and seen != list(range(23))


def test_batch_sizes_with_and_without_drop_last():
    y = np.arange(23)
    assert [len(b) for (b,) in minibatches(y, batch_size=5, rng=0)] == [5, 5, 5, 5, 3]
    assert [len(b) for (b,) in minibatches(y, batch_size=5, rng=0, drop_last=True)] == [5] * 4
    assert [len(b) for (b,) in minibatches(y, batch_size=30, rng=0, drop_last=True)] == []


def test_the_same_seed_gives_the_same_order_and_a_generator_a_new_one_per_epoch():
    y = np.arange(50)
    first = [b.tolist() for (b,) in minibatches(y, batch_size=7, rng=3)]
    assert first == [b.tolist() for (b,) in minibatches(y, batch_size=7, rng=3)]
    assert first != [b.tolist() for (b,) in minibatches(y, batch_size=7, rng=4)]
    generator, replay = np.random.default_rng(5), np.random.default_rng(5)
    epoch1 = [b.tolist() for (b,) in minibatches(y, batch_size=7, rng=generator)]
    epoch2 = [b.tolist() for (b,) in minibatches(y, batch_size=7, rng=generator)]
    assert epoch1 != epoch2
    assert epoch1 == [b.tolist() for (b,) in minibatches(y, batch_size=7, rng=replay)]


def test_without_shuffle_batches_are_in_order_and_need_no_rng():
    batches = [b.tolist() for (b,) in minibatches(np.arange(7), batch_size=3, shuffle=False)]
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_tensors_are_batched_too():
    x = tgm.Tensor(np.arange(12.0).reshape(6, 2))
    (batch,) = next(minibatches(x, batch_size=4, shuffle=False))
    assert isinstance(batch, tgm.Tensor) and batch.shape == (4, 2)


def test_bad_arguments_fail_at_the_call_and_name_the_problem():
    with pytest.raises(ValueError, match="different lengths along axis 0: \\[3, 4\\]"):
        minibatches(np.zeros(3), np.zeros(4), batch_size=2, rng=0)
    with pytest.raises(ValueError, match="needs rng="):
        minibatches(np.zeros(3), batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        minibatches(np.zeros(3), batch_size=0, rng=0)
