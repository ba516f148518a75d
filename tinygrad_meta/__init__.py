"""tinygrad_meta: a small, exact reverse-mode autograd engine with gradients of any order,
and gradient-based meta-learning built on it.

>>> import tinygrad_meta as tgm
>>> x = tgm.Tensor([1.0, 2.0], requires_grad=True)
>>> (g,) = tgm.grad((x ** 3).sum(), [x], create_graph=True)
>>> (h,) = tgm.grad(g.sum(), [x])
>>> h.numpy().tolist()
[6.0, 12.0]
"""
from . import backends, func, functional, nn, optim
from .autograd import enable_grad, grad, is_grad_enabled, no_grad
from .derivatives import hessian, hvp, jacobian, jvp
from .scalar import Value
from .tensor import (Tensor, concatenate, full, maximum, minimum, ones, ones_like, stack, tensor,
                     where, zeros, zeros_like)
from .vmap import vmap
from .compile import compile, TraceError

from . import meta  # after nn and optim, which it builds on

# the op set users expect (issue 9): functions of several tensors, and numpy-style
# module-level twins of the Tensor methods (tgm.sin(x) is x.sin())
from . import numpy_functions
from .numpy_functions import *  # noqa: F401,F403 (the names are numpy_functions.__all__)
from .tensor import (arctan2, einsum, logaddexp, mod, norm, outer, pad, remainder,
                     tensordot)

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Value", "tensor", "grad", "no_grad", "enable_grad", "is_grad_enabled",
    "hvp", "jvp", "jacobian", "hessian", "zeros", "ones", "zeros_like", "ones_like", "full",
    "concatenate", "stack", "where", "maximum", "minimum", "functional", "backends",
    "nn", "func", "optim", "meta", "vmap", "compile", "TraceError",
]
__all__ += ["einsum", "tensordot", "outer", "arctan2", "logaddexp", "remainder", "mod", "pad",
            "norm"]
# tgm.abs and tgm.round take Tensors only: a star import must not shadow Python's builtins
__all__ += [name for name in numpy_functions.__all__ if name not in ("abs", "round")]
