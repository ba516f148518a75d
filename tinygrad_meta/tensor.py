"""Tensor: n-d arrays with reverse-mode autograd to any order.

This file is the user-facing API: argument checks, dtype and device rules, and one call
into the op table per op. Every forward and every derivative rule lives in ops.py;
``_make`` is the one node constructor and ``record`` applies any table op to Tensors.

dtype rules (as PyTorch): float32 and float64 never mix implicitly (a TypeError names
both); an integer or boolean operand of a float tensor takes the float's dtype; integer
tensors in floating ops (exp, sigmoid, division, mean, ...) compute in the default
float dtype, float32.
"""
from __future__ import annotations

import functools
import numbers
import operator

import numpy as np

from . import ops
from .autograd import backward as _backward, current_origin, grad_enabled, next_seq, note_change
from .backends import get_backend

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "zeros_like", "ones_like", "full",
    "concatenate", "stack", "where", "maximum", "minimum", "unbroadcast", "record",
]

DEFAULT_DTYPE = np.dtype("float32")
_new = object.__new__


_backend = get_backend


def _resolve_dtype(dtype):
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(f"unknown dtype {dtype!r}; use 'float32' or 'float64'") from None


# ----------------------------------------------------------------------------------
# Nodes
# ----------------------------------------------------------------------------------

def _make(data, be, parents, op, params=(), kind=None):
    """Wrap a raw result; record a graph node only when some parent needs a gradient.
    ``kind``: a Tensor subclass to make instead (vmap's BatchedTensor)."""
    out = _new(kind or Tensor)
    out._data = data
    out.grad = None
    out._be = be
    out._version = 0
    if grad_enabled():
        for parent in parents:
            if parent._requires_grad:
                out._requires_grad = True
                out._parents = parents
                out._op = op
                out._params = params
                out._origin = current_origin()
                out._seq = next_seq()
                return out
    out._requires_grad = False
    out._parents = ()
    out._op = None
    out._params = ()
    out._origin = None
    return out


def _constant(data, be):
    """A raw array as a Tensor that never requires grad."""
    out = _new(Tensor)
    out._data = data
    out.grad = None
    out._be = be
    out._version = 0
    out._requires_grad = False
    out._parents = ()
    out._op = None
    out._params = ()
    out._origin = None
    return out


def record(op, *args):
    """Apply table op ``op`` to Tensors: ``record(ops.exp, x)``, ``record(ops.sum_, x, axes,
    keepdims)``. The first ``op.nin`` arguments are inputs (numbers become constants of
    the first Tensor's dtype), the rest parameters. No argument checks: the user-facing
    functions check, then call this."""
    nin = op.nin
    if nin == 1:  # the common cases first: every rule recorded with create_graph comes here
        x = args[0]
        if type(x) is Tensor:
            params = args[1:]
            return _make(op.forward(x._data, *params), x._be, (x,), op, params)
    elif nin == 2:
        a, b = args[0], args[1]
        if type(a) is Tensor and type(b) is Tensor:
            params = args[2:]
            return _make(op.forward(a._data, b._data, *params), a._be, (a, b), op, params)
    if nin is None:
        inputs, params = tuple(args[0]), args[1:]
        datas = []
        for x in inputs:  # a loop, not a comprehension: this runs on every fused layer
            if type(x) is not Tensor:
                break
            datas.append(x._data)
        else:
            return _make(op.forward(datas, *params), inputs[0]._be, inputs, op, params)
    else:
        inputs, params = args[:nin], args[nin:]
    for x in (*inputs, *params):  # a batched tensor inside vmap: its batching rule runs the op
        if isinstance(x, Tensor) and type(x) is not Tensor:
            return x._record_batched(op, inputs, params)
    anchor = next((x for x in inputs if isinstance(x, Tensor)), None)
    if anchor is None:  # constants only (raw values inside a rule): a raw result
        return op.forward(list(inputs), *params) if nin is None else op.forward(*inputs, *params)
    be = anchor._be
    inputs = tuple(x if isinstance(x, Tensor) else
                   _constant(be.asarray(x, dtype=anchor._data.dtype), be) for x in inputs)
    datas = [x._data for x in inputs]
    data = op.forward(datas, *params) if nin is None else op.forward(*datas, *params)
    return _make(data, be, inputs, op, params)


class _GraphOps:
    """The namespace rules see with ``create_graph=True``: ``o.name(...)`` records table op
    ``name`` on Tensors (see ops.py)."""

    recording = True
    first_order = False  # see ops._RawOps

    def __getattr__(self, name):
        try:
            op = ops.TABLE[name]
        except KeyError:
            raise AttributeError(f"no op named {name!r} in the table") from None
        call = functools.partial(record, op)
        setattr(self, name, call)
        return call

    @staticmethod
    def raw(x):
        return x._data if isinstance(x, Tensor) else x

    @staticmethod
    def backend(x):
        return x._be

    @staticmethod
    def apply(op, *args):
        return record(op, *args)

    @staticmethod
    def to(x, source, target):
        return x.to(target)


def unbroadcast(g, shape):
    """Sum the Tensor ``g`` down to ``shape``: the adjoint of numpy broadcasting."""
    return ops.unbroadcast(_GraphOps.instance, g, tuple(shape))


_GraphOps.instance = _GraphOps()


# ----------------------------------------------------------------------------------
# Operand rules
# ----------------------------------------------------------------------------------

def _shape_error(name, *shapes):
    joined = " and ".join(str(tuple(s)) for s in shapes)
    return ValueError(f"{name}: shapes {joined} are not compatible (numpy broadcasting rules)")


def _matmul_shape_error(shape_a, shape_b, name="matmul"):
    if not shape_a or not shape_b:
        return ValueError(f"{name}: operands must be at least 1-D, got shapes {shape_a} and {shape_b}")
    inner_b = shape_b[-2] if len(shape_b) > 1 else shape_b[0]
    return ValueError(f"{name}: shapes {shape_a} and {shape_b} don't align "
                      f"({shape_a[-1]} != {inner_b}, or batch dims do not broadcast)")


def _as_operand(value, like, name):
    """A non-Tensor operand (number, list, array) as a constant on ``like``'s device.

    None, strings and other non-numeric objects are a TypeError naming the op."""
    if isinstance(value, (bool, numbers.Number, np.generic)) and not isinstance(value, complex):
        array = np.asarray(value)
    elif isinstance(value, (list, tuple)) or hasattr(value, "__array__") or \
            hasattr(value, "__cuda_array_interface__"):
        try:
            array = like._be.asarray(value)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name}: cannot use {type(value).__name__} as a tensor operand "
                            f"({error})") from None
    else:
        raise TypeError(f"{name}: cannot use {type(value).__name__} as a tensor operand "
                        "(expected a Tensor, a number or an array)")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name}: cannot use an operand of dtype {array.dtype} "
                        "(expected numbers)")
    dtype = like._data.dtype
    if dtype.kind == "f":
        array = array.astype(dtype, copy=False)
    elif array.dtype.kind == "f":
        array = array.astype(DEFAULT_DTYPE, copy=False)
    return _constant(like._be.asarray(array), like._be)


