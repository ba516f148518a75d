"""tgm.vmap: a function of one example, run on a whole batch, like ``jax.vmap``.

``vmap(f)(xs)`` equals ``stack([f(x) for x in xs])`` for any ``f`` built from our ops,
computed in one pass: inside, ``f`` sees ``BatchedTensor``s, whose ``shape`` is one
example's but whose ``_data`` holds the whole batch, batch axis first. Every op on one
runs the op's batching rule (ops.py, end of file) on the batched arrays and records a
graph node with the op's PER-EXAMPLE params, so that node's backward rule, run on
BatchedTensors, is the per-example derivative: ``tgm.grad`` inside ``f`` gives
per-example gradients (also of an unbatched parameter ``f`` closes over: MAML's inner
step), to any order, and ``tgm.grad`` of a vmapped function's output from outside sums
over the batch as usual (entering and leaving the vmap are graph nodes too).

Nested vmaps each get a level (a number, inner levels larger); a BatchedTensor's
``_levels`` name its leading batch axes, in order. A gradient that carries the batch of
a vmap that has already returned is summed over it where it meets a tensor without that
batch; the batch of a vmap still running stays (a per-example gradient).
"""
from __future__ import annotations

import contextvars
import functools
import itertools
import math
import numbers
import operator

import numpy as np

from . import autograd, ops
from .autograd import no_grad
from .tensor import (DEFAULT_DTYPE, Tensor, _as_operand, _backend, _constant, _GraphOps, _make,
                     _matmul_shape_error, _normalize_axis, _pair, _resolve_dtype, _shape_error,
                     record)

__all__ = ["vmap", "BatchedTensor"]

# the levels of the vmaps running now (per thread, like grad mode), innermost last
_ACTIVE = contextvars.ContextVar("tinygrad_meta.vmap_levels", default=())
_next_level = itertools.count(1).__next__


def _levels_of(x):
    return x._levels if type(x) is BatchedTensor else ()


def _batched(data, be, levels, parents=(), op=None, params=()):
    """A BatchedTensor over ``levels`` (a Tensor when none are left), a node of ``op``
    when some parent needs a gradient, else a constant."""
    if not levels:
        return _make(data, be, parents, op, params)
    out = _make(data, be, parents, op, params, BatchedTensor)
    out._levels = levels
    return out


def _level_sizes(carriers):
    sizes = {}
    for x in carriers:
        for level, n in zip(x._levels, x._data.shape):
            sizes[level] = n
    return sizes


def _layout(x, levels, sizes):
    """``x``'s data with the batch axes of all ``levels`` first (the ones it lacks
    broadcast), flattened into one axis."""
    data, own = x._data, _levels_of(x)
    example = data.shape[len(own):]
    if own != levels:
        present = dict(zip(own, data.shape))
        data = data.reshape(tuple(present.get(level, 1) for level in levels) + example)
        data = x._be.xp.broadcast_to(data, tuple(sizes[level] for level in levels) + example)
    return data.reshape((math.prod(sizes[level] for level in levels),) + example)


def _record_batched(op, inputs, params):
    """``record`` for a call with a BatchedTensor among the inputs or params: the op's
    batching rule on the batched data, one node with the per-example params."""
    carriers = [x for x in (*inputs, *params) if type(x) is BatchedTensor]
    levels = carriers[0]._levels
    simple = len(levels) == 1 and all(c._levels is levels or c._levels == levels for c in carriers)
    if not simple:
        levels = tuple(sorted(set().union(*(c._levels for c in carriers))))
        sizes = _level_sizes(carriers)
    anchor = next((x for x in inputs if isinstance(x, Tensor)), carriers[0])
    be = anchor._be
    inputs = tuple(x if isinstance(x, Tensor) else
                   _constant(be.asarray(x, dtype=anchor._data.dtype), be) for x in inputs)
    batched = [type(x) is BatchedTensor for x in inputs]
    if simple:
        datas = [x._data for x in inputs]
        rule_params = tuple(ops.BatchedParam(p._data) if type(p) is BatchedTensor else p
                            for p in params)
    else:
        datas = [_layout(x, levels, sizes) if b else x._data for x, b in zip(inputs, batched)]
        rule_params = tuple(ops.BatchedParam(_layout(p, levels, sizes))
                            if type(p) is BatchedTensor else p for p in params)
    data = (op.batch or ops.batch_by_loop)(op, datas, batched, rule_params)
    if not simple:
        data = data.reshape(tuple(sizes[level] for level in levels) + data.shape[1:])
    return _batched(data, be, levels, inputs, op, params)


