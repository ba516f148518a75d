"""Check your own differentiable functions: gradcheck, gradgradcheck, check_grads,
and hypothesis strategies that generate Tensors and broadcast-compatible shapes.

The checks compare the engine's analytic derivatives with central finite differences,
``(f(x + eps*e) - f(x - eps*e)) / (2*eps)``. Finite differences need float64 to be
accurate, so **every floating input is converted to a float64 copy** before ``f`` sees
it: ``f`` must therefore work in float64 (build any constants with ``x.dtype``).

* ``gradcheck(f, inputs)``: first derivatives. Small problems compare the whole
  Jacobian element by element; large ones compare random projections ``uᵀ J v``
  (one per input), like HIPS autograd's ``check_grads``.
* ``gradgradcheck(f, inputs)``: second derivatives, the way
  ``torch.autograd.gradgradcheck`` does it: with random ``grad_outputs`` u, the
  function ``(inputs, u) -> uᵀ J`` (built with ``create_graph=True``) is itself
  gradchecked, with respect to the inputs and to u.
* ``check_grads(f, inputs, order=3)``: every order from 1 to ``order``, by repeating
  that construction (each order checks the analytic derivative against finite
  differences of the analytic derivative one order below).

Each returns True or raises ``GradcheckError`` (an ``AssertionError``) naming the
order, the input, the element and both values.

>>> import tinygrad_meta as tgm
>>> from tinygrad_meta.testing import gradcheck, gradgradcheck
>>> x = tgm.Tensor([[0.5, -1.0], [2.0, 0.25]])
>>> gradcheck(lambda t: (t.tanh() * t).sum(axis=0), [x])
True
>>> gradgradcheck(lambda t: t.exp() / t.exp().sum(), [x])
True

The strategies (``tensors``, ``shapes``, ``broadcastable_shapes``) need hypothesis,
which comes with the ``test`` extra (``pip install "tinygrad-meta[test]"``); the checks
above do not.
"""
from __future__ import annotations

import numbers

import numpy as np

from .autograd import enable_grad, grad
from .scalar import Value
from .tensor import Tensor

__all__ = ["GradcheckError", "gradcheck", "gradgradcheck", "check_grads",
           "tensors", "shapes", "broadcastable_shapes"]


class GradcheckError(AssertionError):
    """An analytic derivative disagrees with its finite-difference estimate."""


# ----------------------------------------------------------------------------------
# Inputs and outputs as flat float64 arrays
# ----------------------------------------------------------------------------------

class _Slot:
    """One argument of ``f``: either differentiated (a float64 array) or passed through."""

    __slots__ = ("kind", "array", "value", "device")

    def __init__(self, kind, array=None, value=None, device="cpu"):
        self.kind = kind        # "tensor", "value" or "const"
        self.array = array      # float64 numpy array for "tensor" and "value"
        self.value = value      # the argument itself for "const"
        self.device = device

    def leaf(self, array=None):
        """A fresh leaf that requires grad (or the pass-through argument)."""
        if self.kind == "const":
            return self.value
        array = self.array if array is None else array
        if self.kind == "value":
            return Value(float(array))
        return Tensor(array, dtype="float64", device=self.device, requires_grad=True)


def _slots(inputs):
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not items:
        raise ValueError("gradcheck: inputs is empty; pass a Tensor or a list of Tensors")
    slots = []
    for item in items:
        if isinstance(item, Value):
            slots.append(_Slot("value", np.array(item.data, dtype=np.float64)))
        elif isinstance(item, Tensor) and item.dtype.kind == "f":
            slots.append(_Slot("tensor", np.array(item.numpy(), dtype=np.float64), device=item.device))
        elif isinstance(item, np.ndarray) and item.dtype.kind == "f":
            slots.append(_Slot("tensor", item.astype(np.float64)))
        else:
            slots.append(_Slot("const", value=item))
    if all(slot.kind == "const" for slot in slots):
        raise ValueError(
            "gradcheck: no floating-point input to differentiate; pass float Tensors, "
            "Values or float numpy arrays (integer tensors are passed to f unchanged)")
    return slots


