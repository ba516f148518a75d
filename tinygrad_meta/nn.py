"""Neural-network modules whose parameters are ordered dicts of Tensors.

Every ``Module`` can run on parameters other than its own: ``model(x, params=fast)``.
That functional call is what MAML and its relatives need: the inner loop computes
"fast weights" from the model's parameters and runs the same model on them. Fast
weights may carry a leading task axis (``(T, in, out)`` for a Linear weight and
``(T, out)`` for its bias); then ``x`` is ``(T, K, in)`` and every task runs in one
batched matmul.

>>> import numpy as np, tinygrad_meta as tgm
>>> model = tgm.nn.MLP([1, 40, 40, 1], rng=np.random.default_rng(0))
>>> list(model.parameters())[:3]
['layers.0.weight', 'layers.0.bias', 'layers.1.weight']
>>> model(tgm.Tensor(np.zeros((5, 1)))).shape
(5, 1)
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import functional as F
from .backends import get_backend
from .tensor import Tensor

__all__ = ["Module", "Linear", "MLP", "Sequential"]


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
            raise ValueError(f"{caller}: {name!r} has shape {array.shape}, the parameter has "
                             f"shape {p.shape}")
        new_data[name] = p._be.asarray(np.array(array, dtype=p.dtype))
    for name, p in params.items():
        p.data = new_data[name]


class Module:
    """Base class: assigning a Tensor that requires grad to an attribute registers a
    parameter; assigning a Module registers a submodule.

    Subclasses implement ``forward(self, x, params)``, where ``params`` maps the names
    returned by ``self.parameters()`` (relative to this module) to Tensors.
    ``module(x)`` runs on the module's own parameters; ``module(x, params=d)`` on ``d``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning "
                               f"attribute {name!r}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Tensor) and value.requires_grad:
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    # ---- parameters ----------------------------------------------------------
    def parameters(self):
        """OrderedDict name -> Tensor: own parameters in registration order, then each
        submodule's, prefixed with its attribute name ("layers.0.weight")."""
        out = OrderedDict(self._parameters)
        for module_name, module in self._modules.items():
            for name, p in module.parameters().items():
                out[f"{module_name}.{name}"] = p
        return out

    named_parameters = parameters

    def parameter_dict(self):
        """OrderedDict name -> Tensor of every parameter (the functional API's form)."""
        return self.parameters()

    def num_parameters(self):
        """Total number of scalar parameters."""
        return int(sum(p.size for p in self.parameters().values()))

    def zero_grad(self):
        for p in self.parameters().values():
            p.grad = None

    def _set_parameter(self, dotted, tensor):
        module = self
        *path, leaf = dotted.split(".")
        for part in path:
            module = module._modules[part]
        setattr(module, leaf, tensor)

    # ---- calling --------------------------------------------------------------
    def __call__(self, x, params=None):
        if params is None:
            params = self.parameters()
        return self.forward(x, params)

    def forward(self, x, params):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward(x, params)")

    @staticmethod
    def _subparams(params, prefix):
        """The entries of ``params`` under ``prefix.``, with the prefix removed."""
        start = len(prefix) + 1
        return {name[start:]: p for name, p in params.items() if name.startswith(prefix + ".")}

    # ---- state ----------------------------------------------------------------
    def state_dict(self):
        """OrderedDict name -> numpy array (a copy) of every parameter."""
        return OrderedDict((name, np.array(p.numpy())) for name, p in self.parameters().items())

    def load_state_dict(self, state_dict):
        """Copy values from a mapping name -> array or Tensor into the parameters (in place).

        Every parameter must be present, no extra names are allowed, and shapes must match
        exactly; values are cast to each parameter's dtype and kept on its device.
        """
        load_parameters(self.parameters(), state_dict, f"{type(self).__name__}.load_state_dict")
        return self

    def to(self, device):
        """Move every parameter to ``device`` ("cpu" or "cuda"); returns self.

        The parameters become new leaf tensors (an optimizer built before must be rebuilt).
        """
        backend = get_backend(device)
        for name, p in self.parameters().items():
            if p._be is not backend:
                moved = p.detach().to(device).requires_grad_(True)
                self._set_parameter(name, moved)
        return self

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for name, module in self._modules.items():
            lines.append(f"  ({name}): " + repr(module).replace("\n", "\n  "))
        return "\n".join(lines) + ")" if len(lines) > 1 else f"{type(self).__name__}()"


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


