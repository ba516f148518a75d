"""Tensor: n-d arrays with reverse-mode autograd to any order.

Each op computes its forward on raw arrays through the tensor's backend and records
one graph node: the parents, a backward rule, and what the rule needs (``_ctx``).
Every backward rule is a plain module-level function written in Tensor ops, so the
backward pass is itself differentiable when ``create_graph=True``.

All derivative rules live in this file, next to their forward, one short function each.
"""
from __future__ import annotations

import numbers
import operator

import numpy as np

from .autograd import _GradMode, backward as _backward, next_seq
from .backends import get_backend

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "zeros_like", "ones_like", "full",
    "concatenate", "stack", "where", "maximum", "minimum", "unbroadcast",
]

DEFAULT_DTYPE = np.dtype("float32")
_new = object.__new__


def _resolve_dtype(dtype):
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(f"unknown dtype {dtype!r}; use 'float32' or 'float64'") from None


def _make(data, backend, parents, rule, ctx=None):
    """Wrap a raw result; record a graph node only when some parent needs a gradient."""
    out = _new(Tensor)
    out.data = data
    out.grad = None
    out._be = backend
    if _GradMode.enabled:
        for parent in parents:
            if parent.requires_grad:
                out.requires_grad = True
                out._parents = parents
                out._rule = rule
                out._ctx = ctx
                out._origin = _GradMode.origin
                out._seq = next_seq()
                return out
    out.requires_grad = False
    out._parents = ()
    out._rule = None
    out._ctx = None
    out._origin = None
    return out


def _constant(data, backend):
    """A raw array as a Tensor that never requires grad."""
    out = _new(Tensor)
    out.data = data
    out.grad = None
    out._be = backend
    out.requires_grad = False
    out._parents = ()
    out._rule = None
    out._ctx = None
    out._origin = None
    return out


def _shape_error(name, *shapes):
    joined = " and ".join(str(tuple(s)) for s in shapes)
    return ValueError(f"{name}: shapes {joined} are not compatible (numpy broadcasting rules)")


def _matmul_shape_error(shape_a, shape_b):
    if not shape_a or not shape_b:
        return ValueError(f"matmul: operands must be at least 1-D, got shapes {shape_a} and {shape_b}")
    inner_b = shape_b[-2] if len(shape_b) > 1 else shape_b[0]
    return ValueError(f"matmul: shapes {shape_a} and {shape_b} don't align "
                      f"({shape_a[-1]} != {inner_b}, or batch dims do not broadcast)")


