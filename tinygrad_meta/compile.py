"""``tgm.compile``: trace a step once, replay it as flat array calls.

How it works (see :func:`compile` for the user-facing contract):

* **Trace.** The first call with a new signature runs ``fn`` eagerly, but every array a
  Tensor holds is a :class:`_Traced` array: a real numpy value plus a slot number. Every
  numpy call on one (ufuncs through ``__array_ufunc__``, functions such as ``np.sum``
  through ``__array_function__``, methods, operators, indexing) and every call of a
  backend kernel (our Cython matmul and ReLU) computes the real result and appends
  ``(function, argument template, result slots)`` to a tape. This captures everything the
  op table's forwards, the raw first-order backward rules (which are numpy code on raw
  arrays), the graph walk's gradient sums and any user array code do, whatever path they
  take, because the tape is written at the array level, below the Tensor layer.
* **State.** Tensors that exist before the call (a model's parameters, Meta-SGD's rates)
  are found when their ``_data`` is first read: during a trace, ``Tensor._data`` and
  ``Tensor.grad`` are properties wrapping the slots, and the first read of a Tensor's
  plain array becomes a *load* instruction (read ``tensor._data`` again at replay, with a
  shape/dtype/strides guard), so an optimizer that rebinds ``p.data`` between calls is
  seen. Assignments to ``.data``/``.grad`` of such tensors (``backward()``) are replayed.
* **Replay.** The tape is turned into the source of one Python function (one line per
  array call, slots as local variables) and ``exec``-ed once: a later call with the same
  signature runs only those array calls: no Tensor nodes, no toposort, no rule dispatch.

Values are never read during a trace: ``float()``, ``int()``, ``.item()``, ``.tolist()``,
``.numpy()`` and ``np.asarray`` of a traced array raise :class:`TraceError` naming the
cause, since a value read in Python could steer control flow that a replay would not
follow. ``bool()`` is the exception: it becomes a value guard that the replay re-checks.
"""
from __future__ import annotations

import collections
import contextvars
import functools
import numbers
import operator
import threading

import numpy as np

from . import ops
from .autograd import is_grad_enabled, note_change
from .backends import cpu as _cpu
from .tensor import Tensor, _constant

__all__ = ["compile", "TraceError", "CompiledFunction"]


class TraceError(RuntimeError):
    """A compiled function did something a replay could not reproduce faithfully."""


# ----------------------------------------------------------------------------------
# The traced array
# ----------------------------------------------------------------------------------

# Attributes that depend only on shape, dtype and layout: the same at every replay of a
# signature, so a trace may read them.
_STATIC_ATTRIBUTES = frozenset({"shape", "dtype", "ndim", "size", "strides", "itemsize",
                                "nbytes", "flags"})
# numpy functions whose result depends only on shapes and dtypes, never on values.
_STATIC_FUNCTIONS = {np.shape, np.ndim, np.size, np.result_type, np.iscomplexobj,
                     np.isrealobj}


def _value_error(what):
    return TraceError(
        f"tgm.compile: {what} of a traced array inside a compiled function: its value would "
        "be fixed into the program (Python control flow or a number computed from it would "
        "not follow later inputs). Return the tensor from the function and read it outside, "
        "or run the function without tgm.compile")


class _Traced:
    """A numpy array (or numpy scalar) being traced: ``value`` plus its tape slot."""

    __slots__ = ("value", "slot", "trace")
    __array_priority__ = 1000

    def __init__(self, value, slot, trace):
        self.value = value
        self.slot = slot
        self.trace = trace

    # numpy's protocols: every ufunc and array function on a traced array lands here
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        function = ufunc if method == "__call__" else getattr(ufunc, method)
        if method == "at":  # np.add.at(target, index, values) writes into its first input
            return _live(self).call(function, inputs, kwargs, writes=inputs[0])
        return _live(self).call(function, inputs, kwargs)

    def __array_function__(self, function, types, args, kwargs):
        trace = _live(self)
        if function in _STATIC_FUNCTIONS:
            return function(*_unwrap(args), **_unwrap(kwargs))
        return trace.call(function, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):  # numpy's and Python's protocol probes: not an array
            raise AttributeError(name)
        if name in _STATIC_ATTRIBUTES:
            return getattr(self.value, name)
        attribute = getattr(type(self.value), name, None)
        if attribute is None:  # not an array attribute at all: hasattr() must say False
            raise AttributeError(f"{type(self.value).__name__} has no attribute {name!r}")
        if callable(attribute) and not name.startswith("_"):
            if name == "item":  # Tensor's float(), int(), bool() and `if` read through it
                raise _value_error(".item() (which a Tensor's float(), int(), bool() and `if` "
                                   "call)")
            if name in ("tolist", "tobytes", "tofile", "dump", "dumps"):
                raise _value_error(f".{name}()")
            trace = _live(self)
            return lambda *args, **kwargs: trace.call(attribute, (self,) + args, kwargs)
        raise TraceError(f"tgm.compile: the attribute .{name} of a traced array is not supported "
                         "inside a compiled function")

    @property
    def T(self):
        return _live(self).call(_METHOD_T, (self,), {})

    # values must not be read
    def __array__(self, dtype=None, copy=None):
        raise _value_error("np.asarray()/np.array()")

    def __float__(self):
        raise _value_error("float()")

    def __int__(self):
        raise _value_error("int()")

    def __index__(self):
        raise _value_error("use as an index")

    def __bool__(self):
        # a value guard: the replay re-checks the condition and, if it differs, traces
        # again (the branch taken is part of the program, like the shapes)
        return _live(self).guard(self)

    def __complex__(self):
        raise _value_error("complex()")

    def __len__(self):
        return len(self.value)

    def __iter__(self):
        return (self[i] for i in range(len(self.value)))

    def __repr__(self):
        return f"<traced array shape={self.value.shape} dtype={self.value.dtype}>"

    def __getitem__(self, index):
        return _live(self).call(operator.getitem, (self, index), {})

    def __setitem__(self, index, value):
        _live(self).call(operator.setitem, (self, index, value), {}, writes=self)


def _transpose(x):
    return x.T


_METHOD_T = _transpose


def _binary(ufunc):
    return (lambda self, other: ufunc(self, other),
            lambda self, other: ufunc(other, self),
            lambda self, other: ufunc(self, other, out=(self,)))


