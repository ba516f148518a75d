"""The few-shot command line: train / eval on Omniglot and glyphs, exact kill -9 resume, clear errors.

Runs on the real minimal Omniglot sets in ``../shared/data/omniglot`` (or
``$TGM_OMNIGLOT_DIR``) when present, else on the generated fixture in the same layout
(``TGM_OMNIGLOT_FIXTURE=1`` forces the fixture). The small fully connected net
(``--model mlp``) keeps every run to a second or two; the conv net has its own tests.
"""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from omniglot_fixture import write_omniglot_fixture  # noqa: E402

from tinygrad_meta.__main__ import main  # noqa: E402
from tinygrad_meta.checkpoint import load_checkpoint  # noqa: E402
from tinygrad_meta.train import train  # noqa: E402
from kill_checks import kill_after_checkpoint  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DIR = Path(os.environ.get("TGM_OMNIGLOT_DIR")
                or Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot")
USE_REAL = (REAL_DIR / "images_background_small1.zip").exists() and not os.environ.get("TGM_OMNIGLOT_FIXTURE")
SMALL = ["--model", "mlp", "--no-progress", "--no-plot", "--eval-every", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return REAL_DIR if USE_REAL else write_omniglot_fixture(tmp_path_factory.mktemp("omniglot"))


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    # decoded sets go to a folder of the test session's, never the user's cache
    monkeypatch.setenv("TGM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _quiet(*args):
    pass


@pytest.mark.parametrize("algo", ["protonet", "fomaml"])
def test_train_on_omniglot_prints_the_accuracy_table_and_eval_repeats_it(algo, data_dir, tmp_path, capsys):
    out = tmp_path / algo
    code = main(["train", "--task", "omniglot", "--data-dir", str(data_dir), "--algo", algo, "--iters", "4",
                 "--meta-batch", "2", "--eval-tasks", "20", "--out", str(out), *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert load_checkpoint(out).config["ways"] == 5
    assert "mean ± 95% CI over 20 episodes" in captured.out
    assert f"\n   5     1  {algo:<9}" in captured.out and f"\n   5     5  {algo:<9}" in captured.out
    code = main(["eval", str(out), "--tasks", "20"])
    again = capsys.readouterr()
    assert code == 0, again.err
    table = lambda text: [line for line in text.splitlines() if line.startswith("   5 ")]  # noqa: E731
    assert table(again.out) == table(captured.out)  # the same checkpoint, the same episodes


def test_glyphs_train_offline_with_no_data(tmp_path, capsys):
    code = main(["train", "--task", "glyphs", "--algo", "protonet", "--iters", "3", "--eval-tasks", "10",
                 "--out", str(tmp_path / "g"), *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "glyphs: query accuracy" in captured.out and "\n  20     5  protonet" in captured.out


def test_omniglot_without_a_data_dir_is_refused(capsys, tmp_path):
    assert main(["train", "--task", "omniglot", "--out", str(tmp_path / "x"), *SMALL]) == 2
    assert "--task omniglot needs --data-dir DIR" in capsys.readouterr().err


def test_a_zip_that_is_not_omniglot_is_named(capsys, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("images_background_small1", "images_background_small2"):
        with zipfile.ZipFile(folder / f"{name}.zip", "w") as archive:
            archive.writestr("notes/readme.txt", "not Omniglot")
    assert main(["train", "--task", "omniglot", "--data-dir", str(folder), "--out", str(tmp_path / "x"),
                 *SMALL]) == 2
    err = capsys.readouterr().err
    assert "images_background_small1.zip is not an Omniglot zip" in err


def test_too_many_ways_or_shots_for_the_split_are_named(data_dir, capsys, tmp_path):
    assert main(["train", "--task", "omniglot", "--data-dir", str(data_dir), "--ways", "500", "--meta-batch", "1",
                 "--out", str(tmp_path / "w"), *SMALL]) == 2
    assert "500-way episodes need 500 classes, but split 'train' has" in capsys.readouterr().err
    assert main(["train", "--task", "omniglot", "--data-dir", str(data_dir), "--shots", "18",
                 "--out", str(tmp_path / "s"), *SMALL]) == 2
    assert "18 shots + 5 queries need 23 drawings per class" in capsys.readouterr().err


def test_few_shot_flags_are_refused_for_sinusoids(capsys, tmp_path):
    assert main(["train", "--ways", "5", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "--ways is for the few-shot classification tasks" in capsys.readouterr().err
    assert main(["train", "--algo", "protonet", "--out", str(tmp_path / "y"), "--no-progress"]) == 2
    assert "--algo protonet classifies images" in capsys.readouterr().err


def test_protonet_halves_its_learning_rate_on_schedule(data_dir, tmp_path):
    result = train({"task": "omniglot", "data_dir": str(data_dir), "algo": "protonet", "model": "mlp",
                    "iters": 5, "lr_halve_every": 2, "eval_every": 0, "eval_tasks": 0,
                    "out": str(tmp_path / "p")}, progress=False, log=_quiet)
    saved = load_checkpoint(result.out).optimizer_state
    lr = float(np.asarray(saved["hyper.lr"]))
    assert lr == pytest.approx(1e-3 / 4)  # iteration 5 is in the third block of 2


def _cli(*args):
    return [sys.executable, "-m", "tinygrad_meta", "train", *args]


def test_kill_9_and_resume_ends_bitwise_equal_to_an_uninterrupted_run(data_dir, tmp_path):
    iters = 2000   # long enough that the run is still going when its first checkpoints appear
    settings = {"task": "omniglot", "data_dir": str(data_dir), "algo": "fomaml", "model": "mlp",
                "meta_batch": 2, "iters": iters, "checkpoint_every": 10, "eval_every": 0, "eval_tasks": 0}
    flags = ["--task", "omniglot", "--data-dir", str(data_dir), "--algo", "fomaml", "--meta-batch", "2",
             "--iters", str(iters), "--checkpoint-every", "10", "--eval-tasks", "0", *SMALL]
    interrupted = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(_cli(*flags, "--out", str(interrupted)), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    at_kill = kill_after_checkpoint(process, interrupted, 20, timeout=120)
    assert 20 <= at_kill < iters
    # the uninterrupted reference, in this process, for as long as the resumed run will go
    stop = at_kill + 30
    reference = train(dict(settings, iters=stop, out=str(tmp_path / "ref")), progress=False, log=_quiet)
    resumed = subprocess.run(_cli("--resume", str(interrupted), "--iters", str(stop), "--no-progress",
                                  "--no-plot"), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {interrupted} at iteration {at_kill}" in resumed.stdout
    final, expected = load_checkpoint(interrupted), load_checkpoint(reference.out)
    assert final.iteration == expected.iteration == stop
    for name, value in expected.params.items():
        assert np.array_equal(final.params[name], value), f"parameter {name} differs after resume"
    for key, value in expected.optimizer_state.items():
        assert np.array_equal(final.optimizer_state[key], value), f"optimizer state {key} differs"


@pytest.mark.parametrize("algo", ["protonet", "maml"])
def test_the_default_conv_net_trains_and_evaluates(algo, data_dir, tmp_path, capsys):
    # one iteration on the 4-block conv net (second order for maml), tiny episodes: it runs, end to end
    out = tmp_path / algo
    code = main(["train", "--task", "omniglot", "--data-dir", str(data_dir), "--algo", algo, "--iters", "1",
                 "--meta-batch", "1", "--queries", "1", "--eval-tasks", "2", "--test-steps", "1",
                 "--out", str(out), "--no-progress", "--eval-every", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = load_checkpoint(out)
    assert saved.config["model"] == "conv" and "blocks.3.0.weight" in saved.params
    if algo == "protonet":   # its batch norm's running statistics are checkpointed with it
        assert "blocks.0.1.running_mean" in saved.params
    assert f"\n   5     1  {algo:<9}" in captured.out


def test_resume_takes_few_shot_flags_and_refuses_a_changed_way_count(data_dir, tmp_path, capsys):
    out = str(tmp_path / "r")
    flags = ["--task", "omniglot", "--data-dir", str(data_dir), "--algo", "protonet", "--eval-tasks", "0", *SMALL]
    assert main(["train", *flags, "--iters", "2", "--out", out]) == 0
    assert main(["train", "--resume", out, "--iters", "3", "--ways", "5", "--eval-queries", "3",
                 "--no-progress"]) == 0
    assert load_checkpoint(out).iteration == 3
    capsys.readouterr()
    assert main(["train", "--resume", out, "--iters", "4", "--ways", "20", "--no-progress"]) == 2
    assert "ways: checkpoint has 5, requested 20" in capsys.readouterr().err


@pytest.mark.parametrize("algo", ["protonet", "maml"])
def test_compiled_conv_run_equals_the_eager_one(algo, data_dir, tmp_path, capsys):
    # few-shot runs compile their meta-step by default (conv, batch norm, cross-entropy and
    # its label scatter replay); the parameters and batch-norm statistics after two
    # iterations must equal --no-compile's bit for bit
    results = []
    for extra in ([], ["--no-compile"]):
        out = tmp_path / f"{algo}{len(extra)}"
        code = main(["train", "--task", "omniglot", "--data-dir", str(data_dir), "--algo", algo,
                     "--iters", "2", "--meta-batch", "2", "--queries", "1", "--eval-tasks", "0",
                     "--out", str(out), "--no-progress", "--eval-every", "0", *extra])
        assert code == 0, capsys.readouterr().err
        results.append(load_checkpoint(out))
    compiled, eager = results
    assert compiled.config["compile"] is True and eager.config["compile"] is False
    assert compiled.params.keys() == eager.params.keys()
    for name, value in eager.params.items():
        assert np.array_equal(compiled.params[name], value), f"{name} differs compiled vs eager"


def test_fewshot_reptile_trains_its_inner_loop_on_support_and_query_minibatches():
    # on one full batch of the support set every step Reptile did not learn to classify
    # (meta/reptile.py); the few-shot runs give it support+query, one mini-batch per step
    from tinygrad_meta.run import build_algorithm, build_model, make_config
    config = make_config({"algo": "reptile", "task": "glyphs", "shots": 1, "queries": 1})
    reptile = build_algorithm(config, build_model(config))
    assert (reptile.inner_data, reptile.inner_batches) == ("support+query", config["inner_steps"])
    assert config["lr_halve_every"] == 250  # the outer step size is annealed
    regression = build_algorithm(make_config({"algo": "reptile"}), build_model(make_config({"algo": "reptile"})))
    assert (regression.inner_data, regression.inner_batches) == ("support", 1)
