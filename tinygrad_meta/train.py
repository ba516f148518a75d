"""Meta-training as a library function: ``train(overrides, resume=None)``.

This is what ``python -m tinygrad_meta train`` calls. A run lives in one folder
(``out``): ``checkpoint.npz`` (parameters, optimizer state, iteration, config, RNG
state, history; written atomically every ``checkpoint_every`` iterations and at the
end) and ``metrics.jsonl`` (one line per periodic evaluation).

Exact resumption. The tasks of iteration i are drawn from a generator derived from
(seed, i) alone (``tasks.sinusoid.task_rng``), and the checkpoint holds everything
else the next step depends on (parameters and optimizer state, bit for bit), so a
run killed at any moment -- even by ``kill -9`` -- and resumed from its last
checkpoint ends with exactly the parameters of an uninterrupted run.

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
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .checkpoint import (CHECKPOINT_NAME, MAX_CHECKPOINT_BYTES, CheckpointError, check_writable, format_bytes,
                         generator_state, load_checkpoint, make_folder, restore_generator, run_file,
                         save_checkpoint)
from .tasks import get_task
from .tasks.sinusoid import STREAM_TRAIN, STREAM_VALIDATION, task_rng

__all__ = ["ALGORITHMS", "DEFAULTS", "make_config", "build_model", "build_algorithm",
           "build_optimizer", "load_run", "train", "TrainResult", "ConfigConflictError",
           "pinned_kernels", "check_device", "check_sizes", "check_evaluation_size", "memory_limit",
           "MAX_INNER_STEPS"]

ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile")

# The main job: ``python -m tinygrad_meta train`` with no flags. ``iters`` is chosen so
# that training, the baseline and the final evaluation fit in about two minutes on
# two CPU cores (see README, "Quick start").
DEFAULTS = {
    "algo": "maml",
    "task": "sinusoid",
    "shots": 10,
    "inner_lr": 0.01,
    "inner_steps": None,      # None: 1 for maml/fomaml/metasgd, 5 for reptile (1 step would be plain joint training)
    "meta_batch": 25,
    "meta_lr": None,          # None: 1e-3 (Adam) for maml/fomaml/metasgd, 0.1 (outer stepsize) for reptile
    "iters": 30000,
    "seed": 0,
    "hidden": [40, 40],
    "init": "default",
    "out": None,              # None: runs/<algo>-<task>
    "device": "cpu",
    "checkpoint_every": 1000,
    "eval_every": 1000,
    "eval_tasks": 600,        # tasks per K in the final evaluation table; 0 skips it
    "baseline_iters": 5000,   # regression steps of the "pretrained on all tasks" baseline
    "cpu_kernels": None,      # None: TGM_CPU_KERNELS's choice, with "auto" pinned (see _pin_kernels)
}

# Settings that define what is being trained: resuming with a different value would
# silently train something else, so it is an error. The rest may change on resume.
FIXED_ON_RESUME = ("algo", "task", "shots", "inner_lr", "inner_steps", "meta_batch", "meta_lr",
                   "seed", "hidden", "init")

_VALIDATION_TASKS = 100

# Every inner step is a forward and backward pass per task per meta-iteration (the MAML
# paper takes 1 to 10; Reptile's 5 to 32); beyond this a run cannot finish.
MAX_INNER_STEPS = 10_000


class ConfigConflictError(ValueError):
    """``--resume`` was given settings that contradict the checkpoint's config."""


@dataclass
class TrainResult:
    """What ``train`` returns: the run folder, the iteration reached, the final model."""
    out: str
    iteration: int
    config: dict
    algorithm: object
    history: list = field(default_factory=list)
    seconds: float = 0.0


# ----------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------

def _int_at_least(config, key, low, high=None):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"train: {key} must be an integer, got {value!r}")
    what = {"shots": "shots K"}.get(key, key)
    if value < low:
        raise ValueError(f"train: {what} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"train: {what} must be at most {high}, got {value}")
    config[key] = int(value)


def _positive_float(config, key):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"train: {key} must be a positive finite number, got {value!r}")
    config[key] = float(value)


