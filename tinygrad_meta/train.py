"""Meta-training as a library function: ``train(overrides, resume=None)``.

This is what ``python -m tinygrad_meta train`` calls. A run lives in one folder
(``out``): ``checkpoint.npz`` (parameters, optimizer state, iteration, config, RNG
state, history and the running metrics; written atomically every
``checkpoint_every`` iterations and at the end) and ``metrics.jsonl`` (one line per
periodic evaluation). The config, what a run builds and how a folder is resumed live
in ``run.py``; the tasks come from the run's ``Task`` (``run.task_of``).

Exact resumption. The tasks of iteration i are drawn from the task's "train" stream at
index i (``Task.meta_batch``), a function of (seed, i) alone, and the checkpoint holds
everything else the next step depends on (parameters and optimizer state, bit for bit,
and the meta-loss moving average the metrics report), so a run killed at any moment --
even by ``kill -9`` -- and resumed from its last checkpoint ends with exactly the
parameters, and writes exactly the metrics, of an uninterrupted run.

>>> import tempfile
>>> result = train({"iters": 3, "meta_batch": 2, "hidden": [8], "out": tempfile.mkdtemp(),
...                 "eval_tasks": 0}, progress=False, log=lambda *a: None)
>>> result.iteration
3
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .checkpoint import (CHECKPOINT_NAME, CheckpointError, check_writable, generator_state, load_checkpoint,
                         make_folder, restore_generator, run_file, save_checkpoint)
from .evaluate import adapted_metric
from .evaluate_fewshot import episode_accuracy
from .progress import Progress
from .run import (FIXED_ON_RESUME, build_algorithm, build_model, build_optimizer, check_device, check_sizes,
                  load_parameters, make_config, outer_lr, parameters_as_numpy, pinned_kernels, resume_config,
                  task_of, to_device)
from .tasks import is_fewshot
from .tasks.base import stream_rng

__all__ = ["train", "TrainResult", "TrainingInterrupted"]

_VALIDATION_TASKS = 100
_AVERAGE_DECAY = 0.98  # of the meta-loss moving average that the progress bar and metrics.jsonl show


@dataclass
class TrainResult:
    """What ``train`` returns: the run folder, the iteration reached, the final model.

    ``trained`` counts the meta-iterations this call ran (0 when a resumed run was
    already at ``iters``); ``seconds`` is the run's training time over all sessions.
    """
    out: str
    iteration: int
    config: dict
    algorithm: object
    history: list = field(default_factory=list)
    seconds: float = 0.0
    trained: int = 0


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training: ``iteration`` reached, ``checkpoint_iteration`` on disk, the run's ``out``.

    Its message is one line: where the run stopped and the command that continues it.
    """

    def __init__(self, out, iteration, checkpoint_iteration, total):
        super().__init__(out, iteration, checkpoint_iteration, total)
        self.out, self.iteration, self.checkpoint_iteration, self.total = out, iteration, checkpoint_iteration, total

    def __str__(self):
        where = f"interrupted at iteration {self.iteration} of {self.total}"
        if self.checkpoint_iteration is None:
            return f"{where}, before the first checkpoint: nothing to resume, start the run again"
        saved = ("checkpoint saved" if self.checkpoint_iteration == self.iteration
                 else f"its last checkpoint is at iteration {self.checkpoint_iteration}")
        return f"{where} ({saved}); continue with: python -m tinygrad_meta train --resume {shlex.quote(self.out)}"


