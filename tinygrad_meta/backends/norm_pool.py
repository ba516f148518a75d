"""Batch norm with batch statistics and tiled max pooling on raw arrays: the reference
that the compiled kernels in ``kernels/cpu/norm_pool.pyx`` match.

These are the first-order array computations behind the op table's ``batch_norm_train``
and ``max_pool_tiles`` entries (their forwards, and what their backward rules compute when
nothing is recorded). The rules themselves stay in ``ops.py``, written in differentiable
ops; these functions only ever see raw arrays. Written over numpy's functions, which
dispatch to CuPy and to ``tgm.compile``'s traced arrays, so every backend can run them.

* ``batch_norm_train(x, weight, bias, eps, statistics=None)``: x (N, C, ...) normalised
  per channel with its own mean and biased variance, then ``* weight + bias`` (each (C,)
  or None); ``statistics``: those, when the caller has them (see the function).
* ``batch_norm_relu_train(x, weight, bias, eps, statistics=None)``: relu of that.
* ``batch_norm_train_backward(x, g, weight, eps, relu_out=None)``: (input, weight, bias)
  gradients, of ``g * (relu_out > 0)`` when given (the relu variant's backward).
* each of the three takes ``lead=1``: a leading batch axis (vmap), each example with
  its own statistics and weight (C,) or (B, C).
* ``batch_norm_statistics(x)``: the per-channel (mean, biased variance), each (C,).
* ``max_pool_tiles(x, kernel)``: the maximum of each kh x kw tile of (..., OH*kh, OW*kw).
* ``max_pool_tiles_backward(g, x, out, kernel)``: g sent to each tile's maxima, tied
  maxima sharing it evenly and a NaN (the maximum of its tile) taking it alone.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["batch_norm_train", "batch_norm_relu_train", "batch_norm_train_backward",
           "batch_norm_statistics", "max_pool_tiles", "max_pool_tiles_backward", "statistics_axes",
           "tile_shapes"]


def statistics_axes(ndim, lead=0):
    """The statistics' axes of an (..., N, C, *spatial) array with ``lead`` batch axes."""
    return (lead,) + tuple(range(lead + 2, ndim))


def batch_norm_train(x, weight, bias, eps, statistics=None, lead=0):
    """(x - mean) / sqrt(var + eps) [* weight] [+ bias] per channel of x (N, C, ...), the
    statistics over every axis but C (biased variance). ``lead`` batch axes in front
    (vmap) each take their own statistics, with weight/bias (C,) or (B, C).
    ``statistics``: x's own (mean, var) if the caller has them, which a kernel may use
    to skip its statistics pass; this reference always takes them itself."""
    axes = statistics_axes(x.ndim, lead)
    count = math.prod(x.shape[a] for a in axes)
    centered = x - x.sum(axis=axes, keepdims=True) * (1.0 / count)
    var = (centered * centered).sum(axis=axes, keepdims=True) * (1.0 / count)
    scale = (var + eps) ** -0.5
    channel = (x.shape[lead + 1],) + (1,) * (x.ndim - lead - 2)
    if weight is not None:  # (C,), or (B, C) batched: per-channel, right-aligned
        scale = scale * weight.reshape(weight.shape[:-1] + (1,) * (weight.ndim > 1) + channel)
    centered *= scale
    if bias is not None:
        centered += bias.reshape(bias.shape[:-1] + (1,) * (bias.ndim > 1) + channel)
    return centered.astype(x.dtype, copy=False)


def batch_norm_relu_train(x, weight, bias, eps, statistics=None, lead=0):
    """relu(batch_norm_train(x, weight, bias, eps, lead=lead)), the maximum taken in place."""
    out = batch_norm_train(x, weight, bias, eps, lead=lead)
    return np.maximum(out, 0, out=out)


