"""Neural-network modules, PyTorch-style: parameters and submodules are attributes and
``forward(self, x)`` uses them.

>>> import numpy as np, tinygrad_meta as tgm
>>> class Net(tgm.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.body = tgm.nn.Linear(1, 8, rng=np.random.default_rng(0))
...         self.scale = tgm.Tensor(np.ones(8), requires_grad=True)
...     def forward(self, x):
...         return (self.body(x) * self.scale).relu().sum(axis=-1, keepdims=True)
>>> net = Net()
>>> [name for name, _ in net.named_parameters()]
['scale', 'body.weight', 'body.bias']
>>> net(tgm.Tensor(np.zeros((5, 1)))).shape
(5, 1)

Any module runs on parameters other than its own, unchanged:
``tgm.func.functional_call(module, params, x)`` (params: name -> Tensor, names as in
``named_parameters()``). That is what MAML and its relatives need: the inner loop
computes "fast weights" and runs the same model on them. Parameters are ordinary
attributes (registered in ``_parameters`` too); a functional call swaps the given
Tensors into the owning modules' attributes for its duration and puts the module's own
back afterwards, as ``torch.func.functional_call`` does, so forward runs at full speed.

Linear layers use PyTorch's layout: weight (out_features, in_features) and
``y = x @ weight.T + bias``. ``nn.MLP`` and ``nn.Linear`` (and ``Sequential`` /
``ModuleList`` stacks of them with the activation modules) also accept fast weights with
a leading task axis (weight (T, out, in), bias (T, out), x (T, K, in)): every task runs
in one batched matmul. ``batches_over_tasks(module)`` says whether a module is one of these.

Layers for images (``Conv2d``, ``MaxPool2d``, ``AvgPool2d``, ``BatchNorm2d``, ``LayerNorm``)
and the 4-block Omniglot network (``omniglot_convnet``) live in image_layers.py and are
part of this namespace. State that is not a parameter (BatchNorm's running statistics) is
a buffer (``register_buffer``, ``named_buffers()``): ``state_dict()`` saves it,
``load_state_dict()`` restores it, no optimizer touches it.
"""
from __future__ import annotations

import inspect
import json
import threading
import weakref
from collections import OrderedDict

import numpy as np

from . import functional as F
from .backends import get_backend
from .tensor import Tensor

__all__ = ["Module", "Linear", "MLP", "Sequential", "ModuleList", "ReLU", "Tanh", "Sigmoid",
           "Identity", "Flatten", "Dropout", "batches_over_tasks", "load_parameters"]


def load_parameters(params, state_dict, caller):
    """Copy ``state_dict`` (name -> array or Tensor) into the tensors of ``params`` in place.

    All or nothing: every name must be present, no extra names are allowed and every
    shape must match, or nothing is written and a KeyError/ValueError names the problem.
    Values are cast to each parameter's dtype and kept on its device.
    """
    missing = [name for name in params if name not in state_dict]
    unexpected = [name for name in state_dict if name not in params]
    if missing or unexpected:
        raise KeyError(f"{caller}: missing parameters {missing}, unexpected names {unexpected}")
    new_data = {}
    for name, p in params.items():
        value = state_dict[name]
        array = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
        if array.shape != p.shape:
            hint = ""
            if array.ndim == 2 and array.shape == p.shape[::-1] and name.endswith("weight"):
                hint = (" (the transpose: Linear weights are (out_features, in_features), "
                        "PyTorch's layout; state saved before that change stored (in, out))")
            raise ValueError(f"{caller}: {name!r} has shape {array.shape}, the parameter has "
                             f"shape {p.shape}{hint}")
        new_data[name] = p._be.asarray(np.array(array, dtype=p.dtype))
    for name, p in params.items():
        p.data = new_data[name]


# bumped whenever a parameter or submodule is (re)assigned anywhere, so a module's cached
# parameter list and name -> (owner, attribute) map are rebuilt only after its structure
# may have changed
_STRUCTURE = [0]