def _floating(x):
    """``x`` itself when floating; an integer or boolean tensor as the default float."""
    if x._data.dtype.kind == "f":
        return x
    return _constant(x._data.astype(DEFAULT_DTYPE), x._be)


def _pair(a, b, name):
    """Two operands on one device with one dtype, or an error naming the problem."""
    if not isinstance(b, Tensor):
        if hasattr(b, "_graph_ops"):
            raise TypeError(f"{name}: cannot combine a Tensor with {type(b).__name__}")
        b = _as_operand(b, a, name)
    if b._be is not a._be:
        raise RuntimeError(
            f"{name}: tensors are on different devices ({a.device} and {b.device}); "
            "move one with .to(device)")
    da, db = a._data.dtype, b._data.dtype
    if da != db:
        if da.kind == "f" and db.kind == "f":
            raise TypeError(
                f"{name}: dtype mismatch {da} and {db}; cast one with .astype() (no implicit promotion)")
        if da.kind == "f":
            b = _constant(b._data.astype(da), b._be)
        elif db.kind == "f":
            a = _constant(a._data.astype(db), a._be)
    return a, b


def _normalize_axis(axis, ndim, name):
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, (numbers.Integral, tuple, list)):
        raise TypeError(f"{name}: axis must be an int, a tuple of ints or None, got {axis!r}")
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    normalized = []
    for ax in axes:
        if isinstance(ax, bool) or not isinstance(ax, numbers.Integral):
            raise TypeError(f"{name}: axis must be an int, a tuple of ints or None, got {axis!r}")
        if not -ndim <= ax < ndim:  # like numpy: a 0-d tensor has no axis to name
            raise ValueError(f"{name}: axis {ax} is out of range for a tensor with {ndim} dims")
        normalized.append(int(ax) % ndim if ndim else 0)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"{name}: repeated axis in {axis}")
    return tuple(sorted(normalized))


_keepdims_shape = ops.keepdims_shape


def _swap_last(t):
    return t.swapaxes(-1, -2)


# ----------------------------------------------------------------------------------
# Functions of several tensors
# ----------------------------------------------------------------------------------

def _as_tensors(items, name):
    tensors = [t for t in items if isinstance(t, Tensor)]
    if not tensors:
        raise TypeError(f"{name}: expected a sequence of Tensors")
    first = tensors[0]
    converted = [first if t is first else _pair(first, t, name)[1] for t in items]
    if first._data.dtype.kind != "f" and any(t._data.dtype.kind == "f" for t in converted):
        dtype = next(t._data.dtype for t in converted if t._data.dtype.kind == "f")
        converted = [t if t._data.dtype == dtype else _constant(t._data.astype(dtype), t._be)
                     for t in converted]
    return converted


def concatenate(tensors, axis=0):
    """Join tensors along an existing axis (like ``numpy.concatenate``)."""
    tensors = _as_tensors(list(tensors), "concatenate")
    first = tensors[0]
    if first.ndim == 0:
        raise ValueError("concatenate: zero-dimensional tensors cannot be concatenated")
    axis = _normalize_axis(axis, first.ndim, "concatenate")[0]
    try:
        return record(ops.concatenate, tensors, axis)
    except ValueError:
        raise _shape_error("concatenate", *[t.shape for t in tensors]) from None


def stack(tensors, axis=0):
    """Join tensors along a new axis (like ``numpy.stack``)."""
    tensors = _as_tensors(list(tensors), "stack")
    first = tensors[0]
    axis = _normalize_axis(axis, first.ndim + 1, "stack")[0]
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors must have one shape, got {sorted(shapes)}")
    return record(ops.stack, tensors, axis)


def where(condition, a, b):
    """Elementwise ``a`` where ``condition`` holds, else ``b`` (condition is not differentiated)."""
    anchor = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    if anchor is None:
        raise TypeError("where: a or b must be a Tensor")
    a, b = _pair(anchor, a, "where")[1], _pair(anchor, b, "where")[1]
    a, b = _pair(a, b, "where")
    if isinstance(condition, Tensor):
        if condition._be is not anchor._be:
            raise RuntimeError(f"where: condition is on {condition.device} but the values are on "
                               f"{anchor.device}; move it with .to(device)")
        if type(condition) is not Tensor:  # batched inside vmap: its batching rule reads it
            return condition._record_batched(ops.where, (a, b), (condition.astype(bool),))
        cond = condition._data
    elif condition is None or isinstance(condition, str):
        raise TypeError(f"where: condition must be a boolean Tensor or array, got "
                        f"{type(condition).__name__}")
    else:
        cond = anchor._be.asarray(condition)
    cond = cond.astype(bool, copy=False)
    try:
        return record(ops.where, a, b, cond)
    except ValueError:
        raise _shape_error("where", cond.shape, a.shape, b.shape) from None


def _pairwise(a, b, op):
    anchor = a if isinstance(a, Tensor) else b
    if not isinstance(anchor, Tensor):
        raise TypeError(f"{op.name}: a or b must be a Tensor")
    a, b = _pair(anchor, a, op.name)[1], _pair(anchor, b, op.name)[1]
    a, b = _pair(a, b, op.name)
    try:
        return record(op, a, b)
    except ValueError:
        raise _shape_error(op.name, a.shape, b.shape) from None


def maximum(a, b):
    """Elementwise maximum; at ties each side gets half the gradient."""
    return _pairwise(a, b, ops.maximum)


def minimum(a, b):
    """Elementwise minimum; at ties each side gets half the gradient."""
    return _pairwise(a, b, ops.minimum)


# ----------------------------------------------------------------------------------
# Tensor
# ----------------------------------------------------------------------------------

