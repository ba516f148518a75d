"""The hyperparameter runner: Adam on unrolled hypergradients, with history, a progress
bar and atomic checkpoint/resume. Example: see :class:`HyperOptimizer`.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict

import numpy as np

from ... import optim
from ...autograd import no_grad
from ...checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ...progress import Progress
from ...tensor import Tensor
from .hyperparameters import flatten_hyperparameters, hyperparameter_values
from .unrolled import (HypergradientResult, evaluate_hyperparameters, hypergradient_result,
                       unrolled_hypergradient, unrolled_hypergradient_tensors)

__all__ = ["HyperOptimizer"]


class HyperOptimizer:
    """Meta-optimise hyperparameters with Adam on unrolled hypergradients.

    ``train_loss``, ``val_loss``, ``init_params``, ``steps``, ``optimizer``, ``truncate``,
    ``groups``, ``betas``, ``eps``, ``nesterov``, ``dtype``: as for
    :func:`unrolled_hypergradient`. ``hyperparams``: the raw dict; its Tensor entries are
    the leaves Adam updates in place (``self.hyperparams`` always holds the current
    values). ``meta_lr``: Adam's step size in the raw (log / logit) space, so 0.05 is
    about a 5% multiplicative change of a learning rate per outer step. ``clip``: when
    set, each hypergradient entry is clipped to [-clip, clip] before Adam sees it, a
    guard against the exploding hypergradients of a chaotic (too long, too fast) unroll.

    ``history``: dict of lists, one entry per outer step: ``"val_loss"`` (before the
    update), ``"hypergrad_norm"``, ``"seconds"``, and ``"lr"`` (the schedule before the
    update). ``run(iters, checkpoint=path)`` saves an atomic checkpoint every
    ``checkpoint_every`` steps and at the end; ``HyperOptimizer(...).load(path)``
    resumes from it exactly (the hypergradient is deterministic given the state).

    ``compile=True``: the unrolled run is traced once by ``tgm.compile`` and replayed
    (bit for bit the eager hypergradient). Only for ``train_loss``/``val_loss`` that are
    array programs of ``(params, step)``: one that draws a random mini-batch in Python
    or reads its data from a variable that changes would be replayed with the traced data.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> from tinygrad_meta.meta.hyperopt import make_hyperparameters
    >>> x = tgm.Tensor(np.linspace(-1, 1, 8), dtype="float64"); y = 3.0 * x
    >>> loss = lambda p, *step: ((p["w"] * x - y) ** 2).mean()
    >>> opt = HyperOptimizer(loss, loss, {"w": np.array(0.0)},
    ...                      make_hyperparameters(4, lr=0.01), steps=4, meta_lr=0.1)
    >>> history = opt.run(5, progress=False)
    >>> history["val_loss"][-1] < history["val_loss"][0]
    True
    """

    def __init__(self, train_loss, val_loss, init_params, hyperparams, steps, optimizer="sgd",
                 meta_lr=0.05, meta_betas=(0.9, 0.999), truncate=None, groups=None,
                 betas=(0.9, 0.999), eps=1e-8, nesterov=False, dtype="float64", clip=None,
                 compile=False):
        self.train_loss, self.val_loss = train_loss, val_loss
        self.init_params = init_params
        self.hyperparams = hyperparams
        self.steps, self.optimizer, self.truncate = steps, optimizer, truncate
        self.groups, self.betas, self.eps, self.nesterov, self.dtype = groups, betas, eps, nesterov, dtype
        if not meta_lr > 0:
            raise ValueError(f"HyperOptimizer: meta_lr must be > 0, got {meta_lr}")
        self.meta_lr, self.meta_betas, self.clip = float(meta_lr), tuple(meta_betas), clip
        self._leaves = OrderedDict((k, v) for k, v in flatten_hyperparameters(hyperparams).items()
                                   if isinstance(v, Tensor))
        if not self._leaves:
            raise ValueError("HyperOptimizer: no hyperparameter is a Tensor, nothing to optimise")
        self.compile = bool(compile)
        self._compiled = None
        self.state = None  # the outer Adam's state
        self.iteration = 0
        self.history = {"val_loss": [], "hypergrad_norm": [], "seconds": [], "lr": []}

    def hypergradient(self) -> HypergradientResult:
        """The unrolled hypergradient at the current hyperparameters."""
        if self.compile:
            if self._compiled is None:
                from ...compile import compile as compile_function
                self._compiled = compile_function(
                    lambda *settings: unrolled_hypergradient_tensors(
                        self.train_loss, self.val_loss, self.init_params, self.hyperparams,
                        *settings), cache_size=2)
            # the settings as arguments: a changed one is a new signature, traced anew
            return hypergradient_result(*self._compiled(
                self.steps, self.optimizer, self.truncate, self.groups, tuple(self.betas),
                self.eps, self.nesterov, self.dtype))
        return unrolled_hypergradient(
            self.train_loss, self.val_loss, self.init_params, self.hyperparams, self.steps,
            optimizer=self.optimizer, truncate=self.truncate, groups=self.groups, betas=self.betas,
            eps=self.eps, nesterov=self.nesterov, dtype=self.dtype)

    def evaluate(self) -> float:
        """The validation loss at the current hyperparameters (no graph recorded)."""
        return evaluate_hyperparameters(
            self.train_loss, self.val_loss, self.init_params, self.hyperparams, self.steps,
            optimizer=self.optimizer, groups=self.groups, betas=self.betas, eps=self.eps,
            nesterov=self.nesterov, dtype=self.dtype)[0]

    def step(self) -> float:
        """One outer step: hypergradient, then Adam on the raw hyperparameters.
        Returns the validation loss before the update."""
        start = time.perf_counter()
        lr_before = hyperparameter_values(self.hyperparams)["lr"]
        result = self.hypergradient()
        flat_grads = flatten_hyperparameters(result.hypergrads)
        grads = OrderedDict()
        for key, leaf in self._leaves.items():
            g = np.asarray(flat_grads[key], dtype=leaf.dtype)
            if not np.all(np.isfinite(g)):
                raise FloatingPointError(
                    f"HyperOptimizer: the hypergradient of {key!r} is not finite at outer step "
                    f"{self.iteration} (val loss {result.val_loss:g}); lower the learning rate or "
                    "meta_lr, or use truncate")
            if self.clip is not None:
                g = np.clip(g, -self.clip, self.clip)
            grads[key] = Tensor(g, dtype=leaf.dtype, device=leaf.device)
        with no_grad():
            current = OrderedDict((k, v.detach()) for k, v in self._leaves.items())
            new, self.state = optim.adam_step(current, grads, self.meta_lr, betas=self.meta_betas,
                                              state=self.state)
        for key, leaf in self._leaves.items():
            leaf.data = new[key].data.astype(leaf.data.dtype, copy=False)
        self.iteration += 1
        norm = math.sqrt(sum(float((g.data ** 2).sum()) for g in grads.values()))
        self.history["val_loss"].append(result.val_loss)
        self.history["hypergrad_norm"].append(norm)
        self.history["seconds"].append(time.perf_counter() - start)
        self.history["lr"].append(np.atleast_1d(np.asarray(lr_before, dtype=np.float64)).tolist())
        return result.val_loss

    def run(self, outer_iters, progress=True, checkpoint=None, checkpoint_every=10, log=print):
        """Run until ``outer_iters`` outer steps have been taken in total (a resumed run
        continues from ``self.iteration``). Returns ``history``. ``progress``: show a
        progress bar (plain lines through ``log`` when tqdm is not installed)."""
        if outer_iters < 0:
            raise ValueError(f"HyperOptimizer.run: outer_iters must be >= 0, got {outer_iters}")
        with Progress(outer_iters, initial=self.iteration, enabled=progress, desc="hyperopt",
                      leave=False, label="outer step", log=log) as bar:
            for _ in range(self.iteration, outer_iters):
                val = self.step()
                bar.update(self.iteration, f"val_loss {val:.4f}")
                if checkpoint is not None and (self.iteration % checkpoint_every == 0
                                               or self.iteration == outer_iters):
                    self.save(checkpoint)
        return self.history

    # ---- checkpointing --------------------------------------------------------
    def _config(self):
        return {"steps": int(self.steps), "optimizer": self.optimizer,
                "truncate": None if self.truncate is None else int(self.truncate),
                "keys": list(self._leaves), "meta_lr": self.meta_lr}

    def save(self, path):
        """Write hyperparameters, outer Adam state, iteration and history atomically (.npz)."""
        values = OrderedDict((k, np.array(v.numpy())) for k, v in self._leaves.items())
        state = None
        if self.state is not None:
            state = {"step": int(self.state["step"]),
                     "m": {k: np.array(t.numpy()) for k, t in self.state["m"].items()},
                     "v": {k: np.array(t.numpy()) for k, t in self.state["v"].items()}}
        history = {key: [np.asarray(x, dtype=np.float64) for x in items]
                   for key, items in self.history.items()}
        return save_checkpoint(path, values, optimizer_state=state, iteration=self.iteration,
                               config=self._config(), extra={"history": history})

    def load(self, path):
        """Resume from :meth:`save`'s file; checks that it belongs to the same problem setup."""
        ckpt = load_checkpoint(path)
        mine = self._config()
        for key in ("steps", "optimizer", "truncate", "keys"):
            if ckpt.config.get(key) != mine[key]:
                raise CheckpointError(
                    f"HyperOptimizer.load: checkpoint {ckpt.path} has {key}={ckpt.config.get(key)!r}, "
                    f"this run has {mine[key]!r}")
        for key, leaf in self._leaves.items():
            value = np.asarray(ckpt.params[key])
            if value.shape != leaf.shape:
                raise CheckpointError(f"HyperOptimizer.load: {key!r} has shape {value.shape} in "
                                      f"{ckpt.path}, expected {leaf.shape}")
            leaf.data = leaf._be.asarray(value, dtype=leaf.data.dtype)
        if ckpt.optimizer_state is None:
            self.state = None
        else:
            st = ckpt.optimizer_state
            self.state = {
                "step": int(st["step"]),
                "m": OrderedDict((k, Tensor(np.asarray(st["m"][k]), dtype=leaf.dtype, device=leaf.device))
                                 for k, leaf in self._leaves.items()),
                "v": OrderedDict((k, Tensor(np.asarray(st["v"][k]), dtype=leaf.dtype, device=leaf.device))
                                 for k, leaf in self._leaves.items())}
        self.iteration = ckpt.iteration
        history = ckpt.extra.get("history", {})
        self.history = {key: [] for key in self.history}
        for key in self.history:
            for item in history.get(key, []):
                item = np.asarray(item)
                self.history[key].append(item.tolist() if item.ndim else float(item))
        return self
