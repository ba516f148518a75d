"""The one graph core shared by ``Value`` (scalars) and ``Tensor`` (n-d arrays).

A node is any object with these attributes:

* ``_requires_grad`` -- whether gradients flow into it (``requires_grad`` is the public view);
* ``_data``      -- its raw value (an array for a Tensor, a float for a Value);
* ``_parents``   -- the tuple of nodes it was computed from (empty for a leaf);
* ``_op``        -- the table entry that made it (see ops.py), None for a leaf;
* ``_params``    -- the op's non-differentiable parameters (axes, shapes, constants);
* ``_origin``    -- None, or the node whose backward rule recorded this one;
* ``_seq``       -- creation order (from ``next_seq()``): a node can only have ancestors
  created before it, which lets ``grad`` skip the older part of a graph;
* ``_version``   -- 0, or the ``next_seq()`` number of the last in-place change of its
  values; a node whose inputs changed after it was recorded cannot be differentiated;

the class attributes ``_raw_ops`` and ``_graph_ops`` (the namespaces its rules run in at
first order and with ``create_graph=True``), and the methods ``_ones_like()`` (the seed of a scalar output), ``_as_gradient(seed,
caller)`` and ``_wrap(raw)`` (a raw gradient as a constant node of the same type).

The backward pass calls each node's rule ``op.vjp(o, g, out, ins, params, needs)``
(ops.py). With ``create_graph=False`` the rule runs on raw values in the raw namespace
and records nothing; with ``create_graph=True`` it runs on the nodes
themselves in the node type's recording namespace, so its result is a graph that can be
differentiated again, to any order.

Grad mode and the ``_origin`` tag are per thread: two threads training two models, or one
of them under ``no_grad``, never see each other's mode.
"""
from __future__ import annotations

import contextvars
import functools
import itertools

__all__ = ["grad", "backward", "no_grad", "enable_grad", "is_grad_enabled", "toposort"]

# Every recorded node, every leaf that requires grad and every in-place change takes the
# next number. (itertools.count's __next__ is atomic under the GIL.)
next_seq = itertools.count(1).__next__

# The number of the latest in-place change anywhere: a backward pass checks a node's
# inputs for changes only when one happened after the node was recorded.
LATEST_CHANGE = [0]


def note_change(node):
    """Mark an in-place change of ``node``'s values (``.data`` assignment, optimizer step)."""
    node._version = LATEST_CHANGE[0] = next_seq()


# Per-thread (and per-asyncio-task) state read by every op before it records a node.
# A ContextVar rather than threading.local: a new thread starts from the defaults, and
# reading one costs half as much, which matters on every op.
#
# grad enabled: ops record the graph. origin: while the backward rule of node N runs
# with create_graph=True, N; every node recorded then gets ``_origin = N``, which is how
# ``viz`` tells the graph a backward pass recorded from the forward one.
_GRAD_ENABLED = contextvars.ContextVar("tinygrad_meta.grad_enabled", default=True)
_ORIGIN = contextvars.ContextVar("tinygrad_meta.origin", default=None)
grad_enabled = _GRAD_ENABLED.get
current_origin = _ORIGIN.get


# vmap's hooks (vmap.py registers them when a vmapped function first runs): nodes and
# gradients of its batched node type take ``_batching.vjp``; None keeps every pass plain.
_batching = None


def register_batching(hooks):
    """Called by vmap.py: ``hooks.node_type`` (the batched node class), ``hooks.vjp(node, g,
    needs, create_graph)`` and ``hooks.accumulate(grads, parents, contributions, needed,
    create_graph)``."""
    global _batching
    _batching = hooks


def _is_batched(value):
    return _batching is not None and type(value) is _batching.node_type


def is_grad_enabled() -> bool:
    """True when ops record the graph (the default)."""
    return _GRAD_ENABLED.get()


