"""06: learn a learning-rate schedule by differentiating through a whole training run.

What it teaches:
* Training for T steps with SGD and momentum 0.9 is a chain of differentiable updates
  b_t = 0.9 b_{t-1} + grad L_train(w_t) (b_0 = grad L_train(w_0), as in PyTorch),
  w_{t+1} = w_t - lr_t * b_t. Recording it with `create_graph=True` and backpropagating
  the final validation loss gives d L_val / d lr_t for every step t -- a hypergradient
  (Maclaurin et al. 2015). Each update holds a gradient, so this backward pass goes
  through T backward passes: backprop through backprop again.
* `tinygrad_meta.meta.hyperopt.HyperOptimizer` runs Adam on the log learning rates with
  those hypergradients; we check one direction of the hypergradient against a finite
  difference, then compare the learned schedule with the constant rates of a grid by
  the metric it optimises, the validation loss (plotted along each training run).

Run: python examples/06_hypergradient_lr_schedule.py [--quick]
Ends with a table and a plot (examples_out/06_lr_schedule.png, when matplotlib exists).
"""
import time

import numpy as np

from _common import pyplot, quick_mode, save, table

from tinygrad_meta import no_grad
from tinygrad_meta.meta import hyperopt as H
from tinygrad_meta.tasks.classification import classification_losses, classifier, make_classification

QUICK = quick_mode()
STEPS = 20 if QUICK else 100          # T, the unrolled training run
OUTER = 4 if QUICK else 40            # hypergradient steps
START_LR, MOMENTUM = 0.1, 0.9
GRID = (0.03, 0.1, 0.3, 1.0)


def main():
    data = make_classification("spirals", n_train=150, n_val=150, seed=0)
    model = classifier([data.features, 32, data.classes], seed=1)
    train_loss, val_loss = classification_losses(data, model)
    init = model.state_dict()

    def run_with(lr):
        """(final validation loss, validation loss before each step and after the last)."""
        fixed = H.make_hyperparameters(STEPS, lr=lr, momentum=MOMENTUM, tune=())
        along_the_way = []

        def train_loss_noting_validation(params, step=0):
            # the run calls this once per step with the current weights: note L_val there
            with no_grad():
                along_the_way.append(float(val_loss(params).item()))
            return train_loss(params, step)

        val, _, _ = H.evaluate_hyperparameters(train_loss_noting_validation, val_loss, init, fixed, STEPS)
        return val, np.array(along_the_way + [val])

    # 1. the hypergradient is exact: compare its sum (shift every log lr by the same eps)
    #    with a central finite difference of the validation loss in that direction
    hyper = H.make_hyperparameters(STEPS, lr=START_LR, momentum=MOMENTUM)
    result = H.unrolled_hypergradient(train_loss, val_loss, init, hyper, STEPS)
    eps = 1e-5
    up, _ = run_with(START_LR * np.exp(eps))
    down, _ = run_with(START_LR * np.exp(-eps))
    directional = result.hypergrads["log_lr"].sum()
    print(f"hypergradient check (T={STEPS}): sum_t dL_val/dlog(lr_t) = {directional:.8f}, "
          f"finite difference = {(up - down) / (2 * eps):.8f}\n")
    assert np.isclose(directional, (up - down) / (2 * eps), rtol=1e-4, atol=1e-7)

    # 2. learn the schedule
    tuner = H.HyperOptimizer(train_loss, val_loss, init, hyper, STEPS, meta_lr=0.1)
    start = time.perf_counter()
    history = tuner.run(OUTER, progress=False)
    seconds = time.perf_counter() - start
    learned_lr = H.hyperparameter_values(tuner.hyperparams)["lr"]
    learned_val, learned_curve = run_with(learned_lr)
    print(f"{OUTER} hypergradient steps through T={STEPS} SGD steps in {seconds:.1f} s "
          f"({seconds / max(OUTER, 1):.2f} s each)\n")

    # 3. against constant rates
    rows, curves = [], {}
    for lr in GRID:
        val, val_curve = run_with(lr)
        curves[f"constant lr {lr}"] = val_curve
        rows.append([f"constant lr {lr}", f"{val:.4f}"])
    rows.append([f"learned schedule (started at {START_LR})", f"{learned_val:.4f}"])
    print("validation cross-entropy after training (spirals, tanh MLP, SGD + momentum 0.9):\n")
    table(["learning rate", "val loss"], rows)
    print(f"\nlearned schedule: first steps {np.round(learned_lr[:5], 3).tolist()}, "
          f"last steps {np.round(learned_lr[-5:], 3).tolist()}")

    plt = pyplot()
    if plt is None:
        return
    # constrained layout keeps each panel's y-label clear of its neighbour's ticks
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    plain = plt.FuncFormatter(lambda value, _: f"{value:g}")  # 0.08, not 8x10^-2
    axes[0].plot(np.full(STEPS, START_LR), "--", label=f"initial (constant {START_LR})")
    axes[0].plot(learned_lr, label=f"learned ({OUTER} hypergradient steps)")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("training step t")
    axes[0].set_ylabel("learning rate lr_t (log scale)")
    axes[0].set_title("learning-rate schedule: learned vs initial")
    axes[0].legend(fontsize=8)
    axes[1].plot(history["val_loss"], ".-")
    axes[1].set_xlabel("hypergradient step (Adam on log lr_t)")
    axes[1].set_ylabel("val. cross-entropy after T steps (nats)")
    axes[1].set_title(f"meta-optimisation: validation loss\nafter the T = {STEPS} step run")
    for name, curve in curves.items():
        axes[2].plot(curve, linewidth=1, label=name)
    axes[2].plot(learned_curve, "k", linewidth=2, label="learned schedule")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("training step t")
    axes[2].set_ylabel("validation cross-entropy (nats, log scale)")
    axes[2].legend(fontsize=7)
    axes[2].set_title("validation loss along training:\nconstant rates vs the learned schedule")
    axes[1].xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    for axis in (axes[0], axes[2]):
        # log axes spanning about a decade: label 1-2-3-5 steps plainly (0.08, not 8x10^-2),
        # every minor tick labelled would overlap
        low, high = axis.get_ylim()
        for mantissas in ((1, 2, 3, 5), range(1, 10), np.arange(10, 100, 2) / 10):
            ticks = [m * 10.0 ** e for e in range(-3, 2) for m in mantissas
                     if low <= m * 10.0 ** e <= high]
            if len(ticks) >= 3:  # the coarsest steps that still give three labels
                break
        axis.set_yticks(ticks)
        axis.yaxis.set_major_formatter(plain)
        axis.yaxis.set_minor_formatter(plt.NullFormatter())
    save(figure, "06_lr_schedule.png")


if __name__ == "__main__":
    main()