for _name, _ufunc in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                      ("truediv", np.true_divide), ("floordiv", np.floor_divide),
                      ("mod", np.remainder), ("pow", np.power), ("matmul", np.matmul),
                      ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor)):
    _forward, _reflected, _inplace = _binary(_ufunc)
    setattr(_Traced, f"__{_name}__", _forward)
    setattr(_Traced, f"__r{_name}__", _reflected)
    if _name != "matmul":
        setattr(_Traced, f"__i{_name}__", _inplace)
for _name, _ufunc in (("lt", np.less), ("le", np.less_equal), ("gt", np.greater),
                      ("ge", np.greater_equal), ("eq", np.equal), ("ne", np.not_equal)):
    setattr(_Traced, f"__{_name}__", (lambda u: lambda self, other: u(self, other))(_ufunc))
_Traced.__hash__ = object.__hash__
_Traced.__neg__ = lambda self: np.negative(self)
_Traced.__pos__ = lambda self: np.positive(self)
_Traced.__abs__ = lambda self: np.absolute(self)
_Traced.__invert__ = lambda self: np.invert(self)

ops._BACKEND_OF_TYPE[_Traced] = _cpu.BACKEND


def _live(traced):
    trace = traced.trace
    if _ACTIVE.get() is not trace:
        raise TraceError("tgm.compile: an array traced inside a compiled function was used "
                         "after (or outside) its trace; a traced value escaped the function "
                         "(kept in a global, a closure or an object attribute)")
    return trace


def _unwrap(tree):
    """``tree`` with every traced array replaced by its value (lists, tuples, dicts)."""
    kind = type(tree)
    if kind is _Traced:
        return tree.value
    if kind is tuple or kind is list:
        return kind(_unwrap(x) for x in tree)
    if kind is dict:
        return {k: _unwrap(v) for k, v in tree.items()}
    return tree


# ----------------------------------------------------------------------------------
# Tracing
# ----------------------------------------------------------------------------------

_ACTIVE = contextvars.ContextVar("tinygrad_meta.compile.trace", default=None)
_HOOK_LOCK = threading.RLock()
_DATA_SLOT = Tensor.__dict__["_data"]
_GRAD_SLOT = Tensor.__dict__["grad"]
_KERNELS = ("matmul", "relu", "relu_backward", "im2col", "col2im", "index_add",
            *_cpu.NORM_POOL_KERNELS)


class _Slot:
    """A reference to tape slot ``index`` inside an argument template."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __eq__(self, other):
        return type(other) is _Slot and other.index == self.index

    def __repr__(self):
        return f"s{self.index}"


class _Const:
    """An array fixed into the program (made inside the function from no traced input)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _Trace:
    """One recording: the tape, the slots, and the Tensors the function touched."""

    def __init__(self):
        self.tape = []            # instructions, in execution order
        self.slots = 0
        self.inputs = []          # slot of each input array (the replay's arguments)
        self.input_values = []    # their trace-time arrays (for the aliasing check)
        self.loaded = {}          # id(tensor) -> (tensor, its plain array before the trace)
        self.created = []         # Tensors made during the trace (their slots filled then)
        self.created_ids = set()
        self.buffers = {}         # id(plain array written in place) -> (array, slot)
        self.grad_requirements = []  # tensors whose .grad must be None when a replay starts
        self.grad_written = set()
        self.side_effects = False  # a store, a .grad or a write into a closure tensor so far

    def new(self, value):
        traced = _Traced(value, self.slots, self)
        self.slots += 1
        return traced

    def input(self, value):
        traced = self.new(value)
        self.inputs.append(traced.slot)
        self.input_values.append(value)
        return traced

    # ---- arguments: traced arrays become slots, plain arrays constants -------------
    def template(self, tree):
        kind = type(tree)
        if kind is _Traced:
            return _Slot(tree.slot)
        if kind is tuple or kind is list:
            return kind(self.template(x) for x in tree)
        if kind is dict:
            return {k: self.template(v) for k, v in tree.items()}
        if isinstance(tree, (np.ndarray, np.generic)):
            buffer = self.buffers.get(id(tree))
            if buffer is not None:
                return _Slot(buffer[1])
            return _Const(tree)
        return tree

    def call(self, function, args, kwargs, writes=None):
        """Run ``function`` on the values and record it. ``writes``: the traced array an
        in-place call (``setitem``) writes into."""
        out = kwargs.get("out")
        targets = ([writes] if writes is not None else
                   list(out) if type(out) is tuple else [out] if out is not None else [])
        targets = [self.writable(t, function) for t in targets]
        if out is not None:
            kwargs = dict(kwargs, out=tuple(targets) if type(out) is tuple else targets[0])
        if writes is not None and type(targets[0]) is _Traced:
            args = (targets[0],) + tuple(args[1:])
        if not targets:
            function, args = _faster_equivalent(function, args, kwargs)
        result = function(*_unwrap(args), **_unwrap(kwargs))
        if targets:  # in place: the result is (a view of) the target, no new slot
            self.tape.append(("call", function, self.template(args), self.template(kwargs), None))
            if result is None:
                return None
            if type(out) is tuple and type(result) is tuple:
                return tuple(targets)
            return targets[0] if out is not None or result is targets[0].value else self._wrap(result)
        for arg in args:  # a no-op for this signature (asarray, astype(copy=False)): no call
            if type(arg) is _Traced and result is arg.value:
                return arg
        wrapped = self._wrap(result, function)
        self.tape.append(("call", function, self.template(args), self.template(kwargs),
                          self.template(wrapped)))
        return wrapped

    def _wrap(self, result, function=None):
        if isinstance(result, (np.ndarray, np.generic)):
            return self.new(result)
        if type(result) in (tuple, list) and all(isinstance(r, (np.ndarray, np.generic))
                                                 for r in result):
            return type(result)(self.new(r) for r in result)
        name = getattr(function, "__name__", repr(function))
        raise TraceError(f"tgm.compile: {name} returned a {type(result).__name__} computed from "
                         "traced arrays (a value, not an array); reading values inside a "
                         "compiled function is not supported")

    def writable(self, target, function):
        """The traced array an in-place call may write into (raises for an input)."""
        name = getattr(function, "__name__", repr(function))
        if type(target) is not _Traced:
            if not isinstance(target, np.ndarray):
                return target
            # a plain array made inside the function (np.zeros, a mask): the replay needs
            # a fresh copy of it every call, not one array shared by all calls
            buffer = self.buffers.get(id(target))
            if buffer is None:
                traced = self.new(target)
                self.tape.append(("fresh", traced.slot, target.copy()))
                buffer = self.buffers[id(target)] = (target, traced.slot)
                return traced
            return _Traced(target, buffer[1], self)
        for _, value in self.loaded.values():
            if value is not None and np.may_share_memory(target.value, value):
                self.side_effects = True  # writing into a closure tensor's array
        for index, value in enumerate(self.input_values):
            if np.may_share_memory(target.value, value):
                raise TraceError(
                    f"tgm.compile: {name} writes in place into input array {index} (shape "
                    f"{value.shape}) of the compiled function; a replay would change the "
                    "caller's array every call. Copy it first (x = x + 0 / x.copy())")
        return target

    # ---- Tensors that existed before the call --------------------------------------
    def load(self, tensor, value):
        if not isinstance(value, (np.ndarray, np.generic)):
            return value
        traced = self.new(value)
        self.tape.append(("load", tensor, traced.slot, value.shape, value.dtype,
                          getattr(value, "strides", None)))
        _DATA_SLOT.__set__(tensor, traced)
        self.loaded.setdefault(id(tensor), (tensor, value))
        return traced

    def guard(self, traced):
        """bool() of a traced array: its value now, and a replay-time check of it."""
        if traced.value.size != 1:
            raise ValueError(f"the truth value of an array with {traced.value.size} elements is "
                             "ambiguous")
        value = bool(traced.value)
        self.tape.append(("guard", traced.slot, value, not self.side_effects))
        return value

    def store(self, tensor, value):
        self.side_effects = True
        if type(value) is _Traced:
            self.tape.append(("store", tensor, _Slot(value.slot)))
        elif isinstance(value, np.ndarray):
            self.tape.append(("store", tensor, _Const(value.copy())))
        self.loaded.setdefault(id(tensor), (tensor, None))

    def set_grad(self, tensor, old, new):
        self.side_effects = True
        key = id(tensor)
        if old is not None and id(old) not in self.created_ids and new is not None:
            raise TraceError(
                "tgm.compile: backward() accumulates into a .grad that existed before the "
                f"compiled call (a tensor of shape {tuple(tensor.shape)}); zero the gradients "
                "(opt.zero_grad()) before calling, or inside the function, or use tgm.grad")
        if key not in self.grad_written:
            self.grad_written.add(key)
            if old is None and new is not None:  # backward() found no .grad: a replay assumes so
                self.grad_requirements.append(tensor)
        if new is None:
            self.tape.append(("grad", tensor, None))
            return
        data = _DATA_SLOT.__get__(new)
        if type(data) is not _Traced:
            raise TraceError("tgm.compile: a .grad set inside the compiled function to a "
                             "tensor computed from no traced input is not supported")
        self.tape.append(("grad", tensor, _Slot(data.slot)))
        self.loaded.setdefault(key, (tensor, None))