class _SetGradMode:
    """Context manager and decorator that sets grad mode and restores it on exit."""

    def __init__(self, mode: bool):
        self.mode = mode
        self.previous = []

    def __enter__(self):
        self.previous.append(_GRAD_ENABLED.set(self.mode))
        return self

    def __exit__(self, *exc):
        _GRAD_ENABLED.reset(self.previous.pop())
        return False

    def __call__(self, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with _SetGradMode(self.mode):
                return function(*args, **kwargs)
        return wrapper


def no_grad():
    """Ops inside record no graph. Use as ``with no_grad():`` or as ``@no_grad()``.

    >>> import tinygrad_meta as tgm
    >>> x = tgm.Tensor([1.0], requires_grad=True)
    >>> with tgm.no_grad():
    ...     y = x * 2
    >>> y.requires_grad
    False
    """
    return _SetGradMode(False)


def enable_grad():
    """Turn graph recording back on inside a ``no_grad`` region."""
    return _SetGradMode(True)


def toposort(roots, oldest=0) -> list:
    """Every node reachable from ``roots`` that requires grad, parents before children.

    Iterative depth-first search, so a chain of any length works (no recursion limit).
    Nodes created before ``oldest`` (by ``_seq``) are left out: they cannot lead to a
    node created later, so ``grad`` passes the oldest input's number.
    """
    order = []
    visited = set()
    for root in roots:
        if id(root) in visited or not root._requires_grad:
            continue
        visited.add(id(root))
        stack = [(root, iter(root._parents))]
        while stack:
            node, parents = stack[-1]
            for parent in parents:
                if parent._requires_grad and id(parent) not in visited and parent._seq >= oldest:
                    visited.add(id(parent))
                    stack.append((parent, iter(parent._parents)))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


def _seed_gradients(outputs, grad_outputs, caller, create_graph):
    """Pair each output with the gradient that starts the backward pass."""
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif not isinstance(grad_outputs, (list, tuple)):
        grad_outputs = [grad_outputs]
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"{caller}: got {len(outputs)} outputs but {len(grad_outputs)} grad_outputs")
    seeds = []
    for index, (output, seed) in enumerate(zip(outputs, grad_outputs)):
        if seed is None:
            if getattr(output, "size", 1) != 1:
                raise RuntimeError(
                    f"{caller}: output {index} has shape {tuple(output.shape)}; a gradient can be "
                    "created implicitly only for a scalar output, pass grad_outputs (or gradient=) "
                    "with the output's shape")
            seed = output._ones_like()
        else:
            seed = output._as_gradient(seed, caller)
        seeds.append(seed if create_graph or _is_batched(seed) else seed._data)
    return seeds


_ONE_INPUT = (True,)  # a recorded one-input node exists because its input needs a gradient


def _check_unchanged(node):
    """Raise if ``node`` or an input of it changed in place after ``node`` was recorded."""
    for changed in (node,) + node._parents:
        if changed._version > node._seq:
            raise _modified_error(node, changed)


def _modified_error(node, parent):
    op = node._op.name
    which = "its output" if parent is node else "an input"
    return RuntimeError(
        f"backward: {which} of {op!r} (shape {tuple(parent.shape)}) was modified in place "
        "(an optimizer step or a .data assignment) after the op was recorded, so its "
        "gradient would use the new values; recompute the forward pass after changing it")


def _run_backward(outputs, seeds, create_graph, capture=None):
    """Walk the graph from ``outputs`` in reverse topological order.

    ``seeds``: one gradient per output, raw values when ``create_graph`` is False,
    nodes otherwise. ``capture``: None (collect every leaf's gradient) or a dict
    ``id(node) -> node`` of the nodes whose gradients are wanted; then only the part of
    the graph between the outputs and those nodes is walked.
    Returns the dict ``id(node) -> (node, accumulated gradient)`` of what was collected
    (raw values when ``create_graph`` is False).
    """
    if capture is None:
        order = toposort(outputs)
        needed = None
    else:
        order = toposort(outputs, oldest=min(node._seq for node in capture.values()))
        needed = _leading_to(order, capture)
    grads = {}
    for output, seed in zip(outputs, seeds):
        if output._requires_grad:
            key = id(output)
            grads[key] = grads[key] + seed if key in grads else seed
    captured = {}
    owned = set()  # raw gradients this pass allocated itself, safe to add into in place
    pop = grads.pop
    node_type = type(outputs[0])
    graph_ops, raw_ops = node_type._graph_ops, node_type._raw_ops
    mode_token = _GRAD_ENABLED.set(True) if create_graph else None
    origin_token = _ORIGIN.set(None) if create_graph else None
    capturing = capture is not None
    latest_change = LATEST_CHANGE[0]
    batched = _batching.node_type if _batching is not None else None
    try:
        for node in reversed(order):
            key = id(node)
            g = pop(key, None)
            if g is None:
                continue
            op = node._op
            if op is None:
                if not capturing or key in capture:
                    captured[key] = (node, g)
                continue
            if capturing and key in capture:
                captured[key] = (node, g)
                if len(captured) == len(capture):
                    break
            parents = node._parents
            if latest_change > node._seq:
                _check_unchanged(node)
            # the common one- and two-input cases without building lists
            if len(parents) == 1:
                needs = _ONE_INPUT
                ins = parents if create_graph else (parents[0]._data,)
            elif len(parents) == 2:
                first, second = parents
                needs = (first._requires_grad, second._requires_grad)
                ins = parents if create_graph else (first._data, second._data)
            elif len(parents) == 3:  # a layer with its bias
                first, second, third = parents
                needs = (first._requires_grad, second._requires_grad, third._requires_grad)
                ins = parents if create_graph else (first._data, second._data, third._data)
            else:
                needs = tuple([parent._requires_grad for parent in parents])
                ins = parents if create_graph else tuple([parent._data for parent in parents])
            if batched is not None and (type(node) is batched or type(g) is batched or
                                        type(parents[0]) is batched):
                # per-example params: the rule must run on nodes, in vmap's namespace
                contributions = _batching.vjp(node, g, needs, create_graph)
                _batching.accumulate(grads, parents, contributions, needed, create_graph)
                continue
            if create_graph:
                _ORIGIN.set(node)
                contributions = op.vjp(graph_ops, g, node, ins, node._params, needs)
            else:
                contributions = op.vjp(raw_ops, g, node._data, ins, node._params, needs)
            # a rule gives None for an input that needs no gradient (see ops.py)
            for parent, contribution in zip(parents, contributions):
                if contribution is None:
                    continue
                pkey = id(parent)
                if needed is not None and pkey not in needed:
                    continue
                if pkey not in grads:
                    grads[pkey] = contribution
                elif create_graph or pkey not in owned:
                    grads[pkey] = grads[pkey] + contribution
                    if not create_graph:
                        owned.add(pkey)
                else:
                    grads[pkey] += contribution  # a buffer we allocated: add in place
    finally:
        if create_graph:
            _ORIGIN.reset(origin_token)
            _GRAD_ENABLED.reset(mode_token)
    return captured


