"""The sinusoid task sampler follows the MAML paper's protocol and is reproducible."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinygrad_meta.tasks import get_task
from tinygrad_meta.tasks.sinusoid import (AMPLITUDE_RANGE, INPUT_RANGE, PHASE_RANGE, STREAM_EVAL,
                                          evaluation_batch, sample_batch, sample_parameters,
                                          sinusoid, task_rng, true_curve)


def test_ranges_are_the_maml_papers():
    assert AMPLITUDE_RANGE == (0.1, 5.0)
    assert PHASE_RANGE == (0.0, math.pi)
    assert INPUT_RANGE == (-5.0, 5.0)


def test_parameters_and_inputs_fall_in_their_ranges_and_cover_them():
    batch, amplitude, phase = sample_batch(4000, 10, task_rng(0, 0), return_parameters=True)
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    assert 0.0 <= phase.min() and phase.max() <= math.pi
    x = np.concatenate([batch.support_x, batch.query_x], axis=1)
    assert -5.0 <= x.min() and x.max() <= 5.0
    # uniform draws: with 4000 tasks the extremes come within 1% of the bounds
    assert amplitude.min() < 0.15 and amplitude.max() > 4.95
    assert phase.min() < 0.03 and phase.max() > math.pi - 0.03
    assert x.min() < -4.99 and x.max() > 4.99
    # uniform means: (0.1 + 5) / 2 and pi / 2, within 5 standard errors
    assert abs(amplitude.mean() - 2.55) < 5 * (4.9 / math.sqrt(12)) / math.sqrt(4000)
    assert abs(phase.mean() - math.pi / 2) < 5 * (math.pi / math.sqrt(12)) / math.sqrt(4000)


def test_targets_are_amplitude_times_sine_of_x_minus_phase():
    batch, amplitude, phase = sample_batch(7, 5, task_rng(3, 1), dtype="float64", return_parameters=True)
    for t in range(7):
        np.testing.assert_allclose(batch.support_y[t, :, 0],
                                   amplitude[t] * np.sin(batch.support_x[t, :, 0] - phase[t]), rtol=1e-12)
        np.testing.assert_allclose(batch.query_y[t, :, 0],
                                   amplitude[t] * np.sin(batch.query_x[t, :, 0] - phase[t]), rtol=1e-12)


def test_support_and_query_points_are_distinct_draws():
    batch = sample_batch(3, 10, task_rng(0, 0))
    assert not np.array_equal(batch.support_x, batch.query_x)


@settings(max_examples=20, deadline=None)
@given(tasks=st.integers(1, 30), shots=st.integers(1, 25), query=st.one_of(st.none(), st.integers(1, 40)))
def test_shapes_are_tasks_by_points_by_one(tasks, shots, query):
    batch = sample_batch(tasks, shots, task_rng(0, 0), query_shots=query)
    assert batch.support_x.shape == batch.support_y.shape == (tasks, shots, 1)
    assert batch.query_x.shape == batch.query_y.shape == (tasks, query or shots, 1)
    assert batch.support_x.dtype == np.float32


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), iteration=st.integers(0, 10**6))
def test_same_seed_and_iteration_give_the_same_batch(seed, iteration):
    a = sample_batch(5, 4, task_rng(seed, iteration))
    b = sample_batch(5, 4, task_rng(seed, iteration))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def test_different_iterations_seeds_and_streams_differ():
    base = sample_batch(5, 4, task_rng(0, 0)).support_x
    assert not np.array_equal(base, sample_batch(5, 4, task_rng(0, 1)).support_x)
    assert not np.array_equal(base, sample_batch(5, 4, task_rng(1, 0)).support_x)
    assert not np.array_equal(base, sample_batch(5, 4, task_rng(0, 0, STREAM_EVAL)).support_x)


def test_true_curve_is_100_evenly_spaced_points_over_the_input_range():
    x, y = true_curve(np.array([2.0, 3.0]), np.array([0.5, 1.0]))
    assert x.shape == (100,) and y.shape == (2, 100)
    np.testing.assert_allclose(np.diff(x), 10 / 99, rtol=1e-5)
    assert x[0] == -5.0 and x[-1] == 5.0
    np.testing.assert_allclose(y[1], 3.0 * np.sin(x.astype(np.float64) - 1.0), rtol=1e-5, atol=1e-6)


def test_evaluation_batch_queries_the_whole_curve():
    batch, amplitude, phase = evaluation_batch(6, 5, task_rng(0, 0, STREAM_EVAL))
    assert batch.support_x.shape == (6, 5, 1) and batch.query_x.shape == (6, 100, 1)
    grid, curves = true_curve(amplitude, phase)
    for t in range(6):
        np.testing.assert_array_equal(batch.query_x[t, :, 0], grid)
        np.testing.assert_allclose(batch.query_y[t, :, 0], curves[t], rtol=1e-6)
    np.testing.assert_allclose(batch.support_y, sinusoid(batch.support_x, amplitude, phase), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_tasks": 0, "shots": 5}, "number of tasks T must be at least 1"),
    ({"num_tasks": 3, "shots": 0}, "shots K must be at least 1"),
    ({"num_tasks": 3, "shots": -2}, "shots K must be at least 1"),
    ({"num_tasks": 3, "shots": 5, "query_shots": 0}, "query shots must be at least 1"),
])
def test_bad_counts_are_rejected_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_batch(rng=task_rng(0, 0), **kwargs)


def test_non_integer_shots_and_a_missing_generator_are_rejected():
    with pytest.raises(TypeError, match="shots K must be an integer"):
        sample_batch(3, 2.5, task_rng(0, 0))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        sample_parameters(3, rng=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        task_rng(-1, 0)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'omniglott'.*sinusoid"):
        get_task("omniglott")