def _coerce(a, b, name):
    """``b`` as a Tensor on a's device with a compatible dtype, or an error naming the problem."""
    if type(b) is not Tensor:
        if isinstance(b, Tensor):
            pass
        elif hasattr(b, "_parents") and not hasattr(b, "shape"):
            raise TypeError(f"{name}: cannot combine a Tensor with {type(b).__name__}")
        else:
            try:
                dtype = a.data.dtype if a.data.dtype.kind == "f" else None
                return _constant(a._be.asarray(b, dtype=dtype), a._be)
            except (TypeError, ValueError) as error:
                raise TypeError(f"{name}: cannot use {type(b).__name__} as a tensor operand ({error})") from None
    if b._be is not a._be:
        raise RuntimeError(
            f"{name}: tensors are on different devices ({a.device} and {b.device}); "
            "move one with .to(device)")
    da, db = a.data.dtype, b.data.dtype
    if da is not db and da != db:
        if da.kind == "f" and db.kind == "f":
            raise TypeError(
                f"{name}: dtype mismatch {da} and {db}; cast one with .astype() (no implicit promotion)")
        if da.kind == "f":
            return _constant(b.data.astype(da), b._be)
    return b


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``: the adjoint of numpy broadcasting."""
    if g.data.shape == shape:
        return g
    shape = tuple(shape)
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape) if g.shape != shape else g


def _normalize_axis(axis, ndim, name):
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    normalized = []
    for ax in axes:
        if not -ndim <= ax < ndim:  # like numpy: a 0-d tensor has no axis to name
            raise ValueError(f"{name}: axis {ax} is out of range for a tensor with {ndim} dims")
        normalized.append(ax % ndim if ndim else 0)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"{name}: repeated axis in {axis}")
    return tuple(sorted(normalized))


def _keepdims_shape(shape, axes):
    if axes is None:
        return (1,) * len(shape)
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


# ----------------------------------------------------------------------------------
# Backward rules: rule(out, g) -> one gradient (or None) per parent, in Tensor ops.
# ----------------------------------------------------------------------------------

def _add_rule(out, g):
    a, b = out._parents
    return (unbroadcast(g, a.data.shape) if a.requires_grad else None,
            unbroadcast(g, b.data.shape) if b.requires_grad else None)


def _sub_rule(out, g):
    a, b = out._parents
    return (unbroadcast(g, a.data.shape) if a.requires_grad else None,
            unbroadcast(-g, b.data.shape) if b.requires_grad else None)


def _mul_rule(out, g):
    a, b = out._parents
    return (unbroadcast(g * b, a.data.shape) if a.requires_grad else None,
            unbroadcast(g * a, b.data.shape) if b.requires_grad else None)


def _div_rule(out, g):
    a, b = out._parents
    return (unbroadcast(g / b, a.data.shape) if a.requires_grad else None,
            unbroadcast(-(g * out) / b, b.data.shape) if b.requires_grad else None)


def _pow_rule(out, g):
    a, b = out._parents
    ga = gb = None
    if a.requires_grad:
        ga = unbroadcast(g * b * a ** (b - 1.0), a.shape)
    if b.requires_grad:
        gb = unbroadcast(g * out * a.log(), b.shape)
    return ga, gb


def _add_scalar_rule(out, g):
    return (g,)


def _mul_scalar_rule(out, g):
    return (g * out._ctx,)


def _pow_scalar_rule(out, g):
    (a,) = out._parents
    p = out._ctx
    if p == 2:
        return (g * (a * 2.0),)
    if p == 0:  # x**0 is constant; a ** -1 would turn 0 * inf into nan at x = 0
        return (g * 0.0,)
    return (g * (a ** (p - 1) * p),)


def _rpow_scalar_rule(out, g):
    # d/db c**b = c**b * log(c)
    return (g * out * float(np.log(out._ctx)),)


def _rdiv_scalar_rule(out, g):
    (a,) = out._parents
    return (-(g * out) / a,)


def _neg_rule(out, g):
    return (-g,)


def _swap_last(t):
    axes = list(range(t.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return t.permute(*axes)


def _matmul_rule(out, g):
    a, b = out._parents
    if a.ndim == 1 and b.ndim == 1:
        return (g * b if a.requires_grad else None, g * a if b.requires_grad else None)
    a2 = a if a.ndim > 1 else a.reshape(1, a.shape[0])
    b2 = b if b.ndim > 1 else b.reshape(b.shape[0], 1)
    if a.ndim == 1:
        g = g.reshape(g.shape[:-1] + (1, g.shape[-1]))
    elif b.ndim == 1:
        g = g.reshape(g.shape + (1,))
    ga = gb = None
    if a.requires_grad:
        ga = unbroadcast(g @ _swap_last(b2), a2.shape).reshape(a.shape)
    if b.requires_grad:
        gb = unbroadcast(_swap_last(a2) @ g, b2.shape).reshape(b.shape)
    return ga, gb


def _sum_rule(out, g):
    (a,) = out._parents
    axes, keepdims = out._ctx
    if not keepdims:
        g = g.reshape(_keepdims_shape(a.shape, axes))
    return (g.broadcast_to(a.shape),)


def _extremum_rule(out, g):
    # The gradient is split evenly between tied extreme elements.
    (a,) = out._parents
    axes, keepdims, weights = out._ctx
    if not keepdims:
        g = g.reshape(_keepdims_shape(a.shape, axes))
    return (g * weights,)


def _reshape_rule(out, g):
    return (g.reshape(out._parents[0].shape),)


def _permute_rule(out, g):
    return (g.permute(*np.argsort(out._ctx).tolist()),)


def _broadcast_rule(out, g):
    return (unbroadcast(g, out._parents[0].shape),)


def _getitem_rule(out, g):
    (a,) = out._parents
    return (_index_put(g, out._ctx, a.shape),)


def _index_put_rule(out, g):
    return (g[out._ctx],)


def _concatenate_rule(out, g):
    axis = out._ctx
    grads, start = [], 0
    for part in out._parents:
        stop = start + part.shape[axis]
        if part.requires_grad:
            index = (slice(None),) * axis + (slice(start, stop),)
            grads.append(g[index])
        else:
            grads.append(None)
        start = stop
    return tuple(grads)


def _stack_rule(out, g):
    axis = out._ctx
    return tuple(g[(slice(None),) * axis + (i,)] if part.requires_grad else None
                 for i, part in enumerate(out._parents))


def _exp_rule(out, g):
    return (g * out,)


def _log_rule(out, g):
    return (g / out._parents[0],)


def _sqrt_rule(out, g):
    return (g / (out * 2.0),)


def _abs_rule(out, g):
    a = out._parents[0]
    return (g * _constant(a._be.xp.sign(a.data), a._be),)


def _tanh_rule(out, g):
    return (_tanh_grad(g, out),)


def _tanh_grad_rule(node, gg):
    # node = g * (1 - y*y) with parents (g, y)
    g, y = node._parents
    return (_tanh_grad(gg, y) if g.requires_grad else None,
            gg * g * y * -2.0 if y.requires_grad else None)


def _sigmoid_rule(out, g):
    return (_sigmoid_grad(g, out),)


def _sigmoid_grad_rule(node, gg):
    # node = g * s * (1 - s) with parents (g, s)
    g, s = node._parents
    return (_sigmoid_grad(gg, s) if g.requires_grad else None,
            gg * g * (1.0 - s * 2.0) if s.requires_grad else None)


def _relu_rule(out, g):
    return (_relu_grad(g, out._parents[0]),)


def _relu_grad_rule(out, g):
    # relu'(x) is a step: the mask is constant, so only g carries a gradient.
    return (_relu_grad(g, out._parents[1]), None)


def _mask_rule(out, g):
    return (g * out._ctx,)


def _where_rule(out, g):
    a, b = out._parents
    cond = out._ctx
    zero = 0.0
    return (unbroadcast(where(cond, g, zero), a.data.shape) if a.requires_grad else None,
            unbroadcast(where(cond, zero, g), b.data.shape) if b.requires_grad else None)


def _pairwise_extremum_rule(out, g):
    a, b = out._parents
    weight_a = out._ctx
    return (unbroadcast(g * weight_a, a.data.shape) if a.requires_grad else None,
            unbroadcast(g * (1.0 - weight_a), b.data.shape) if b.requires_grad else None)


def _astype_rule(out, g):
    return (g.astype(out._parents[0].dtype),)


def _to_rule(out, g):
    return (g.to(out._parents[0].device),)


# ----------------------------------------------------------------------------------
# Ops that need a function rather than a method
# ----------------------------------------------------------------------------------

def _is_advanced(index):
    items = index if isinstance(index, tuple) else (index,)
    return any(not (isinstance(i, (numbers.Integral, slice)) or i is None or i is Ellipsis)
               for i in items)


def _index_put(g, index, shape):
    """Zeros of ``shape`` with ``g`` added at ``index`` (repeated indices accumulate)."""
    xp = g._be.xp
    data = xp.zeros(shape, dtype=g.data.dtype)
    if _is_advanced(index):
        xp.add.at(data, index, g.data)
    else:
        data[index] = g.data
    return _make(data, g._be, (g,), _index_put_rule, index)


def _tanh_grad(g, y):
    """``g * (1 - y**2)``, tanh's backward fused into one node (itself differentiable)."""
    y_data = y.data
    return _make(g.data * (1 - y_data * y_data), g._be, (g, y), _tanh_grad_rule)


