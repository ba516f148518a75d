"""Optimizers: differentiable functional steps, and in-place SGD / Adam / AdamW / SGD-HD / Adam-HD.

* ``sgd_step`` and ``adam_step`` (steps.py) are pure functions ``(params, grads, ...) ->
  (new_params, new_state)`` over ordered dicts ``name -> Tensor``, written in Tensor ops
  and never detached: MAML's inner loop, Meta-SGD and hyperparameter optimisation
  differentiate through them, to any order.
* ``SGD``, ``Adam``, ``AdamW`` and the hypergradient optimizers ``SGDHD``, ``AdamHD``
  are the everyday in-place optimizers, all subclasses of ``Optimizer``: ``loss.backward();
  opt.step(); opt.zero_grad()``, or ``opt.step(grads)`` with a dict of gradients.

There is one SGD update and one Adam update (rules.py), written once over an array
namespace like the op table's rules: the functional steps run it on Tensors, the
in-place optimizers on raw flat arrays (no graph, one array op per term).

>>> import tinygrad_meta as tgm
>>> w = tgm.Tensor([1.0, 2.0], requires_grad=True)
>>> new, _ = sgd_step({"w": w}, {"w": tgm.Tensor([1.0, 1.0])}, lr=0.5)
>>> new["w"].numpy().tolist(), new["w"].requires_grad
([0.5, 1.5], True)
"""
from .adam import Adam, AdamW
from .hypergradient import AdamHD, SGDHD
from .optimizer import Optimizer
from .sgd import SGD
from .steps import adam_step, safe_sqrt, sgd_step

__all__ = ["sgd_step", "adam_step", "safe_sqrt", "Optimizer", "SGD", "Adam", "AdamW",
           "SGDHD", "AdamHD"]
