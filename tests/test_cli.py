"""The command line: train / eval / info, exact kill-and-resume, and clear errors."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tinygrad_meta.__main__ import main
from tinygrad_meta.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tinygrad_meta.evaluate import _row, adapt_curve, adapted_metric, adapted_mse, format_table
from tinygrad_meta.run import build_algorithm, build_model, make_config
from tinygrad_meta.tasks import get_task
from tinygrad_meta.train import train

from kill_checks import kill_after_checkpoint

# small and fast: these tests check behaviour, not learning quality
TINY = ["--hidden", "8", "--meta-batch", "3", "--shots", "4", "--no-progress", "--no-plot",
        "--eval-every", "0"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quiet(*args):
    pass


@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd", "reptile"])
def test_train_smoke_for_each_algorithm_prints_the_table(algo, tmp_path, capsys):
    out = tmp_path / algo
    code = main(["train", "--algo", algo, "--iters", "6", "--out", str(out), "--eval-tasks", "4",
                 "--baseline-iters", "3", "--checkpoint-every", "4", *TINY])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    checkpoint = load_checkpoint(out)
    assert checkpoint.iteration == 6 and checkpoint.config["algo"] == algo
    assert all(np.isfinite(v).all() for v in checkpoint.params.values())
    for k in (5, 10, 20):
        assert f"\n {k:>2}  {algo:<11}" in captured.out
        assert f"\n {k:>2}  pretrained " in captured.out
    if algo == "metasgd":
        assert any(name.startswith("lr.") for name in checkpoint.params)
        assert "learned per-parameter rates" in captured.out


def test_training_is_deterministic_and_lowers_the_validation_loss(tmp_path):
    settings = {"hidden": [16], "meta_batch": 5, "iters": 120, "eval_every": 60, "eval_tasks": 0,
                "checkpoint_every": 1000}
    first = train(dict(settings, out=str(tmp_path / "a")), progress=False, log=_quiet)
    second = train(dict(settings, out=str(tmp_path / "b")), progress=False, log=_quiet)
    a, b = load_checkpoint(first.out).params, load_checkpoint(second.out).params
    assert all(np.array_equal(a[name], b[name]) for name in a)
    # the same validation tasks and measure, on the untrained initialisation
    config = make_config(dict(settings, out=str(tmp_path / "c")))
    untrained = build_algorithm(config, build_model(config))
    validation = get_task("sinusoid").validation_tasks(config["seed"], 100, config["shots"])
    before = adapted_mse(untrained, validation, steps=[1])[1].mean()
    assert first.history[-1]["iteration"] == 120
    assert first.history[-1]["val_mse"] < 0.9 * before


def _eval_tasks(num=20, shots=5):
    return get_task("sinusoid").evaluation_tasks(0, num, shots)


def test_batched_evaluation_matches_the_meta_learners_own_per_task_evaluation(tmp_path):
    result = train({"hidden": [16], "meta_batch": 4, "iters": 20, "eval_every": 0, "eval_tasks": 0,
                    "out": str(tmp_path / "run")}, progress=False, log=_quiet)
    algorithm = result.algorithm
    batch = _eval_tasks()
    ours = adapted_mse(algorithm, batch, steps=(0, 1, 5))
    algorithm.vectorize = False  # the looped, one-task-at-a-time reference
    reference = algorithm.evaluate(batch, steps=(0, 1, 5))
    for step in (0, 1, 5):
        np.testing.assert_allclose(ours[step], reference[step], rtol=1e-4, atol=1e-6)


def test_adapting_with_a_zero_learning_rate_changes_nothing(tmp_path):
    result = train({"hidden": [8], "iters": 1, "eval_every": 0, "eval_tasks": 0,
                    "out": str(tmp_path / "run")}, progress=False, log=_quiet)
    model = result.algorithm.model
    curves = adapt_curve(model, model.state_dict(), _eval_tasks(), steps=(0, 3), lr=0.0)
    np.testing.assert_array_equal(curves[0], curves[3])


def _cli(*args):
    return [sys.executable, "-m", "tinygrad_meta", "train", *args]


def test_kill_9_and_resume_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    # long enough that the run is still going when its first checkpoints appear
    iters = 3000
    flags = ["--iters", str(iters), "--checkpoint-every", "10", "--eval-tasks", "0", *TINY]
    # the uninterrupted reference, in this process and eager (compile=False), while the
    # killed and the resumed runs replay compiled steps (the CLI's default): equal bit for
    # bit, so a compiled run resumes exactly and computes exactly what eager does
    reference = train({"iters": iters, "checkpoint_every": 10, "eval_tasks": 0, "hidden": [8],
                       "meta_batch": 3, "shots": 4, "eval_every": 0, "out": str(tmp_path / "ref"),
                       "compile": False}, progress=False, log=_quiet)
    assert not reference.algorithm.compile
    interrupted = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(_cli(*flags, "--out", str(interrupted)), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    at_kill = kill_after_checkpoint(process, interrupted, 20, timeout=60)
    assert 20 <= at_kill < iters
    resumed = subprocess.run(_cli("--resume", str(interrupted), "--no-progress", "--no-plot"), cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {interrupted} at iteration {at_kill}" in resumed.stdout
    final, expected = load_checkpoint(interrupted), load_checkpoint(reference.out)
    assert final.iteration == expected.iteration == iters
    for name, value in expected.params.items():
        assert np.array_equal(final.params[name], value), f"parameter {name} differs after resume"
    for key, value in expected.optimizer_state.items():
        assert np.array_equal(final.optimizer_state[key], value), f"optimizer state {key} differs"


def test_no_compile_flag_runs_eagerly(tmp_path):
    from tinygrad_meta.__main__ import build_parser
    args = build_parser().parse_args(["train", "--no-compile"])
    assert args.compile is False and build_parser().parse_args(["train"]).compile is None
    result = train({"hidden": [8], "meta_batch": 3, "iters": 3, "eval_every": 0, "eval_tasks": 0,
                    "out": str(tmp_path / "run"), "compile": False}, progress=False, log=_quiet)
    assert not result.algorithm.compile and result.algorithm._compiled_step is None
    assert make_config({})["compile"] is True


def test_resume_can_extend_a_finished_run(tmp_path):
    out = str(tmp_path / "run")
    base = {"hidden": [8], "meta_batch": 3, "eval_every": 0, "eval_tasks": 0, "out": out}
    train(dict(base, iters=8), progress=False, log=_quiet)
    # what a kill -9 in the middle of a checkpoint write leaves behind
    with open(os.path.join(out, ".tmp-half-written.npz"), "wb") as handle:
        handle.write(b"PK\x03\x04 partial")
    extended = train({"iters": 15}, resume=out, progress=False, log=_quiet)
    assert not os.path.exists(os.path.join(out, ".tmp-half-written.npz"))
    straight = train(dict(base, iters=15, out=str(tmp_path / "straight")), progress=False, log=_quiet)
    a, b = load_checkpoint(extended.out).params, load_checkpoint(straight.out).params
    assert extended.iteration == 15 and all(np.array_equal(a[n], b[n]) for n in a)


# ---- bad input ---------------------------------------------------------------------

def _error(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    return captured.err


def test_unknown_algo_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--algo", "mamll"])
    assert "invalid choice: 'mamll'" in capsys.readouterr().err


def test_unknown_task_and_bad_shots_are_named(capsys, tmp_path):
    assert "unknown task 'sinusiod'" in _error(capsys, ["train", "--task", "sinusiod", "--out", str(tmp_path)])
    assert "shots K must be at least 1, got 0" in _error(capsys, ["train", "--shots", "0", "--out", str(tmp_path)])
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_an_unusable_device_is_named_before_anything_is_written(capsys, tmp_path):
    err = _error(capsys, ["train", "--device", "tpu", "--out", str(tmp_path / "run")])
    assert "device 'tpu' is not usable" in err
    assert not (tmp_path / "run").exists()


def test_resume_of_a_missing_folder_is_named(capsys, tmp_path):
    err = _error(capsys, ["train", "--resume", str(tmp_path / "nope")])
    assert "run folder" in err and "nope does not exist" in err


def test_resume_of_a_corrupt_checkpoint_fails_and_leaves_it_alone(capsys, tmp_path):
    out = str(tmp_path / "run")
    train({"hidden": [8], "iters": 2, "eval_every": 0, "eval_tasks": 0, "out": out}, progress=False, log=_quiet)
    path = os.path.join(out, CHECKPOINT_NAME)
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 3])  # truncated, as by a full disk
    assert "corrupt or truncated" in _error(capsys, ["train", "--resume", out, *TINY])
    assert open(path, "rb").read() == data[: len(data) // 3]
    assert "corrupt or truncated" in _error(capsys, ["eval", out, "--tasks", "3"])


def test_resume_with_conflicting_settings_is_refused(capsys, tmp_path):
    out = str(tmp_path / "run")
    train({"hidden": [8], "iters": 2, "eval_every": 0, "eval_tasks": 0, "out": out}, progress=False, log=_quiet)
    before = open(os.path.join(out, CHECKPOINT_NAME), "rb").read()
    err = _error(capsys, ["train", "--resume", out, "--shots", "5", "--inner-lr", "0.1"])
    assert "different config" in err and "shots: checkpoint has 10, requested 5" in err
    assert "inner_lr: checkpoint has 0.01, requested 0.1" in err
    assert open(os.path.join(out, CHECKPOINT_NAME), "rb").read() == before


def test_a_new_run_will_not_overwrite_a_different_one(capsys, tmp_path):
    out = str(tmp_path / "run")
    train({"hidden": [8], "iters": 2, "eval_every": 0, "eval_tasks": 0, "out": out}, progress=False, log=_quiet)
    assert "already holds a checkpoint of a different run" in _error(
        capsys, ["train", "--out", out, "--algo", "fomaml", "--iters", "2", "--eval-tasks", "0", *TINY])
    assert load_checkpoint(out).config["algo"] == "maml"


def test_eval_prints_the_table_and_rejects_a_missing_folder(capsys, tmp_path):
    out = str(tmp_path / "run")
    train({"hidden": [8], "iters": 3, "eval_every": 0, "eval_tasks": 0, "out": out}, progress=False, log=_quiet)
    assert main(["eval", out, "--tasks", "5", "--shots", "5,10", "--baseline-iters", "4", "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "mean ± 95% CI over 5 tasks" in printed and "checkpoint at iteration 3" in printed
    assert "  5  maml" in printed and " 10  pretrained" in printed and " 20  " not in printed
    written = sorted(os.listdir(out))
    assert [name for name in written if name.startswith("eval")] == [name for name in written
                                                                      if name.startswith("eval-")][:1]
    assert "pretrained.npz" in written
    assert "does not exist" in _error(capsys, ["eval", str(tmp_path / "missing")])
    assert "need at least 2 tasks" in _error(capsys, ["eval", out, "--tasks", "1", "--no-plot"])


def test_eval_plot_is_saved_or_skipped_with_a_message(capsys, tmp_path):
    out = str(tmp_path / "run")
    train({"hidden": [8], "iters": 2, "eval_every": 0, "eval_tasks": 0, "out": out}, progress=False, log=_quiet)
    assert main(["eval", out, "--tasks", "3", "--shots", "5", "--baseline-iters", "2"]) == 0
    printed = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed: skipped the plot" in printed
    else:
        (plot,) = [name for name in os.listdir(out) if name.endswith(".png")]
        assert plot.startswith("eval-") and os.path.getsize(os.path.join(out, plot)) > 1000


def test_info_reports_versions_kernels_and_devices(capsys):
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    for key in ("python:", "numpy:", "tinygrad_meta:", "cpu kernels:", "cupy:", "cuda:", "devices: cpu"):
        assert key in printed


def test_progress_falls_back_to_plain_lines_without_tqdm(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes "from tqdm import tqdm" raise ImportError
    lines = []
    train({"hidden": [8], "iters": 3, "eval_every": 2, "eval_tasks": 0, "out": str(tmp_path / "run")},
          progress=True, log=lines.append)
    assert any(line.startswith("iteration 2: meta-loss") for line in lines)
    assert any(line.startswith("iteration 3/3  meta-loss") for line in lines)


def test_a_diverged_task_is_reported_not_hidden():
    curves = {0: np.array([1.0, 2.0, 3.0, 4.0]), 10: np.array([0.1, 0.3, 0.5, np.nan])}
    report = {"steps": [0, 10], "num_tasks": 4, "inner_lr": 0.01, "rows": [_row("maml", 5, curves, [0, 10])]}
    table = format_table(report)
    assert "2.500 ± 1.265" in table  # 1.96 * std([1, 2, 3, 4], ddof=1) / sqrt(4)
    assert "not finite*" in table
    # the footnote's mean and median are over the same tasks, the three that stayed finite:
    # mean 0.3, 1.96 * 0.2 / sqrt(3) = 0.226, median 0.3 (over all four, NaN as worst, it is 0.4)
    assert "1 of 4 tasks diverged" in table and "the other 3: mean 0.300 ± 0.226, median 0.300" in table
    assert report["rows"][0]["median"][10] == pytest.approx(0.4)


def test_a_run_pins_its_cpu_kernels_and_restores_the_mode_after(tmp_path):
    from tinygrad_meta.backends import cpu
    before = cpu.get_kernels()
    result = train({"hidden": [8], "iters": 2, "eval_every": 0, "eval_tasks": 0, "out": str(tmp_path / "r")},
                   progress=False, log=_quiet)
    assert load_checkpoint(result.out).config["cpu_kernels"] in ("cython", "numpy")
    assert cpu.get_kernels() == before


def test_the_task_metric_of_an_adapted_model_is_the_query_mse_for_sinusoids(tmp_path):
    result = train({"hidden": [16], "meta_batch": 4, "iters": 5, "eval_every": 0, "eval_tasks": 0,
                    "out": str(tmp_path / "run")}, progress=False, log=_quiet)
    batch = _eval_tasks()
    by_metric = adapted_metric(get_task("sinusoid"), result.algorithm, batch, steps=(0, 1, 5))
    by_mse = adapted_mse(result.algorithm, batch, steps=(0, 1, 5))
    for step in (0, 1, 5):
        # the same float32 predictions; the metric averages them in float64, adapt_curve in float32
        np.testing.assert_allclose(by_metric[step], by_mse[step], rtol=1e-6)


# ---- papercuts --------------------------------------------------------------------------

def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_eval_writes_a_file_of_its_own_and_leaves_the_training_table_alone(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--iters", "3", "--out", str(out), "--eval-tasks", "3", "--baseline-iters", "2",
                 *TINY]) == 0
    training_table = (out / "eval.json").read_bytes()
    for _ in range(2):
        assert main(["eval", str(out), "--tasks", "4", "--shots", "5", "--baseline-iters", "2", "--no-plot"]) == 0
    printed = capsys.readouterr().out
    own = sorted(name for name in os.listdir(out) if name.startswith("eval-") and name.endswith(".json"))
    assert len(own) == 2, own  # two evaluations, two files: neither replaced the other
    assert f"(table saved in {out / own[-1]})" in printed
    assert (out / "eval.json").read_bytes() == training_table
    chosen = tmp_path / "mine.json"
    assert main(["eval", str(out), "--tasks", "4", "--shots", "5", "--no-baseline", "--no-plot",
                 "--out", str(chosen)]) == 0
    assert chosen.exists() and (out / "eval.json").read_bytes() == training_table


def test_eval_help_prints_a_plain_percent_sign_and_names_its_output(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "95% CI" in text and "%%" not in text
    assert "eval-<date>-<time>.json" in text and "--out" in text


def test_ctrl_c_in_train_prints_one_line_saves_and_resumes_exactly(tmp_path):
    out = tmp_path / "run"
    flags = ["--iters", "1000000", "--checkpoint-every", "25", "--eval-tasks", "0", *TINY]
    process = subprocess.Popen(_cli(*flags, "--out", str(out)), cwd=REPO, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / CHECKPOINT_NAME).exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    reached = load_checkpoint(out).iteration  # Ctrl-C saved the iteration it stopped at
    assert stderr == (f"interrupted at iteration {reached} of 1000000 (checkpoint saved); "
                      f"continue with: python -m tinygrad_meta train --resume {out}\n")
    resumed = subprocess.run(_cli("--resume", str(out), "--iters", str(reached + 3), "--no-progress"),
                             cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    straight = train({"iters": reached + 3, "checkpoint_every": 25, "eval_tasks": 0, "hidden": [8],
                      "meta_batch": 3, "shots": 4, "eval_every": 0, "out": str(tmp_path / "straight")},
                     progress=False, log=_quiet)
    a, b = load_checkpoint(out).params, load_checkpoint(straight.out).params
    assert all(np.array_equal(a[name], b[name]) for name in b)


def test_an_empty_hidden_is_refused_and_a_linear_model_must_be_asked_for(capsys, tmp_path):
    for text in ("", " ", ","):
        err = _error(capsys, ["train", "--hidden", text, "--out", str(tmp_path / "run")])
        assert "--hidden names no layer width" in err and "--hidden none" in err
    assert not (tmp_path / "run").exists()
    assert make_config({"hidden": "none"})["hidden"] == []
    assert main(["train", "--hidden", "none", "--iters", "2", "--out", str(tmp_path / "linear"),
                 "--eval-tasks", "0", "--no-progress"]) == 0
    assert sorted(load_checkpoint(tmp_path / "linear").params) == ["layers.0.bias", "layers.0.weight"]


def test_eval_refuses_negative_baseline_iterations_before_writing_anything(capsys, tmp_path):
    out = tmp_path / "run"
    train({"hidden": [8], "iters": 2, "eval_every": 0, "eval_tasks": 0, "out": str(out)}, progress=False,
          log=_quiet)
    before = sorted(os.listdir(out))
    err = _error(capsys, ["eval", str(out), "--tasks", "3", "--baseline-iters", "-1"])
    assert "--baseline-iters must be a whole number >= 0, got -1" in err
    assert sorted(os.listdir(out)) == before


def test_resuming_below_the_checkpoint_is_an_error_and_at_it_does_nothing(capsys, tmp_path):
    out = str(tmp_path / "run")
    train({"hidden": [8], "iters": 6, "eval_every": 0, "eval_tasks": 0, "out": out}, progress=False, log=_quiet)
    before = open(os.path.join(out, CHECKPOINT_NAME), "rb").read()
    err = _error(capsys, ["train", "--resume", out, "--iters", "4"])
    assert "is at iteration 6, beyond --iters 4; pass --iters above 6" in err
    assert main(["train", "--resume", out, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"nothing to do: {out} is already at iteration 6 of 6" in printed and "of 4" not in printed
    assert open(os.path.join(out, CHECKPOINT_NAME), "rb").read() == before


def test_changing_cpu_kernels_on_resume_warns_naming_both(capsys, tmp_path):
    out = str(tmp_path / "run")
    train({"hidden": [8], "iters": 2, "eval_every": 0, "eval_tasks": 0, "out": out, "cpu_kernels": "numpy"},
          progress=False, log=_quiet)
    from tinygrad_meta.backends import cpu
    if not cpu.kernel_info()["compiled"]:
        pytest.skip("needs the compiled kernels to switch to")
    assert main(["train", "--resume", out, "--iters", "3", "--cpu-kernels", "cython", "--no-progress",
                 "--eval-tasks", "0"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {out} was trained with --cpu-kernels numpy, resuming with cython: the "
                        "result will not match an uninterrupted run bit for bit"]
    assert main(["train", "--resume", out, "--iters", "4", "--no-progress", "--eval-tasks", "0"]) == 0
    assert "warning:" not in capsys.readouterr().out  # the run now records cython; no change, no warning


def _metrics(path):
    import json
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_metrics_continue_exactly_after_a_resume(tmp_path):
    base = {"hidden": [8], "meta_batch": 3, "eval_every": 2, "eval_tasks": 0, "checkpoint_every": 1000}
    straight = train(dict(base, iters=8, out=str(tmp_path / "straight")), progress=False, log=_quiet)
    split = str(tmp_path / "split")
    train(dict(base, iters=5, out=split), progress=False, log=_quiet)
    train({"iters": 8}, resume=split, progress=False, log=_quiet)
    expected, resumed = _metrics(os.path.join(straight.out, "metrics.jsonl")), _metrics(os.path.join(split, "metrics.jsonl"))
    assert [e["iteration"] for e in resumed] == [2, 4, 6, 8]
    for a, b in zip(expected, resumed):
        assert (a["meta_loss"], a["val_mse"]) == (b["meta_loss"], b["val_mse"]), (a, b)
    seconds = [entry["seconds"] for entry in resumed]
    assert seconds == sorted(seconds) and seconds[2] >= seconds[1]  # the clock carries on past the resume


def test_the_eval_plot_titles_each_row_and_labels_its_axes(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    from tinygrad_meta.evaluate import plot_figure, train_pretrained_baseline
    result = train({"hidden": [8], "iters": 2, "eval_every": 0, "eval_tasks": 0, "out": str(tmp_path / "run")},
                   progress=False, log=_quiet)
    pretrained = train_pretrained_baseline(result.config, iters=2)
    figure = plot_figure(plt, result.algorithm, pretrained, _eval_tasks(4, 5), result.config)
    try:
        axes = figure.axes
        titles = [ax.get_title() for ax in axes]
        assert len(axes) == 4 and len(set(titles)) == 4, titles
        assert titles[0].startswith("MAML: task 1") and titles[3].startswith("pretrained: task 2")
        assert all(ax.get_xlabel() == "x" and ax.get_ylabel() == "y" for ax in axes)
    finally:
        plt.close(figure)