# ---- calls recorded as a cheaper call that gives the same array ----------------------
# numpy's broadcast_to is Python code (about 5 us a call) and ndarray.sum goes through a
# Python wrapper to np.add.reduce; the replay calls what they reduce to directly, and the
# trace records that same call, so trace, replay and eager compute identical arrays.
_ADD_REDUCE = np.add.reduce
_SUM_KEYWORDS = frozenset({"axis", "dtype", "keepdims"})


def _broadcast_view(array, shape, strides):
    """The array ``np.broadcast_to(array, shape)`` returns, for a C-contiguous ``array``
    (its memory, ``shape`` and the given strides; read-only as broadcast_to's is)."""
    view = np.ndarray(shape, array.dtype, array, 0, strides)
    view.flags.writeable = False
    return view


def _faster_equivalent(function, args, kwargs):
    """(function, args) to record for a call of ``function(*args, **kwargs)``."""
    if function is np.ndarray.sum and len(args) == 1 and type(args[0]) is _Traced \
            and type(args[0].value) is np.ndarray and _SUM_KEYWORDS.issuperset(kwargs):
        return _ADD_REDUCE, args
    if function is np.broadcast_to and len(args) == 2 and not kwargs and type(args[0]) is _Traced:
        value = args[0].value
        if type(value) is np.ndarray and value.flags.c_contiguous and value.size:
            reference = np.broadcast_to(value, args[1])  # the strides it would give
            return _broadcast_view, (args[0], reference.shape, reference.strides)
    return function, args


def _data_get(tensor):
    value = _DATA_SLOT.__get__(tensor)
    if type(value) is np.ndarray or isinstance(value, np.generic):
        trace = _ACTIVE.get()
        if trace is not None and id(tensor) not in trace.created_ids:
            return trace.load(tensor, value)
    return value


def _data_set(tensor, value):
    trace = _ACTIVE.get()
    if trace is not None:
        try:
            _DATA_SLOT.__get__(tensor)
        except AttributeError:  # a new Tensor (its first assignment): made by this trace
            if id(tensor) not in trace.created_ids:
                trace.created_ids.add(id(tensor))
                trace.created.append(tensor)
        else:
            if id(tensor) not in trace.created_ids:
                trace.store(tensor, value)
    _DATA_SLOT.__set__(tensor, value)


def _grad_get(tensor):
    return _GRAD_SLOT.__get__(tensor)


def _grad_set(tensor, value):
    trace = _ACTIVE.get()
    if trace is not None and id(tensor) not in trace.created_ids:
        try:
            old = _GRAD_SLOT.__get__(tensor)
        except AttributeError:
            old = None
            trace.created_ids.add(id(tensor))
            trace.created.append(tensor)
        else:
            trace.set_grad(tensor, old, value)
    _GRAD_SLOT.__set__(tensor, value)


def _traced_kernel(kernel):
    @functools.wraps(kernel)
    def call(*args, **kwargs):
        trace = _ACTIVE.get()
        if trace is None or not any(type(a) is _Traced or (type(a) is tuple and any(
                type(item) is _Traced for item in a)) for a in args):  # index_add's index tuple
            return kernel(*args, **kwargs)
        return trace.call(kernel, args, kwargs)
    return call


def _numpy_conversion(original):
    """np.asarray / np.array / np.ascontiguousarray that keep a traced array traced (the
    conversion itself recorded), so code converting its inputs still traces."""
    @functools.wraps(original)
    def convert(a, *args, **kwargs):
        if type(a) is _Traced and _ACTIVE.get() is a.trace:
            return a.trace.call(original, (a,) + args, kwargs)
        return original(a, *args, **kwargs)
    return convert


