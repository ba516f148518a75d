"""N-way K-shot image classification (Omniglot, glyphs) behind the one Task interface.

A :class:`FewShotTask` wraps the meta-train / validation / meta-test class pools of a data
set (:class:`~tinygrad_meta.tasks.episodes.FewShotSplits`) and draws episodes from them
with the seeded :class:`~tinygrad_meta.tasks.episodes.EpisodeSampler`:

* ``meta_batch`` (training) draws ``ways``-way episodes from the meta-train classes,
* ``validation_tasks`` from the held-out validation classes,
* ``evaluation_tasks`` from the meta-test classes, at any ways and shots (the table's
  5/20-way, 1/5-shot), each (ways, shots) from its own stream.

Its loss is cross-entropy, its metric per-task query accuracy, and it builds the model
the algorithms meta-learn (:meth:`FewShotTask.build_model`): the 4-block conv net of
the MAML and ProtoNet papers, or the MAML paper's fully connected Omniglot network.

>>> task = glyph_task(ways=5, queries=2, num_classes=300)
>>> batch = task.meta_batch(seed=0, iteration=0, num_tasks=2, shots=1)
>>> batch.support_x.shape, batch.query_y.shape
((2, 5, 1, 28, 28), (2, 10))
"""
from __future__ import annotations

import numbers


from .. import nn
from ..functional import cross_entropy
from .base import Task, TaskBatch, per_task_accuracy, stream_rng
from .episodes import EpisodeSampler, FewShotSplits
from .glyphs import NUM_CLASSES, glyph_splits
from .omniglot import load_omniglot

__all__ = ["FewShotTask", "glyph_task", "omniglot_task", "MODELS", "EVALUATION_WAYS", "EVALUATION_SHOTS",
           "fully_connected_net", "head_prefix"]

MODELS = ("conv", "mlp")
EVALUATION_WAYS = (5, 20)
EVALUATION_SHOTS = (1, 5)


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"few-shot task: {name} must be a positive integer, got {value!r}")
    return int(value)


def fully_connected_net(outputs, image_size=28, rng=None):
    """The MAML paper's non-convolutional Omniglot network: flattened pixels through
    256-128-64-64 ReLU layers, then a linear layer to ``outputs`` (the classes, or for
    ProtoNet's embedding the 64-d code itself when ``outputs`` is None)."""
    sizes = [image_size * image_size, 256, 128, 64, 64] + ([] if outputs is None else [outputs])
    return nn.Sequential(nn.Flatten(), nn.MLP(sizes, activation="relu", rng=rng))


def head_prefix(model) -> str:
    """The module prefix of ``model``'s last parameter (its output layer): what ANIL adapts.

    >>> head_prefix(fully_connected_net(5, rng=0))
    '1.layers.4'
    """
    names = list(model.parameter_dict())
    if not names:
        raise ValueError("head_prefix: the model has no parameters")
    return names[-1].rsplit(".", 1)[0]


