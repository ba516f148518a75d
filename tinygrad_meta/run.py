"""Run bookkeeping shared by training and evaluation: the config, sizes, what a run builds,
its pinned CPU kernels, and how a run folder is loaded or resumed.

A run is a folder with ``checkpoint.npz``; its config (``make_config``) says everything
that defines it. ``build_model`` / ``build_algorithm`` / ``build_optimizer`` rebuild the
same objects from a config, ``load_run`` rebuilds a trained run from its folder, and
``pinned_kernels`` fixes which CPU kernels compute it so that a resumed or re-evaluated
run rounds exactly as the original did. ``train.py`` and ``evaluate.py`` both build on
this module and not on each other.

>>> config = make_config({"algo": "fomaml", "hidden": [8]})
>>> config["meta_lr"], config["inner_steps"], config["out"]
(0.001, 1, 'runs/fomaml-sinusoid')
>>> type(build_algorithm(config, build_model(config))).__name__
'MAML'
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections import OrderedDict

import numpy as np

from . import meta, nn, optim
from .backends import cpu, get_backend
from .checkpoint import CheckpointError, format_bytes, load_checkpoint, MAX_CHECKPOINT_BYTES
from .tasks import get_task, is_fewshot, make_task
from .tasks.fewshot import MODELS, head_prefix
from .tasks.base import stream_rng
from .tensor import Tensor

__all__ = ["ALGORITHMS", "DEFAULTS", "FIXED_ON_RESUME", "MAX_INNER_STEPS", "ConfigConflictError",
           "make_config", "saved_config", "resume_config", "memory_limit", "check_sizes",
           "check_evaluation_size", "build_model", "build_algorithm", "build_optimizer", "load_parameters",
           "parameters_as_numpy", "load_run", "pinned_kernels", "check_device", "to_device", "task_of",
           "FEWSHOT_DEFAULTS", "outer_lr"]

ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile", "anil", "protonet")

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
    "compile": True,          # meta_step through tgm.compile (same numbers, less Python per step)
    # few-shot classification only (--task omniglot|glyphs; None for regression tasks)
    "ways": None,             # N of the training episodes
    "queries": None,          # query examples per class of every training episode
    "eval_queries": None,     # ... of the validation and evaluation episodes (None: as queries)
    "data_dir": None,         # the Omniglot folder
    "model": None,            # "conv" (the 4-block conv net) or "mlp" (MAML's fully connected net)
    "test_steps": None,       # inner steps when evaluating a gradient-based learner
    "lr_halve_every": None,   # halve the outer Adam's lr every this many iterations (ProtoNet's schedule)
}

# Few-shot defaults: the papers' Omniglot settings, scaled down for a few minutes on two
# CPU cores (the MAML paper: meta-batch 32, 60,000 iterations; ProtoNets: 1 episode per
# step, lr halved every 2,000 episodes). The papers' 20-way settings (inner lr 0.1, 5
# inner steps, meta-batch 16) are asked for with flags.
FEWSHOT_DEFAULTS = {
    "shots": 1, "ways": 5, "queries": 5, "model": "conv", "inner_lr": 0.4, "meta_batch": 8,
    "iters": 1000, "checkpoint_every": 100, "eval_every": 100, "eval_tasks": 600, "test_steps": 3,
    "compile": True,
}
FEWSHOT_ALGO_DEFAULTS = {
    "protonet": {"meta_batch": 1, "lr_halve_every": 2000},
    "reptile": {"inner_lr": 0.1, "inner_steps": 5, "meta_lr": 1.0, "meta_batch": 5, "test_steps": 10,
                "lr_halve_every": 250},
}

# Settings that define what is being trained: resuming with a different value would
# silently train something else, so it is an error. The rest may change on resume.
FIXED_ON_RESUME = ("algo", "task", "shots", "inner_lr", "inner_steps", "meta_batch", "meta_lr",
                   "seed", "hidden", "init", "ways", "queries", "model", "lr_halve_every")

# Every inner step is a forward and backward pass per task per meta-iteration (the MAML
# paper takes 1 to 10; Reptile's 5 to 32); beyond this a run cannot finish.
MAX_INNER_STEPS = 10_000

# ``--hidden`` words that ask for no hidden layer: a linear model has to be asked for
LINEAR = ("none", "linear")


class ConfigConflictError(ValueError):
    """``--resume`` was given settings that contradict the checkpoint's config."""


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


