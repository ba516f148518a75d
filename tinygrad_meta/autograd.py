"""The one graph core shared by ``Value`` (scalars) and ``Tensor`` (n-d arrays).

A node is any object with these attributes:

* ``requires_grad`` -- whether gradients flow into it;
* ``_parents``      -- the tuple of nodes it was computed from (empty for a leaf);
* ``_rule``         -- ``rule(node, g) -> tuple`` giving, for each parent, the
  gradient contribution (or ``None``); ``None`` for a leaf;
* ``grad``          -- where ``backward()`` accumulates a leaf's gradient;
* ``_origin``       -- None, or the node whose backward rule recorded this one;
* ``_seq``          -- creation order (from ``next_seq()``): a node can only have
  ancestors created before it, which lets ``grad`` skip the older part of a graph;

and the method ``_ones_like()`` (the seed gradient of a scalar output).

Derivative rules are written in the node type's own differentiable ops. With
``create_graph=False`` they run under ``no_grad`` and record nothing; with
``create_graph=True`` they record a graph like any forward pass, so the result
can be differentiated again, to any order.
"""
from __future__ import annotations

import functools
import itertools

__all__ = ["grad", "backward", "no_grad", "enable_grad", "is_grad_enabled", "toposort"]

# Every recorded node and every leaf that requires grad takes the next number.
next_seq = itertools.count(1).__next__


class _GradMode:
    """Process-wide state read by every op before it records a graph node.

    ``enabled``: ops record the graph. ``origin``: while the backward rule of node N
    runs with ``create_graph=True``, N; every node recorded then gets ``_origin = N``,
    which is how ``viz`` tells the graph a backward pass recorded from the forward one.
    """
    enabled = True
    origin = None


def is_grad_enabled() -> bool:
    """True when ops record the graph (the default)."""
    return _GradMode.enabled


class _SetGradMode:
    """Context manager and decorator that sets grad mode and restores it on exit."""

    def __init__(self, mode: bool):
        self.mode = mode
        self.previous = []

    def __enter__(self):
        self.previous.append(_GradMode.enabled)
        _GradMode.enabled = self.mode
        return self

    def __exit__(self, *exc):
        _GradMode.enabled = self.previous.pop()
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
        if id(root) in visited or not root.requires_grad:
            continue
        visited.add(id(root))
        stack = [(root, iter(root._parents))]
        while stack:
            node, parents = stack[-1]
            for parent in parents:
                if parent.requires_grad and id(parent) not in visited and parent._seq >= oldest:
                    visited.add(id(parent))
                    stack.append((parent, iter(parent._parents)))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


def _seed_gradients(outputs, grad_outputs, caller):
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
        seeds.append(seed)
    return seeds


def _run_backward(outputs, seeds, create_graph, capture=None):
    """Walk the graph from ``outputs`` in reverse topological order.

    ``capture``: None (collect every leaf's gradient) or a dict ``id(node) -> node`` of
    the nodes whose gradients are wanted; then only the part of the graph between the
    outputs and those nodes is walked.
    Returns the dict ``id(node) -> (node, accumulated gradient)`` of what was collected.
    """
    if capture is None:
        order = toposort(outputs)
        needed = None
    else:
        order = toposort(outputs, oldest=min(node._seq for node in capture.values()))
        needed = _leading_to(order, capture)
    grads = {}
    for output, seed in zip(outputs, seeds):
        if output.requires_grad:
            key = id(output)
            grads[key] = grads[key] + seed if key in grads else seed
    captured = {}
    owned = set()  # gradients this pass allocated itself, safe to add into in place
    pop = grads.pop
    previous_mode, previous_origin = _GradMode.enabled, _GradMode.origin
    _GradMode.enabled = create_graph
    try:
        for node in reversed(order):
            key = id(node)
            g = pop(key, None)
            if g is None:
                continue
            rule = node._rule
            if rule is None:
                if capture is None or key in capture:
                    captured[key] = (node, g)
                continue
            if capture is not None and key in capture:
                captured[key] = (node, g)
                if len(captured) == len(capture):
                    break
            if create_graph:
                _GradMode.origin = node
            for parent, contribution in zip(node._parents, rule(node, g)):
                if contribution is None or not parent.requires_grad:
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
                    # nothing is recorded: add into the buffer we allocated (no new node)
                    grads[pkey].data += contribution.data
    finally:
        _GradMode.enabled, _GradMode.origin = previous_mode, previous_origin
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
    for index, node in enumerate(inputs):
        if not getattr(node, "requires_grad", False):
            raise RuntimeError(
                f"grad: input {index} does not require grad; create it with requires_grad=True "
                "or call .requires_grad_() on it")
    for index, node in enumerate(outputs):
        if not node.requires_grad:
            raise RuntimeError(
                f"grad: output {index} does not require grad and has no graph; it does not "
                "depend on any input that requires grad (or was computed under no_grad)")
    seeds = _seed_gradients(outputs, grad_outputs, "grad")
    captured = _run_backward(outputs, seeds, create_graph, capture={id(node): node for node in inputs})
    results = []
    for index, node in enumerate(inputs):
        g = captured.get(id(node), (None, None))[1]
        if g is None:
            if not allow_unused:
                raise RuntimeError(
                    f"grad: input {index} was not used to compute the outputs; pass "
                    "allow_unused=True to get None for it")
        elif not create_graph:
            g = g.detach()
        results.append(g)
    return tuple(results)


def backward(output, gradient=None, create_graph=False):
    """Accumulate d(output)/d(leaf) into ``leaf.grad`` for every leaf that requires grad."""
    if not output.requires_grad:
        raise RuntimeError(
            "backward: the output does not require grad and has no graph; it does not depend "
            "on any tensor created with requires_grad=True (or was computed under no_grad)")
    seeds = _seed_gradients([output], None if gradient is None else [gradient], "backward")
    captured = _run_backward([output], seeds, create_graph)
    with _SetGradMode(create_graph):
        for leaf, g in captured.values():
            if not create_graph:
                g = g.detach()
            leaf.grad = g if leaf.grad is None else leaf.grad + g