_CONVERSIONS = ("asarray", "array", "ascontiguousarray", "asanyarray")
def _to_numpy_traced(array):
    if type(array) is _Traced:
        raise _value_error(".numpy()")
    return array


def _optimizer_step_traced(self, grads=None):
    if _ACTIVE.get() is None:
        return _Hooks.saved_step(self, grads)
    raise TraceError(
        f"tgm.compile: {type(self).__name__}.step() inside a compiled function is not "
        "supported (its step counter and state are Python values a replay would not "
        "update); return the gradients from the compiled function and call step() outside")


class _Hooks:
    """Install the trace-time properties and kernel wrappers (nested traces share them)."""

    depth = 0
    saved = {}

    def __enter__(self):
        _HOOK_LOCK.acquire()
        if _Hooks.depth == 0:
            backend = _cpu.BACKEND
            _Hooks.saved = {name: getattr(backend, name) for name in _KERNELS}
            for name, kernel in _Hooks.saved.items():
                setattr(backend, name, _traced_kernel(kernel))
            backend.to_numpy = _to_numpy_traced
            _Hooks.saved_numpy = {name: getattr(np, name) for name in _CONVERSIONS}
            for name, original in _Hooks.saved_numpy.items():
                setattr(np, name, _numpy_conversion(original))
            from .optim.optimizer import Optimizer
            _Hooks.saved_step = Optimizer.step
            Optimizer.step = _optimizer_step_traced
            Tensor._data = property(_data_get, _data_set)
            Tensor.grad = property(_grad_get, _grad_set)
        _Hooks.depth += 1
        return self

    def __exit__(self, *exc):
        _Hooks.depth -= 1
        if _Hooks.depth == 0:
            Tensor._data = _DATA_SLOT
            Tensor.grad = _GRAD_SLOT
            backend = _cpu.BACKEND
            del backend.to_numpy  # back to the class's staticmethod
            for name, original in _Hooks.saved_numpy.items():
                setattr(np, name, original)
            from .optim.optimizer import Optimizer
            Optimizer.step = _Hooks.saved_step
            for name, kernel in _Hooks.saved.items():
                setattr(backend, name, kernel)
        _HOOK_LOCK.release()
        return False


# ----------------------------------------------------------------------------------
# Signatures, outputs, code generation
# ----------------------------------------------------------------------------------

def _flatten(tree, arrays, caller):
    """The static key of ``tree``; its Tensors and arrays appended to ``arrays``."""
    kind = type(tree)  # the common cases first, by exact type: this runs at every call
    if kind is np.ndarray:
        arrays.append(("A", None, tree))
        return ("A", tree.shape, tree.dtype, tree.strides)
    if kind is tuple or kind is list:
        return (kind.__name__,) + tuple([_flatten(x, arrays, caller) for x in tree])
    if isinstance(tree, Tensor):
        if type(tree) is not Tensor:
            raise TypeError(f"{caller}: a {type(tree).__name__} argument is not supported "
                            "(call the compiled function outside vmap)")
        if tree.device != "cpu":
            raise NotImplementedError(f"{caller}: tensors on {tree.device!r} are not supported yet; "
                                      "tgm.compile traces CPU (numpy) arrays only")
        data = _DATA_SLOT.__get__(tree)
        arrays.append(("T", tree, data))
        return ("T", data.shape, data.dtype, data.strides, tree.requires_grad)
    if isinstance(tree, np.ndarray):
        arrays.append(("A", None, tree))
        return ("A", tree.shape, tree.dtype, tree.strides)
    if isinstance(tree, (tuple, list)):
        return (type(tree).__name__,) + tuple(_flatten(x, arrays, caller) for x in tree)
    if isinstance(tree, dict):
        return ("dict",) + tuple((k, _flatten(v, arrays, caller)) for k, v in tree.items())
    if tree is None or isinstance(tree, (bool, numbers.Number, str, bytes, np.generic)):
        return (type(tree).__name__, tree)
    raise TypeError(f"{caller}: an argument of type {type(tree).__name__} is not supported; "
                    "pass Tensors, numpy arrays, numbers, strings, None, or tuples, lists "
                    "and dicts of them (other objects belong in the function's closure)")


def _rebuild(tree, feed):
    """``tree`` with its Tensors and arrays replaced, in order, by ``feed``'s items."""
    if isinstance(tree, (Tensor, np.ndarray)):
        return next(feed)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_rebuild(x, feed) for x in tree)
    if isinstance(tree, dict):
        return {k: _rebuild(v, feed) for k, v in tree.items()}
    return tree


class _Codegen:
    """The source of the replay function and the globals it names."""

    def __init__(self):
        self.names = {}
        self.globals = {"_T": _constant, "_note_change": note_change, "_guard": _guard_failed,
                        "_guard_flipped": _guard_flipped, "_cpu": _cpu.BACKEND}
        self.lines = []

    def name(self, value, prefix="c"):
        key = id(value)
        if key not in self.names:
            self.names[key] = f"{prefix}{len(self.names)}"
            self.globals[self.names[key]] = value
        return self.names[key]

    def expr(self, template):
        kind = type(template)
        if kind is _Slot:
            return f"s{template.index}"
        if kind is _Const:
            return self.name(template.value)
        if kind is tuple:
            return "(" + "".join(self.expr(x) + ", " for x in template) + ")"
        if kind is list:
            return "[" + ", ".join(self.expr(x) for x in template) + "]"
        if kind is dict:
            return "{" + ", ".join(f"{self.expr(k)}: {self.expr(v)}" for k, v in template.items()) + "}"
        if template is None or kind in (bool, int, str):
            return repr(template)
        if kind is float and np.isfinite(template):
            return repr(template)
        return self.name(template)


class _GuardFlipped(Exception):
    """A value guard of a replay came out the other way (raised by the generated code)."""

    def __init__(self, safe):
        self.safe = safe


def _guard_flipped(safe):
    raise _GuardFlipped(safe)


def _guard_failed(tensor, shape, dtype, strides):
    data = _DATA_SLOT.__get__(tensor)
    raise TraceError(
        f"tgm.compile: a tensor the compiled function reads from its closure (shape {shape}, "
        f"dtype {dtype}) now holds an array of shape {data.shape}, dtype {data.dtype}, strides "
        f"{data.strides} (traced with strides {strides}); the program recorded for it no longer "
        "applies. Call fn.clear_cache() after changing a model's shapes")


