"""``Optimizer``: the base of every in-place optimizer (SGD, Adam, AdamW, SGD-HD, Adam-HD).

It holds the parameters, takes the gradients through the one gradient check
(``checked_gradients``), and runs the subclass's update (one of the rules in rules.py)
on raw arrays: the parameters that share a device and dtype are updated as ONE flat
array, so each formula term is one array op over all of them (like torch's foreach
optimizers), not one per parameter. Step state (momentum buffers, Adam's moments) is
kept flat too, and ``state_dict()`` writes it per parameter as plain numpy arrays.

>>> import tinygrad_meta as tgm
>>> from tinygrad_meta.optim import SGD
>>> w = tgm.Tensor([1.0, -1.0], requires_grad=True)
>>> opt = SGD([w], lr=0.25)
>>> (w * w).sum().backward(); opt.step(); opt.zero_grad(); w.numpy().tolist()
[0.5, -0.5]
"""
from __future__ import annotations

import numbers
from collections import OrderedDict

import numpy as np

from ..gradient_checks import checked_gradients
from ..tensor import Tensor

__all__ = ["Optimizer"]


def _named_parameters(params, caller):
    """``params`` as a list of (name, Tensor): a dict name -> Tensor, an iterable of
    (name, Tensor) pairs (``named_parameters()``), or of Tensors (named "0", "1", ...)."""
    if isinstance(params, dict):
        items = list(params.items())
    else:
        items = list(params)
        if all(isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
               for item in items):
            items = [(name, p) for name, p in items]
        else:
            items = [(str(i), p) for i, p in enumerate(items)]
    if not items:
        raise ValueError(f"{caller}: got an empty parameter list")
    seen = {}
    for name, p in items:
        if not isinstance(p, Tensor):
            raise TypeError(f"{caller}: parameter {name!r} is a {type(p).__name__}, expected a Tensor")
        if p.dtype.kind != "f":
            raise TypeError(f"{caller}: parameter {name!r} has dtype {p.dtype}; it must be floating")
        if id(p) in seen:
            raise ValueError(f"{caller}: parameters {seen[id(p)]!r} and {name!r} are the same "
                             "Tensor; each would be stepped twice")
        seen[id(p)] = name
    return items


class _Bucket:
    """Parameters on one backend with one dtype, laid end to end in one flat array."""

    def __init__(self, names, params):
        self.names = names
        self.tensors = [params[n] for n in names]
        self.shapes = [t.shape for t in self.tensors]
        bounds = np.cumsum([0] + [t.size for t in self.tensors])
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.be = self.tensors[0]._be
        self.dtype = self.tensors[0]._data.dtype

    def flatten(self, arrays):
        if len(arrays) == 1:
            return arrays[0].reshape(-1)
        return self.be.xp.concatenate([a.reshape(-1) for a in arrays])

    def split(self, flat):
        """Views of ``flat``, one per parameter, in its shape."""
        return [flat[s].reshape(shape) for s, shape in zip(self.slices, self.shapes)]


