# %% [markdown]
# # Build backprop-through-backprop yourself
#
# A script in notebook-cell format (`# %%`): run it top to bottom with
# `python docs/tutorial/build_your_own_backprop.py [--quick]`, or open it as a notebook in
# VS Code / Jupytext. Every claim it makes is checked by an `assert` against
# `tinygrad_meta`, and `tests/test_tutorial.py` runs it in fast mode in CI.
#
# What you will build and see:
#
# 1. a scalar autograd engine of about 60 lines whose *only* difference between first and
#    higher order is one switch in the backward pass: the derivative rules see raw numbers
#    (and compute floats) or they see the nodes themselves (and record new nodes);
# 2. a backward pass frame by frame: the gradient arriving at each node in turn;
# 3. Hessian-vector products two ways, forward-over-reverse and reverse-over-reverse,
#    timed side by side, with the identity H v = d/dε ∇f(x + ε v) checked;
# 4. three exercises, with answers at the end, each asserted in code.
#
# Output: printed tables, and `backward_frames.png` in `$TGM_TUTORIAL_OUT` (default
# `./tutorial_out`) when matplotlib is installed. Fast mode (`--quick` or `TGM_QUICK=1`)
# shrinks the sizes and repeats, never the checks.

# %%
import math
import os
import statistics
import sys
import time

import numpy as np

import tinygrad_meta as tgm
from tinygrad_meta.viz import graph_stats, node_order

QUICK = "--quick" in sys.argv[1:] or os.environ.get("TGM_QUICK", "0") not in ("", "0")
OUT_DIR = os.environ.get("TGM_TUTORIAL_OUT", "tutorial_out")
ANSWERS = {}  # every exercise's answer, for tests/test_tutorial.py to check against the engine

# %% [markdown]
# ## 1. A scalar engine in about 60 lines
#
# A `Value` holds its number (`data`), the op that made it and its parents. Each op has a
# forward on raw numbers and **one rule per input**, the partial derivative times the
# incoming gradient `g`, written with `+`, `*`, `**`, `tanh`, `exp`: the same operators
# work on floats and on `Value`s. That is the whole trick (HIPS autograd's): when the
# backward pass hands a rule raw numbers it computes a float; when it hands it the
# nodes, the same rule records new `Value`s, a graph of the derivative, which `grad`
# can walk again. micrograd's rules mutate float gradients in closures, which is why it
# stops at first order.
#
# A node that depends on no leaf is a constant and records nothing, so constants (the
# seed `1.0`, a `-1` from a subtraction) do not clutter the graph.

# %%
def tanh(x):
    return x.tanh() if hasattr(x, "tanh") else math.tanh(x)


def exp(x):
    return x.exp() if hasattr(x, "exp") else math.exp(x)


class Value:
    """A scalar node. ``data`` is a float (or any number-like object, e.g. a Dual below)."""
    recorded = 0  # op nodes ever created: the difference across a pass is what it recorded

    def __init__(self, data, parents=(), op=None, requires_grad=False, name=""):
        self.data, self.name = data, name
        self.requires_grad = requires_grad or any(p.requires_grad for p in parents)
        # a result of constants only is a constant: it keeps no parents, records no op
        self.parents, self.op = (parents, op) if self.requires_grad and parents else ((), None)
        Value.recorded += self.op is not None

    def __add__(self, other): return apply("+", self, other)
    def __radd__(self, other): return apply("+", other, self)
    def __mul__(self, other): return apply("*", self, other)
    def __rmul__(self, other): return apply("*", other, self)
    def __neg__(self): return self * -1.0
    def __sub__(self, other): return self + -other
    def __rsub__(self, other): return other + -self
    def __pow__(self, n): return apply("**", self, n)  # n: a constant number
    def tanh(self): return apply("tanh", self)
    def exp(self): return apply("exp", self)
    def __repr__(self): return f"Value({self.data})"


def apply(op, *inputs):
    inputs = tuple(x if isinstance(x, Value) else Value(x) for x in inputs)
    return Value(RULES[op][0](*(x.data for x in inputs)), inputs, op)


RULES = {  # op: (forward on raw numbers, (one rule per input: (g, out, *ins) -> contribution))
    "+": (lambda a, b: a + b, (lambda g, out, a, b: g, lambda g, out, a, b: g)),
    "*": (lambda a, b: a * b, (lambda g, out, a, b: g * b, lambda g, out, a, b: g * a)),
    "**": (lambda a, n: a ** n, (lambda g, out, a, n: g * n * a ** (n - 1), None)),
    "tanh": (tanh, (lambda g, out, a: g * (1 - out * out),)),
    "exp": (exp, (lambda g, out, a: g * out,)),
}


