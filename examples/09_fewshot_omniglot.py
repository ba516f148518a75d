"""09: few-shot image classification on Omniglot: Prototypical Networks and first-order MAML.

What it teaches:
* Few-shot episodes: `FewShotTask.meta_batch` draws N-way K-shot task batches, support
  (T, N*K, 1, 28, 28) and query (T, N*Q, 1, 28, 28) with integer labels, from the
  meta-train classes; `evaluation_tasks` draws fresh ones from classes never trained on.
* Two families of meta-learning on the same conv net: metric-based (`meta.ProtoNet`:
  class prototypes, softmax over negative squared distances, no inner loop) and
  gradient-based (`meta.MAML(first_order=True)`: a few SGD steps on the support set).
  Both train with the same loop: `loss, grads = learner.meta_step(batch); opt.step(grads)`.
* Evaluation as the papers report it: accuracy on the queries of many test episodes,
  with a 95% confidence interval (1.96 standard errors).

Data: the two official minimal Omniglot sets (meta-train on images_background_small1,
meta-test on the alphabets of images_background_small2 it lacks), from `--data-dir DIR`,
`$TGM_OMNIGLOT_DIR`, or `../shared/data/omniglot` next to the checkout; without them it
falls back to the procedural glyphs (`--task glyphs`), which need no download.

Run: python examples/09_fewshot_omniglot.py [--quick] [--data-dir DIR] [--model mlp|conv]
Some 15-20 minutes on two shared CPU cores with the conv net (the default); seconds with
--quick, which shrinks every loop and uses the fully connected net unless --model conv. Prints the training progress and
the accuracy table; saves fewshot_episode.png (a 5-way 1-shot test episode: the support
row, and queries with predicted and true labels) and fewshot_curves.png when matplotlib
is installed.
"""
import os
import sys
import time
from pathlib import Path

import numpy as np

from _common import pyplot, quick_mode, save, table

from tinygrad_meta import meta, optim
from tinygrad_meta.evaluate_fewshot import episode_accuracy, mean_ci
from tinygrad_meta.tasks.base import stream_rng
from tinygrad_meta.tasks.fewshot import glyph_task, omniglot_task

QUICK = quick_mode()
SEED = 0
WAYS, SHOTS = 5, 1
QUERIES = 1 if QUICK else 5                # per class, in training and test episodes
PROTONET_ITERS = 8 if QUICK else 600       # one episode each
MAML_ITERS = 3 if QUICK else 150           # META_BATCH episodes each
META_BATCH = 2 if QUICK else 4
EPISODES = 4 if QUICK else 600             # test episodes per table cell


def _argument(flag, default=None):
    args = sys.argv[1:]
    return args[args.index(flag) + 1] if flag in args[:-1] else default


