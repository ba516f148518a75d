"""im2col and col2im on any numpy-like module: the reference the compiled kernels match.

A 2-D convolution is a matrix product once every receptive field is laid out as a
column: ``im2col`` gathers them, ``col2im`` scatters columns back (adding where fields
overlap). The two are adjoint linear maps, so each is the other's gradient, which is
what makes convolution differentiable to any order with no rule of its own.

Layout (Caffe's, so the product gives NCHW with no transpose):

* ``x``: (N, C, H, W)
* ``cols``: (N, C * kh * kw, OH * OW), row index ``(c * kh + i) * kw + j``, column
  ``oy * OW + ox``; the row order matches a PyTorch weight (O, C, kh, kw) reshaped to
  (O, C * kh * kw).
* ``OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1`` (PyTorch's formula), same for OW.

Out-of-bounds (padding) taps read ``pad_value`` (0 for convolution, -inf for max pooling).

``layout="batch"`` lays the columns of the whole batch side by side instead: one
(C * kh * kw, N * OH * OW) matrix, column ``n * OH * OW + oy * OW + ox``. Then a
convolution is one GEMM ``W (O, C*kh*kw) @ cols`` for the batch (and its weight gradient
one GEMM ``g (O, N*OH*OW) @ cols.T``) instead of N small products, which matters when
OH * OW is small (4 columns per image at the last Omniglot layer).
"""
from __future__ import annotations

import numpy as np

__all__ = ["im2col", "col2im", "output_size", "geometry"]


def output_size(size, kernel, stride, padding, dilation):
    """Output length of one spatial axis, as PyTorch computes it."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pair_ok(pair, low):
    return (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low for v in pair))


_CHECKED = {}  # (op, shape, kernel, stride, padding, dilation) -> the sizes of a valid call


def geometry(op, input_shape, kernel, stride, padding, dilation):
    """Check one im2col/col2im call and return its sizes
    ``(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)`` as Python ints.

    Every implementation (this reference, the Cython and CUDA kernels) validates here,
    so a bad call raises the same ValueError, naming ``op``, whichever one runs. Valid
    calls given as tuples are remembered: a conv net repeats a few geometries thousands
    of times (a chunked convolution checks each chunk), and the checks cost more than
    the lookup.
    """
    try:
        key = (op, tuple(input_shape), kernel, stride, padding, dilation)
        return _CHECKED[key]
    except (KeyError, TypeError):  # new, or a list among the pairs (unhashable)
        pass
    sizes = _checked_geometry(op, input_shape, kernel, stride, padding, dilation)
    if type(kernel) is tuple and type(stride) is tuple and type(padding) is tuple \
            and type(dilation) is tuple:
        if len(_CHECKED) > 4096:
            _CHECKED.clear()
        _CHECKED[(op, tuple(input_shape), kernel, stride, padding, dilation)] = sizes
    return sizes


def _checked_geometry(op, input_shape, kernel, stride, padding, dilation):
    if len(input_shape) != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {tuple(input_shape)}")
    for name, pair, low in (("kernel", kernel, 1), ("stride", stride, 1),
                            ("padding", padding, 0), ("dilation", dilation, 1)):
        if not _pair_ok(pair, low):
            raise ValueError(f"{op}: {name} must be a (row, column) pair of ints >= {low}, got {pair!r}")
    n, c, h, w = (int(v) for v in input_shape)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = ((int(a), int(b)) for a, b in (kernel, stride, padding, dilation))
    oh, ow = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{op}: kernel {kh}x{kw} with dilation {dh}x{dw} spans {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1}, "
            f"larger than the padded input {h + 2 * ph}x{w + 2 * pw} (input {h}x{w}, padding {ph}x{pw})")
    return n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow


LAYOUTS = ("image", "batch")


def check_layout(op, layout):
    """``layout`` if it is one of :data:`LAYOUTS`, else a ValueError naming ``op``."""
    if layout not in LAYOUTS:
        raise ValueError(f"{op}: layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def check_cols(op, cols, geo, layout="image"):
    """Raise a ValueError naming ``op`` unless ``cols`` has the shape ``geo`` implies."""
    n, c, _, _, kh, kw, _, _, _, _, _, _, oh, ow = geo
    want = (c * kh * kw, n * oh * ow) if check_layout(op, layout) == "batch" else (n, c * kh * kw, oh * ow)
    if tuple(cols.shape) != want:
        raise ValueError(f"{op}: columns of shape {tuple(cols.shape)} do not fit the input shape "
                         f"{tuple(geo[:4])} and kernel {kh}x{kw}: expected {want}")


def _xp(array):
    return np if isinstance(array, np.ndarray) else __import__(type(array).__module__.split(".")[0])


def im2col(x, kernel, stride, padding, dilation, pad_value=0.0, layout="image"):
    """Receptive fields of ``x`` (N, C, H, W) as columns (N, C*kh*kw, OH*OW).

    ``kernel``, ``stride``, ``padding``, ``dilation`` are (row, column) pairs; a kernel
    that does not fit the padded input raises ValueError. ``layout="batch"``: one
    (C*kh*kw, N*OH*OW) matrix instead (module docstring).
    """
    xp = _xp(x)
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = geometry("im2col", x.shape, kernel, stride,
                                                                  padding, dilation)
    batch_layout = check_layout("im2col", layout) == "batch"
    if ph or pw:
        x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=pad_value)
    cols = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            r, q = i * dh, j * dw
            cols[:, :, i, j] = x[:, :, r:r + sh * (oh - 1) + 1:sh, q:q + sw * (ow - 1) + 1:sw]
    if batch_layout:
        return xp.ascontiguousarray(cols.transpose(1, 2, 3, 0, 4, 5)).reshape(c * kh * kw, n * oh * ow)
    return cols.reshape(n, c * kh * kw, oh * ow)


def col2im(cols, input_shape, kernel, stride, padding, dilation, layout="image"):
    """The adjoint of :func:`im2col` (with ``pad_value`` 0): columns (N, C*kh*kw, OH*OW)
    (or (C*kh*kw, N*OH*OW) with ``layout="batch"``) summed back into an (N, C, H, W)
    array, overlapping taps added."""
    xp = _xp(cols)
    geo = geometry("col2im", input_shape, kernel, stride, padding, dilation)
    check_cols("col2im", cols, geo, layout)
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = geo
    if layout == "batch":
        cols = cols.reshape(c, kh, kw, n, oh, ow).transpose(3, 0, 1, 2, 4, 5)
    else:
        cols = cols.reshape(n, c, kh, kw, oh, ow)
    padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            r, q = i * dh, j * dw
            padded[:, :, r:r + sh * (oh - 1) + 1:sh, q:q + sw * (ow - 1) + 1:sw] += cols[:, :, i, j]
    return padded[:, :, ph:ph + h, pw:pw + w] if (ph or pw) else padded