class Linear(Module):
    """y = x @ weight + bias, with weight of shape (in_features, out_features).

    ``init="default"``: weight and bias uniform in ±1/sqrt(in_features) (PyTorch's
    nn.Linear default). ``init="maml"``: weight truncated normal with std 0.01, bias
    zero (the MAML paper's code). ``rng``: a numpy Generator (or int seed) for
    reproducible initialisation.

    With ``params`` carrying a task axis (weight (T, in, out), bias (T, out)), ``x`` of
    shape (T, K, in) gives (T, K, out): one batched matmul for all tasks.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> layer = Linear(3, 2, rng=np.random.default_rng(0))
    >>> layer(tgm.Tensor(np.ones((4, 3)))).shape
    (4, 2)
    """

    def __init__(self, in_features, out_features, dtype="float32", device="cpu", init="default",
                 rng=None, bias=True):
        super().__init__()
        for label, n in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"Linear: {label} must be a positive integer, got {n!r}")
        rng = _resolve_rng(rng)
        self.in_features, self.out_features = int(in_features), int(out_features)
        if init == "default":
            bound = 1.0 / np.sqrt(in_features)
            weight = rng.uniform(-bound, bound, (in_features, out_features))
            bias_value = rng.uniform(-bound, bound, (out_features,))
        elif init == "maml":
            weight = _truncated_normal(rng, (in_features, out_features), 0.01)
            bias_value = np.zeros(out_features)
        else:
            raise ValueError(f"Linear: unknown init {init!r}; use 'default' or 'maml'")
        self.weight = Tensor(weight, dtype=dtype, device=device, requires_grad=True)
        if bias:
            self.bias = Tensor(bias_value, dtype=dtype, device=device, requires_grad=True)
        self.has_bias = bool(bias)

    def forward(self, x, params):
        return F.linear(x, params["weight"], params["bias"] if self.has_bias else None)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.has_bias})"


class Sequential(Module):
    """Modules applied in order; their parameters are named "0.weight", "1.bias", ...

    Plain callables without parameters (e.g. ``tgm.functional.relu``) are allowed too.
    """

    def __init__(self, *modules):
        super().__init__()
        self._steps = []
        for index, module in enumerate(modules):
            if isinstance(module, Module):
                setattr(self, str(index), module)
            elif not callable(module):
                raise TypeError(f"Sequential: item {index} is a {type(module).__name__}, "
                                "expected a Module or a callable")
            self._steps.append((str(index), module))

    def __len__(self):
        return len(self._steps)

    def __getitem__(self, index):
        return self._steps[index][1]

    def forward(self, x, params):
        for name, module in self._steps:
            if isinstance(module, Module):
                x = module.forward(x, self._subparams(params, name))
            else:
                x = module(x)
        return x


_ACTIVATIONS = {"relu": F.relu, "tanh": F.tanh, "sigmoid": F.sigmoid, None: None,
                "none": None, "identity": None}


class MLP(Module):
    """A multilayer perceptron: Linear layers of ``sizes``, ``activation`` between them
    (none after the last). Parameters: "layers.0.weight", "layers.0.bias", "layers.1...".

    ``sizes``: e.g. [1, 40, 40, 1] (input, hidden..., output). ``activation``: "relu",
    "tanh", "sigmoid" or None. ``init``/``rng``/``dtype``/``device`` go to every Linear.
    With ReLU each hidden layer runs as one fused node (``functional.linear_relu``).

    >>> import numpy as np, tinygrad_meta as tgm
    >>> mlp = MLP([2, 8, 1], rng=np.random.default_rng(0))
    >>> mlp(tgm.Tensor(np.ones((3, 2)))).shape
    (3, 1)
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
        self.layers = Sequential(*[Linear(n_in, n_out, dtype=dtype, device=device, init=init,
                                          rng=rng)
                                   for n_in, n_out in zip(sizes[:-1], sizes[1:])])
        count = len(sizes) - 1
        # names looked up on every call: computed once
        self._names = [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(count)]

    def forward(self, x, params):
        if not isinstance(x, Tensor):
            first = params[self._names[0][0]]
            x = Tensor(x, dtype=first.dtype, device=first.device)
        act = _ACTIVATIONS[self.activation]
        last = len(self._names) - 1
        for index, (weight_name, bias_name) in enumerate(self._names):
            try:
                weight, bias = params[weight_name], params[bias_name]
            except KeyError as error:
                raise KeyError(f"MLP: params has no entry {error.args[0]!r}") from None
            if index == last:
                x = F.linear(x, weight, bias)
            elif self.activation == "relu":
                x = F.linear_relu(x, weight, bias)
            else:
                x = F.linear(x, weight, bias)
                if act is not None:
                    x = act(x)
        return x

    def __repr__(self):
        return f"MLP({self.sizes}, activation={self.activation!r})"