def make_config(overrides=None) -> dict:
    """The full, validated config: ``DEFAULTS`` updated with ``overrides``.

    In: a dict of settings (keys of ``DEFAULTS``). Out: a new dict with every key.
    Raises ValueError naming the bad setting (unknown algo or task, K < 1, ...).
    >>> make_config({"algo": "fomaml"})["meta_lr"]
    0.001
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"train: unknown settings {unknown}; known: {sorted(DEFAULTS)}")
    config = dict(DEFAULTS)
    config.update({k: v for k, v in overrides.items() if v is not None})
    if config["algo"] not in ALGORITHMS:
        raise ValueError(f"train: unknown algo {config['algo']!r}; choose one of {', '.join(ALGORITHMS)}")
    get_task(config["task"])  # raises for an unknown task
    _int_at_least(config, "shots", 1)
    if config["inner_steps"] is None:
        config["inner_steps"] = 5 if config["algo"] == "reptile" else 1
    _int_at_least(config, "inner_steps", 0 if config["algo"] != "reptile" else 1, MAX_INNER_STEPS)
    _int_at_least(config, "meta_batch", 1)
    _int_at_least(config, "iters", 0)
    _int_at_least(config, "seed", 0)
    _int_at_least(config, "checkpoint_every", 1)
    _int_at_least(config, "eval_every", 0)
    _int_at_least(config, "eval_tasks", 0)
    _int_at_least(config, "baseline_iters", 0)
    if config["meta_lr"] is None:
        config["meta_lr"] = 0.1 if config["algo"] == "reptile" else 1e-3
    _positive_float(config, "meta_lr")
    _positive_float(config, "inner_lr")
    hidden = config["hidden"]
    if isinstance(hidden, str):
        try:
            hidden = [int(h) for h in hidden.split(",") if h.strip()]
        except ValueError:
            raise ValueError(f"train: hidden must be comma-separated layer widths like 40,40, got {hidden!r}") from None
    hidden = list(hidden)
    if any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in hidden):
        raise ValueError(f"train: hidden layer widths must be positive integers, got {hidden!r}")
    config["hidden"] = [int(h) for h in hidden]
    if config["cpu_kernels"] not in (None, "cython", "numpy"):
        raise ValueError(f"train: cpu_kernels must be 'cython' or 'numpy', got {config['cpu_kernels']!r}")
    if config["init"] not in ("default", "maml"):
        raise ValueError(f"train: init must be 'default' or 'maml', got {config['init']!r}")
    if config["out"] is None:
        config["out"] = os.path.join("runs", f"{config['algo']}-{config['task']}")
    config["out"] = os.fspath(config["out"])
    return config


# ----------------------------------------------------------------------------------
# Sizes: upper bounds on peak memory (float32), which tests/test_cli_errors.py checks
# against the measured peak of a meta-iteration
# ----------------------------------------------------------------------------------

def memory_limit() -> int:
    """Bytes of memory a run may use: the machine's physical memory, or its cgroup's limit when lower."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits) if limits else 16 * 2 ** 30


def _parameter_count(hidden):
    widths = [1, *hidden, 1]
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(widths, widths[1:]))


def _sizes(config):
    return f"--hidden {','.join(map(str, config['hidden']))}: {_parameter_count(config['hidden']):,} parameters"


def check_sizes(config, limit=None):
    """Raise ValueError, naming the limit, if the run could not fit: one meta-iteration or
    the final evaluation needing more than ``limit`` bytes (default ``memory_limit()``),
    or a checkpoint beyond ``checkpoint.MAX_CHECKPOINT_BYTES``. Cheap; call before training.
    """
    limit = memory_limit() if limit is None else limit
    params = _parameter_count(config["hidden"])
    meta_params = 2 * params if config["algo"] == "metasgd" else params  # Meta-SGD learns a rate per weight
    # the meta-gradient's graph keeps every inner step's fast weights; Reptile detaches each step
    kept = 2 if config["algo"] == "reptile" else config["inner_steps"] + 1
    activations = 5 * config["shots"] * sum(config["hidden"])
    needed = 4 * (kept * config["meta_batch"] * (3 * meta_params + activations) + 4 * meta_params)
    if needed > limit:
        raise ValueError(
            f"train: one meta-iteration needs about {format_bytes(needed)} of memory (--meta-batch "
            f"{config['meta_batch']}, --shots {config['shots']}, --inner-steps {config['inner_steps']}, "
            f"{_sizes(config)}), more than the {format_bytes(limit)} this machine has")
    if config["eval_tasks"]:
        from .evaluate import EVAL_SHOTS
        check_evaluation_size(config, max(config["eval_tasks"], 2), EVAL_SHOTS, "--eval-tasks", limit)
    stored = 12 * meta_params  # the parameters and Adam's two moments, float32
    if stored > MAX_CHECKPOINT_BYTES:
        raise ValueError(f"train: its checkpoint would take about {format_bytes(stored)} ({_sizes(config)}, and "
                         f"the optimizer's state), more than the {format_bytes(MAX_CHECKPOINT_BYTES)} a checkpoint "
                         "may hold")