@contextlib.contextmanager
def _deferred_interrupt():
    """Within the block, a first Ctrl-C only sets ``state["requested"]`` (the loop stops at the
    end of the iteration, where the run's state is whole and can be checkpointed); a second
    raises KeyboardInterrupt at once. Off the main thread, or where SIGINT is ignored, the
    block runs with the handling it had."""
    state = {"requested": False}
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield state
        return

    def handler(signum, frame):
        if state["requested"]:
            raise KeyboardInterrupt
        state["requested"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_fresh_folder(config, force):
    path = os.path.join(config["out"], CHECKPOINT_NAME)
    if force or not os.path.exists(path):
        return None
    try:
        previous = load_checkpoint(path).config
    except (CheckpointError, OSError):
        previous = None
    same = previous is not None and all(previous.get(k) == config[k] for k in FIXED_ON_RESUME + ("iters",))
    if same:
        # the run is deterministic, so repeating an identical run loses nothing
        return f"note: {config['out']} holds a run with this exact config; training it again from scratch"
    raise FileExistsError(
        f"{config['out']} already holds a checkpoint of a different run; pass --resume {config['out']} "
        "to continue it, --force to overwrite it, or choose another --out")


def _validation_score(config, task, algorithm, validation):
    if is_fewshot(config["task"]):
        steps = 0 if config["algo"] == "protonet" else config["test_steps"]
        return steps, float(episode_accuracy(algorithm, validation, steps).mean())
    steps = max(config["inner_steps"], 1)
    curves = adapted_metric(task, algorithm, validation, steps=[steps], inner_lr=config["inner_lr"],
                            device=config["device"])
    return steps, float(curves[steps].mean())


def train(overrides=None, resume=None, force=False, progress=True, log=print) -> TrainResult:
    """Meta-train, checkpointing as it goes; returns a ``TrainResult``.

    In: ``overrides`` a dict of settings (keys of ``run.DEFAULTS``; unset ones take the
    defaults); ``resume`` a run folder to continue (its checkpoint's config is used,
    and settings in ``overrides`` that define the run must agree with it; ``iters`` below
    the checkpoint's iteration is a ValueError, equal to it trains nothing); ``force``
    overwrites a different run in ``out``; ``progress`` shows a progress bar; ``log``
    receives the printed lines. Ctrl-C raises ``TrainingInterrupted``, which says where
    the run stopped and how to resume it. Example: see the module docstring.
    """
    overrides = dict(overrides or {})
    checkpoint = None
    if resume is not None:
        config, checkpoint = resume_config(os.fspath(resume), overrides, log)
        if config["iters"] < checkpoint.iteration:
            raise ValueError(
                f"--resume: {checkpoint.path} is at iteration {checkpoint.iteration}, beyond --iters "
                f"{config['iters']}; pass --iters above {checkpoint.iteration} to train further, or evaluate "
                f"it with: python -m tinygrad_meta eval {config['out']}")
    else:
        config = make_config(overrides)
    check_sizes(config)
    task = task_of(config)
    if is_fewshot(config["task"]):
        task.check(config["shots"])  # the ways and shots fit the meta-train and validation splits
    check_device(config["device"])
    make_folder(config["out"])
    # fail now, not at the first checkpoint: a folder that refuses files, a directory in the way
    check_writable(os.path.join(config["out"], CHECKPOINT_NAME))
    if checkpoint is None:
        note = _check_fresh_folder(config, force)
        if note:
            log(note)
    _remove_stale_temporaries(config["out"], log)

    with pinned_kernels(config, log):
        return _train(config, checkpoint, task, progress, log)


def _restore(checkpoint, algorithm, optimizer, config):
    """Load a checkpoint into the run: returns ``(iteration, history, running)``."""
    load_parameters(algorithm, checkpoint.params, checkpoint.path)
    try:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{checkpoint.path}: optimizer state does not match the run "
                              f"({error.args[0] if error.args else error})") from None
    start = checkpoint.iteration
    history = checkpoint.extra.get("history", [])
    if not (isinstance(history, list) and all(isinstance(entry, dict) and type(entry.get("iteration")) is int
                                              for entry in history)):
        raise CheckpointError(f"{checkpoint.path}: its history is not a list of entries with an iteration")
    history = [entry for entry in history if entry["iteration"] <= start]
    running = checkpoint.extra.get("running", {})
    if not isinstance(running, dict) or not all(
            value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))
            for value in running.values()):
        raise CheckpointError(f"{checkpoint.path}: its running metrics are not numbers")
    _restore_algorithm_rng(algorithm, checkpoint.rng_state, config, start)
    return start, history, running