def _sigmoid_grad(g, s):
    """``g * s * (1 - s)``, sigmoid's backward fused into one node (itself differentiable)."""
    s_data = s.data
    return _make(g.data * (s_data * (1 - s_data)), g._be, (g, s), _sigmoid_grad_rule)


def _relu_grad(g, x):
    """``g * (x > 0)`` in one fused kernel; differentiable in g."""
    return _make(g._be.relu_backward(g.data, x.data), g._be, (g, x), _relu_grad_rule)


def _as_tensors(items, name):
    tensors = [t for t in items if isinstance(t, Tensor)]
    if not tensors:
        raise TypeError(f"{name}: expected a sequence of Tensors")
    first = tensors[0]
    return [first if t is first else _coerce(first, t, name) for t in items]


def concatenate(tensors, axis=0):
    """Join tensors along an existing axis (like ``numpy.concatenate``)."""
    tensors = _as_tensors(list(tensors), "concatenate")
    first = tensors[0]
    axis = _normalize_axis(axis, first.ndim, "concatenate")[0]
    try:
        data = first._be.xp.concatenate([t.data for t in tensors], axis=axis)
    except ValueError:
        raise _shape_error("concatenate", *[t.shape for t in tensors]) from None
    return _make(data, first._be, tuple(tensors), _concatenate_rule, axis)