class Module:
    """Base class, as ``torch.nn.Module``: assigning a Tensor that requires grad to an
    attribute registers a parameter; assigning a Module registers a submodule.

    Subclasses implement ``forward(self, *args)``; ``module(x)`` calls it. Parameters:
    ``parameters()`` (Tensors), ``named_parameters()`` ((name, Tensor) pairs, dotted names
    such as "layers.0.weight"), ``parameter_dict()`` (the ordered dict of both, the
    functional API's form). ``train()`` / ``eval()`` set ``.training`` on every submodule.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        d = self.__dict__
        if "_parameters" not in d:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning "
                               f"attribute {name!r}")
        buffers = d.get("_buffers")
        if buffers is not None and name in buffers:
            if value is not None and (not isinstance(value, Tensor) or value.requires_grad):
                raise TypeError(f"{type(self).__name__}: {name!r} is a buffer; assign a Tensor "
                                f"that does not require grad (or None), got {type(value).__name__}")
            buffers[name] = value
            object.__setattr__(self, name, value)
            return
        registered = name in d["_parameters"] or name in d["_modules"]
        d["_parameters"].pop(name, None)
        d["_modules"].pop(name, None)
        if isinstance(value, Tensor) and value.requires_grad:
            d["_parameters"][name] = value
            _STRUCTURE[0] += 1
        elif isinstance(value, Module):
            d["_modules"][name] = value
            _STRUCTURE[0] += 1
        elif registered:
            _STRUCTURE[0] += 1
        # the attribute itself is an ordinary one (fast to read in forward); the registries
        # above are what parameters() and functional_call go by
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        d = self.__dict__
        if d["_parameters"].pop(name, None) is not None or d["_modules"].pop(name, None) is not None:
            _STRUCTURE[0] += 1
        object.__delattr__(self, name)

    # ---- parameters and submodules ------------------------------------------------
    def named_modules(self, prefix=""):
        """Yield (dotted name, module) for this module ("") and every submodule, depth first."""
        stack = [(prefix, self)]
        seen = set()
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{child}" if name else child, sub)
                        for child, sub in module._modules.items()]
            stack.extend(reversed(children))

    def modules(self):
        """Yield this module and every submodule."""
        for _, module in self.named_modules():
            yield module

    def named_children(self):
        """Yield (attribute name, module) for the direct submodules."""
        yield from self._modules.items()

    def children(self):
        yield from self._modules.values()

    def _named_parameter_list(self):
        """((dotted name, Tensor), ...), cached until a parameter or submodule is reassigned
        (meta-learners ask for it several times a step)."""
        cached = self.__dict__.get("_parameters_cache")
        if cached is not None and cached[0] == _STRUCTURE[0]:
            return cached[1]
        seen, pairs = set(), []
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:  # a shared parameter is listed once, as in PyTorch
                    seen.add(id(p))
                    pairs.append(((f"{prefix}.{name}" if prefix else name), p))
        pairs = tuple(pairs)
        object.__setattr__(self, "_parameters_cache", (_STRUCTURE[0], pairs))
        return pairs

    def named_parameters(self):
        """Yield (dotted name, Tensor): own parameters in registration order, then each
        submodule's, prefixed with its attribute name ("layers.0.weight")."""
        yield from self._named_parameter_list()

    def parameters(self):
        """Yield every parameter Tensor, in ``named_parameters()`` order."""
        for _, p in self._named_parameter_list():
            yield p

    def parameter_dict(self):
        """OrderedDict name -> Tensor of every parameter (the functional API's form)."""
        return OrderedDict(self._named_parameter_list())

    def num_parameters(self):
        """Total number of scalar parameters."""
        return int(sum(p.size for p in self.parameters()))

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ---- buffers: state that is not a parameter (BatchNorm's running statistics) ----------
    def register_buffer(self, name, tensor):
        """Register ``tensor`` (a Tensor that does not require grad, or None) as the buffer
        ``name``: an attribute that ``state_dict()`` saves and ``load_state_dict()``
        restores, that ``to(device)`` moves, but that no optimizer or meta-learner updates
        (as ``torch.nn.Module.register_buffer``)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"register_buffer: name must be an identifier, got {name!r}")
        if name in self._parameters or name in self._modules:
            raise KeyError(f"register_buffer: {name!r} is already a parameter or submodule of "
                           f"{type(self).__name__}")
        if tensor is not None and (not isinstance(tensor, Tensor) or tensor.requires_grad):
            raise TypeError(f"register_buffer: {name!r} must be a Tensor that does not require "
                            f"grad, or None; got {type(tensor).__name__}")
        self._buffers[name] = tensor
        object.__setattr__(self, name, tensor)

    def named_buffers(self):
        """Yield (dotted name, Tensor) for every buffer of this module and its submodules
        (None entries skipped), e.g. "blocks.0.1.running_mean"."""
        for prefix, module in self.named_modules():
            for name, tensor in module.__dict__.get("_buffers", {}).items():
                if tensor is not None:
                    yield (f"{prefix}.{name}" if prefix else name), tensor

    def buffers(self):
        """Yield every buffer Tensor, in ``named_buffers()`` order."""
        for _, tensor in self.named_buffers():
            yield tensor

    def _parameter_owners(self):
        """name -> (owning module, attribute name) for every parameter (cached)."""
        cached = self.__dict__.get("_owners_cache")
        if cached is not None and cached[0] == _STRUCTURE[0]:
            return cached[1]
        owners = {}
        for prefix, module in self.named_modules():
            for attribute in module._parameters:
                owners[f"{prefix}.{attribute}" if prefix else attribute] = (module, attribute)
        object.__setattr__(self, "_owners_cache", (_STRUCTURE[0], owners))
        return owners

    def _set_parameter(self, dotted, tensor):
        module, attribute = self._parameter_owners()[dotted]
        setattr(module, attribute, tensor)

    # ---- modes ----------------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode (``.training``) on this module and every submodule; returns self."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode (``train(False)``): Dropout passes inputs through; returns self."""
        return self.train(False)

    # ---- calling ----------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if "params" in kwargs and not _forward_takes_params(type(self)):
            raise TypeError(f"{type(self).__name__}: module(x, params=...) is gone; run a module on "
                            "given parameters with tgm.func.functional_call(module, params, x)")
        return self.forward(*args, **kwargs)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward(self, x)")

    # ---- state ----------------------------------------------------------------------
    def _extra_state(self):
        """name -> numpy array of this module's non-parameter state to checkpoint (Dropout's
        generator); modules with such state override this and ``_load_extra_state``."""
        return {}

    def _load_extra_state(self, state, check_only=False):
        """Restore (or, with ``check_only``, only validate) what ``_extra_state`` returned;
        a ValueError names what is wrong."""

    def _extra_state_items(self):
        """(full name, module, name, numpy value) of every buffer, then of every other
        non-parameter state entry: what a state dict holds besides the parameters."""
        for prefix, module in self.named_modules():
            for name, tensor in module.__dict__.get("_buffers", {}).items():
                if tensor is not None:
                    yield (f"{prefix}.{name}" if prefix else name), module, name, np.array(tensor.numpy())
            for name, value in module._extra_state().items():
                yield (f"{prefix}.{name}" if prefix else name), module, name, value

    def _load_state_entry(self, name, value, check_only=False):
        """Restore one non-parameter entry: a buffer (shape checked, cast to its dtype, kept
        on its device) or the module's own extra state."""
        buffer = self.__dict__.get("_buffers", {}).get(name)
        if buffer is None:
            self._load_extra_state({name: value}, check_only=check_only)
            return
        if value.shape != buffer.shape:
            raise ValueError(f"{type(self).__name__}.load_state_dict: buffer {name!r} has shape "
                             f"{buffer.shape}, the saved value {value.shape}")
        if not check_only:
            buffer.data = buffer._be.asarray(np.array(value, dtype=buffer.dtype))

    def _check_extra_state(self, state_dict, caller):
        """The extra-state entries of ``state_dict`` as {full name: (module, name, value)},
        every one present and valid, or a KeyError/ValueError naming the problem."""
        found = {}
        for full, module, name, _ in self._extra_state_items():
            if full not in state_dict:
                raise KeyError(f"{caller}: missing entry {full!r}")
            value = np.asarray(state_dict[full])
            module._load_state_entry(name, value, check_only=True)
            found[full] = (module, name, value)
        return found

    @staticmethod
    def _restore_extra_state(checked):
        for module, name, value in checked.values():
            module._load_state_entry(name, value)

    def state_dict(self):
        """OrderedDict name -> numpy array (a copy) of every parameter, then the buffers
        (BatchNorm's running statistics) and any other state of the submodules (a
        Dropout's random generator, as "<name>.rng_state")."""
        out = OrderedDict((name, np.array(p.numpy())) for name, p in self.named_parameters())
        for full, _, _, value in self._extra_state_items():
            out[full] = value
        return out

    def load_state_dict(self, state_dict):
        """Copy values from a mapping name -> array or Tensor into the parameters (in place),
        and restore buffers and extra state (random generators) the same way.

        Every entry must be present, no extra names are allowed, and shapes must match
        exactly; nothing is written unless everything does. Values are cast to each
        parameter's dtype and kept on its device.
        """
        caller = f"{type(self).__name__}.load_state_dict"
        extra = self._check_extra_state(state_dict, caller)
        load_parameters(self.parameter_dict(),
                        {k: v for k, v in state_dict.items() if k not in extra}, caller)
        self._restore_extra_state(extra)
        return self

    def to(self, device):
        """Move every parameter and buffer to ``device`` ("cpu" or "cuda"); returns self.

        The parameters become new leaf tensors (an optimizer built before must be rebuilt).
        """
        backend = get_backend(device)
        for name, p in self.parameter_dict().items():
            if p._be is not backend:
                moved = p.detach().to(device).requires_grad_(True)
                self._set_parameter(name, moved)
        for module in self.modules():
            for name, tensor in module.__dict__.get("_buffers", {}).items():
                if tensor is not None and tensor._be is not backend:
                    setattr(module, name, tensor.to(device))
        return self

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, module in self._modules.items():
            lines.append(f"  ({name}): " + repr(module).replace("\n", "\n  "))
        return "\n".join(lines) + "\n)" if len(lines) > 1 else lines[0] + ")"


_TAKES_PARAMS = {}


def _forward_takes_params(cls):
    """Whether ``cls.forward`` has a ``params`` argument of its own (cached per class)."""
    known = _TAKES_PARAMS.get(cls)
    if known is None:
        try:
            known = "params" in inspect.signature(cls.forward).parameters
        except (TypeError, ValueError):
            known = False
        _TAKES_PARAMS[cls] = known
    return known


class _Substituted:
    """Context manager: inside, ``module``'s parameter attributes are the Tensors of
    ``params`` (name -> Tensor, names as in ``named_parameters()``); the module's own are put
    back on exit, exceptions included. What ``func.functional_call`` runs in.

    The attributes are swapped in place, as torch.func.functional_call does, so that
    forward reads them at ordinary attribute speed. Calls nest. Two threads running the
    same module through functional_call take turns (a per-module lock); a plain call of
    that module from another thread meanwhile would see the substituted values.
    """

    __slots__ = ("lock", "swaps", "saved")

    def __init__(self, module, params, strict=False, caller="functional_call"):
        owners = module._parameter_owners()
        swaps = []
        for name, value in params.items():
            found = owners.get(name)
            if found is None:
                raise KeyError(f"{caller}: {name!r} is not a parameter of {type(module).__name__} "
                               f"(parameters: {list(owners)})")
            if type(value) is not Tensor and not isinstance(value, Tensor):
                raise TypeError(f"{caller}: params[{name!r}] must be a Tensor, got "
                                f"{type(value).__name__}")
            swaps.append((found[0].__dict__, found[1], value))
        if strict and len(swaps) != len(owners):
            missing = [name for name in owners if name not in params]
            raise KeyError(f"{caller}: strict=True and params has no entry for {missing}")
        self.lock = _LOCKS.get(module)
        if self.lock is None:
            self.lock = _new_lock(module)
        self.swaps = swaps

    def __enter__(self):
        self.lock.acquire()
        saved = []
        try:
            for attributes, name, value in self.swaps:
                saved.append((attributes, name, attributes[name]))
                attributes[name] = value
        except BaseException:
            self._restore(saved)
            raise
        self.saved = saved
        return self

    def __exit__(self, *exc):
        self._restore(self.saved)
        return False

    def _restore(self, saved):
        try:
            for attributes, name, value in reversed(saved):
                attributes[name] = value
        finally:
            self.lock.release()


# module -> its functional-call lock; weak, so that modules stay collectable and copyable
_LOCKS = weakref.WeakKeyDictionary()
_LOCK_CREATION = threading.Lock()


def _new_lock(module):
    """The module's functional-call lock, created once even when two threads race to it."""
    with _LOCK_CREATION:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
    return lock


# ----------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------

def _resolve_rng(rng):
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")
    return rng


def _truncated_normal(rng, shape, std):
    """Normal(0, std) redrawn outside two standard deviations (tf.truncated_normal)."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return values * std


INITS = ("default", "maml", "lecun")


def _initial_weight_and_bias(init, rng, in_features, out_features):
    """(weight (out, in), bias (out,)) drawn by scheme ``init``.

    Draws happen in the (in, out) order the layer used before it took PyTorch's layout,
    then the weight is transposed: a seed gives the same function as it always did.
    """
    shape = (in_features, out_features)
    if init == "default":
        bound = 1.0 / np.sqrt(in_features)
        weight = rng.uniform(-bound, bound, shape)
        bias = rng.uniform(-bound, bound, (out_features,))
    elif init == "maml":
        weight = _truncated_normal(rng, shape, 0.01)
        bias = np.zeros(out_features)
    elif init == "lecun":
        weight = rng.standard_normal(shape) / np.sqrt(in_features)
        bias = np.zeros(out_features)
    else:
        raise ValueError(f"Linear: unknown init {init!r}; use one of {INITS}")
    return np.ascontiguousarray(weight.T), bias


# ----------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------

class Linear(Module):
    """y = x @ weight.T + bias, with weight of shape (out_features, in_features) (PyTorch's
    layout) and bias (out_features,).

    ``init="default"``: weight and bias uniform in ±1/sqrt(in_features) (PyTorch's
    nn.Linear default). ``init="maml"``: weight truncated normal with std 0.01, bias
    zero (the MAML paper's code). ``init="lecun"``: weight N(0, 1/in_features), bias
    zero. ``rng``: a numpy Generator (or int seed) for reproducible initialisation.

    Run on fast weights with a task axis (weight (T, out, in), bias (T, out)), ``x`` of
    shape (T, K, in) gives (T, K, out): one batched matmul for all tasks.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> layer = Linear(3, 2, rng=np.random.default_rng(0))
    >>> layer.weight.shape, layer(tgm.Tensor(np.ones((4, 3)))).shape
    ((2, 3), (4, 2))
    """

    def __init__(self, in_features, out_features, dtype="float32", device="cpu", init="default",
                 rng=None, bias=True):
        super().__init__()
        for label, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"Linear: {label} must be a positive integer, got {n!r}")
        rng = _resolve_rng(rng)
        self.in_features, self.out_features = int(in_features), int(out_features)
        weight, bias_value = _initial_weight_and_bias(init, rng, self.in_features, self.out_features)
        self.weight = Tensor(weight, dtype=dtype, device=device, requires_grad=True)
        self.bias = Tensor(bias_value, dtype=dtype, device=device, requires_grad=True) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class _Activation(Module):
    """An elementwise function as a module (no parameters)."""
    function = None

    def forward(self, x):
        return type(self).function(x)


class ReLU(_Activation):
    """max(x, 0) elementwise."""
    function = staticmethod(F.relu)


class Tanh(_Activation):
    function = staticmethod(F.tanh)


class Sigmoid(_Activation):
    function = staticmethod(F.sigmoid)


class Identity(Module):
    """Returns its input unchanged."""

    def forward(self, x):
        return x


class Flatten(Module):
    """Flattens axes ``start_dim`` .. ``end_dim`` into one (PyTorch's defaults: 1 .. -1).

    >>> import numpy as np, tinygrad_meta as tgm
    >>> Flatten()(tgm.Tensor(np.zeros((2, 3, 4)))).shape
    (2, 12)
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        ndim = x.ndim
        start = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not 0 <= start <= end < ndim:
            raise ValueError(f"Flatten: dims {self.start_dim}..{self.end_dim} do not fit an input "
                             f"of shape {x.shape}")
        shape = x.shape
        return x.reshape(shape[:start] + (int(np.prod(shape[start:end + 1])),) + shape[end + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training mode and scales the rest by
    1/(1-p); the identity in eval mode (``module.eval()``).

    ``rng``: a numpy Generator (or int seed) that draws the masks; its state is part of
    ``state_dict()`` (as "rng_state") and ``load_state_dict`` restores it in place, so a
    run resumed from a checkpoint draws exactly the masks the uninterrupted run would.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> drop = Dropout(0.5, rng=np.random.default_rng(0))
    >>> sorted(set(drop(tgm.Tensor(np.ones(8))).numpy().tolist()))
    [0.0, 2.0]
    >>> drop.eval()(tgm.Tensor(np.ones(3))).numpy().tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = _resolve_rng(rng)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = self.rng.random(x.shape) >= self.p
        mask = Tensor(keep.astype(x.dtype) * (1.0 / (1.0 - self.p)), dtype=x.dtype, device=x.device)
        return x * mask

    def _extra_state(self):
        text = json.dumps(self.rng.bit_generator.state, default=np.ndarray.tolist)
        return {"rng_state": np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()}

    def _load_extra_state(self, state, check_only=False):
        array = np.asarray(state["rng_state"])
        kind = type(self.rng.bit_generator)
        try:
            if array.dtype != np.uint8 or array.ndim != 1:
                raise TypeError(f"expected a 1-D uint8 array, got {array.dtype} of shape {array.shape}")
            saved = json.loads(array.tobytes().decode("utf-8"))
            # a fresh generator of the same kind validates the state before ours takes it
            (kind() if check_only else self.rng.bit_generator).state = saved
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
            raise ValueError(f"Dropout.load_state_dict: 'rng_state' is not a saved state of this "
                             f"Dropout's {kind.__name__} generator ({type(error).__name__}: "
                             f"{error})") from None

    def extra_repr(self):
        return f"p={self.p}"


# ----------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------

class ModuleList(Module):
    """A list of modules, registered as "0", "1", ...: index it, iterate it, append to it.

    >>> layers = ModuleList([Linear(2, 2, rng=0), Linear(2, 1, rng=1)])
    >>> len(layers), [name for name, _ in layers.named_parameters()][:2]
    (2, ['0.weight', '0.bias'])
    """

    def __init__(self, modules=()):
        super().__init__()
        object.__setattr__(self, "_list", [])
        for module in modules:
            self.append(module)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList: item {len(self._list)} is a {type(module).__name__}, "
                            "expected a Module")
        setattr(self, str(len(self._list)), module)
        self._list.append(module)
        return self

    def __len__(self):
        return len(self._list)

    def __iter__(self):
        return iter(self._list)

    def __getitem__(self, index):
        return self._list[index]

    def forward(self, *args):
        raise TypeError("ModuleList has no forward: iterate over it in your own forward")


class Sequential(Module):
    """Modules applied in order; their parameters are named "0.weight", "1.bias", ...

    Plain callables without parameters (e.g. ``tgm.functional.relu``) are allowed too.

    >>> seq = Sequential(Linear(2, 3, rng=0), ReLU(), Linear(3, 1, rng=1))
    >>> [name for name, _ in seq.named_parameters()]
    ['0.weight', '0.bias', '2.weight', '2.bias']
    """

    def __init__(self, *modules):
        super().__init__()
        steps = []
        for index, module in enumerate(modules):
            if isinstance(module, Module):
                setattr(self, str(index), module)
            elif not callable(module):
                raise TypeError(f"Sequential: item {index} is a {type(module).__name__}, "
                                "expected a Module or a callable")
            steps.append(module)
        object.__setattr__(self, "_steps", steps)

    def __len__(self):
        return len(self._steps)

    def __iter__(self):
        return iter(self._steps)

    def __getitem__(self, index):
        return self._steps[index]

    def forward(self, x):
        for step in self._steps:
            x = step(x)
        return x


_ACTIVATIONS = {"relu": F.relu, "tanh": F.tanh, "sigmoid": F.sigmoid, None: None,
                "none": None, "identity": None}


class MLP(Module):
    """A multilayer perceptron: Linear layers of ``sizes``, ``activation`` between them
    (none after the last). Parameters: "layers.0.weight" (out, in), "layers.0.bias", ...

    ``sizes``: e.g. [1, 40, 40, 1] (input, hidden..., output). ``activation``: "relu",
    "tanh", "sigmoid" or None. ``init``/``rng``/``dtype``/``device`` go to every Linear.
    With ReLU each hidden layer runs as one fused node (``functional.linear_relu``).

    >>> import numpy as np, tinygrad_meta as tgm
    >>> mlp = MLP([2, 8, 1], rng=np.random.default_rng(0))
    >>> mlp(tgm.Tensor(np.ones((3, 2)))).shape, mlp.layers[0].weight.shape
    ((3, 1), (8, 2))
    """

    def __init__(self, sizes, activation="relu", dtype="float32", device="cpu", init="default",
                 rng=None):
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes needs at least an input and an output size, got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation {activation!r}; use one of "
                             "'relu', 'tanh', 'sigmoid' or None")
        rng = _resolve_rng(rng)
        self.sizes = sizes
        self.activation = activation
        self.layers = ModuleList([Linear(n_in, n_out, dtype=dtype, device=device, init=init, rng=rng)
                                  for n_in, n_out in zip(sizes[:-1], sizes[1:])])

    def forward(self, x):
        layers = self.layers._list
        if not isinstance(x, Tensor):
            first = layers[0].weight
            x = Tensor(x, dtype=first.dtype, device=first.device)
        act = _ACTIVATIONS[self.activation]
        last = len(layers) - 1
        for index, layer in enumerate(layers):
            if index == last:
                x = F.linear(x, layer.weight, layer.bias)
            elif self.activation == "relu":
                x = F.linear_relu(x, layer.weight, layer.bias)
            else:
                x = F.linear(x, layer.weight, layer.bias)
                if act is not None:
                    x = act(x)
        return x

    def __repr__(self):
        return f"MLP({self.sizes}, activation={self.activation!r})"


# Modules whose forward is known to accept fast weights with a leading task axis (and x
# with the same axis) and to compute each task independently. Exact types: a subclass
# may override forward, so it is not assumed to batch.
_TASK_BATCHED = (MLP, Linear, ReLU, Tanh, Sigmoid, Identity, Dropout)
_TASK_BATCHED_FUNCTIONS = (F.relu, F.tanh, F.sigmoid)


def batches_over_tasks(module):
    """True when ``module`` is known to run every task independently on fast weights with a
    leading task axis: ``MLP``, ``Linear``, the activation modules, ``Dropout``, and
    ``Sequential`` / ``ModuleList`` made only of those. Anything else (your own modules)
    is False: meta-learners then loop over tasks instead, which is always correct.

    >>> batches_over_tasks(MLP([1, 4, 1])), batches_over_tasks(Flatten())
    (True, False)
    """
    kind = type(module)
    if kind in _TASK_BATCHED:
        return True
    if kind is Sequential:
        return all(batches_over_tasks(step) if isinstance(step, Module)
                   else step in _TASK_BATCHED_FUNCTIONS for step in module._steps)
    if kind is ModuleList:
        return all(batches_over_tasks(m) for m in module._list)
    return False


# ---- layers for images (issue 11): image_layers.py, one idea per file; here they join
# the nn namespace
from .image_layers import (AvgPool2d, BatchNorm2d, Conv2d, LayerNorm, MaxPool2d,  # noqa: E402
                           OmniglotConvNet, omniglot_convnet)

__all__ += ["Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm2d", "LayerNorm", "OmniglotConvNet",
            "omniglot_convnet"]
