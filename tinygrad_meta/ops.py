"""The op table: every Tensor primitive and fused node, declared once.

Each entry is an :class:`Op` with

* ``name``     -- what ``viz`` and error messages call it;
* ``forward``  -- ``forward(*inputs, *params)`` on raw backend arrays (numpy on the CPU,
  CuPy on the GPU). Ops that run our compiled kernels (matmul, relu, the fused layers)
  take the backend as their last parameter;
* ``vjp``      -- the backward rule, ``vjp(o, g, out, ins, params, needs)`` returning one
  gradient (or None) per input. ``needs[i]`` says whether input i wants one.

Every backward rule is written ONCE, in numpy-style code over a namespace ``o``:

* at first order (``create_graph=False``: ordinary training) ``g``, ``out`` and ``ins``
  are raw arrays and ``o`` is ``RAW``, whose ``o.name`` is simply the table entry
  ``name``'s forward: no Tensor wrappers, nothing recorded, the fast path;
* with ``create_graph=True`` they are Tensors and ``o`` is the Tensor namespace, whose
  ``o.name(...)`` records the table entry ``name`` as a graph node, so the backward pass
  is a graph like any forward pass and can be differentiated again, to any order.

Python's operators (``+ - * / **``, unary ``-``) mean the same thing on raw arrays and on
Tensors, so rules use them freely; everything else goes through ``o``. ``o.raw(x)`` gives
the raw values of either (for masks and other constants, which are never differentiated).
So the second derivative of matmul is matmul's own rule, recorded: read ``matmul``
below once and you have read both. (HIPS autograd works the same way: its vjps are
written in ``autograd.numpy`` and run on arrays or on boxes alike.)

``Value``, the scalar engine, keeps its eight micrograd-sized rules in scalar.py, written
the same way over a float namespace and a Value namespace; this file is every Tensor op.

Adding an op: declare its forward with ``@primitive(name, nin)``, its rule with
``@<op>.defvjp`` and, for ``tgm.vmap``, its batching rule (the block at the end; an op
without one is batched by a loop over the batch); call it on Tensors with
``tensor.record(op, *inputs, *params)``. An op outside the table (``Op(name, forward,
nin, vjp)``) works the same way; inside a rule, ``o.apply(op, ...)`` calls it in either
namespace.
"""
from __future__ import annotations

import fractions
import math
import operator
import string

import numpy as np

from .backends import cpu as _cpu, get_backend
from .backends import norm_pool as _norm_pool

__all__ = ["Op", "primitive", "TABLE", "RAW", "backend_of", "unbroadcast", "keepdims_shape",
           "BatchedParam", "batch_elementwise", "batch_reduction", "batch_by_loop", "not_batchable",
           "ConvColumns"]

TABLE: dict = {}


class Op:
    """One table entry: a name, a forward on raw arrays, a backward rule (see the module doc).

    ``nin``: how many leading arguments are (differentiable) inputs; the rest are
    parameters, stored on the node and passed to the rule. ``nin=None``: the first
    argument is a sequence of inputs (concatenate, stack, the fused layers).
    """

    __slots__ = ("name", "forward", "vjp", "nin", "batch")

    def __init__(self, name, forward, nin=1, vjp=None):
        self.name = name
        self.forward = forward
        self.vjp = vjp
        self.nin = nin
        self.batch = None  # batching rule for vmap; None: ``batch_by_loop``

    def defvjp(self, rule):
        """Decorator: set the backward rule ``rule(o, g, out, ins, params, needs)``."""
        self.vjp = rule
        return rule

    def defbatch(self, rule):
        """Decorator: set the batching rule ``rule(op, datas, batched, params)`` (see the
        end of this file)."""
        self.batch = rule
        return rule

    def __repr__(self):
        return f"<op {self.name}>"


def primitive(name, nin=1):
    """Decorator: declare ``forward(*inputs, *params)`` as the table op ``name``."""
    def register(forward):
        if name in TABLE:
            raise ValueError(f"primitive: an op named {name!r} is already in the table")
        op = TABLE[name] = Op(name, forward, nin)
        return op
    return register


_BACKEND_OF_TYPE = {np.ndarray: _cpu.BACKEND}


def backend_of(array):
    """The backend whose array module (``.xp``) computes on ``array``."""
    try:
        return _BACKEND_OF_TYPE[type(array)]
    except KeyError:
        pass
    if isinstance(array, (np.ndarray, np.generic, float, int)):
        return _cpu.BACKEND
    if type(array).__module__.split(".")[0] == "cupy":
        be = _BACKEND_OF_TYPE[type(array)] = get_backend("cuda")
        return be
    raise TypeError(f"backend_of: {type(array).__name__} is not an array of a known backend")


class _RawOps:
    """The namespace rules see at first order: ``o.name`` is op ``name``'s forward."""

    recording = False

    def __getattr__(self, name):
        try:
            forward = TABLE[name].forward
        except KeyError:
            raise AttributeError(f"no op named {name!r} in the table") from None
        setattr(self, name, forward)
        return forward

    @staticmethod
    def raw(x):
        return x

    @staticmethod
    def backend(x):
        return backend_of(x)

    @staticmethod
    def apply(op, *args):
        """Any op, also one outside the table (a custom op calling another)."""
        return op.forward(*args)

    # ``first_order``: the rule's results need no graph, so it may compute them with
    # ``per_example(kernel, *args)``, a raw-array kernel of one example's arrays that
    # also takes ``lead=1`` (a leading batch axis, examples independent): here the
    # arrays themselves, in vmap's batched namespace the whole batch's
    first_order = True

    @staticmethod
    def per_example(kernel, *args):
        return kernel(*args)


RAW = _RawOps()


# ----------------------------------------------------------------------------------
# Helpers the rules share (written over ``o``, so they too run at every order)
# ----------------------------------------------------------------------------------

def unbroadcast(o, g, shape):
    """Sum ``g`` down to ``shape`` (a tuple): the adjoint of numpy broadcasting."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    if extra:  # leading axes broadcasting added
        g = o.sum(g, tuple(range(extra)), False)
        if g.shape == shape:
            return g
    kept = tuple(i for i, (n, m) in enumerate(zip(shape, g.shape)) if n == 1 and m != 1)
    return o.sum(g, kept, True)


def keepdims_shape(shape, axes):
    """``shape`` with the reduced ``axes`` (None: all) kept as size 1."""
    if axes is None:
        return (1,) * len(shape)
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _swap_last(x):
    return x.swapaxes(-1, -2)


# ----------------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------------

add = primitive("add", 2)(operator.add)


@add.defvjp
def _add_vjp(o, g, out, ins, params, needs):
    a, b = ins
    return (unbroadcast(o, g, a.shape) if needs[0] else None,
            unbroadcast(o, g, b.shape) if needs[1] else None)


sub = primitive("sub", 2)(operator.sub)


@sub.defvjp
def _sub_vjp(o, g, out, ins, params, needs):
    a, b = ins
    return (unbroadcast(o, g, a.shape) if needs[0] else None,
            unbroadcast(o, -g, b.shape) if needs[1] else None)


mul = primitive("mul", 2)(operator.mul)


@mul.defvjp
def _mul_vjp(o, g, out, ins, params, needs):
    a, b = ins
    return (unbroadcast(o, g * b, a.shape) if needs[0] else None,
            unbroadcast(o, g * a, b.shape) if needs[1] else None)


div = primitive("div", 2)(operator.truediv)


@div.defvjp
def _div_vjp(o, g, out, ins, params, needs):
    a, b = ins
    return (unbroadcast(o, g / b, a.shape) if needs[0] else None,
            unbroadcast(o, -(g * out) / b, b.shape) if needs[1] else None)


pow_ = primitive("pow", 2)(operator.pow)


@pow_.defvjp
def _pow_vjp(o, g, out, ins, params, needs):
    a, b = ins
    ga = gb = None
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 ** negative is inf, as it should be
        if needs[0]:
            ga = unbroadcast(o, g * b * a ** (b - 1.0), a.shape)
        if needs[1]:
            # d/db a**b = a**b log(a); at a == 0 it is 0 (the limit from b > 0), not nan
            nonzero = o.raw(a) != 0
            safe_a = o.where(a, 1.0, nonzero)
            gb = unbroadcast(o, o.where(g * out * o.log(safe_a), 0.0, nonzero), b.shape)
    return ga, gb


neg = primitive("neg", 1)(operator.neg)


@neg.defvjp
def _neg_vjp(o, g, out, ins, params, needs):
    return (-g,)


# A Python number as the other operand: one node, no constant tensor.

add_scalar = primitive("add_scalar", 1)(operator.add)


@add_scalar.defvjp
def _add_scalar_vjp(o, g, out, ins, params, needs):
    return (g,)


@primitive("rsub_scalar")
def rsub_scalar(x, c):
    return c - x


@rsub_scalar.defvjp
def _rsub_scalar_vjp(o, g, out, ins, params, needs):
    return (-g,)


mul_scalar = primitive("mul_scalar", 1)(operator.mul)


@mul_scalar.defvjp
def _mul_scalar_vjp(o, g, out, ins, params, needs):
    return (g * params[0],)


@primitive("rdiv_scalar")
def rdiv_scalar(x, c):
    return c / x


@rdiv_scalar.defvjp
def _rdiv_scalar_vjp(o, g, out, ins, params, needs):
    return (-(g * out) / ins[0],)


pow_scalar = primitive("pow_scalar", 1)(operator.pow)


@pow_scalar.defvjp
def _pow_scalar_vjp(o, g, out, ins, params, needs):
    (x,), (p,) = ins, params
    if p == 2:
        return (g * (x * 2.0),)
    if p == 0:  # x**0 is constant; x ** -1 would turn 0 * inf into nan at x = 0
        return (g * 0.0,)
    with np.errstate(divide="ignore"):  # d/dx x**p at 0 for p < 1 is inf, as it should be
        return (g * (x ** (p - 1) * p),)


@primitive("rpow_scalar")
def rpow_scalar(x, c):
    return c ** x


@rpow_scalar.defvjp
def _rpow_scalar_vjp(o, g, out, ins, params, needs):
    (c,) = params
    # d/dx c**x = c**x log(c); 0 at c == 0 (the limit from x > 0), as for pow
    return (g * out * float(np.log(c)) if c != 0 else g * 0.0,)


# ----------------------------------------------------------------------------------
# Matrix products: ONE gradient rule serves @, matmul_t, linear and linear_relu
# ----------------------------------------------------------------------------------

def _mm(a, b, be):
    """a @ b on raw arrays through backend ``be``'s kernels."""
    if a.ndim == 3 and b.ndim == 3 and b.strides[0] == 0 and a.shape[0] == b.shape[0] > 1:
        # one matrix broadcast over the batch (fast weights before their first update):
        # a single large matmul instead of a batch of small ones
        out = be.matmul(a.reshape(-1, a.shape[-1]), b[0])
        return out.reshape(a.shape[:-1] + b.shape[-1:])
    return be.matmul(a, b)