def topological_order(root):
    """Every node ``root`` depends on, parents first (iterative: deep graphs are fine)."""
    order, seen, stack = [], {id(root)}, [(root, iter(root.parents))]
    while stack:
        node, parents = stack[-1]
        parent = next(parents, None)
        if parent is None:
            order.append(stack.pop()[0])
        elif id(parent) not in seen:
            seen.add(id(parent))
            stack.append((parent, iter(parent.parents)))
    return order


def grad(y, xs, create_graph=False, watch=None):
    """[dy/dx for x in xs] as Values; differentiable again when ``create_graph``.
    ``watch(node, g)`` is called as each node's gradient is complete."""
    grads = {id(y): Value(1.0) if create_graph else 1.0}
    for node in reversed(topological_order(y)):
        g = grads.get(id(node))
        if watch is not None:
            watch(node, g)
        if g is None or node.op is None:
            continue
        # THE switch: the rules see the nodes (and record) or their raw numbers (and don't)
        out, ins = (node, node.parents) if create_graph else (node.data, [p.data for p in node.parents])
        for parent, rule in zip(node.parents, RULES[node.op][1]):
            if parent.requires_grad:
                contribution = rule(g, out, *ins)
                key = id(parent)
                grads[key] = grads[key] + contribution if key in grads else contribution
    found = [grads.get(id(x), 0.0) for x in xs]
    return [g if isinstance(g, Value) else Value(g) for g in found]

# %% [markdown]
# ### Checked against `tinygrad_meta.Value` to several orders
#
# `grad(..., create_graph=True)` again and again gives the k-th derivative. We compare
# every order with the library's engine at a few points, for one and for two variables
# (a mixed partial ∂²f/∂x∂y is a gradient of a gradient with respect to another input).

# %%
def f_one(x):
    return tanh(x * x) * exp(x) - x ** 3


def f_two(x, y):
    return tanh(x * y) + x ** 3 * exp(y)


def derivatives(make_leaf, grad_fn, x0, max_order):
    """[f(x0), f'(x0), ...] as floats, by repeated grad(create_graph=True)."""
    x = make_leaf(x0)
    current, out = f_one(x), []
    for order in range(max_order + 1):
        out.append(current.data)
        if order < max_order:
            (current,) = grad_fn(current, [x], create_graph=True)
    return out


MAX_ORDER = 4 if QUICK else 6
worst = 0.0
for x0 in (-1.3, 0.4, 0.9):
    ours = derivatives(lambda v: Value(v, requires_grad=True), grad, x0, MAX_ORDER)
    library = derivatives(tgm.Value, tgm.grad, x0, MAX_ORDER)
    for a, b in zip(ours, library):
        worst = max(worst, abs(a - b) / max(1.0, abs(b)))
x, y = Value(0.3, requires_grad=True), Value(-0.7, requires_grad=True)
(dfdx,) = grad(f_two(x, y), [x], create_graph=True)
(d2fdxdy,) = grad(dfdx, [y])
tx, ty = tgm.Value(0.3), tgm.Value(-0.7)
(tdfdx,) = tgm.grad(f_two(tx, ty), [tx], create_graph=True)
(td2fdxdy,) = tgm.grad(tdfdx, [ty])
worst = max(worst, abs(d2fdxdy.data - td2fdxdy.data) / max(1.0, abs(td2fdxdy.data)))
print(f"tutorial engine vs tinygrad_meta.Value, derivatives of order 0..{MAX_ORDER} and a mixed "
      f"partial: worst relative difference {worst:.1e}")
# both engines apply the same rules in the same order; only rounding may differ
assert worst < 1e-12, "the tutorial engine disagrees with tinygrad_meta"

# %% [markdown]
# ## 2. A backward pass, frame by frame
#
# One neuron, L = tanh(w·x + b). The backward pass visits the nodes in reverse
# topological order; when it reaches a node, every path from L to it has already
# delivered its share, so the node's gradient is complete, and its rule sends a share on
# to each parent. `watch` records what the pass knows at each visit: the figure has one
# panel per visit, the node being visited in orange, finished nodes in green with their
# gradient, the rest still waiting ("grad ?").