def _outputs(result, caller):
    """``f``'s result as a list of Tensor/Value outputs."""
    outs = list(result) if isinstance(result, (list, tuple)) else [result]
    if not outs:
        raise ValueError(f"{caller}: f returned no outputs")
    for index, out in enumerate(outs):
        if isinstance(out, Tensor):
            if out.dtype.kind != "f":
                raise TypeError(f"{caller}: output {index} has dtype {out.dtype}; only floating "
                                "outputs can be differentiated")
        elif not isinstance(out, Value):
            raise TypeError(f"{caller}: output {index} is a {type(out).__name__}; f must return "
                            "Tensors or Values (or a tuple of them)")
    return outs


def _to_array(node):
    if isinstance(node, Value):
        return np.array(node.data, dtype=np.float64)
    return np.array(node.numpy(), dtype=np.float64)


def _evaluate(f, slots, override=None):
    """f at the slots' points (``override`` maps slot index -> replacement array)."""
    args = [slot.leaf(None if override is None else override.get(i)) for i, slot in enumerate(slots)]
    return args, _outputs(f(*args), "gradcheck")


def _vjp(outs, args, slots, seeds, create_graph=False):
    """uᵀ J for each differentiated argument (zeros where an input is unused)."""
    wanted = [i for i, slot in enumerate(slots) if slot.kind != "const"]
    live = [(out, seed) for out, seed in zip(outs, seeds) if out.requires_grad]
    grads = [None] * len(wanted)
    if live:
        grad_outputs = [_seed_like(out, seed) for out, seed in live]
        grads = list(grad([out for out, _ in live], [args[i] for i in wanted],
                          grad_outputs=grad_outputs, create_graph=create_graph, allow_unused=True))
    return {i: g for i, g in zip(wanted, grads)}


def _seed_like(out, seed):
    if isinstance(out, Value):
        return seed if isinstance(seed, Value) else Value(float(seed), requires_grad=False)
    if isinstance(seed, Tensor):
        return seed
    return Tensor(np.asarray(seed), dtype=out.dtype, device=out.device)


def _grad_array(g, slot, index, label):
    if g is None:
        return np.zeros_like(slot.array)
    array = _to_array(g)
    if array.shape != slot.array.shape:
        raise GradcheckError(
            f"{label}: the gradient for input {index} has shape {array.shape} but the input "
            f"has shape {slot.array.shape}")
    return array


def _close(analytic, numerical, atol, rtol):
    return np.abs(analytic - numerical) <= atol + rtol * np.abs(numerical)


def _element(shape, flat):
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


# ----------------------------------------------------------------------------------
# The two ways to compare: the full Jacobian, or random projections
# ----------------------------------------------------------------------------------