@primitive("matmul", 2)
def matmul(a, b, trans_a, trans_b, be):
    """op(a) @ op(b), op transposing the last two axes when asked (both at least 2-D);
    ``be``, the backend, runs it on our kernels."""
    return _mm(_swap_last(a) if trans_a else a, _swap_last(b) if trans_b else b, be)


def matmul_grads(o, g, a, b, trans_a, trans_b, be, needs):
    """Gradients of C = op(A) @ op(B): dA from G @ op(B)^T, dB from op(A)^T @ G."""
    ga = gb = None
    if needs[0]:
        ga = o.matmul(b, g, trans_b, True, be) if trans_a else o.matmul(g, b, False, not trans_b, be)
        if ga.shape != a.shape:  # a was broadcast over b's batch
            ga = unbroadcast(o, ga, a.shape)
    if needs[1]:
        gb = o.matmul(g, a, True, trans_a, be) if trans_b else o.matmul(a, g, not trans_a, False, be)
        if gb.shape != b.shape:
            gb = unbroadcast(o, gb, b.shape)
    return ga, gb


@matmul.defvjp
def _matmul_vjp(o, g, out, ins, params, needs):
    trans_a, trans_b, be = params
    return matmul_grads(o, g, ins[0], ins[1], trans_a, trans_b, be, needs)


# ----------------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------------

@primitive("sum")
def sum_(x, axes=None, keepdims=False):
    return x.sum(axis=axes, keepdims=keepdims)


@sum_.defvjp
def _sum_vjp(o, g, out, ins, params, needs):
    (x,), (axes, keepdims) = ins, params
    if not keepdims:
        g = o.reshape(g, keepdims_shape(x.shape, axes))
    return (o.broadcast_to(g, x.shape),)


def _extremum_vjp(o, g, out, ins, params, needs):
    # Tied extremes share the gradient evenly. A NaN is the extreme of its slice (numpy
    # propagates it), so it alone takes the gradient there; other slices are unaffected.
    (x,), (axes, keepdims) = ins, params
    kept = keepdims_shape(x.shape, axes)
    xr, peak = o.raw(x), o.raw(out).reshape(kept)
    xp = o.backend(x).xp
    mask = xr == peak
    # a NaN extreme: where the peak is NaN. Looked for in the (smaller) peak first, so a
    # NaN-free reduction skips two passes over x; a batched peak (vmap) is not inspected
    if peak.dtype.kind == "f" and (hasattr(peak, "_data") or bool(xp.isnan(peak).any())):
        mask |= xp.isnan(xr) & xp.isnan(peak)
    if xr.dtype.kind == "f" and not hasattr(mask, "_data"):
        # in x's float dtype from the start: bool / int64 counts make a float64 array
        # (for float32 x, two more passes over x, one of them the cast back)
        weights = mask.astype(xr.dtype)
        weights /= weights.sum(axis=axes, keepdims=True)
    else:
        weights = (mask / mask.sum(axis=axes, keepdims=True)).astype(xr.dtype, copy=False)
    if not keepdims:
        g = o.reshape(g, kept)
    return (g * weights,)


def _norm_pool_kernel(be, name):
    """Backend ``be``'s array kernel ``name`` (one of cpu.NORM_POOL_KERNELS: ours or the
    reference, as set_kernels chose), or the reference where ``be`` has none (CUDA)."""
    kernel = getattr(be, name, None)
    return kernel if kernel is not None else getattr(_norm_pool, name)


@primitive("max_pool_tiles")
def max_pool_tiles(x, kernel):
    """The maximum over each kh x kw tile of (..., OH * kh, OW * kw) images: (..., OH, OW),
    the pooling whose windows tile the image (stride = kernel, no padding)."""
    return _norm_pool_kernel(backend_of(x), "max_pool_tiles")(x, kernel)


@max_pool_tiles.defvjp
def _max_pool_tiles_vjp(o, g, out, ins, params, needs):
    # as _extremum_vjp over each tile: tied maxima share the gradient evenly, a NaN (the
    # maximum of its tile) takes it alone
    (x,), (kernel,) = ins, params
    tiled, spread = _norm_pool.tile_shapes(x.shape, kernel)
    xr, peak = o.raw(x), o.raw(out)
    if hasattr(peak, "_data") or xr.dtype.kind != "f":  # a batched peak (vmap), or integers
        xr, peak = xr.reshape(tiled), peak.reshape(spread)
        xp = o.backend(x).xp
        mask = xr == peak
        if peak.dtype.kind == "f":
            mask |= xp.isnan(xr) & xp.isnan(peak)
        weights = (mask / mask.sum(axis=(len(tiled) - 3, len(tiled) - 1), keepdims=True))
        weights = weights.astype(xr.dtype, copy=False)
    else:
        backward = _norm_pool_kernel(o.backend(x), "max_pool_tiles_backward")
        if not o.recording and g.dtype == xr.dtype:
            return (backward(g, xr, peak, kernel),)  # the weights times g, in one pass
        # recording: the same weights (1 / ties at each maximum) as a constant factor
        weights = backward(o.backend(x).xp.ones_like(peak), xr, peak, kernel).reshape(tiled)
    spread_g = o.broadcast_to(o.reshape(g, spread), tiled)
    return (o.reshape(spread_g * weights, tuple(x.shape)),)


@primitive("max")
def max_(x, axes=None, keepdims=False):
    return backend_of(x).xp.max(x, axis=axes, keepdims=keepdims)


@primitive("min")
def min_(x, axes=None, keepdims=False):
    return backend_of(x).xp.min(x, axis=axes, keepdims=keepdims)


max_.defvjp(_extremum_vjp)
min_.defvjp(_extremum_vjp)


# ----------------------------------------------------------------------------------
# Shape
# ----------------------------------------------------------------------------------

@primitive("reshape")
def reshape(x, shape):
    return x.reshape(shape)


@reshape.defvjp
def _reshape_vjp(o, g, out, ins, params, needs):
    return (o.reshape(g, ins[0].shape),)


@primitive("permute")
def permute(x, axes):
    return x.transpose(axes)


@permute.defvjp
def _permute_vjp(o, g, out, ins, params, needs):
    return (o.permute(g, tuple(np.argsort(params[0]).tolist())),)


@primitive("broadcast_to")
def broadcast_to(x, shape):
    return backend_of(x).xp.broadcast_to(x, shape)


@broadcast_to.defvjp
def _broadcast_to_vjp(o, g, out, ins, params, needs):
    return (unbroadcast(o, g, ins[0].shape),)


# ----------------------------------------------------------------------------------
# Indexing and joining
# ----------------------------------------------------------------------------------

def _is_advanced(index):
    items = index if isinstance(index, tuple) else (index,)
    return any(not (isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis)
               for i in items)


@primitive("getitem")
def getitem(x, index):
    return x[index]


@getitem.defvjp
def _getitem_vjp(o, g, out, ins, params, needs):
    return (o.index_put(g, params[0], ins[0].shape),)


@primitive("index_put")
def index_put(g, index, shape):
    """Zeros of ``shape`` with ``g`` added at ``index`` (repeated indices accumulate)."""
    be = backend_of(g)
    if _is_advanced(index):
        return be.index_add(g, index, shape)
    # zeros_like of g, not zeros: made from g, so tgm.compile traces the buffer too
    data = be.xp.zeros_like(g, shape=shape)
    data[index] = g
    return data


@index_put.defvjp
def _index_put_vjp(o, g, out, ins, params, needs):
    return (o.getitem(g, params[0]),)


@primitive("concatenate", nin=None)
def concatenate(xs, axis):
    return backend_of(xs[0]).xp.concatenate(xs, axis=axis)


@concatenate.defvjp
def _concatenate_vjp(o, g, out, ins, params, needs):
    (axis,) = params
    grads, start = [], 0
    for part, need in zip(ins, needs):
        stop = start + part.shape[axis]
        grads.append(o.getitem(g, (slice(None),) * axis + (slice(start, stop),)) if need else None)
        start = stop
    return tuple(grads)


@primitive("stack", nin=None)
def stack(xs, axis):
    return backend_of(xs[0]).xp.stack(xs, axis=axis)


@stack.defvjp
def _stack_vjp(o, g, out, ins, params, needs):
    (axis,) = params
    return tuple(o.getitem(g, (slice(None),) * axis + (i,)) if need else None
                 for i, need in enumerate(needs))


@primitive("where", 2)
def where(a, b, condition):
    """``a`` where ``condition`` (a raw boolean array, not differentiated) holds, else ``b``."""
    return backend_of(condition).xp.where(condition, a, b)


@where.defvjp
def _where_vjp(o, g, out, ins, params, needs):
    a, b = ins
    (condition,) = params
    return (unbroadcast(o, o.where(g, 0.0, condition), a.shape) if needs[0] else None,
            unbroadcast(o, o.where(0.0, g, condition), b.shape) if needs[1] else None)


def _pairwise_extremum_vjp(o, g, out, ins, params, needs):
    a, b = ins
    ar, br = o.raw(a), o.raw(b)
    # a gets the gradient where it wins, half of it at ties
    weight_a = (o.raw(out) == ar).astype(g.dtype) - 0.5 * (ar == br).astype(g.dtype)
    return (unbroadcast(o, g * weight_a, a.shape) if needs[0] else None,
            unbroadcast(o, g * (1.0 - weight_a), b.shape) if needs[1] else None)


@primitive("maximum", 2)
def maximum(a, b):
    return np.maximum(a, b)


@primitive("minimum", 2)
def minimum(a, b):
    return np.minimum(a, b)


maximum.defvjp(_pairwise_extremum_vjp)
minimum.defvjp(_pairwise_extremum_vjp)


# ----------------------------------------------------------------------------------
# Elementwise functions
# ----------------------------------------------------------------------------------

exp = primitive("exp", 1)(np.exp)


@exp.defvjp
def _exp_vjp(o, g, out, ins, params, needs):
    return (g * out,)


log = primitive("log", 1)(np.log)


@log.defvjp
def _log_vjp(o, g, out, ins, params, needs):
    return (g / ins[0],)


sqrt = primitive("sqrt", 1)(np.sqrt)


@sqrt.defvjp
def _sqrt_vjp(o, g, out, ins, params, needs):
    with np.errstate(divide="ignore"):  # the slope at 0 is inf, as it should be
        return (g / (out * 2.0),)


abs_ = primitive("abs", 1)(np.abs)


@abs_.defvjp
def _abs_vjp(o, g, out, ins, params, needs):
    xr = o.raw(ins[0])
    return (g * o.backend(ins[0]).xp.sign(xr),)  # the slope at 0 is taken as 0


@primitive("clip")
def clip(x, low, high):
    return backend_of(x).xp.clip(x, low, high).astype(x.dtype, copy=False)