def _hidden_widths(hidden):
    """``--hidden``'s widths: "40,40" or a list; "none" for a linear model. Anything that
    names no layer by accident (an empty string) is an error, not a linear model."""
    if isinstance(hidden, str):
        text = hidden.strip()
        if text.lower() in LINEAR:
            return []
        if not text.replace(",", "").strip():
            raise ValueError(f"train: --hidden names no layer width (got {hidden!r}); give widths like 40,40, "
                             "or --hidden none for a linear model")
        try:
            hidden = [int(h) for h in text.split(",") if h.strip()]
        except ValueError:
            raise ValueError(f"train: hidden must be comma-separated layer widths like 40,40, got {hidden!r}") from None
    hidden = list(hidden)
    if any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in hidden):
        raise ValueError(f"train: hidden layer widths must be positive integers, got {hidden!r}")
    return [int(h) for h in hidden]


def make_config(overrides=None) -> dict:
    """The full, validated config: ``DEFAULTS`` updated with ``overrides``.

    In: a dict of settings (keys of ``DEFAULTS``). Out: a new dict with every key.
    Raises ValueError naming the bad setting (unknown algo or task, K < 1, ...).
    >>> make_config({"algo": "reptile"})["meta_lr"]
    0.1
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"train: unknown settings {unknown}; known: {sorted(DEFAULTS)}")
    config = dict(DEFAULTS)
    task, algo = overrides.get("task") or DEFAULTS["task"], overrides.get("algo") or DEFAULTS["algo"]
    if is_fewshot(task):
        config.update(FEWSHOT_DEFAULTS)
        config.update(FEWSHOT_ALGO_DEFAULTS.get(algo, {}))
    config.update({k: v for k, v in overrides.items() if v is not None})
    if config["algo"] not in ALGORITHMS:
        raise ValueError(f"train: unknown algo {config['algo']!r}; choose one of {', '.join(ALGORITHMS)}")
    if is_fewshot(task):
        _fewshot_config(config)
    else:
        get_task(config["task"])  # raises for an unknown task
        for key in ("ways", "queries", "eval_queries", "data_dir", "model", "test_steps", "lr_halve_every"):
            if config[key] is not None:
                raise ValueError(f"train: --{key.replace('_', '-')} is for the few-shot classification tasks "
                                 f"(--task omniglot or glyphs), not {config['task']}")
        if config["algo"] in ("anil", "protonet"):
            raise ValueError(f"train: --algo {config['algo']} classifies images: use it with --task omniglot "
                             "or --task glyphs")
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
    config["hidden"] = _hidden_widths(config["hidden"])
    if config["cpu_kernels"] not in (None, "cython", "numpy"):
        raise ValueError(f"train: cpu_kernels must be 'cython' or 'numpy', got {config['cpu_kernels']!r}")
    if not isinstance(config["compile"], bool):
        raise ValueError(f"train: compile must be True or False, got {config['compile']!r}")
    if config["init"] not in ("default", "maml"):
        raise ValueError(f"train: init must be 'default' or 'maml', got {config['init']!r}")
    if config["out"] is None:
        config["out"] = os.path.join("runs", f"{config['algo']}-{config['task']}")
        if is_fewshot(task):
            config["out"] += f"-{config['ways']}w{config['shots']}s"
    config["out"] = os.fspath(config["out"])
    return config


def _fewshot_config(config):
    if config["eval_queries"] is None:
        config["eval_queries"] = config["queries"]
    for key in ("ways", "queries", "eval_queries", "test_steps"):
        _int_at_least(config, key, 1 if key != "test_steps" else 0, MAX_INNER_STEPS if key == "test_steps" else None)
    if config["lr_halve_every"] is not None:
        _int_at_least(config, "lr_halve_every", 1)
    if config["ways"] < 2:
        raise ValueError(f"train: --ways must be at least 2 for a classification, got {config['ways']}")
    if config["model"] not in MODELS:
        raise ValueError(f"train: --model must be one of {', '.join(MODELS)}, got {config['model']!r}")
    if config["task"] == "omniglot" and config["data_dir"] is None:
        raise ValueError("train: --task omniglot needs --data-dir DIR, the folder holding the official zips "
                         "(images_background_small1.zip and images_background_small2.zip, or "
                         "images_background.zip and images_evaluation.zip); --task glyphs needs no download")
    if config["data_dir"] is not None:
        config["data_dir"] = os.fspath(config["data_dir"])


def task_of(config):
    """The run's Task: the registered one, or its few-shot family built from the config."""
    return make_task(config["task"], data_dir=config.get("data_dir"), ways=config.get("ways") or 5,
                     queries=config.get("queries") or 5, eval_queries=config.get("eval_queries"))


