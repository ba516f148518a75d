"""Regenerate the pictures and numbers of docs/how-backprop-through-backprop-works.md.

Run from the repository root:  python docs/make_figures.py
Writes docs/figures/*.svg (needs Graphviz's `dot`; without it, the .dot files only) and
prints every number the document quotes, so the text can be checked against the code.
"""
import os
import sys
import tracemalloc
from collections import OrderedDict

import numpy as np

import tinygrad_meta as tgm
from tinygrad_meta import Value, grad
from tinygrad_meta.meta import MAML
from tinygrad_meta.tasks.sinusoid import sample_batch, task_rng
from tinygrad_meta.viz import GraphvizNotFoundError, draw, graph_stats

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.path.join(HERE, "figures")


def picture(outputs, name, **options):
    path = os.path.join(FIGURES, name + ".svg")
    try:
        written = draw(outputs, path, **options)
    except GraphvizNotFoundError as error:
        print(f"  {error}", file=sys.stderr)
        written = [os.path.join(FIGURES, name + ".dot")]
    # the .dot is the source of the .svg; only the picture is committed
    if path in written:
        os.remove(os.path.join(FIGURES, name + ".dot"))
    print(f"  wrote {os.path.relpath(written[-1], os.path.dirname(HERE))}")


def scalar_walkthrough():
    print("1. f(x) = tanh(x*x) at x = 0.7")
    x = Value(0.7)
    y = (x * x).tanh()
    picture(y, "order0_forward", names={"x": x}, title="order 0: y = tanh(x*x)")
    print(f"  y = {y.data:.6f}, x*x = {y._parents[0].data:.6f}")

    (g_plain,) = grad(y, [x])
    print(f"  grad without create_graph: {g_plain.data:.6f}, requires_grad={g_plain.requires_grad}, "
          f"parents={len(g_plain._parents)}")

    (dy,) = grad(y, [x], create_graph=True)
    picture(dy, "order1_first_derivative", names={"x": x},
            title="order 1: dy/dx = grad(y, [x], create_graph=True)")
    one_minus = 1.0 - y.data ** 2
    print(f"  dy/dx = {dy.data:.6f}; 1 - tanh^2 = {one_minus:.6f}; 2*0.7*(1 - tanh^2) = "
          f"{2 * 0.7 * one_minus:.6f}; stats {graph_stats(dy)}")

    (d2y,) = grad(dy, [x], create_graph=True)
    picture(d2y, "order2_second_derivative", names={"x": x},
            title="order 2: d2y/dx2 = grad(dy/dx, [x], create_graph=True)")
    picture(d2y, "order2_second_derivative_collapsed", names={"x": x}, collapse=True,
            title="order 2, collapsed: one box per (order, cluster, op)")
    print(f"  d2y/dx2 = {d2y.data:.6f}; stats {graph_stats(d2y)}")

    print("  graph behind each derivative:")
    current = y
    for order in range(5):
        stats = graph_stats(current)
        print(f"    order {order}: {stats['ops']} ops, by node order {stats['ops_by_order']}")
        if order < 4:
            (current,) = grad(current, [x], create_graph=True)


def memory_of_a_meta_step():
    print("2. memory of one MAML meta-loss on sinusoids (25 tasks, K=10, MLP [1, 40, 40, 1])")
    model = tgm.nn.MLP([1, 40, 40, 1], rng=task_rng(0, 0, stream=4))
    batch = sample_batch(25, 10, task_rng(0, 0))
    MAML(model).meta_loss(batch)  # warm-up: one-time kernel set-up must not count
    for first_order in (True, False):
        maml = MAML(model, inner_lr=0.01, inner_steps=1, first_order=first_order)
        tracemalloc.start()
        loss = maml.meta_loss(batch)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stats = graph_stats(loss)
        name = "FOMAML (first order)" if first_order else "MAML (second order)"
        print(f"  {name}: {stats['ops']} ops {stats['ops_by_order']}, array bytes held by the "
              f"graph {stats['data_bytes']}, Python heap held after the forward {current} "
              f"(peak {peak})")
        if not first_order:
            picture(loss, "maml_meta_loss_collapsed", collapse="op",
                    title="one MAML meta-loss (1 inner step), collapsed by op")
    for steps in (1, 2, 5):
        maml = MAML(model, inner_lr=0.01, inner_steps=steps)
        stats = graph_stats(maml.meta_loss(batch))
        print(f"  inner_steps={steps}: {stats['ops']} ops {stats['ops_by_order']}, "
              f"{stats['data_bytes']} array bytes")


def maml_meta_gradient_is_one_minus_alpha_h():
    print("3. the MAML meta-gradient equals (I - alpha H_support) grad L_query(theta') (one task, float64)")
    rng = np.random.default_rng(0)
    shapes = OrderedDict([("w1", (1, 16)), ("b1", (16,)), ("w2", (16, 1)), ("b2", (1,))])
    theta = [tgm.Tensor(rng.normal(size=s) * 0.5, dtype="float64", requires_grad=True) for s in shapes.values()]
    sx, qx = (tgm.Tensor(rng.uniform(-5, 5, size=(10, 1)), dtype="float64") for _ in range(2))
    sy, qy = tgm.Tensor(np.sin(sx.numpy())), tgm.Tensor(np.sin(qx.numpy()))
    sy, qy = sy.astype("float64"), qy.astype("float64")
    alpha = 0.01

    def net(p, x):
        return (x @ p[0] + p[1]).tanh() @ p[2] + p[3]

    def support_loss(*p):
        return ((net(p, sx) - sy) ** 2).mean()

    def query_loss(*p):
        return ((net(p, qx) - qy) ** 2).mean()

    inner = grad(support_loss(*theta), theta, create_graph=True)
    fast = [p - alpha * g for p, g in zip(theta, inner)]
    meta = grad(query_loss(*fast), theta)

    fast_leaves = [f.detach().requires_grad_(True) for f in fast]
    g_query = grad(query_loss(*fast_leaves), fast_leaves)
    h_g = tgm.hvp(support_loss, [p.detach() for p in theta], [g.detach() for g in g_query])
    explicit = [gq.numpy() - alpha * hg.numpy() for gq, hg in zip(g_query, h_g)]
    difference = max(np.abs(m.numpy() - e).max() for m, e in zip(meta, explicit))
    first_order_gap = max(np.abs(m.numpy() - gq.numpy()).max() for m, gq in zip(meta, g_query))
    scale = max(np.abs(m.numpy()).max() for m in meta)
    print(f"  max |meta-gradient - (g - alpha H g)| = {difference:.1e}; "
          f"max |meta-gradient - g| (what first order drops) = {first_order_gap:.2g}, "
          f"largest meta-gradient entry {scale:.2g}")


def main():
    os.makedirs(FIGURES, exist_ok=True)
    scalar_walkthrough()
    memory_of_a_meta_step()
    maml_meta_gradient_is_one_minus_alpha_h()


if __name__ == "__main__":
    main()
