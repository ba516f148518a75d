"""2-D convolution and pooling on (N, C, H, W) Tensors, PyTorch's signatures and layouts.

``conv2d`` is the table op of that name (ops.py): one matrix product on im2col columns,
whose input gradient is a transposed convolution and whose weight gradient a correlation
of input and output gradient, both table ops whose rules are the three again. The pools
are the table op ``im2col`` (every window laid out as a column; its rule is its adjoint
``col2im``) followed by a max or a sum over the window, ops with rules of their own; a max
pool whose windows tile the image (the usual 2x2) is the table op ``max_pool_tiles``. So
all are differentiable to any order: second-order MAML runs through a conv net.

A 3-D input (C, H, W) is one unbatched image, as in PyTorch.
"""
from __future__ import annotations

import math
import numbers
from typing import Tuple, Union


from . import ops
from .backends.im2col import output_size
from .tensor import Tensor, _floating, record

__all__ = ["conv2d", "max_pool2d", "avg_pool2d"]

IntPair = Union[int, Tuple[int, int]]  # one size for both axes, or (rows, columns)


def _tensor(x, name, what="input"):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor, got {type(x).__name__}")
    return x


def _pair_of(value, name, what, least):
    """An int or a pair of ints as a (row, column) pair, each at least ``least``."""
    items = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        items = tuple(items)
    except TypeError:
        items = ()
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                              for v in items):
        raise TypeError(f"{name}: {what} must be an int or a pair of ints, got {value!r}")
    if any(v < least for v in items):
        raise ValueError(f"{name}: {what} must be at least {least}, got {value!r}")
    return int(items[0]), int(items[1])


def _image(x, name):
    """``x`` as a floating (N, C, H, W) Tensor, and whether it was a single (C, H, W) image."""
    x = _floating(_tensor(x, name))
    if x.ndim not in (3, 4):
        raise ValueError(f"{name}: input must be (N, C, H, W) or (C, H, W), got shape {x.shape}")
    if x.ndim == 3:
        return x.reshape((1,) + x.shape), True
    return x, False


def _output_shape(x, kernel, stride, padding, dilation, name):
    """(OH, OW), or a ValueError when the window does not fit."""
    h, w = x.shape[-2:]
    oh = output_size(h, kernel[0], stride[0], padding[0], dilation[0])
    ow = output_size(w, kernel[1], stride[1], padding[1], dilation[1])
    if oh <= 0 or ow <= 0:
        raise ValueError(
            f"{name}: input of spatial size {h}x{w} (padding {padding}) is smaller than the "
            f"kernel {kernel} with dilation {dilation}: the output would be {oh}x{ow}")
    return oh, ow


def _same_place(x, other, name, what):
    other = _tensor(other, name, what)
    if other._be is not x._be:
        raise RuntimeError(f"{name}: {what} is on {other.device} but the input on {x.device}; "
                           "move one with .to(device)")
    if other.dtype != x.dtype:
        raise TypeError(f"{name}: dtype mismatch: input {x.dtype}, {what} {other.dtype}; cast one "
                        "with .astype() (no implicit promotion)")
    return other