def saved_config(checkpoint):
    """The full config of a checkpoint's run; a CheckpointError naming the file if it is invalid."""
    try:
        return make_config({k: v for k, v in checkpoint.config.items() if k in DEFAULTS})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {checkpoint.path} holds an invalid config ({error})") from None


def resume_config(run_dir, overrides, log=print):
    """``(config, checkpoint)`` to continue the run in ``run_dir`` with ``overrides``.

    Settings that define the run (``FIXED_ON_RESUME``) must agree with the checkpoint's
    (else ``ConfigConflictError``); the others take the new value. A change of CPU
    kernels is allowed but logged: the resumed run then rounds differently.
    """
    if not os.path.isdir(run_dir):
        problem = "is not a folder" if os.path.exists(run_dir) else "does not exist"
        raise FileNotFoundError(f"--resume: run folder {run_dir} {problem}")
    checkpoint = load_checkpoint(run_dir)
    saved = checkpoint.config
    # the checkpoint's family and algorithm, unless given: few-shot flags need a few-shot task
    family = {key: saved.get(key) for key in ("task", "algo", "data_dir") if saved.get(key) is not None}
    requested = make_config(dict(family, **{k: v for k, v in overrides.items() if v is not None}, out=run_dir))
    conflicts = []
    for key in FIXED_ON_RESUME:
        if key in overrides and overrides[key] is not None and requested[key] != saved.get(key):
            conflicts.append(f"{key}: checkpoint has {saved.get(key)!r}, requested {requested[key]!r}")
    if conflicts:
        raise ConfigConflictError(
            f"cannot resume {checkpoint.path}: it was trained with a different config ("
            + "; ".join(conflicts) + "). Drop those flags, or start a new run with another --out.")
    config = saved_config(checkpoint)
    for key, value in overrides.items():
        if key not in FIXED_ON_RESUME and value is not None:
            config[key] = requested[key]
    before, after = saved.get("cpu_kernels"), config["cpu_kernels"]
    if before is not None and after != before:
        log(f"warning: {run_dir} was trained with --cpu-kernels {before}, resuming with {after}: "
            "the result will not match an uninterrupted run bit for bit")
    config["out"] = run_dir
    return config, checkpoint


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
    return f"--hidden {','.join(map(str, config['hidden'])) or 'none'}: {_parameter_count(config['hidden']):,} parameters"


def check_sizes(config, limit=None):
    """Raise ValueError, naming the limit, if the run could not fit: one meta-iteration or
    the final evaluation needing more than ``limit`` bytes (default ``memory_limit()``),
    or a checkpoint beyond ``checkpoint.MAX_CHECKPOINT_BYTES``. Cheap; call before training.
    """
    limit = memory_limit() if limit is None else limit
    if is_fewshot(config["task"]):
        return _check_fewshot_sizes(config, limit)
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
        check_evaluation_size(config, max(config["eval_tasks"], 2), task_of(config).evaluation_shots,
                              "--eval-tasks", limit)
    stored = 12 * meta_params  # the parameters and Adam's two moments, float32
    if stored > MAX_CHECKPOINT_BYTES:
        raise ValueError(f"train: its checkpoint would take about {format_bytes(stored)} ({_sizes(config)}, and "
                         f"the optimizer's state), more than the {format_bytes(MAX_CHECKPOINT_BYTES)} a checkpoint "
                         "may hold")


