"""Module-level twins of Tensor methods, numpy style: ``tgm.sin(x)`` is ``x.sin()``,
``tgm.split(x, 3)`` is ``x.split(3)``. Each takes the Tensor first and the method's
other arguments after it, with the method's docstring.

A module of their own because some names (``abs``, ``round``) would shadow Python's
builtins inside tensor.py.

>>> import tinygrad_meta as tgm
>>> tgm.floor(tgm.Tensor([1.5, -0.5])).tolist()
[1.0, -1.0]
"""
from __future__ import annotations

import functools

from .tensor import Tensor, _tensor_argument

__all__ = [
    "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "erf", "exp", "log",
    "sqrt", "abs", "tanh", "sigmoid", "relu", "clip", "sign", "floor", "ceil", "round",
    "softplus", "leaky_relu", "elu", "gelu", "prod", "var", "std", "cumsum", "argmax",
    "argmin", "diagonal", "trace", "triu", "tril", "squeeze", "expand_dims", "unsqueeze",
    "flatten", "ravel", "repeat", "tile", "flip", "roll", "split", "chunk",
]


def _function_of(method):
    """The module-level twin of a Tensor method: ``tgm.sin(x)`` is ``x.sin()``."""
    @functools.wraps(method)
    def function(x, *args, **kwargs):
        return method(_tensor_argument(x, method.__name__), *args, **kwargs)
    function.__qualname__ = method.__name__
    return function


sin = _function_of(Tensor.sin)
cos = _function_of(Tensor.cos)
tan = _function_of(Tensor.tan)
arcsin = _function_of(Tensor.arcsin)
arccos = _function_of(Tensor.arccos)
arctan = _function_of(Tensor.arctan)
sinh = _function_of(Tensor.sinh)
cosh = _function_of(Tensor.cosh)
erf = _function_of(Tensor.erf)
exp = _function_of(Tensor.exp)
log = _function_of(Tensor.log)
sqrt = _function_of(Tensor.sqrt)
abs = _function_of(Tensor.abs)
tanh = _function_of(Tensor.tanh)
sigmoid = _function_of(Tensor.sigmoid)
relu = _function_of(Tensor.relu)
clip = _function_of(Tensor.clip)
sign = _function_of(Tensor.sign)
floor = _function_of(Tensor.floor)
ceil = _function_of(Tensor.ceil)
round = _function_of(Tensor.round)
softplus = _function_of(Tensor.softplus)
leaky_relu = _function_of(Tensor.leaky_relu)
elu = _function_of(Tensor.elu)
gelu = _function_of(Tensor.gelu)
prod = _function_of(Tensor.prod)
var = _function_of(Tensor.var)
std = _function_of(Tensor.std)
cumsum = _function_of(Tensor.cumsum)
argmax = _function_of(Tensor.argmax)
argmin = _function_of(Tensor.argmin)
diagonal = _function_of(Tensor.diagonal)
trace = _function_of(Tensor.trace)
triu = _function_of(Tensor.triu)
tril = _function_of(Tensor.tril)
squeeze = _function_of(Tensor.squeeze)
expand_dims = _function_of(Tensor.expand_dims)
unsqueeze = _function_of(Tensor.unsqueeze)
flatten = _function_of(Tensor.flatten)
ravel = _function_of(Tensor.ravel)
repeat = _function_of(Tensor.repeat)
tile = _function_of(Tensor.tile)
flip = _function_of(Tensor.flip)
roll = _function_of(Tensor.roll)
split = _function_of(Tensor.split)
chunk = _function_of(Tensor.chunk)