def data_task():
    """Omniglot when its minimal sets are found, else glyphs (saying which)."""
    candidates = [_argument("--data-dir"), os.environ.get("TGM_OMNIGLOT_DIR"),
                  Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"]
    for folder in candidates:
        if folder and (Path(folder) / "images_background_small1.zip").exists():
            print(f"data: Omniglot minimal sets from {folder}")
            return omniglot_task(folder, ways=WAYS, queries=QUERIES)
    print("data: no Omniglot folder found (--data-dir DIR): using the procedural glyphs instead")
    return glyph_task(ways=WAYS, queries=QUERIES, num_classes=400 if QUICK else None)


def meta_train(name, learner, task, iters, meta_batch, lr):
    """The one training loop both learners share; returns the loss of every iteration."""
    optimizer = optim.Adam(learner.meta_parameters(), lr=lr)
    losses, began = [], time.perf_counter()
    for iteration in range(iters):
        batch = task.meta_batch(SEED, iteration, meta_batch, SHOTS)
        loss, grads = learner.meta_step(batch)
        optimizer.step(grads)
        losses.append(loss)
        if (iteration + 1) % max(1, iters // 5) == 0:
            print(f"{name}: iteration {iteration + 1}/{iters}, loss {np.mean(losses[-50:]):.3f}, "
                  f"{time.perf_counter() - began:.0f} s")
    return losses


def draw_episode(plt, task, learner, name):
    """A 5-way 1-shot test episode: the support row, then queries titled predicted/true."""
    batch = task.evaluation_batch(1, SHOTS, stream_rng(SEED, "evaluation", 0))
    steps = 0 if isinstance(learner, meta.ProtoNet) else 3
    predicted = learner.predictions(tuple(batch), steps=[steps])[steps].numpy()[0].argmax(axis=-1)
    queries = batch.query_x.shape[1]
    figure, axes = plt.subplots(1 + queries // WAYS, WAYS, figsize=(1.6 * WAYS, 1.7 * (1 + queries // WAYS)))
    for n in range(WAYS):
        axes[0, n].imshow(batch.support_x[0, n, 0], cmap="gray_r")
        axes[0, n].set_title(f"support: class {batch.support_y[0, n]}", fontsize=8)
        axes[0, n].set_xlabel("28 px", fontsize=7)
        axes[0, n].set_ylabel("support", fontsize=7)
    for q in range(queries):
        ax = axes[1 + q // WAYS, q % WAYS]
        right = predicted[q] == batch.query_y[0, q]
        ax.imshow(batch.query_x[0, q, 0], cmap="gray_r")
        ax.set_title(f"pred {predicted[q]} / true {batch.query_y[0, q]}", fontsize=8,
                     color="tab:green" if right else "tab:red")
        ax.set_xlabel("28 px", fontsize=7)
        ax.set_ylabel(f"query {q + 1}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(f"{name}: a {WAYS}-way {SHOTS}-shot episode of unseen characters "
                    f"({int((predicted == batch.query_y[0]).sum())}/{queries} right)")
    return figure


def main():
    task = data_task()
    # fast mode (the test suite's) runs the small fully connected net: the conv net's seconds
    # per step are the full run's business
    model_kind = _argument("--model", "mlp" if QUICK else "conv")
    print(f"network: {'4-block conv net' if model_kind == 'conv' else 'fully connected 256-128-64-64'}")
    rng = np.random.default_rng(SEED)
    protonet = meta.ProtoNet(task.build_model("protonet", model_kind, rng=rng))
    fomaml = meta.MAML(task.build_model("fomaml", model_kind, rng=rng), inner_lr=0.4, inner_steps=1,
                       first_order=True, loss_fn=task.loss)
    curves = {"ProtoNet": meta_train("ProtoNet", protonet, task, PROTONET_ITERS, 1, 1e-3),
              "FOMAML": meta_train("FOMAML", fomaml, task, MAML_ITERS, META_BATCH, 1e-3)}

    rows = []
    for name, learner, steps, ways_list in (("ProtoNet", protonet, 0, (5, 20)), ("FOMAML", fomaml, 3, (5,))):
        for ways in ways_list:
            for shots in (1, 5):
                episodes = task.evaluation_tasks(SEED, EPISODES, shots, ways=ways)
                mean, ci = mean_ci(episode_accuracy(learner, episodes, steps))
                rows.append((name, f"{ways}-way {shots}-shot", f"{100 * mean:.1f} ± {100 * ci:.1f} %"))
    print(f"\nquery accuracy on {EPISODES} test episodes of unseen classes (mean ± 95% CI); "
          "FOMAML's head has 5 outputs, so it has no 20-way rows")
    table(["learner", "episode", "accuracy"], rows)

    plt = pyplot()
    if plt is not None:
        save(draw_episode(plt, task, protonet, "ProtoNet"), "fewshot_episode.png")
        figure, ax = plt.subplots(figsize=(6, 3.5))
        for name, losses in curves.items():
            window = max(1, len(losses) // 20)
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax.plot(np.linspace(0, 1, len(smooth)), smooth, label=f"{name} ({len(losses)} iterations)")
        ax.set_title("meta-training loss (moving average)")
        ax.set_xlabel("fraction of training")
        ax.set_ylabel("episode loss (cross-entropy)")
        ax.legend()
        save(figure, "fewshot_curves.png")


if __name__ == "__main__":
    main()