def _check_full(f, slots, out_arrays, eps, atol, rtol, label):
    out_sizes = [a.size for a in out_arrays]
    # analytic Jacobian, one vector-Jacobian product per output element
    analytic = {i: np.zeros((sum(out_sizes), slot.array.size))
                for i, slot in enumerate(slots) if slot.kind != "const"}
    row = 0
    args, outs = _evaluate(f, slots)  # the graph survives grad(), so one forward serves all rows
    for k, out_array in enumerate(out_arrays):
        for flat in range(out_array.size):
            seeds = [np.zeros(a.shape) for a in out_arrays]
            seeds[k].reshape(-1)[flat] = 1.0
            grads = _vjp(outs, args, slots, seeds)
            for i, g in grads.items():
                analytic[i][row] = _grad_array(g, slots[i], i, label).reshape(-1)
            row += 1
    # numerical Jacobian, one central difference per input element
    for i, slot in enumerate(slots):
        if slot.kind == "const":
            continue
        numerical = np.zeros_like(analytic[i])
        for flat in range(slot.array.size):
            columns = []
            for step in (eps, -eps):
                moved = slot.array.copy()
                moved.reshape(-1)[flat] += step
                _, outs = _evaluate(f, slots, {i: moved})
                columns.append(np.concatenate([_to_array(o).reshape(-1) for o in outs]))
            numerical[:, flat] = (columns[0] - columns[1]) / (2 * eps)
        ok = _close(analytic[i], numerical, atol, rtol)
        if not ok.all():
            excess = np.where(ok, -np.inf, np.abs(analytic[i] - numerical) - rtol * np.abs(numerical))
            out_row, in_flat = np.unravel_index(int(np.argmax(excess)), excess.shape)
            k = int(np.searchsorted(np.cumsum(out_sizes), out_row, side="right"))
            out_flat = out_row - sum(out_sizes[:k])
            raise GradcheckError(
                f"{label}: d(output {k}{list(_element(out_arrays[k].shape, out_flat))})/"
                f"d(input {i}{list(_element(slot.array.shape, in_flat))}) "
                f"(input {i} has shape {slot.array.shape}): analytic "
                f"{float(analytic[i][out_row, in_flat])!r} vs numerical {float(numerical[out_row, in_flat])!r} "
                f"(atol={atol}, rtol={rtol}); {int((~ok).sum())} of {ok.size} Jacobian entries "
                "disagree")
    return True


def _unit(rng, shape):
    v = rng.standard_normal(shape)
    norm = np.sqrt((v * v).sum())
    return v / norm if norm > 0 else v


def _check_projections(f, slots, out_arrays, eps, atol, rtol, label, rng, projections):
    for trial in range(projections):
        seeds = [_unit(rng, a.shape) for a in out_arrays]
        args, outs = _evaluate(f, slots)
        grads = _vjp(outs, args, slots, seeds)
        for i, g in grads.items():
            slot = slots[i]
            direction = _unit(rng, slot.array.shape)
            analytic = float((_grad_array(g, slot, i, label) * direction).sum())
            sides = []
            for step in (eps, -eps):
                _, moved = _evaluate(f, slots, {i: slot.array + step * direction})
                sides.append(sum(float((_to_array(o) * s).sum()) for o, s in zip(moved, seeds)))
            numerical = (sides[0] - sides[1]) / (2 * eps)
            if not _close(analytic, numerical, atol, rtol):
                raise GradcheckError(
                    f"{label}: random projection {trial} uᵀ J v for input {i} (shape "
                    f"{slot.array.shape}): analytic {analytic!r} vs numerical {numerical!r} "
                    f"(atol={atol}, rtol={rtol}); rerun with mode='full' to find the element")
    return True


def _gradcheck(f, slots, eps, atol, rtol, mode, full_limit, projections, rng, label):
    with enable_grad():
        _, outs = _evaluate(f, slots)
        out_arrays = [_to_array(o) for o in outs]
        in_size = sum(slot.array.size for slot in slots if slot.kind != "const")
        out_size = sum(a.size for a in out_arrays)
        if mode not in ("auto", "full", "projection"):
            raise ValueError(f"{label}: mode must be 'auto', 'full' or 'projection', got {mode!r}")
        try:
            if mode == "full" or (mode == "auto" and max(in_size, out_size) <= full_limit):
                return _check_full(f, slots, out_arrays, eps, atol, rtol, label)
            return _check_projections(f, slots, out_arrays, eps, atol, rtol, label, rng, projections)
        except GradcheckError as error:
            narrow = [k for k, o in enumerate(outs) if isinstance(o, Tensor) and o.dtype != np.float64]
            if narrow:  # the usual cause of a false alarm: f computes in float32
                raise GradcheckError(
                    f"{error}; note: output {narrow[0]} is {outs[narrow[0]].dtype}, and finite "
                    "differences need f to compute in float64 throughout") from None
            raise