# %%
def neuron():
    x = Value(2.0, requires_grad=True, name="x")
    w = Value(-0.5, requires_grad=True, name="w")
    b = Value(1.5, requires_grad=True, name="b")
    z = w * x
    z.name = "z = w·x"
    s = z + b
    s.name = "s = z + b"
    loss = s.tanh()
    loss.name = "L = tanh(s)"
    return loss, (x, w, b, z, s, loss)


loss, nodes = neuron()
frames = []  # (node visited, {node id: its gradient so far, for the nodes finished})
finished = {}


def watch(node, g):
    finished[id(node)] = g
    frames.append((node, dict(finished)))


leaf_grads = grad(loss, nodes[:3], watch=watch)
tx, tw, tb = tgm.Value(2.0), tgm.Value(-0.5), tgm.Value(1.5)
(tw * tx + tb).tanh().backward()
for ours, theirs in zip(leaf_grads, (tx, tw, tb)):
    assert abs(ours.data - theirs.grad.data) < 1e-15, "frame gradients disagree with tinygrad_meta"
print("backward pass visits:", " -> ".join(node.name for node, _ in frames))
print("gradients of L:", ", ".join(f"dL/d{n.name} = {g.data:.4f}" for n, g in zip(nodes, leaf_grads)))


def depth(node):
    """Column of a node in the picture: 0 for leaves, one right of its deepest parent."""
    return 0 if not node.parents else 1 + max(depth(p) for p in node.parents)