def stack(tensors, axis=0):
    """Join tensors along a new axis (like ``numpy.stack``)."""
    tensors = _as_tensors(list(tensors), "stack")
    first = tensors[0]
    axis = _normalize_axis(axis, first.ndim + 1, "stack")[0]
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors must have one shape, got {sorted(shapes)}")
    data = first._be.xp.stack([t.data for t in tensors], axis=axis)
    return _make(data, first._be, tuple(tensors), _stack_rule, axis)


def where(condition, a, b):
    """Elementwise ``a`` where ``condition`` holds, else ``b`` (condition is not differentiated)."""
    anchor = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    if anchor is None:
        raise TypeError("where: a or b must be a Tensor")
    a = _coerce(anchor, a, "where")
    b = _coerce(anchor, b, "where")
    if isinstance(condition, Tensor) and condition._be is not anchor._be:
        raise RuntimeError(f"where: condition is on {condition.device} but the values are on "
                           f"{anchor.device}; move it with .to(device)")
    cond = condition.data if isinstance(condition, Tensor) else anchor._be.asarray(condition)
    cond = cond.astype(bool, copy=False)
    try:
        data = anchor._be.xp.where(cond, a.data, b.data)
    except ValueError:
        raise _shape_error("where", cond.shape, a.shape, b.shape) from None
    return _make(data, anchor._be, (a, b), _where_rule, cond)


def _pairwise_extremum(a, b, name):
    anchor = a if isinstance(a, Tensor) else b
    a = _coerce(anchor, a, name)
    b = _coerce(anchor, b, name)
    xp = anchor._be.xp
    try:
        data = getattr(xp, name)(a.data, b.data)
    except ValueError:
        raise _shape_error(name, a.shape, b.shape) from None
    # a gets the gradient where it wins, half of it at ties
    weight_a = (data == a.data).astype(data.dtype) - 0.5 * (a.data == b.data).astype(data.dtype)
    return _make(data, anchor._be, (a, b), _pairwise_extremum_rule,
                 _constant(xp.broadcast_to(weight_a, data.shape), anchor._be))


def maximum(a, b):
    """Elementwise maximum; at ties each side gets half the gradient."""
    return _pairwise_extremum(a, b, "maximum")


def minimum(a, b):
    """Elementwise minimum; at ties each side gets half the gradient."""
    return _pairwise_extremum(a, b, "minimum")


# ----------------------------------------------------------------------------------
# Tensor
# ----------------------------------------------------------------------------------

