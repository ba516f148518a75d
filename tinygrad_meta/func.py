"""Function transforms over modules, as ``torch.func``: run a module on given parameters.

>>> import numpy as np, tinygrad_meta as tgm
>>> model = tgm.nn.Linear(2, 1, rng=np.random.default_rng(0))
>>> fast = {"weight": tgm.Tensor([[1.0, 2.0]]), "bias": tgm.Tensor([0.5])}
>>> tgm.func.functional_call(model, fast, tgm.Tensor([[1.0, 1.0]])).numpy().tolist()
[[3.5]]
"""
from __future__ import annotations

from .nn import Module, _Substituted

__all__ = ["functional_call"]


def functional_call(module, params, args, kwargs=None, *, strict=False):
    """``module(*args, **kwargs)`` with its parameters replaced by ``params``, the module unchanged.

    ``module``: any ``tgm.nn.Module`` (its forward written the ordinary way, reading
    ``self.weight`` and calling submodules). ``params``: a mapping name -> Tensor, names
    as in ``module.named_parameters()`` ("layers.0.weight"); parameters it leaves out keep
    their own values unless ``strict=True``, and a name the module does not have is a
    KeyError. ``args``: one argument or a tuple of them (as ``torch.func.functional_call``).
    Returns what forward returns; gradients flow to the Tensors in ``params``.

    The replacement is seen by this thread only and undone when the call returns or
    raises, so calls nest and two threads may run one module on different parameters.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> mlp = tgm.nn.MLP([1, 3, 1], rng=np.random.default_rng(0))
    >>> zeros = {n: tgm.zeros(p.shape) for n, p in mlp.named_parameters()}
    >>> functional_call(mlp, zeros, tgm.Tensor([[2.0]])).numpy().tolist()
    [[0.0]]
    """
    if not isinstance(module, Module):
        raise TypeError(f"functional_call: module must be a tgm.nn.Module, got {type(module).__name__}")
    if not hasattr(params, "items"):
        raise TypeError(f"functional_call: params must be a mapping name -> Tensor, got "
                        f"{type(params).__name__}")
    if not isinstance(args, tuple):
        args = (args,)
    with _Substituted(module, params, strict):
        return module(*args, **(kwargs or {}))
