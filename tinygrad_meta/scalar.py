"""Value: a micrograd-sized scalar engine on the shared graph core.

Unlike micrograd, ``Value.grad`` is itself a ``Value`` and every derivative rule is
written with ``Value`` ops, so ``grad(z, [x], create_graph=True)`` can be
differentiated again, to any order.

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

from .autograd import _GradMode, backward as _backward, next_seq

__all__ = ["Value"]


class Value:
    """A scalar that records the ops that produced it."""

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_rule", "_op", "_origin", "_seq", "__weakref__")

    def __init__(self, data, requires_grad=True, _parents=(), _rule=None, _op=""):
        self.data = float(data)
        self.grad = None
        self._seq = next_seq()
        self._op = _op
        # a node records its parents only while grad mode is on and a parent needs them
        if _parents and _GradMode.enabled and any(p.requires_grad for p in _parents):
            self.requires_grad, self._parents, self._rule = True, _parents, _rule
            self._origin = _GradMode.origin
        else:
            self.requires_grad = bool(requires_grad) and not _parents
            self._parents, self._rule, self._origin = (), None, None

    def __repr__(self):
        return f"Value(data={self.data:.6g})"

    # shape-like attributes let the graph core treat a Value as a scalar tensor
    shape = ()
    size = 1

    def _ones_like(self):
        return Value(1.0, requires_grad=False)

    def _as_gradient(self, seed, caller):
        return seed if isinstance(seed, Value) else Value(seed, requires_grad=False)

    def detach(self):
        return Value(self.data, requires_grad=False)

    def item(self):
        return self.data

    def backward(self, gradient=None, create_graph=False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` (a Value) for every leaf."""
        _backward(self, gradient, create_graph)

    # ---- ops: each builds its output and names its derivative rule ------------
    def __add__(self, other):
        other = _lift(other)
        return Value(self.data + other.data, _parents=(self, other), _rule=_add_rule, _op="+")

    def __mul__(self, other):
        other = _lift(other)
        return Value(self.data * other.data, _parents=(self, other), _rule=_mul_rule, _op="*")

    def __pow__(self, exponent):
        exponent = _lift(exponent)
        if exponent.requires_grad and self.data <= 0:
            raise ValueError(f"pow: base {self.data} must be positive for a Value exponent")
        return Value(self.data ** exponent.data, _parents=(self, exponent), _rule=_pow_rule, _op="**")

    def exp(self):
        return Value(math.exp(self.data), _parents=(self,), _rule=_exp_rule, _op="exp")

    def log(self):
        if self.data <= 0:
            raise ValueError(f"log: argument must be positive, got {self.data}")
        return Value(math.log(self.data), _parents=(self,), _rule=_log_rule, _op="log")

    def tanh(self):
        return Value(math.tanh(self.data), _parents=(self,), _rule=_tanh_rule, _op="tanh")

    def sigmoid(self):
        x = self.data
        s = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
        return Value(s, _parents=(self,), _rule=_sigmoid_rule, _op="sigmoid")

    def relu(self):
        return Value(max(self.data, 0.0), _parents=(self,), _rule=_relu_rule, _op="relu")

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


def _lift(x):
    if isinstance(x, Value):
        return x
    if not isinstance(x, numbers.Real):
        raise TypeError(f"cannot combine a Value with a {type(x).__name__}; Values mix only with numbers")
    return Value(x, requires_grad=False)


# ---- derivative rules: rule(out, g) -> gradient per parent, written in Value ops ----

def _add_rule(out, g):
    return g, g


def _mul_rule(out, g):
    a, b = out._parents
    return g * b, g * a


def _pow_rule(out, g):
    a, b = out._parents
    ga = None
    if a.requires_grad:
        # a constant exponent 0 has derivative 0 everywhere; a ** -1 would fail at a = 0
        ga = g * 0.0 if b.data == 0 and not b.requires_grad else g * b * a ** (b - 1.0)
    gb = g * out * a.log() if b.requires_grad else None
    return ga, gb


def _exp_rule(out, g):
    return (g * out,)


def _log_rule(out, g):
    return (g / out._parents[0],)


def _tanh_rule(out, g):
    return (g * (1.0 - out * out),)


def _sigmoid_rule(out, g):
    return (g * out * (1.0 - out),)


def _relu_rule(out, g):
    # the step function relu' is constant almost everywhere: no further derivative
    return (g * (1.0 if out._parents[0].data > 0 else 0.0),)
