"""Small multi-class classification problems generated offline (no downloads).

Two seeded generators, each returning a :class:`ClassificationData` with a train and a
validation split drawn from the same distribution:

* ``"spirals"``: ``classes`` interleaved 2-D spiral arms with Gaussian noise; a point's
  radius r ~ U[0.15, 1] sets its angle 2π·turns·r + 2π·label/classes. The arms
  wind around each other, so a linear model cannot separate them and a small MLP has
  to bend its decision boundary -- hyperparameters (learning rate, weight decay) matter.
* ``"gaussians"``: a mixture of ``classes`` Gaussian blobs in ``features`` dimensions
  with random means; nearly linearly separable, a quick sanity problem.

The data are a pure function of the seed (numpy ``default_rng``), so every run, test and
benchmark sees the same points. Points are standardised with the train split's mean and
standard deviation.

``classifier(sizes, seed)`` is the small tanh ``nn.MLP`` that goes with them (LeCun
normal weights, zero biases), and ``classification_losses(data, model)`` gives its
cross-entropy as functions of a parameter dict, which is what the hyperparameter code
unrolls: any module works there, run on the parameters through ``func.functional_call``.

>>> data = make_classification("spirals", n_train=90, n_val=60, seed=0)
>>> data.train_x.shape, data.val_y.shape, data.classes
((90, 2), (60,), 3)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import functional as F
from ..func import functional_call
from ..nn import MLP
from ..tensor import Tensor

__all__ = ["ClassificationData", "make_classification", "PROBLEMS", "classifier",
           "classification_losses"]

PROBLEMS = ("spirals", "gaussians")


@dataclass
class ClassificationData:
    """Train and validation splits: ``*_x`` float arrays (N, features), ``*_y`` int64 (N,)."""
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    classes: int
    name: str

    @property
    def features(self) -> int:
        return self.train_x.shape[1]


def _spirals(rng, n, classes, noise, turns):
    labels = rng.integers(0, classes, size=n)
    radius = rng.uniform(0.15, 1.0, size=n)
    # each arm winds `turns` times around the origin; arms are offset by 2*pi/classes
    angle = 2.0 * np.pi * turns * radius + 2.0 * np.pi * labels / classes
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    points += noise * rng.standard_normal(points.shape)
    return points, labels


def _gaussians(rng, n, classes, features, noise, means):
    labels = rng.integers(0, classes, size=n)
    points = means[labels] + (0.5 + noise) * rng.standard_normal((n, features))
    return points, labels


def make_classification(name="spirals", n_train=150, n_val=150, classes=3, features=2,
                        noise=0.15, turns=0.75, seed=0, dtype="float64") -> ClassificationData:
    """Generate a seeded classification problem with train/validation splits.

    ``name``: "spirals" (2-D, ``features`` is ignored) or "gaussians".
    ``noise``: the standard deviation of the Gaussian jitter (spirals) or extra blob
    spread (gaussians). Returns a :class:`ClassificationData` whose inputs are
    standardised with train-split statistics and cast to ``dtype``.

    >>> make_classification("gaussians", n_train=10, n_val=5, classes=4, features=3).train_x.shape
    (10, 3)
    """
    if name not in PROBLEMS:
        raise ValueError(f"make_classification: unknown problem {name!r}; choose one of {PROBLEMS}")
    if n_train < 1 or n_val < 1:
        raise ValueError(f"make_classification: n_train and n_val must be >= 1, got {n_train}, {n_val}")
    if classes < 2:
        raise ValueError(f"make_classification: need at least 2 classes, got {classes}")
    rng = np.random.default_rng(seed)
    if name == "spirals":
        train_x, train_y = _spirals(rng, n_train, classes, noise, turns)
        val_x, val_y = _spirals(rng, n_val, classes, noise, turns)
    else:
        if features < 1:
            raise ValueError(f"make_classification: features must be >= 1, got {features}")
        means = 1.5 * rng.standard_normal((classes, features))
        train_x, train_y = _gaussians(rng, n_train, classes, features, noise, means)
        val_x, val_y = _gaussians(rng, n_val, classes, features, noise, means)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-12
    return ClassificationData(
        ((train_x - mean) / std).astype(dtype), train_y.astype(np.int64),
        ((val_x - mean) / std).astype(dtype), val_y.astype(np.int64), classes, name)


def classifier(sizes, seed=0, dtype="float64"):
    """The tanh MLP of these problems: ``nn.MLP(sizes, activation="tanh", init="lecun")``.

    Weights N(0, 1/fan_in) (so that ``init_scale`` = 1 is the usual LeCun scale), biases
    zero, drawn from ``numpy.random.default_rng(seed)``; parameters "layers.0.weight"
    (out, in), "layers.0.bias", ...

    >>> [name for name, _ in classifier([2, 8, 3]).named_parameters()]
    ['layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias']
    """
    if len(sizes) < 2:
        raise ValueError(f"classifier: need at least an input and an output width, got {sizes}")
    return MLP(sizes, activation="tanh", init="lecun", dtype=dtype, rng=np.random.default_rng(seed))


def classification_losses(data: ClassificationData, model):
    """``(train_loss, val_loss)``: cross-entropy of ``model`` (any ``nn.Module`` mapping
    (N, features) to (N, classes) logits) on each split, full batch, as functions of a
    parameter dict name -> Tensor (names as in ``model.named_parameters()``).

    ``train_loss(params, step)`` ignores ``step`` (full-batch training keeps the
    validation loss a smooth, deterministic function of the hyperparameters);
    ``val_loss(params)``.

    >>> data = make_classification("gaussians", n_train=10, n_val=5)
    >>> model = classifier([2, 4, 3])
    >>> train_loss, val_loss = classification_losses(data, model)
    >>> val_loss(model.parameter_dict()).shape
    ()
    """
    dtype = data.train_x.dtype
    train_x, val_x = Tensor(data.train_x, dtype=dtype), Tensor(data.val_x, dtype=dtype)
    train_y, val_y = data.train_y, data.val_y

    def train_loss(params, step=0):
        return F.cross_entropy(functional_call(model, params, train_x), train_y)

    def val_loss(params):
        return F.cross_entropy(functional_call(model, params, val_x), val_y)

    return train_loss, val_loss
