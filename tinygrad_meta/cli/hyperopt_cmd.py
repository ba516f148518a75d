"""``python -m tinygrad_meta hyperopt``: learn a learning-rate schedule (and more) by hypergradients.

Trains a small tanh MLP on an offline classification problem (``tasks/classification``)
for ``--steps`` full-batch optimizer steps, differentiates the validation loss through
the whole run with respect to the chosen hyperparameters (``meta/hyperopt``), and
improves them with Adam for ``--outer-iters`` outer steps. Prints the validation loss
before and after and the learned hyperparameters; writes ``checkpoint.npz`` (resume
with ``--resume``), ``hyperparams.json``, ``history.json`` and, when matplotlib is
installed, ``lr_schedule.png`` and ``val_loss.png`` into ``--out``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..checkpoint import CheckpointError, check_writable, make_folder, run_file
from ..meta import hyperopt as H
from ..tasks.classification import PROBLEMS, classification_losses, classifier, make_classification

__all__ = ["register", "run", "parse_hyper"]


def register(subparsers):
    parser = subparsers.add_parser(
        "hyperopt",
        help="meta-learn a learning-rate schedule, weight decay, momentum, init scale by hypergradients",
        description=(
            "Unroll --steps steps of SGD (with momentum) or Adam on an offline classification "
            "problem, backpropagate the validation loss to the hyperparameters, and tune them "
            "with Adam for --outer-iters outer steps."),
        epilog="example: python -m tinygrad_meta hyperopt --steps 100 --outer-iters 30 "
               "--hyper lr-schedule,weight-decay --out hyperopt_out")
    parser.add_argument("--problem", choices=PROBLEMS, default="spirals",
                        help="the classification problem (default spirals)")
    parser.add_argument("--steps", type=int, default=100, help="T, training steps unrolled (default 100)")
    parser.add_argument("--outer-iters", type=int, default=30, help="hypergradient steps (default 30)")
    parser.add_argument("--hyper", default="lr-schedule,weight-decay",
                        help=f"comma-separated kinds to tune, from {','.join(H.HYPER_KINDS)} "
                             "(default lr-schedule,weight-decay)")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--lr", type=float, default=None,
                        help="starting learning rate, every step (default 0.1 sgd, 0.01 adam)")
    parser.add_argument("--weight-decay", type=float, default=1e-3,
                        help="starting weight decay of each layer (default 1e-3; 0 = none unless tuned)")
    parser.add_argument("--momentum", type=float, default=0.9,
                        help="SGD momentum / Adam beta1 (default 0.9; 0 = none unless tuned)")
    parser.add_argument("--init-scale", type=float, default=1.0,
                        help="multiplier of the LeCun-scaled initial weights (default 1)")
    parser.add_argument("--meta-lr", type=float, default=0.1,
                        help="outer Adam step in log/logit space (default 0.1)")
    parser.add_argument("--truncate", type=int, default=None,
                        help="backpropagate through the last K steps only (default: all)")
    parser.add_argument("--hidden", type=int, default=32, help="hidden units of the MLP (default 32)")
    parser.add_argument("--n-train", type=int, default=150)
    parser.add_argument("--n-val", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
    parser.add_argument("--out", default="hyperopt_out", help="output folder (default hyperopt_out)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="do not write plots")
    parser.set_defaults(func=run)


def parse_hyper(text):
    """``"lr-schedule,weight-decay"`` -> a tuple of kinds; a clear error for unknown ones."""
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in H.HYPER_KINDS]
    if unknown or not kinds:
        raise ValueError(f"--hyper: unknown or empty kind(s) {unknown or [text]}; choose from "
                         f"{', '.join(H.HYPER_KINDS)}")
    return kinds


def _build(args, kinds):
    data = make_classification(args.problem, n_train=args.n_train, n_val=args.n_val, seed=args.seed)
    model = classifier([data.features, args.hidden, data.classes], seed=args.seed + 1)
    train_loss, val_loss = classification_losses(data, model)
    init = model.state_dict()
    groups = {name: name.rsplit(".", 1)[0] for name in init}  # weight decay per layer
    lr = args.lr if args.lr is not None else (0.1 if args.optimizer == "sgd" else 0.01)
    weight_decay = args.weight_decay if (args.weight_decay > 0 or "weight-decay" in kinds) else None
    if weight_decay is not None:
        weight_decay = {group: weight_decay for group in dict.fromkeys(groups.values())}
    momentum = args.momentum if (args.momentum > 0 or "momentum" in kinds) else None
    init_scale = args.init_scale if (args.init_scale != 1.0 or "init-scale" in kinds) else None
    hyper = H.make_hyperparameters(args.steps, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                   init_scale=init_scale, tune=kinds)
    return train_loss, val_loss, init, groups, hyper


def _describe(values, kinds=tuple(H.HYPER_KINDS)):
    def fixed(kind):
        return "" if kind in kinds else " (fixed)"
    lines = []
    lr = np.atleast_1d(values["lr"])
    if lr.size == 1:
        lines.append(f"  learning rate: {lr[0]:.4g}{fixed('lr-schedule')}")
    else:
        lines.append(f"  learning-rate schedule{fixed('lr-schedule')} ({lr.size} steps; min "
                     f"{lr.min():.4g}, max {lr.max():.4g}, mean {lr.mean():.4g}):")
        for start in range(0, lr.size, 10):
            chunk = " ".join(f"{x:.3g}" for x in lr[start:start + 10])
            lines.append(f"    steps {start:>3}-{min(start + 9, lr.size - 1):>3}: {chunk}")
    if "weight_decay" in values:
        wd = values["weight_decay"]
        if isinstance(wd, dict):
            lines.append(f"  weight decay{fixed('weight-decay')}: "
                         + ", ".join(f"{g} {w:.4g}" for g, w in wd.items()))
        else:
            lines.append(f"  weight decay{fixed('weight-decay')}: {wd:.4g}")
    if "momentum" in values:
        lines.append(f"  momentum{fixed('momentum')}: {values['momentum']:.4f}")
    if "init_scale" in values:
        lines.append(f"  init scale{fixed('init-scale')}: {values['init_scale']:.4f}")
    return "\n".join(lines)


def _jsonable(values):
    return {k: (np.asarray(v).tolist() if not isinstance(v, dict) else dict(v)) for k, v in values.items()}


def _plots(out, initial_lr, learned_lr, history):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots written")
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.atleast_1d(initial_lr) * np.ones_like(np.atleast_1d(learned_lr)), "--", label="initial")
    ax.plot(np.atleast_1d(learned_lr), label="learned")
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("learning-rate schedule")
    fig.tight_layout()
    path = os.path.join(out, "lr_schedule.png")
    with run_file("cannot write plot", path):
        fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history["val_loss"], marker=".")
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("validation loss after training")
    ax.set_title("hyperparameter meta-optimization")
    fig.tight_layout()
    path = os.path.join(out, "val_loss.png")
    with run_file("cannot write plot", path):
        fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def run(args) -> int:
    try:
        kinds = parse_hyper(args.hyper)
    except ValueError as error:
        print(f"error: {error}")
        return 2
    if args.steps < 1 or args.outer_iters < 0:
        print(f"error: --steps must be >= 1 and --outer-iters >= 0, got {args.steps}, {args.outer_iters}")
        return 2
    if args.truncate is not None and not 1 <= args.truncate <= args.steps:
        print(f"error: --truncate must lie in [1, --steps={args.steps}], got {args.truncate}")
        return 2
    make_folder(args.out, "output folder")
    train_loss, val_loss, init, groups, hyper = _build(args, kinds)
    initial_values = H.hyperparameter_values(hyper)
    tuner = H.HyperOptimizer(train_loss, val_loss, init, hyper, args.steps, optimizer=args.optimizer,
                             meta_lr=args.meta_lr, truncate=args.truncate, groups=groups)
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    check_writable(checkpoint)  # before the first outer step, not at its first checkpoint
    if args.resume:
        if not os.path.exists(checkpoint):
            print(f"error: --resume: no checkpoint at {checkpoint}")
            return 2
        try:
            tuner.load(checkpoint)
        except CheckpointError as error:
            print(f"error: --resume: {error}")
            return 2
        print(f"resumed from {checkpoint} at outer iteration {tuner.iteration}")
    print(f"problem {args.problem}: tanh MLP with {args.hidden} hidden units, "
          f"{args.optimizer} for T={args.steps} steps, tuning {', '.join(kinds)}"
          + (f", truncate={args.truncate}" if args.truncate else ""))
    before = tuner.history["val_loss"][0] if tuner.history["val_loss"] else tuner.evaluate()
    tuner.run(args.outer_iters, progress=not args.no_progress, checkpoint=checkpoint,
              checkpoint_every=args.checkpoint_every)
    after = tuner.evaluate()
    learned = H.hyperparameter_values(tuner.hyperparams)
    print(f"validation loss before: {before:.4f}")
    print(f"validation loss after:  {after:.4f}  ({tuner.iteration} outer iterations)")
    print("learned hyperparameters:")
    print(_describe(learned, kinds))
    path = os.path.join(args.out, "hyperparams.json")
    with run_file("cannot write hyperparameters", path), open(path, "w") as handle:
        json.dump({"initial": _jsonable(initial_values), "learned": _jsonable(learned),
                   "val_loss_before": before, "val_loss_after": after}, handle, indent=1)
    path = os.path.join(args.out, "history.json")
    with run_file("cannot write history", path), open(path, "w") as handle:
        json.dump(tuner.history, handle)
    if not args.no_plots:
        for path in _plots(args.out, initial_values["lr"], learned["lr"], tuner.history):
            print(f"wrote {path}")
    print(f"wrote {checkpoint}, hyperparams.json, history.json in {args.out}")
    return 0