def _map_raw(function, args):
    """An elementwise numpy function of constants, some batched: the masks backward rules
    compute from ``o.raw(x)`` (comparisons, ``xp.sign``, ``&``) stay batched."""
    carriers = [a for a in args if type(a) is BatchedTensor]
    levels = tuple(sorted(set().union(*(c._levels for c in carriers))))
    rank = max(a.ndim if isinstance(a, Tensor) else np.ndim(a) for a in args)
    raws = []
    for a in args:
        if type(a) is BatchedTensor:
            present = dict(zip(a._levels, a._data.shape))
            example = a.shape
            raws.append(a._data.reshape(tuple(present.get(level, 1) for level in levels) +
                                        (1,) * (rank - len(example)) + example))
        else:
            raws.append(a._data if isinstance(a, Tensor) else a)
    return _batched(function(*raws), carriers[0]._be, levels)


def _concrete_error(what, x):
    return RuntimeError(
        f"vmap: {what} needs the values of one tensor, but inside vmap this one is batched "
        f"(example shape {x.shape}); value-dependent Python control flow cannot be vmapped "
        "(use tgm.where, or move it out of the vmapped function)")


def _resolve_shape(shape, size, old):
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        shape = None
    if shape is not None and shape.count(-1) <= 1 and all(n >= -1 for n in shape):
        known = math.prod(n for n in shape if n != -1)
        if -1 in shape and known and size % known == 0:
            shape = tuple(size // known if n == -1 else n for n in shape)
        if math.prod(shape) == size and -1 not in shape:
            return shape
    raise ValueError(f"reshape: cannot reshape {old} ({size} elements) into {shape}")


def _operands(a, b, name):
    """``tensor._pair``, with a batched integer operand cast as a batched tensor."""
    if not isinstance(b, Tensor):
        if hasattr(b, "_graph_ops"):
            raise TypeError(f"{name}: cannot combine a Tensor with {type(b).__name__}")
        b = _as_operand(b, a, name)
    if a._data.dtype.kind != "f" and b._data.dtype.kind == "f":
        a = a.astype(b._data.dtype)
    elif b._data.dtype.kind != "f" and a._data.dtype.kind == "f":
        b = b.astype(a._data.dtype)
    return _pair(a, b, name)


def _apply2(a, b, op):
    try:
        return record(op, a, b)
    except ValueError:
        raise _shape_error(op.name, a.shape, b.shape) from None


def _matmul(a, b):
    if a.ndim >= 2 and b.ndim >= 2:
        try:
            return record(ops.matmul, a, b, False, False, a._be)
        except ValueError:
            raise _matmul_shape_error(a.shape, b.shape) from None
    return Tensor.__matmul__(a, b)  # 1-D operands: numpy's rules, via reshapes and the 2-D product


def _number(x):
    return type(x) is float or type(x) is int


class BatchedTensor(Tensor):
    """A Tensor inside ``vmap``: ``shape``, ``ndim`` and ``size`` are one example's; the
    data holds the whole batch (the batch axes of ``_levels`` first). Made by ``vmap``,
    never by hand. Every op goes through ``record`` and so through the op's batching
    rule; what needs concrete values (``item()``, ``numpy()``, ``bool()``) is an error."""

    __slots__ = ("_levels",)
    __hash__ = Tensor.__hash__
    _record_batched = staticmethod(_record_batched)

    @property
    def shape(self):
        return self._data.shape[len(self._levels):]

    @property
    def ndim(self):
        return self._data.ndim - len(self._levels)

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def data(self):
        raise _concrete_error(".data", self)

    @data.setter
    def data(self, value):
        raise RuntimeError("vmap: cannot assign .data of a batched tensor inside vmap")

    def numpy(self):
        raise _concrete_error(".numpy()", self)

    def __array__(self, dtype=None, copy=None):
        raise _concrete_error("np.asarray()", self)

    def item(self):
        raise _concrete_error(".item()", self)

    def tolist(self):
        raise _concrete_error(".tolist()", self)

    def __float__(self):
        raise _concrete_error("float()", self)

    def __int__(self):
        raise _concrete_error("int()", self)

    def __bool__(self):
        raise _concrete_error("bool()", self)

    def __repr__(self):
        batch = self._data.shape[:len(self._levels)]
        return (f"BatchedTensor(example shape {self.shape}, batch {batch} at vmap level(s) "
                f"{self._levels}, dtype={self.dtype})")

    def detach(self):
        return _batched(self._data, self._be, self._levels)

    def astype(self, dtype, copy=True):
        dtype = _resolve_dtype(dtype)
        if dtype == self._data.dtype:
            return self
        if dtype.kind != "f":
            return _batched(self._data.astype(dtype), self._be, self._levels)
        return record(ops.astype, self, dtype)

    def _float(self):
        return self if self._data.dtype.kind == "f" else self.astype(DEFAULT_DTYPE)

    def to(self, device):
        if _backend(device) is self._be:
            return self
        raise NotImplementedError("vmap: op 'to' cannot be batched; move the inputs to "
                                  f"{device!r} before calling the vmapped function")

    # ---- arithmetic: every reflected method is BatchedTensor's own, so Python calls it
    # before Tensor's forward method when the left operand is a plain Tensor
    def _binary(self, other, op):
        return _apply2(*_operands(self, other, op.name), op)

    def _scalar(self, other, op):
        return record(op, self if type(other) is int else self._float(), other)

    def __add__(self, other):
        if _number(other):
            return self._scalar(other, ops.add_scalar)
        return self._binary(other, ops.add)

    def __radd__(self, other):
        return self.__add__(other)

    def __rsub__(self, other):
        if _number(other):
            return self._scalar(other, ops.rsub_scalar)
        a, b = _operands(self, other, "sub")
        return _apply2(b, a, ops.sub)

    def __mul__(self, other):
        if _number(other):
            return self._scalar(other, ops.mul_scalar)
        return self._binary(other, ops.mul)

    def __rmul__(self, other):
        return self.__mul__(other)

    def __truediv__(self, other):
        x = self._float()
        if _number(other):
            return x._scalar(1.0 / other, ops.mul_scalar)
        if isinstance(other, Tensor) and other._data.dtype.kind != "f":
            other = other.astype(x._data.dtype)
        return _apply2(*_operands(x, other, "div"), ops.div)

    def __rtruediv__(self, other):
        x = self._float()
        if _number(other):
            return x._scalar(float(other), ops.rdiv_scalar)
        a, b = _operands(x, other, "div")
        return _apply2(b, a, ops.div)

    def __rpow__(self, base):
        if _number(base):
            if base < 0 and self._requires_grad:
                raise ValueError(f"pow: a number base must be >= 0 to differentiate, got {base}")
            return self._float()._scalar(float(base), ops.rpow_scalar)
        a, b = _operands(self, base, "pow")
        return _apply2(b, a, ops.pow_)

    def __neg__(self):
        return record(ops.neg, self)

    def __matmul__(self, other):
        return _matmul(*_operands(self, other, "matmul"))

    def __rmatmul__(self, other):
        a, b = _operands(self, other, "matmul")
        return _matmul(b, a)

    matmul = __matmul__

    # comparisons and boolean masks: batched constants
    def _compare(self, other, op, name):
        if other is None or isinstance(other, str):
            raise TypeError(f"{name}: cannot compare a Tensor with {type(other).__name__}")
        return _map_raw(op, (self, other))

    # <, <=, >, >=, ==, != are Tensor's, which call the _compare above

    def __and__(self, other):
        return _map_raw(operator.and_, (self, other))

    def __rand__(self, other):
        return _map_raw(operator.and_, (other, self))

    def __or__(self, other):
        return _map_raw(operator.or_, (self, other))

    def __ror__(self, other):
        return _map_raw(operator.or_, (other, self))

    def __xor__(self, other):
        return _map_raw(operator.xor, (self, other))

    def __invert__(self):
        return _map_raw(operator.invert, (self,))

    # ---- reductions, shape, elementwise: the Tensor methods that compute on _data
    def sum(self, axis=None, keepdims=False):
        return record(ops.sum_, self, _normalize_axis(axis, self.ndim, "sum"), bool(keepdims))

    def mean(self, axis=None, keepdims=False):
        return Tensor.mean(self._float(), axis, keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return record(ops.reshape, self, _resolve_shape(shape, self.size, self.shape))

    def permute(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        ndim = self.ndim
        if len(axes) != ndim or any(isinstance(a, bool) or not isinstance(a, numbers.Integral)
                                    or not -ndim <= a < ndim for a in axes) or \
                sorted(a % ndim for a in axes) != list(range(ndim)):
            raise ValueError(f"permute: {axes} is not a permutation of the {ndim} axes of {self.shape}")
        return record(ops.permute, self, tuple(int(a) % ndim for a in axes))

    def broadcast_to(self, shape):
        shape = tuple(shape)
        if shape == self.shape:
            return self
        try:
            fits = np.broadcast_shapes(self.shape, shape) == shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"broadcast_to: cannot broadcast shape {self.shape} to {shape}")
        return record(ops.broadcast_to, self, shape)

    expand = broadcast_to

    def __getitem__(self, index):
        items = index if isinstance(index, tuple) else (index,)
        if any(type(i) is BatchedTensor for i in items):
            raise NotImplementedError(
                "vmap: op 'getitem' with a batched index (different indices per example) "
                "cannot be batched; index with an unbatched index, or use tgm.where")
        if isinstance(index, Tensor):
            index = index._data
        elif isinstance(index, tuple):
            index = tuple(i._data if isinstance(i, Tensor) else i for i in index)
        elif isinstance(index, list):
            index = self._be.asarray(index)
        try:
            return record(ops.getitem, self, index)
        except IndexError as error:
            raise IndexError(f"getitem: {error} (example shape {self.shape}; the batch is "
                             "axis 0 there)") from None

    def _unary(self, op):
        return record(op, self._float())

    def abs(self):
        return record(ops.abs_, self)

    __abs__ = abs


# ----------------------------------------------------------------------------------
# Entering and leaving a vmap: graph nodes, each the other's derivative
# ----------------------------------------------------------------------------------

def _moveaxis(x, source, destination):
    # numpy's moveaxis costs microseconds even when it has nothing to do
    return x._data if source == destination else x._be.xp.moveaxis(x._data, source, destination)


def _move_in(x, level, axis, size):
    """``x`` with its (per-example) ``axis`` made the batch axis of ``level``."""
    levels = _levels_of(x)
    position = sum(lv < level for lv in levels)
    data = _moveaxis(x, len(levels) + axis, position)
    return _batched(data, x._be, levels[:position] + (level,) + levels[position:], (x,),
                    _MOVE_IN, (level, axis, size))


def _move_out(x, level, axis, size):
    """``x`` (batched at ``level``) with that batch axis made its ``axis``."""
    levels = _levels_of(x)
    position = levels.index(level)
    rest = levels[:position] + levels[position + 1:]
    data = _moveaxis(x, position, len(rest) + axis)
    return _batched(data, x._be, rest, (x,), _MOVE_OUT, (level, axis, size))


def _with_level(x, level, size):
    """``x`` batched at ``level``: the same value for every example if it was not."""
    if level in _levels_of(x):
        return x
    return _move_in(x.reshape((1,) + x.shape).broadcast_to((size,) + x.shape), level, 0, size)


_MOVE_IN, _MOVE_OUT = ops.vmap_in, ops.vmap_out


def _sum_level(x, level):
    size = x._data.shape[x._levels.index(level)]
    return _move_out(x, level, 0, size).sum(axis=0)


# ----------------------------------------------------------------------------------
# Backward through batched nodes (called by autograd._run_backward)
# ----------------------------------------------------------------------------------

class _BatchedXP:
    """The array module a backward rule gets from ``o.backend(x).xp`` for a batched x:
    elementwise functions (ufuncs, where) of batched constants stay batched."""

    def __init__(self, xp):
        self._xp = xp

    def __getattr__(self, name):
        function = getattr(self._xp, name)
        if not callable(function):
            return function
        elementwise = type(function).__name__ == "ufunc" or name == "where"

        def call(*args, **kwargs):
            if not any(type(a) is BatchedTensor for a in args):
                return function(*args, **kwargs)
            if not elementwise or kwargs:
                raise NotImplementedError(f"vmap: {name} of a batched value inside a backward "
                                          "rule has no batching rule")
            return _map_raw(function, args)
        return call


class _BatchedBackend:
    def __init__(self, backend):
        self._backend = backend
        self.xp = _BatchedXP(backend.xp)

    def __getattr__(self, name):
        return getattr(self._backend, name)


class _BatchedOps(_GraphOps):
    """The namespace backward rules see at a batched node: ``_GraphOps`` (so every op
    records, through its batching rule), with ``raw`` of a batched tensor a batched
    constant, not an array whose first axis would pass for an example's."""

    @staticmethod
    def raw(x):
        if type(x) is BatchedTensor:
            return x.detach()
        return x._data if isinstance(x, Tensor) else x

    @staticmethod
    def backend(x):
        return _BatchedBackend(x._be) if type(x) is BatchedTensor else x._be

    @property
    def first_order(self):
        # backward without create_graph runs the rules under no_grad: nothing records
        return not autograd.is_grad_enabled()

    @staticmethod
    def per_example(kernel, *args):
        """A first-order rule's raw-array ``kernel`` on every example at once, where a
        whole-batch call would take the batch axis for the kernel's own (batch norm's
        statistics): ``kernel(*arrays, lead=1)``, every tensor's array carrying the
        batch axis first (the unbatched ones broadcast), other values as they are; its
        results (an array, or a tuple of arrays and Nones) as batched constants."""
        carriers = [a for a in args if type(a) is BatchedTensor]
        levels = tuple(sorted(set().union(*(c._levels for c in carriers))))
        sizes = _level_sizes(carriers)
        be, lead = carriers[0]._be, tuple(sizes[level] for level in levels)
        count = math.prod(lead)
        arrays = [_layout(a, levels, sizes) if type(a) is BatchedTensor else
                  be.xp.broadcast_to(a._data, (count,) + a._data.shape) if isinstance(a, Tensor)
                  else a for a in args]

        def wrap(data):
            return None if data is None else _batched(data.reshape(lead + data.shape[1:]), be, levels)
        result = kernel(*arrays, lead=1)
        return tuple(map(wrap, result)) if isinstance(result, tuple) else wrap(result)

    @staticmethod
    def vmap_in(g, level, axis, size):
        return _move_in(g, level, axis, size)

    @staticmethod
    def vmap_out(g, level, axis, size):
        if level in _ACTIVE.get():
            raise NotImplementedError(
                "vmap: a gradient with respect to a tensor from before it entered the vmap, "
                "taken inside that vmap, is not supported; differentiate with respect to the "
                "example")
        return _move_out(_with_level(g, level, size), level, axis, size)

    @staticmethod
    def where(a, b, condition):
        if type(condition) is BatchedTensor:
            return _record_batched(ops.where, (a, b), (condition,))
        return record(ops.where, a, b, condition)


_BATCHED_OPS = _BatchedOps()


def _settle(contribution, parent, active):
    """Sum a gradient over the batches of vmaps that have returned, where it meets a
    tensor without that batch (the adjoint of using one tensor for every example)."""
    keep = _levels_of(parent)
    for level in contribution._levels:
        if level not in keep and level not in active:
            contribution = _sum_level(contribution, level)
            if type(contribution) is not BatchedTensor:
                break
    return contribution


def _add(a, b, be):
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        return a + b
    a = a if isinstance(a, Tensor) else _constant(a, be)
    return a + b


class _Hooks:
    node_type = BatchedTensor

    @staticmethod
    def vjp(node, g, needs, create_graph):
        """The node's rule on nodes, in the batched namespace; recorded only with
        ``create_graph`` (else the results carry no graph)."""
        if not isinstance(g, Tensor):
            g = _constant(g, node._be)
        op = node._op
        if create_graph:
            autograd._ORIGIN.set(node)
            return op.vjp(_BATCHED_OPS, g, node, node._parents, node._params, needs)
        with no_grad():
            return op.vjp(_BATCHED_OPS, g, node, node._parents, node._params, needs)

    @staticmethod
    def accumulate(grads, parents, contributions, needed, create_graph):
        active = _ACTIVE.get()
        with autograd._SetGradMode(create_graph):
            for parent, contribution in zip(parents, contributions):
                if contribution is None:
                    continue
                key = id(parent)
                if needed is not None and key not in needed:
                    continue
                if type(contribution) is BatchedTensor:
                    contribution = _settle(contribution, parent, active)
                if key in grads:
                    contribution = _add(grads[key], contribution, parent._be)
                if not create_graph and type(contribution) is Tensor:
                    contribution = contribution._data  # back to the raw first-order path
                grads[key] = contribution


# ----------------------------------------------------------------------------------
# vmap
# ----------------------------------------------------------------------------------

def _is_axis(axes):
    return axes is None or isinstance(axes, numbers.Integral) and not isinstance(axes, bool)


def _map_leaves(function, tree, path):
    if isinstance(tree, dict):
        return type(tree)((k, _map_leaves(function, v, f"{path}[{k!r}]")) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_leaves(function, v, f"{path}[{i}]") for i, v in enumerate(tree))
    return function(tree, path)


def _map_tree(function, tree, axes, path, what):
    """``function(leaf, axis, path)`` over the leaves of ``tree``; ``axes`` is a prefix of
    it (an int or None applies to everything below)."""
    if _is_axis(axes):
        return _map_leaves(lambda leaf, where: function(leaf, axes, where), tree, path)
    if isinstance(axes, dict):
        if not isinstance(tree, dict) or set(tree) != set(axes):
            found = sorted(map(str, tree)) if isinstance(tree, dict) else type(tree).__name__
            raise ValueError(f"vmap: {what} for {path} has keys {sorted(map(str, axes))}, "
                             f"but {path} is {found}")
        return type(tree)((k, _map_tree(function, v, axes[k], f"{path}[{k!r}]", what))
                          for k, v in tree.items())
    if isinstance(axes, (list, tuple)):
        if not isinstance(tree, (list, tuple)) or len(tree) != len(axes):
            found = f"of length {len(tree)}" if isinstance(tree, (list, tuple)) else \
                f"a {type(tree).__name__}"
            raise ValueError(f"vmap: {what} for {path} has {len(axes)} entries, but {path} is {found}")
        return type(tree)(_map_tree(function, v, a, f"{path}[{i}]", what)
                          for i, (v, a) in enumerate(zip(tree, axes)))
    raise TypeError(f"vmap: {what} must be an int, None, or a tuple/list/dict of them, got {axes!r}")


def vmap(f, in_axes=0, out_axes=0):
    """``f`` of one example turned into ``f`` of a batch, like ``jax.vmap``.

    ``in_axes``: the batch axis of every argument (an int), None (not batched: the same
    for every example), or a tuple with one entry per positional argument, each an int,
    None, or a list/tuple/dict matching that argument's structure. ``out_axes``: where the
    batch axis goes in each output, likewise (None: an output that is the same for every
    example). Arguments and outputs are Tensors or lists/tuples/dicts of them. ``f`` may
    close over unbatched tensors and call ``tgm.grad`` (per-example gradients, to any
    order) or ``vmap`` again. Returns the batched function.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> w = tgm.Tensor([1.0, 2.0])
    >>> tgm.vmap(lambda x: (x * w).sum())(tgm.Tensor(np.ones((3, 2)))).numpy().tolist()
    [3.0, 3.0, 3.0]
    """
    if not callable(f):
        raise TypeError(f"vmap: f must be callable, got {type(f).__name__}")
    name = getattr(f, "__name__", "f")

    @functools.wraps(f)
    def vmapped(*args):
        if isinstance(in_axes, (tuple, list)):
            if len(in_axes) != len(args):
                raise ValueError(f"vmap: in_axes has {len(in_axes)} entries but {name} got "
                                 f"{len(args)} arguments")
            axes = list(in_axes)
        else:
            axes = [in_axes] * len(args)
        found = []

        def check(leaf, axis, path):
            if axis is not None:
                if not isinstance(leaf, Tensor):
                    raise TypeError(f"vmap: {path} is a {type(leaf).__name__}; only Tensors can "
                                    "be batched (give it in_axes None)")
                if not -leaf.ndim <= axis < leaf.ndim:
                    raise ValueError(f"vmap: in_axes {axis} is out of range for {path} of "
                                     f"shape {leaf.shape}")
                found.append((path, axis % leaf.ndim, leaf.shape[axis]))
            return leaf
        _map_tree(check, list(args), axes, "args", "in_axes")
        if not found:
            raise ValueError(f"vmap: in_axes {in_axes!r} batch none of {name}'s arguments")
        if len({n for _, _, n in found}) > 1:
            raise ValueError("vmap: batch sizes differ: " + ", ".join(
                f"{path} has {n} on axis {axis}" for path, axis, n in found))
        size = found[0][2]
        autograd.register_batching(_Hooks)
        level = _next_level()
        inputs = _map_tree(lambda leaf, axis, path: leaf if axis is None else
                           _move_in(leaf, level, axis % leaf.ndim, size),
                           list(args), axes, "args", "in_axes")
        token = _ACTIVE.set(_ACTIVE.get() + (level,))
        try:
            out = f(*inputs)
        finally:
            _ACTIVE.reset(token)

        def leave(leaf, axis, path):
            if not isinstance(leaf, Tensor):
                raise TypeError(f"vmap: {name} returned a {type(leaf).__name__} at {path}; "
                                "outputs must be Tensors (or lists/tuples/dicts of them)")
            if axis is None:
                if level in _levels_of(leaf):
                    raise ValueError(f"vmap: out_axes is None for {path}, but it differs "
                                     "between examples")
                return leaf
            if not -leaf.ndim - 1 <= axis <= leaf.ndim:
                raise ValueError(f"vmap: out_axes {axis} is out of range for {path} of "
                                 f"example shape {leaf.shape}")
            return _move_out(_with_level(leaf, level, size), level, axis % (leaf.ndim + 1), size)
        return _map_tree(leave, out, out_axes, "output", "out_axes")
    return vmapped