def _columns(x, kernel, stride, padding, dilation, pad_value):
    return record(ops.im2col, x, kernel, stride, padding, dilation, pad_value, x._be)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntPair = 1,
           padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    ``x``: (N, C, H, W) (or one (C, H, W) image); ``weight``: (O, C // groups, kh, kw);
    ``bias``: (O,) or None. ``stride``, ``padding`` (zeros), ``dilation``: an int or a
    (row, column) pair. ``groups`` splits the channels into that many independent
    convolutions. Returns (N, O, OH, OW) with ``OH = (H + 2 ph - dh (kh - 1) - 1) // sh + 1``.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.ones((1, 1, 4, 4))); w = tgm.Tensor(np.ones((2, 1, 3, 3)))
    >>> conv2d(x, w, padding=1).shape, float(conv2d(x, w)[0, 0, 0, 0].item())
    ((1, 2, 4, 4), 9.0)
    """
    name = "conv2d"
    x, unbatched = _image(x, name)
    weight = _same_place(x, weight, name, "weight")
    if weight.ndim != 4:
        raise ValueError(f"{name}: weight must be (out_channels, in_channels // groups, kh, kw), "
                         f"got shape {weight.shape}")
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive integer, got {groups!r}")
    stride = _pair_of(stride, name, "stride", 1)
    padding = _pair_of(padding, name, "padding", 0)
    dilation = _pair_of(dilation, name, "dilation", 1)
    n, channels = x.shape[:2]
    out_channels, group_channels, kh, kw = weight.shape
    if channels % groups or out_channels % groups:
        raise ValueError(f"{name}: groups={groups} must divide the input channels ({channels}) and "
                         f"the output channels ({out_channels})")
    if group_channels * groups != channels:
        raise ValueError(f"{name}: weight of shape {weight.shape} expects {group_channels * groups} "
                         f"input channels (groups={groups}), got input of shape {x.shape}")
    if bias is not None:
        bias = _same_place(x, bias, name, "bias")
        if bias.shape != (out_channels,):
            raise ValueError(f"{name}: bias must have shape ({out_channels},), got {bias.shape}")
    _output_shape(x, (kh, kw), stride, padding, dilation, name)
    out = record(ops.conv2d, x, weight, stride, padding, dilation, int(groups), x._be,
                 ops.ConvColumns() if weight._requires_grad else None)
    if bias is not None:
        out = out + bias.reshape(out_channels, 1, 1)
    return out.reshape(out.shape[1:]) if unbatched else out


def _pool_arguments(kernel_size, stride, padding, dilation, name):
    kernel = _pair_of(kernel_size, name, "kernel_size", 1)
    stride = kernel if stride is None else _pair_of(stride, name, "stride", 1)
    padding = _pair_of(padding, name, "padding", 0)
    dilation = _pair_of(dilation, name, "dilation", 1)
    # as PyTorch: a window must always hold at least one real element
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        raise ValueError(f"{name}: padding {padding} must be at most half the kernel size {kernel}")
    return kernel, stride, padding, dilation


def _floor_mode_only(name, ceil_mode):
    if ceil_mode:
        raise NotImplementedError(f"{name}: ceil_mode=True is not supported (floor mode, "
                                  "PyTorch's default, is)")


def _tiles(x, kernel, stride, padding, dilation, oh, ow):
    """Windows that tile the image (stride = kernel, no padding, no dilation: the usual 2x2
    pooling) as (kh * kw, N, C, OH, OW), no im2col needed; None otherwise. The window axis
    goes first: a reduction over it is elementwise over whole planes, 7x faster in numpy
    than one over the two small strided axes of a (N, C, OH, kh, OW, kw) view."""
    if stride != kernel or padding != (0, 0) or dilation != (1, 1):
        return None
    (kh, kw), (h, w) = kernel, x.shape[-2:]
    if (h, w) != (oh * kh, ow * kw):  # floor mode drops the last rows and columns
        x = x[:, :, :oh * kh, :ow * kw]
    n, c = x.shape[:2]
    windows = x.reshape(n, c, oh, kh, ow, kw).permute(3, 5, 0, 1, 2, 4)
    return windows.reshape(kh * kw, n, c, oh, ow)


def _unbatch(out, unbatched):
    return out.reshape(out.shape[1:]) if unbatched else out


def max_pool2d(x: Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               dilation: IntPair = 1, ceil_mode: bool = False, return_indices: bool = False) -> Tensor:
    """The maximum over each window, as ``torch.nn.functional.max_pool2d`` (floor mode).

    ``x``: (N, C, H, W) or (C, H, W). ``stride`` defaults to ``kernel_size``; padding taps
    are -inf (never the maximum). Tied maxima share the gradient equally and a NaN is the
    maximum of its window, as for ``Tensor.max`` (whose rule this is). ``ceil_mode`` and
    ``return_indices`` are there for PyTorch's signature; only their defaults are supported.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.arange(16.0).reshape(1, 1, 4, 4))
    >>> max_pool2d(x, 2).numpy().reshape(-1).tolist()
    [5.0, 7.0, 13.0, 15.0]
    """
    name = "max_pool2d"
    _floor_mode_only(name, ceil_mode)
    if return_indices:
        raise NotImplementedError(f"{name}: return_indices=True is not supported")
    x, unbatched = _image(x, name)
    kernel, stride, padding, dilation = _pool_arguments(kernel_size, stride, padding, dilation, name)
    oh, ow = _output_shape(x, kernel, stride, padding, dilation, name)
    if stride == kernel and padding == (0, 0) and dilation == (1, 1):  # tiles: the usual 2x2
        if tuple(x.shape[-2:]) != (oh * kernel[0], ow * kernel[1]):
            x = x[:, :, :oh * kernel[0], :ow * kernel[1]]  # floor mode drops the last rows/columns
        out = record(ops.max_pool_tiles, x, kernel)
    else:
        n, channels = x.shape[:2]
        cols = _columns(x, kernel, stride, padding, dilation, -math.inf)
        out = cols.reshape(n, channels, kernel[0] * kernel[1], oh * ow).max(axis=2)
        out = out.reshape(n, channels, oh, ow)
    return out.reshape(out.shape[1:]) if unbatched else out


def avg_pool2d(x: Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               ceil_mode: bool = False, count_include_pad: bool = True) -> Tensor:
    """The mean over each window, as ``torch.nn.functional.avg_pool2d`` (floor mode).

    ``x``: (N, C, H, W) or (C, H, W). ``stride`` defaults to ``kernel_size``. Padding taps
    are zeros; ``count_include_pad=True`` (PyTorch's default) divides every window by
    kh * kw, False by the number of real elements in it. ``ceil_mode=True`` is not supported.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.arange(16.0).reshape(1, 1, 4, 4))
    >>> avg_pool2d(x, 2).numpy().reshape(-1).tolist()
    [2.5, 4.5, 10.5, 12.5]
    """
    name = "avg_pool2d"
    _floor_mode_only(name, ceil_mode)
    x, unbatched = _image(x, name)
    kernel, stride, padding, _ = _pool_arguments(kernel_size, stride, padding, 1, name)
    oh, ow = _output_shape(x, kernel, stride, padding, (1, 1), name)
    n, channels = x.shape[:2]
    taps = kernel[0] * kernel[1]
    windows = _tiles(x, kernel, stride, padding, (1, 1), oh, ow)
    if windows is not None:
        return _unbatch(windows.sum(axis=0) * (1.0 / taps), unbatched)
    cols = _columns(x, kernel, stride, padding, (1, 1), 0.0)
    total = cols.reshape(n, channels, taps, oh * ow).sum(axis=2)
    if count_include_pad or padding == (0, 0):
        out = total * (1.0 / taps)
    else:
        # the real elements of each window: im2col of an image of ones, summed per window
        ones = x._be.xp.ones((1, 1) + tuple(x.shape[-2:]), dtype=x._data.dtype)
        counts = ops.im2col.forward(ones, kernel, stride, padding, (1, 1), 0.0, x._be).sum(axis=1)
        out = total / Tensor(counts.reshape(1, oh * ow), dtype=x.dtype, device=x.device)
    out = out.reshape(n, channels, oh, ow)
    return out.reshape(out.shape[1:]) if unbatched else out
