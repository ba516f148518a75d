"""Every example runs to the end in fast mode (TGM_QUICK=1), so the examples never rot.

Each runs in its own process with a timeout, writing its plots (when matplotlib is
installed) into a temporary folder. The GPU example must exit cleanly without a GPU.
"""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "[0-9][0-9]_*.py")))
# generous against a loaded 2-core CI machine; each takes a few seconds in fast mode
TIMEOUT_S = 60


def _run(path, tmp_path, extra_env=None):
    env = dict(os.environ, TGM_QUICK="1", TGM_EXAMPLES_OUT=str(tmp_path), MPLBACKEND="Agg")
    env.update(extra_env or {})
    return subprocess.run([sys.executable, path], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def test_the_seven_examples_are_there():
    names = [os.path.basename(p) for p in EXAMPLES]
    assert names == ["01_scalar_higher_order.py", "02_hessian_vector_products.py",
                     "03_property_testing_your_op.py", "04_maml_sinusoid.py",
                     "05_metasgd_learned_lrs.py", "06_hypergradient_lr_schedule.py",
                     "07_gpu_demo.py", "08_supervised_classifier.py", "09_fewshot_omniglot.py"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_runs_in_fast_mode(path, tmp_path):
    result = _run(path, tmp_path)
    assert result.returncode == 0, f"{os.path.basename(path)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), "an example must print what it found"


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_has_a_header_saying_what_it_teaches(path):
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    assert source.startswith('"""') and "What it teaches" in source.split('"""')[1]
    assert "--quick" in source.split('"""')[1]


def _has_gpu():
    try:
        from tinygrad_meta.backends import get_backend
        get_backend("cuda")
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(_has_gpu(), reason="a GPU is present: the demo runs for real (covered above)")
def test_gpu_example_says_there_is_no_gpu_and_exits_zero(tmp_path):
    result = _run(os.path.join(ROOT, "examples", "07_gpu_demo.py"), tmp_path)
    assert result.returncode == 0
    assert "No GPU demo on this machine" in result.stdout
    assert "CuPy" in result.stdout


def test_examples_skip_the_plot_cleanly_without_matplotlib(tmp_path):
    # a matplotlib.py that fails to import shadows the real one, as if it were not installed
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('matplotlib hidden for this test')\n")
    path = os.path.join(ROOT, "examples", "01_scalar_higher_order.py")
    result = _run(path, tmp_path, {"PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "matplotlib is not installed" in result.stdout
    assert not list(tmp_path.glob("*.png"))


def test_an_example_plot_without_axis_labels_is_refused(tmp_path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    monkeypatch.setenv("TGM_EXAMPLES_OUT", str(tmp_path))
    from _common import save

    figure, (left, right) = plt.subplots(1, 2)
    for axis in (left, right):
        axis.set(xlabel="step", ylabel="loss", title="a panel")
    right.set_ylabel("")
    with pytest.raises(ValueError, match="panel 1 .* has no y-label"):
        save(figure, "unlabelled.png")
    right.set_ylabel("loss")
    save(figure, "labelled.png")
    plt.close(figure)
    assert (tmp_path / "labelled.png").exists() and not (tmp_path / "unlabelled.png").exists()
