"""Glyphs: procedurally drawn stroke characters, an offline stand-in for Omniglot.

Every class is a "character" of one to four pen strokes, each a cubic Bezier curve, some
starting on an earlier stroke as handwriting does. Every drawing of a class jitters the
stroke control points, applies a random affine map (rotation, scale, shear,
translation) and a random pen width, and rasterises the curves with anti-aliasing, so
drawings of one class differ the way different people's drawings of one Omniglot
character do while classes stay apart.

Images are float32 (classes, drawings, 28, 28) in [0, 1], strokes 1.0 on paper 0.0:
Omniglot's convention in this package. Generation is a pure function of the seed (bit
for bit with one numpy build; another build's vectorised exp/cos may differ in the last
bits) and vectorised with numpy: 2-4 s for the default 1,623 classes x 20 drawings
on a shared 2-core machine. Classes come in blocks of 64 drawn from their own seeded generator,
so ``make_glyphs(100)`` is exactly the first 100 classes of ``make_glyphs(1623)``.

>>> images = make_glyphs(num_classes=3, drawings=20, seed=0)
>>> images.shape, images.dtype, float(images.min()) >= 0.0, float(images.max()) <= 1.0
((3, 20, 28, 28), dtype('float32'), True, True)
>>> splits = glyph_splits(num_classes=300, num_train=200, num_val=50)
>>> splits.train.num_classes, splits.val.num_classes, splits.test.num_classes
(800, 50, 50)
"""
from __future__ import annotations

import numbers

import numpy as np

from .episodes import ClassPool, FewShotSplits, split_rotations

__all__ = ["make_glyphs", "glyph_splits", "NUM_CLASSES", "DRAWINGS"]

NUM_CLASSES = 1623        # as many classes as Omniglot has characters
DRAWINGS = 20
_BLOCK = 64               # classes per seeded generator block (fixed: part of the output's definition)
_MAX_STROKES = 4
_RADIUS = 2               # of the pen's Gaussian, in pixels
_POINTS = 48              # samples per Bezier stroke; spacing stays under a pixel for the longest


def _bernstein(points):
    """The cubic Bernstein basis at ``points`` evenly spaced parameters, (points, 4)."""
    t = np.linspace(0.0, 1.0, points)[:, None]
    return np.concatenate([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], axis=1)


_BERNSTEIN = _bernstein(_POINTS).astype(np.float32)


def _prototypes(rng, classes):
    """Control points (classes, strokes, 4, 2) in [-1, 1]^2 and which strokes exist."""
    count = rng.choice(np.arange(1, _MAX_STROKES + 1), size=classes, p=[0.1, 0.3, 0.35, 0.25])
    active = np.arange(_MAX_STROKES)[None, :] < count[:, None]
    start = rng.uniform(-0.7, 0.7, size=(classes, _MAX_STROKES, 2))
    angle = rng.uniform(0.0, 2 * np.pi, size=(classes, _MAX_STROKES))
    length = rng.uniform(0.7, 1.6, size=(classes, _MAX_STROKES))
    bend = rng.normal(0.0, 0.3, size=(classes, _MAX_STROKES, 2))
    attach = rng.random((classes, _MAX_STROKES)) < 0.5
    attach_to = rng.integers(0, 1 << 30, size=(classes, _MAX_STROKES))
    attach_end = rng.random((classes, _MAX_STROKES)) < 0.5
    control = np.empty((classes, _MAX_STROKES, 4, 2))
    for stroke in range(_MAX_STROKES):
        first = start[:, stroke]
        if stroke > 0:
            # half of the later strokes start at an end of an earlier one: joined strokes
            earlier = attach_to[:, stroke] % stroke
            end_point = control[np.arange(classes), earlier, np.where(attach_end[:, stroke], 3, 0)]
            first = np.where(attach[:, stroke, None], end_point, first)
        direction = np.stack([np.cos(angle[:, stroke]), np.sin(angle[:, stroke])], axis=1)
        last = first + length[:, stroke, None] * direction
        normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
        middle = [first + (last - first) * f + normal * length[:, stroke, None] * bend[:, stroke, i, None]
                  for i, f in enumerate((1 / 3, 2 / 3))]
        control[:, stroke] = np.stack([first, middle[0], middle[1], last], axis=1)
    # centre each character on its strokes' bounding box and scale it to fill most of the
    # box, as Omniglot's drawings do (the curve lies inside its control points' hull)
    used = np.where(active[:, :, None, None], control, np.nan)
    low, high = np.nanmin(used, axis=(1, 2)), np.nanmax(used, axis=(1, 2))
    extent = np.max(high - low, axis=1) / 2
    size = rng.uniform(0.7, 0.9, size=classes)
    control = (control - (low + high)[:, None, None, :] / 2) * (size / np.maximum(extent, 1e-6))[:, None, None, None]
    return control, active