def _leading_to(order, targets):
    """ids of the nodes in ``order`` (parents first) from which some target is reachable."""
    needed = set(targets)
    for node in order:
        if id(node) not in needed:
            for parent in node._parents:
                if id(parent) in needed:
                    needed.add(id(node))
                    break
    return needed


def grad(outputs, inputs, grad_outputs=None, create_graph=False, allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs``, like ``torch.autograd.grad``.

    ``outputs``: a node (Tensor or Value) or a sequence of them. A non-scalar output
    needs its ``grad_outputs`` entry (the vector in the vector-Jacobian product).
    ``inputs``: a node or a sequence of nodes, each requiring grad.
    ``create_graph``: record the backward pass so the result can be differentiated again.
    ``allow_unused``: return None for an input the outputs do not depend on, instead of
    raising.

    Returns a tuple with one gradient per input, each shaped like its input.

    >>> import tinygrad_meta as tgm
    >>> x = tgm.Tensor(3.0, requires_grad=True)
    >>> (dx,) = tgm.grad(x ** 3, [x], create_graph=True)
    >>> (ddx,) = tgm.grad(dx, [x])
    >>> float(dx.item()), float(ddx.item())
    (27.0, 18.0)
    """
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    single_input = not isinstance(inputs, (list, tuple))
    inputs = [inputs] if single_input else list(inputs)
    if not inputs:
        raise ValueError("grad: inputs is empty")
    if not outputs:
        raise ValueError("grad: outputs is empty")
    kind = type(outputs[0])
    if not hasattr(kind, "_graph_ops"):
        _check_nodes(outputs, "output", "grad")  # raises, naming it
    for index, node in enumerate(outputs):
        if type(node) is not kind:
            _check_nodes(outputs, "output", "grad")
        if not node._requires_grad:
            raise RuntimeError(
                f"grad: output {index} does not require grad and has no graph; it does not "
                "depend on any input that requires grad (or was computed under no_grad)")
    for index, node in enumerate(inputs):
        if type(node) is not kind:
            _check_nodes(inputs, "input", "grad", kind)
        if not node._requires_grad:
            raise RuntimeError(
                f"grad: input {index} does not require grad; create it with requires_grad=True "
                "or call .requires_grad_() on it")
    seeds = _seed_gradients(outputs, grad_outputs, "grad", create_graph)
    captured = _run_backward(outputs, seeds, create_graph, capture={id(node): node for node in inputs})
    results = []
    for index, node in enumerate(inputs):
        g = captured.get(id(node), (None, None))[1]
        if g is None:
            if not allow_unused:
                raise RuntimeError(
                    f"grad: input {index} was not used to compute the outputs; pass "
                    "allow_unused=True to get None for it")
        elif not create_graph and not _is_batched(g):
            g = node._wrap(g)
        results.append(g)
    return tuple(results)


def _check_nodes(items, what, caller, kind=None):
    """Every item is a node of one kind: ``kind``, or the first item's."""
    kind = kind or type(items[0])
    if not hasattr(kind, "_graph_ops"):
        raise TypeError(f"{caller}: {what} 0 is {kind.__name__}, not a Tensor or a Value")
    for index, node in enumerate(items):
        # a batched tensor (vmap) is a Tensor: they share the recording namespace
        if type(node) is not kind and getattr(node, "_graph_ops", None) is not kind._graph_ops:
            if not hasattr(node, "_graph_ops"):
                raise TypeError(f"{caller}: {what} {index} is {type(node).__name__}, "
                                "not a Tensor or a Value")
            raise TypeError(f"{caller}: {what} {index} is a {type(node).__name__} among "
                            f"{kind.__name__}s; use one kind")


def backward(output, gradient=None, create_graph=False):
    """Accumulate d(output)/d(leaf) into ``leaf.grad`` for every leaf that requires grad."""
    _check_nodes([output], "output", "backward")
    if not output._requires_grad:
        raise RuntimeError(
            "backward: the output does not require grad and has no graph; it does not depend "
            "on any tensor created with requires_grad=True (or was computed under no_grad)")
    seeds = _seed_gradients([output], None if gradient is None else [gradient], "backward",
                            create_graph)
    captured = _run_backward([output], seeds, create_graph)
    with _SetGradMode(create_graph):
        for leaf, g in captured.values():
            if not create_graph and not _is_batched(g):
                g = leaf._wrap(g)
            leaf.grad = g if leaf.grad is None else leaf.grad + g