def check_evaluation_size(config, num_tasks, shots, flag="--tasks", limit=None):
    """Raise ValueError, naming the limit, if adapting ``num_tasks`` tasks at once (K up to
    ``max(shots)``, 100 query points each) needs more than ``limit`` bytes of memory."""
    limit = memory_limit() if limit is None else limit
    points = 3 * (100 + max(shots)) * sum(config["hidden"])
    needed = 4 * num_tasks * (5 * _parameter_count(config["hidden"]) + points)
    if needed > limit:
        raise ValueError(f"evaluate: adapting {num_tasks:,} tasks at once ({flag}, K up to {max(shots)}, "
                         f"{_sizes(config)}) needs about {format_bytes(needed)} of memory, more than the "
                         f"{format_bytes(limit)} this machine has")


# ----------------------------------------------------------------------------------
# Model, algorithm, optimizer
# ----------------------------------------------------------------------------------

def build_model(config):
    """The regression MLP [1, *hidden, 1], initialised from the run's seed."""
    from . import nn
    rng = task_rng(config["seed"], 0, stream=4)
    model = nn.MLP([1, *config["hidden"], 1], activation="relu", init=config["init"], rng=rng)
    if config["device"] != "cpu":
        model.to(config["device"])
    return model


def build_algorithm(config, model):
    """The meta-learner named by ``config["algo"]`` wrapped around ``model``."""
    from . import meta
    from .functional import mse_loss
    algo = config["algo"]
    if algo in ("maml", "fomaml"):
        return meta.MAML(model, inner_lr=config["inner_lr"], inner_steps=config["inner_steps"],
                         first_order=(algo == "fomaml"), loss_fn=mse_loss)
    if algo == "metasgd":
        return meta.MetaSGD(model, init_lr=config["inner_lr"], inner_steps=config["inner_steps"])
    if algo == "reptile":
        return meta.Reptile(model, inner_lr=config["inner_lr"], inner_steps=config["inner_steps"],
                            outer_stepsize=config["meta_lr"])
    raise ValueError(f"unknown algo {algo!r}")


def build_optimizer(config, algorithm):
    """Adam(meta_lr) on the meta-parameters; plain SGD(outer stepsize) for Reptile's pseudo-gradient."""
    from . import optim
    params = algorithm.meta_parameters()
    if config["algo"] == "reptile":
        return optim.SGD(params, lr=config["meta_lr"])
    return optim.Adam(params, lr=config["meta_lr"])


def _load_parameters(algorithm, saved, where):
    try:
        algorithm.load_state_dict(saved)
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{where}: parameters do not match the model ({error.args[0]})") from None


def _parameters_as_numpy(algorithm):
    return OrderedDict((name, np.array(p.numpy(), copy=True)) for name, p in algorithm.meta_parameters().items())


def _saved_config(checkpoint):
    """The full config of a checkpoint's run; a CheckpointError naming the file if it is invalid."""
    try:
        return make_config({k: v for k, v in checkpoint.config.items() if k in DEFAULTS})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {checkpoint.path} holds an invalid config ({error})") from None


def load_run(run_dir, device=None):
    """Rebuild a trained run from its folder: ``(config, algorithm, checkpoint)``.

    >>> config, algorithm, ckpt = load_run(result.out)  # doctest: +SKIP
    """
    checkpoint = load_checkpoint(run_dir)
    config = _saved_config(checkpoint)
    if device is not None:
        config["device"] = device
    check_device(config["device"])
    algorithm = build_algorithm(config, build_model(config))
    _load_parameters(algorithm, checkpoint.params, checkpoint.path)
    return config, algorithm, checkpoint


