"""N-way K-shot episodes from a pool of image classes, in task batches.

A :class:`ClassPool` holds the drawings of some classes, ``(characters, drawings, H, W)``,
and the rotations (0, 90, 180, 270 degrees) that turn each character into extra classes.
An :class:`EpisodeSampler` draws task batches from it for the vectorised meta-learners:

* ``support_x`` (T, N*K, 1, H, W) float32 in [0, 1] (strokes 1.0, paper 0.0),
  ``support_y`` (T, N*K) int64 labels in [0, N); ``query_x`` (T, N*Q, 1, H, W) and
  ``query_y`` (T, N*Q) likewise, with drawings disjoint from the support set's;
* the N classes of an episode are distinct (a rotated character counts as its own class)
  and the class behind label 0..N-1 is a fresh random choice every episode;
* examples are laid out class by class: label ``n`` holds rows ``n*K .. n*K+K-1`` of the
  support set, so ``support_x[t].reshape(N, K, ...)`` groups the shots of each class.

Everything comes from one seeded ``numpy.random.Generator``; ``state()`` captures it and
``set_state()`` restores it, after which the sampler draws exactly the episodes it would
have drawn without the interruption.

>>> pool = ClassPool(np.zeros((30, 20, 28, 28), np.uint8), tuple(f"c{i}" for i in range(30)))
>>> sampler = EpisodeSampler(pool, ways=5, shots=1, queries=15, meta_batch_size=4, seed=0)
>>> support_x, support_y, query_x, query_y = sampler.sample()
>>> support_x.shape, support_y.shape, query_x.shape, query_y.shape
((4, 5, 1, 28, 28), (4, 5), (4, 75, 1, 28, 28), (4, 75))
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["ClassPool", "FewShotSplits", "Episodes", "EpisodeSampler", "ROTATION_MODES", "split_rotations"]

_ROTATIONS = (0, 90, 180, 270)
ROTATION_MODES = ("train", "all", "none")
_STATE_VERSION = 1


@dataclass(frozen=True)
class ClassPool:
    """The classes one split offers: ``images`` (characters, drawings, H, W) and their names.

    ``images`` is uint8 ink (0 paper .. 255 stroke, divided by 255 when sampled) or
    float32 in [0, 1]. ``rotations`` lists the angles in degrees (multiples of 90,
    counterclockwise, as ``np.rot90``) that each make a separate class of every character,
    so the pool holds ``len(names) * len(rotations)`` classes: class ``c`` is character
    ``c // len(rotations)`` rotated by ``rotations[c % len(rotations)]``.

    >>> pool = ClassPool(np.zeros((3, 20, 28, 28), np.uint8), ("a", "b", "c"), rotations=(0, 90))
    >>> pool.num_classes, pool.drawings, pool.class_name(3)
    (6, 20, 'b/rot090')
    """
    images: np.ndarray
    names: tuple
    rotations: tuple = (0,)
    name: str = "pool"

    def __post_init__(self):
        images = self.images
        if not isinstance(images, np.ndarray) or images.ndim != 4:
            raise ValueError(f"ClassPool {self.name!r}: images must be an array (characters, drawings, H, W), "
                             f"got {getattr(images, 'shape', type(images).__name__)}")
        if images.dtype not in (np.uint8, np.float32):
            raise ValueError(f"ClassPool {self.name!r}: images must be uint8 or float32, got {images.dtype}")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "rotations", tuple(int(r) for r in self.rotations))
        if len(self.names) != images.shape[0]:
            raise ValueError(f"ClassPool {self.name!r}: {len(self.names)} names for {images.shape[0]} characters")
        if not self.rotations or len(set(self.rotations)) != len(self.rotations) \
                or any(r not in _ROTATIONS for r in self.rotations):
            raise ValueError(f"ClassPool {self.name!r}: rotations must be distinct angles from {_ROTATIONS}, "
                             f"got {self.rotations}")
        if images.shape[2] != images.shape[3] and ({90, 270} & set(self.rotations)):
            raise ValueError(f"ClassPool {self.name!r}: quarter turns need square images, got {images.shape[2:]}")

    @property
    def num_classes(self) -> int:
        return len(self.names) * len(self.rotations)

    @property
    def drawings(self) -> int:
        return self.images.shape[1]

    @property
    def image_shape(self) -> tuple:
        return self.images.shape[2:]

    def class_name(self, index: int) -> str:
        """``"<character name>/rot<angle>"`` for class ``index`` (e.g. ``"Greek/character01/rot090"``)."""
        character, turn = divmod(int(index), len(self.rotations))
        return f"{self.names[character]}/rot{self.rotations[turn]:03d}"

    def class_images(self, index: int) -> np.ndarray:
        """All drawings of class ``index`` as float32 (drawings, 1, H, W), rotation applied."""
        character, turn = divmod(int(index), len(self.rotations))
        images = _as_float(self.images[character])
        images = np.rot90(images, self.rotations[turn] // 90, axes=(-2, -1))
        return np.ascontiguousarray(images[:, None])


@dataclass(frozen=True)
class FewShotSplits:
    """Meta-train, validation and meta-test class pools of one data set, and how they were made."""
    train: ClassPool
    val: ClassPool
    test: ClassPool
    description: str = ""

    def __getitem__(self, split: str) -> ClassPool:
        if split not in ("train", "val", "test"):
            raise KeyError(f"unknown split {split!r}; the splits are 'train', 'val', 'test'")
        return getattr(self, split)


def split_rotations(rotations: str = "train") -> tuple:
    """The rotations, in degrees, that the (train, val, test) pools get as extra classes:
    "train" rotates only the meta-train classes, "all" every split, "none" no split.

    >>> split_rotations("train")
    ((0, 90, 180, 270), (0,), (0,))
    """
    if rotations not in ROTATION_MODES:
        raise ValueError(f"rotations must be one of {ROTATION_MODES}, got {rotations!r}")
    turned, upright = _ROTATIONS, (0,)
    return {"train": (turned, upright, upright), "all": (turned,) * 3, "none": (upright,) * 3}[rotations]


class Episodes(NamedTuple):
    """A task batch; unpacks as ``support_x, support_y, query_x, query_y = episodes``."""
    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray


def _as_float(images: np.ndarray) -> np.ndarray:
    """A new C-contiguous float32 copy; uint8 ink 0..255 becomes 0..1."""
    result = np.array(images, dtype=np.float32, order="C")
    if images.dtype == np.uint8:
        result /= np.float32(255.0)
    return result


def _count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"EpisodeSampler: {name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"EpisodeSampler: {name} must be at least {minimum}, got {value}")
    return int(value)


class EpisodeSampler:
    """Seeded, resumable source of N-way K-shot Q-query task batches from a :class:`ClassPool`.

    In: the pool, ``ways`` N, ``shots`` K, ``queries`` Q (per class), ``meta_batch_size`` T
    and a ``seed`` (or a ``numpy.random.Generator`` to draw from). Out of ``sample()``: an
    :class:`Episodes` with support_x (T, N*K, 1, H, W), support_y (T, N*K), query_x
    (T, N*Q, 1, H, W), query_y (T, N*Q). Asking for more ways than the pool has classes,
    or more shots + queries than a class has drawings, is a ValueError naming the counts.

    >>> pool = ClassPool(np.zeros((30, 20, 28, 28), np.uint8), tuple(f"c{i}" for i in range(30)))
    >>> sampler = EpisodeSampler(pool, ways=5, shots=1, queries=5, meta_batch_size=2, seed=0)
    >>> saved = sampler.state()
    >>> first = sampler.sample()
    >>> sampler.set_state(saved)
    >>> bool((sampler.sample().support_y == first.support_y).all())
    True
    """

    def __init__(self, pool: ClassPool, ways: int, shots: int, queries: int, meta_batch_size: int = 1,
                 seed=0):
        if not isinstance(pool, ClassPool):
            raise TypeError(f"EpisodeSampler: pool must be a ClassPool, got {type(pool).__name__}")
        self.pool = pool
        self.ways = _count(ways, "ways")
        self.shots = _count(shots, "shots")
        self.queries = _count(queries, "queries")
        self.meta_batch_size = _count(meta_batch_size, "meta_batch_size")
        if self.ways > pool.num_classes:
            raise ValueError(
                f"{self.ways}-way episodes need {self.ways} classes, but split {pool.name!r} has "
                f"{pool.num_classes} ({len(pool.names)} characters x {len(pool.rotations)} rotations)")
        needed = self.shots + self.queries
        if needed > pool.drawings:
            raise ValueError(
                f"{self.shots} shots + {self.queries} queries need {needed} drawings per class, but split "
                f"{pool.name!r} has {pool.drawings} per class")
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.batches_drawn = 0

    def _settings(self):
        return {"ways": self.ways, "shots": self.shots, "queries": self.queries,
                "meta_batch_size": self.meta_batch_size, "num_classes": self.pool.num_classes,
                "drawings": self.pool.drawings}

    def state(self) -> dict:
        """A JSON-serialisable snapshot: the generator's state, the batch count and the settings."""
        return {"version": _STATE_VERSION, "bit_generator": copy.deepcopy(self._rng.bit_generator.state),
                "batches_drawn": self.batches_drawn, "settings": self._settings()}

    def set_state(self, state: dict) -> None:
        """Continue from a ``state()`` snapshot; the settings must match (else ValueError)."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"EpisodeSampler.set_state: not a sampler state of version {_STATE_VERSION}")
        if state["settings"] != self._settings():
            raise ValueError(f"EpisodeSampler.set_state: the state was saved with {state['settings']}, "
                             f"this sampler has {self._settings()}")
        bit_generator = state["bit_generator"]
        if bit_generator.get("bit_generator") != type(self._rng.bit_generator).__name__:
            # a state saved from another bit generator (PCG64 vs Philox...) needs that kind
            self._rng = np.random.Generator(getattr(np.random, bit_generator["bit_generator"])())
        self._rng.bit_generator.state = copy.deepcopy(bit_generator)
        self.batches_drawn = int(state["batches_drawn"])

    def sample(self, return_classes: bool = False):
        """The next task batch (:class:`Episodes`); with ``return_classes`` also the pool class
        behind each label, an int64 array (T, N): ``classes[t, n]`` is label ``n`` of task ``t``."""
        pool, rng = self.pool, self._rng
        tasks, ways, shots, queries = self.meta_batch_size, self.ways, self.shots, self.queries
        per_class = shots + queries
        # the first N of a uniformly random ordering: distinct classes in random label order
        classes = np.argsort(rng.random((tasks, pool.num_classes)), axis=1)[:, :ways]
        drawings = np.argsort(rng.random((tasks, ways, pool.drawings)), axis=2)[:, :, :per_class]
        character, turn = np.divmod(classes, len(pool.rotations))
        # gather and rotate in the pool's own dtype (uint8: a quarter of float32's bytes)
        images = pool.images[character[:, :, None], drawings]                 # (T, N, K+Q, H, W)
        angles = np.asarray(pool.rotations)[turn]
        for angle in set(pool.rotations) - {0}:
            rotate = angles == angle
            images[rotate] = np.rot90(images[rotate], angle // 90, axes=(-2, -1))
        height, width = pool.image_shape
        support_x = _as_float(images[:, :, :shots]).reshape(tasks, ways * shots, 1, height, width)
        query_x = _as_float(images[:, :, shots:]).reshape(tasks, ways * queries, 1, height, width)
        support_y = np.tile(np.repeat(np.arange(ways, dtype=np.int64), shots), (tasks, 1))
        query_y = np.tile(np.repeat(np.arange(ways, dtype=np.int64), queries), (tasks, 1))
        self.batches_drawn += 1
        episodes = Episodes(support_x, support_y, query_x, query_y)
        return (episodes, classes.astype(np.int64)) if return_classes else episodes

    def __iter__(self):
        return self

    def __next__(self) -> Episodes:
        return self.sample()
