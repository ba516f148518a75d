"""Hessian-vector products, Jacobian-vector products, Jacobians and Hessians, and the
conjugate-gradient solver that inverts a Hessian through its products.

All the derivatives are built from ``grad(..., create_graph=True)``: reverse mode over
reverse mode. ``inputs`` may be one Tensor (results are Tensors) or a list of
Tensors (results are lists).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from .autograd import grad
from .tensor import Tensor, stack, zeros_like

__all__ = ["hvp", "jvp", "jacobian", "hessian", "vjp", "conjugate_gradient", "CGResult"]


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


# f -> its compiled HVP (hvp(..., compile=True)); weak, so a dropped f frees its programs
_COMPILED_HVPS = weakref.WeakKeyDictionary()


def hvp(f, inputs, v, create_graph=False, compile=False):
    """H(inputs) v for a scalar function f, by differentiating (∇f · v).

    ``f`` takes the input tensor(s) as positional arguments and returns a scalar.
    ``compile=True``: run through ``tgm.compile`` (traced once per shape, one program per
    ``f``, then replayed as flat array calls; the same numbers). ``f`` must then be an
    array program of its inputs (what it reads from its closure is read again only when
    it is a Tensor), and the result carries no graph (no ``create_graph``).

    >>> import tinygrad_meta as tgm
    >>> x = tgm.Tensor([1.0, 2.0], dtype="float64")
    >>> tgm.hvp(lambda t: (t ** 3).sum(), x, tgm.Tensor([1.0, 1.0], dtype="float64")).numpy().tolist()
    [6.0, 12.0]
    """
    if compile:
        if create_graph:
            raise ValueError("hvp: compile=True gives results without a graph; it cannot be "
                             "combined with create_graph=True")
        compiled = _COMPILED_HVPS.get(f)
        if compiled is None:
            from .compile import compile as compile_function
            compiled = _COMPILED_HVPS[f] = compile_function(lambda x, u: hvp(f, x, u))
        return compiled(inputs, v)
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


@dataclass
class CGResult:
    """What :func:`conjugate_gradient` returns: the ``solution`` (shaped like ``b``), the
    ``iterations`` taken, the final relative ``residual`` ||b - A x|| / ||b||, whether it
    ``converged`` (residual <= tol), and ``curvature``: the smallest pᵀAp seen, which is
    <= 0 when A is not positive definite along some direction (CG then stops)."""
    solution: object
    iterations: int
    residual: float
    converged: bool
    curvature: float


def conjugate_gradient(matvec, b, tol=1e-10, max_iters=100):
    """Solve A x = b for a symmetric positive definite A given only ``matvec(v) = A v``.

    ``b``: a raw array, or a list of arrays (one per parameter: A acts on all of them
    together, as a Hessian-vector product does); ``matvec`` maps that structure to the
    same structure (e.g. ``lambda v: tgm.hvp(f, x, v)`` on arrays). Starts from x = 0 and
    stops when ||b - A x|| <= ``tol`` · ||b||, after ``max_iters`` iterations, or when a
    search direction has curvature pᵀAp <= 0 (A not positive definite; add damping, i.e.
    solve with A + λI). Exact for an n-dimensional SPD A in at most n iterations (in exact
    arithmetic). Returns a :class:`CGResult`; it never warns, the caller decides.

    >>> import numpy as np
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> result = conjugate_gradient(lambda v: A @ v, np.array([1.0, 2.0]))
    >>> np.round(result.solution, 6).tolist(), result.iterations, result.converged
    ([0.090909, 0.636364], 2, True)
    """
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"conjugate_gradient: max_iters must be an integer >= 1, got {max_iters!r}")
    single = not isinstance(b, (list, tuple))
    b = [b] if single else list(b)

    def apply(vectors):
        out = matvec(vectors[0]) if single else matvec(vectors)
        out = [out] if single else list(out)
        if len(out) != len(vectors) or any(o.shape != v.shape for o, v in zip(out, vectors)):
            raise ValueError("conjugate_gradient: matvec must return arrays shaped like its input, "
                             f"got {[o.shape for o in out]} for {[v.shape for v in vectors]}")
        return out

    x = [v * 0 for v in b]
    r = [v.copy() for v in b]
    p = [v.copy() for v in r]
    b_norm = math.sqrt(_dot(b, b))
    rr = _dot(r, r)
    iterations, converged, curvature = 0, b_norm == 0.0, math.inf
    while not converged and iterations < max_iters:
        ap = apply(p)
        pap = _dot(p, ap)
        curvature = min(curvature, pap)
        if pap <= 0:
            break
        alpha = rr / pap
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * api for ri, api in zip(r, ap)]
        rr_new = _dot(r, r)
        iterations += 1
        converged = math.sqrt(rr_new) <= tol * b_norm
        p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p)]
        rr = rr_new
    residual = math.sqrt(rr) / b_norm if b_norm else 0.0
    return CGResult(x[0] if single else x, iterations, residual, converged, curvature)


def _dot(xs, ys):
    return sum(float((x * y).sum()) for x, y in zip(xs, ys))
