"""Regenerate the pictures and every number of docs/how-backprop-through-backprop-works.md.

Run from the repository root:

    python docs/make_figures.py            # everything (about two minutes on one core)
    python docs/make_figures.py --fast     # the cheap, deterministic numbers only; no figures

Writes docs/figures/*.svg (graphs; needs Graphviz's `dot`) and *.png (plots; needs
matplotlib), and docs/figures/numbers.json: for each number the document quotes, its
value and the text the document quotes it as. tests/test_docs.py recomputes the cheap
numbers with ``compute(fast=True)``, compares them with numbers.json and checks that the
document contains every quoted text, so the document cannot drift from the code.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
import tracemalloc

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import tinygrad_meta as tgm  # noqa: E402
from tinygrad_meta import Value, grad, viz  # noqa: E402
from tinygrad_meta import functional as F  # noqa: E402
from tinygrad_meta.meta import MAML  # noqa: E402
from tinygrad_meta.meta.base import sgd_update  # noqa: E402
from tinygrad_meta.meta.hyperopt import (HyperOptimizer, evaluate_hyperparameters,  # noqa: E402
                                         hyperparameter_values, implicit_hypergradient,
                                         make_hyperparameters, unrolled_hypergradient)
from tinygrad_meta.tasks.sinusoid import sample_batch, task_rng  # noqa: E402

FIGURES = os.path.join(HERE, "figures")
NUMBERS = os.path.join(FIGURES, "numbers.json")


class Numbers:
    """The numbers the document quotes: key -> (value, the text the document quotes)."""

    def __init__(self):
        self.items = collections.OrderedDict()

    def __call__(self, key, value, text):
        if key in self.items:
            raise KeyError(f"make_figures: number {key!r} recorded twice")
        self.items[key] = {"value": value, "text": text}
        print(f"  {key}: {text}")
        return value

    def as_json(self):
        return json.dumps(self.items, indent=1, ensure_ascii=False) + "\n"


def comma(n):
    return f"{int(n):,}"


def picture(outputs, name, figures, **options):
    """Draw a graph into docs/figures/NAME.svg (only the SVG is committed)."""
    if not figures:
        return
    path = os.path.join(FIGURES, name + ".svg")
    try:
        viz.draw(outputs, path, **options)
    except viz.GraphvizNotFoundError as error:
        print(f"  {error}", file=sys.stderr)
        return
    os.remove(os.path.join(FIGURES, name + ".dot"))
    print(f"  wrote docs/figures/{name}.svg")


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("  matplotlib is not installed: no plots", file=sys.stderr)
        return None


def save_plot(figure, name):
    path = os.path.join(FIGURES, name + ".png")
    # 100 dpi at 8 inches wide: 800 px, the README's width, so text is read at its size
    figure.savefig(path, dpi=100)
    print(f"  wrote docs/figures/{name}.png")


# ---- 1-3: the scalar walkthrough ------------------------------------------------------

def scalar_walkthrough(num, figures):
    print("1. f(x) = tanh(x*x) at x = 0.7")
    x = Value(0.7)
    y = (x * x).tanh()
    num("y", y.data, f"{y.data:.6f}")
    picture(y, "order0_forward", figures, names={"x": x}, compact=True,
            title="order 0: y = tanh(x*x), the forward graph")
    (plain,) = grad(y, [x])
    num("dy_plain_parents", len(plain._parents), "no parents")
    (dy,) = grad(y, [x], create_graph=True)
    num("dy", dy.data, f"{dy.data:.6f}")
    num("one_minus_tanh2", 1.0 - y.data ** 2, f"{1.0 - y.data ** 2:.4f}")
    stages1 = [("forward: y = tanh(x*x)", y), ("grad call 1: dy/dx", dy)]
    picture(dy, "order1_first_derivative", figures, names={"x": x}, compact=True, stages=stages1,
            title="dy/dx = grad(y, [x], create_graph=True)")
    (d2y,) = grad(dy, [x], create_graph=True)
    num("d2y", d2y.data, f"{d2y.data:.6f}")
    stages2 = stages1 + [("grad call 2: d²y/dx²", d2y)]
    picture(d2y, "order2_second_derivative", figures, names={"x": x}, compact=True, stages=stages2,
            title="d²y/dx² = grad(dy/dx, [x], create_graph=True)")
    picture(d2y, "order2_second_derivative_collapsed", figures, names={"x": x}, collapse=True,
            stages=stages2, title="d²y/dx², one box per (pass, depth, cluster, op)")
    num("d2y_is_depth", viz.rule_depth(d2y), f"depth {viz.rule_depth(d2y)}")

    values = [y, dy, d2y]
    for _ in range(2):
        (nxt,) = grad(values[-1], [x], create_graph=True)
        values.append(nxt)
    passes = viz.ops_per_pass(values)
    for order, (value, added) in enumerate(zip(values, passes)):
        stats = viz.graph_stats(value)
        by_depth = ", ".join(f"{k}: {n}" for k, n in stats["ops_by_depth"].items())
        new = ", ".join(f"{k}: {n}" for k, n in added["by_depth"].items())
        num(f"table_order{order}", [stats["ops"], stats["ops_by_depth"], added["ops"], added["by_depth"]],
            f"| {stats['ops']} | {by_depth} | {added['ops']} | {new} |")
    growth = [passes[k + 1]["ops"] / passes[k]["ops"] for k in range(1, 4)]
    num("growth", [round(g, 2) for g in growth], f"{min(growth):.1f}–{max(growth):.1f}×")
    second = passes[2]["by_depth"]
    num("pass2_depth1", second[1], f"{second[1]} of depth 1")
    num("pass2_depth2", second[2], f"{second[2]} of depth 2")


# ---- 4: memory of MAML vs FOMAML --------------------------------------------------------

def _buffers(loss):
    """(op or kind, rule depth, shape, bytes) of every distinct buffer the graph holds."""
    nodes, _, _ = viz._collect([loss])
    seen, out = set(), []
    for node in nodes:
        base = node.data
        while getattr(base, "base", None) is not None:
            base = base.base
        if id(base) in seen:
            continue
        seen.add(id(base))
        out.append((viz.op_name(node) or viz._kind(node), viz.rule_depth(node),
                    tuple(node.data.shape), int(base.nbytes)))
    return out


def maml_memory(num, fast):
    print("4. memory of one MAML meta-loss on sinusoids (25 tasks, K=10, MLP [1, 40, 40, 1])")
    model = tgm.nn.MLP([1, 40, 40, 1], rng=task_rng(0, 0, stream=4))
    batch = sample_batch(25, 10, task_rng(0, 0))
    MAML(model).meta_loss(batch)  # warm-up: one-time kernel set-up must not count
    held = {}
    for first_order in (True, False):
        name = "fomaml" if first_order else "maml"
        maml = MAML(model, inner_lr=0.01, inner_steps=1, first_order=first_order)
        tracemalloc.start()
        loss = maml.meta_loss(batch)
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stats = viz.graph_stats(loss)
        by_depth = ", ".join(f"{n} of depth {k}" for k, n in stats["ops_by_depth"].items())
        num(f"{name}_ops", [stats["ops"], stats["ops_by_depth"]], f"{stats['ops']} ({by_depth})")
        num(f"{name}_bytes", stats["data_bytes"], comma(stats["data_bytes"]))
        if not fast:  # the Python heap varies a little from run to run
            num(f"{name}_heap", current, comma(current))
        held[name] = _buffers(loss)
    difference = sum(b[3] for b in held["maml"]) - sum(b[3] for b in held["fomaml"])
    num("maml_extra_bytes", difference, comma(difference))
    num("maml_ratio", round(sum(b[3] for b in held["maml"]) / sum(b[3] for b in held["fomaml"]), 2),
        f"{sum(b[3] for b in held['maml']) / sum(b[3] for b in held['fomaml']):.2f}×")
    # the per-task 40x40 weights and gradients: (25, 40, 40) float32 buffers of their own
    big = [[f"{b[0]} (depth {b[1]})" for b in held[n] if b[2] == (25, 40, 40) and b[3] == 25 * 40 * 40 * 4]
           for n in ("fomaml", "maml")]
    num("fomaml_weight_arrays", sorted(big[0]), " and ".join(sorted(big[0])))
    num("maml_weight_arrays", sorted(big[1]), " and ".join(sorted(big[1])))
    # what MAML holds beyond FOMAML, shape by shape
    count = {n: collections.Counter(b[2] for b in held[n]) for n in held}
    shape = (25, 10, 40)
    more = count["maml"][shape] - count["fomaml"][shape]
    per = next(b[3] for b in held["maml"] if b[2] == shape)
    num("extra_activation_arrays", more, f"{more} more (25, 10, 40) float32 arrays")
    num("extra_activation_bytes", more * per, comma(more * per))
    ops = collections.Counter(f"{b[0]} (depth {b[1]})" for b in held["maml"] if b[2] == shape)
    fo_ops = collections.Counter(f"{b[0]} (depth {b[1]})" for b in held["fomaml"] if b[2] == shape)
    text = ", ".join(f"{n}× {op}" for op, n in sorted(ops.items()))
    num("maml_activation_arrays", dict(ops), text)
    num("fomaml_activation_arrays", dict(fo_ops), ", ".join(f"{n}× {op}" for op, n in sorted(fo_ops.items())))
    steps_text = []
    for steps in (1, 2, 5):
        stats = viz.graph_stats(MAML(model, inner_lr=0.01, inner_steps=steps).meta_loss(batch))
        steps_text.append((steps, stats["data_bytes"], stats["ops"]))
    num("maml_steps_bytes", [s[1] for s in steps_text],
        ", ".join(f"{comma(b)} for {s} step{'s' if s > 1 else ''}" for s, b, _ in steps_text))
    num("maml_steps_ops", [s[2] for s in steps_text], ", ".join(str(o) for _, _, o in steps_text))


# ---- 5: MAML's meta-gradient, K inner steps ----------------------------------------------

def _paper_net(dtype, seed=0):
    return tgm.nn.MLP([1, 40, 40, 1], dtype=dtype, rng=np.random.default_rng(seed))


def maml_product_formula(num):
    """The K-step MAML meta-gradient equals (I-αH_0)...(I-αH_{K-1}) ∇L_query(θ_K)."""
    print("5. MAML's meta-gradient through K inner steps, by the product formula (float64)")
    model = _paper_net("float64")
    names = list(model.parameter_dict())
    theta = [p.detach().requires_grad_(True) for p in model.parameter_dict().values()]
    rng = np.random.default_rng(1)
    amplitude, phase = rng.uniform(0.1, 5.0), rng.uniform(0, np.pi)
    sx, qx = (tgm.Tensor(rng.uniform(-5, 5, size=(10, 1)), dtype="float64") for _ in range(2))
    sy = tgm.Tensor(amplitude * np.sin(sx.numpy() - phase), dtype="float64")
    qy = tgm.Tensor(amplitude * np.sin(qx.numpy() - phase), dtype="float64")
    alpha = 0.01

    def loss(params, x, y):
        return F.mse_loss(tgm.func.functional_call(model, dict(zip(names, params)), (x,)), y)

    results = {}
    for steps in (1, 3):
        path = [theta]
        for _ in range(steps):
            g = grad(loss(path[-1], sx, sy), path[-1], create_graph=True)
            path.append([p - alpha * gi for p, gi in zip(path[-1], g)])
        meta = grad(loss(path[-1], qx, qy), theta)
        # the product, applied right to left: v <- (I - α H_k) v for k = K-1, ..., 0
        last = [p.detach().requires_grad_(True) for p in path[-1]]
        v = [g.detach() for g in grad(loss(last, qx, qy), last)]
        g_query = [t.numpy() for t in v]
        for k in reversed(range(steps)):
            point = [p.detach() for p in path[k]]
            h_v = tgm.hvp(lambda *p: loss(list(p), sx, sy), point, v)
            v = [tgm.Tensor(vi.numpy() - alpha * hi.numpy(), dtype="float64") for vi, hi in zip(v, h_v)]
        difference = max(np.abs(m.numpy() - e.numpy()).max() for m, e in zip(meta, v))
        scale = max(np.abs(m.numpy()).max() for m in meta)
        flat_meta = np.concatenate([m.numpy().ravel() for m in meta])
        flat_first = np.concatenate([g.ravel() for g in g_query])
        results[steps] = (difference, scale, flat_meta, flat_first)
    num("identity_1step", float(f"{results[1][0]:.1e}"), f"{results[1][0]:.1e}")
    num("identity_3step", float(f"{results[3][0]:.1e}"), f"{results[3][0]:.1e}")
    num("identity_scale", float(f"{results[3][1]:.2g}"), f"{results[3][1]:.2g}")


def maml_figure(figures):
    """One task, a 1-4-1 ReLU net, K = 3 inner steps, every leaf named."""
    if not figures:
        return
    rng = np.random.default_rng(0)
    model = tgm.nn.MLP([1, 4, 1], rng=rng)
    names = {"layers.0.weight": "W1", "layers.0.bias": "b1", "layers.1.weight": "W2",
             "layers.1.bias": "b2"}
    theta = dict(model.parameter_dict())
    sx, sy = tgm.Tensor(rng.uniform(-5, 5, (5, 1))), tgm.Tensor(rng.uniform(-1, 1, (5, 1)))
    qx, qy = tgm.Tensor(rng.uniform(-5, 5, (5, 1))), tgm.Tensor(rng.uniform(-1, 1, (5, 1)))
    fast, stages = theta, []
    for k in range(3):
        support = F.mse_loss(tgm.func.functional_call(model, fast, (sx,)), sy)
        g = grad(support, list(fast.values()), create_graph=True)
        fast = collections.OrderedDict((n, sgd_update(p, gi, 0.01)) for (n, p), gi in zip(fast.items(), g))
        stages.append((f"inner step {k + 1}: θ{k + 1} = θ{k} − α ∇L_support(θ{k})", list(fast.values())))
    meta_loss = F.mse_loss(tgm.func.functional_call(model, fast, (qx,)), qy)
    stages.append(("meta-loss: L_query(θ3)", meta_loss))
    labels = {names[n]: p for n, p in theta.items()}
    labels.update({"support x": sx, "support y": sy, "query x": qx, "query y": qy})
    picture(meta_loss, "maml_meta_loss_collapsed", figures, names=labels, collapse="op", stages=stages,
            rankdir="TB", constants=False, show_values=False, title="MAML meta-loss: 1-4-1 ReLU net, one task, K = 3 inner steps")


def fomaml_gap(num, fast, figures):
    """Cosine of the first- and second-order meta-gradients while MAML trains."""
    print("6. first- vs second-order meta-gradient on the paper's network during MAML training")
    model = tgm.nn.MLP([1, 40, 40, 1], rng=task_rng(0, 0, stream=4))
    second = MAML(model, inner_lr=0.01, first_order=False)
    first = MAML(model, inner_lr=0.01, first_order=True)
    optimizer = tgm.optim.Adam(second.meta_parameters(), lr=1e-3)
    held_out = [sample_batch(25, 10, task_rng(0, j, stream=7)) for j in range(16)]

    def flat(grads):
        return np.concatenate([g.numpy().ravel() for g in grads.values()]).astype(np.float64)

    def measure():
        cosines, relative = [], []
        for batch in held_out:
            a, b = flat(second.meta_step(batch)[1]), flat(first.meta_step(batch)[1])
            cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            relative.append(np.linalg.norm(a - b) / np.linalg.norm(a))
        return float(np.mean(cosines)), float(np.min(cosines)), float(np.mean(relative))

    at_init = measure()
    num("cosine_init", round(at_init[0], 3), f"{at_init[0]:.3f}")
    if fast:
        return
    every, total = 250, 10000
    curve = [(0,) + at_init]
    for iteration in range(total):
        _, grads = second.meta_step(sample_batch(25, 10, task_rng(0, iteration)))
        optimizer.step(grads)
        if (iteration + 1) % every == 0:
            curve.append((iteration + 1,) + measure())
    by_iteration = {c[0]: c for c in curve}
    num("cosine_3000", round(by_iteration[3000][1], 3), f"{by_iteration[3000][1]:.3f}")
    num("cosine_3000_min", round(by_iteration[3000][2], 3), f"{by_iteration[3000][2]:.2f}")
    late = [c[1] for c in curve if c[0] >= 2000]
    num("cosine_late_range", [round(min(late), 2), round(max(late), 2)],
        f"{min(late):.2f}–{max(late):.2f}")
    num("relative_gap_init", round(at_init[2], 3), f"{at_init[2]:.2f}")
    num("relative_gap_3000", round(by_iteration[3000][3], 2), f"{by_iteration[3000][3]:.2f}")
    num("cosine_iterations", total, comma(total))
    plt = pyplot()
    if plt is None or not figures:
        return
    figure, axis = plt.subplots(figsize=(8, 3.6), layout="constrained")
    steps = [c[0] for c in curve]
    axis.plot(steps, [c[1] for c in curve], ".-", label="mean over 16 held-out batches of 25 tasks")
    axis.plot(steps, [c[2] for c in curve], ":", color="grey", label="lowest of the 16 batches")
    axis.set_xlabel("MAML meta-training iteration (Adam, meta lr 1e-3, 25 tasks, K = 10)")
    axis.set_ylabel("cosine(first-order, second-order)")
    axis.set_title("FOMAML vs MAML meta-gradient, sinusoid MLP 1-40-40-1 (ReLU), α = 0.01")
    axis.set_ylim(min(0.0, min(c[2] for c in curve)) - 0.05, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    save_plot(figure, "fomaml_cosine")


# ---- 7: unrolled hypergradients ------------------------------------------------------------

SCALE = np.array([1.0, 2.0])         # L_train(w) = mse(SCALE * w, TARGET): Hessian diag(1, 4)
TARGET = np.array([1.0, 1.0])
VALIDATION = np.array([0.5, 0.8])    # L_val(w) = mse(w, VALIDATION)
RATES = (0.3, 0.2, 0.1)


def _quadratic():
    def train_loss(params, step=None):
        return F.mse_loss(params["w"] * tgm.Tensor(SCALE, dtype="float64"),
                          tgm.Tensor(TARGET, dtype="float64"))

    def val_loss(params):
        return F.mse_loss(params["w"], tgm.Tensor(VALIDATION, dtype="float64"))

    return train_loss, val_loss


def unrolled_formula(num, figures):
    print("7. unrolled hypergradient on a two-parameter quadratic, T = 3 SGD steps")
    train_loss, val_loss = _quadratic()
    w0 = tgm.Tensor(np.zeros(2), dtype="float64", requires_grad=True)
    rates = [tgm.Tensor(lr, dtype="float64", requires_grad=True) for lr in RATES]
    w, path, stages = w0, [w0], []
    for t, lr in enumerate(rates):
        g = grad(train_loss({"w": w}), [w], create_graph=True)[0]
        w = sgd_update(w, g, lr)
        path.append(w)
        stages.append((f"step {t + 1}: w{t + 1} = w{t} − lr{t} ∇L_train(w{t})", w))
    loss = val_loss({"w": w})
    stages.append(("L_val(w3)", loss))
    engine = [g.item() for g in grad(loss, rates)]
    names = {"w0": w0, **{f"lr{t}": r for t, r in enumerate(rates)}}
    picture(loss, "unrolled_hypergradient", figures, names=names, compact=True, stages=stages,
            rankdir="TB", show_values=False, constants=False,
            title="L_val after T = 3 SGD steps; grad(L_val, [lr0, lr1, lr2]) runs back through all three")

    # the formula: dL/dlr_t = -∇L_val(w_T)ᵀ (I - lr_{T-1} H)...(I - lr_{t+1} H) ∇L_train(w_t)
    hessian = np.diag(SCALE ** 2)  # of mse(SCALE * w, TARGET) with two entries
    ws = [p.numpy() for p in path]
    gradient = lambda v: SCALE * (SCALE * v - TARGET)  # noqa: E731
    formula = []
    for t in range(3):
        u = ws[3] - VALIDATION                     # ∇L_val(w_3) of mse over two entries
        for s in range(2, t, -1):
            u = (np.eye(2) - RATES[s] * hessian) @ u
        formula.append(float(-u @ gradient(ws[t])))
    library = unrolled_hypergradient(train_loss, val_loss, {"w": np.zeros(2)},
                                     make_hyperparameters(3, lr=np.array(RATES), tune=("lr-schedule",)), 3)
    # the library tunes log lr: d/dlog lr = lr · d/dlr
    from_library = library.hypergrads["log_lr"] / np.array(RATES)
    num("hyper_engine", [round(e, 6) for e in engine], ", ".join(f"{e:.6f}" for e in engine))
    difference = max(max(abs(a - b) for a, b in zip(engine, formula)),
                     float(np.abs(from_library - np.array(engine)).max()))
    num("hyper_formula_difference", float(f"{difference:.1e}"), f"{difference:.1e}")

    # with momentum, the reverse recursion of the adjoints (checked against the library)
    mu = 0.5
    ws, vs, w_now, v_now = [np.zeros(2)], [], np.zeros(2), np.zeros(2)
    for t in range(3):
        v_now = mu * v_now + gradient(w_now)
        w_now = w_now - RATES[t] * v_now
        ws.append(w_now)
        vs.append(v_now)
    w_bar, v_bar, recursion = ws[3] - VALIDATION, np.zeros(2), [0.0] * 3
    for t in reversed(range(3)):
        recursion[t] = float(-w_bar @ vs[t])
        v_bar = mu * v_bar - RATES[t] * w_bar
        w_bar = w_bar + hessian @ v_bar
    momentum_hyper = make_hyperparameters(3, lr=np.array(RATES), momentum=mu, tune=("lr-schedule",))
    with_momentum = unrolled_hypergradient(train_loss, val_loss, {"w": np.zeros(2)}, momentum_hyper, 3)
    momentum_difference = float(np.abs(with_momentum.hypergrads["log_lr"] / np.array(RATES)
                                       - np.array(recursion)).max())
    num("momentum_formula_difference", float(f"{momentum_difference:.1e}"), f"{momentum_difference:.1e}")


def _spirals_hyper(steps, lr=0.1):
    from hyperopt import ALL_KINDS
    return make_hyperparameters(steps, lr=lr, weight_decay={"layers.0": 1e-3, "layers.1": 1e-3},
                                momentum=0.9, init_scale=1.0, tune=ALL_KINDS)


def _peak(function):
    function()  # warm-up
    tracemalloc.start()
    result = function()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, peak


def unrolled_cost(num, fast):
    """Memory per unrolled step on benchmarks/hyperopt.py's problem, truncation, implicit."""
    if fast:
        return
    print("8. cost of unrolled hypergradients (benchmarks/hyperopt.py's spirals problem)")
    from hyperopt import spirals
    _, train_loss, val_loss, init, groups = spirals()
    peaks = {}
    for steps in (10, 50):
        _, peaks[steps] = _peak(lambda: unrolled_hypergradient(train_loss, val_loss, init,
                                                               _spirals_hyper(steps), steps, groups=groups))
    per_step = (peaks[50] - peaks[10]) / 40
    num("unrolled_kib_per_step", round(per_step / 1024), f"{per_step / 1024:.0f} KiB")
    num("unrolled_peak_50", round(peaks[50] / 2 ** 20, 1), f"{peaks[50] / 2 ** 20:.1f} MiB")
    num("unrolled_peak_per_t_10", round(peaks[10] / 10 / 1024), f"{peaks[10] / 10 / 1024:.0f} KiB")
    full, _ = _peak(lambda: unrolled_hypergradient(train_loss, val_loss, init, _spirals_hyper(50), 50,
                                                   groups=groups))
    short, short_peak = _peak(lambda: unrolled_hypergradient(train_loss, val_loss, init, _spirals_hyper(50),
                                                             50, truncate=10, groups=groups))
    num("truncate_peak", round(short_peak / 2 ** 20, 1), f"{short_peak / 2 ** 20:.1f} MiB")
    a, b = full.hypergrads["log_lr"], short.hypergrads["log_lr"]
    num("truncate_zero", int(np.sum(b == 0.0)), f"{int(np.sum(b == 0.0))} of the 50")
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    num("truncate_cosine", round(cosine, 2), f"{cosine:.2f}")
    last = float(np.abs(a[40:] - b[40:]).max() / np.abs(a[40:]).max())
    num("truncate_last_relative", float(f"{last:.0e}"),
        "exactly the full ones" if last == 0.0 else f"within {last:.0e} of the full ones")
    # a hyperparameter every step uses sees only the last k steps' share of its effect
    full_mu, short_mu = float(full.hypergrads["logit_momentum"]), float(short.hypergrads["logit_momentum"])
    num("truncate_momentum", [round(full_mu, 4), round(short_mu, 4)],
        f"{short_mu:.3g} instead of {full_mu:.3g}")

    # implicit: the memory of the CG solve does not depend on how long training ran
    from tinygrad_meta.tasks.classification import classification_losses, classifier, make_classification
    data = make_classification("gaussians", n_train=200, n_val=200, classes=5, features=10, noise=1.0, seed=0)
    linear_model = classifier([10, 5], seed=1)
    ce_train, ce_val = classification_losses(data, linear_model)
    lin_init = linear_model.state_dict()

    def train_with_decay(params, hyper):
        return ce_train(params) + sum(0.5 * hyper[f"log_wd/{n}"].exp() * (p * p).sum()
                                      for n, p in params.items())

    implicit_peaks = []
    for steps in (200, 800):
        fixed = make_hyperparameters(steps, lr=1.0, weight_decay={n: 1e-2 for n in lin_init}, tune=())
        _, trained, _ = evaluate_hyperparameters(lambda p, s: ce_train(p), ce_val, lin_init, fixed, steps)
        hyper = {f"log_wd/{n}": tgm.Tensor(np.log(1e-2), dtype="float64", requires_grad=True) for n in lin_init}
        _, peak = _peak(lambda: implicit_hypergradient(train_with_decay, ce_val, trained, hyper,
                                                       cg_iters=200, tol=1e-10))
        implicit_peaks.append(peak)
    num("implicit_kib", [round(p / 1024) for p in implicit_peaks],
        f"{implicit_peaks[0] / 1024:.0f} KiB after 200 training steps and {implicit_peaks[1] / 1024:.0f} KiB after 800")


