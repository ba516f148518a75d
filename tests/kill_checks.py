"""Killing a training run with SIGKILL once its checkpoint reaches an iteration: the one
helper the kill -9 + --resume tests of tests/test_cli.py and tests/test_fewshot_cli.py share."""
import os
import signal
import time

from tinygrad_meta.checkpoint import CHECKPOINT_NAME, load_checkpoint


def kill_after_checkpoint(process, run_dir, iteration, timeout):
    """SIGKILL ``process`` as soon as ``run_dir``'s checkpoint is at ``iteration`` or later;
    returns the checkpoint's iteration at the kill. Fails if the run ended first."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            path = run_dir / CHECKPOINT_NAME
            if path.exists() and load_checkpoint(path).iteration >= iteration:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return load_checkpoint(run_dir).iteration