def batch_norm_train_backward(x, g, weight, eps, relu_out=None, lead=0):
    """The gradients (input, weight, bias) of <g, batch_norm_train(x, weight, ., eps)>,
    x and g (N, C, ...) of one float dtype, weight (C,) or None (then the weight
    gradient is still returned: the per-channel sum of g * normalized). With
    ``relu_out`` (batch_norm_relu_train's output), of <g, relu(batch_norm_train(...))>:
    g masked by ``relu_out > 0`` first, as ReLU's rule does. ``lead=1``: x, g, relu_out
    (B, N, C, ...), each example with its own statistics, weight (C,) or (B, C); the
    weight and bias gradients are then (B, C).

    The op table's rule at first order in fewer passes: two full-size buffers reused in
    place, and the input gradient as g * s - centered * (s * inv_std * mean(g * normalized))
    - s * mean(g) with per-channel s = inv_std * weight (``normalized`` is never formed)."""
    axes = statistics_axes(x.ndim, lead)
    inverse_count = 1.0 / math.prod(x.shape[a] for a in axes)
    channel = (x.shape[lead + 1],) + (1,) * (x.ndim - lead - 2)
    if relu_out is not None:
        g = g * (relu_out > 0)
    centered = x - x.sum(axis=axes, keepdims=True) * inverse_count
    scratch = np.multiply(centered, centered)
    inv_std = (scratch.sum(axis=axes, keepdims=True) * inverse_count + eps) ** -0.5
    sum_g = g.sum(axis=axes, keepdims=True)
    np.multiply(g, centered, out=scratch)
    sum_gn = scratch.sum(axis=axes, keepdims=True) * inv_std
    if weight is not None:  # (C,), or (B, C) batched: per-channel, right-aligned
        scale = inv_std * weight.reshape(weight.shape[:-1] + (1,) * (weight.ndim > 1) + channel)
    else:
        scale = inv_std
    grad = np.multiply(g, scale, out=scratch)
    grad -= (sum_g * inverse_count) * scale
    centered *= (sum_gn * inverse_count) * inv_std * scale
    grad -= centered
    per_channel = x.shape[:lead] + x.shape[lead + 1:lead + 2]
    return grad, sum_gn.reshape(per_channel), sum_g.reshape(per_channel)


def batch_norm_statistics(x):
    """The per-channel mean and biased variance of x (N, C, ...), each (C,) of x's dtype."""
    axes = statistics_axes(x.ndim)
    return x.mean(axis=axes), x.var(axis=axes)


def tile_shapes(shape, kernel):
    """(tiled, spread) views of (..., OH * kh, OW * kw) images: (..., OH, kh, OW, kw), each
    tile's taps on axes -3 and -1, and (..., OH, 1, OW, 1), a pooled value per tile."""
    (kh, kw), lead = kernel, tuple(shape[:-2])
    oh, ow = shape[-2] // kh, shape[-1] // kw
    return lead + (oh, kh, ow, kw), lead + (oh, 1, ow, 1)


def max_pool_tiles(x, kernel):
    """The maximum over each kh x kw tile of (..., OH * kh, OW * kw) images: (..., OH, OW),
    the pooling whose windows tile the image (stride = kernel, no padding). One
    elementwise maximum per tap on strided views: no copy of x into window order."""
    tiled, _ = tile_shapes(x.shape, kernel)
    taps = x.reshape(tiled)
    out = taps[..., 0, :, 0].copy()
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            if i or j:
                np.maximum(out, taps[..., i, :, j], out=out)  # NaNs propagate
    return out


def max_pool_tiles_backward(g, x, out, kernel):
    """The gradient in x of <g, max_pool_tiles(x, kernel)>, shaped like x: on each tile
    ``g / ties`` at the taps equal to the tile's maximum ``out`` (NaN taps count as
    equal to a NaN maximum), 0 elsewhere. g, x and out of one float dtype.

    The weights are built tap by tap on (..., OH, OW) strided views of x: numpy
    broadcasting against a (..., OH, 1, OW, 1) peak runs inner loops of length kw,
    several times slower."""
    tiled, _ = tile_shapes(x.shape, kernel)
    taps = x.reshape(tiled)
    nan_peak = bool(np.isnan(out).any())
    hits = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            tap = taps[..., i, :, j]
            hit = tap == out
            if nan_peak:
                hit |= np.isnan(tap) & np.isnan(out)
            hits.append(hit)
    ties = hits[0].astype(x.dtype)
    for hit in hits[1:]:
        ties += hit
    share = g / ties
    # empty_like of an input (not np.empty): tgm.compile traces the buffer and its writes
    grad = np.empty_like(out, shape=tiled)
    for index, hit in enumerate(hits):
        i, j = divmod(index, kernel[1])
        np.multiply(share, hit, out=grad[..., i, :, j])
    return grad.reshape(x.shape)