@clip.defvjp
def _clip_vjp(o, g, out, ins, params, needs):
    # slope 1 inside [low, high] (bounds included), 0 outside
    xr, (low, high) = o.raw(ins[0]), params
    inside = o.backend(ins[0]).xp.ones(xr.shape, dtype=bool)
    if low is not None:
        inside = inside & (xr >= low)
    if high is not None:
        inside = inside & (xr <= high)
    return (g * inside.astype(xr.dtype),)


tanh = primitive("tanh", 1)(np.tanh)


@tanh.defvjp
def _tanh_vjp(o, g, out, ins, params, needs):
    return (o.tanh_grad(g, out),)


@primitive("tanh_grad", 2)
def tanh_grad(g, y):
    """``g * (1 - y**2)``, tanh's backward fused into one node."""
    return g * (1 - y * y)


@tanh_grad.defvjp
def _tanh_grad_vjp(o, gg, out, ins, params, needs):
    g, y = ins
    return (o.tanh_grad(gg, y) if needs[0] else None,
            gg * g * y * -2.0 if needs[1] else None)


@primitive("sigmoid")
def sigmoid(x):
    xp = backend_of(x).xp
    return xp.exp(-xp.logaddexp(0, -x)).astype(x.dtype, copy=False)


@sigmoid.defvjp
def _sigmoid_vjp(o, g, out, ins, params, needs):
    return (o.sigmoid_grad(g, out),)


@primitive("sigmoid_grad", 2)
def sigmoid_grad(g, s):
    """``g * s * (1 - s)``, sigmoid's backward fused into one node."""
    return g * (s * (1 - s))


@sigmoid_grad.defvjp
def _sigmoid_grad_vjp(o, gg, out, ins, params, needs):
    g, s = ins
    return (o.sigmoid_grad(gg, s) if needs[0] else None,
            gg * g * (1.0 - s * 2.0) if needs[1] else None)


@primitive("relu")
def relu(x, be):
    return be.relu(x)


@relu.defvjp
def _relu_vjp(o, g, out, ins, params, needs):
    return (o.relu_grad(g, ins[0], params[0]),)


@primitive("relu_grad", 2)
def relu_grad(g, x, be):
    """``g * (x > 0)`` in one fused kernel."""
    return be.relu_backward(g, x)


@relu_grad.defvjp
def _relu_grad_vjp(o, gg, out, ins, params, needs):
    # relu' is a step: the mask is constant, so only g carries a gradient
    return (o.relu_grad(gg, ins[1], params[0]), None)


# ----------------------------------------------------------------------------------
# Softmax family: stable forwards (shift by the max), rules in terms of the output
# ----------------------------------------------------------------------------------

def _finite_peak(xp, x, axes):
    peak = x.max(axis=axes, keepdims=True)
    return xp.where(xp.isfinite(peak), peak, 0)


@primitive("softmax")
def softmax(x, axes):
    xp = backend_of(x).xp
    shifted = xp.exp(x - x.max(axis=axes, keepdims=True))
    return shifted / shifted.sum(axis=axes, keepdims=True)


@softmax.defvjp
def _softmax_vjp(o, g, out, ins, params, needs):
    (axes,) = params
    return (out * (g - o.sum(g * out, axes, True)),)


@primitive("log_softmax")
def log_softmax(x, axes):
    xp = backend_of(x).xp
    peak = x.max(axis=axes, keepdims=True)
    if xp.isfinite(peak).all():
        shifted = x - peak
        return shifted - xp.log(xp.exp(shifted).sum(axis=axes, keepdims=True))
    # a row holding k entries of +inf has softmax 1/k on them and 0 elsewhere
    with np.errstate(invalid="ignore", divide="ignore"):
        safe_peak = xp.where(xp.isfinite(peak), peak, 0)
        data = x - (xp.log(xp.exp(x - safe_peak).sum(axis=axes, keepdims=True)) + safe_peak)
        infinite = xp.isposinf(x)
        count = infinite.sum(axis=axes, keepdims=True)
        patched = xp.where(infinite, -xp.log(xp.maximum(count, 1).astype(x.dtype)), -xp.inf)
    return xp.where(count > 0, patched, data).astype(x.dtype, copy=False)


@log_softmax.defvjp
def _log_softmax_vjp(o, g, out, ins, params, needs):
    (axes,) = params
    return (g - o.exp(out) * o.sum(g, axes, True),)


@primitive("logsumexp")
def logsumexp(x, axes, keepdims):
    xp = backend_of(x).xp
    peak = _finite_peak(xp, x, axes)
    data = xp.log(xp.exp(x - peak).sum(axis=axes, keepdims=True)) + peak
    if not keepdims:
        data = data.reshape([n for i, n in enumerate(data.shape) if axes is not None and i not in axes])
    return data


@logsumexp.defvjp
def _logsumexp_vjp(o, g, out, ins, params, needs):
    (x,), (axes, keepdims) = ins, params
    if not keepdims:
        kept = keepdims_shape(x.shape, axes)
        g, out = o.reshape(g, kept), o.reshape(out, kept)
    return (g * o.exp(x - out),)


# ----------------------------------------------------------------------------------
# Fused layers and losses: one node each, rules built from the rules above
# ----------------------------------------------------------------------------------

def batched_bias(weight_shape, bias_shape):
    """True when the bias has the weight's task axes: (T, out) with weight (T, out, in)."""
    return len(weight_shape) > 2 and len(bias_shape) == len(weight_shape) - 1


def _affine(x, weight, bias, be):
    # PyTorch's layout: weight is (out, in), so the product is x @ weight^T (a strided view,
    # never a copy; a weight broadcast over tasks keeps its stride-0 axis for _mm)
    data = _mm(x, _swap_last(weight), be)
    if bias is not None:
        data += bias[..., None, :] if batched_bias(weight.shape, bias.shape) else bias
    return data


@primitive("linear", nin=None)
def linear(xs, be):
    """x @ weight^T (+ bias); ``xs`` is (x, weight) or (x, weight, bias), weight (out, in)."""
    return _affine(xs[0], xs[1], xs[2] if len(xs) > 2 else None, be)


def _linear_grads(o, g, ins, be, needs):
    x, weight = ins[0], ins[1]
    grads = matmul_grads(o, g, x, weight, False, True, be, needs)
    if len(ins) == 2:
        return grads
    bias = ins[2]
    grad_bias = None
    if needs[2]:
        if batched_bias(weight.shape, bias.shape):
            grad_bias = unbroadcast(o, o.sum(g, (g.ndim - 2,), False), bias.shape)
        else:
            grad_bias = unbroadcast(o, g, bias.shape)
    return grads + (grad_bias,)


@linear.defvjp
def _linear_vjp(o, g, out, ins, params, needs):
    return _linear_grads(o, g, ins, params[0], needs)


@primitive("linear_relu", nin=None)
def linear_relu(xs, be):
    """relu(x @ weight^T (+ bias)) as one node."""
    return be.relu(_affine(xs[0], xs[1], xs[2] if len(xs) > 2 else None, be))


@linear_relu.defvjp
def _linear_relu_vjp(o, g, out, ins, params, needs):
    # relu'(z) is a step: mask g by (out > 0), i.e. (z > 0); the mask has no derivative
    be = params[0]
    return _linear_grads(o, o.relu_grad(g, out, be), ins, be, needs)


@primitive("mse", 2)
def mse(prediction, target):
    """Mean of (prediction - target)**2 over all elements (a 0-d array)."""
    diff = (prediction - target).reshape(-1)
    # a dot product is one C call; ndarray.mean goes through Python-level numpy code
    xp = backend_of(diff).xp
    return xp.asarray(xp.dot(diff, diff) / max(diff.size, 1), dtype=prediction.dtype)


@mse.defvjp
def _mse_vjp(o, g, out, ins, params, needs):
    prediction, target = ins
    grad = o.mse_grad(prediction, target, g, 2.0 / max(prediction.size, 1))
    return (grad if needs[0] else None, -grad if needs[1] else None)


@primitive("mse_grad", 3)
def mse_grad(prediction, target, upstream, scale):
    """(prediction - target) * upstream * scale: mse's backward as one node."""
    return (prediction - target) * (upstream * scale)


@mse_grad.defvjp
def _mse_grad_vjp(o, gg, out, ins, params, needs):
    # linear in (p - t) and in the upstream gradient u
    prediction, target, upstream = ins
    (scale,) = params
    grad_diff = gg * upstream * scale if needs[0] or needs[1] else None
    grad_upstream = o.sum((prediction - target) * gg, None, False) * scale if needs[2] else None
    return (grad_diff if needs[0] else None, -grad_diff if needs[1] else None, grad_upstream)


# ----------------------------------------------------------------------------------
# Optimizer nodes
# ----------------------------------------------------------------------------------

@primitive("sgd_update", nin=None)
def sgd_update(xs, scale):
    """param + scale * grad (``xs`` = (param, grad)), or param - lr * grad
    (``xs`` = (param, grad, lr), Meta-SGD's learned rates): one node for a gradient step."""
    if len(xs) == 2:
        return xs[0] + scale * xs[1]
    return xs[0] - xs[2] * xs[1]


@sgd_update.defvjp
def _sgd_update_vjp(o, g, out, ins, params, needs):
    param, grad = ins[0], ins[1]
    grads = [unbroadcast(o, g, param.shape) if needs[0] else None, None]
    if needs[1]:
        grads[1] = unbroadcast(o, g * params[0] if len(ins) == 2 else -(g * ins[2]), grad.shape)
    if len(ins) == 3:
        grads.append(unbroadcast(o, -(g * grad), ins[2].shape) if needs[2] else None)
    return tuple(grads)


# d sqrt(v)/dv = 1/(2 sqrt(v)) is infinite at v = 0, and v = 0 exactly in Adam whenever
# every gradient so far was 0 (a dead unit): the chain rule then gives inf * 0 = nan in
# every derivative of the step. Every derivative of ``safe_sqrt`` is defined as 0 where
# v == 0 (the average of the one-sided values of the update's kink there) and exact
# elsewhere; each is again a ``masked_power``, so this stays finite to any order.

@primitive("safe_sqrt")
def safe_sqrt(v):
    return np.sqrt(v)


@safe_sqrt.defvjp
def _safe_sqrt_vjp(o, g, out, ins, params, needs):
    return (g * o.masked_power(ins[0], 0.5, -0.5),)


@primitive("masked_power")
def masked_power(v, coef, power):
    """coef * v**power where v > 0, and 0 where v == 0 (v must be >= 0)."""
    xp = backend_of(v).xp
    positive = v > 0
    safe = xp.where(positive, v, 1)
    return xp.where(positive, coef * safe ** power, 0).astype(v.dtype, copy=False)


@masked_power.defvjp
def _masked_power_vjp(o, g, out, ins, params, needs):
    coef, power = params
    return (g * o.masked_power(ins[0], coef * power, power - 1.0),)


# ----------------------------------------------------------------------------------
# dtype and device
# ----------------------------------------------------------------------------------

@primitive("astype")
def astype(x, dtype):
    return x.astype(dtype)


@astype.defvjp
def _astype_vjp(o, g, out, ins, params, needs):
    return (o.astype(g, ins[0].dtype),)


