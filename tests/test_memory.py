"""The graph is freed: nodes die as soon as the last reference to the output goes (by
reference counting alone, no cycle collector needed), and 1,000 forward/backward passes
of an MLP leave memory where it was."""
import gc
import tracemalloc
import weakref

import numpy as np

import tinygrad_meta as tgm
from tinygrad_meta.autograd import toposort

RNG = np.random.default_rng(0)


def mlp_parameters():
    shapes = [(4, 16), (16,), (16, 16), (16,), (16, 1), (1,)]
    return [tgm.Tensor(RNG.standard_normal(s) * 0.3, requires_grad=True) for s in shapes]


def mlp_loss(params, x, y):
    w1, b1, w2, b2, w3, b3 = params
    h = (x @ w1 + b1).relu()
    h = (h @ w2 + b2).tanh()
    return tgm.functional.mse_loss(h @ w3 + b3, y)


X = tgm.Tensor(RNG.standard_normal((8, 4)))
Y = tgm.Tensor(RNG.standard_normal((8, 1)))


class _NoCycleCollector:
    """Turn the cycle collector off: what dies inside died by reference counting."""

    def __enter__(self):
        gc.collect()
        gc.disable()

    def __exit__(self, *exc):
        gc.enable()


def test_graph_nodes_die_with_the_output_without_the_cycle_collector():
    params = mlp_parameters()
    with _NoCycleCollector():
        loss = mlp_loss(params, X, Y)
        nodes = [weakref.ref(n) for n in toposort([loss]) if n._op is not None]
        assert len(nodes) >= 8  # matmul, add, relu, ... for three layers and the loss
        loss.backward()
        del loss
        assert [r for r in nodes if r() is not None] == []


def test_second_order_graphs_die_too():
    params = mlp_parameters()
    with _NoCycleCollector():
        loss = mlp_loss(params, X, Y)
        grads = tgm.grad(loss, params, create_graph=True)
        penalty = sum((g * g).sum() for g in grads)
        nodes = [weakref.ref(n) for n in toposort([penalty]) if n._op is not None]
        tgm.grad(penalty, params)
        del loss, grads, penalty
        assert [r for r in nodes if r() is not None] == []


def test_value_graphs_die_with_the_output():
    x = tgm.Value(0.5)
    with _NoCycleCollector():
        z = ((x * x).tanh() + x.exp()) ** 2
        (g,) = tgm.grad(z, [x], create_graph=True)
        nodes = [weakref.ref(n) for n in toposort([z, g]) if n is not x]
        del z, g
        assert [r for r in nodes if r() is not None] == []


def test_memory_does_not_grow_over_1000_training_steps():
    params = mlp_parameters()

    def step():
        loss = mlp_loss(params, X, Y)
        loss.backward()
        with tgm.no_grad():
            for p in params:
                p.data -= 0.01 * p.grad.data
                p.grad = None

    alive = weakref.WeakSet()
    tracemalloc.start()
    try:
        # warm up under tracing: CPython's free lists (2-tuples, frames) refill in the
        # first steps and then plateau (at most 2000 tuples * 56 B = 112 KB); not a leak
        for _ in range(200):
            step()
        baseline = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            step()
            if i % 100 == 0:
                probe = mlp_loss(params, X, Y)   # sampled outputs must all die
                alive.add(probe)
                del probe
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert len(alive) == 0
    # a step's graph holds ~20 tensors with their arrays (~10 KB): leaking it would add
    # ~10 MB over 1000 steps, and leaking even one small tensor per step (~250 B) 250 KB;
    # 200 KB leaves room for the free-list plateau above
    assert grown < 200 * 1024, f"memory grew by {grown} bytes over 1000 steps"