class Tensor:
    """An n-d array (numpy on "cpu", CuPy on "cuda") that records how it was computed.

    ``Tensor(data, dtype=None, device="cpu", requires_grad=False)``: ``data`` is a
    number, nested list, numpy array or Tensor. Floating data (numpy float64 arrays
    included) becomes float32 unless
    ``dtype`` says otherwise ("float64" is supported throughout); integer and boolean
    arrays keep their dtype (labels, masks) and cannot require grad. A Tensor passed
    as ``data`` keeps its dtype.

    >>> import tinygrad_meta as tgm
    >>> x = tgm.Tensor([[1.0, 2.0]], requires_grad=True)
    >>> y = (x * x).sum()
    >>> y.backward()
    >>> x.grad.numpy().tolist()
    [[2.0, 4.0]]
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_rule", "_ctx", "_be", "_origin", "_seq",
                 "__weakref__")
    __array_ufunc__ = None  # numpy defers to our reflected operators
    __hash__ = object.__hash__

    def __init__(self, data, dtype=None, device="cpu", requires_grad=False):
        backend = get_backend(device)
        from_tensor = isinstance(data, Tensor)
        if from_tensor:
            if data._be is not backend:
                raise RuntimeError(
                    f"Tensor: data is on {data.device} but device={backend.name!r}; use .to()")
            data = data.data
        if dtype is not None:
            dtype = _resolve_dtype(dtype)
        try:
            array = backend.asarray(data, dtype=dtype)
        except (TypeError, ValueError) as error:
            raise TypeError(f"Tensor: cannot make an array from {type(data).__name__}: {error}") from None
        if array.dtype.kind not in "fbiu":
            raise TypeError(f"Tensor: unsupported dtype {array.dtype} (use float32 or float64)")
        if dtype is None and array.dtype.kind == "f" and not from_tensor:
            array = array.astype(DEFAULT_DTYPE, copy=False)
        self.data = array
        self.grad = None
        self._be = backend
        self._parents = ()
        self._rule = None
        self._ctx = None
        self._origin = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ---- properties ----------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self):
        return self._be.name

    @property
    def is_leaf(self):
        return self._rule is None

    @property
    def T(self):
        """Reverse all axes (like numpy's ``.T``)."""
        return self.permute(*range(self.ndim - 1, -1, -1))

    @property
    def mT(self):
        """Swap the last two axes (the matrix transpose of a batch)."""
        if self.ndim < 2:
            raise ValueError(f"mT: needs a tensor with at least 2 dims, got shape {self.shape}")
        return _swap_last(self)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        device = "" if self.device == "cpu" else f", device={self.device!r}"
        body = np.array2string(self.numpy(), separator=", ", prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{device}{extra})"

    # ---- conversion ----------------------------------------------------------
    def numpy(self):
        """The values as a numpy array (a copy from the GPU, the array itself on the CPU)."""
        return self._be.to_numpy(self.data)

    def item(self):
        """The single value of a one-element tensor, as a Python number."""
        if self.size != 1:
            raise ValueError(f"item: tensor has {self.size} elements, expected 1")
        return self.data.item()

    def tolist(self):
        return self.numpy().tolist()

    def __float__(self):
        return float(self.item())

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor with {self.size} elements is ambiguous")
        return bool(self.item())

    def detach(self):
        """The same values, cut from the graph (shares memory)."""
        return _constant(self.data, self._be)

    def requires_grad_(self, requires_grad=True):
        """Mark this leaf as needing gradients (in place); returns self."""
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"requires_grad: only floating point tensors can require grad, not {self.dtype}")
        if not requires_grad and self._rule is not None:
            raise RuntimeError("requires_grad_(False) on a non-leaf; use .detach()")
        if requires_grad and not hasattr(self, "_seq"):
            self._seq = next_seq()  # its first moment as a graph leaf (see autograd.toposort)
        self.requires_grad = bool(requires_grad)
        return self

    def astype(self, dtype):
        """A copy in another dtype (differentiable between float dtypes)."""
        dtype = _resolve_dtype(dtype)
        if dtype == self.data.dtype:
            return self
        if dtype.kind != "f":
            return _constant(self.data.astype(dtype), self._be)
        return _make(self.data.astype(dtype), self._be, (self,), _astype_rule)

    def to(self, device):
        """This tensor on ``device`` ("cpu" or "cuda"); differentiable; no copy if already there."""
        backend = get_backend(device)
        if backend is self._be:
            return self
        data = backend.asarray(self._be.to_numpy(self.data)) if backend.name != "cpu" \
            else self._be.to_numpy(self.data)
        return _make(data, backend, (self,), _to_rule)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    # ---- autograd hooks used by autograd.py ----------------------------------
    def _ones_like(self):
        return _constant(self._be.xp.ones(self.shape, dtype=self.data.dtype), self._be)

    def _as_gradient(self, seed, caller):
        seed = _coerce(self, seed, caller)
        if seed.shape != self.shape:
            raise ValueError(
                f"{caller}: grad_outputs has shape {seed.shape} but the output has shape {self.shape}")
        return seed

    def backward(self, gradient=None, create_graph=False):
        """Accumulate gradients of this tensor into the ``.grad`` of every leaf it depends on.

        A non-scalar tensor needs ``gradient`` (same shape). With ``create_graph=True`` the
        accumulated ``.grad`` tensors carry a graph and can be differentiated again.
        """
        _backward(self, gradient, create_graph)

    # ---- arithmetic ----------------------------------------------------------
    def _binary(self, other, forward, rule, name):
        if type(other) is not Tensor or other._be is not self._be or other.data.dtype is not self.data.dtype:
            other = _coerce(self, other, name)
        try:
            data = forward(self.data, other.data)
        except ValueError:
            raise _shape_error(name, self.shape, other.shape) from None
        return _make(data, self._be, (self, other), rule)

    # Python int/float operands skip the constant tensor: one node, and the rule needs no tensor
    def __add__(self, other):
        if type(other) is float or type(other) is int:
            return _make(self.data + other, self._be, (self,), _add_scalar_rule)
        return self._binary(other, operator.add, _add_rule, "add")

    __radd__ = __add__

    def __sub__(self, other):
        if type(other) is float or type(other) is int:
            return _make(self.data - other, self._be, (self,), _add_scalar_rule)
        return self._binary(other, operator.sub, _sub_rule, "sub")

    def __rsub__(self, other):
        if type(other) is float or type(other) is int:
            return _make(other - self.data, self._be, (self,), _neg_rule)
        return _coerce(self, other, "sub")._binary(self, operator.sub, _sub_rule, "sub")

    def __mul__(self, other):
        if type(other) is float or type(other) is int:
            return _make(self.data * other, self._be, (self,), _mul_scalar_rule, other)
        return self._binary(other, operator.mul, _mul_rule, "mul")

    __rmul__ = __mul__

    def __truediv__(self, other):
        if type(other) is float or type(other) is int:
            return self.__mul__(1.0 / other)
        return self._binary(other, operator.truediv, _div_rule, "div")

    def __rtruediv__(self, other):
        if type(other) is float or type(other) is int:
            return _make(other / self.data, self._be, (self,), _rdiv_scalar_rule)
        return _coerce(self, other, "div")._binary(self, operator.truediv, _div_rule, "div")

    def __pow__(self, exponent):
        if type(exponent) is float or type(exponent) is int:
            if exponent == 1:
                return self
            return _make(self.data ** exponent, self._be, (self,), _pow_scalar_rule, exponent)
        return self._binary(exponent, operator.pow, _pow_rule, "pow")

    def __rpow__(self, base):
        if type(base) is float or type(base) is int:
            if base <= 0:
                raise ValueError(f"pow: a number base must be positive to differentiate, got {base}")
            return _make(base ** self.data, self._be, (self,), _rpow_scalar_rule, base)
        return _coerce(self, base, "pow")._binary(self, operator.pow, _pow_rule, "pow")

    def __neg__(self):
        return _make(-self.data, self._be, (self,), _neg_rule)

    def __matmul__(self, other):
        if type(other) is not Tensor or other._be is not self._be or other.data.dtype is not self.data.dtype:
            other = _coerce(self, other, "matmul")
        try:
            data = self._be.matmul(self.data, other.data)
        except ValueError:
            raise _matmul_shape_error(self.shape, other.shape) from None
        return _make(data, self._be, (self, other), _matmul_rule)

    def __rmatmul__(self, other):
        return _coerce(self, other, "matmul").__matmul__(self)

    matmul = __matmul__

    # comparisons give boolean tensors, outside the graph
    def _compare(self, other, op):
        if isinstance(other, Tensor):
            if other._be is not self._be:
                raise RuntimeError(
                    f"compare: tensors are on different devices ({self.device} and {other.device}); "
                    "move one with .to(device)")
            other = other.data
        return _constant(op(self.data, other), self._be)

    def __lt__(self, other):
        return self._compare(other, operator.lt)

    def __le__(self, other):
        return self._compare(other, operator.le)

    def __gt__(self, other):
        return self._compare(other, operator.gt)

    def __ge__(self, other):
        return self._compare(other, operator.ge)

    def __eq__(self, other):
        return self._compare(other, operator.eq)

    def __ne__(self, other):
        return self._compare(other, operator.ne)

    # ---- reductions ----------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        """Sum over ``axis`` (an int, a tuple, or None for all)."""
        axes = _normalize_axis(axis, self.ndim, "sum")
        data = self.data.sum(axis=axes, keepdims=keepdims)
        return _make(data, self._be, (self,), _sum_rule, (axes, keepdims))

    def mean(self, axis=None, keepdims=False):
        """Mean over ``axis``."""
        axes = _normalize_axis(axis, self.ndim, "mean")
        count = self.size if axes is None else int(np.prod([self.shape[i] for i in axes]))
        if count == 0:
            raise ValueError(f"mean: reducing over an empty axis of shape {self.shape}")
        return self.sum(axis=axes, keepdims=keepdims) * (1.0 / count)

    def _extremum(self, axis, keepdims, reduce, name):
        axes = _normalize_axis(axis, self.ndim, name)
        if self.size == 0:
            raise ValueError(f"{name}: empty tensor of shape {self.shape} has no {name}")
        kept = reduce(self.data, axis=axes, keepdims=True)
        mask = (self.data == kept).astype(self.data.dtype)
        weights = _constant(mask / mask.sum(axis=axes, keepdims=True), self._be)
        data = kept if keepdims else kept.reshape([n for i, n in enumerate(kept.shape)
                                                   if axes is not None and i not in axes])
        return _make(data, self._be, (self,), _extremum_rule, (axes, keepdims, weights))

    def max(self, axis=None, keepdims=False):
        """Maximum over ``axis``; tied maxima share the gradient equally."""
        return self._extremum(axis, keepdims, self._be.xp.max, "max")

    def min(self, axis=None, keepdims=False):
        """Minimum over ``axis``; tied minima share the gradient equally."""
        return self._extremum(axis, keepdims, self._be.xp.min, "min")

    # ---- shape ---------------------------------------------------------------
    def reshape(self, *shape):
        """Same values in a new shape (one dimension may be -1)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        try:
            data = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {self.shape} ({self.size} elements) into {shape}") from None
        return _make(data, self._be, (self,), _reshape_rule)

    def permute(self, *axes):
        """Reorder the axes (like ``numpy.transpose(x, axes)``)."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if sorted(a % self.ndim if self.ndim else a for a in axes) != list(range(self.ndim)):
            raise ValueError(f"permute: {axes} is not a permutation of the {self.ndim} axes of {self.shape}")
        axes = tuple(a % self.ndim for a in axes)
        return _make(self.data.transpose(axes), self._be, (self,), _permute_rule, axes)

    def transpose(self, *axes):
        """With no arguments reverse the axes; otherwise like ``permute``."""
        return self.T if not axes else self.permute(*axes)

    def swapaxes(self, axis1, axis2):
        for ax in (axis1, axis2):
            if not -self.ndim <= ax < self.ndim:
                raise ValueError(f"swapaxes: axis {ax} is out of range for shape {self.shape}")
        axes = list(range(self.ndim))
        axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
        return self.permute(*axes)

    def broadcast_to(self, shape):
        """A read-only broadcast view in ``shape``; its gradient sums back (unbroadcast)."""
        shape = tuple(shape)
        if shape == self.shape:
            return self
        try:
            data = self._be.xp.broadcast_to(self.data, shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast shape {self.shape} to {shape}") from None
        return _make(data, self._be, (self,), _broadcast_rule)

    expand = broadcast_to

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        elif isinstance(index, list):
            index = self._be.asarray(index)
        try:
            data = self.data[index]
        except IndexError as error:
            raise IndexError(f"getitem: {error} (tensor shape {self.shape})") from None
        return _make(data, self._be, (self,), _getitem_rule, index)

    # ---- elementwise ---------------------------------------------------------
    def exp(self):
        return _make(self._be.xp.exp(self.data), self._be, (self,), _exp_rule)

    def log(self):
        return _make(self._be.xp.log(self.data), self._be, (self,), _log_rule)

    def sqrt(self):
        return _make(self._be.xp.sqrt(self.data), self._be, (self,), _sqrt_rule)

    def abs(self):
        """Absolute value; the gradient at 0 is 0 (sign(0))."""
        return _make(self._be.xp.abs(self.data), self._be, (self,), _abs_rule)

    __abs__ = abs

    def tanh(self):
        return _make(self._be.xp.tanh(self.data), self._be, (self,), _tanh_rule)

    def sigmoid(self):
        xp = self._be.xp
        data = xp.exp(-xp.logaddexp(0, -self.data)).astype(self.data.dtype, copy=False)
        return _make(data, self._be, (self,), _sigmoid_rule)

    def relu(self):
        """max(x, 0); the gradient at 0 is 0. NaN stays NaN."""
        return _make(self._be.relu(self.data), self._be, (self,), _relu_rule)

    def clip(self, min=None, max=None):
        """Limit values to [min, max]; the gradient is 1 inside (bounds included), 0 outside."""
        if min is None and max is None:
            raise ValueError("clip: give min, max or both")
        # numpy scalar bounds (np.float64) would promote a float32 tensor; keep its dtype
        data = self._be.xp.clip(self.data, min, max).astype(self.data.dtype, copy=False)
        mask = self._be.xp.ones(self.shape, dtype=self.data.dtype)
        if min is not None:
            mask = mask * (self.data >= min)
        if max is not None:
            mask = mask * (self.data <= max)
        return _make(data, self._be, (self,), _mask_rule, _constant(mask, self._be))


def tensor(data, dtype=None, device="cpu", requires_grad=False):
    """Same as ``Tensor(...)``."""
    return Tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)


def _filled(shape, value, dtype, device, requires_grad):
    backend = get_backend(device)
    dtype = DEFAULT_DTYPE if dtype is None else _resolve_dtype(dtype)
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    out = _constant(backend.xp.full(shape, value, dtype=dtype), backend)
    return out.requires_grad_(True) if requires_grad else out


def zeros(shape, dtype=None, device="cpu", requires_grad=False):
    return _filled(shape, 0.0, dtype, device, requires_grad)


def ones(shape, dtype=None, device="cpu", requires_grad=False):
    return _filled(shape, 1.0, dtype, device, requires_grad)


def full(shape, value, dtype=None, device="cpu", requires_grad=False):
    return _filled(shape, value, dtype, device, requires_grad)


def zeros_like(t, requires_grad=False):
    return _filled(t.shape, 0.0, t.dtype, t._be, requires_grad)


def ones_like(t, requires_grad=False):
    return _filled(t.shape, 1.0, t.dtype, t._be, requires_grad)