def _slots_in(template, into):
    kind = type(template)
    if kind is _Slot:
        into.add(template.index)
    elif kind in (tuple, list):
        for x in template:
            _slots_in(x, into)
    elif kind is dict:
        for x in template.values():
            _slots_in(x, into)
    return into


def _live_tape(tape, output_template):
    """The tape without the calls whose results nothing uses (the inner loss value at first
    order, a recorded graph's unused branches). In-place writes, loads' guards of what is
    used, stores and .grad assignments are kept, with everything they read."""
    live = _slots_in([t[1] for t in _walk_outputs(output_template)], set())
    kept = []
    for instruction in reversed(tape):
        kind = instruction[0]
        if kind == "call":
            _, function, args, kwargs, result = instruction
            if result is not None and not (_slots_in(result, set()) & live):
                continue  # a pure call whose results are dead
            _slots_in(args, live)
            _slots_in(kwargs, live)
        elif kind == "load":
            if instruction[2] not in live:
                continue
        elif kind in ("store", "grad"):
            _slots_in(instruction[2], live)
        elif kind == "guard":
            live.add(instruction[1])
        kept.append(instruction)
    kept.reverse()
    return kept


def _walk_outputs(template):
    kind = template[0]
    if kind in ("T", "A"):
        yield template
    elif kind in ("tuple", "list"):
        for t in template[1]:
            yield from _walk_outputs(t)
    elif kind == "N":
        for t in template[2]:
            yield from _walk_outputs(t)
    elif kind == "D":
        for _, t in template[2]:
            yield from _walk_outputs(t)

# ---- common-subexpression merging --------------------------------------------------
# The graph walk recomputes what it already has: the loss residual once for the value and
# once for the gradient, a parameter's swapaxes and row view once per use. A repeated call
# of a pure function on the same slots gives an equal array, so the replay may compute it
# once. Only these functions are merged (deterministic, no side effects); for any other
# call nothing is assumed.
_NDARRAY_METHODS = tuple(getattr(np.ndarray, name) for name in
                         ("reshape", "swapaxes", "transpose", "sum", "astype", "mean"))
# Functions whose result is a new array, never a view of an argument.
_FRESH_RESULTS = {np.matmul, np.dot, np.ndarray.sum, np.ndarray.mean, _ADD_REDUCE}


def _pure(function):
    return (isinstance(function, np.ufunc) or function in _PURE_FUNCTIONS
            or function in _NDARRAY_METHODS or function in _KERNEL_FUNCTIONS)


def _fresh(function):
    return isinstance(function, np.ufunc) or function in _FRESH_RESULTS or function in _KERNEL_FUNCTIONS


_PURE_FUNCTIONS = {np.matmul, np.dot, np.broadcast_to, operator.getitem, _METHOD_T,
                   _ADD_REDUCE, _broadcast_view}
# our CPU kernels (and numpy's stand-ins for them): pure, each returns a new array
_KERNEL_FUNCTIONS = {f for f in (_cpu._relu, _cpu._relu_backward,
                                 getattr(_cpu._cpu_relu, "relu", None),
                                 getattr(_cpu._cpu_relu, "relu_backward", None),
                                 getattr(_cpu._cpu_matmul, "matmul", None)) if f is not None}
# batch norm and max pooling, ours and the reference: pure, each returns new arrays
_KERNEL_FUNCTIONS |= {getattr(module, name) for name in _cpu.NORM_POOL_KERNELS
                      for module in (_cpu._norm_pool, _cpu._cpu_norm_pool) if module is not None}


def _hashable(template):
    """A hashable key of an argument template (None when it has no such key): slots by
    index, arrays fixed into the program by identity."""
    kind = type(template)
    if kind is _Slot:
        return ("s", template.index)
    if kind is _Const:
        return ("c", id(template.value))
    if kind in (tuple, list):
        parts = tuple(_hashable(x) for x in template)
        return None if None in parts else (kind.__name__,) + parts
    if kind is dict:
        parts = tuple((k, _hashable(v)) for k, v in template.items())
        return None if any(v is None for _, v in parts) else ("dict",) + parts
    if template is None or kind in (bool, int, float, str, slice, type(Ellipsis)):
        return (kind.__name__, repr(template))
    if isinstance(template, np.dtype):
        return ("dtype", template.str)
    if isinstance(template, type):
        return ("type", id(template))
    return None


def _renamed(template, alias):
    kind = type(template)
    if kind is _Slot:
        return _Slot(alias[template.index]) if template.index in alias else template
    if kind in (tuple, list):
        return kind(_renamed(x, alias) for x in template)
    if kind is dict:
        return {k: _renamed(v, alias) for k, v in template.items()}
    return template


def _protected_slots(tape, output_template):
    """Slots whose array must stay a distinct object: what the caller receives (outputs,
    stores, .grad), what is written in place, and, through any call that may return a
    view, the arrays those are views of."""
    protected = _slots_in([t[1] for t in _walk_outputs(output_template)], set())
    for instruction in tape:
        kind = instruction[0]
        if kind in ("store", "grad"):
            _slots_in(instruction[2], protected)
        elif kind == "fresh":
            protected.add(instruction[1])
        elif kind == "call" and instruction[4] is None:  # in place: its out= / target
            kwargs = instruction[3]
            _slots_in(kwargs.get("out"), protected)
            if instruction[1] is operator.setitem or getattr(instruction[1], "__name__", "") == "at":
                _slots_in(instruction[2][:1], protected)
    for instruction in reversed(tape):  # a view's base: its first array argument and others
        if instruction[0] == "call" and instruction[4] is not None and not _fresh(instruction[1]):
            if _slots_in(instruction[4], set()) & protected:
                _slots_in([instruction[2], instruction[3]], protected)
    return protected


def _memory_classes(tape):
    """A function from a slot to its memory class: slots joined by a call that may return
    a view of its arguments (anything not known to return a new array) share a class."""
    parent = {}

    def find(slot):
        root = slot
        while parent.get(root, root) != root:
            root = parent[root]
        while slot != root:  # path compression
            parent[slot], slot = root, parent.get(slot, slot)
        return root

    for instruction in tape:
        if instruction[0] == "call" and instruction[4] is not None and not _fresh(instruction[1]):
            slots = _slots_in([instruction[2], instruction[3], instruction[4]], set())
            roots = {find(slot) for slot in slots}
            if len(roots) > 1:
                first, *rest = roots
                for root in rest:
                    parent[root] = first
    return find