def _pin_kernels(config, log):
    """Fix which CPU kernels run matmul and ReLU for this run; returns the previous mode.

    The backend's "auto" mode picks, per shape, whichever implementation a timing taken
    at the process's first call found faster, so two processes on a busy machine can
    route the same matmul differently and round differently. A resumed run must compute
    exactly what the uninterrupted one did, so a run pins one implementation and keeps
    it in its config: compiled kernels when built, numpy otherwise.
    """
    from .backends import cpu
    wanted = config["cpu_kernels"]
    if wanted is None:
        current = cpu.get_kernels()
        wanted = current if current != "auto" else ("cython" if cpu.kernel_info()["compiled"] else "numpy")
        config["cpu_kernels"] = wanted
    try:
        return cpu.set_kernels(wanted)
    except RuntimeError as error:
        log(f"warning: this run used {wanted} kernels, which are unavailable here ({error}); using numpy, "
            "so a resumed run will not match an uninterrupted one bit for bit")
        return cpu.set_kernels("numpy")


@contextlib.contextmanager
def pinned_kernels(config, log=print):
    """Run the block with the run's CPU kernels pinned (``_pin_kernels``), then restore."""
    from .backends import cpu
    previous = _pin_kernels(config, log)
    try:
        yield config["cpu_kernels"]
    finally:
        cpu.set_kernels(previous)


def check_device(device):
    """Raise a ValueError saying why ``device`` cannot be used (no CuPy, no GPU, a typo)."""
    from .backends import get_backend
    try:
        get_backend(device)
    except (ImportError, RuntimeError, ValueError) as error:
        raise ValueError(f"device {device!r} is not usable: {error}") from None


def _to_device(batch, device):
    from .tensor import Tensor
    return tuple(Tensor(array, device=device) for array in batch)


# ----------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------

def _resume_config(run_dir, overrides):
    if not os.path.isdir(run_dir):
        problem = "is not a folder" if os.path.exists(run_dir) else "does not exist"
        raise FileNotFoundError(f"--resume: run folder {run_dir} {problem}")
    checkpoint = load_checkpoint(run_dir)
    saved = checkpoint.config
    requested = make_config(dict(overrides, out=run_dir))
    conflicts = []
    for key in FIXED_ON_RESUME:
        if key in overrides and overrides[key] is not None and requested[key] != saved.get(key):
            conflicts.append(f"{key}: checkpoint has {saved.get(key)!r}, requested {requested[key]!r}")
    if conflicts:
        raise ConfigConflictError(
            f"cannot resume {checkpoint.path}: it was trained with a different config ("
            + "; ".join(conflicts) + "). Drop those flags, or start a new run with another --out.")
    config = _saved_config(checkpoint)
    for key, value in overrides.items():
        if key not in FIXED_ON_RESUME and value is not None:
            config[key] = requested[key]
    config["out"] = run_dir
    return config, checkpoint


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


class _Progress:
    """A tqdm bar when tqdm is importable and wanted, else a line every few seconds."""

    def __init__(self, total, initial, enabled, log):
        self.bar = None
        self.log = log
        self.enabled = enabled
        self.last_print = time.monotonic()
        self.total = total
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=initial, desc="meta-train", unit="it",
                                dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
            except ImportError:
                self.bar = None

    def update(self, iteration, loss):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if iteration % 25 == 0:
                self.bar.set_postfix_str(f"meta-loss {loss:.4f}", refresh=False)
        elif time.monotonic() - self.last_print > 5.0 or iteration == self.total:
            self.last_print = time.monotonic()
            self.log(f"iteration {iteration}/{self.total}  meta-loss {loss:.4f}")

    def write(self, text):
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            self.log(text)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _validation_mse(config, algorithm, validation):
    from .evaluate import adapted_mse
    steps = max(config["inner_steps"], 1)
    curves = adapted_mse(algorithm, validation, steps=[steps], inner_lr=config["inner_lr"],
                         device=config["device"])
    return steps, float(curves[steps].mean())