class FewShotTask(Task):
    """Episodes of one data set's class pools: ``FewShotTask(name, splits, ways=5, queries=5,
    eval_queries=None)``.

    ``splits``: a FewShotSplits (train, val, test ClassPools). ``ways`` N of the training
    and validation episodes; ``queries`` Q per class of the training episodes,
    ``eval_queries`` of the validation and evaluation ones (None: ``queries``). Asking for more ways
    than a split holds, or more shots + queries than a class has drawings, is a ValueError
    naming the split (``check``).
    """

    metric_name = "accuracy"
    diverged_above = None
    evaluation_shots = EVALUATION_SHOTS
    evaluation_ways = EVALUATION_WAYS
    curve_plot = False
    loss = staticmethod(cross_entropy)

    def __init__(self, name: str, splits: FewShotSplits, ways: int = 5, queries: int = 5, eval_queries=None):
        if not isinstance(splits, FewShotSplits):
            raise TypeError(f"FewShotTask: splits must be a FewShotSplits, got {type(splits).__name__}")
        self.name = name
        self.splits = splits
        self.ways = _positive(ways, "ways")
        self.queries = _positive(queries, "queries")
        self.eval_queries = self.queries if eval_queries is None else _positive(eval_queries, "eval_queries")
        self.image_size = splits.train.image_shape[0]
        self.query_description = f"query accuracy ({self.eval_queries} queries per class, meta-test classes)"

    # ---- sampling -------------------------------------------------------------------
    def _episodes(self, split, num_tasks, ways, shots, rng):
        queries = self.queries if split == "train" else self.eval_queries
        sampler = EpisodeSampler(self.splits[split], ways=ways, shots=shots, queries=queries,
                                 meta_batch_size=num_tasks, seed=rng)
        return TaskBatch(*sampler.sample())

    def check(self, shots: int, ways=None, splits=("train", "val")) -> None:
        """Raise a ValueError now if ``ways``-way ``shots``-shot episodes (default ways: the
        task's) cannot be drawn from ``splits``, naming the split and the counts."""
        ways = self.ways if ways is None else ways
        for split in splits:
            EpisodeSampler(self.splits[split], ways=ways, shots=shots,
                           queries=self.queries if split == "train" else self.eval_queries)

    def sample_batch(self, num_tasks, shots, rng):
        return self._episodes("train", num_tasks, self.ways, shots, rng)

    def evaluation_batch(self, num_tasks, shots, rng, ways=None):
        return self._episodes("test", num_tasks, self.ways if ways is None else ways, shots, rng)

    def validation_tasks(self, seed, num_tasks, shots):
        """Fixed episodes of the validation classes (the same at every report and after a resume)."""
        return self._episodes("val", num_tasks, self.ways, shots, stream_rng(seed, "validation"))

    def evaluation_tasks(self, seed, num_tasks, shots, ways=None):
        """Fresh meta-test episodes; each (ways, shots) has its own stream."""
        ways = self.ways if ways is None else _positive(ways, "ways")
        return self.evaluation_batch(num_tasks, shots, stream_rng(seed, "evaluation", 1000 * ways + shots), ways)

    def metric(self, prediction, target):
        return per_task_accuracy(prediction, target)

    # ---- the model ------------------------------------------------------------------
    def build_model(self, algo: str, model: str = "conv", rng=None):
        """The network ``algo`` meta-learns: for "protonet" an embedding (conv: the max-pool
        4-block net, 64-d codes; mlp: 256-128-64-64), otherwise a classifier with a
        ``ways``-output linear head (conv: MAML's strided 4-block net)."""
        if model not in MODELS:
            raise ValueError(f"few-shot task: model must be one of {MODELS}, got {model!r}")
        outputs = None if algo == "protonet" else self.ways
        if model == "mlp":
            return fully_connected_net(outputs, self.image_size, rng=rng)
        return _conv_net(outputs, self.image_size, rng)

    def __repr__(self):
        return f"<task {self.name}: {self.ways}-way, {self.queries} queries; {self.splits.description}>"


def _conv_net(outputs, image_size, rng):
    # ProtoNet: the max-pool variant's 64-d embedding; the others: MAML's strided net + linear head
    variant = "protonet" if outputs is None else "maml"
    return nn.omniglot_convnet(outputs, variant=variant, image_size=image_size, seed=rng)


def glyph_task(ways=5, queries=5, num_classes=None, seed=0, eval_queries=None) -> FewShotTask:
    """The offline task: procedurally drawn glyphs (tasks/glyphs.py), Omniglot-sized by
    default (1,623 classes: 1,100 meta-train, 100 validation, the rest meta-test)."""
    num_classes = NUM_CLASSES if num_classes is None else _positive(num_classes, "num_classes")
    num_train = max(1, int(round(num_classes * 1100 / NUM_CLASSES)))
    num_val = max(1, int(round(num_classes * 100 / NUM_CLASSES)))
    return FewShotTask("glyphs", glyph_splits(num_classes, seed=seed, num_train=num_train, num_val=num_val),
                       ways, queries, eval_queries)


def omniglot_task(data_dir, ways=5, queries=5, cache_dir=None, eval_queries=None) -> FewShotTask:
    """Omniglot from the official zips or folders in ``data_dir`` (tasks/omniglot.py: the
    full set's 1,200/423 split, or the minimal sets: small1 to train, small2's new
    alphabets to test)."""
    if data_dir is None:
        raise ValueError("the omniglot task needs --data-dir DIR: the folder holding images_background.zip and "
                         "images_evaluation.zip, or images_background_small1.zip and "
                         "images_background_small2.zip (zipped or unpacked); --task glyphs needs no download")
    return FewShotTask("omniglot", load_omniglot(data_dir, cache_dir=cache_dir), ways, queries, eval_queries)