def _common_calls_merged(tape, output_template):
    """``tape`` with each repeated pure call reading its first occurrence's result (the
    repeat is then dead and dropped by :func:`_live_tape`). An in-place write ends every
    match so far that reads an array which may share memory with the one written (an array
    read before the write may differ after it)."""
    protected = _protected_slots(tape, output_template)
    memory = _memory_classes(tape)
    seen = {}
    reads = {}  # key in seen -> memory classes of the slots its call reads
    alias = {}
    merged = []
    for instruction in tape:
        kind = instruction[0]
        if kind != "call":
            if alias and kind in ("store", "grad"):
                instruction = instruction[:2] + (_renamed(instruction[2], alias),)
            elif alias and kind == "guard" and instruction[1] in alias:
                instruction = (kind, alias[instruction[1]]) + instruction[2:]
            merged.append(instruction)
            continue
        _, function, args, kwargs, result = instruction
        if alias:
            args, kwargs = _renamed(args, alias), _renamed(kwargs, alias)
            instruction = ("call", function, args, kwargs, result)
        merged.append(instruction)
        if result is None:  # in place: forget what read the memory it writes
            written = {memory(i) for i in _slots_in(kwargs.get("out"), set())}
            if function is operator.setitem or getattr(function, "__name__", "") == "at":
                written |= {memory(i) for i in _slots_in(args[:1], set())}
            for key in [k for k, classes in reads.items() if classes & written]:
                del seen[key], reads[key]
            continue
        if type(result) is not _Slot or result.index in protected or not _pure(function):
            continue
        key = _hashable((args, kwargs))
        if key is None:
            continue
        key = (id(function), key)
        first = seen.get(key)
        if first is None:
            seen[key] = result.index
            reads[key] = {memory(i) for i in _slots_in([args, kwargs], set())}
        else:
            alias[result.index] = first
    return merged


def _generate(trace, output_template, n_inputs):
    code = _Codegen()
    lines = code.lines
    tape = _live_tape(_common_calls_merged(trace.tape, output_template), output_template)
    # free each slot right after its last use, as eager frees a graph's intermediates
    # (without this the replay would hold every intermediate until it returns)
    kept = _slots_in([t[1] for t in _walk_outputs(output_template)], set())
    last_use = {}
    for index, instruction in enumerate(tape):
        for slot in _instruction_slots(instruction):
            last_use[slot] = index
    frees = collections.defaultdict(list)
    for slot, index in last_use.items():
        if slot not in kept and slot not in trace.inputs:
            frees[index].append(slot)
    for index, instruction in enumerate(tape):
        _emit(code, instruction)
        if frees[index]:
            lines.append("del " + ", ".join(f"s{slot}" for slot in sorted(frees[index])))
    lines.append(f"return {_output_expr(code, output_template)}")
    parameters = ", ".join(f"s{slot}" for slot in trace.inputs)
    source = f"def replay({parameters}):\n" + "".join(f"    {line}\n" for line in lines)
    namespace = dict(code.globals)
    exec(source, namespace)  # noqa: S102 (our own generated code, from the tape)
    return namespace["replay"], source


def _instruction_slots(instruction):
    kind = instruction[0]
    if kind == "call":
        return _slots_in([instruction[2], instruction[3], instruction[4]], set())
    if kind in ("load", "fresh"):
        return {instruction[2] if kind == "load" else instruction[1]}
    if kind == "guard":
        return {instruction[1]}
    return _slots_in(instruction[2], set())  # store, grad


def _emit(code, instruction):
    """Append the lines of one instruction to the replay's source."""
    lines = code.lines
    kind = instruction[0]
    if kind == "call":
        _, function, args, kwargs, result = instruction
        call = f"{code.name(function, 'f')}({''.join(code.expr(a) + ', ' for a in args)}" + \
            "".join(f"{k}={code.expr(v)}, " for k, v in kwargs.items()) + ")"
        if result is None:
            lines.append(call)
        elif type(result) is _Slot:
            lines.append(f"s{result.index} = {call}")
        else:
            lines.append(f"{', '.join(code.expr(r) for r in result)}, = {call}")
    elif kind == "load":
        _, tensor, slot, shape, dtype, strides = instruction
        t = code.name(tensor, "t")
        lines.append(f"s{slot} = {t}._data")
        lines.append(f"if s{slot}.shape != {shape!r} or s{slot}.dtype != {code.name(dtype)}"
                     + (f" or s{slot}.strides != {strides!r}" if strides is not None else "")
                     + f": _guard({t}, {shape!r}, {code.name(dtype)}, {strides!r})")
    elif kind == "store":
        _, tensor, value = instruction
        t = code.name(tensor, "t")
        source = code.expr(value) if type(value) is _Slot else f"{code.expr(value)}.copy()"
        lines.append(f"{t}._data = {source}")
        lines.append(f"_note_change({t})")
    elif kind == "grad":
        _, tensor, value = instruction
        t = code.name(tensor, "t")
        lines.append(f"{t}.grad = None" if value is None else f"{t}.grad = _T({code.expr(value)}, _cpu)")
    elif kind == "fresh":
        _, slot, value = instruction
        lines.append(f"s{slot} = {code.name(value)}.copy()")
    elif kind == "guard":
        _, slot, value, safe = instruction
        lines.append(f"if {'not ' if value else ''}s{slot}: _guard_flipped({safe!r})")


def _output_template(tree, trace):
    """What ``fn`` returned, as a template: ("T", slot) / ("A", slot) / constants."""
    if isinstance(tree, Tensor):
        data = _DATA_SLOT.__get__(tree)
        if type(data) is _Traced:
            return ("T", _Slot(data.slot))
        return ("C", _constant(data.copy(), tree._be))
    if type(tree) is _Traced:
        return ("A", _Slot(tree.slot))
    if isinstance(tree, np.ndarray):
        return ("C", tree.copy())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return ("N", type(tree), tuple(_output_template(x, trace) for x in tree))
    if isinstance(tree, (tuple, list)):
        return (type(tree).__name__, tuple(_output_template(x, trace) for x in tree))
    if isinstance(tree, dict):
        return ("D", type(tree), tuple((k, _output_template(v, trace)) for k, v in tree.items()))
    if tree is None or isinstance(tree, (bool, numbers.Number, str, bytes)):
        return ("C", tree)
    raise TypeError(f"tgm.compile: the function returned a {type(tree).__name__}; return "
                    "Tensors, numpy arrays, numbers, or tuples, lists and dicts of them")


