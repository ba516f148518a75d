"""Value: a micrograd-sized scalar engine on the shared graph core.

Unlike micrograd, ``Value.grad`` is itself a ``Value`` and every derivative rule is
written once, over a namespace ``o`` that is plain float math at first order and Value
ops with ``create_graph=True`` (the same scheme as the Tensor op table in ops.py), so
``grad(z, [x], create_graph=True)`` can be differentiated again, to any order. The eight
rules are at the bottom of this file, in the same form as ops.py's.

>>> from tinygrad_meta import Value, grad
>>> x = Value(0.5)
>>> y = (x * x).tanh()
>>> (dy,) = grad(y, [x], create_graph=True)
>>> (d2y,) = grad(dy, [x])
>>> round(dy.data, 6), round(d2y.data, 6)
(0.940015, 1.419575)
"""
from __future__ import annotations

import math
import numbers

from .autograd import backward as _backward, current_origin, grad_enabled, next_seq
from .ops import Op

__all__ = ["Value"]


class Value:
    """A scalar that records the ops that produced it."""

    __slots__ = ("_data", "grad", "_requires_grad", "_parents", "_op", "_origin", "_seq", "__weakref__")
    _params = ()
    _version = 0
    __hash__ = object.__hash__  # hashable by identity; == compares values

    def __init__(self, data, requires_grad=True, _parents=(), _op=None):
        if isinstance(data, Value):
            data = data._data
        if isinstance(data, bool) or not isinstance(data, numbers.Real):
            raise TypeError(f"Value: expected a real number, got {type(data).__name__}")
        self._data = float(data)
        self.grad = None
        self._seq = next_seq()
        # a node records its parents only while grad mode is on and a parent needs them
        if _parents and grad_enabled() and any(p._requires_grad for p in _parents):
            self._requires_grad, self._parents, self._op = True, _parents, _op
            self._origin = current_origin()
        else:
            self._requires_grad = bool(requires_grad) and not _parents
            self._parents, self._op, self._origin = (), None, None

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data = float(value)

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        if value and self._op is not None:
            return
        if not value and self._op is not None:
            raise RuntimeError("requires_grad = False on a non-leaf Value; use .detach()")
        self._requires_grad = bool(value)

    def __repr__(self):
        return f"Value(data={self._data:.6g})"

    # shape-like attributes let the graph core treat a Value as a scalar tensor
    shape = ()
    size = 1

    def _ones_like(self):
        return Value(1.0, requires_grad=False)

    def _as_gradient(self, seed, caller):
        if isinstance(seed, Value):
            return seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Real):
            raise TypeError(f"{caller}: a Value's gradient must be a number or a Value, "
                            f"got {type(seed).__name__}")
        return Value(seed, requires_grad=False)

    @staticmethod
    def _wrap(raw):
        return Value(raw, requires_grad=False)

    def detach(self):
        return Value(self._data, requires_grad=False)

    def item(self):
        return self._data

    def __float__(self):
        return self._data

    def backward(self, gradient=None, create_graph=False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` (a Value) for every leaf."""
        _backward(self, gradient, create_graph)

    # ---- ops: each builds its output and names its table entry ----------------
    def __add__(self, other):
        other = _lift(other)
        return Value(self._data + other._data, _parents=(self, other), _op=ADD)

    def __mul__(self, other):
        other = _lift(other)
        return Value(self._data * other._data, _parents=(self, other), _op=MUL)

    def __pow__(self, exponent):
        exponent = _lift(exponent)
        if exponent._requires_grad and self._data < 0:
            raise ValueError(f"pow: base {self._data} must be >= 0 for a Value exponent")
        return Value(self._data ** exponent._data, _parents=(self, exponent), _op=POW)

    def exp(self):
        return Value(math.exp(self._data), _parents=(self,), _op=EXP)

    def log(self):
        if self._data <= 0:
            raise ValueError(f"log: argument must be positive, got {self._data}")
        return Value(math.log(self._data), _parents=(self,), _op=LOG)

    def tanh(self):
        return Value(math.tanh(self._data), _parents=(self,), _op=TANH)

    def sigmoid(self):
        x = self._data
        s = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
        return Value(s, _parents=(self,), _op=SIGMOID)

    def relu(self):
        return Value(max(self._data, 0.0), _parents=(self,), _op=RELU)

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-_lift(other))

    def __truediv__(self, other):
        return self * _lift(other) ** -1.0

    def __radd__(self, other):
        return self + other

    def __rsub__(self, other):
        return _lift(other) - self

    def __rmul__(self, other):
        return self * other

    def __rtruediv__(self, other):
        return _lift(other) / self

    def __rpow__(self, other):
        return _lift(other) ** self

    # comparisons compare values (plain bools, outside the graph)
    def __eq__(self, other):
        other = _comparable(other)
        return NotImplemented if other is None else self._data == other

    def __ne__(self, other):
        other = _comparable(other)
        return NotImplemented if other is None else self._data != other

    def __lt__(self, other):
        other = _comparable(other)
        return NotImplemented if other is None else self._data < other

    def __le__(self, other):
        other = _comparable(other)
        return NotImplemented if other is None else self._data <= other

    def __gt__(self, other):
        other = _comparable(other)
        return NotImplemented if other is None else self._data > other

    def __ge__(self, other):
        other = _comparable(other)
        return NotImplemented if other is None else self._data >= other


def _comparable(x):
    if isinstance(x, Value):
        return x._data
    if isinstance(x, numbers.Real):
        return float(x)
    return None


def _lift(x):
    if isinstance(x, Value):
        return x
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"cannot combine a Value with a {type(x).__name__}; Values mix only with numbers")
    return Value(x, requires_grad=False)


# ---- the two namespaces the rules run in ----------------------------------------

class _FloatOps:
    """First order: rules compute on floats."""
    recording = False
    exp, log = staticmethod(math.exp), staticmethod(math.log)

    @staticmethod
    def raw(x):
        return x


class _ValueOps:
    """create_graph=True: rules compute on Values, recording the graph."""
    recording = True

    @staticmethod
    def exp(x):
        return x.exp()

    @staticmethod
    def log(x):
        return x.log()

    @staticmethod
    def raw(x):
        return x._data


Value._raw_ops = _FloatOps()
Value._graph_ops = _ValueOps()


# ---- derivative rules: vjp(o, g, out, ins, params, needs), as in ops.py ------------

def _add_vjp(o, g, out, ins, params, needs):
    return g if needs[0] else None, g if needs[1] else None


def _mul_vjp(o, g, out, ins, params, needs):
    a, b = ins
    return g * b if needs[0] else None, g * a if needs[1] else None


def _pow_vjp(o, g, out, ins, params, needs):
    a, b = ins
    ga = gb = None
    if needs[0]:
        # a constant exponent 0 has derivative 0 everywhere; a ** -1 would fail at a = 0
        ga = g * 0.0 if o.raw(b) == 0 and not needs[1] else g * b * a ** (b - 1.0)
    if needs[1]:
        # d/db a**b = a**b log(a); 0 at a == 0 (the limit from b > 0)
        gb = g * 0.0 if o.raw(a) == 0 else g * out * o.log(a)
    return ga, gb


def _exp_vjp(o, g, out, ins, params, needs):
    return (g * out,)


def _log_vjp(o, g, out, ins, params, needs):
    return (g / ins[0],)


def _tanh_vjp(o, g, out, ins, params, needs):
    return (g * (1.0 - out * out),)


def _sigmoid_vjp(o, g, out, ins, params, needs):
    return (g * out * (1.0 - out),)


def _relu_vjp(o, g, out, ins, params, needs):
    # the step function relu' is constant almost everywhere: no further derivative
    return (g * (1.0 if o.raw(ins[0]) > 0 else 0.0),)


ADD = Op("+", None, 2, _add_vjp)
MUL = Op("*", None, 2, _mul_vjp)
POW = Op("**", None, 2, _pow_vjp)
EXP = Op("exp", None, 1, _exp_vjp)
LOG = Op("log", None, 1, _log_vjp)
TANH = Op("tanh", None, 1, _tanh_vjp)
SIGMOID = Op("sigmoid", None, 1, _sigmoid_vjp)
RELU = Op("relu", None, 1, _relu_vjp)
