"""08: a plain supervised classifier, PyTorch-style: modules, Dropout, AdamW, early stopping.

What it teaches:
* A model is written as in PyTorch: `nn.Sequential(nn.Linear, nn.ReLU, nn.Dropout, ...)`,
  trained with `loss.backward(); opt.step(); opt.zero_grad()`.
* `model.train()` / `model.eval()`: Dropout masks only while training (its masks come from
  an explicit seeded generator, so the run is reproducible).
* `optim.AdamW`: Adam with decoupled weight decay; `functional.cross_entropy` and
  `functional.accuracy`; `data.minibatches` for seeded shuffled batches.
* Early stopping: keep the parameters of the epoch with the best validation accuracy, stop
  when it has not improved for `PATIENCE` epochs, and report the test accuracy of those.

Data: three interleaved noisy spirals in 2-D (generated here, 600 points per class), split
60/20/20 into train, validation and test.

Run: python examples/08_supervised_classifier.py [--quick]
Prints a per-epoch table and the test accuracy; saves supervised_classifier.png (loss and
accuracy curves) when matplotlib is installed.
"""
import numpy as np

from _common import pyplot, quick_mode, save, table

import tinygrad_meta as tgm
from tinygrad_meta import functional as F, nn
from tinygrad_meta.data import minibatches
from tinygrad_meta.optim import AdamW

QUICK = quick_mode()
SEED = 0
CLASSES = 3
POINTS = 200 if QUICK else 600      # per class
EPOCHS = 8 if QUICK else 150
PATIENCE = 15
BATCH = 64


def spirals(points, classes, rng):
    """``points`` noisy points on each of ``classes`` interleaved spiral arms."""
    radius = np.tile(np.linspace(0.05, 1.0, points), classes)
    label = np.repeat(np.arange(classes), points)
    angle = radius * 4.0 + label * (2 * np.pi / classes) + rng.normal(0, 0.2, radius.size)
    x = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
    return x.astype(np.float32), label.astype(np.int64)


def split(x, y, rng):
    order = rng.permutation(len(x))
    cut1, cut2 = int(0.6 * len(x)), int(0.8 * len(x))
    parts = order[:cut1], order[cut1:cut2], order[cut2:]
    return [(x[p], y[p]) for p in parts]


def evaluate(model, x, y):
    """(mean cross-entropy, accuracy) in eval mode, recording no graph."""
    model.eval()
    with tgm.no_grad():
        logits = model(tgm.Tensor(x))
        loss = float(F.cross_entropy(logits, y).item())
    return loss, F.accuracy(logits, y)


def main():
    rng = np.random.default_rng(SEED)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = split(*spirals(POINTS, CLASSES, rng), rng)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Dropout(0.1, rng=SEED),
                          nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1, rng=SEED + 1),
                          nn.Linear(64, CLASSES))
    opt = AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    history, rows = [], []
    best_accuracy, best_epoch, best_state = -1.0, 0, None
    batch_rng = np.random.default_rng(SEED + 2)
    for epoch in range(1, EPOCHS + 1):
        model.train()
        losses = []
        for xb, yb in minibatches(train_x, train_y, batch_size=BATCH, rng=batch_rng):
            loss = F.cross_entropy(model(tgm.Tensor(xb)), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.item()))
        val_loss, val_accuracy = evaluate(model, val_x, val_y)
        history.append((np.mean(losses), val_loss, val_accuracy))
        improved = val_accuracy > best_accuracy
        if improved:
            best_accuracy, best_epoch, best_state = val_accuracy, epoch, model.state_dict()
        if epoch <= 5 or epoch % 10 == 0 or improved:
            rows.append([epoch, float(np.mean(losses)), val_loss, val_accuracy, "*" if improved else ""])
        if epoch - best_epoch >= PATIENCE:
            print(f"early stop at epoch {epoch}: no better validation accuracy for {PATIENCE} epochs")
            break
    table(["epoch", "train loss", "val loss", "val accuracy", "best"], rows, floatfmt="{:.4f}")
    model.load_state_dict(best_state)
    test_loss, test_accuracy = evaluate(model, test_x, test_y)
    print(f"\nbest epoch {best_epoch}: validation accuracy {best_accuracy:.4f}; "
          f"test accuracy {test_accuracy:.4f} (test loss {test_loss:.4f}), chance {1 / CLASSES:.3f}")
    if not QUICK:
        assert test_accuracy > 0.9, "the classifier should separate the spirals"

    plt = pyplot()
    if plt is None:
        return
    epochs = np.arange(1, len(history) + 1)
    train_loss, val_loss, val_acc = (np.array(column) for column in zip(*history))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    left.plot(epochs, train_loss, label="train (dropout on, mean over batches)")
    left.plot(epochs, val_loss, label="validation (eval mode)")
    left.set(xlabel="epoch", ylabel="cross-entropy (nats)", title="Loss: train vs validation")
    left.legend()
    right.plot(epochs, val_acc, color="C1")
    right.axvline(best_epoch, color="gray", linestyle="--", label=f"best epoch ({best_epoch})")
    right.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1),
              title=f"Validation accuracy (test at best epoch: {test_accuracy:.3f})")
    right.legend(loc="lower right")
    save(figure, "supervised_classifier.png")


if __name__ == "__main__":
    main()
