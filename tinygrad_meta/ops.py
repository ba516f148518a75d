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

Adding an op: declare its forward with ``@primitive(name, nin)`` and its rule with
``@<op>.defvjp``; call it on Tensors with ``tensor.record(op, *inputs, *params)``. An op
outside the table (``Op(name, forward, nin, vjp)``) works the same way; inside a rule,
``o.apply(op, ...)`` calls it in either namespace.
"""
from __future__ import annotations

import operator

import numpy as np

from .backends import cpu as _cpu, get_backend

__all__ = ["Op", "primitive", "TABLE", "RAW", "backend_of", "unbroadcast", "keepdims_shape"]

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
        self.batch = None  # batching rule for vmap

    def defvjp(self, rule):
        """Decorator: set the backward rule ``rule(o, g, out, ins, params, needs)``."""
        self.vjp = rule
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
    if peak.dtype.kind == "f":
        mask |= xp.isnan(xr) & xp.isnan(peak)
    weights = (mask / mask.sum(axis=axes, keepdims=True)).astype(xr.dtype, copy=False)
    if not keepdims:
        g = o.reshape(g, kept)
    return (g * weights,)


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
    xp = backend_of(g).xp
    data = xp.zeros(shape, dtype=g.dtype)
    if _is_advanced(index):
        xp.add.at(data, index, g)
    else:
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
