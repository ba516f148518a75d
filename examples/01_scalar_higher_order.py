"""01: derivatives of a scalar function to 4th order with `Value`, checked against the analytic ones.

What it teaches:
* `grad(y, [x], create_graph=True)` returns a `Value` that is itself a graph node, so
  calling `grad` on it again gives the next derivative -- to any order.
* The answers are exact (to rounding): we compare with closed forms. For tanh, every
  derivative is a polynomial in t = tanh(x), since d/dx P(t) = P'(t) (1 - t^2); for
  sigmoid, d/dx P(s) = P'(s) s (1 - s).
* What it costs: each order records a bigger graph (counted with `tinygrad_meta.viz`).

Run: python examples/01_scalar_higher_order.py [--quick]
Ends with a table and a plot (examples_out/01_tanh_derivatives.png, when matplotlib exists).
"""
import math
import time

import numpy as np
from numpy.polynomial import Polynomial

from _common import pyplot, quick_mode, save, table

from tinygrad_meta import Value, grad
from tinygrad_meta.viz import graph_stats

QUICK = quick_mode()
MAX_ORDER = 4


def engine_derivatives(f, x0, max_order):
    """[f(x0), f'(x0), ..., f^(max_order)(x0)] as Values, by repeated grad(create_graph=True)."""
    x = Value(x0)
    values = [f(x)]
    for _ in range(max_order):
        (d,) = grad(values[-1], [x], create_graph=True)
        values.append(d)
    return values


def analytic_derivatives(inner, chain, x0, max_order):
    """Derivatives of u(x) = inner(x) when u' = chain(u): d/dx P(u) = P'(u) * chain(u)."""
    u = inner(x0)
    poly, chain_poly, out = Polynomial([0.0, 1.0]), Polynomial(chain), []
    for _ in range(max_order + 1):
        out.append(poly(u))
        poly = poly.deriv() * chain_poly
    return out


FUNCTIONS = {
    # name: (Value function, float function, coefficients of u' as a polynomial in u)
    "tanh": (lambda x: x.tanh(), math.tanh, [1.0, 0.0, -1.0]),             # 1 - t^2
    "sigmoid": (lambda x: x.sigmoid(), lambda v: 1 / (1 + math.exp(-v)), [0.0, 1.0, -1.0]),  # s - s^2
}


def main():
    points = [-1.3, 0.4] if QUICK else [-2.0, -1.3, -0.5, 0.0, 0.4, 1.1, 2.5]
    rows, worst = [], 0.0
    for name, (value_fn, float_fn, chain) in FUNCTIONS.items():
        for x0 in points:
            ours = engine_derivatives(value_fn, x0, MAX_ORDER)
            exact = analytic_derivatives(float_fn, chain, x0, MAX_ORDER)
            for order in range(1, MAX_ORDER + 1):
                error = abs(ours[order].data - exact[order])
                worst = max(worst, error / max(1.0, abs(exact[order])))
                rows.append([name, x0, order, ours[order].data, exact[order], f"{error:.1e}"])
    print("Derivatives by the engine vs closed forms:\n")
    table(["f", "x", "order", "engine", "analytic", "|error|"], rows, floatfmt="{:.10g}")
    print(f"\nworst relative error: {worst:.1e} (float64 rounding is ~1e-16)")
    assert worst < 1e-12, "the engine disagrees with the analytic derivatives"

    # what each order costs: the graph behind the k-th derivative of a composite function
    def composite(x):
        return (x * x).tanh() * x.sigmoid()

    print("\nGraph behind each derivative of f(x) = tanh(x*x) * sigmoid(x) at x = 0.7:\n")
    top = 4 if QUICK else 6
    x = Value(0.7)
    current, size_rows = composite(x), []
    for order in range(top + 1):
        stats = graph_stats(current)
        by_order = " ".join(f"{k}:{n}" for k, n in stats["ops_by_depth"].items())
        size_rows.append([order, stats["ops"], by_order])
        if order < top:
            start = time.perf_counter()
            (current,) = grad(current, [x], create_graph=True)
            size_rows[-1].append(f"{(time.perf_counter() - start) * 1e3:.2f} ms")
        else:
            size_rows[-1].append("-")
    table(["order", "ops in graph", "ops by rule depth", "time of next grad"], size_rows)
    print("(rule depth k = recorded while the backward rule of a depth k-1 node ran; each\n"
          " backward pass runs a rule for every node it passes, and each rule records new ops)")
    growth = [size_rows[k + 1][1] / size_rows[k][1] for k in range(1, top)]
    print("growth per order:", ", ".join(f"{g:.2f}x" for g in growth))

    plt = pyplot()
    if plt is None:
        return
    grid = np.linspace(-3, 3, 13 if QUICK else 121)
    ours = np.array([[v.data for v in engine_derivatives(lambda t: t.tanh(), float(g), MAX_ORDER)] for g in grid])
    exact = np.array([analytic_derivatives(math.tanh, [1.0, 0.0, -1.0], float(g), MAX_ORDER) for g in grid])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for order in range(MAX_ORDER + 1):
        axes[0].plot(grid, ours[:, order], label=f"k = {order}" + (" (tanh itself)" if order == 0 else ""))
        axes[0].plot(grid, exact[:, order], "k:", linewidth=1)
    axes[0].plot([], [], "k:", linewidth=1, label="closed form")
    axes[0].set_title("k-th derivative of tanh: engine (solid) vs closed form (dotted)")
    axes[0].set_xlabel("x")
    axes[0].set_ylabel("d$^k$ tanh(x) / dx$^k$")
    axes[0].legend(fontsize=8)
    orders = [r[0] for r in size_rows]
    axes[1].semilogy(orders, [r[1] for r in size_rows], "o-")
    axes[1].set_title("graph size per order: ops behind the k-th derivative\n"
                      "of tanh(x*x)*sigmoid(x) at x = 0.7")
    axes[1].set_xticks(orders)
    axes[1].set_xlabel("derivative order k")
    axes[1].set_ylabel("op nodes in the graph (log scale)")
    save(figure, "01_tanh_derivatives.png")


if __name__ == "__main__":
    main()