class Optimizer:
    """Base of the in-place optimizers.

    ``params``: a dict name -> Tensor (``model.parameter_dict()``), ``named_parameters()``,
    or an iterable of Tensors (``model.parameters()``; named "0", "1", ...). Subclasses set
    ``_hyper_names`` (floats saved as ``hyper.<name>``) and ``_state_names`` (per-parameter
    step state, saved as ``<state>.<param>``) and implement ``_update(param, grad, state)``
    on flat raw arrays, returning ``(new_param, direction)`` and storing their step state
    in the dict ``state``. Example: see the module docstring.
    """
    _hyper_names = ()
    _state_names = ()

    def __init__(self, params):
        self.params = OrderedDict(_named_parameters(params, type(self).__name__))
        layouts = OrderedDict()
        for name, p in self.params.items():
            layouts.setdefault((id(p._be), p._data.dtype), []).append(name)
        self._buckets = [_Bucket(names, self.params) for names in layouts.values()]
        self._bucket_state = [{} for _ in self._buckets]

    def _check_hyper(self, label, value, low=0.0, high=None):
        """``value`` as a float in [low, high) (high=None: no upper bound), else a ValueError."""
        ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and value >= low \
            and (high is None or value < high)
        if not ok:
            bound = f">= {low:g}" if high is None else f"in [{low:g}, {high:g})"
            raise ValueError(f"{type(self).__name__}: {label} must be a number {bound}, got {value!r}")
        return float(value)

    def zero_grad(self):
        """Forget the accumulated ``.grad`` of every parameter."""
        for p in self.params.values():
            p.grad = None

    def step(self, grads=None):
        """Update every parameter in place. ``grads``: dict name -> Tensor (or array), or
        None to use each parameter's ``.grad``. Records no graph."""
        grads = checked_gradients(self.params, grads, f"{type(self).__name__}.step",
                                  use_dot_grad=True)
        flat_grads = [bucket.flatten([grads[n]._data for n in bucket.names])
                      for bucket in self._buckets]
        self._begin_step(flat_grads)
        for bucket, g, state in zip(self._buckets, flat_grads, self._bucket_state):
            flat = bucket.flatten([p._data for p in bucket.tensors])
            new, direction = self._update(flat, g, state)
            self._end_update(state, direction, g)
            new = new.astype(bucket.dtype, copy=False)
            for p, value in zip(bucket.tensors, bucket.split(new)):
                p.data = value

    def _begin_step(self, flat_grads):
        """Called with every bucket's flat gradient before any parameter moves."""

    def _end_update(self, state, direction, grad):
        """Called after a bucket's update with the direction its learning rate scaled."""

    def _update(self, param, grad, state):
        raise NotImplementedError(f"{type(self).__name__} does not implement _update")

    # ---- checkpointing --------------------------------------------------------
    def state_dict(self):
        """Hyperparameters and step state as plain numbers and numpy arrays.

        Keys: ``"hyper.<name>"`` for each hyperparameter, ``"<state>.<param>"`` for each
        parameter's step state (e.g. ``"m.layers.0.weight"``) and subclass entries such
        as ``"step"``; saveable with ``np.savez(path, **sd)`` (no pickling needed).
        """
        out = {f"hyper.{name}": np.asarray(getattr(self, name), dtype=np.float64)
               for name in self._hyper_names}
        out.update(self._extra_state())
        for bucket, state in zip(self._buckets, self._bucket_state):
            for key in self._state_names:
                if key in state:
                    for name, view in zip(bucket.names, bucket.split(state[key])):
                        out[f"{key}.{name}"] = np.array(bucket.be.to_numpy(view))
        return out

    def load_state_dict(self, state_dict):
        """Restore what ``state_dict()`` returned (values may be 0-d arrays, as from np.load)."""
        caller = f"{type(self).__name__}.load_state_dict"
        sd = dict(state_dict)
        for name in self._hyper_names:
            key = f"hyper.{name}"
            if key not in sd:
                raise KeyError(f"{caller}: missing {key!r}")
            value = np.asarray(sd.pop(key))
            current = np.asarray(getattr(self, name))
            if value.shape != current.shape:
                raise ValueError(f"{caller}: {key!r} has shape {value.shape}, expected {current.shape}")
            setattr(self, name, tuple(float(x) for x in value) if value.ndim else float(value))
        self._load_extra_state(sd)
        per_parameter = {key: {} for key in self._state_names}
        for key in list(sd):
            prefix, _, name = key.partition(".")
            if prefix not in per_parameter:
                raise KeyError(f"{caller}: unexpected key {key!r}")
            p = self.params.get(name)
            if p is None:
                raise KeyError(f"{caller}: {key!r} names no parameter")
            value = np.asarray(sd.pop(key))
            if value.shape != p.shape:
                raise ValueError(f"{caller}: {key!r} has shape {value.shape}, the parameter has "
                                 f"shape {p.shape}")
            per_parameter[prefix][name] = value
        self._bucket_state = [{} for _ in self._buckets]
        for key, values in per_parameter.items():
            if not values:
                continue
            missing = [n for n in self.params if n not in values]
            if missing:
                raise KeyError(f"{caller}: no {key!r} state for parameters {missing}")
            for bucket, state in zip(self._buckets, self._bucket_state):
                arrays = [bucket.be.asarray(values[n].astype(bucket.dtype)) for n in bucket.names]
                state[key] = bucket.flatten(arrays)
        self._check_loaded_state(caller)

    def _extra_state(self):
        return {}

    def _load_extra_state(self, sd):
        """Pop this class's own (non per-parameter) entries from ``sd``."""

    def _check_loaded_state(self, caller):
        """Raise if the loaded per-parameter state is inconsistent with the extra state."""

    def __repr__(self):
        hypers = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._hyper_names)
        return f"{type(self).__name__}({len(self.params)} parameters, {hypers})"