def _affine(rng, shape):
    """Random 2x2 maps and translations for ``shape`` drawings: rotation, per-axis scale, shear."""
    rotation = rng.normal(0.0, 0.2, size=shape)
    scale = np.exp(rng.normal(0.0, 0.12, size=shape + (2,)))
    shear = rng.normal(0.0, 0.2, size=shape)
    shift = rng.normal(0.0, 0.12, size=shape + (2,))
    cos, sin = np.cos(rotation), np.sin(rotation)
    turn = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    slant = np.zeros(shape + (2, 2))
    slant[..., 0, 0] = slant[..., 1, 1] = 1.0
    slant[..., 0, 1] = shear
    return turn @ slant * scale[..., None, :], shift


def _rasterise(points, weights, pen, size):
    """Splat weighted points (images, n, 2) in pixel units bilinearly, then blur each image
    with a Gaussian of its own pen width: a stroke's ink per unit length is even."""
    images = points.shape[0]
    margin = _RADIUS                      # the blur's radius: the padded canvas serves the blur too
    padded = size + 2 * margin
    corner = np.floor(points)
    frac = (points - corner).astype(np.float32)
    corner = corner.astype(np.int64) + margin
    # ink that leaves the padded canvas is dropped (the frame cuts the stroke off)
    inside = np.all((corner >= 0) & (corner <= padded - 2), axis=-1)
    weights = np.where(inside, weights, 0.0)
    corner = np.clip(corner, 0, padded - 2)
    base = (np.arange(images)[:, None] * padded + corner[..., 1]) * padded + corner[..., 0]
    fx, fy = frac[..., 0], frac[..., 1]
    shares = [(0, (1 - fx) * (1 - fy)), (1, fx * (1 - fy)), (padded, (1 - fx) * fy), (padded + 1, fx * fy)]
    canvas = np.bincount(np.concatenate([(base + offset).ravel() for offset, _ in shares]),
                         np.concatenate([(weights * share).ravel() for _, share in shares]),
                         minlength=images * padded * padded).astype(np.float32)
    canvas = canvas.reshape(images, padded, padded)
    taps = np.arange(-margin, margin + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps[None, :] / pen[:, None]) ** 2)
    kernel /= kernel.sum(axis=1, keepdims=True)
    windows = np.lib.stride_tricks.sliding_window_view(canvas, 2 * margin + 1, axis=2)
    canvas = np.einsum("nhwk,nk->nhw", windows, kernel)                       # (images, padded, size)
    windows = np.lib.stride_tricks.sliding_window_view(canvas, 2 * margin + 1, axis=1)
    canvas = np.einsum("nhwk,nk->nhw", windows, kernel)                       # (images, size, size)
    # a blurred line of unit density peaks at 1/(sqrt(2 pi) pen); the gain saturates its core
    gain = 1.6 * np.sqrt(2 * np.pi) * pen
    return np.clip(canvas * gain[:, None, None], 0.0, 1.0)


