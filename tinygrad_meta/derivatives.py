"""Hessian-vector products, Jacobian-vector products, Jacobians and Hessians.

All of them are built from ``grad(..., create_graph=True)``: reverse mode over
reverse mode. ``inputs`` may be one Tensor (results are Tensors) or a list of
Tensors (results are lists).
"""
from __future__ import annotations

import numpy as np

from .autograd import grad
from .tensor import Tensor, stack, zeros_like

__all__ = ["hvp", "jvp", "jacobian", "hessian", "vjp"]


def _as_list(inputs, name):
    single = isinstance(inputs, Tensor)
    if not single and not isinstance(inputs, (list, tuple)):
        raise TypeError(f"{name}: inputs must be a Tensor or a list of Tensors, got {type(inputs).__name__}")
    items = [inputs] if single else list(inputs)
    if not items or not all(isinstance(t, Tensor) for t in items):
        raise TypeError(f"{name}: inputs must be a Tensor or a list of Tensors")
    return single, items


def _fresh_inputs(items):
    """Inputs to differentiate with respect to: a tensor that already requires grad is used
    as it is, so with ``create_graph=True`` the result stays differentiable with respect to
    the caller's tensors (hvp inside a meta-gradient); others become detached leaves."""
    return [t if t.requires_grad else t.detach().requires_grad_(True) for t in items]


def _check_like(vectors, items, name):
    if len(vectors) != len(items):
        raise ValueError(f"{name}: got {len(vectors)} vectors for {len(items)} inputs")
    out = []
    for i, (v, x) in enumerate(zip(vectors, items)):
        v = v if isinstance(v, Tensor) else Tensor(v, dtype=x.dtype, device=x.device)
        if v.shape != x.shape:
            raise ValueError(f"{name}: vector {i} has shape {v.shape}, input {i} has shape {x.shape}")
        out.append(v)
    return out


def _call(f, xs, single):
    return f(xs[0]) if single else f(*xs)


def vjp(f, inputs, v, create_graph=False):
    """(f(inputs), vᵀ J): the vector-Jacobian product of f at inputs."""
    single, items = _as_list(inputs, "vjp")
    xs = _fresh_inputs(items)
    out = _call(f, xs, single)
    grads = grad([out], xs, grad_outputs=[v], create_graph=create_graph, allow_unused=True)
    grads = [zeros_like(x) if g is None else g for g, x in zip(grads, xs)]
    return out, (grads[0] if single else grads)


def hvp(f, inputs, v, create_graph=False):
    """H(inputs) v for a scalar function f, by differentiating (∇f · v).

    ``f`` takes the input tensor(s) as positional arguments and returns a scalar.

    >>> import tinygrad_meta as tgm
    >>> x = tgm.Tensor([1.0, 2.0], dtype="float64")
    >>> tgm.hvp(lambda t: (t ** 3).sum(), x, tgm.Tensor([1.0, 1.0], dtype="float64")).numpy().tolist()
    [6.0, 12.0]
    """
    single, items = _as_list(inputs, "hvp")
    vectors = _check_like([v] if single else list(v), items, "hvp")
    xs = _fresh_inputs(items)
    out = _call(f, xs, single)
    if out.size != 1:
        raise ValueError(f"hvp: f must return a scalar, got shape {out.shape}")
    grads = grad([out], xs, create_graph=True, allow_unused=True)
    pairs = [(g * vec).sum() for g, vec in zip(grads, vectors) if g is not None and g.requires_grad]
    if not pairs:
        result = [zeros_like(x) for x in xs]
    else:
        dot = pairs[0]
        for term in pairs[1:]:
            dot = dot + term
        result = grad([dot], xs, create_graph=create_graph, allow_unused=True)
        result = [zeros_like(x) if r is None else r for r, x in zip(result, xs)]
    return result[0] if single else result


def jvp(f, inputs, v, create_graph=False):
    """(f(inputs), J v) by the double-vjp trick: J v = d/du [uᵀ J]ᵀ v.

    Builds g(u) = uᵀ J with create_graph=True (linear in u), then differentiates
    g(u) · v with respect to the dummy u.
    """
    single, items = _as_list(inputs, "jvp")
    vectors = _check_like([v] if single else list(v), items, "jvp")
    xs = _fresh_inputs(items)
    out = _call(f, xs, single)
    u = zeros_like(out, requires_grad=True)
    grads = grad([out], xs, grad_outputs=[u], create_graph=True, allow_unused=True)
    pairs = [(g * vec).sum() for g, vec in zip(grads, vectors) if g is not None and g.requires_grad]
    if not pairs:
        return out.detach(), zeros_like(out)
    dot = pairs[0]
    for term in pairs[1:]:
        dot = dot + term
    (jv,) = grad([dot], [u], create_graph=create_graph, allow_unused=True)
    return out.detach(), zeros_like(out) if jv is None else jv


def jacobian(f, inputs, create_graph=False):
    """The Jacobian of f at inputs, shape ``f(x).shape + x.shape`` (a list for a list of inputs).

    One vector-Jacobian product per output element.
    """
    single, items = _as_list(inputs, "jacobian")
    xs = _fresh_inputs(items)
    out = _call(f, xs, single)
    xp = out._be.xp
    rows = [[] for _ in xs]
    for flat_index in range(out.size):
        seed = xp.zeros(out.size, dtype=out.dtype)
        seed[flat_index] = 1
        seed = Tensor(seed.reshape(out.shape), dtype=out.dtype, device=out.device)
        grads = grad([out], xs, grad_outputs=[seed], create_graph=True, allow_unused=True) \
            if out.requires_grad else [None] * len(xs)
        for row, g, x in zip(rows, grads, xs):
            row.append(zeros_like(x) if g is None else (g if create_graph else g.detach()))
    result = []
    for row, x in zip(rows, xs):
        if row:
            result.append(stack(row).reshape(out.shape + x.shape))
        else:
            result.append(zeros_like(Tensor(np.zeros(out.shape + x.shape), dtype=x.dtype, device=x.device)))
    return result[0] if single else result


def hessian(f, inputs, create_graph=False):
    """The Hessian of a scalar f, shape ``x.shape + x.shape`` (blocks [i][j] for a list)."""
    single, items = _as_list(inputs, "hessian")

    def gradient(*xs):
        out = f(*xs)
        if out.size != 1:
            raise ValueError(f"hessian: f must return a scalar, got shape {out.shape}")
        grads = grad([out], list(xs), create_graph=True, allow_unused=True)
        return [zeros_like(x) if g is None else g for g, x in zip(grads, xs)]

    if single:
        return jacobian(lambda x: gradient(x)[0], items[0], create_graph=create_graph)
    return [jacobian(lambda *xs, i=i: gradient(*xs)[i], items, create_graph=create_graph)
            for i in range(len(items))]
