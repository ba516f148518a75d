"""A safe parser for scalar expressions in one variable, such as ``"tanh(x*x)"``.

The text is parsed with Python's ``ast`` module and every node is checked against a
short whitelist: numbers, the one variable, ``+ - * / **``, unary minus and plus, and
calls of the functions the ``Value`` engine has. Nothing is ever passed to ``eval``;
anything else (attributes, subscripts, other names, keywords, lambdas ...) is an error
that names what was found.

>>> from tinygrad_meta.expr import parse_expression
>>> f = parse_expression("tanh(x*x) + 2**-x")
>>> round(f(0.7), 6)
1.069789
"""
from __future__ import annotations

import ast
import math
import re

from .scalar import Value

__all__ = ["Expression", "parse_expression", "parse_query", "FUNCTIONS"]

# the functions an expression may call: exactly the unary ops Value has
FUNCTIONS = ("exp", "log", "tanh", "sigmoid", "relu")

_MAX_LENGTH = 1000
_MAX_NODES = 400

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}


class Expression:
    """A parsed expression; call it with a float or a ``Value``.

    Called with a float it returns a float; with a ``Value`` it returns a ``Value``
    whose graph records every op, ready for ``grad``.
    """

    def __init__(self, source, variable, tree):
        self.source = source
        self.variable = variable
        self._tree = tree

    def __repr__(self):
        return f"Expression({self.source!r}, variable={self.variable!r})"

    def __call__(self, value):
        if isinstance(value, Value):
            return _as_value(self._evaluate(self._tree, value))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expression: call it with a float or a Value, not {type(value).__name__}")
        return _as_value(self._evaluate(self._tree, Value(float(value), requires_grad=False))).data

    def _evaluate(self, node, x):
        kind = node[0]
        if kind == "num":
            return node[1]
        if kind == "var":
            return x
        if kind == "neg":
            return -_as_value(self._evaluate(node[1], x))
        if kind == "call":
            argument = _as_value(self._evaluate(node[2], x))
            try:
                return getattr(argument, node[1])()
            except OverflowError:
                raise ValueError(f"expression: {node[1]}(...) overflowed at {self.variable}="
                                 f"{x.data!r} in {self.source!r}") from None
        op, left, right = node[1], self._evaluate(node[2], x), self._evaluate(node[3], x)
        if not isinstance(left, Value) and not isinstance(right, Value):
            left = Value(left, requires_grad=False)
        try:
            if op == "+":
                return left + right
            if op == "-":
                return left - right
            if op == "*":
                return left * right
            if op == "/":
                return left / right
            return left ** right
        except ZeroDivisionError:
            raise ValueError(f"expression: division by zero at {self.variable}={x.data!r} "
                             f"in {self.source!r}") from None
        except OverflowError:
            raise ValueError(f"expression: overflow at {self.variable}={x.data!r} in {self.source!r}") from None


def _as_value(v):
    return v if isinstance(v, Value) else Value(v, requires_grad=False)


def parse_expression(text, variable="x"):
    """Parse ``text`` into an ``Expression`` of one variable named ``variable``.

    Allowed: numbers, ``variable``, ``+ - * / **``, unary ``-``/``+``, parentheses, and
    the functions exp, log, tanh, sigmoid, relu (one positional argument each).
    Raises ``ValueError`` naming the first thing that is not allowed.

    >>> parse_expression("exp(-x) * 3")(0.0)
    3.0
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_expression: expected a string, got {type(text).__name__}")
    if not variable.isidentifier() or variable in FUNCTIONS:
        raise ValueError(f"parse_expression: {variable!r} cannot be the variable name")
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"parse_expression: expression is {len(text)} characters; the limit is {_MAX_LENGTH}")
    if "^" in text:
        raise ValueError(f"parse_expression: use ** for powers, not ^ (in {text!r})")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"parse_expression: cannot parse {text!r}: {error.msg}") from None
    count = sum(1 for _ in ast.walk(tree))
    if count > _MAX_NODES:
        raise ValueError(f"parse_expression: expression has {count} syntax nodes; the limit is {_MAX_NODES}")
    return Expression(text.strip(), variable, _convert(tree.body, text, variable))


def _convert(node, text, variable):
    """The whitelisted tree as nested tuples, or ValueError naming the offending part."""
    where = ast.get_source_segment(text.strip(), node) or type(node).__name__
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"parse_expression: only real numbers are allowed, not {where!r}")
        value = float(node.value)
        if not math.isfinite(value):
            raise ValueError(f"parse_expression: number {where!r} is not finite")
        return ("num", value)
    if isinstance(node, ast.Name):
        if node.id == variable:
            return ("var",)
        if node.id in FUNCTIONS:
            raise ValueError(f"parse_expression: {node.id} is a function; call it as {node.id}(...)")
        raise ValueError(f"parse_expression: unknown name {node.id!r}; the variable is "
                         f"{variable!r} and the functions are {', '.join(FUNCTIONS)}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _convert(node.operand, text, variable)
        if isinstance(node.op, ast.UAdd):
            return operand
        return ("num", -operand[1]) if operand[0] == "num" else ("neg", operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return ("bin", _BINARY[type(node.op)], _convert(node.left, text, variable),
                _convert(node.right, text, variable))
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise ValueError(f"parse_expression: {where!r} calls something other than "
                             f"{', '.join(FUNCTIONS)}")
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            raise ValueError(f"parse_expression: {name} takes exactly one argument, in {where!r}")
        return ("call", name, _convert(node.args[0], text, variable))
    raise ValueError(f"parse_expression: {type(node).__name__} is not allowed ({where!r}); use "
                     f"numbers, {variable}, + - * / **, and {', '.join(FUNCTIONS)}")


_QUERY = re.compile(r"^(?P<expr>.+?)\s+at\s+(?P<var>[A-Za-z_]\w*)\s*=\s*(?P<value>\S+)\s*$")


def parse_query(text):
    """Split ``"EXPR at NAME=VALUE"`` into (Expression, point).

    >>> expression, point = parse_query("tanh(x*x) at x=0.7")
    >>> expression.source, point
    ('tanh(x*x)', 0.7)
    """
    match = _QUERY.match(text.strip())
    if not match:
        raise ValueError(f"parse_query: expected 'EXPR at x=VALUE', e.g. 'tanh(x*x) at x=0.7', got {text!r}")
    try:
        point = float(match["value"])
    except ValueError:
        raise ValueError(f"parse_query: {match['value']!r} is not a number") from None
    if not math.isfinite(point):
        raise ValueError(f"parse_query: the point {match['value']!r} is not finite")
    return parse_expression(match["expr"], match["var"]), point