def _output_expr(code, template):
    kind = template[0]
    if kind == "T":
        return f"_T({code.expr(template[1])}, _cpu)"
    if kind == "A":
        return code.expr(template[1])
    if kind == "C":
        value = template[1]
        if isinstance(value, Tensor):
            return f"_T({code.name(value._data)}.copy(), _cpu)"
        if isinstance(value, np.ndarray):
            return f"{code.name(value)}.copy()"
        return code.expr(value)
    if kind == "tuple":
        return "(" + "".join(_output_expr(code, t) + ", " for t in template[1]) + ")"
    if kind == "list":
        return "[" + ", ".join(_output_expr(code, t) for t in template[1]) + "]"
    if kind == "N":
        return f"{code.name(template[1])}(" + ", ".join(_output_expr(code, t) for t in template[2]) + ")"
    if kind == "D":
        items = ", ".join(f"({k!r}, {_output_expr(code, v)})" for k, v in template[2])
        return f"{code.name(template[1])}([{items}])"
    raise AssertionError(kind)


def _concrete(tree):
    """A trace's outputs with traced arrays replaced by their values (Tensors cut from the graph)."""
    if isinstance(tree, Tensor):
        return _constant(tree._data, tree._be)
    if type(tree) is _Traced:
        return tree.value
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_concrete(x) for x in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_concrete(x) for x in tree)
    if isinstance(tree, dict):
        return type(tree)((k, _concrete(v)) for k, v in tree.items())
    return tree


def _signature_of(program_tape):
    """The op sequence of a tape, comparable between two traces (check mode)."""
    out = []
    for instruction in program_tape:
        kind = instruction[0]
        if kind == "call":
            function = instruction[1]
            out.append(("call", getattr(function, "__qualname__", None) or repr(function),
                        _shape_of(instruction[2]), _shape_of(instruction[3])))
        elif kind == "load":
            out.append(("load", id(instruction[1]), instruction[3]))
        elif kind in ("store", "grad"):
            out.append((kind, id(instruction[1]), _shape_of(instruction[2])))
        elif kind == "guard":
            out.append(("guard", instruction[2]))
        else:
            out.append(("fresh", _shape_of(_Const(instruction[2]))))
    return out


def _shape_of(template):
    """A template with constants replaced by (shape, dtype, values) for comparison."""
    kind = type(template)
    if kind is _Slot:
        return ("slot", template.index)
    if kind is _Const:
        value = np.asarray(template.value)
        return ("const", value.shape, value.dtype.str, value.tobytes())
    if kind in (tuple, list):
        return tuple(_shape_of(x) for x in template)
    if kind is dict:
        return tuple((k, _shape_of(v)) for k, v in template.items())
    if isinstance(template, (slice,)):
        return ("slice", template.start, template.stop, template.step)
    return template


def _describe(entry):
    if entry is None:
        return "nothing (the program ended)"
    kind = entry[0]
    if kind == "call":
        return f"a call of {entry[1]}"
    return f"a {kind} instruction"


class _Program:
    __slots__ = ("replay", "source", "tape", "grad_requirements", "key", "outputs")

    def __init__(self, replay, source, tape, grad_requirements, key):
        self.replay = replay
        self.source = source
        self.tape = tape
        self.grad_requirements = grad_requirements
        self.key = key


CacheInfo = collections.namedtuple("CacheInfo",
                                   "hits misses traces evictions size maxsize guard_retraces")