def _train(config, checkpoint, task, progress, log):
    model = build_model(config)
    algorithm = build_algorithm(config, model)
    optimizer = build_optimizer(config, algorithm)
    start, history, running = 0, [], {}
    saved_at = None
    if checkpoint is not None:
        start, history, running = _restore(checkpoint, algorithm, optimizer, config)
        saved_at = start
        if start == config["iters"]:
            log(f"nothing to do: {config['out']} is already at iteration {start} of {config['iters']}; "
                "pass a larger --iters to train further")
        else:
            log(f"resuming {config['out']} at iteration {start} of {config['iters']}")

    validation = task.validation_tasks(config["seed"], _VALIDATION_TASKS, config["shots"])
    metrics_path = os.path.join(config["out"], "metrics.jsonl")
    _write_metrics(metrics_path, history)
    # carried over from the checkpoint, so a resumed run's metrics continue the uninterrupted run's
    loss_average = running.get("loss_average")
    seconds_before = float(running.get("seconds", 0.0) or 0.0)

    began = time.perf_counter()

    def elapsed():
        return time.perf_counter() - began

    def save(iteration):
        save_checkpoint(
            os.path.join(config["out"], CHECKPOINT_NAME),
            params=parameters_as_numpy(algorithm),
            optimizer_state=optimizer.state_dict(),
            rng_state=_rng_state(algorithm, config, iteration),
            iteration=iteration,
            config=config,
            extra={"history": history,
                   "running": {"loss_average": loss_average, "seconds": seconds_before + elapsed()}},
        )

    bar = Progress(config["iters"], start, enabled=progress, desc="meta-train", status_every=25,
                   log=log)

    iteration = start
    with _deferred_interrupt() as interrupt:
        try:
            for iteration in range(start + 1, config["iters"] + 1):
                batch = task.meta_batch(config["seed"], iteration - 1, config["meta_batch"], config["shots"])
                loss, grads = algorithm.meta_step(to_device(batch, config["device"]))
                loss = float(loss)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"meta-loss became {loss} at iteration {iteration}; try a smaller --meta-lr or --inner-lr")
                if config.get("lr_halve_every"):
                    optimizer.lr = outer_lr(config, iteration)
                optimizer.step(grads)
                loss_average = (loss if loss_average is None
                                else _AVERAGE_DECAY * loss_average + (1 - _AVERAGE_DECAY) * loss)
                bar.update(iteration, f"meta-loss {loss_average:.4f}")
                if config["eval_every"] and iteration % config["eval_every"] == 0:
                    steps, score = _validation_score(config, task, algorithm, validation)
                    entry = {"iteration": iteration, "meta_loss": loss_average, f"val_{task.metric_name}": score,
                             "val_steps": steps, "seconds": round(seconds_before + elapsed(), 3)}
                    history.append(entry)
                    _append_metrics(metrics_path, entry)
                    bar.write(f"iteration {iteration}: meta-loss {loss_average:.4f}, validation "
                              f"{task.metric_name} after {steps} step{'s' if steps != 1 else ''} "
                              f"(K={config['shots']}) {score:.4f}")
                stop = interrupt["requested"] and iteration < config["iters"]
                if stop or (iteration % config["checkpoint_every"] == 0 and iteration != config["iters"]):
                    save(iteration)
                    saved_at = iteration
                if stop:
                    raise TrainingInterrupted(config["out"], iteration, saved_at, config["iters"])
        except KeyboardInterrupt:
            # a second Ctrl-C: the iteration in flight may be half applied, so the last
            # checkpoint is what a resume continues from
            raise TrainingInterrupted(config["out"], max(iteration - 1, start), saved_at,
                                      config["iters"]) from None
        finally:
            bar.close()
    if iteration > start or checkpoint is None:
        save(iteration)
    seconds = elapsed()
    done = iteration - start
    if done:
        log(f"trained {done} meta-iterations in {seconds:.1f} s ({1000 * seconds / done:.2f} ms each); "
            f"checkpoint {os.path.join(config['out'], CHECKPOINT_NAME)}")
    return TrainResult(config["out"], iteration, config, algorithm, history, seconds_before + seconds, done)


# ----------------------------------------------------------------------------------
# RNG state and metrics
# ----------------------------------------------------------------------------------

def _rng_state(algorithm, config, iteration):
    # Task sampling needs no state beyond (seed, iteration); the generator of the next
    # iteration is stored anyway so that a resume can check it derives the same one
    # (it would not if the derivation scheme changed between versions). An algorithm
    # that keeps its own generator (``algorithm.rng``) gets its state saved too.
    state = {"next_task_rng": generator_state(stream_rng(config["seed"], "train", iteration))}
    rng = getattr(algorithm, "rng", None)
    if isinstance(rng, np.random.Generator):
        state["algorithm_rng"] = generator_state(rng)
    return state


def _restore_algorithm_rng(algorithm, rng_state, config, iteration):
    if not rng_state:
        return
    expected = generator_state(stream_rng(config["seed"], "train", iteration))
    if rng_state.get("next_task_rng") != expected:
        raise CheckpointError(
            "checkpoint's task generator does not match this version's (seed, iteration) derivation; "
            "resuming would sample different tasks than the original run")
    if "algorithm_rng" in rng_state and isinstance(getattr(algorithm, "rng", None), np.random.Generator):
        algorithm.rng = restore_generator(rng_state["algorithm_rng"])


def _remove_stale_temporaries(folder, log):
    # a run killed while writing a checkpoint leaves its temporary file behind (the
    # checkpoint itself is intact: the rename never happened); one run owns its folder
    for name in os.listdir(folder):
        if name.startswith(".tmp-") and name.endswith(".npz"):
            try:
                os.unlink(os.path.join(folder, name))
                log(f"removed {name}, left by an interrupted checkpoint write")
            except OSError:
                pass


def _write_metrics(path, history):
    with run_file("cannot write metrics", path), open(path, "w", encoding="utf-8") as handle:
        for entry in history:
            handle.write(json.dumps(entry) + "\n")


def _append_metrics(path, entry):
    with run_file("cannot write metrics", path), open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