# bytes a 28x28 image's activations and their gradients take in the 4-block conv net
# (64 channels at 28, 14, 7, 3 pixels, a few saved tensors each), float32: an upper bound
_BYTES_PER_IMAGE = 4 * 64 * (28 * 28 + 14 * 14 + 7 * 7 + 3 * 3) * 8


def _check_fewshot_sizes(config, limit):
    images = config["meta_batch"] * config["ways"] * (config["shots"] + config["queries"])
    kept = 2 if config["algo"] in ("reptile", "protonet") else config["inner_steps"] + 1
    needed = images * kept * _BYTES_PER_IMAGE
    if needed > limit:
        raise ValueError(
            f"train: one meta-iteration needs about {format_bytes(needed)} of memory ({images:,} images: "
            f"--meta-batch {config['meta_batch']} x --ways {config['ways']} x (--shots {config['shots']} + "
            f"--queries {config['queries']}), --inner-steps {config['inner_steps']}), more than the "
            f"{format_bytes(limit)} this machine has")


def check_evaluation_size(config, num_tasks, shots, flag="--tasks", limit=None):
    """Raise ValueError, naming the limit, if adapting ``num_tasks`` tasks at once (K up to
    ``max(shots)``, 100 query points each) needs more than ``limit`` bytes of memory."""
    limit = memory_limit() if limit is None else limit
    if is_fewshot(config["task"]):
        return  # evaluation runs in chunks of tasks sized to a fixed number of images (evaluate.py)
    points = 3 * (100 + max(shots)) * sum(config["hidden"])
    needed = 4 * num_tasks * (5 * _parameter_count(config["hidden"]) + points)
    if needed > limit:
        raise ValueError(f"evaluate: adapting {num_tasks:,} tasks at once ({flag}, K up to {max(shots)}, "
                         f"{_sizes(config)}) needs about {format_bytes(needed)} of memory, more than the "
                         f"{format_bytes(limit)} this machine has")


# ----------------------------------------------------------------------------------
# Model, algorithm, optimizer
# ----------------------------------------------------------------------------------

def build_model(config, stream="model-init"):
    """The regression MLP [1, *hidden, 1], initialised from the run's seed and ``stream``
    (``"baseline-init"`` for the pretrained baseline); for a few-shot task, the network
    the task builds for the algorithm (``FewShotTask.build_model``)."""
    if is_fewshot(config["task"]):
        model = task_of(config).build_model(config["algo"], config["model"], rng=stream_rng(config["seed"], stream))
        if config.get("device", "cpu") != "cpu":
            model.to(config["device"])
        return model
    model = nn.MLP([1, *config["hidden"], 1], activation="relu", init=config["init"],
                   rng=stream_rng(config["seed"], stream))
    if config.get("device", "cpu") != "cpu":
        model.to(config["device"])
    return model


def build_algorithm(config, model):
    """The meta-learner named by ``config["algo"]`` wrapped around ``model``, on the task's loss."""
    algo, loss = config["algo"], task_of(config).loss
    compiled = config.get("compile", True)  # replays give the eager numbers bit for bit
    if algo in ("maml", "fomaml"):
        return meta.MAML(model, inner_lr=config["inner_lr"], inner_steps=config["inner_steps"],
                         first_order=(algo == "fomaml"), loss_fn=loss, compile=compiled)
    if algo == "anil":
        return meta.MAML(model, inner_lr=config["inner_lr"], inner_steps=config["inner_steps"], loss_fn=loss,
                         adapt_only=head_prefix(model), compile=compiled)
    if algo == "protonet":
        return meta.ProtoNet(model, loss_fn=loss, compile=compiled)
    if algo == "metasgd":
        return meta.MetaSGD(model, init_lr=config["inner_lr"], inner_steps=config["inner_steps"],
                            loss_fn=loss, compile=compiled)
    if algo == "reptile":
        # few-shot classification: the inner loop trains on support and query in one
        # mini-batch per step (the paper's setting; on the same full batch every step,
        # Reptile does not learn a classifier: see meta/reptile.py). Evaluation still adapts
        # on the support set only.
        if is_fewshot(config["task"]):
            pool = config["ways"] * (config["shots"] + config["queries"])
            data = {"inner_data": "support+query", "inner_batches": min(config["inner_steps"], pool)}
        else:
            data = {}
        return meta.Reptile(model, inner_lr=config["inner_lr"], inner_steps=config["inner_steps"],
                            outer_stepsize=config["meta_lr"], loss_fn=loss, compile=compiled, **data)
    raise ValueError(f"unknown algo {algo!r}")