def _vjp_function(f, slots, rng, grad_outputs=None):
    """The next order's problem: ``(*inputs, *u) -> uᵀ J`` with random u, and its slots."""
    with enable_grad():
        _, outs = _evaluate(f, slots)
    if grad_outputs is None:
        seeds = [rng.standard_normal(_to_array(o).shape) for o in outs]
    else:
        seeds = list(grad_outputs) if isinstance(grad_outputs, (list, tuple)) else [grad_outputs]
        if len(seeds) != len(outs):
            raise ValueError(f"gradgradcheck: f has {len(outs)} outputs but {len(seeds)} grad_outputs")
        seeds = [_to_array(s) if isinstance(s, (Tensor, Value)) else np.asarray(s, dtype=np.float64)
                 for s in seeds]
    seed_slots = [_Slot("value", s) if isinstance(o, Value)
                  else _Slot("tensor", s.astype(np.float64), device=o.device)
                  for o, s in zip(outs, seeds)]
    count = len(slots)

    def vjp_of_f(*args):
        inputs, us = args[:count], args[count:]
        result = _outputs(f(*inputs), "gradgradcheck")
        grads = _vjp(result, list(inputs), slots, us, create_graph=True)
        return tuple(_zero_like(slots[i]) if g is None else g for i, g in sorted(grads.items()))

    return vjp_of_f, list(slots) + seed_slots


def _zero_like(slot):
    if slot.kind == "value":
        return Value(0.0, requires_grad=False)
    return Tensor(np.zeros_like(slot.array), dtype="float64", device=slot.device)


# ----------------------------------------------------------------------------------
# Public checks
# ----------------------------------------------------------------------------------

def gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, mode="auto", full_limit=64,
              projections=3, seed=0):
    """Check f's first derivatives against central finite differences, in float64.

    ``f``: takes the inputs as positional arguments and returns a Tensor, a Value, or a
    tuple of them (any shapes). ``inputs``: a Tensor/Value or a sequence; floating
    Tensors, Values and float numpy arrays are converted to float64 leaves and checked,
    anything else (integer labels, options) is passed to f unchanged.
    ``mode``: "full" compares every Jacobian entry; "projection" compares ``uᵀ J v``
    for random unit u, v (``projections`` times, per input); "auto" uses the full
    Jacobian when inputs and outputs both have at most ``full_limit`` elements.
    An entry passes when ``|analytic - numerical| <= atol + rtol * |numerical|``.

    Returns True, or raises GradcheckError naming the input, the element and both values.

    >>> import tinygrad_meta as tgm
    >>> gradcheck(lambda a, b: a @ b, [tgm.Tensor([[1.0, 2.0]]), tgm.Tensor([[3.0], [4.0]])])
    True
    """
    rng = np.random.default_rng(seed)
    return _gradcheck(f, _slots(inputs), eps, atol, rtol, mode, full_limit, projections, rng,
                      "gradcheck (order 1)")


def gradgradcheck(f, inputs, grad_outputs=None, eps=1e-6, atol=1e-5, rtol=1e-3, mode="auto",
                  full_limit=64, projections=3, seed=0):
    """Check f's second derivatives the way ``torch.autograd.gradgradcheck`` does.

    With ``grad_outputs`` u (random normal ones by default, drawn from ``seed``), the
    function ``(inputs, u) -> uᵀ J_f(inputs)``, computed with ``create_graph=True``, is
    gradchecked with respect to both the inputs and u. Arguments as in ``gradcheck``.

    >>> import tinygrad_meta as tgm
    >>> gradgradcheck(lambda t: (t ** 3).sum(), [tgm.Tensor([1.0, -2.0])])
    True
    """
    rng = np.random.default_rng(seed)
    vjp_of_f, slots = _vjp_function(f, _slots(inputs), rng, grad_outputs)
    return _gradcheck(vjp_of_f, slots, eps, atol, rtol, mode, full_limit, projections, rng,
                      "gradgradcheck (order 2)")