@primitive("to")
def to(x, source, target):
    """x moved from backend ``source`` to backend ``target``."""
    host = source.to_numpy(x)
    return target.asarray(host) if target.name != "cpu" else host


@to.defvjp
def _to_vjp(o, g, out, ins, params, needs):
    source, target = params
    return (o.to(g, target, source),)


# ==================================================================================
# The op set users expect (issue 9). Each rule composes table ops, so each is
# differentiable to any order; piecewise-constant ops have the gradient 0.
# ==================================================================================

# ----------------------------------------------------------------------------------
# Trigonometric and hyperbolic functions
# ----------------------------------------------------------------------------------

sin = primitive("sin", 1)(np.sin)


@sin.defvjp
def _sin_vjp(o, g, out, ins, params, needs):
    return (g * o.cos(ins[0]),)


cos = primitive("cos", 1)(np.cos)


@cos.defvjp
def _cos_vjp(o, g, out, ins, params, needs):
    return (-(g * o.sin(ins[0])),)


tan = primitive("tan", 1)(np.tan)


@tan.defvjp
def _tan_vjp(o, g, out, ins, params, needs):
    return (g * (out * out + 1.0),)


arcsin = primitive("arcsin", 1)(np.arcsin)


@arcsin.defvjp
def _arcsin_vjp(o, g, out, ins, params, needs):
    x = ins[0]
    return (g / o.sqrt(1.0 - x * x),)


arccos = primitive("arccos", 1)(np.arccos)


@arccos.defvjp
def _arccos_vjp(o, g, out, ins, params, needs):
    x = ins[0]
    return (-(g / o.sqrt(1.0 - x * x)),)


arctan = primitive("arctan", 1)(np.arctan)


@arctan.defvjp
def _arctan_vjp(o, g, out, ins, params, needs):
    x = ins[0]
    return (g / (x * x + 1.0),)


sinh = primitive("sinh", 1)(np.sinh)


@sinh.defvjp
def _sinh_vjp(o, g, out, ins, params, needs):
    return (g * o.cosh(ins[0]),)


cosh = primitive("cosh", 1)(np.cosh)


@cosh.defvjp
def _cosh_vjp(o, g, out, ins, params, needs):
    return (g * o.sinh(ins[0]),)


# ----------------------------------------------------------------------------------
# Rounding: piecewise constant, so the gradient is 0 (zeros, not None: grad() works)
# ----------------------------------------------------------------------------------

def _zero_vjp(o, g, out, ins, params, needs):
    return (g * 0.0,)


sign = primitive("sign", 1)(np.sign)
floor = primitive("floor", 1)(np.floor)
ceil = primitive("ceil", 1)(np.ceil)


@primitive("round")
def round_(x, decimals):
    return backend_of(x).xp.round(x, decimals)


sign.defvjp(_zero_vjp)
floor.defvjp(_zero_vjp)
ceil.defvjp(_zero_vjp)
round_.defvjp(_zero_vjp)


# ----------------------------------------------------------------------------------
# erf, float64-accurate from numpy alone (it has none):
#   |x| < 1:      x times the Taylor series of erf(x)/x in x**2 (19 terms, exact rationals)
#   1 <= |x| < 6: 1 - exp(-x**2) h(|x|), where h(a) = erfc(a) exp(a**2) is smooth and slowly
#                 varying: interpolated at 29 Chebyshev points sampled from math.erfc
#   |x| >= 6:     +-1 (erfc(6) ~ 2e-17 is below half an ulp of 1)
# Within 2 ulp of math.erf (tests/test_new_ops.py checks 1e-15 absolute). Plain array
# arithmetic, so CuPy arrays work too.
# ----------------------------------------------------------------------------------

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_ERF_TAYLOR = [float(fractions.Fraction((-1) ** n, math.factorial(n) * (2 * n + 1)))
               for n in range(19)]


def _chebyshev_fit(f, low, high, degree):
    """Chebyshev coefficients of the polynomial interpolating ``f`` at the Chebyshev
    points of [low, high] (numpy's chebinterpolate loses ~1e-15 to rounded angles)."""
    n = degree + 1

    def cos(m):  # cos(pi m / 2n) with the angle reduced exactly, in integers
        return math.cos(math.pi * (m % (4 * n)) / (2 * n))

    values = [f((low + high) / 2 + (high - low) / 2 * cos(2 * k + 1)) for k in range(n)]
    return [math.fsum(v * cos(j * (2 * k + 1)) for k, v in enumerate(values)) * (2 - (j == 0)) / n
            for j in range(n)]


_ERFC_SCALED = _chebyshev_fit(lambda a: math.erfc(a) * math.exp(a * a), 1.0, 6.0, 28)


def _erf(x):
    xp = backend_of(x).xp
    flat = x.reshape(-1).astype(np.float64)
    size = xp.abs(flat)
    result = xp.sign(flat)  # |x| >= 6, and nan
    small = size < 1.0
    xs = flat[small]
    u, series = xs * xs, 0.0
    for c in reversed(_ERF_TAYLOR):
        series = series * u + c
    result[small] = xs * series * _TWO_OVER_SQRT_PI
    tail = (size >= 1.0) & (size < 6.0)
    a = size[tail]
    t = (a - 3.5) / 2.5  # [1, 6] onto [-1, 1]; Clenshaw's recurrence sums the series
    b1 = b2 = 0.0
    for c in reversed(_ERFC_SCALED[1:]):
        b1, b2 = 2.0 * t * b1 - b2 + c, b1
    result[tail] = xp.sign(flat[tail]) * (1.0 - xp.exp(-a * a) * (t * b1 - b2 + _ERFC_SCALED[0]))
    return result.reshape(x.shape).astype(x.dtype, copy=False)


erf = primitive("erf", 1)(_erf)


@erf.defvjp
def _erf_vjp(o, g, out, ins, params, needs):
    x = ins[0]
    return (g * o.exp(-(x * x)) * _TWO_OVER_SQRT_PI,)


# ----------------------------------------------------------------------------------
# Activations (PyTorch's definitions and defaults; the Tensor methods check arguments)
# ----------------------------------------------------------------------------------

@primitive("softplus")
def softplus(x, beta, threshold):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (as PyTorch)."""
    xp = backend_of(x).xp
    scaled = x * beta
    return xp.where(scaled > threshold, x, xp.logaddexp(0, scaled) / beta).astype(x.dtype, copy=False)


@softplus.defvjp
def _softplus_vjp(o, g, out, ins, params, needs):
    x, (beta, threshold) = ins[0], params
    return (o.where(g, g * o.sigmoid(x * beta), o.raw(x) * beta > threshold),)


@primitive("leaky_relu")
def leaky_relu(x, negative_slope):
    return backend_of(x).xp.where(x > 0, x, x * negative_slope).astype(x.dtype, copy=False)


@leaky_relu.defvjp
def _leaky_relu_vjp(o, g, out, ins, params, needs):
    # a step times g: the slopes are constants (negative_slope at 0, as PyTorch)
    xr = o.raw(ins[0])
    return (g * o.backend(ins[0]).xp.where(xr > 0, 1.0, params[0]).astype(xr.dtype),)


@primitive("elu")
def elu(x, alpha):
    xp = backend_of(x).xp
    return xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0))).astype(x.dtype, copy=False)


@elu.defvjp
def _elu_vjp(o, g, out, ins, params, needs):
    # for x <= 0, d/dx alpha (exp(x) - 1) = out + alpha: no exp to overflow where x > 0
    return (o.where(g, g * (out + params[0]), o.raw(ins[0]) > 0),)


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


@primitive("gelu")
def gelu(x, approximate):
    """x Phi(x) with Phi the normal CDF via erf, or PyTorch's tanh approximation of it."""
    if approximate == "tanh":
        inner = (x + x * x * x * _GELU_CUBIC) * _SQRT_2_OVER_PI
        return 0.5 * x * (1.0 + backend_of(x).xp.tanh(inner))
    return 0.5 * x * (1.0 + _erf(x * _SQRT_HALF))


@gelu.defvjp
def _gelu_vjp(o, g, out, ins, params, needs):
    x, (approximate,) = ins[0], params
    if approximate == "tanh":
        t = o.tanh((x + x * x * x * _GELU_CUBIC) * _SQRT_2_OVER_PI)
        slope = (x * x * (3.0 * _GELU_CUBIC) + 1.0) * _SQRT_2_OVER_PI
        return (g * ((t + 1.0) * 0.5 + x * (1.0 - t * t) * slope * 0.5),)
    cdf = (o.erf(x * _SQRT_HALF) + 1.0) * 0.5
    density = o.exp(x * x * -0.5) * _INV_SQRT_2PI
    return (g * (cdf + x * density),)


# ----------------------------------------------------------------------------------
# Binary elementwise functions (numpy broadcasting; unbroadcast in the rules)
# ----------------------------------------------------------------------------------

arctan2 = primitive("arctan2", 2)(np.arctan2)


@arctan2.defvjp
def _arctan2_vjp(o, g, out, ins, params, needs):
    a, b = ins
    scale = g / (a * a + b * b)
    return (unbroadcast(o, scale * b, a.shape) if needs[0] else None,
            unbroadcast(o, -(scale * a), b.shape) if needs[1] else None)


logaddexp = primitive("logaddexp", 2)(np.logaddexp)


@logaddexp.defvjp
def _logaddexp_vjp(o, g, out, ins, params, needs):
    a, b = ins
    return (unbroadcast(o, g * o.exp(a - out), a.shape) if needs[0] else None,
            unbroadcast(o, g * o.exp(b - out), b.shape) if needs[1] else None)


mod = primitive("mod", 2)(np.mod)


@mod.defvjp
def _mod_vjp(o, g, out, ins, params, needs):
    # a % b = a - floor(a / b) b (numpy: the sign of b), and floor(a / b) is piecewise constant
    a, b = ins
    gb = None
    if needs[1]:
        quotient = o.floor(o.raw(a) / o.raw(b))  # a constant: floor(a / b) has slope 0
        gb = unbroadcast(o, -(g * quotient), b.shape)
    return (unbroadcast(o, g, a.shape) if needs[0] else None, gb)


# ----------------------------------------------------------------------------------
# prod and cumsum
# ----------------------------------------------------------------------------------

@primitive("prod")
def prod(x, axes, keepdims):
    return x.prod(axis=axes, keepdims=keepdims)


def _exclusive_products(o, x):
    """Along axis 0, each entry replaced by the product of all the others, by
    multiplications only: no division, so zeros are exact at every order. Neighbours pair
    up, the pairs' products recurse, and each member gets its partner times its pair's
    result (log2(n) levels, O(n) work)."""
    n = x.shape[0]
    if n <= 1:
        return o.backend(x).xp.ones(x.shape, dtype=o.raw(x).dtype)
    if n % 2:
        x = o.concatenate([x, o.backend(x).xp.ones((1,) + x.shape[1:], dtype=o.raw(x).dtype)], 0)
    first, second = o.getitem(x, (slice(0, None, 2),)), o.getitem(x, (slice(1, None, 2),))
    pair_others = _exclusive_products(o, first * second)
    others = o.reshape(o.stack([second * pair_others, first * pair_others], 1), x.shape)
    return o.getitem(others, (slice(0, n),)) if n % 2 else others


