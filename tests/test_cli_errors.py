"""The command line's failures: one ``error: ...`` line on stderr, exit code 2, no traceback.

File-system failures are real ones, made so that they also fail for root (who can
write to a chmod-ed folder): a regular file where a folder goes, a directory where a
file goes, /dev/full for "no space left", and RLIMIT_FSIZE for a write the kernel
refuses half-way.
"""
import os
import resource
import subprocess
import sys

import pytest

from tinygrad_meta.__main__ import main, os_error_message
from tinygrad_meta.checkpoint import CHECKPOINT_NAME, load_checkpoint

TINY = ["--hidden", "8", "--meta-batch", "3", "--shots", "4", "--no-progress", "--no-plot",
        "--eval-every", "0", "--eval-tasks", "0"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_error_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def train(capsys, out, *flags):
    assert main(["train", "--iters", "3", "--out", str(out), *TINY, *flags]) == 0
    capsys.readouterr()


def test_out_under_a_regular_file_names_the_folder(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "run"
    err = one_error_line(capsys, ["train", "--out", str(out), *TINY])
    assert err == f"error: cannot create run folder {out}: Not a directory"
    err = one_error_line(capsys, ["hyperopt", "--out", str(out), "--steps", "2", "--no-progress"])
    assert err == f"error: cannot create output folder {out}: Not a directory"


def test_a_regular_file_as_out_is_named(capsys, tmp_path):
    out = tmp_path / "run"
    out.write_text("a file")
    err = one_error_line(capsys, ["train", "--out", str(out), *TINY])
    assert err == f"error: cannot create run folder {out}: a file is in the way"
    assert one_error_line(capsys, ["eval", str(out)]) == f"error: run folder {out} is not a folder"
    assert one_error_line(capsys, ["train", "--resume", str(out)]) == \
        f"error: --resume: run folder {out} is not a folder"


def test_a_directory_where_the_checkpoint_goes_is_caught_before_training(capsys, tmp_path):
    out = tmp_path / "run"
    (out / CHECKPOINT_NAME).mkdir(parents=True)
    for flags in ([], ["--force"]):
        err = one_error_line(capsys, ["train", "--out", str(out), *TINY, *flags])
        assert err == f"error: cannot write checkpoint {out / CHECKPOINT_NAME}: a directory is in the way"
        assert sorted(os.listdir(out)) == [CHECKPOINT_NAME]  # nothing trained, nothing written
    (out / "checkpoint.npz").rmdir()
    (out / "metrics.jsonl").mkdir()
    err = one_error_line(capsys, ["train", "--out", str(out), *TINY])
    assert err == f"error: cannot write metrics {out / 'metrics.jsonl'}: Is a directory"
    assert not (out / CHECKPOINT_NAME).exists()


def test_a_read_only_folder_is_named_before_training(capsys, tmp_path):
    out = tmp_path / "run"
    train(capsys, out)
    before = (out / CHECKPOINT_NAME).read_bytes()
    out.chmod(0o555)
    try:
        try:
            (out / "probe").write_text("")
        except PermissionError:
            pass
        else:
            pytest.skip("this user (root?) can write into a read-only folder")
        err = one_error_line(capsys, ["train", "--resume", str(out), "--iters", "6"])
        assert err.startswith(f"error: cannot write checkpoint {out / CHECKPOINT_NAME}: Permission denied")
        assert one_error_line(capsys, ["eval", str(out), "--tasks", "3", "--no-baseline"]).startswith(
            f"error: cannot write evaluation table {out / 'eval-'}")
    finally:
        out.chmod(0o755)
    assert (out / CHECKPOINT_NAME).read_bytes() == before


def test_eval_names_a_directory_where_its_table_goes_before_evaluating(capsys, tmp_path):
    out = tmp_path / "run"
    train(capsys, out)
    (out / "eval.json").mkdir()
    err = one_error_line(capsys, ["eval", str(out), "--tasks", "3", "--shots", "5", "--baseline-iters", "2",
                                  "--out", str(out / "eval.json")])
    assert err == f"error: cannot write evaluation table {out / 'eval.json'}: a directory is in the way"
    assert sorted(os.listdir(out)) == [CHECKPOINT_NAME, "eval.json", "metrics.jsonl"]  # no baseline trained


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_during_training_is_one_line_and_the_checkpoint_survives(capsys, tmp_path):
    out = tmp_path / "run"
    train(capsys, out)
    before = (out / CHECKPOINT_NAME).read_bytes()
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    err = one_error_line(capsys, ["train", "--resume", str(out), "--iters", "6", "--eval-every", "2",
                                   "--no-progress"])
    assert err == f"error: cannot write metrics {out / 'metrics.jsonl'}: No space left on device"
    assert (out / CHECKPOINT_NAME).read_bytes() == before


def test_a_checkpoint_write_the_kernel_refuses_keeps_the_old_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    train(capsys, out, "--hidden", "64,64")  # a 60 KB checkpoint
    before = (out / CHECKPOINT_NAME).read_bytes()
    limit = len(before) // 4  # files may grow to 15 KB: the new checkpoint stops half-way, EFBIG

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "tinygrad_meta", "train", "--resume", str(out), "--iters", "6",
                             "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                            preexec_fn=limit_file_size)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: cannot write checkpoint {out / CHECKPOINT_NAME}: File too large\n"
    assert (out / CHECKPOINT_NAME).read_bytes() == before
    assert load_checkpoint(out).iteration == 3
    assert sorted(os.listdir(out)) == [CHECKPOINT_NAME, "metrics.jsonl"]  # no temporary file left


def test_an_unexpected_os_error_still_names_its_file():
    assert os_error_message(PermissionError(13, "Permission denied", "/x/y")) == "cannot use /x/y: Permission denied"
    assert os_error_message(FileNotFoundError("no checkpoint at /x")) == "no checkpoint at /x"


# ---- impossible sizes ----------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [
    (["--shots", "1e9"], "--shots 1000000000"),
    (["--hidden", "100000,100000"], "--hidden 100000,100000: 10,000,400,001 parameters"),
    (["--meta-batch", "1e7"], "--meta-batch 10000000"),
    (["--algo", "reptile", "--inner-steps", "1000000"], "inner_steps must be at most 10000, got 1000000"),
    (["--inner-steps", "1000000"], "inner_steps must be at most 10000, got 1000000"),
    (["--eval-tasks", "1e9"], "adapting 1,000,000,000 tasks at once (--eval-tasks"),
])
def test_impossible_sizes_are_refused_before_anything_is_written(capsys, tmp_path, flags, named):
    out = tmp_path / "run"
    err = one_error_line(capsys, ["train", "--out", str(out), "--no-progress", *flags])
    assert named in err
    assert "at most 10000" in err or "this machine has" in err  # the limit, named
    assert not out.exists()


