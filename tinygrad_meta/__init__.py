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

from . import meta  # after nn and optim, which it builds on

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Value", "tensor", "grad", "no_grad", "enable_grad", "is_grad_enabled",
    "hvp", "jvp", "jacobian", "hessian", "zeros", "ones", "zeros_like", "ones_like", "full",
    "concatenate", "stack", "where", "maximum", "minimum", "functional", "backends",
    "nn", "func", "optim", "meta",
]