def schedule_oscillation(num, fast, figures):
    """Why learned schedules oscillate: the long-horizon loss surface is rough."""
    if fast:
        return
    print("9. learned schedules: short horizons and rough long unrolls (spirals, SGD momentum 0.9)")
    from hyperopt import spirals
    _, train_loss, val_loss, init, _ = spirals()
    horizons = (10, 30, 100, 300)
    rates = np.geomspace(0.03, 3.0, 61)
    curves = {}
    for steps in horizons:
        curves[steps] = [evaluate_hyperparameters(train_loss, val_loss, init,
                                                  make_hyperparameters(steps, lr=lr, momentum=0.9, tune=()),
                                                  steps)[0] for lr in rates]
    best = {T: float(rates[int(np.nanargmin(c))]) for T, c in curves.items()}
    num("best_lr_by_horizon", best, ", ".join(f"{best[T]:.2g} for T = {T}" for T in horizons))
    # the schedule example 06 learns (T = 100, 40 hypergradient steps from lr 0.1)
    hyper = make_hyperparameters(100, lr=0.1, momentum=0.9)
    tuner = HyperOptimizer(train_loss, val_loss, init, hyper, 100, meta_lr=0.1)
    tuner.run(40, progress=False)
    learned = hyperparameter_values(tuner.hyperparams)["lr"]
    num("learned_range", [round(float(learned.min()), 2), round(float(learned.max()), 2)],
        f"{learned.min():.2f} and {learned.max():.2f}")
    # how often the per-step hypergradient changes sign along t, before and after
    flips = []
    for schedule in (np.full(100, 0.1), learned):
        at = make_hyperparameters(100, lr=schedule, momentum=0.9)
        signs = np.sign(unrolled_hypergradient(train_loss, val_loss, init, at, 100).hypergrads["log_lr"])
        flips.append(int(np.sum(signs[1:] != signs[:-1])))
    num("sign_flips", flips, f"{flips[0]} times at the constant start and {flips[1]} times at the learned schedule")
    plt = pyplot()
    if plt is None or not figures:
        return
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.4), layout="constrained")
    for T in horizons:
        axes[0].plot(rates, curves[T], label=f"T = {T}")
        axes[0].plot(best[T], min(curves[T]), "k.", markersize=5)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("constant learning rate")
    axes[0].set_ylabel("validation loss after T steps")
    axes[0].set_title("loss vs lr, per horizon (dot: best)", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].plot(np.arange(1, 101), learned, ".-", markersize=3)
    axes[1].axhline(0.1, color="grey", linestyle="--", label="start (0.1)")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("training step t")
    axes[1].set_ylabel("learned lr_t")
    axes[1].set_title("schedule learned by 40 hypergradient steps", fontsize=10)
    axes[1].legend(fontsize=8)
    figure.suptitle("spirals MLP 2-32-3, SGD momentum 0.9 (example 06's problem)", fontsize=10)
    save_plot(figure, "schedule_oscillation")


# ---- driver ---------------------------------------------------------------------------------

def compute(fast=False, figures=True):
    """Every number of the document as a ``Numbers``; ``fast`` skips the slow, noisy ones."""
    if figures:
        os.makedirs(FIGURES, exist_ok=True)
    num = Numbers()
    start = time.perf_counter()
    scalar_walkthrough(num, figures)
    maml_memory(num, fast)
    maml_product_formula(num)
    maml_figure(figures)
    fomaml_gap(num, fast, figures)
    unrolled_formula(num, figures)
    unrolled_cost(num, fast)
    schedule_oscillation(num, fast, figures)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return num


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="cheap deterministic numbers only, no figures")
    args = parser.parse_args(argv)
    num = compute(fast=args.fast, figures=not args.fast)
    if not args.fast:
        with open(NUMBERS, "w", encoding="utf-8") as handle:
            handle.write(num.as_json())
        print(f"wrote {os.path.relpath(NUMBERS, ROOT)}")


if __name__ == "__main__":
    main()