def _block(seed, block, drawings, size):
    rng = np.random.default_rng([seed, block])
    control, active = _prototypes(rng, _BLOCK)
    shape = (_BLOCK, drawings)
    jittered = control[:, None] + rng.normal(0.0, 0.09, size=shape + control.shape[1:])
    linear, shift = _affine(rng, shape)
    jittered = np.einsum("cdij,cdskj->cdski", linear, jittered) + shift[:, :, None, None, :]
    pen = rng.uniform(0.6, 0.9, size=shape).ravel().astype(np.float32)
    curve = _BERNSTEIN @ jittered.astype(np.float32)                      # (C, D, strokes, points, 2)
    half = (size - 1) / 2
    pixels = half + curve * (size * 0.36)          # the [-1, 1] box spans about 20 of 28 pixels
    step = np.linalg.norm(np.diff(pixels, axis=3), axis=-1)              # segment lengths in pixels
    weights = np.zeros(pixels.shape[:-1])
    weights[..., 1:] += step / 2
    weights[..., :-1] += step / 2
    weights *= active[:, None, :, None]
    images = _rasterise(pixels.reshape(_BLOCK * drawings, -1, 2), weights.reshape(_BLOCK * drawings, -1),
                        pen, size)
    return images.reshape(_BLOCK, drawings, size, size).astype(np.float32)


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"glyphs: {name} must be a positive integer, got {value!r}")
    return int(value)


def make_glyphs(num_classes: int = NUM_CLASSES, drawings: int = DRAWINGS, seed: int = 0,
                image_size: int = 28) -> np.ndarray:
    """Generate glyph classes: float32 (num_classes, drawings, image_size, image_size) in [0, 1].

    The same (num_classes, drawings, seed, image_size) always gives the same bits; fewer
    classes give a prefix of more.

    >>> bool((make_glyphs(2, seed=5) == make_glyphs(70, seed=5)[:2]).all())
    True
    """
    num_classes, drawings = _positive(num_classes, "num_classes"), _positive(drawings, "drawings")
    image_size = _positive(image_size, "image_size")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"glyphs: seed must be a non-negative integer, got {seed!r}")
    blocks = -(-num_classes // _BLOCK)
    images = np.concatenate([_block(int(seed), b, drawings, image_size) for b in range(blocks)])
    return images[:num_classes]


def glyph_splits(num_classes: int = NUM_CLASSES, drawings: int = DRAWINGS, seed: int = 0,
                 num_train: int = 1100, num_val: int = 100, rotations: str = "train") -> FewShotSplits:
    """Meta-train / validation / meta-test pools of glyphs, sized like the Omniglot split.

    The first ``num_train`` classes meta-train, the next ``num_val`` validate, the rest
    meta-test (classes are independent draws, so no shuffle is needed). ``rotations``:
    which splits also get every class at 90/180/270 degrees, "train" (default), "all" or
    "none" (:func:`split_rotations`). Out: a :class:`FewShotSplits`.
    """
    turns = split_rotations(rotations)
    num_train, num_val = _positive(num_train, "num_train"), _positive(num_val, "num_val")
    if num_train + num_val >= num_classes:
        raise ValueError(f"glyphs: {num_classes} classes are not enough for {num_train} meta-train + "
                         f"{num_val} validation classes and a test split")
    images = make_glyphs(num_classes, drawings, seed)
    names = tuple(f"glyph{i:04d}" for i in range(num_classes))
    parts = [slice(0, num_train), slice(num_train, num_train + num_val), slice(num_train + num_val, None)]
    pools = [ClassPool(images[part], names[part], turn, split)
             for part, turn, split in zip(parts, turns, ("train", "val", "test"))]
    description = (f"glyphs (seed {seed}): {num_train} meta-train, {num_val} validation and "
                   f"{num_classes - num_train - num_val} meta-test classes of {drawings} drawings; rotations "
                   f"(x4 classes) on {rotations!r} splits")
    return FewShotSplits(*pools, description=description)
