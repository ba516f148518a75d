"""05: what Meta-SGD learns -- a learning rate for every single weight.

What it teaches:
* Meta-SGD (Li et al. 2017) is MAML whose inner update is `fast = w - lr * grad` with
  `lr` a tensor shaped like `w`, meta-learned along with `w`. With one inner step the
  meta-gradient with respect to `lr` is -g_query ⊙ g_support (g_support = the support
  gradient at w, g_query = the query gradient at fast): nothing is differentiated
  *through* the inner gradient, so it needs no `create_graph`. This example measures it:
  at initialisation the first-order (first_order=True) and second-order lr gradients
  are identical at one inner step (largest difference 0.0) and differ by 0.108 in their
  largest entry at two steps, where the second step's gradient depends on lr.
  `create_graph=True` matters for the gradient with respect to `w` (MAML's Hessian
  term) and for more than one inner step.
* After training, the rates are far from uniform: some grow, some shrink, some turn
  negative (the paper does not constrain them). We print their statistics per parameter
  tensor, draw their histograms and a heatmap of the 40x40 hidden layer's rates.
* They matter: one inner step with the learned rates beats one step with the initial
  uniform rate from the same initialisation.

Run: python examples/05_metasgd_learned_lrs.py [--quick]
Ends with a table and a plot (examples_out/05_metasgd_learned_lrs.png, when matplotlib exists).
"""
import time
from collections import OrderedDict

import numpy as np

from _common import pyplot, quick_mode, save, table

import tinygrad_meta as tgm
from tinygrad_meta.evaluate import adapt_curve
from tinygrad_meta.meta import MetaSGD
from tinygrad_meta.tasks.sinusoid import STREAM_EVAL, evaluation_batch, sample_batch, task_rng

QUICK = quick_mode()
ITERS = 100 if QUICK else 3000
EVAL_TASKS = 40 if QUICK else 300
SEED = 0
INIT_LR = 0.01


def new_model():
    return tgm.nn.MLP([1, 40, 40, 1], rng=task_rng(SEED, 0, stream=4))


def lr_gradient_gap(inner_steps):
    """Largest |second-order - first-order| entry of the lr meta-gradient, at initialisation."""
    rates = []
    for first_order in (False, True):
        learner = MetaSGD(new_model(), init_lr=INIT_LR, inner_steps=inner_steps, first_order=first_order)
        _, grads = learner.meta_step(sample_batch(25, 10, task_rng(SEED, 0)))
        rates.append(np.concatenate([np.asarray(g, dtype=np.float64).ravel()
                                     for name, g in grads.items() if name.startswith("lr.")]))
    return float(np.abs(rates[0] - rates[1]).max())


def main():
    gaps = {steps: lr_gradient_gap(steps) for steps in (1, 2)}
    print("lr meta-gradient, second order (create_graph=True) vs first order, at initialisation:")
    table(["inner steps", "largest |difference|"], [[steps, f"{gap:.3g}"] for steps, gap in gaps.items()])
    print("(one step: -g_query * g_support needs no create_graph; two steps: the second inner\n"
          " gradient depends on lr, and only the second-order version follows that)\n")
    assert gaps[1] == 0.0, "with one inner step the lr gradient must be first order"
    # the docstring quotes the two-step number: keep them the same
    assert f"differ by {gaps[2]:.3g} in their" in " ".join(__doc__.split()), \
        f"docstring's two-step gap is stale: measured {gaps[2]:.3g}"

    model = new_model()
    metasgd = MetaSGD(model, init_lr=INIT_LR, inner_steps=1)
    optimizer = tgm.optim.Adam(metasgd.meta_parameters(), lr=1e-3)
    start, history = time.perf_counter(), []
    for iteration in range(ITERS):
        loss, grads = metasgd.meta_step(sample_batch(25, 10, task_rng(SEED, iteration)))
        optimizer.step(grads)
        history.append(loss)
    print(f"Meta-SGD: {ITERS} meta-iterations in {time.perf_counter() - start:.1f} s; "
          f"meta-loss over the last 10%: {np.mean(history[-max(1, ITERS // 10):]):.3f}\n")

    rates = OrderedDict((name, lr.numpy().astype(np.float64)) for name, lr in metasgd.inner_learning_rates().items())
    rows = []
    for name, r in rates.items():
        rows.append([name, r.size, f"{r.mean():+.4f}", f"{r.std():.4f}", f"{r.min():+.4f}",
                     f"{r.max():+.4f}", f"{(r < 0).mean():.0%}"])
    print(f"Learned inner learning rates (all started at {INIT_LR}):\n")
    table(["parameter", "entries", "mean", "std", "min", "max", "negative"], rows)

    batch, _, _ = evaluation_batch(EVAL_TASKS, 10, task_rng(SEED, 10, STREAM_EVAL))
    params = OrderedDict((n, p.numpy()) for n, p in model.parameter_dict().items())
    learned = adapt_curve(model, params, batch, steps=(0, 1), lr=rates)
    uniform = adapt_curve(model, params, batch, steps=(0, 1), lr=INIT_LR)
    print(f"\nQuery MSE after one inner step from the meta-learned initialisation "
          f"({EVAL_TASKS} new tasks, K=10):")
    table(["inner rates", "0 steps", "1 step"],
          [["learned (per weight)", f"{learned[0].mean():.3f}", f"{learned[1].mean():.3f}"],
           [f"uniform {INIT_LR}", f"{uniform[0].mean():.3f}", f"{uniform[1].mean():.3f}"]])

    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    # shared bins: a one-entry tensor alone would get a ±0.5 range and stretch the axis
    every_rate = np.concatenate([r.ravel() for r in rates.values()])
    bins = np.linspace(min(every_rate.min(), INIT_LR) - 1e-3, max(every_rate.max(), INIT_LR) + 1e-3, 41)
    for name, r in rates.items():
        axes[0].hist(r.ravel(), bins=bins, histtype="step", linewidth=1.5, label=name)
    axes[0].axvline(INIT_LR, color="k", linestyle=":", label=f"initial {INIT_LR}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("learned inner learning rate")
    axes[0].set_ylabel("number of weights (log scale)")
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"learned per-weight inner rates vs the initial {INIT_LR}\n"
                      f"({ITERS} meta-iterations), one histogram per tensor")
    hidden = rates["layers.1.weight"]
    limit = np.abs(hidden).max()
    image = axes[1].imshow(hidden, cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes[1].set_title("learned rates of layers.1.weight (40 x 40),\none per weight (red > 0 > blue)")
    # nn.Linear keeps weight as (out_features, in_features): rows are output units
    axes[1].set_xlabel("input unit (column of the weight)")
    axes[1].set_ylabel("output unit (row of the weight)")
    figure.colorbar(image, ax=axes[1], label="learned inner learning rate")
    save(figure, "05_metasgd_learned_lrs.png")


if __name__ == "__main__":
    main()