def draw_frames(frames, path):
    """One panel per visit of the backward pass; returns the path, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed, so no picture of the frames)")
        return None
    columns = {}
    for node in nodes:
        columns.setdefault(depth(node), []).append(node)
    position = {id(n): (d * 2.6, -row * 1.5 + (len(col) - 1) * 0.75)
                for d, col in columns.items() for row, n in enumerate(col)}
    rule_text = {"tanh": "its rule sends s: grad L · (1 - L²)", "+": "its rule sends z and b: grad s",
                 "*": "its rule sends w: grad z · x, and x: grad z · w"}
    figure, axes = plt.subplots(2, 3, figsize=(13, 6.4), layout="constrained")
    for step, (axis, (visited, known)) in enumerate(zip(axes.ravel(), frames), start=1):
        for node in nodes:
            for parent in node.parents:
                (x0, y0), (x1, y1) = position[id(parent)], position[id(node)]
                axis.annotate("", xy=(x1 - 0.85, y1), xytext=(x0 + 0.85, y0),
                              arrowprops={"arrowstyle": "->", "color": "#888888"})
        for node in nodes:
            px, py = position[id(node)]
            g = known.get(id(node))
            colour = "#fdb863" if node is visited else ("#b8e186" if g is not None else "#eeeeee")
            grad_text = "grad ?" if g is None else f"grad {g:.4f}"
            axis.text(px, py, f"{node.name}\ndata {node.data:.4f}\n{grad_text}", ha="center",
                      va="center", fontsize=9, bbox={"boxstyle": "round", "fc": colour, "ec": "#555555"})
        rule = rule_text.get(visited.op, "a leaf: nothing to send, its grad is the answer")
        axis.set_title(f"step {step}: {visited.name.split(' =')[0]}'s gradient is complete\n{rule}",
                       fontsize=10)
        axis.set_xlim(-1.1, 3 * 2.6 + 1.1)
        axis.set_ylim(-2.4, 2.4)
        axis.axis("off")
    figure.suptitle("Backward pass of L = tanh(w·x + b), one visit per panel (orange: visited now, "
                    "green: gradient complete, grey: not all shares arrived yet)", fontsize=11)
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"frames saved to {path}")
    return path


assert len(frames) == len(nodes), "the pass visits every node exactly once"
FRAMES_PNG = draw_frames(frames, "backward_frames.png")

# %% [markdown]
# ## 3. Hessian-vector products: forward-over-reverse vs reverse-over-reverse
#
# H v is the directional derivative of the gradient: H v = d/dε ∇f(x + ε v) at ε = 0.
# Two ways to get it without forming H:
#
# * **reverse over reverse**: record the gradient with `create_graph=True`, then take the
#   gradient of the scalar ∇f · v. This is what `tgm.hvp` does.
# * **forward over reverse**: push a tangent v through the gradient computation in
#   forward mode. `tinygrad_meta` has no forward mode (its `tgm.jvp` is the double-vjp
#   trick: reverse mode three times), so we build one here: a `Dual` number a + b·ε with
#   ε² = 0 carries a value and its tangent. Our engine's first-order rules compute on
#   whatever numbers they are given, so feeding it Duals runs the *same* backward pass
#   with tangents attached: each gradient comes out as ∇f + ε H v.
#
# We check every method against H v with H formed by `tgm.hessian` (the identity), check
# uᵀ(H v) = vᵀ(H u) (H is symmetric), and time them, alternating the methods and
# reporting medians (wall-clock on whatever machine runs this; ours is shared).

# %%
class Dual:
    """value + tangent·ε with ε² = 0: forward-mode differentiation of anything it flows through."""

    def __init__(self, value, tangent=0.0):
        self.value, self.tangent = value, tangent

    @staticmethod
    def lift(x):
        return x if isinstance(x, Dual) else Dual(x)

    def __add__(self, other):
        other = Dual.lift(other)
        return Dual(self.value + other.value, self.tangent + other.tangent)

    def __mul__(self, other):
        other = Dual.lift(other)
        return Dual(self.value * other.value, self.value * other.tangent + self.tangent * other.value)

    __radd__, __rmul__ = __add__, __mul__

    def __neg__(self):
        return Dual(-self.value, -self.tangent)

    def __sub__(self, other):
        return self + -Dual.lift(other)

    def __rsub__(self, other):
        return Dual.lift(other) - self

    def __pow__(self, n):
        return Dual(self.value ** n, n * self.value ** (n - 1) * self.tangent)

    def tanh(self):
        t = math.tanh(self.value)
        return Dual(t, (1 - t * t) * self.tangent)

    def exp(self):
        e = math.exp(self.value)
        return Dual(e, e * self.tangent)


def rosenbrock(xs):
    """sum_i 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2, on a list of scalars of any kind."""
    return sum(100.0 * (b - a ** 2) ** 2 + (1.0 - a) ** 2 for a, b in zip(xs[:-1], xs[1:]))


def rosenbrock_tensor(t):
    return (100.0 * (t[1:] - t[:-1] ** 2) ** 2 + (1.0 - t[:-1]) ** 2).sum()


def hvp_forward_over_reverse(x, v):
    xs = [Value(Dual(a, b), requires_grad=True) for a, b in zip(x, v)]
    return np.array([g.data.tangent for g in grad(rosenbrock(xs), xs)])


def hvp_reverse_over_reverse(x, v, value_type=Value, grad_fn=grad):
    xs = [value_type(float(a), requires_grad=True) for a in x]
    grads = grad_fn(rosenbrock(xs), xs, create_graph=True)
    dot = sum(g * float(b) for g, b in zip(grads, v))
    return np.array([h.data for h in grad_fn(dot, xs)])


def hvp_library_reverse_over_reverse(x, v):
    return tgm.hvp(rosenbrock_tensor, tgm.Tensor(x, dtype="float64"), tgm.Tensor(v, dtype="float64")).numpy()


def hvp_library_double_vjp(x, v):
    def gradient(t):
        return tgm.grad(rosenbrock_tensor(t), [t], create_graph=True)[0]
    return tgm.jvp(gradient, tgm.Tensor(x, dtype="float64"), tgm.Tensor(v, dtype="float64"))[1].numpy()


def gradient_of_values(x, value_type=Value, grad_fn=grad):
    xs = [value_type(float(a), requires_grad=True) for a in x]
    return np.array([g.data for g in grad_fn(rosenbrock(xs), xs)])


def gradient_of_tensor(x):
    t = tgm.Tensor(x, dtype="float64", requires_grad=True)
    return tgm.grad(rosenbrock_tensor(t), [t])[0].numpy()


def median_seconds(thunks, repeats):
    """Median wall time of each thunk, run in turn so machine load hits them all alike."""
    times = {name: [] for name in thunks}
    for _ in range(repeats):
        for name, thunk in thunks.items():
            start = time.perf_counter()
            thunk()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


rng = np.random.default_rng(0)
N = 30 if QUICK else 200
x_point, v_dir, u_dir = rng.normal(size=N), rng.normal(size=N), rng.normal(size=N)
hessian = tgm.hessian(rosenbrock_tensor, tgm.Tensor(x_point, dtype="float64")).numpy()
GRADIENTS = {  # one plain gradient per engine: each HVP is timed against its own engine's
    "tutorial engine": gradient_of_values,
    "tgm.Value": lambda x: gradient_of_values(x, tgm.Value, tgm.grad),
    "tgm.Tensor": gradient_of_tensor,
}
METHODS = {  # name: (H v function, engine)
    "forward-over-reverse (tutorial engine, Dual numbers)": (hvp_forward_over_reverse, "tutorial engine"),
    "reverse-over-reverse (tutorial engine)": (hvp_reverse_over_reverse, "tutorial engine"),
    "reverse-over-reverse (tgm.Value)":
        (lambda x, v: hvp_reverse_over_reverse(x, v, tgm.Value, tgm.grad), "tgm.Value"),
    "reverse-over-reverse (tgm.hvp)": (hvp_library_reverse_over_reverse, "tgm.Tensor"),
    "double-vjp trick (tgm.jvp of the gradient)": (hvp_library_double_vjp, "tgm.Tensor"),
}
thunks = {name: (lambda f=f: f(x_point, v_dir)) for name, (f, _) in METHODS.items()}
thunks.update({f"gradient ({engine})": (lambda f=f: f(x_point)) for engine, f in GRADIENTS.items()})
timings = median_seconds(thunks, repeats=3 if QUICK else 9)
print(f"\nHessian-vector products on the {N}-dimensional Rosenbrock function (float64); "
      f"times are medians of {3 if QUICK else 9} interleaved runs:\n")
print(f"{'method':52s} {'|Hv - H@v|/|H@v|':>17s} {'uᵀHv vs vᵀHu':>13s} {'time':>10s} "
      f"{'/ gradient, same engine':>24s}")
for name, (method, engine) in METHODS.items():
    hv, hu = method(x_point, v_dir), method(x_point, u_dir)
    identity_error = np.abs(hv - hessian @ v_dir).max() / np.abs(hessian @ v_dir).max()
    symmetry_error = abs(u_dir @ hv - v_dir @ hu) / abs(u_dir @ hv)
    # float64 sums of a few hundred terms: rounding is ~1e-15 relative
    assert identity_error < 1e-12 and symmetry_error < 1e-12, f"{name}: H v is wrong"
    print(f"{name:52s} {identity_error:17.1e} {symmetry_error:13.1e} {timings[name] * 1e3:7.2f} ms "
          f"{timings[name] / timings[f'gradient ({engine})']:23.1f}x")
for engine in GRADIENTS:
    print(f"{'gradient (' + engine + ')':52s} {'':17s} {'':13s} {timings[f'gradient ({engine})'] * 1e3:7.2f} ms")
print("(scalar engines build one node per arithmetic operation, Tensors a few per whole vector,\n"
      " so compare each HVP with its own engine's gradient, not across engines)")

# %% [markdown]
# ## 4. Exercises
#
# Try each before reading its answer at the end of this file; the answers are computed
# and asserted there.
#
# **Exercise 1.** y = x·x·x is two `*` nodes. Take `dy = grad(y, [x], create_graph=True)`
# and then `d2y = grad(dy, [x], create_graph=True)`. How many op nodes does the *second*
# backward pass record, and how many op nodes are in the graph behind d²y/dx²? (Use the
# rules in `RULES`: which products have a constant on both sides and so record nothing?
# Where do gradients from two paths meet and get added?)
#
# **Exercise 2.** Meta-SGD's inner step is fast = w - lr ⊙ ∇L_support(w), with a learned
# rate per weight. Show that with one inner step the meta-gradient with respect to lr is
# -∇L_query(fast) ⊙ ∇L_support(w), so it needs no `create_graph` at all; and that with two
# inner steps it does.
#
# **Exercise 3.** The graph behind the k-th derivative grows geometrically with k, yet a
# Hessian-vector product, a second-order quantity, costs about two gradients. Why?
#
# ---------------------------------------------------------------------------------------
# Answers below.
# ---------------------------------------------------------------------------------------

# %% [markdown]
# ## Answers
#
# ### Answer 1: 12 new op nodes; 13 op nodes behind d²y/dx²
#
# Write m = x·x and y = m·x. The first backward pass starts from the constant seed 1:
#
# * at y = m·x it records `1·x` (call it a) for m and `1·m` (call it c) for x;
# * at m = x·x it receives g = a and records `a·x` twice (once per input), and adds both
#   into x's gradient: two `+` nodes.
#
# So pass 1 records 6 nodes and dy/dx = (c + a·x) + a·x: 7 ops behind it (the 6 plus m).
#
# The second backward pass walks that graph from the seed 1:
#
# * the two `+` nodes pass g through unchanged: they record nothing;
# * the two `a·x` nodes receive the constant 1 and record `1·x` (for a) and `1·a` (for x)
#   each: 4 nodes, and 2 `+` to accumulate a's and x's gradients: 6 so far;
# * c = 1·m: the constant 1 needs no gradient, and m's gets `g·1` with g the constant
#   1: constant times constant, nothing recorded;
# * a = 1·x: its gradient is a node, so `g·1` records one node and the `+` into x's
#   gradient another: 8;
# * m = x·x receives the constant 1 (from c) and records `1·x` twice and two `+` into x's
#   gradient: 12.
#
# The graph behind d²y/dx² holds those 12 and the node a = 1·x from pass 1 (reached
# through `1·a`); m, c and y are no longer reachable: 13 ops. The engine's picture colours
# a node by the depth of the rule that recorded it: the 4 nodes recorded by m's rule
# (a forward node) are order 1, as is a, so d²y/dx² itself is an "order 1" node: 5 of
# order 1 and 8 of order 2.

# %%
def count_second_pass(value_type, grad_fn, recorded_ops):
    """(ops recorded by pass 1, ops recorded by pass 2, ops behind d2y) for y = x*x*x."""
    x = value_type(2.0, requires_grad=True)
    y = x * x * x
    before = recorded_ops()
    (dy,) = grad_fn(y, [x], create_graph=True)
    middle = recorded_ops()
    (d2y,) = grad_fn(dy, [x], create_graph=True)
    after = recorded_ops()
    return middle - before, after - middle, d2y


def tutorial_ops_behind(root):
    return sum(node.op is not None for node in topological_order(root))


first, second, d2y = count_second_pass(Value, grad, lambda: Value.recorded)
ANSWERS["x*x*x: ops recorded by pass 1"] = first
ANSWERS["x*x*x: ops recorded by pass 2"] = second
ANSWERS["x*x*x: ops behind d2y/dx2"] = tutorial_ops_behind(d2y)
assert (first, second, tutorial_ops_behind(d2y)) == (6, 12, 13), "the count derived above"
assert d2y.data == 6 * 2.0, "d2/dx2 x^3 = 6x"
# the library records exactly the same nodes: its rules are the same, and so is its
# rule for what a constant records
tx = tgm.Value(2.0)
(tdy,) = tgm.grad(tx * tx * tx, [tx], create_graph=True)
(td2y,) = tgm.grad(tdy, [tx], create_graph=True)
library_stats = graph_stats(td2y)
assert graph_stats(tdy)["ops"] == 7 and library_stats["ops"] == 13
assert library_stats["ops_by_order"] == {1: 5, 2: 8}
assert node_order(td2y) == 1, "the last + into x's gradient ran under m's (forward) rule"
print(f"\nExercise 1: pass 1 records {first} ops, pass 2 records {second}; "
      f"{tutorial_ops_behind(d2y)} ops behind d2y/dx2 (tinygrad_meta: {library_stats['ops']}, "
      f"by rule depth {library_stats['ops_by_order']})")

# %% [markdown]
# ### Answer 2: one step is first order, two steps are not
#
# With one step, fast = w - lr ⊙ g_s(w), and the chain rule gives
# ∂L_q(fast)/∂lr = (∂fast/∂lr)ᵀ ∇L_q(fast) = -g_s(w) ⊙ g_q(fast). g_s(w) does not depend on
# lr, so nothing has to be differentiated *through* the inner gradient: recording it with
# `create_graph=True` changes the gradient with respect to w (that is MAML's Hessian term),
# never the one with respect to lr.
#
# With two steps, fast₂ = fast₁ - lr ⊙ g_s(fast₁), and g_s(fast₁) depends on lr through
# fast₁. Differentiating gives
#
#     dL/dlr = -g_q ⊙ g_s(w) - g_q ⊙ g_s(fast₁) + g_s(w) ⊙ H_s(fast₁) (lr ⊙ g_q),
#
# where g_q = ∇L_q(fast₂). The last term is a Hessian-vector product: it exists only when
# the inner gradients are recorded (`create_graph=True`); the first-order version drops it.
# We check all three statements on a small least-squares problem, against an independent
# computation of each term, and then on the library's `MetaSGD` (example 05's network).

# %%
def least_squares(features, targets):
    def loss(w):
        residual = features @ w - targets
        return (residual * residual).sum() * (1.0 / len(targets))
    return loss


rng = np.random.default_rng(1)
DIM = 5
support_loss = least_squares(tgm.Tensor(rng.normal(size=(8, DIM)), dtype="float64"),
                             tgm.Tensor(rng.normal(size=8), dtype="float64"))
query_loss = least_squares(tgm.Tensor(rng.normal(size=(8, DIM)), dtype="float64"),
                           tgm.Tensor(rng.normal(size=8), dtype="float64"))
w0 = rng.normal(size=DIM)
lr0 = rng.uniform(0.05, 0.2, size=DIM)


def metasgd_lr_gradient(inner_steps, create_graph):
    w = tgm.Tensor(w0, dtype="float64", requires_grad=True)
    lr = tgm.Tensor(lr0, dtype="float64", requires_grad=True)
    fast = w
    for _ in range(inner_steps):
        (g_support,) = tgm.grad(support_loss(fast), [fast], create_graph=create_graph)
        fast = fast - lr * g_support
    (d_lr,) = tgm.grad(query_loss(fast), [lr])
    return d_lr.numpy(), fast


def gradient_at(loss, point):
    t = tgm.Tensor(point, dtype="float64", requires_grad=True)
    return tgm.grad(loss(t), [t])[0].numpy()


one_second, fast1 = metasgd_lr_gradient(1, create_graph=True)
one_first, _ = metasgd_lr_gradient(1, create_graph=False)
fast1 = fast1.numpy()
formula_one = -gradient_at(query_loss, fast1) * gradient_at(support_loss, w0)
assert np.allclose(one_second, formula_one, rtol=1e-12, atol=0), "one step: -g_q * g_s"
assert np.array_equal(one_second, one_first), "one step: create_graph changes nothing for lr"

two_second, fast2 = metasgd_lr_gradient(2, create_graph=True)
two_first, _ = metasgd_lr_gradient(2, create_graph=False)
g_q, g_s0, g_s1 = gradient_at(query_loss, fast2.numpy()), gradient_at(support_loss, w0), \
    gradient_at(support_loss, fast1)
hessian_term = g_s0 * tgm.hvp(support_loss, tgm.Tensor(fast1, dtype="float64"),
                              tgm.Tensor(lr0 * g_q, dtype="float64")).numpy()
assert np.allclose(two_first, -g_q * (g_s0 + g_s1), rtol=1e-12, atol=1e-15)
assert np.allclose(two_second, -g_q * (g_s0 + g_s1) + hessian_term, rtol=1e-10, atol=1e-14)
assert np.abs(two_second - two_first).max() > 1e3 * np.finfo(float).eps * np.abs(two_second).max(), \
    "two steps: the Hessian term must be visible"
ANSWERS["metasgd toy: max |lr grad, 2nd - 1st order|, 1 step"] = float(np.abs(one_second - one_first).max())
ANSWERS["metasgd toy: max |lr grad, 2nd - 1st order|, 2 steps"] = float(np.abs(two_second - two_first).max())

# the same on the library's Meta-SGD, example 05's 1-40-40-1 network at initialisation
from tinygrad_meta.meta import MetaSGD  # noqa: E402  (imported where it is first needed)
from tinygrad_meta.tasks.sinusoid import sample_batch, task_rng  # noqa: E402


def library_lr_gradients(inner_steps, first_order):
    model = tgm.nn.MLP([1, 40, 40, 1], rng=task_rng(0, 0, stream=4))
    learner = MetaSGD(model, init_lr=0.01, inner_steps=inner_steps, first_order=first_order)
    _, grads = learner.meta_step(sample_batch(25, 10, task_rng(0, 0)))
    return np.concatenate([np.asarray(g, dtype=np.float64).ravel() for name, g in grads.items()
                           if name.startswith("lr.")])


library_gap = {steps: float(np.abs(library_lr_gradients(steps, False) - library_lr_gradients(steps, True)).max())
               for steps in (1, 2)}
assert library_gap[1] == 0.0 and library_gap[2] > 0.0
ANSWERS["MetaSGD example-05 net: max |lr grad, 2nd - 1st order|, 1 step"] = library_gap[1]
ANSWERS["MetaSGD example-05 net: max |lr grad, 2nd - 1st order|, 2 steps"] = library_gap[2]
print(f"\nExercise 2: largest |second-order - first-order| entry of the lr meta-gradient: "
      f"toy {ANSWERS['metasgd toy: max |lr grad, 2nd - 1st order|, 1 step']:.1e} at one step, "
      f"{ANSWERS['metasgd toy: max |lr grad, 2nd - 1st order|, 2 steps']:.2e} at two; "
      f"MetaSGD on example 05's network {library_gap[1]:.1e} at one step, {library_gap[2]:.3f} at two")

# %% [markdown]
# ### Answer 3: every order re-differentiates everything before it; an HVP never does
#
# With `create_graph=True`, the backward pass runs one rule for *every* node of the graph
# it walks, and each rule records one or more nodes (a product's rule records two, plus
# an addition wherever two paths meet). The graph behind the k-th derivative is the
# graph the k-th pass recorded while walking the graph behind the (k-1)-th, which
# already contains everything earlier passes recorded; so |G_k| ≈ c·|G_{k-1}| and
# |G_k| ≈ c^k·|G_0|: geometric in k, with c a few.
#
# An HVP stops after two passes and only the first records: the forward pass (F nodes),
# one backward pass with `create_graph=True` that runs F rules and records B ≈ c·F nodes
# (the ∇f graph), and one backward pass over the W nodes behind ∇f·v (at most F + B) that
# records nothing. Work: 2F + B + W against a gradient's 2F, a ratio of about two that
# does not depend on the size of x, because B/F and W/F do not. A full Hessian is n of
# those, and the k-th derivative tensor is nᵏ numbers; an HVP asks for one direction,
# and that is what keeps it at a constant multiple of a gradient.
#
# Below: op counts per order (the library's engine, `graph_stats`), the ratio B/F of an
# HVP at two sizes, and its time against a gradient's.

# %%
def composite(x):
    return tanh(x * x) * exp(x)


TOP = 4 if QUICK else 6
tx = tgm.Value(0.7)
current, ops_per_order = composite(tx), []
for order in range(TOP + 1):
    ops_per_order.append(graph_stats(current)["ops"])
    if order < TOP:
        (current,) = tgm.grad(current, [tx], create_graph=True)
growth = [b / a for a, b in zip(ops_per_order[1:], ops_per_order[2:])]
ANSWERS["ops behind the k-th derivative of tanh(x*x)*exp(x)"] = ops_per_order
assert all(g > 1.5 for g in growth), "each order multiplies the graph"


def hvp_counts(n):
    """(F forward ops, B ops the create_graph gradient records, W ops the last pass walks,
    ops the last pass records) for the n-dimensional Rosenbrock function on tgm.Value."""
    xs = [tgm.Value(float(a)) for a in np.linspace(-1.0, 1.0, n)]
    f = rosenbrock(xs)
    forward_ops = graph_stats(f)["ops"]
    grads = tgm.grad(f, xs, create_graph=True)
    recorded = sum(count for order, count in graph_stats(grads)["ops_by_order"].items() if order >= 1)
    dot = sum(g * 0.5 for g in grads)
    walked = graph_stats(dot)["ops"]
    hv = tgm.grad(dot, xs)
    recorded_last = sum(h.requires_grad for h in hv)
    return forward_ops, recorded, walked, recorded_last


small, large = hvp_counts(10), hvp_counts(40)
ratio_small, ratio_large = small[1] / small[0], large[1] / large[0]
walk_ratio = large[2] / large[0]
ANSWERS["hvp B/F at n=10, n=40"] = (ratio_small, ratio_large)
# B/F tends to a constant as n grows; the end terms of the sum make small n differ a little
assert abs(ratio_small - ratio_large) < 0.1 * ratio_large and small[3] == large[3] == 0
hvp_time = timings["reverse-over-reverse (tgm.Value)"]
print(f"\nExercise 3: ops behind the k-th derivative of tanh(x*x)*exp(x), k = 0..{TOP}: "
      f"{ops_per_order}; growth per order {', '.join(f'{g:.2f}x' for g in growth)}")
print(f"  HVP of the n-dim Rosenbrock (tgm.Value): the create_graph gradient records B/F = "
      f"{ratio_small:.2f} (n=10), {ratio_large:.2f} (n=40) ops per forward op; the last pass walks "
      f"W/F = {walk_ratio:.2f} and records 0")
print(f"  predicted HVP/gradient work ratio (2F + B + W)/(2F) = {(2 + ratio_large + walk_ratio) / 2:.2f}; "
      f"measured time ratio (tgm.Value, n={N}): "
      f"{hvp_time / timings['gradient (tgm.Value)']:.2f}")
print("\nAnswers (checked against tinygrad_meta by tests/test_tutorial.py):")
for key, value in ANSWERS.items():
    print(f"  {key}: {value}")