@prod.defvjp
def _prod_vjp(o, g, out, ins, params, needs):
    (x,), (axes, keepdims) = ins, params
    axes = tuple(range(x.ndim)) if axes is None else axes
    rest = tuple(i for i in range(x.ndim) if i not in axes)
    order = axes + rest
    moved = o.permute(x, order)
    count = int(np.prod([x.shape[i] for i in axes]))
    if not keepdims:
        g = o.reshape(g, keepdims_shape(x.shape, axes))
    if count <= 1:  # no other factors: the gradient is g
        return (o.broadcast_to(g, x.shape),)
    others = _exclusive_products(o, o.reshape(moved, (count,) + moved.shape[len(axes):]))
    others = o.permute(o.reshape(others, moved.shape), tuple(np.argsort(order).tolist()))
    return (g * others,)


@primitive("cumsum")
def cumsum(x, axis):
    return x.cumsum(axis=axis)


@cumsum.defvjp
def _cumsum_vjp(o, g, out, ins, params, needs):
    # input i feeds every output from i on: a cumulative sum from the far end
    (axis,) = params
    return (o.flip(o.cumsum(o.flip(g, (axis,)), axis), (axis,)),)


# ----------------------------------------------------------------------------------
# einsum: operand i's gradient is the einsum of g with the other operands
# ----------------------------------------------------------------------------------

@primitive("einsum", nin=None)
def einsum(xs, inputs, output):
    """``inputs``: one subscript string per operand; ``output``: the result's subscripts."""
    spec = ",".join(inputs) + "->" + output
    return backend_of(xs[0]).xp.einsum(spec, *xs, optimize=True)


def _einsum_grad(o, g, ins, inputs, output, i):
    """The einsum of g (subscripts ``output``) and the other operands out to operand i's
    subscripts. A letter repeated in operand i (a diagonal, "ii") becomes a fresh letter
    tied to it by an identity matrix; a letter summed within operand i alone (j in
    "ij->i") comes back through a vector of ones."""
    xp, dtype = o.backend(g).xp, o.raw(g).dtype
    sizes = dict(zip(inputs[i], ins[i].shape))
    operands = [g] + [x for j, x in enumerate(ins) if j != i]
    subs = [output] + [s for j, s in enumerate(inputs) if j != i]
    spare = (c for c in string.ascii_letters if c not in "".join(inputs))
    target = ""
    for c in inputs[i]:
        if c in target:
            fresh = next(spare)
            operands.append(xp.eye(sizes[c], dtype=dtype))
            subs.append(c + fresh)
            c = fresh
        target += c
    for c in sorted(set(target) - set("".join(subs))):
        operands.append(xp.ones(sizes[c], dtype=dtype))
        subs.append(c)
    return o.einsum(operands, tuple(subs), target)


@einsum.defvjp
def _einsum_vjp(o, g, out, ins, params, needs):
    inputs, output = params
    return tuple(_einsum_grad(o, g, ins, inputs, output, i) if need else None
                 for i, need in enumerate(needs))


# ----------------------------------------------------------------------------------
# Layout: flip, roll, pad, tile, repeat, diagonal, triu, tril (each rule is its adjoint)
# ----------------------------------------------------------------------------------

@primitive("flip")
def flip(x, axes):
    return backend_of(x).xp.flip(x, axes)


@flip.defvjp
def _flip_vjp(o, g, out, ins, params, needs):
    return (o.flip(g, params[0]),)


@primitive("roll")
def roll(x, shifts, axes):
    return backend_of(x).xp.roll(x, shifts, axes)


@roll.defvjp
def _roll_vjp(o, g, out, ins, params, needs):
    shifts, axes = params
    return (o.roll(g, tuple(-s for s in shifts), axes),)


@primitive("pad")
def pad(x, widths, value):
    """``widths``: one (before, after) pair per axis; constant padding with ``value``."""
    return backend_of(x).xp.pad(x, widths, mode="constant", constant_values=value)


@pad.defvjp
def _pad_vjp(o, g, out, ins, params, needs):
    widths = params[0]
    return (o.getitem(g, tuple(slice(before, before + n)
                               for (before, _), n in zip(widths, ins[0].shape))),)


@primitive("tile")
def tile(x, reps):
    """``reps``: one count per axis, at least as many as x has axes (numpy's np.tile)."""
    return backend_of(x).xp.tile(x, reps)


@tile.defvjp
def _tile_vjp(o, g, out, ins, params, needs):
    # each axis of g is (copy, position) in row-major order: split them and sum the copies
    x, (reps,) = ins[0], params
    sides = (1,) * (len(reps) - x.ndim) + tuple(x.shape)
    g = o.reshape(g, tuple(v for pair in zip(reps, sides) for v in pair))
    return (o.reshape(o.sum(g, tuple(range(0, 2 * len(reps), 2)), False), x.shape),)


@primitive("repeat")
def repeat(x, repeats, axis):
    """Each entry along ``axis`` repeated ``repeats`` times (an int, or one count per entry)."""
    return backend_of(x).xp.repeat(x, repeats, axis)


@repeat.defvjp
def _repeat_vjp(o, g, out, ins, params, needs):
    x, (repeats, axis) = ins[0], params
    if isinstance(repeats, int):  # the copies of an entry are adjacent: reshape and sum them
        n = x.shape[axis]
        split = x.shape[:axis] + (n, repeats) + x.shape[axis + 1:]
        return (o.sum(o.reshape(g, split), (axis + 1,), False),)
    xp = o.backend(x).xp  # per-entry counts: index_put adds each copy back to its source
    source = xp.repeat(xp.arange(x.shape[axis]), repeats)
    return (o.index_put(g, (slice(None),) * axis + (source,), x.shape),)


@primitive("diagonal")
def diagonal(x, offset, axis1, axis2):
    return backend_of(x).xp.diagonal(x, offset, axis1, axis2)


@diagonal.defvjp
def _diagonal_vjp(o, g, out, ins, params, needs):
    # g back on the diagonal of zeros: with axis1 and axis2 moved last, the diagonal is
    # the index (..., rows, cols)
    x, (offset, axis1, axis2) = ins[0], params
    xp = o.backend(x).xp
    order = [i for i in range(x.ndim) if i not in (axis1, axis2)] + [axis1, axis2]
    steps = xp.arange(g.shape[-1])
    index = (Ellipsis, steps + max(-offset, 0), steps + max(offset, 0))
    full = o.index_put(g, index, tuple(x.shape[i] for i in order))
    return (o.permute(full, tuple(np.argsort(order).tolist())),)


@primitive("triu")
def triu(x, k):
    return backend_of(x).xp.triu(x, k)


@primitive("tril")
def tril(x, k):
    return backend_of(x).xp.tril(x, k)


@triu.defvjp
def _triu_vjp(o, g, out, ins, params, needs):
    return (o.triu(g, params[0]),)


@tril.defvjp
def _tril_vjp(o, g, out, ins, params, needs):
    return (o.tril(g, params[0]),)
# ----------------------------------------------------------------------------------
# Convolution's gather and scatter (issue 11): im2col lays every receptive field out as
# a column, col2im adds columns back into an image. They are adjoint linear maps, so each
# is the other's rule, and conv2d / the pools (functional.py: im2col, then a matmul or a
# reduction) are differentiable to any order with no rule of their own. Padding taps
# read ``pad_value``, a constant: the adjoint ignores it.
# ----------------------------------------------------------------------------------

@primitive("im2col")
def im2col(x, kernel, stride, padding, dilation, pad_value, be):
    """(N, C, H, W) -> (N, C*kh*kw, OH*OW) through backend ``be`` (layout: backends/im2col.py)."""
    return be.im2col(x, kernel, stride, padding, dilation, pad_value)


@im2col.defvjp
def _im2col_vjp(o, g, out, ins, params, needs):
    kernel, stride, padding, dilation, _, be = params
    return (o.col2im(g, tuple(ins[0].shape), kernel, stride, padding, dilation, be),)


@primitive("col2im")
def col2im(cols, input_shape, kernel, stride, padding, dilation, be):
    """(N, C*kh*kw, OH*OW) -> (N, C, H, W) = ``input_shape``, overlapping taps added."""
    return be.col2im(cols, input_shape, kernel, stride, padding, dilation)


@col2im.defvjp
def _col2im_vjp(o, g, out, ins, params, needs):
    _, kernel, stride, padding, dilation, be = params
    return (o.im2col(g, kernel, stride, padding, dilation, 0.0, be),)


# ----------------------------------------------------------------------------------
# Convolution as three table entries, each one large matrix product on im2col columns:
#
#   conv2d(x, w)                  y = w * x               (cross-correlation, PyTorch's)
#   conv2d_input_grad(g, w)       its adjoint in x: a transposed convolution
#   conv2d_weight_grad(x, g)      its adjoint in w: a correlation of input and gradient
#
# The three are one bilinear form <g, conv2d(x, w)> differentiated each way, so every
# rule below is written with the three again and convolution is differentiable to any
# order. (A composition im2col + matmul would be too, but numpy's broadcast matmul runs
# the images one by one and the weight gradient as N products summed afterwards; one
# (O, K) @ (K, N*L) product is 2-5x faster at the Omniglot shapes, see benchmarks/.)
#
# The raw helpers work on a leading task axis (T, N, C, H, W) with weights (T, O, ...),
# which is what vmap's batching rules hand them; one example is T = 1. The last param of
# each op is a ``ConvColumns`` (or None): the forward leaves its columns there and the
# weight gradient of the same input takes them instead of running im2col again.
# ----------------------------------------------------------------------------------

class ConvColumns:
    """The im2col columns of one conv2d call's input, kept for its weight gradient
    (used once, then dropped; recomputed when the input is another array)."""

    __slots__ = ("source", "cols")

    def __init__(self):
        self.source = self.cols = None

    def take(self, x):
        cols, self.cols = (self.cols if self.source is x else None), None
        return cols


def _conv_shapes(x_shape, w_shape, stride, padding, dilation):
    """(kernel, (OH, OW)) of a convolution of (..., C, H, W) images by (..., O, Cg, kh, kw)."""
    from .backends.im2col import output_size
    kernel = tuple(w_shape[-2:])
    oh = output_size(x_shape[-2], kernel[0], stride[0], padding[0], dilation[0])
    ow = output_size(x_shape[-1], kernel[1], stride[1], padding[1], dilation[1])
    return kernel, (oh, ow)


def _gemm(a, b, be):
    """(B, M, K) @ (B, K, N) through ``be``; one 2-D product when B is 1."""
    if a.shape[0] == 1 and b.shape[0] == 1:
        return be.matmul(a[0], b[0])[None]
    return be.matmul(a, b)