# the ops on the per-op hot path, bound once
_ADD, _MUL, _ADD_SCALAR, _MUL_SCALAR = ops.add, ops.mul, ops.add_scalar, ops.mul_scalar
# float32 by identity first: much cheaper than dtype.kind on every op
_F32 = np.dtype("float32")

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

    __slots__ = ("_data", "grad", "_requires_grad", "_parents", "_op", "_params", "_be",
                 "_origin", "_seq", "_version", "__weakref__")
    __array_ufunc__ = None  # numpy defers to our reflected operators
    __hash__ = object.__hash__
    _graph_ops = _GraphOps.instance
    _raw_ops = ops.RAW

    def __init__(self, data, dtype=None, device="cpu", requires_grad=False):
        backend = _backend(device)
        from_tensor = isinstance(data, Tensor)
        if from_tensor:
            if data._be is not backend:
                raise RuntimeError(
                    f"Tensor: data is on {data.device} but device={backend.name!r}; use .to()")
            data = data._data
        elif data is None:
            raise TypeError("Tensor: cannot make an array from None")
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
        self._data = array
        self.grad = None
        self._be = backend
        self._parents = ()
        self._op = None
        self._params = ()
        self._origin = None
        self._version = 0
        self._requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ---- properties ----------------------------------------------------------
    @property
    def data(self):
        """The raw array. Assigning to it changes the tensor in place (it counts as a
        modification: a graph recorded before cannot be differentiated afterwards)."""
        return self._data

    @data.setter
    def data(self, value):
        if isinstance(value, Tensor):
            value = value._data
        self._data = value
        note_change(self)

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        self.requires_grad_(value)

    @property
    def shape(self):
        return self._data.shape

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def size(self):
        return self._data.size

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def device(self):
        return self._be.name

    @property
    def is_leaf(self):
        return self._op is None

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
        extra = ", requires_grad=True" if self._requires_grad else ""
        device = "" if self.device == "cpu" else f", device={self.device!r}"
        body = np.array2string(self.numpy(), separator=", ", prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{device}{extra})"

    # ---- conversion ----------------------------------------------------------
    def numpy(self):
        """The values as a numpy array (a copy from the GPU, the array itself on the CPU)."""
        return self._be.to_numpy(self._data)

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(t)`` gives the values (no graph)."""
        array = np.asarray(self.numpy())
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        return array.copy() if copy else array

    def item(self):
        """The single value of a one-element tensor, as a Python number."""
        if self.size != 1:
            raise ValueError(f"item: tensor has {self.size} elements, expected 1")
        return self._data.item()

    def tolist(self):
        return self.numpy().tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor with {self.size} elements is ambiguous")
        return bool(self._data)  # of the array, not .item(): under tgm.compile, a value guard

    def detach(self):
        """The same values, cut from the graph (shares memory)."""
        return _constant(self._data, self._be)

    def requires_grad_(self, requires_grad=True):
        """Mark this leaf as needing gradients (in place); returns self."""
        requires_grad = bool(requires_grad)
        if requires_grad and self._data.dtype.kind != "f":
            raise TypeError(f"requires_grad: only floating point tensors can require grad, not {self.dtype}")
        if not requires_grad and self._op is not None:
            raise RuntimeError("requires_grad_(False) on a non-leaf; use .detach()")
        if requires_grad and not hasattr(self, "_seq"):
            self._seq = next_seq()  # its first moment as a graph leaf (see autograd.toposort)
        self._requires_grad = requires_grad
        return self

    def astype(self, dtype):
        """A copy in another dtype (differentiable between float dtypes)."""
        dtype = _resolve_dtype(dtype)
        if dtype == self._data.dtype:
            return self
        if dtype.kind != "f":
            return _constant(self._data.astype(dtype), self._be)
        return record(ops.astype, self, dtype)

    def to(self, device):
        """This tensor on ``device`` ("cpu" or "cuda"); differentiable; no copy if already there."""
        backend = _backend(device)
        if backend is self._be:
            return self
        data = ops.to.forward(self._data, self._be, backend)
        return _make(data, backend, (self,), ops.to, (self._be, backend))

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    # ---- autograd hooks used by autograd.py ----------------------------------
    def _ones_like(self):
        return _constant(self._be.xp.ones(self.shape, dtype=self._data.dtype), self._be)

    def _as_gradient(self, seed, caller):
        if seed is None or isinstance(seed, str):
            raise TypeError(f"{caller}: a gradient must be a Tensor or an array, got "
                            f"{type(seed).__name__}")
        _, seed = _pair(self, seed, caller)
        if seed.shape != self.shape:
            raise ValueError(
                f"{caller}: grad_outputs has shape {seed.shape} but the output has shape {self.shape}")
        return seed

    def _wrap(self, raw):
        """A raw gradient of this tensor as a constant Tensor in its dtype."""
        dtype = getattr(raw, "dtype", None)
        if dtype is not self._data.dtype and dtype != self._data.dtype:
            raw = self._be.xp.asarray(raw, dtype=self._data.dtype)
        return _constant(raw, self._be)

    def backward(self, gradient=None, create_graph=False):
        """Accumulate gradients of this tensor into the ``.grad`` of every leaf it depends on.

        A non-scalar tensor needs ``gradient`` (same shape). With ``create_graph=True`` the
        accumulated ``.grad`` tensors carry a graph and can be differentiated again.
        """
        _backward(self, gradient, create_graph)

    # ---- arithmetic ----------------------------------------------------------
    def _binary(self, other, op):
        a, b = self, other
        if type(b) is not Tensor or b._be is not a._be or b._data.dtype is not a._data.dtype:
            a, b = _pair(a, b, op.name)
        try:
            data = op.forward(a._data, b._data)
        except ValueError:
            raise _shape_error(op.name, a.shape, b.shape) from None
        return _make(data, a._be, (a, b), op)

    def _scalar(self, other, op):
        """An op with a Python number: one node, and the rule needs no tensor. An integer
        tensor with a float number computes in the default float dtype."""
        x = self if type(other) is int or self._data.dtype is _F32 or self._data.dtype.kind == "f" else _floating(self)
        return _make(op.forward(x._data, other), x._be, (x,), op, (other,))

    # the two commonest ops take the number path inline (a method call is ~10% of an op)
    def __add__(self, other):
        if type(other) is float or type(other) is int:
            x = self if type(other) is int or self._data.dtype is _F32 or self._data.dtype.kind == "f" else _floating(self)
            return _make(_ADD_SCALAR.forward(x._data, other), x._be, (x,), _ADD_SCALAR, (other,))
        return self._binary(other, _ADD)

    __radd__ = __add__

    def __sub__(self, other):
        if type(other) is float or type(other) is int:
            return self._scalar(-other, _ADD_SCALAR)
        return self._binary(other, ops.sub)

    def __rsub__(self, other):
        if type(other) is float or type(other) is int:
            return self._scalar(other, ops.rsub_scalar)
        return _pair(self, other, "sub")[1]._binary(self, ops.sub)

    def __mul__(self, other):
        if type(other) is float or type(other) is int:
            x = self if type(other) is int or self._data.dtype is _F32 or self._data.dtype.kind == "f" else _floating(self)
            return _make(_MUL_SCALAR.forward(x._data, other), x._be, (x,), _MUL_SCALAR, (other,))
        return self._binary(other, _MUL)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if type(other) is float or type(other) is int:
            return _floating(self)._scalar(1.0 / other, ops.mul_scalar)
        if isinstance(other, Tensor) and other._data.dtype.kind != "f" and \
                self._data.dtype.kind != "f":
            other = _floating(other)
        return _floating(self)._binary(other, ops.div)

    def __rtruediv__(self, other):
        if type(other) is float or type(other) is int:
            return _floating(self)._scalar(float(other), ops.rdiv_scalar)
        return _pair(_floating(self), other, "div")[1]._binary(_floating(self), ops.div)

    def __pow__(self, exponent):
        if type(exponent) is float or type(exponent) is int:
            if exponent == 1:
                return self
            return self._scalar(exponent, ops.pow_scalar)
        return self._binary(exponent, ops.pow_)

    def __rpow__(self, base):
        if type(base) is float or type(base) is int:
            if base < 0 and self._requires_grad:
                raise ValueError(f"pow: a number base must be >= 0 to differentiate, got {base}")
            return _floating(self)._scalar(float(base), ops.rpow_scalar)
        return _pair(self, base, "pow")[1]._binary(self, ops.pow_)

    def __neg__(self):
        return _make(-self._data, self._be, (self,), ops.neg)

    def __matmul__(self, other):
        a, b = self, other
        if type(b) is not Tensor or b._be is not a._be or b._data.dtype is not a._data.dtype:
            a, b = _pair(a, b, "matmul")
        if a.ndim >= 2 and b.ndim >= 2:
            try:
                data = ops.matmul.forward(a._data, b._data, False, False, a._be)
            except ValueError:
                raise _matmul_shape_error(a.shape, b.shape) from None
            return _make(data, a._be, (a, b), ops.matmul, (False, False, a._be))
        if a.ndim == 0 or b.ndim == 0:
            raise _matmul_shape_error(a.shape, b.shape)
        # 1-D operands: numpy's rules, through the 2-D product and reshapes
        a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
        b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
        try:
            out = a2 @ b2
        except ValueError:
            raise _matmul_shape_error(a.shape, b.shape) from None
        shape = out.shape[:-2] + (out.shape[-2:-1] if a.ndim > 1 else ()) + \
            (out.shape[-1:] if b.ndim > 1 else ())
        return out.reshape(shape)

    def __rmatmul__(self, other):
        return _pair(self, other, "matmul")[1].__matmul__(self)

    matmul = __matmul__

    # comparisons give boolean tensors, outside the graph
    def _compare(self, other, op, name):
        if isinstance(other, Tensor):
            if other._be is not self._be:
                raise RuntimeError(
                    f"compare: tensors are on different devices ({self.device} and {other.device}); "
                    "move one with .to(device)")
            other = other._data
        elif other is None or isinstance(other, str):
            raise TypeError(f"{name}: cannot compare a Tensor with {type(other).__name__}")
        return _constant(op(self._data, other), self._be)

    def __lt__(self, other):
        return self._compare(other, operator.lt, "lt")

    def __le__(self, other):
        return self._compare(other, operator.le, "le")

    def __gt__(self, other):
        return self._compare(other, operator.gt, "gt")

    def __ge__(self, other):
        return self._compare(other, operator.ge, "ge")

    def __eq__(self, other):
        return self._compare(other, operator.eq, "eq")

    def __ne__(self, other):
        return self._compare(other, operator.ne, "ne")

    # ---- reductions ----------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        """Sum over ``axis`` (an int, a tuple, or None for all)."""
        axes = _normalize_axis(axis, self.ndim, "sum")
        keepdims = bool(keepdims)
        data = ops.sum_.forward(self._data, axes, keepdims)
        return _make(data, self._be, (self,), ops.sum_, (axes, keepdims))

    def mean(self, axis=None, keepdims=False):
        """Mean over ``axis``."""
        axes = _normalize_axis(axis, self.ndim, "mean")
        count = self.size if axes is None else int(np.prod([self.shape[i] for i in axes]))
        if count == 0:
            raise ValueError(f"mean: reducing over an empty axis of shape {self.shape}")
        return _floating(self).sum(axis=axes, keepdims=keepdims) * (1.0 / count)

    def _extremum(self, axis, keepdims, op):
        axes = _normalize_axis(axis, self.ndim, op.name)
        if self.size == 0:
            raise ValueError(f"{op.name}: empty tensor of shape {self.shape} has no {op.name}")
        return record(op, self, axes, bool(keepdims))

    def max(self, axis=None, keepdims=False):
        """Maximum over ``axis``; tied maxima share the gradient equally."""
        return self._extremum(axis, keepdims, ops.max_)

    def min(self, axis=None, keepdims=False):
        """Minimum over ``axis``; tied minima share the gradient equally."""
        return self._extremum(axis, keepdims, ops.min_)

    # ---- shape ---------------------------------------------------------------
    def reshape(self, *shape):
        """Same values in a new shape (one dimension may be -1)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        try:
            data = self._data.reshape(shape)
        except (ValueError, TypeError):
            raise ValueError(f"reshape: cannot reshape {self.shape} ({self.size} elements) into {shape}") from None
        return _make(data, self._be, (self,), ops.reshape, (data.shape,))

    def permute(self, *axes):
        """Reorder the axes (like ``numpy.transpose(x, axes)``)."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        ndim = self.ndim
        if len(axes) != ndim or any(isinstance(a, bool) or not isinstance(a, numbers.Integral)
                                    or not -ndim <= a < ndim for a in axes) or \
                sorted(a % ndim for a in axes) != list(range(ndim)):
            raise ValueError(f"permute: {axes} is not a permutation of the {ndim} axes of {self.shape}")
        axes = tuple(int(a) % ndim for a in axes)
        return _make(self._data.transpose(axes), self._be, (self,), ops.permute, (axes,))

    def transpose(self, *axes):
        """With no arguments reverse the axes; otherwise like ``permute``."""
        return self.T if not axes else self.permute(*axes)

    def swapaxes(self, axis1, axis2):
        for ax in (axis1, axis2):
            if isinstance(ax, bool) or not isinstance(ax, numbers.Integral) or \
                    not -self.ndim <= ax < self.ndim:
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
            data = ops.broadcast_to.forward(self._data, shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast shape {self.shape} to {shape}") from None
        return _make(data, self._be, (self,), ops.broadcast_to, (shape,))

    expand = broadcast_to

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index._data
        elif isinstance(index, tuple):
            index = tuple(i._data if isinstance(i, Tensor) else i for i in index)
        elif isinstance(index, list):
            index = self._be.asarray(index)
        try:
            data = self._data[index]
        except IndexError as error:
            raise IndexError(f"getitem: {error} (tensor shape {self.shape})") from None
        return _make(data, self._be, (self,), ops.getitem, (index,))

    # ---- elementwise ---------------------------------------------------------
    def _unary(self, op):
        x = self if self._data.dtype is _F32 or self._data.dtype.kind == "f" else _floating(self)
        return _make(op.forward(x._data), x._be, (x,), op)

    def exp(self):
        return self._unary(ops.exp)

    def log(self):
        return self._unary(ops.log)

    def sqrt(self):
        return self._unary(ops.sqrt)

    def abs(self):
        """Absolute value; the gradient at 0 is 0 (sign(0))."""
        return _make(ops.abs_.forward(self._data), self._be, (self,), ops.abs_)

    __abs__ = abs

    def tanh(self):
        return self._unary(ops.tanh)

    def sigmoid(self):
        return self._unary(ops.sigmoid)

    def relu(self):
        """max(x, 0); the gradient at 0 is 0. NaN stays NaN."""
        return record(ops.relu, self, self._be)

    def clip(self, min=None, max=None):
        """Limit values to [min, max]; the gradient is 1 inside (bounds included), 0 outside."""
        if min is None and max is None:
            raise ValueError("clip: give min, max or both")
        for bound in (min, max):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real)):
                raise TypeError(f"clip: bounds must be numbers, got {type(bound).__name__}")
        x = self
        if x._data.dtype.kind != "f" and any(b is not None and float(b) != int(b) for b in (min, max)):
            x = _floating(x)
        return record(ops.clip, x, min, max)

    # ---- the op set users expect (issue 9); forwards and rules in ops.py's block ----
    # elementwise: integer tensors compute in float32, like exp
    def sin(self):
        return self._unary(ops.sin)

    def cos(self):
        return self._unary(ops.cos)

    def tan(self):
        return self._unary(ops.tan)

    def arcsin(self):
        return self._unary(ops.arcsin)

    def arccos(self):
        return self._unary(ops.arccos)

    def arctan(self):
        return self._unary(ops.arctan)

    def sinh(self):
        return self._unary(ops.sinh)

    def cosh(self):
        return self._unary(ops.cosh)

    def erf(self):
        """The error function, to within 2 ulp of ``math.erf`` in float64."""
        return self._unary(ops.erf)

    def arctan2(self, other):
        """The angle of the point (other, self), elementwise: numpy's ``arctan2(self, other)``."""
        return _floating_pairwise(self, other, ops.arctan2)

    def logaddexp(self, other):
        """log(exp(self) + exp(other)), computed stably."""
        return _floating_pairwise(self, other, ops.logaddexp)

    def __mod__(self, other):
        """numpy's ``%``: the remainder takes the divisor's sign. Gradient 1 for self and
        -floor(self / other) for other."""
        return _pairwise(self, other, ops.mod)

    def __rmod__(self, other):
        return _pairwise(other, self, ops.mod)

    remainder = __mod__

    # rounding: gradient 0 (zeros, so grad() works)
    def _rounding(self, op, *params):
        if self._data.dtype.kind == "f":
            return record(op, self, *params)
        # integers stay integers (numpy < 2.1 floors them to float64; booleans have no sign)
        data = self._data
        data = data.copy() if data.dtype.kind == "b" else op.forward(data, *params).astype(data.dtype)
        return _constant(data, self._be)

    def sign(self):
        """-1, 0 or 1 elementwise; the gradient is 0."""
        return self._rounding(ops.sign)

    def floor(self):
        """The gradient is 0."""
        return self._rounding(ops.floor)

    def ceil(self):
        """The gradient is 0."""
        return self._rounding(ops.ceil)

    def round(self, decimals=0):
        """Round to ``decimals`` places, halves to even (as numpy); the gradient is 0."""
        return self._rounding(ops.round_, _integer(decimals, "round", "decimals"))

    # activations (PyTorch's definitions and defaults; also in tgm.functional)
    def softplus(self, beta=1.0, threshold=20.0):
        """log(1 + exp(beta x)) / beta, reverting to x where beta x > threshold."""
        beta = _real(beta, "softplus", "beta")
        if beta == 0:
            raise ValueError("softplus: beta must be nonzero")
        return record(ops.softplus, _floating(self), beta, _real(threshold, "softplus", "threshold"))

    def leaky_relu(self, negative_slope=0.01):
        """x where x > 0, else negative_slope * x."""
        return record(ops.leaky_relu, _floating(self), _real(negative_slope, "leaky_relu", "negative_slope"))

    def elu(self, alpha=1.0):
        """x where x > 0, else alpha * (exp(x) - 1)."""
        return record(ops.elu, _floating(self), _real(alpha, "elu", "alpha"))

    def gelu(self, approximate="none"):
        """x * Phi(x), Phi the standard normal CDF (exact, via erf); approximate="tanh" is
        PyTorch's tanh approximation."""
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        return record(ops.gelu, _floating(self), approximate)

    # reductions and scans
    def prod(self, axis=None, keepdims=False):
        """Product over ``axis``; exact gradients (and higher derivatives) with zeros in the input."""
        return record(ops.prod, self, _normalize_axis(axis, self.ndim, "prod"), bool(keepdims))

    def var(self, axis=None, ddof=0, keepdims=False):
        """Variance over ``axis``, divided by n - ddof (numpy's default ddof=0). A
        composition: the mean of squared deviations from the mean."""
        x = _floating(self)
        axes = _normalize_axis(axis, x.ndim, "var")
        ddof = _real(ddof, "var", "ddof")
        count = x.size if axes is None else int(np.prod([x.shape[i] for i in axes]))
        if count - ddof <= 0:
            raise ValueError(f"var: {count} values per slice of shape {x.shape} leave no degrees "
                             f"of freedom with ddof={ddof:g}")
        deviation = x - x.mean(axis=axes, keepdims=True)
        return (deviation * deviation).sum(axis=axes, keepdims=keepdims) * (1.0 / (count - ddof))

    def std(self, axis=None, ddof=0, keepdims=False):
        """sqrt(var(...)); its gradient is 0 where the variance is 0 (a constant slice)."""
        return record(ops.safe_sqrt, self.var(axis, ddof, keepdims))

    def cumsum(self, axis=None):
        """Running sums along ``axis`` (None: of the flattened values, as numpy)."""
        if axis is None:
            return self.reshape(-1).cumsum(0)
        return record(ops.cumsum, self, _one_axis(axis, self.ndim, "cumsum"))

    def _arg_extremum(self, axis, keepdims, name):
        if axis is not None:
            axis = _one_axis(axis, self.ndim, name)
        if self.size == 0 and (axis is None or self.shape[axis] == 0):
            raise ValueError(f"{name}: empty tensor of shape {self.shape} has no {name}")
        xp = self._be.xp
        return _constant(xp.asarray(getattr(xp, name)(self._data, axis=axis, keepdims=bool(keepdims))),
                         self._be)

    def argmax(self, axis=None, keepdims=False):
        """Index of the largest value (of the flattened values when axis is None): an
        integer tensor outside the graph. The first index wins ties."""
        return self._arg_extremum(axis, keepdims, "argmax")

    def argmin(self, axis=None, keepdims=False):
        """Index of the smallest value, like ``argmax``."""
        return self._arg_extremum(axis, keepdims, "argmin")

    def norm(self, ord=None, axis=None, keepdims=False):
        """Same as ``tgm.norm(self, ...)``."""
        return norm(self, ord, axis, keepdims)

    # matrices
    def diagonal(self, offset=0, axis1=0, axis2=1):
        """The diagonal ``offset`` above (below, if negative) the main one, of the matrices
        in axes ``axis1`` and ``axis2``, as a new last axis (numpy's ``diagonal``)."""
        if self.ndim < 2:
            raise ValueError(f"diagonal: needs a tensor with at least 2 dims, got shape {self.shape}")
        axis1, axis2 = _one_axis(axis1, self.ndim, "diagonal"), _one_axis(axis2, self.ndim, "diagonal")
        if axis1 == axis2:
            raise ValueError(f"diagonal: axis1 and axis2 are both axis {axis1} of shape {self.shape}")
        return record(ops.diagonal, self, _integer(offset, "diagonal", "offset"), axis1, axis2)

    def trace(self, offset=0, axis1=0, axis2=1):
        """Sum of the diagonal (a composition: ``diagonal(...).sum(-1)``)."""
        return self.diagonal(offset, axis1, axis2).sum(axis=-1)

    def _triangle(self, op, k):
        if self.ndim < 2:
            raise ValueError(f"{op.name}: needs a tensor with at least 2 dims, got shape {self.shape}")
        return record(op, self, _integer(k, op.name, "k"))

    def triu(self, k=0):
        """Zeros below the k-th diagonal of the last two axes (numpy's ``triu``)."""
        return self._triangle(ops.triu, k)

    def tril(self, k=0):
        """Zeros above the k-th diagonal of the last two axes (numpy's ``tril``)."""
        return self._triangle(ops.tril, k)

    # shape: squeeze, expand_dims, flatten and ravel are reshapes
    def squeeze(self, axis=None):
        """Drop size-1 axes: all of them, or those in ``axis`` (each must have size 1)."""
        if axis is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        axes = _normalize_axis(axis, self.ndim, "squeeze")
        for ax in axes:
            if self.shape[ax] != 1:
                raise ValueError(f"squeeze: axis {ax} of shape {self.shape} has size "
                                 f"{self.shape[ax]}, not 1")
        return self.reshape(tuple(n for i, n in enumerate(self.shape) if i not in axes))

    def expand_dims(self, axis):
        """New size-1 axes at positions ``axis`` (an int or a tuple) of the result (numpy)."""
        if axis is None or isinstance(axis, bool) or not isinstance(axis, (numbers.Integral, tuple, list)):
            raise TypeError(f"expand_dims: axis must be an int or a tuple of ints, got {axis!r}")
        ndim = self.ndim + (1 if isinstance(axis, numbers.Integral) else len(axis))
        axes = _normalize_axis(axis, ndim, "expand_dims")
        sides = iter(self.shape)
        return self.reshape(tuple(1 if i in axes else next(sides) for i in range(ndim)))

    def unsqueeze(self, dim):
        """PyTorch's name: one new size-1 axis at position ``dim`` of the result."""
        return self.expand_dims(_integer(dim, "unsqueeze", "dim"))

    def flatten(self, start_dim=0, end_dim=-1):
        """Merge axes start_dim..end_dim into one (PyTorch's signature); by default all of
        them, numpy's ``flatten()``."""
        if self.ndim == 0:
            return self.reshape(1)
        start, end = _one_axis(start_dim, self.ndim, "flatten"), _one_axis(end_dim, self.ndim, "flatten")
        if start > end:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                             f"in shape {self.shape}")
        shape = self.shape
        return self.reshape(shape[:start] + (int(np.prod(shape[start:end + 1])),) + shape[end + 1:])

    def ravel(self):
        """The values as a 1-D tensor."""
        return self.reshape(-1)

    def repeat(self, repeats, axis=None):
        """Each entry repeated along ``axis`` (numpy's ``repeat``: ``repeats`` an int or one
        count per entry; axis None repeats the flattened values). PyTorch's ``repeat`` is
        ``tile`` here."""
        if axis is None:
            return self.reshape(-1).repeat(repeats, 0)
        axis = _one_axis(axis, self.ndim, "repeat")
        n = self.shape[axis]
        counts = [_integer(c, "repeat", "repeats") for c in
                  ((repeats,) if isinstance(repeats, numbers.Integral) else _int_sequence(repeats, "repeat"))]
        if any(c < 0 for c in counts):
            raise ValueError(f"repeat: repeats must be >= 0, got {repeats}")
        if len(counts) not in (1, n):
            raise ValueError(f"repeat: {len(counts)} counts for the {n} entries of axis {axis} "
                             f"of shape {self.shape}")
        return record(ops.repeat, self, counts[0] if len(counts) == 1 else tuple(counts), axis)

    def tile(self, reps):
        """The tensor laid out ``reps`` times along each axis (numpy's ``tile``; PyTorch's
        ``Tensor.repeat``)."""
        reps = [_integer(r, "tile", "reps") for r in
                ((reps,) if isinstance(reps, numbers.Integral) else _int_sequence(reps, "tile"))]
        if any(r < 0 for r in reps):
            raise ValueError(f"tile: reps must be >= 0, got {tuple(reps)}")
        return record(ops.tile, self, (1,) * (self.ndim - len(reps)) + tuple(reps))

    def flip(self, axis=None):
        """Reverse the order of entries along ``axis`` (None: every axis)."""
        axes = _normalize_axis(axis, self.ndim, "flip")
        return record(ops.flip, self, tuple(range(self.ndim)) if axes is None else axes)

    def roll(self, shift, axis=None):
        """Shift entries cyclically along ``axis`` (numpy's ``roll``; axis None rolls the
        flattened values). ``shift`` and ``axis`` may be tuples of one length."""
        if axis is None:
            return self.reshape(-1).roll(shift, 0).reshape(self.shape)
        axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
        shifts = tuple(shift) if isinstance(shift, (tuple, list)) else (shift,) * len(axes)
        if len(shifts) != len(axes):
            raise ValueError(f"roll: {len(shifts)} shifts for {len(axes)} axes")
        shifts = tuple(_integer(s, "roll", "shift") for s in shifts)
        return record(ops.roll, self, shifts, tuple(_one_axis(a, self.ndim, "roll") for a in axes))

    def split(self, indices_or_sections, axis=0):
        """A list of pieces along ``axis`` (numpy's ``split``): an int n gives n equal
        pieces, a sequence of indices cuts before each. A composition: each piece is a slice."""
        axis = _one_axis(axis, self.ndim, "split")
        n = self.shape[axis]
        if isinstance(indices_or_sections, numbers.Integral) and not isinstance(indices_or_sections, bool):
            sections = int(indices_or_sections)
            if sections <= 0:
                raise ValueError(f"split: the number of sections must be positive, got {sections}")
            if n % sections:
                raise ValueError(f"split: axis {axis} of shape {self.shape} has {n} entries, which "
                                 f"do not split into {sections} equal sections")
            cuts = [n // sections * i for i in range(1, sections)]
        else:
            cuts = [_integer(c, "split", "indices") for c in _int_sequence(indices_or_sections, "split")]
        bounds = [0] + cuts + [n]
        prefix = (slice(None),) * axis
        return [self[prefix + (slice(start, stop),)] for start, stop in zip(bounds[:-1], bounds[1:])]

    def chunk(self, chunks, axis=0):
        """``chunks`` pieces of equal size along ``axis``, the last smaller if they do not
        divide evenly (and fewer pieces if the sizes require it), as PyTorch's ``chunk``."""
        chunks = _integer(chunks, "chunk", "chunks")
        if chunks <= 0:
            raise ValueError(f"chunk: chunks must be positive, got {chunks}")
        axis = _one_axis(axis, self.ndim, "chunk")
        n = self.shape[axis]
        size = -(-n // chunks)
        if size == 0:
            return [self[(slice(None),) * axis + (slice(0, 0),)] for _ in range(chunks)]
        return self.split(list(range(size, n, size)), axis)


def tensor(data, dtype=None, device="cpu", requires_grad=False):
    """Same as ``Tensor(...)``."""
    return Tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)


def _filled(shape, value, dtype, device, requires_grad):
    backend = _backend(device)
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


# ----------------------------------------------------------------------------------
# The op set users expect (issue 9): argument helpers and functions of several tensors
# (numpy_functions.py gives every Tensor method a module-level twin)
# ----------------------------------------------------------------------------------

__all__ += ["einsum", "tensordot", "outer", "arctan2", "logaddexp", "remainder", "mod", "pad",
            "norm"]


def _real(value, name, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: {what} must be a number, got {value!r}")
    return float(value)


def _integer(value, name, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: {what} must be an int, got {value!r}")
    return int(value)


def _int_sequence(values, name):
    if isinstance(values, Tensor):
        values = values.numpy()
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{name}: expected an int or a sequence of ints, got {type(values).__name__}")
    return list(values)


def _one_axis(axis, ndim, name):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name}: axis must be an int, got {axis!r}")
    return _normalize_axis(axis, ndim, name)[0]


def _tensor_argument(x, name):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    return x


def _two_tensors(a, b, name):
    """Two operands, at least one a Tensor, on one device with one dtype."""
    anchor = a if isinstance(a, Tensor) else b
    if not isinstance(anchor, Tensor):
        raise TypeError(f"{name}: a or b must be a Tensor")
    a, b = _pair(anchor, a, name)[1], _pair(anchor, b, name)[1]
    return _pair(a, b, name)


def _floating_pairwise(a, b, op):
    """``_pairwise`` for a floating op: two integer operands compute in float32."""
    a, b = _two_tensors(a, b, op.name)
    return _pairwise(_floating(a), _floating(b), op)


def arctan2(a, b):
    """The angle of the point (b, a), elementwise, in (-pi, pi] (numpy's ``arctan2``)."""
    return _floating_pairwise(a, b, ops.arctan2)


def logaddexp(a, b):
    """log(exp(a) + exp(b)) elementwise, computed stably."""
    return _floating_pairwise(a, b, ops.logaddexp)


def remainder(a, b):
    """``a % b`` with numpy's sign convention (the divisor's)."""
    return _pairwise(a, b, ops.mod)


mod = remainder


def _two_norm(x, axes, keepdims):
    # safe_sqrt: every derivative is 0 where the sum is 0, so the gradient at x = 0 is 0
    return record(ops.safe_sqrt, (x * x).sum(axis=axes, keepdims=keepdims))


def norm(x, ord=None, axis=None, keepdims=False):
    """Vector and matrix norms with numpy.linalg.norm's conventions, composed of Tensor ops.

    Vector norms (``axis`` an int, or None on a 1-D tensor): ord None or 2, the 2-norm;
    1, the sum of |x|; inf / -inf, the largest / smallest |x|. Matrix norms (``axis`` a
    pair, or None on a 2-D tensor): ord None or "fro", the Frobenius norm; 1 / -1, the
    largest / smallest column sum of |x|; inf / -inf, the same over rows. With ord None and
    axis None any tensor gives the 2-norm of all its entries. The gradient of the 2-norm
    at 0 is 0 (PyTorch's choice).

    >>> import tinygrad_meta as tgm
    >>> float(norm(tgm.Tensor([3.0, -4.0])).item()), float(norm(tgm.Tensor([3.0, -4.0]), ord=1).item())
    (5.0, 7.0)
    """
    x = _floating(_tensor_argument(x, "norm"))
    if axis is None:
        if ord is None:
            return _two_norm(x, None, keepdims)
        if x.ndim not in (1, 2):
            raise ValueError(f"norm: ord={ord!r} needs a 1-D or 2-D tensor or an axis, got shape {x.shape}")
        axes = tuple(range(x.ndim))
    else:
        axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
        axes = tuple(_one_axis(a, x.ndim, "norm") for a in axes)
    if len(axes) == 1:
        if ord is None or ord == 2:
            return _two_norm(x, axes, keepdims)
        if ord == 1:
            return x.abs().sum(axis=axes, keepdims=keepdims)
        if ord in (np.inf, -np.inf):
            return x.abs().max(axis=axes, keepdims=keepdims) if ord > 0 else \
                x.abs().min(axis=axes, keepdims=keepdims)
        raise ValueError(f"norm: vector ord must be None, 1, 2, inf or -inf, got {ord!r}")
    if len(axes) != 2 or axes[0] == axes[1]:
        raise ValueError(f"norm: axis must be an int or two different axes, got {axis!r}")
    if ord is None or ord == "fro":
        return _two_norm(x, axes, keepdims)
    if ord in (1, -1, np.inf, -np.inf):
        # ord 1: sum down each column (over the row axis), then the largest; inf: the transpose
        summed, across = axes if ord in (1, -1) else axes[::-1]
        sums = x.abs().sum(axis=summed, keepdims=True)
        peak = sums.max(axis=across, keepdims=True) if ord > 0 else sums.min(axis=across, keepdims=True)
        return peak if keepdims else peak.reshape([n for i, n in enumerate(peak.shape) if i not in axes])
    raise ValueError(f"norm: matrix ord must be None, 'fro', 1, -1, inf or -inf, got {ord!r} "
                     "(the singular-value norms 2, -2 and 'nuc' are not supported)")


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def einsum(subscripts, *operands):
    """Sums of products over the indices that ``subscripts`` names (numpy's ``einsum``,
    without ellipsis): ``einsum("ij,jk->ik", a, b)`` is ``a @ b``, ``einsum("ii->", a)``
    the trace. Without "->" the output is every index used once, alphabetically (numpy's
    implicit mode). Differentiable in every operand, to any order.

    >>> import tinygrad_meta as tgm
    >>> einsum("ij,j->i", tgm.Tensor([[1.0, 2.0], [3.0, 4.0]]), tgm.Tensor([1.0, 1.0])).tolist()
    [3.0, 7.0]
    """
    if not isinstance(subscripts, str):
        raise TypeError(f"einsum: subscripts must be a string like 'ij,jk->ik', got "
                        f"{type(subscripts).__name__}")
    tensors = _as_tensors(list(operands), "einsum")
    shapes = [t.shape for t in tensors]
    spec = subscripts.replace(" ", "")
    if "." in spec:
        raise ValueError(f"einsum: ellipsis in {subscripts!r} is not supported; name every axis")
    lhs, arrow, output = spec.partition("->")
    inputs = lhs.split(",")
    letters = "".join(inputs)
    if not arrow:
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(inputs) != len(tensors):
        raise ValueError(f"einsum: {subscripts!r} names {len(inputs)} operands but "
                         f"{len(tensors)} were given (shapes {shapes})")
    for c in letters + output:
        if c not in _LETTERS:
            raise ValueError(f"einsum: {subscripts!r} contains {c!r}; indices are letters a-z, A-Z")
    sizes = {}
    for k, (sub, shape) in enumerate(zip(inputs, shapes)):
        if len(sub) != len(shape):
            raise ValueError(f"einsum: operand {k} has shape {shape} but {sub!r} names "
                             f"{len(sub)} axes (subscripts {subscripts!r})")
        for c, n in zip(sub, shape):
            size, first, first_shape = sizes.setdefault(c, (n, k, shape))
            if size != n:
                raise ValueError(f"einsum: index {c!r} has size {size} in operand {first} "
                                 f"(shape {first_shape}) but {n} in operand {k} (shape {shape})")
    for c in output:
        if output.count(c) > 1 or c not in sizes:
            problem = "repeats" if c in sizes else "is in no operand:"
            raise ValueError(f"einsum: output index {c!r} {problem} {subscripts!r} "
                             f"(operand shapes {shapes})")
    return record(ops.einsum, tensors, tuple(inputs), output)


def tensordot(a, b, axes=2):
    """Sums of products over the last ``axes`` axes of ``a`` and the first of ``b``, or over
    the axes paired by ``axes=(axes_a, axes_b)`` (numpy's ``tensordot``). A composition:
    one einsum with generated subscripts."""
    a, b = _two_tensors(a, b, "tensordot")
    if isinstance(axes, numbers.Integral) and not isinstance(axes, bool):
        if not 0 <= axes <= min(a.ndim, b.ndim):
            raise ValueError(f"tensordot: cannot contract {axes} axes of shapes {a.shape} and {b.shape}")
        axes_a, axes_b = list(range(a.ndim - axes, a.ndim)), list(range(axes))
    else:
        try:
            axes_a, axes_b = axes
        except (TypeError, ValueError):
            raise TypeError(f"tensordot: axes must be an int or a pair (axes_a, axes_b), got {axes!r}") from None
        axes_a = [_one_axis(i, a.ndim, "tensordot") for i in
                  ((axes_a,) if isinstance(axes_a, numbers.Integral) else axes_a)]
        axes_b = [_one_axis(j, b.ndim, "tensordot") for j in
                  ((axes_b,) if isinstance(axes_b, numbers.Integral) else axes_b)]
    if len(axes_a) != len(axes_b) or len(set(axes_a)) != len(axes_a) or \
            len(set(axes_b)) != len(axes_b) or \
            any(a.shape[i] != b.shape[j] for i, j in zip(axes_a, axes_b)):
        raise ValueError(f"tensordot: axes {tuple(axes_a)} of shape {a.shape} and "
                         f"{tuple(axes_b)} of shape {b.shape} do not pair up")
    sub_a = _LETTERS[:a.ndim]
    fresh = iter(_LETTERS[a.ndim:])
    sub_b = "".join(sub_a[axes_a[axes_b.index(j)]] if j in axes_b else next(fresh)
                    for j in range(b.ndim))
    output = "".join(c for i, c in enumerate(sub_a) if i not in axes_a) + \
        "".join(c for j, c in enumerate(sub_b) if j not in axes_b)
    return einsum(f"{sub_a},{sub_b}->{output}", a, b)


def outer(a, b):
    """The outer product of the flattened ``a`` and ``b`` (numpy's ``outer``), shape
    (a.size, b.size). A composition: one broadcast multiply."""
    a, b = _two_tensors(a, b, "outer")
    return a.reshape(-1, 1) * b.reshape(1, -1)


def pad(x, pad_width, mode="constant", constant_values=0):
    """``x`` with ``constant_values`` around it (numpy's ``pad``, constant mode only):
    ``pad_width`` is an int (every side), a (before, after) pair (every axis) or one pair
    per axis. The gradient is the slice of g that holds x."""
    x = _tensor_argument(x, "pad")
    if mode != "constant":
        raise ValueError(f"pad: only mode='constant' is supported, got {mode!r}")
    if x.ndim == 0:
        raise ValueError("pad: a 0-d tensor has no axes to pad")
    try:
        widths = np.asarray(pad_width)
    except (TypeError, ValueError):
        widths = np.asarray(None)
    if widths.dtype.kind not in "iu":
        raise TypeError(f"pad: pad_width must be integers, got {pad_width!r}")
    try:
        widths = np.broadcast_to(widths, (x.ndim, 2))
    except ValueError:
        raise ValueError(f"pad: pad_width {pad_width!r} does not fit shape {x.shape} (give an "
                         "int, a (before, after) pair, or one pair per axis)") from None
    if (widths < 0).any():
        raise ValueError(f"pad: pad widths must be >= 0, got {pad_width!r}")
    value = _real(constant_values, "pad", "constant_values")
    return record(ops.pad, x, tuple((int(b), int(e)) for b, e in widths.tolist()), value)