class CompiledFunction:
    """``fn`` compiled by :func:`compile` (see there). Calls trace or replay; also
    ``cache_info()``, ``clear_cache()`` and ``program_source(*args)`` (the replay's code)."""

    def __init__(self, fn, cache_size=8, check_every=0):
        if not callable(fn):
            raise TypeError(f"tgm.compile: expected a callable, got {type(fn).__name__}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"tgm.compile: cache_size must be an integer >= 1, got {cache_size!r}")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
            raise ValueError(f"tgm.compile: check_every must be an integer >= 0 (0: never), got "
                             f"{check_every!r}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.cache_size = cache_size
        self.check_every = check_every
        self._programs = collections.OrderedDict()
        self._hits = self._misses = self._traces = self._evictions = self._guard_retraces = 0
        self._calls = 0
        self._lock = threading.Lock()

    def cache_info(self) -> CacheInfo:
        """hits (replays), misses (new signatures), traces (including check-mode retraces
        and guard retraces), evictions, size and maxsize of the program cache, and
        guard_retraces (replays abandoned because a bool() guard came out differently)."""
        return CacheInfo(self._hits, self._misses, self._traces, self._evictions,
                         len(self._programs), self.cache_size, self._guard_retraces)

    def clear_cache(self):
        """Forget every recorded program (the next call traces again)."""
        self._programs.clear()

    def program_source(self, *args, **kwargs):
        """The Python source of the replay recorded for these arguments' signature (None if
        not traced yet): one line per array call."""
        key, _ = self._key(args, kwargs)
        program = self._programs.get(key)
        return program.source if program is not None else None

    def _key(self, args, kwargs):
        arrays = []
        name = f"tgm.compile({getattr(self.fn, '__name__', 'fn')})"
        key = (_flatten(args, arrays, name), _flatten(kwargs, arrays, name),
               is_grad_enabled(), _cpu.get_kernels())
        return key, arrays

    def __call__(self, *args, **kwargs):
        if _ACTIVE.get() is not None:  # inside another trace: trace through this function too
            return self.fn(*args, **kwargs)
        key, arrays = self._key(args, kwargs)
        program = self._programs.get(key)
        self._calls += 1
        checking = self.check_every and program is not None and self._calls % self.check_every == 0
        if program is not None and not checking:
            for tensor in program.grad_requirements:
                if _GRAD_SLOT.__get__(tensor) is not None:
                    raise TraceError(
                        "tgm.compile: the compiled function accumulates into .grad (backward()), "
                        f"but a tensor of shape {tuple(tensor.shape)} already has a .grad; zero "
                        "the gradients before each call (opt.zero_grad()) as when it was traced")
            try:
                result = program.replay(*[data for _, _, data in arrays])
            except _GuardFlipped as flipped:
                if not flipped.safe:
                    raise TraceError(
                        "tgm.compile: a condition on a traced value (bool(), an `if`) came out "
                        "differently from the trace, after the program had already changed a "
                        "tensor's .data or .grad; it cannot be traced again for these inputs. "
                        "Move the condition before the update, or run without tgm.compile") from None
                self._guard_retraces += 1  # nothing changed yet: trace this branch instead
            else:
                self._hits += 1
                self._programs.move_to_end(key)
                return result
        new = self._trace(args, kwargs, arrays, key)
        if checking:
            self._compare(program, new)
        elif program is None:
            self._misses += 1
        self._programs[key] = new
        self._programs.move_to_end(key)
        while len(self._programs) > self.cache_size:
            self._programs.popitem(last=False)
            self._evictions += 1
        return new.outputs

    def _compare(self, old, new):
        before, after = _signature_of(old.tape), _signature_of(new.tape)
        if before == after:
            return
        index = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b),
                     min(len(before), len(after)))
        old_entry = old.tape[index] if index < len(old.tape) else None
        new_entry = new.tape[index] if index < len(new.tape) else None
        raise TraceError(
            f"tgm.compile(check_every={self.check_every}): retracing "
            f"{getattr(self.fn, '__name__', 'fn')} gave a different program: array call "
            f"{index} was {_describe(old_entry)} and is now {_describe(new_entry)}. The "
            "function's array calls depend on something other than its arguments' shapes and "
            "dtypes (Python control flow on values, random numbers drawn inside, a closure "
            "that changed); replays would have been stale. This call's results are the "
            "eager ones")

    def _trace(self, args, kwargs, arrays, key):
        trace = _Trace()
        token = _ACTIVE.set(trace)
        swapped = []
        try:
            with _Hooks():
                feed = []
                for kind, tensor, data in arrays:
                    traced = trace.input(data)
                    if kind == "T":
                        swapped.append((tensor, data))
                        _DATA_SLOT.__set__(tensor, traced)
                        trace.created_ids.add(id(tensor))  # an argument: not state to load
                        feed.append(tensor)
                    else:
                        feed.append(traced)
                traced_args = _rebuild(args, iter(feed[:_count(args)]))
                traced_kwargs = _rebuild(kwargs, iter(feed[_count(args):]))
                result = self.fn(*traced_args, **traced_kwargs)
                output_template = _output_template(result, trace)
                outputs = _concrete(result)
        finally:
            _ACTIVE.reset(token)
            for tensor, data in swapped:
                _DATA_SLOT.__set__(tensor, data)
            for tensor, _ in list(trace.loaded.values()):
                _fill(tensor)
            for tensor in trace.created:
                _fill(tensor)
        self._traces += 1
        replay, source = _generate(trace, output_template, len(arrays))
        program = _Program(replay, source, trace.tape, trace.grad_requirements, key)
        program.outputs = outputs
        return program


def _fill(tensor):
    """Give a tensor that held a traced array its value back."""
    try:
        data = _DATA_SLOT.__get__(tensor)
    except AttributeError:
        return
    if type(data) is _Traced:
        _DATA_SLOT.__set__(tensor, data.value)
    try:
        g = _GRAD_SLOT.__get__(tensor)
    except AttributeError:
        return
    if g is not None and type(_DATA_SLOT.__get__(g)) is _Traced:
        _DATA_SLOT.__set__(g, _DATA_SLOT.__get__(g).value)


def _count(tree):
    arrays = []
    _flatten(tree, arrays, "tgm.compile")
    return len(arrays)


def compile(fn=None, *, cache_size=8, check_every=0):
    """Compile ``fn``: trace it once per signature, then replay flat array calls.

    Use as ``step = tgm.compile(step)`` or ``@tgm.compile`` / ``@tgm.compile(check_every=100)``.

    The first call with a given *signature* (the shapes, dtypes and strides of the Tensor
    and numpy arguments, their ``requires_grad``, every other argument's value, grad mode
    and the CPU kernel mode) runs ``fn`` eagerly while recording every array call it makes:
    the forward pass, every ``grad``/``backward`` inside it (first order and
    ``create_graph=True``), and user array code. Later calls with the same signature replay
    that flat program: no graph nodes, no toposort, no rule dispatch. The same kernels run
    in the same order, so the results are bit for bit the eager ones. Up to ``cache_size``
    programs are kept (least recently used evicted; see ``cache_info()``).

    Arguments: Tensors and numpy arrays (nested in tuples, lists and dicts), numbers,
    strings and None. Outputs come back as eager returns them, with every Tensor a new
    Tensor without a graph (``requires_grad=False``). Tensors the function reads from its
    closure (a model's parameters) are read again at every replay, so an optimizer stepping
    them between calls is seen; their shapes must stay those traced.

    Limits (as ``jax.jit``): ``fn`` must be a pure array program for a signature.

    * Detected, raising :class:`TraceError`: reading a traced value (``float()``,
      ``int()``, ``.item()``, ``.tolist()``, ``.numpy()``, ``np.asarray``); in-place
      writes into an input array; ``optimizer.step()`` inside ``fn``; ``backward()``
      accumulating into a ``.grad`` that existed before the call; traced arrays escaping
      the call; a closure tensor changing shape. With ``check_every=N`` every N-th call
      re-traces and raises, naming the first differing array call, if the program
      changed (so control flow on closure values and random numbers drawn inside are
      caught).
    * ``bool()`` of a traced value (``if tensor > 0:``) is a *value guard*: the replay
      re-checks the condition and traces the other branch when it flips
      (``cache_info().guard_retraces``); if ``fn`` already changed a tensor's ``.data`` or
      ``.grad`` before the check, a flip raises instead.
    * Not detected: Python side effects other than ``.data``/``.grad`` of tensors (counters,
      lists; step optimizers outside the compiled function); Python numbers and
      non-Tensor numpy arrays read from the closure are fixed at trace time (pass them as arguments if they change: a new value is a new
      signature); random numbers drawn inside ``fn`` are fixed at trace time.
    * CPU tensors only; vmap inside ``fn`` works, ``fn`` itself must not be called under
      vmap.
    """
    if fn is None:
        return lambda f: CompiledFunction(f, cache_size=cache_size, check_every=check_every)
    return CompiledFunction(fn, cache_size=cache_size, check_every=check_every)