def _task_columns(x, kernel, stride, padding, dilation, groups, be):
    """(T, N, C, H, W) images as columns (T * groups, C/groups * kh * kw, N * L)."""
    t, n = x.shape[:2]
    # the backend lays every image's columns side by side, (K, T*N*L): no transpose copy
    cols = be.im2col(x.reshape((t * n,) + x.shape[2:]), kernel, stride, padding, dilation, 0.0,
                     layout="batch")
    k = cols.shape[0]
    cols = cols.reshape(k, t, -1).swapaxes(0, 1)  # (T, K, N*L): a view
    return cols.reshape(t * groups, k // groups, cols.shape[-1])


def _task_rows(g, groups):
    """(T, N, O, OH, OW) gradients as rows (T * groups, O/groups, N * L), the layout of
    the product in ``_task_conv``."""
    t, n, o = g.shape[:3]
    length = g.shape[3] * g.shape[4]
    rows = g.reshape(t, n, o, length)
    if n > 1:
        rows = rows.transpose(0, 2, 1, 3)
    return rows.reshape(t * groups, o // groups, n * length)


def _task_weights(w, groups):
    t, o = w.shape[:2]
    return w.reshape(t * groups, o // groups, -1)


# On the CPU, convolutions whose im2col columns are large run in chunks of images: im2col
# writes one chunk's columns and the GEMM reads them back while they are still in this
# core's L2 (1 MiB on the EPYC we tuned on), and the input gradient's GEMM output goes
# through col2im the same way, instead of the whole batch's columns (45 MB for the
# 64x14x14 layer at N = 100, more than L3) going out to memory and back. The weight
# gradient recomputes each chunk's columns rather than keeping the forward's: the
# recompute from an input that fits in cache costs less than the memory round trip.
# Chunks of about this many bytes of columns were fastest (measured with
# benchmarks/conv.py's engine column: 0.5-2 MiB about alike, the whole batch 1.3-1.6x
# slower at the 64x14x14 and 64x7x7 layers). Batches whose columns are at most
# _CHUNKS_FROM times that run whole: they fit in L3, and at the small layers (64x3x3,
# 64x7x7 stride 2, 1x28x28) chunks measured no faster. Module constants, so that tests
# can force the chunked schedule.
_CHUNK_COLUMN_BYTES = 1 << 20
_CHUNKS_FROM = 4


def _image_chunks(n, weight_shape, length, itemsize, be, tasks=1):
    """The slices of the image axis of one conv's chunked schedule, or None to run the
    batch in one piece (not on the CPU, or it fits in L3 anyway). A chunk holds about
    ``_CHUNK_COLUMN_BYTES`` of its working set, the (K, images * length) columns and the
    (O, images * length) output or gradient rows: at the 1-channel first layer (K = 9,
    O = 64) the rows are the larger part. Chunks are evenly sized. With several
    ``tasks`` (vmap, a weight per task) a task's images are at least one chunk: the
    whole batch's columns in one piece would leave the cache (90 MB for the query
    images of 32 MAML tasks at the 64x14x14 layer) and need transposing copies between
    the (K, T*N*L) columns and the per-task products."""
    per_image = (int(np.prod(weight_shape[1:])) + weight_shape[0]) * length * itemsize
    if getattr(be, "name", None) != "cpu":
        return None
    if n * per_image <= _CHUNKS_FROM * _CHUNK_COLUMN_BYTES:
        return [slice(0, n)] if tasks > 1 else None
    count = -(-n * per_image // _CHUNK_COLUMN_BYTES)  # ceil
    step = -(-n // count)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _chunk_rows(g):
    """(m, O, L) gradients of one chunk as one (O, m * L) matrix, the layout of the
    chunk's product (a copy that stays in cache)."""
    m, o, length = g.shape
    return g.transpose(1, 0, 2).reshape(o, m * length) if m > 1 else g[0]


def _joined(pieces, be):
    """One task's chunks along the image axis (one chunk as it is: the stack of the tasks
    copies it anyway)."""
    return pieces[0] if len(pieces) == 1 else be.xp.concatenate(pieces)


def _stacked(tasks, be):
    """The tasks' results along a new leading axis; one task's as a view (outside vmap,
    T = 1: its chunks were joined into a new array already). A single unjoined chunk
    (a transposed view) is copied, so the result is C-contiguous either way."""
    if len(tasks) == 1 and tasks[0].flags.c_contiguous:
        return tasks[0][None]
    return be.xp.stack(tasks)


def _chunked_conv(x, w, geometry, length, chunks, be):
    """conv2d of (T, N, C, H, W) by (T, O, C, kh, kw) chunk by chunk: (T, N, O, L)."""
    o = w.shape[1]
    tasks = []
    for task in range(x.shape[0]):
        weights = w[task].reshape(o, -1)
        pieces = []
        for chunk in chunks:
            cols = be.im2col(x[task, chunk], *geometry, 0.0, layout="batch")  # (K, m*L)
            m = chunk.stop - chunk.start
            # one product per chunk (its weights packed once), then (O, m, L) -> (m, O, L)
            pieces.append(be.matmul(weights, cols).reshape(o, m, length).swapaxes(0, 1))
        tasks.append(_joined(pieces, be))
    # new arrays joined, not writes into a preallocated one: tgm.compile traces joins
    return _stacked(tasks, be)


def _chunked_conv_input_grad(g, w, input_shape, geometry, chunks, be):
    """The input gradient of ``_chunked_conv``: (T, N, O, L) -> (T, N, C, H, W)."""
    o = g.shape[2]
    tasks = []
    for task in range(g.shape[0]):
        weights_t = w[task].reshape(o, -1).T  # (K, O), a view
        pieces = []
        for chunk in chunks:
            cols = be.matmul(weights_t, _chunk_rows(g[task, chunk]))  # (K, m*L)
            m = chunk.stop - chunk.start
            pieces.append(be.col2im(cols, (m,) + tuple(input_shape[1:]), *geometry, layout="batch"))
        tasks.append(_joined(pieces, be))
    return _stacked(tasks, be)


def _chunked_conv_weight_grad(x, g, weight_shape, geometry, chunks, be):
    """The weight gradient of ``_chunked_conv``, each chunk's product added in turn:
    (T, N, C, H, W), (T, N, O, L) -> (T, O, C, kh, kw)."""
    tasks = []
    for task in range(x.shape[0]):
        total = None
        for chunk in chunks:
            cols = be.im2col(x[task, chunk], *geometry, 0.0, layout="batch")  # (K, m*L)
            # (O, m*L) @ (m*L, K): cols.T is a view that the GEMM packs by register transposes
            product = be.matmul(_chunk_rows(g[task, chunk]), cols.T)
            total = product if total is None else total + product  # chunk order, as before
        tasks.append(total)
    return be.xp.stack(tasks).reshape((x.shape[0],) + tuple(weight_shape))


def _task_conv(x, w, stride, padding, dilation, groups, be, keep=None):
    t, n = x.shape[:2]
    kernel, (oh, ow) = _conv_shapes(x.shape, w.shape, stride, padding, dilation)
    chunks = (_image_chunks(n, w.shape[1:], oh * ow, x.dtype.itemsize, be, t)
              if groups == 1 else None)
    if chunks is not None:
        out = _chunked_conv(x, w, (kernel, stride, padding, dilation), oh * ow, chunks, be)
        return out.reshape(t, n, w.shape[1], oh, ow)
    cols = _task_columns(x, kernel, stride, padding, dilation, groups, be)
    if keep is not None:
        keep.cols = cols
    # one product over the batch, then (O, N, L) -> (N, O, L): since the GEMM packs a
    # row-contiguous B fast, this beats N per-image products (each repacking the
    # weights): benchmarks/conv.py's "batch" against "mixed" (e.g. 64x7x7 stride 1,
    # N = 100: 1.18 against 1.54 times torch's time, the same run)
    out = _gemm(_task_weights(w, groups), cols, be)  # (T*G, O/G, N*L)
    out = out.reshape(t, w.shape[1], n, oh * ow)
    if n > 1:
        out = out.transpose(0, 2, 1, 3)
    return out.reshape(t, n, w.shape[1], oh, ow)


def _task_conv_input_grad(g, w, input_shape, stride, padding, dilation, groups, be, cache=None):
    t, n = g.shape[:2]
    kernel, _ = _conv_shapes(input_shape, w.shape, stride, padding, dilation)
    length = g.shape[3] * g.shape[4]
    chunks = (_image_chunks(n, w.shape[1:], length, g.dtype.itemsize, be, t)
              if groups == 1 else None)
    if chunks is not None:
        rows = g.reshape(t, n, g.shape[2], length)
        return _chunked_conv_input_grad(rows, w, input_shape, (kernel, stride, padding, dilation),
                                        chunks, be)
    cols = _gemm(_swap_last(_task_weights(w, groups)), _task_rows(g, groups), be)  # (T*G, Kg, N*L)
    k = cols.shape[1] * groups
    length = g.shape[3] * g.shape[4]
    cols = cols.reshape(t, k, n * length).swapaxes(0, 1).reshape(k, t * n * length)  # a view if T == 1
    image = be.col2im(cols, (t * n,) + tuple(input_shape[1:]), kernel, stride, padding, dilation,
                      layout="batch")
    return image.reshape((t,) + tuple(input_shape))


def _task_conv_weight_grad(x, g, weight_shape, stride, padding, dilation, groups, be, cols=None):
    t, n = x.shape[:2]
    kernel = tuple(weight_shape[-2:])
    length = g.shape[3] * g.shape[4]
    chunks = (_image_chunks(n, weight_shape, length, x.dtype.itemsize, be, t)
              if groups == 1 and cols is None else None)
    if chunks is not None:
        rows = g.reshape(t, n, g.shape[2], length)
        return _chunked_conv_weight_grad(x, rows, weight_shape, (kernel, stride, padding, dilation),
                                         chunks, be)
    if cols is None:
        cols = _task_columns(x, kernel, stride, padding, dilation, groups, be)
    rows = _task_rows(g, groups)
    # a product with a long inner axis (N*L) runs 10-20x faster in OpenBLAS with the
    # larger of its two outer sizes first: (576, N*L) @ (N*L, 64), then transposed
    if cols.shape[1] > rows.shape[1]:
        grad = _swap_last(_gemm(cols, _swap_last(rows), be))  # (T*G, O/G, Kg)
    else:
        grad = _gemm(rows, _swap_last(cols), be)
    return grad.reshape((t,) + tuple(weight_shape))


@primitive("conv2d", 2)
def conv2d(x, w, stride, padding, dilation, groups, be, cache=None):
    """(N, C, H, W) images correlated with (O, C/groups, kh, kw) filters: (N, O, OH, OW)."""
    if cache is not None:
        cache.source = x
    return _task_conv(x[None], w[None], stride, padding, dilation, groups, be, cache)[0]


@conv2d.defvjp
def _conv2d_vjp(o, g, out, ins, params, needs):
    x, w = ins
    return (o.conv2d_input_grad(g, w, tuple(x.shape), *params) if needs[0] else None,
            o.conv2d_weight_grad(x, g, tuple(w.shape), *params) if needs[1] else None)


@primitive("conv2d_input_grad", 2)
def conv2d_input_grad(g, w, input_shape, stride, padding, dilation, groups, be, cache=None):
    """The gradient of <g, conv2d(x, w)> in x (a transposed convolution), x of ``input_shape``."""
    return _task_conv_input_grad(g[None], w[None], input_shape, stride, padding, dilation, groups, be)[0]


@conv2d_input_grad.defvjp
def _conv2d_input_grad_vjp(o, u, out, ins, params, needs):
    # <u, T_w g> = <conv2d(u, w), g>: linear in g through conv2d, in w through the weight grad
    g, w = ins
    conv = params[1:-1] + (None,)  # no cached columns: these convolve other arrays
    return (o.conv2d(u, w, *conv) if needs[0] else None,
            o.conv2d_weight_grad(u, g, tuple(w.shape), *conv) if needs[1] else None)


@primitive("conv2d_weight_grad", 2)
def conv2d_weight_grad(x, g, weight_shape, stride, padding, dilation, groups, be, cache=None):
    """The gradient of <g, conv2d(x, w)> in w, w of ``weight_shape``; ``cache``: the
    ConvColumns of a conv2d of this same x, if any."""
    cols = cache.take(x) if cache is not None else None
    return _task_conv_weight_grad(x[None], g[None], weight_shape, stride, padding, dilation,
                                  groups, be, cols)[0]


@conv2d_weight_grad.defvjp
def _conv2d_weight_grad_vjp(o, u, out, ins, params, needs):
    # <u, W(x, g)> = <g, conv2d(x, u)>: in x a transposed convolution of g by u, in g conv2d(x, u)
    x, g = ins
    conv = params[1:-1] + (None,)
    return (o.conv2d_input_grad(g, u, tuple(x.shape), *conv) if needs[0] else None,
            o.conv2d(x, u, *conv) if needs[1] else None)


# ----------------------------------------------------------------------------------
# Batch normalisation with the batch's statistics as one node: a fused forward (our
# kernel on the CPU, backends/norm_pool.py elsewhere), and a rule written in table ops
# that recomputes the statistics from x, so that higher derivatives see them depend on x.
# ``xs`` is (x,), (x, weight) or (x, weight, bias); ``affine`` says which are there.
# ``batch_norm_relu_train`` is relu of it as one node (the conv blocks' batch norm ->
# ReLU): one pass writes the activations, and its rule masks g and is batch norm's.
# ----------------------------------------------------------------------------------

_bn_axes = _norm_pool.statistics_axes


def _bn_affine(xs, affine):
    return xs[1] if affine[0] else None, xs[len(xs) - 1] if affine[1] else None


@primitive("batch_norm_train", nin=None)
def batch_norm_train(xs, affine, eps, statistics=None):
    """(x - mean) / sqrt(var + eps) [* weight] [+ bias] with the statistics of x (N, C, ...)
    over every axis but C (biased variance). ``statistics``: the backend's
    ``batch_norm_statistics`` of x when the caller took them (for the running statistics),
    so that the kernel need not take them again; never differentiated (the rule
    recomputes them from x)."""
    kernel = _norm_pool_kernel(backend_of(xs[0]), "batch_norm_train")
    return kernel(xs[0], *_bn_affine(xs, affine), eps, statistics)


@primitive("batch_norm_relu_train", nin=None)
def batch_norm_relu_train(xs, affine, eps, statistics=None):
    """relu(batch_norm_train(xs, affine, eps, statistics)) as one node."""
    kernel = _norm_pool_kernel(backend_of(xs[0]), "batch_norm_relu_train")
    return kernel(xs[0], *_bn_affine(xs, affine), eps, statistics)


@batch_norm_train.defvjp
def _batch_norm_train_vjp(o, g, out, ins, params, needs):
    return _batch_norm_grads(o, g, None, ins, params, needs)


@batch_norm_relu_train.defvjp
def _batch_norm_relu_train_vjp(o, g, out, ins, params, needs):
    # relu'(y) is a step: g masked by (out > 0) (the mask has no derivative), then batch
    # norm's rule; at first order the kernel masks as it reads g
    return _batch_norm_grads(o, g, out, ins, params, needs)


def _batch_norm_grads(o, g, relu_out, ins, params, needs):
    """batch_norm_train's rule for the gradient ``g`` of its output, or, with
    ``relu_out`` (the output of batch_norm_relu_train), for ``g * (relu_out > 0)``."""
    x = ins[0]
    (has_weight, has_bias), eps = params[:2]
    axes = _bn_axes(x.ndim)
    inverse_count = 1.0 / math.prod(x.shape[a] for a in axes)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    # first order, one float dtype (numpy, CuPy or tgm.compile's traced arrays): this
    # rule's arithmetic as one array kernel (all three gradients: each is a by-product of
    # the input gradient's per-channel sums), under vmap one call for the whole batch
    if o.first_order and x.dtype.kind == "f" and all(a.dtype == x.dtype for a in (g,) + tuple(ins)):
        backward = _norm_pool_kernel(o.backend(x), "batch_norm_train_backward")
        grad_x, grad_weight, grad_bias = o.per_example(
            backward, x, g, ins[1] if has_weight else None, eps, relu_out)
        grads = [grad_x if needs[0] else None] + [None] * (len(ins) - 1)
        if has_weight and needs[1]:
            grads[1] = grad_weight
        if has_bias and needs[len(ins) - 1]:
            grads[len(ins) - 1] = grad_bias
        return tuple(grads)
    if relu_out is not None:
        g = o.relu_grad(g, relu_out, o.backend(x))
    centered = x - o.sum(x, axes, True) * inverse_count
    inv_std = (o.sum(centered * centered, axes, True) * inverse_count + eps) ** -0.5
    normalized = centered * inv_std
    wants_bias = has_bias and needs[len(ins) - 1]
    wants_weight = has_weight and needs[1]
    # the per-channel sums of g and g * normalized are the bias and weight gradients and,
    # scaled by the weight, the two means in the input gradient: each taken once
    sum_g = o.sum(g, axes, True) if needs[0] or wants_bias else None
    sum_gn = o.sum(g * normalized, axes, True) if needs[0] or wants_weight else None
    grads = [None] * len(ins)
    if needs[0]:
        scale = inv_std * o.reshape(ins[1], shape) if has_weight else inv_std
        grads[0] = (g - sum_g * inverse_count - normalized * (sum_gn * inverse_count)) * scale
    if wants_weight:
        grads[1] = o.reshape(sum_gn, (x.shape[1],))
    if wants_bias:
        grads[len(ins) - 1] = o.reshape(sum_g, (x.shape[1],))
    return tuple(grads)


# ----------------------------------------------------------------------------------
# Batching rules (tgm.vmap, see vmap.py)
# ----------------------------------------------------------------------------------
# ``rule(op, datas, batched, params)`` runs ``op`` on a whole batch at once: ``datas`` are
# the inputs' raw arrays, a batched one (``batched[i]``) with the batch axis first; the
# params are the op's PER-EXAMPLE params (a node records those), a batched one (where's
# condition) wrapped in ``BatchedParam``. It returns the raw output, batch axis first.
# Most ops share one of the generic rules; an op without a rule is batched by a loop.

class BatchedParam:
    """A raw parameter array that carries the batch axis first (e.g. where's condition)."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


def _call(op, datas, params):
    return op.forward(datas, *params) if op.nin is None else op.forward(*datas, *params)


def _batch_size(datas, batched):
    return next(d.shape[0] for d, b in zip(datas, batched) if b)


def _lift(data, rank):
    """A batched array with size-1 axes after the batch axis, up to per-example ``rank``."""
    missing = rank - (data.ndim - 1)
    return data if missing <= 0 else data.reshape(data.shape[:1] + (1,) * missing + data.shape[1:])


def _align(datas, batched):
    """Batched operands lifted to the largest per-example rank, so numpy broadcasting of
    the batch (axis 0) against unbatched operands (right-aligned) means per-example
    broadcasting."""
    rank = max(d.ndim - 1 if b else d.ndim for d, b in zip(datas, batched))
    return [_lift(d, rank) if b else d for d, b in zip(datas, batched)]


def batch_elementwise(op, datas, batched, params):
    """Elementwise and broadcasting ops (and matmul, whose batch dims broadcast the same way)."""
    return _call(op, _align(datas, batched), params)


def batch_by_loop(op, datas, batched, params):
    """The generic rule: ``op`` on each example in turn, results stacked (always correct,
    one call per example)."""
    sizes = [d.shape[0] for d, b in zip(datas, batched) if b]
    sizes += [p.data.shape[0] for p in params if isinstance(p, BatchedParam)]
    if not sizes[0]:
        raise ValueError(f"vmap: op {op.name!r} has no batching rule and cannot loop over an "
                         "empty batch")
    results = []
    for i in range(sizes[0]):
        example = [d[i] if b else d for d, b in zip(datas, batched)]
        example_params = [p.data[i] if isinstance(p, BatchedParam) else p for p in params]
        results.append(_call(op, example, example_params))
    shapes = {tuple(getattr(r, "shape", ())) for r in results}
    if len(shapes) > 1:
        raise ValueError(f"vmap: op {op.name!r} gives outputs of different shapes per example "
                         f"({sorted(shapes)}), so it cannot be batched")
    return backend_of(results[0]).xp.stack(results)


def not_batchable(op, datas, batched, params):
    """The rule of an op that cannot run inside vmap: an error naming it."""
    raise NotImplementedError(f"vmap: op {op.name!r} cannot be batched")


def _example_axes(axes, data):
    """Per-example reduction axes (None: all) as axes of the batched array."""
    return tuple(range(1, data.ndim)) if axes is None else tuple(a + 1 for a in axes)


def batch_reduction(op, datas, batched, params):
    """Ops whose first param is the per-example axes (reductions, the softmax family)."""
    (x,), (axes, *rest) = datas, params
    return op.forward(x, _example_axes(axes, x), *rest)


@where.defbatch
def _where_batch(op, datas, batched, params):
    (condition,) = params
    is_batched = isinstance(condition, BatchedParam)
    a, b, condition = _align([*datas, condition.data if is_batched else condition],
                             [*batched, is_batched])
    return op.forward(a, b, condition)


@reshape.defbatch
def _reshape_batch(op, datas, batched, params):
    (x,), (shape,) = datas, params
    return op.forward(x, x.shape[:1] + tuple(shape))


@permute.defbatch
def _permute_batch(op, datas, batched, params):
    (x,), (axes,) = datas, params
    return op.forward(x, (0,) + tuple(a + 1 for a in axes))


@broadcast_to.defbatch
def _broadcast_to_batch(op, datas, batched, params):
    (x,), (shape,) = datas, params
    return op.forward(_lift(x, len(shape)), x.shape[:1] + tuple(shape))


def _batched_index(index):
    """A per-example index as an index of the batched array, and the axis the batch lands
    on: 0, unless advanced indices are split apart (numpy then puts their axes first)."""
    items = index if isinstance(index, tuple) else (index,)
    full = (slice(None),) + items
    if not _is_advanced(items):
        return full, 0
    spots = [k for k, i in enumerate(items) if not (isinstance(i, slice) or i is None or i is Ellipsis)]
    if spots == list(range(spots[0], spots[-1] + 1)):
        return full, 0
    shapes = []
    for i in spots:
        item = items[i] if hasattr(items[i], "dtype") else np.asarray(items[i])
        shapes.append((int(item.sum()),) if item.dtype == bool else item.shape)
    return full, len(np.broadcast_shapes(*shapes))


@getitem.defbatch
def _getitem_batch(op, datas, batched, params):
    (x,), (index,) = datas, params
    full, batch_axis = _batched_index(index)
    out = op.forward(x, full)
    return backend_of(x).xp.moveaxis(out, batch_axis, 0) if batch_axis else out


@index_put.defbatch
def _index_put_batch(op, datas, batched, params):
    (g,), (index, shape) = datas, params
    full, batch_axis = _batched_index(index)
    size = g.shape[0]
    if batch_axis:
        g = backend_of(g).xp.moveaxis(g, 0, batch_axis)
    return op.forward(g, full, (size,) + tuple(shape))


def _batch_join(op, datas, batched, params):
    """concatenate and stack: unbatched parts broadcast over the batch, the axis shifted."""
    size = _batch_size(datas, batched)
    xp = backend_of(datas[0]).xp
    parts = [d if b else xp.broadcast_to(d, (size,) + d.shape) for d, b in zip(datas, batched)]
    return op.forward(parts, params[0] + 1)


concatenate.defbatch(_batch_join)
stack.defbatch(_batch_join)


def _batch_affine(datas, batched, be):
    """linear's forward on a batch: x and weight lifted to one rank (an unbatched 2-D
    weight broadcast zero-copy, which ``_mm`` turns into one large matmul), the bias
    laid out as the per-example forward adds it."""
    (x, weight), (bx, bw) = datas[:2], batched[:2]
    rank = max(x.ndim - bx, weight.ndim - bw)
    x = _lift(x, rank) if bx else x
    if bw:
        weight = _lift(weight, rank)
    elif bx and x.ndim == 3 and weight.ndim == 2:
        weight = backend_of(weight).xp.broadcast_to(weight, x.shape[:1] + weight.shape)
    data = _mm(x, _swap_last(weight), be)  # weight (..., out, in), as the forward
    if len(datas) > 2:
        bias, bb = datas[2], batched[2]
        if batched_bias(datas[1].shape[bw:], bias.shape[bb:]):
            bias = bias[..., None, :]
        bias = _lift(bias, rank) if bb else bias
        if np.broadcast_shapes(data.shape, bias.shape) == data.shape:
            data += bias
        else:
            data = data + bias
    return data


@linear.defbatch
def _linear_batch(op, datas, batched, params):
    return _batch_affine(datas, batched, params[0])


@linear_relu.defbatch
def _linear_relu_batch(op, datas, batched, params):
    return params[0].relu(_batch_affine(datas, batched, params[0]))


@mse.defbatch
def _mse_batch(op, datas, batched, params):
    """The per-example mean of squares: one row sum each, not the forward's single dot."""
    prediction, target = _align(datas, batched)
    diff = prediction - target
    count = int(np.prod(diff.shape[1:]))
    flat = diff.reshape(diff.shape[0], count)
    xp = backend_of(flat).xp
    return (xp.einsum("ij,ij->i", flat, flat) / max(count, 1)).astype(datas[0].dtype, copy=False)


for _op in (add, sub, mul, div, pow_, neg, add_scalar, rsub_scalar, mul_scalar, rdiv_scalar,
            pow_scalar, rpow_scalar, matmul, maximum, minimum, exp, log, sqrt, abs_, clip,
            tanh, tanh_grad, sigmoid, sigmoid_grad, relu, relu_grad, mse_grad, sgd_update,
            safe_sqrt, masked_power, astype):
    _op.defbatch(batch_elementwise)
for _op in (sum_, max_, min_, logsumexp, softmax, log_softmax):
    _op.defbatch(batch_reduction)
# a batched tensor lives on one device: move the inputs before vmap
to.defbatch(not_batchable)

# the op set users expect: elementwise ones share the broadcasting rule (triu/tril act on
# the last two axes, so the batch axis in front changes nothing); the rest shift their
# (non-negative, per-example) axes past the batch axis
for _op in (sin, cos, tan, arcsin, arccos, arctan, sinh, cosh, erf, sign, floor, ceil, round_,
            softplus, leaky_relu, elu, gelu, arctan2, logaddexp, mod, triu, tril):
    _op.defbatch(batch_elementwise)
prod.defbatch(batch_reduction)
del _op


@max_pool_tiles.defbatch
def _max_pool_tiles_batch(op, datas, batched, params):
    # the tiles are the last two axes: a batch axis in front changes nothing
    return op.forward(datas[0], *params)


@cumsum.defbatch
def _cumsum_batch(op, datas, batched, params):
    return op.forward(datas[0], params[0] + 1)


@flip.defbatch
def _flip_batch(op, datas, batched, params):
    return op.forward(datas[0], tuple(a + 1 for a in params[0]))


@roll.defbatch
def _roll_batch(op, datas, batched, params):
    shifts, axes = params
    return op.forward(datas[0], shifts, tuple(a + 1 for a in axes))


@repeat.defbatch
def _repeat_batch(op, datas, batched, params):
    repeats, axis = params
    return op.forward(datas[0], repeats, axis + 1)


@tile.defbatch
def _tile_batch(op, datas, batched, params):
    return op.forward(datas[0], (1,) + tuple(params[0]))


@pad.defbatch
def _pad_batch(op, datas, batched, params):
    widths, value = params
    return op.forward(datas[0], ((0, 0),) + tuple(widths), value)


@diagonal.defbatch
def _diagonal_batch(op, datas, batched, params):
    offset, axis1, axis2 = params
    return op.forward(datas[0], offset, axis1 + 1, axis2 + 1)


@einsum.defbatch
def _einsum_batch(op, datas, batched, params):
    # a fresh index letter for the batch axis, on the batched operands and the output
    inputs, output = params
    used = set("".join(inputs) + output)
    letter = next(c for c in string.ascii_letters if c not in used)
    subscripts = [letter + spec if b else spec for spec, b in zip(inputs, batched)]
    return op.forward(datas, subscripts, letter + output)

# vmap's boundary nodes (made by vmap.py, outside the table): entering a vmap moves an
# axis into the batch, leaving moves it back out, so each is the other's derivative.
# Their rules run only in vmap's namespace, which provides ``o.vmap_in``/``o.vmap_out``.
vmap_in = Op("vmap_in", None, 1, lambda o, g, out, ins, params, needs: (o.vmap_out(g, *params),))
vmap_out = Op("vmap_out", None, 1, lambda o, g, out, ins, params, needs: (o.vmap_in(g, *params),))


# im2col / col2im act on (N, C, H, W) images: every batch axis in front folds into N
@im2col.defbatch
def _im2col_batch(op, datas, batched, params):
    (x,) = datas
    cols = op.forward(x.reshape((-1,) + x.shape[-3:]), *params)
    return cols.reshape(x.shape[:-3] + cols.shape[1:])


@col2im.defbatch
def _col2im_batch(op, datas, batched, params):
    (cols,), (input_shape, *rest) = datas, params
    lead = cols.shape[:cols.ndim - 3]
    count = math.prod(lead) * input_shape[0]
    image = op.forward(cols.reshape((count,) + cols.shape[-2:]),
                       (count,) + tuple(input_shape[1:]), *rest)
    return image.reshape(lead + tuple(input_shape))


# The convolution entries: task axis first. A weight shared by the whole batch (unbatched,
# or broadcast) folds the batch into the images, one product as outside vmap; a batched
# one runs the task-axis helpers, one product per example.

def _with_task_axis(datas, batched):
    size = _batch_size(datas, batched)
    xp = backend_of(datas[0]).xp
    return [d if b else xp.broadcast_to(d[None], (size,) + d.shape) for d, b in zip(datas, batched)]


def _fold(data):
    return data.reshape((-1,) + data.shape[2:]), data.shape[:2]


def _shared_weight(datas, batched):
    """The weight when every example uses the same one (unbatched, or a stride-0
    broadcast such as the fast weights before their first update) and the images are
    batched; else None."""
    w, bx, bw = datas[1], batched[0], batched[1]
    if not bx:
        return None
    if not bw:
        return w
    return w[0] if w.strides[0] == 0 else None


@conv2d.defbatch
def _conv2d_batch(op, datas, batched, params):
    params = params[:5]  # the ConvColumns cache serves the per-example path only
    w = _shared_weight(datas, batched)
    if w is not None:
        x, shape = _fold(datas[0])
        out = op.forward(x, w, *params)
        return out.reshape(shape + out.shape[1:])
    return _task_conv(*_with_task_axis(datas, batched), *params)


@conv2d_input_grad.defbatch
def _conv2d_input_grad_batch(op, datas, batched, params):
    input_shape, rest = params[0], params[1:6]
    w = _shared_weight(datas, batched)
    if w is not None:
        g, shape = _fold(datas[0])
        image = op.forward(g, w, (shape[0] * shape[1],) + tuple(input_shape[1:]), *rest)
        return image.reshape(shape + image.shape[1:])
    return _task_conv_input_grad(*_with_task_axis(datas, batched), input_shape, *rest)


@conv2d_weight_grad.defbatch
def _conv2d_weight_grad_batch(op, datas, batched, params):
    return _task_conv_weight_grad(*_with_task_axis(datas, batched), *params[:6])


@batch_norm_relu_train.defbatch
def _batch_norm_relu_train_batch(op, datas, batched, params):
    return _batch_norm_batch(datas, batched, params, "batch_norm_relu_train")


@batch_norm_train.defbatch
def _batch_norm_train_batch(op, datas, batched, params):
    return _batch_norm_batch(datas, batched, params, "batch_norm_train")


def _batch_norm_batch(datas, batched, params, name):
    # each example's statistics over its own (N, *spatial): the batch axis leads, one
    # kernel call (ours on the CPU takes each example's channels while they are in
    # cache). The ``statistics`` param (taken for the running statistics) is the whole
    # batch's, so it is not passed on
    affine, eps = params[:2]
    (x, *rest), (bx, *brest) = datas, batched
    be = backend_of(x)
    if not bx:
        size = next(d.shape[0] for d, b in zip(rest, brest) if b)
        x = be.xp.broadcast_to(x, (size,) + x.shape)
    weight = rest[0] if affine[0] else None
    bias = rest[-1] if affine[1] else None
    return _norm_pool_kernel(be, name)(x, weight, bias, eps, None, lead=1)
