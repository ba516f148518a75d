"""02: Hessian-vector products without the Hessian, and Newton's method built on them.

What it teaches:
* `tgm.hvp(f, x, v)` computes H(x) v by differentiating the scalar grad(f)·v once more
  (reverse over reverse): about the cost of two gradients, never forming H.
* `tgm.hessian(f, x)` forms all of H with one HVP-like pass per input element; we check
  that both agree with the closed-form Hessian of the Rosenbrock function, and time them.
* Newton-CG: solve H p = -g by conjugate gradients using only HVPs, then line-search.
  On the 2-D Rosenbrock valley it reaches the minimum in a few dozen steps, where
  gradient descent crawls along the valley floor for thousands.

Run: python examples/02_hessian_vector_products.py [--quick]
Ends with two tables and a plot (examples_out/02_newton_vs_gd.png, when matplotlib exists).
"""
import time

import numpy as np

from _common import pyplot, quick_mode, save, table

import tinygrad_meta as tgm

QUICK = quick_mode()


def rosenbrock(x):
    """Extended Rosenbrock: sum_i 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2; minimum 0 at all ones."""
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def rosenbrock_hessian(x):
    """The closed-form Hessian (tridiagonal), for checking."""
    n = len(x)
    h = np.zeros((n, n))
    for i in range(n - 1):
        h[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        h[i + 1, i + 1] += 200
        h[i, i + 1] = h[i + 1, i] = -400 * x[i]
    return h


def best_of(repeats, thunk):
    """(result, fastest wall time of ``repeats`` runs): the minimum is the least noisy."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = thunk()
        times.append(time.perf_counter() - start)
    return result, min(times)


def compare_hvp_and_hessian():
    rng = np.random.default_rng(0)
    rows = []
    for n in ([10, 50] if QUICK else [10, 50, 200]):
        x0 = rng.normal(size=n)
        x = tgm.Tensor(x0, dtype="float64")
        v = tgm.Tensor(rng.normal(size=n), dtype="float64")
        hv, t_hvp = best_of(3, lambda: tgm.hvp(rosenbrock, x, v).numpy())
        h, t_hess = best_of(1 if QUICK else 3, lambda: tgm.hessian(rosenbrock, x).numpy())
        exact = rosenbrock_hessian(x0)
        rows.append([n, f"{np.abs(hv - h @ v.numpy()).max():.1e}", f"{np.abs(h - exact).max():.1e}",
                     f"{np.abs(hv - exact @ v.numpy()).max():.1e}",
                     f"{t_hvp * 1e3:.1f} ms", f"{t_hess * 1e3:.1f} ms", f"{t_hess / t_hvp:.0f}x"])
        assert np.allclose(hv, exact @ v.numpy(), rtol=1e-10, atol=1e-8)
        assert np.allclose(h, exact, rtol=1e-10, atol=1e-8)
    print("HVP vs full Hessian on the n-dimensional Rosenbrock function (float64):\n")
    table(["n", "|Hv - H@v|", "|H - exact|", "|Hv - exact@v|", "hvp time", "hessian time",
           "ratio"], rows)
    print("(an HVP builds the gradient graph once and runs one backward pass through it; the\n"
          " full Hessian runs n of them, one per row. Timings: best of 3, wall-clock, noisy.)\n")


def line_search(f, x, direction, slope, value):
    """Backtracking (Armijo): the largest step 2^-k along direction with enough decrease."""
    step = 1.0
    while step > 1e-12:
        candidate = x + step * direction
        if f(candidate) <= value + 1e-4 * step * slope:
            return candidate
        step *= 0.5
    return x


def f_numpy(x):
    return float(rosenbrock(tgm.Tensor(x, dtype="float64")).item())


def gradient(x):
    t = tgm.Tensor(x, dtype="float64", requires_grad=True)
    (g,) = tgm.grad(rosenbrock(t), [t])
    return g.numpy()


def newton_cg(x, iterations):
    """Newton steps; each solves H p = -g by CG with HVPs (no Hessian is ever formed)."""
    path, hvps = [x.copy()], 0
    for _ in range(iterations):
        g = gradient(x)
        if np.linalg.norm(g) < 1e-10:
            break
        p, r = np.zeros_like(x), -g
        d = r.copy()
        for _ in range(2 * len(x)):
            hd = tgm.hvp(rosenbrock, tgm.Tensor(x, dtype="float64"), tgm.Tensor(d, dtype="float64")).numpy()
            hvps += 1
            curvature = d @ hd
            if curvature <= 0:  # negative curvature: fall back to what we have (or -g)
                break
            alpha = (r @ r) / curvature
            p = p + alpha * d
            r_new = r - alpha * hd
            if np.linalg.norm(r_new) < 1e-12:
                break
            d = r_new + (r_new @ r_new) / (r @ r) * d
            r = r_new
        if not p.any():
            p = -g
        x = line_search(f_numpy, x, p, g @ p, f_numpy(x))
        path.append(x.copy())
    return np.array(path), hvps


def gradient_descent(x, iterations):
    path = [x.copy()]
    for _ in range(iterations):
        g = gradient(x)
        x = line_search(f_numpy, x, -g, -(g @ g), f_numpy(x))
        path.append(x.copy())
    return np.array(path)


def main():
    compare_hvp_and_hessian()
    start_point = np.array([-1.2, 1.0])
    newton_steps, gd_steps = (30, 300) if QUICK else (30, 5000)
    start = time.perf_counter()
    newton_path, hvps = newton_cg(start_point, newton_steps)
    t_newton = time.perf_counter() - start
    start = time.perf_counter()
    gd_path = gradient_descent(start_point, gd_steps)
    t_gd = time.perf_counter() - start
    newton_f = [f_numpy(p) for p in newton_path]
    gd_f = [f_numpy(p) for p in gd_path]
    print("Newton-CG (HVPs only) vs gradient descent, both with backtracking line search,")
    print("on the 2-D Rosenbrock function from (-1.2, 1):\n")
    checkpoints = [k for k in (0, 1, 2, 5, 10, 20, 30, 100, 300, 1000, 3000, 5000)
                   if k < max(len(newton_f), len(gd_f))]
    rows = []
    for k in checkpoints:
        rows.append([k, f"{newton_f[min(k, len(newton_f) - 1)]:.3e}", f"{gd_f[min(k, len(gd_f) - 1)]:.3e}"])
    table(["iteration", "f (Newton-CG)", "f (gradient descent)"], rows)
    print(f"\nNewton-CG: {len(newton_path) - 1} steps, {hvps} HVPs, {t_newton:.2f} s, ends at "
          f"{np.round(newton_path[-1], 8)}")
    print(f"gradient descent: {len(gd_path) - 1} steps, {t_gd:.2f} s, ends at {np.round(gd_path[-1], 4)}")
    assert newton_f[-1] < 1e-12, "Newton-CG should reach the minimum"

    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    grid_x, grid_y = np.meshgrid(np.linspace(-1.5, 1.5, 200), np.linspace(-0.5, 1.5, 200))
    values = 100 * (grid_y - grid_x ** 2) ** 2 + (1 - grid_x) ** 2
    axes[0].contour(grid_x, grid_y, np.log10(values + 1e-3), levels=20, cmap="Greys", linewidths=0.6)
    axes[0].plot(gd_path[:, 0], gd_path[:, 1], ".-", markersize=2, label="gradient descent")
    axes[0].plot(newton_path[:, 0], newton_path[:, 1], "o-", markersize=4, label="Newton-CG (HVPs)")
    axes[0].plot(*start_point, "ks", markersize=7, label="start (-1.2, 1)")
    axes[0].plot([1], [1], "k*", markersize=12, label="minimum (1, 1)")
    # below the axes: inside, any corner hides part of a path, the start or the minimum
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)
    axes[0].set_xlabel("$x_1$")
    axes[0].set_ylabel("$x_2$")
    axes[0].set_title("paths on the 2-D Rosenbrock valley\n(contours: log$_{10}$ f)")
    # iteration + 1 on a log axis: symlog crowded its ticks between 0 and 1
    axes[1].loglog(np.arange(1, len(gd_f) + 1), np.maximum(gd_f, 1e-20), label="gradient descent")
    axes[1].loglog(np.arange(1, len(newton_f) + 1), np.maximum(newton_f, 1e-20), "o-", markersize=3,
                   label="Newton-CG (HVPs)")
    axes[1].yaxis.set_major_locator(plt.matplotlib.ticker.LogLocator(numticks=8))
    axes[1].set_xlabel("iteration + 1 (log scale)")
    axes[1].set_ylabel("f(x), log scale (floored at 1e-20)")
    axes[1].set_title("objective per iteration: Newton-CG vs gradient descent\n"
                      "(both with backtracking line search)")
    axes[1].legend(fontsize=8)
    save(figure, "02_newton_vs_gd.png")


if __name__ == "__main__":
    main()