def test_eval_refuses_more_tasks_than_fit_before_evaluating(capsys, tmp_path):
    out = tmp_path / "run"
    train(capsys, out)
    err = one_error_line(capsys, ["eval", str(out), "--tasks", "1e10"])
    assert "adapting 10,000,000,000 tasks at once (--tasks" in err and "this machine has" in err
    assert sorted(os.listdir(out)) == [CHECKPOINT_NAME, "metrics.jsonl"]


def test_a_checkpoint_beyond_the_readers_limit_is_refused_whatever_the_memory():
    from tinygrad_meta.run import check_sizes, make_config
    config = make_config({"hidden": [20_000, 20_000], "eval_tasks": 0})  # 400 M parameters, 4.8 GB stored
    with pytest.raises(ValueError, match="checkpoint would take about 4.5 GiB .* more than the 1.0 GiB a checkpoint may hold"):
        check_sizes(config, limit=2 ** 60)


def test_counts_read_1e6_style_numbers_and_refuse_fractions(capsys):
    from tinygrad_meta.cli.arguments import whole_number
    assert whole_number("1e6") == 1_000_000 and whole_number("30_000") == 30_000
    with pytest.raises(SystemExit):
        main(["train", "--shots", "1.5"])
    assert "--shots: expected a whole number such as 1000 or 1e6, got '1.5'" in capsys.readouterr().err


def test_help_states_the_limits(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--inner-steps is at most 10000" in text and "must fit this machine's memory" in text
    assert "a checkpoint (parameters and optimizer state) may take at most 1.0 GiB" in text


@pytest.mark.parametrize("algo, inner_steps", [("maml", 1), ("maml", 3), ("fomaml", 3), ("metasgd", 2), ("reptile", 5)])
def test_the_memory_estimate_bounds_a_measured_meta_iteration(algo, inner_steps):
    import tracemalloc

    from tinygrad_meta.run import build_algorithm, build_model, check_sizes, make_config, to_device
    from tinygrad_meta.tasks import get_task
    # measured eager (--no-compile): the larger of the two peaks, which the estimate must
    # bound; a compiled step frees each intermediate after its last use and peaks lower
    config = make_config({"algo": algo, "hidden": [64, 32], "meta_batch": 8, "shots": 20,
                          "inner_steps": inner_steps, "eval_tasks": 0, "compile": False})
    algorithm = build_algorithm(config, build_model(config))
    batch = to_device(get_task("sinusoid").meta_batch(0, 0, 8, 20), "cpu")
    algorithm.meta_step(batch)  # warm caches outside the measurement
    tracemalloc.start()
    try:
        algorithm.meta_step(batch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with pytest.raises(ValueError, match="one meta-iteration needs"):
        check_sizes(config, limit=peak)  # the estimate is above what one meta-iteration takes...
    check_sizes(config, limit=4 * peak)  # ...and within a factor of 4 of it


# ---- a readable checkpoint whose contents do not fit a run ------------------------------

@pytest.mark.parametrize("change, message", [
    ({"config": {"algo": "maml", "shots": "ten"}}, "holds an invalid config (train: shots must be an integer"),
    ({"extra": {"history": [1, 2]}}, "its history is not a list of entries with an iteration"),
    ({"optimizer_state": {"nonsense": 1}}, "optimizer state does not match the run (Adam.load_state_dict"),
], ids=["config", "history", "optimizer-state"])
def test_resuming_a_checkpoint_whose_contents_do_not_fit_names_it(capsys, tmp_path, change, message):
    from tinygrad_meta.checkpoint import save_checkpoint
    out = tmp_path / "run"
    train(capsys, out)
    saved = load_checkpoint(out)
    state = dict(params=saved.params, optimizer_state=saved.optimizer_state, rng_state=saved.rng_state,
                 iteration=saved.iteration, config=saved.config, extra=saved.extra)
    if "config" in change:
        change = {"config": dict(saved.config, **change["config"])}
    save_checkpoint(out / CHECKPOINT_NAME, **dict(state, **change))
    err = one_error_line(capsys, ["train", "--resume", str(out), "--iters", "5", "--no-progress"])
    assert str(out / CHECKPOINT_NAME) in err and message in err
