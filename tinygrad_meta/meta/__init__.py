"""Meta-learning: MAML (second and first order, ANIL), Meta-SGD, Reptile, all on the one
inner loop of meta/base.py and any ``tgm.nn.Module``; and Prototypical Networks
(metric-based: class prototypes, no inner loop) behind the same training interface.

Each algorithm offers the same training interface: ``meta_parameters()``,
``meta_step(task_batch) -> (loss, grads)``, ``evaluate(task_batch, steps)``,
``state_dict()`` / ``load_state_dict()``; ``tgm.optim`` steps the meta-parameters.
"""
from .base import MetaLearner
from .maml import MAML
from .metasgd import MetaSGD
from .protonet import ProtoNet
from .reptile import Reptile

ALGORITHMS = {"maml": MAML, "metasgd": MetaSGD, "reptile": Reptile, "protonet": ProtoNet}

__all__ = ["MAML", "MetaSGD", "Reptile", "ProtoNet", "MetaLearner", "ALGORITHMS"]
