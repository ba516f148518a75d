"""The one Task interface: named RNG streams from the run's seed, a metric per task, and a
task family other than sinusoids plugs into training and evaluation unchanged."""
import numpy as np
import pytest

from tinygrad_meta import tasks
from tinygrad_meta.checkpoint import load_checkpoint
from tinygrad_meta.evaluate import evaluate_run, format_table
from tinygrad_meta.functional import cross_entropy, mse_loss
from tinygrad_meta.tasks import Task, TaskBatch, get_task, stream_rng
from tinygrad_meta.tasks.base import STREAMS, per_task_accuracy, per_task_mse
from tinygrad_meta.tasks.episodes import ClassPool, EpisodeSampler
from tinygrad_meta.tasks.sinusoid import SINUSOID, evaluation_batch, sample_batch
from tinygrad_meta.train import train


def _draws(rng):
    return rng.integers(0, 2 ** 62, size=4).tolist()


def test_a_stream_depends_on_the_seed_the_name_and_the_index_only():
    assert _draws(stream_rng(3, "train", 7)) == _draws(stream_rng(3, "train", 7))
    seen = {tuple(_draws(stream_rng(seed, name, index)))
            for seed in (0, 1) for name in STREAMS for index in (0, 1, 5)}
    assert len(seen) == 2 * len(STREAMS) * 3  # no two (seed, stream, index) coincide


def test_stream_names_and_indices_are_checked():
    with pytest.raises(ValueError, match="unknown stream 'trian'; the streams are train, validation"):
        stream_rng(0, "trian")
    with pytest.raises(ValueError, match="index must be a non-negative integer, got -1"):
        stream_rng(0, "train", -1)


def test_sinusoid_draws_its_batches_from_the_named_streams():
    expected = sample_batch(4, 5, stream_rng(2, "train", 9))
    for a, b in zip(SINUSOID.meta_batch(2, 9, 4, 5), expected):
        assert np.array_equal(a, b)
    validation = SINUSOID.validation_tasks(2, 3, 5)
    assert np.array_equal(validation.support_x, evaluation_batch(3, 5, stream_rng(2, "validation"))[0].support_x)
    at_5, at_10 = SINUSOID.evaluation_tasks(2, 3, 5), SINUSOID.evaluation_tasks(2, 3, 10)
    assert at_5.query_x.shape == (3, 100, 1) and not np.array_equal(at_5.support_x[:, :5], at_10.support_x[:, :5])
    assert SINUSOID.loss is mse_loss and get_task("sinusoid") is SINUSOID


def test_metrics_score_each_task():
    prediction = np.array([[[1.0], [3.0]], [[0.0], [0.0]]])
    target = np.zeros((2, 2, 1))
    assert SINUSOID.metric(prediction, target).tolist() == [5.0, 0.0]
    assert per_task_mse(prediction, target).tolist() == [5.0, 0.0]
    logits = np.array([[[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]])
    assert per_task_accuracy(logits, np.array([[1, 0, 0]])).tolist() == pytest.approx([2 / 3])
    with pytest.raises(ValueError, match=r"logits \(1, 3, 2\) need labels of shape \(1, 3\), got \(1, 2\)"):
        per_task_accuracy(logits, np.array([[1, 0]]))


class EpisodeTask(Task):
    """N-way K-shot classification episodes from a class pool: what the few-shot issue plugs in."""
    name = "toy-episodes"
    metric_name = "accuracy"
    evaluation_shots = (1, 5)
    query_description = "query accuracy on 5 drawings per class"

    def __init__(self, pool, ways=3):
        self.pool, self.ways = pool, ways

    def sample_batch(self, num_tasks, shots, rng):
        return EpisodeSampler(self.pool, self.ways, shots, 5, num_tasks, seed=rng).sample()

    evaluation_batch = sample_batch

    loss = staticmethod(cross_entropy)

    def metric(self, prediction, target):
        return per_task_accuracy(prediction, target)


def test_classification_episodes_fit_the_interface():
    images = np.random.default_rng(0).integers(0, 255, size=(8, 10, 6, 6)).astype(np.uint8)
    task = EpisodeTask(ClassPool(images, tuple(f"c{i}" for i in range(8))))
    first, again = task.meta_batch(0, 3, 2, 1), task.meta_batch(0, 3, 2, 1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # a function of (seed, iteration)
    assert not np.array_equal(first.support_x, task.meta_batch(0, 4, 2, 1).support_x)
    support_x, support_y, query_x, query_y = task.evaluation_tasks(0, 2, 5)
    assert support_x.shape == (2, 15, 1, 6, 6) and query_y.shape == (2, 15)
    perfect = np.eye(3)[query_y]  # one-hot logits of the right class
    assert task.metric(perfect, query_y).tolist() == [1.0, 1.0]


class LineTask(Task):
    """y = a x + b with a, b ~ U[-1, 1]: a regression family the command line never heard of."""
    name = "line"
    evaluation_shots = (3,)
    query_description = "query MSE on 20 points of the line"
    loss = staticmethod(mse_loss)

    def sample_batch(self, num_tasks, shots, rng):
        slope, offset = rng.uniform(-1, 1, size=(2, num_tasks, 1, 1))
        x = rng.uniform(-2, 2, size=(num_tasks, 2 * shots, 1))
        y = slope * x + offset
        return TaskBatch(*(a.astype(np.float32) for a in (x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])))

    def evaluation_batch(self, num_tasks, shots, rng):
        support_x, support_y, _, _ = self.sample_batch(num_tasks, shots, rng)
        return self.sample_batch(num_tasks, 20, rng)._replace(support_x=support_x, support_y=support_y)

    def metric(self, prediction, target):
        return per_task_mse(np.asarray(prediction, np.float64), np.asarray(target, np.float64))


def test_another_task_family_trains_resumes_and_evaluates_through_the_interface(monkeypatch, tmp_path):
    monkeypatch.setitem(tasks.TASKS, "line", LineTask())
    settings = {"task": "line", "hidden": [8], "meta_batch": 4, "shots": 3, "eval_every": 2, "eval_tasks": 0,
                "checkpoint_every": 3}
    straight = train(dict(settings, iters=6, out=str(tmp_path / "a")), progress=False, log=lambda *a: None)
    train(dict(settings, iters=3, out=str(tmp_path / "b")), progress=False, log=lambda *a: None)
    resumed = train({"iters": 6}, resume=str(tmp_path / "b"), progress=False, log=lambda *a: None)
    a, b = load_checkpoint(straight.out).params, load_checkpoint(resumed.out).params
    assert all(np.array_equal(a[name], b[name]) for name in a)
    assert straight.history[-1]["val_mse"] == resumed.history[-1]["val_mse"]
    report = evaluate_run(straight.out, num_tasks=4, baseline_iters=2, log=lambda *a: None)
    assert [row["shots"] for row in report["rows"]] == [3, 3] and report["task"] == "line"
    assert format_table(report).startswith("query MSE on 20 points of the line after k inner steps")


def test_a_task_without_a_divergence_bound_flags_only_non_finite_scores():
    from tinygrad_meta.evaluate import _row
    row = _row("maml", 1, {1: np.array([0.9, 2000.0, np.nan])}, [1], diverged_above=EpisodeTask.diverged_above)
    assert row["diverged"][1] == 1 and row["without_diverged"][1][0] == pytest.approx(1000.45)
