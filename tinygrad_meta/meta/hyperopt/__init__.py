"""Hyperparameter meta-optimization: gradients of a validation loss w.r.t. hyperparameters.

One idea per module:

* hyperparameters.py -- the format: a dict of raw (log / logit) values, one key per kind
  (learning-rate schedule, weight decay per group, momentum, init scale), built by
  :func:`make_hyperparameters`;
* unrolled.py -- :func:`unrolled_hypergradient`: reverse mode through T steps of a
  differentiable optimizer (Maclaurin et al. 2015, Franceschi et al. 2017), exact for
  the run, memory linear in T (``truncate=k`` keeps the last k steps);
* implicit.py -- :func:`implicit_hypergradient`: the implicit function theorem at a
  trained optimum, H⁻¹ by conjugate gradient on Hessian-vector products; no trajectory;
* runner.py -- :class:`HyperOptimizer`: Adam on unrolled hypergradients, with history,
  a progress bar and checkpoint/resume.

Online hypergradient descent (SGD-HD, Adam-HD) is an optimizer: ``tgm.optim``.

>>> import numpy as np, tinygrad_meta as tgm
>>> x = tgm.Tensor(np.linspace(-1, 1, 8), dtype="float64"); y = 3.0 * x
>>> train = lambda p, step: ((p["w"] * x - y) ** 2).mean()
>>> val = lambda p: ((p["w"] * x - y) ** 2).mean()
>>> hyper = make_hyperparameters(steps=5, lr=0.1, tune=("lr-schedule",))
>>> result = unrolled_hypergradient(train, val, {"w": np.array(0.0)}, hyper, steps=5)
>>> result.hypergrads["log_lr"].shape, bool(result.hypergrads["log_lr"].max() < 0)
((5,), True)
"""
from .hyperparameters import (HYPER_KINDS, flatten_hyperparameters, hyperparameter_values,
                              make_hyperparameters, unflatten_hyperparameters)
from .implicit import ImplicitResult, implicit_hypergradient
from .runner import HyperOptimizer
from .unrolled import HypergradientResult, evaluate_hyperparameters, unrolled_hypergradient

__all__ = ["HYPER_KINDS", "make_hyperparameters", "hyperparameter_values",
           "unrolled_hypergradient", "evaluate_hyperparameters", "HypergradientResult",
           "implicit_hypergradient", "ImplicitResult", "HyperOptimizer",
           "flatten_hyperparameters", "unflatten_hyperparameters"]