def check_grads(f, inputs, order=2, eps=1e-6, atol=1e-5, rtol=1e-3, mode="auto", full_limit=64,
                projections=3, seed=0):
    """Check every derivative order from 1 to ``order`` (like HIPS autograd's check_grads).

    Order k gradchecks the function ``(inputs, u_1, ..., u_{k-1}) -> ...`` obtained by
    taking k-1 vector-Jacobian products with random vectors, so the k-th analytic
    derivative is compared with finite differences of the (k-1)-th. The inputs grow with
    each order; "auto" mode switches to random projections when they get large.

    >>> import tinygrad_meta as tgm
    >>> check_grads(lambda t: t.tanh().sum(), [tgm.Tensor([0.3, -0.7])], order=3)
    True
    """
    if not isinstance(order, numbers.Integral) or order < 1:
        raise ValueError(f"check_grads: order must be a positive integer, got {order!r}")
    rng = np.random.default_rng(seed)
    slots = _slots(inputs)
    for k in range(1, order + 1):
        _gradcheck(f, slots, eps, atol, rtol, mode, full_limit, projections, rng,
                   f"check_grads (order {k})")
        if k < order:
            f, slots = _vjp_function(f, slots, rng)
    return True


# ----------------------------------------------------------------------------------
# Hypothesis strategies
# ----------------------------------------------------------------------------------

def _hypothesis():
    try:
        import hypothesis.extra.numpy as hnp
        import hypothesis.strategies as st
    except ImportError:
        raise ImportError(
            "tinygrad_meta.testing strategies need hypothesis; install the test extra: "
            "pip install \"tinygrad-meta[test]\" (gradcheck and friends work without it)") from None
    return st, hnp


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=3):
    """A strategy for array shapes: tuples of ``min_dims``..``max_dims`` sides.

    The default includes 0-d shapes ``()`` and size-1 dimensions; ``min_side=0`` adds
    empty arrays.

    >>> from hypothesis import given
    >>> @given(shapes())
    ... def test(shape):
    ...     assert len(shape) <= 3
    """
    st, hnp = _hypothesis()
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3):
    """A strategy for pairs of shapes that numpy broadcasts together, e.g. ``((3, 1), (2, 1, 4))``.

    Pairs include 0-d shapes, size-1 dimensions and different numbers of dimensions.

    >>> import numpy as np
    >>> from hypothesis import given
    >>> @given(broadcastable_shapes())
    ... def test(pair):
    ...     np.broadcast_shapes(*pair)
    """
    st, hnp = _hypothesis()
    return hnp.mutually_broadcastable_shapes(
        num_shapes=2, min_dims=min_dims, max_dims=max_dims, min_side=min_side,
        max_side=max_side).map(lambda result: tuple(result.input_shapes))


def tensors(shape=None, dtype="float64", elements=None, requires_grad=False, device="cpu"):
    """A strategy for Tensors.

    ``shape``: a shape tuple or a strategy for one (default: ``shapes()``, which includes
    0-d and size-1 dims). ``dtype``: "float64" (default; what gradcheck wants) or
    "float32". ``elements``: a strategy for the values (default: finite floats in
    [-2, 2]). ``requires_grad``: mark the generated tensors as leaves needing grad.

    >>> from hypothesis import given
    >>> @given(tensors(shape=(2, 3), requires_grad=True))
    ... def test(x):
    ...     assert x.shape == (2, 3) and x.requires_grad
    """
    st, hnp = _hypothesis()
    dtype = np.dtype(dtype)
    if shape is None:
        shape = shapes()
    if elements is None:
        elements = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False,
                             width=64 if dtype == np.float64 else 32)
    return hnp.arrays(dtype, shape, elements=elements).map(
        lambda array: Tensor(array, dtype=dtype, device=device, requires_grad=requires_grad))