def build_optimizer(config, algorithm):
    """Adam(meta_lr) on the meta-parameters; plain SGD(outer stepsize) for Reptile's pseudo-gradient."""
    params = algorithm.meta_parameters()
    if config["algo"] == "reptile":
        return optim.SGD(params, lr=config["meta_lr"])
    return optim.Adam(params, lr=config["meta_lr"])


def outer_lr(config, iteration):
    """The outer learning rate of (1-based) ``iteration``: ``meta_lr``, halved every
    ``lr_halve_every`` iterations when set (a function of the iteration: a resume is exact)."""
    halve = config.get("lr_halve_every")
    return config["meta_lr"] * (0.5 ** ((iteration - 1) // halve) if halve else 1.0)


def load_parameters(algorithm, saved, where):
    """Load a checkpoint's parameters into ``algorithm``; a CheckpointError naming ``where`` if they do not fit."""
    try:
        algorithm.load_state_dict(saved)
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{where}: parameters do not match the model ({error.args[0]})") from None


def parameters_as_numpy(algorithm):
    """What a checkpoint stores: the meta-parameters as name -> numpy copies, in order, and
    the model's state that is not a parameter (BatchNorm's running statistics, a Dropout's
    generator): ``algorithm.state_dict()``, which ``load_parameters`` restores whole."""
    return OrderedDict((name, np.array(value, copy=True)) for name, value in algorithm.state_dict().items())


def load_run(run_dir, device=None):
    """Rebuild a trained run from its folder: ``(config, algorithm, checkpoint)``.

    >>> config, algorithm, ckpt = load_run("runs/maml-sinusoid")  # doctest: +SKIP
    """
    checkpoint = load_checkpoint(run_dir)
    config = saved_config(checkpoint)
    if device is not None:
        config["device"] = device
    check_device(config["device"])
    algorithm = build_algorithm(config, build_model(config))
    load_parameters(algorithm, checkpoint.params, checkpoint.path)
    return config, algorithm, checkpoint


def check_device(device):
    """Raise a ValueError saying why ``device`` cannot be used (no CuPy, no GPU, a typo)."""
    try:
        get_backend(device)
    except (ImportError, RuntimeError, ValueError) as error:
        raise ValueError(f"device {device!r} is not usable: {error}") from None


def to_device(batch, device):
    """A task batch of arrays as a tuple of Tensors on ``device`` (integer labels stay integers)."""
    return tuple(Tensor(array, device=device) for array in batch)


# ----------------------------------------------------------------------------------
# Pinned CPU kernels
# ----------------------------------------------------------------------------------

def _pin_kernels(config, log):
    """Fix which CPU kernels run matmul and ReLU for this run; returns the previous mode.

    The backend's "auto" mode picks, per shape, whichever implementation a timing taken
    at the process's first call found faster, so two processes on a busy machine can
    route the same matmul differently and round differently. A resumed run must compute
    exactly what the uninterrupted one did, so a run pins one implementation and keeps
    it in its config: compiled kernels when built, numpy otherwise.
    """
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
    previous = _pin_kernels(config, log)
    try:
        yield config["cpu_kernels"]
    finally:
        cpu.set_kernels(previous)
