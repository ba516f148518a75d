"""Implicit hypergradients: the implicit function theorem at a trained optimum.

At θ*(λ) with ∂L_train/∂θ = 0, dL_val/dλ = -∂²L_train/∂λ∂θ · H⁻¹ ∂L_val/∂θ, with H⁻¹
applied by conjugate gradient (``derivatives.conjugate_gradient``) on Hessian-vector
products (``tgm.hvp``). No trajectory is stored, so memory does not depend on how long
training ran. Example: see :func:`implicit_hypergradient`.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ...autograd import grad
from ...derivatives import conjugate_gradient, hvp
from ...tensor import Tensor
from .hyperparameters import flatten_hyperparameters, scalar_loss

__all__ = ["implicit_hypergradient", "ImplicitResult"]


@dataclass
class ImplicitResult:
    """What :func:`implicit_hypergradient` returns: ``hypergrads`` (numpy, per key),
    ``val_loss`` (float), CG ``iterations``, final relative ``residual``, ``converged``."""
    hypergrads: dict
    val_loss: float
    iterations: int
    residual: float
    converged: bool


def implicit_hypergradient(train_loss, val_loss, params, hyperparams, damping=0.0, cg_iters=100,
                           tol=1e-10) -> ImplicitResult:
    """Hypergradient at a (near) optimum of the training loss, by the implicit function theorem.

    At θ* with ∂L_train/∂θ(θ*, λ) = 0, dθ*/dλ = -H⁻¹ ∂²L_train/∂θ∂λ, so
    dL_val/dλ = -∂²L_train/∂λ∂θ · v with v = H⁻¹ ∂L_val/∂θ (H the training Hessian).
    v is found by conjugate gradient on Hessian-vector products (``tgm.hvp``), and the
    mixed term by differentiating (∂L_train/∂θ · v) w.r.t. λ; no training trajectory
    is needed, only the end point.

    ``train_loss(params, hyperparams) -> scalar``: the training objective, in which the
    hyperparameters appear (e.g. a penalty exp(λ)·||θ||²/2). ``val_loss(params)``.
    ``params``: dict name -> Tensor, the trained (converged) parameters.
    ``hyperparams``: dict name -> Tensor requiring grad (nested one level allowed).
    ``damping``: solve (H + damping·I) v = ∂L_val/∂θ instead, which regularises a
    singular or indefinite H (biasing the result). CG stops when the residual is below
    ``tol`` relative to ∂L_val/∂θ, or after ``cg_iters`` iterations, then warns
    (RuntimeWarning) that the result is approximate.

    The answer is exact only at an exact optimum; away from it the error is of the
    order of the remaining training gradient.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> x = tgm.Tensor(np.array([1.0, 2.0]), dtype="float64")
    >>> lam = {"log_wd": tgm.Tensor(0.0, dtype="float64", requires_grad=True)}
    >>> train = lambda p, h: ((p["w"] * x - x) ** 2).sum() / 2 + h["log_wd"].exp() * (p["w"] ** 2) / 2
    >>> w_star = 5.0 / 6.0   # argmin: (sum x^2) w / (sum x^2 + 1)
    >>> res = implicit_hypergradient(train, lambda p: (p["w"] - 1.0) ** 2,
    ...                              {"w": tgm.Tensor(w_star, dtype="float64")}, lam)
    >>> round(float(res.hypergrads["log_wd"]), 6)  # d/dλ (5/(5+e^λ) - 1)^2 at λ=0
    0.046296
    """
    caller = "implicit_hypergradient"
    if not isinstance(params, dict) or not params:
        raise TypeError(f"{caller}: params must be a non-empty dict name -> Tensor")
    if damping < 0:
        raise ValueError(f"{caller}: damping must be >= 0, got {damping}")
    if cg_iters < 1:
        raise ValueError(f"{caller}: cg_iters must be >= 1, got {cg_iters}")
    flat = flatten_hyperparameters(hyperparams)
    for key, value in flat.items():
        if not isinstance(value, Tensor) or not value.requires_grad:
            raise ValueError(f"{caller}: hyperparameter {key!r} must be a Tensor that requires grad")
    names = list(params)
    theta = [params[n].detach().requires_grad_(True) for n in names]

    def as_dict(tensors):
        return OrderedDict(zip(names, tensors))

    val = scalar_loss(val_loss(as_dict(theta)), "val_loss", caller)
    val_grads = grad(val, theta, allow_unused=True)
    b = [t._be.xp.zeros(t.shape, dtype=t.data.dtype) if g is None else g.data
         for g, t in zip(val_grads, theta)]

    # the same structure as given, detached: H is taken at fixed hyperparameters
    fixed_hyper = OrderedDict(
        (k, OrderedDict((g, t.detach()) for g, t in v.items()) if isinstance(v, dict) else v.detach())
        for k, v in hyperparams.items())

    def train_of_theta(*tensors):
        return scalar_loss(train_loss(as_dict(list(tensors)), fixed_hyper), "train_loss", caller)

    def apply(vector):
        hv = _hvp_list(train_of_theta, theta, vector)
        if damping:
            hv = [h + damping * v for h, v in zip(hv, vector)]
        return hv

    # v = (H + damping I)⁻¹ b, by conjugate gradient on raw arrays
    solved = conjugate_gradient(apply, b, tol=tol, max_iters=cg_iters)
    v, iterations, residual, converged = solved.solution, solved.iterations, solved.residual, solved.converged
    if solved.curvature <= 0:
        warnings.warn(
            f"{caller}: the training Hessian is not positive definite along a CG direction "
            f"(pᵀHp = {solved.curvature:.3g}); increase damping", RuntimeWarning, stacklevel=2)
    elif not converged:
        warnings.warn(
            f"{caller}: conjugate gradient did not converge in {iterations} iterations "
            f"(relative residual {residual:.3g} > tol {tol:g}); the hypergradient is approximate. "
            "Raise cg_iters, or add damping for an ill-conditioned Hessian", RuntimeWarning, stacklevel=2)

    # mixed term: d/dλ (∂L_train/∂θ · v), with v held constant
    keys = list(flat)
    loss = scalar_loss(train_loss(as_dict(theta), hyperparams), "train_loss", caller)
    train_grads = grad(loss, theta, create_graph=True, allow_unused=True)
    dot = None
    for g, vec, t in zip(train_grads, v, theta):
        if g is None or not g.requires_grad:
            continue
        term = (g * Tensor(vec, dtype=t.dtype, device=t.device)).sum()
        dot = term if dot is None else dot + term
    mixed = grad(dot, [flat[k] for k in keys], allow_unused=True) if dot is not None else [None] * len(keys)
    flat_grads = OrderedDict()
    for key, m in zip(keys, mixed):
        if m is None:
            raise ValueError(f"{caller}: hyperparameter {key!r} does not affect the training "
                             "gradient, so it cannot move the optimum or the validation loss")
        flat_grads[key] = -np.array(m.numpy())
    # shaped like the input: nested groups stay nested, flat keys stay flat
    hypergrads = OrderedDict(
        (k, OrderedDict((g, flat_grads[f"{k}/{g}"]) for g in v) if isinstance(v, dict) else flat_grads[k])
        for k, v in hyperparams.items())
    return ImplicitResult(hypergrads, float(val.item()), iterations, residual, converged)


def _hvp_list(f, theta, vector):
    dtype = theta[0].dtype
    result = hvp(f, [t.detach() for t in theta],
                 [Tensor(x, dtype=dtype, device=t.device) for x, t in zip(vector, theta)])
    return [r.data.copy() for r in result]  # raw arrays, on the parameters' device