def train(overrides=None, resume=None, force=False, progress=True, log=print) -> TrainResult:
    """Meta-train, checkpointing as it goes; returns a ``TrainResult``.

    In: ``overrides`` a dict of settings (keys of ``DEFAULTS``; unset ones take the
    defaults); ``resume`` a run folder to continue (its checkpoint's config is used,
    and settings in ``overrides`` that define the run must agree with it); ``force``
    overwrites a different run in ``out``; ``progress`` shows a progress bar; ``log``
    receives the printed lines. Example: see the module docstring.
    """
    overrides = dict(overrides or {})
    checkpoint = None
    if resume is not None:
        config, checkpoint = _resume_config(os.fspath(resume), overrides)
    else:
        config = make_config(overrides)
    check_sizes(config)
    task = get_task(config["task"])
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


def _train(config, checkpoint, task, progress, log):
    model = build_model(config)
    algorithm = build_algorithm(config, model)
    optimizer = build_optimizer(config, algorithm)
    start, history = 0, []
    if checkpoint is not None:
        _load_parameters(algorithm, checkpoint.params, checkpoint.path)
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
        _restore_algorithm_rng(algorithm, checkpoint.rng_state, config, start)
        log(f"resuming {config['out']} at iteration {start} of {config['iters']}")

    validation, _, _ = task.evaluation_batch(
        _VALIDATION_TASKS, config["shots"], task_rng(config["seed"], 0, STREAM_VALIDATION))
    metrics_path = os.path.join(config["out"], "metrics.jsonl")
    _write_metrics(metrics_path, history)

    def save(iteration):
        save_checkpoint(
            os.path.join(config["out"], CHECKPOINT_NAME),
            params=_parameters_as_numpy(algorithm),
            optimizer_state=optimizer.state_dict(),
            rng_state=_rng_state(algorithm, config, iteration),
            iteration=iteration,
            config=config,
            extra={"history": history},
        )

    bar = _Progress(config["iters"], start, progress, log)
    began = time.perf_counter()
    loss_average = None
    iteration = start
    try:
        for iteration in range(start + 1, config["iters"] + 1):
            rng = task_rng(config["seed"], iteration - 1, STREAM_TRAIN)
            batch = task.sample_batch(config["meta_batch"], config["shots"], rng)
            loss, grads = algorithm.meta_step(_to_device(batch, config["device"]))
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"meta-loss became {loss} at iteration {iteration}; try a smaller --meta-lr or --inner-lr")
            optimizer.step(grads)
            loss_average = loss if loss_average is None else 0.98 * loss_average + 0.02 * loss
            bar.update(iteration, loss_average)
            if config["eval_every"] and iteration % config["eval_every"] == 0:
                steps, mse = _validation_mse(config, algorithm, validation)
                entry = {"iteration": iteration, "meta_loss": loss_average, "val_mse": mse,
                         "val_steps": steps, "seconds": round(time.perf_counter() - began, 3)}
                history.append(entry)
                _append_metrics(metrics_path, entry)
                bar.write(f"iteration {iteration}: meta-loss {loss_average:.4f}, validation MSE after "
                          f"{steps} step{'s' if steps != 1 else ''} (K={config['shots']}) {mse:.4f}")
            if iteration % config["checkpoint_every"] == 0 and iteration != config["iters"]:
                save(iteration)
    finally:
        bar.close()
    if iteration > start or checkpoint is None:
        save(iteration)
    seconds = time.perf_counter() - began
    done = iteration - start
    if done:
        log(f"trained {done} meta-iterations in {seconds:.1f} s ({1000 * seconds / done:.2f} ms each); "
            f"checkpoint {os.path.join(config['out'], CHECKPOINT_NAME)}")
    return TrainResult(config["out"], iteration, config, algorithm, history, seconds)


# ----------------------------------------------------------------------------------
# RNG state and metrics
# ----------------------------------------------------------------------------------

def _rng_state(algorithm, config, iteration):
    # Task sampling needs no state beyond (seed, iteration); the generator of the next
    # iteration is stored anyway so that a resume can check it derives the same one
    # (it would not if the derivation scheme changed between versions). An algorithm
    # that keeps its own generator (``algorithm.rng``) gets its state saved too.
    state = {"next_task_rng": generator_state(task_rng(config["seed"], iteration, STREAM_TRAIN))}
    rng = getattr(algorithm, "rng", None)
    if isinstance(rng, np.random.Generator):
        state["algorithm_rng"] = generator_state(rng)
    return state


def _restore_algorithm_rng(algorithm, rng_state, config, iteration):
    if not rng_state:
        return
    expected = generator_state(task_rng(config["seed"], iteration, STREAM_TRAIN))
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
