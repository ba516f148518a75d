"""Choosing the CPU kernels: TGM_CPU_KERNELS, set_kernels, and what happens when the
compiled extension is absent (a clear "not built" warning, numpy runs, the kernel tests
skip). These tests need no build themselves."""
import os
import subprocess
import sys

import pytest

from tinygrad_meta.backends import cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS_BUILD = pytest.mark.skipif(not cpu.kernel_info()["built"],
                                 reason="compiled CPU kernels are not built")

# Makes the three compiled modules look absent, exactly as when their files do not exist
# (the import machinery raises ModuleNotFoundError naming the module).
HIDE_EXTENSION = (
    "import sys\n"
    "class _NoExtension:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name in ('tinygrad_meta._cpu_matmul', 'tinygrad_meta._cpu_relu', 'tinygrad_meta._cpu_conv'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "        return None\n"
    "sys.meta_path.insert(0, _NoExtension())\n")


def test_set_kernels_rejects_unknown_mode():
    with pytest.raises(ValueError, match="one of"):
        cpu.set_kernels("blas")


def _run_python(code, env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_missing_extension_says_not_built_warns_once_and_numpy_runs():
    code = HIDE_EXTENSION + (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import tinygrad_meta as tgm\n"
        "    from tinygrad_meta.backends import cpu\n"
        "    import tinygrad_meta.backends.cpu  # a second import must not warn again\n"
        "msgs = [str(w.message) for w in caught if 'CPU kernels unavailable' in str(w.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'not built' in msgs[0] and 'tinygrad_meta._cpu_matmul' in msgs[0], msgs[0]\n"
        "assert 'build_ext --inplace' in msgs[0] and 'circular' not in msgs[0], msgs[0]\n"
        "info = cpu.kernel_info()\n"
        "assert info['compiled'] is False and info['built'] is False, info\n"
        "assert '_cpu_matmul' in info['error'], info\n"
        "import numpy as np\n"
        "assert info['matmul'] == 'numpy' and cpu.BACKEND.matmul is np.matmul\n"
        "from tinygrad_meta.backends import im2col as reference\n"
        "assert info['im2col'] == info['col2im'] == 'numpy', info\n"
        "assert cpu.BACKEND.im2col is reference.im2col and cpu.BACKEND.col2im is reference.col2im\n"
        "x = tgm.Tensor([[1.0, -2.0]], requires_grad=True)\n"
        "(x @ tgm.Tensor([[3.0], [4.0]])).relu().sum().backward()\n"
        "try:\n"
        "    cpu.set_kernels('cython')\n"
        "except RuntimeError as e:\n"
        "    assert 'not built' in str(e)\n"
        "else:\n"
        "    raise AssertionError('cython mode accepted without kernels')\n"
        "print('OK')\n")
    result = _run_python(code, {"TGM_CPU_KERNELS": "auto"})
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr


def test_a_built_extension_that_fails_to_load_is_reported_as_broken_not_as_missing():
    code = (
        "import sys, warnings\n"
        "class _Broken:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tinygrad_meta._cpu_matmul':  # what a stale or mislinked .so raises\n"
        "            raise ImportError('_cpu_matmul.so: undefined symbol: gemm_f32')\n"
        "sys.meta_path.insert(0, _Broken())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from tinygrad_meta.backends import cpu\n"
        "info = cpu.kernel_info()\n"
        "assert info['compiled'] is False and info['built'] is True, info\n"
        "assert 'ImportError' in info['error'] and 'undefined symbol' in info['error'], info\n"
        "assert any('Rebuild' in str(w.message) for w in caught)\n"
        "print('OK')\n")
    result = _run_python(code, {"TGM_CPU_KERNELS": "auto"})
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr


def test_kernel_tests_skip_rather_than_fail_without_the_extension():
    code = HIDE_EXTENSION + (
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-rs', 'tests/test_kernels_cpu.py']))\n")
    result = _run_python(code, {"TGM_CPU_KERNELS": "auto"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "SKIPPED" in result.stdout and "FAILED" not in result.stdout and "ERROR" not in result.stdout
    assert "not built" in result.stdout   # the skip reason says why


def test_bad_environment_mode_is_a_clear_error():
    result = _run_python("import tinygrad_meta", {"TGM_CPU_KERNELS": "fast"})
    assert result.returncode != 0
    assert "TGM_CPU_KERNELS must be one of cython, numpy, auto; got 'fast'" in result.stderr


# The engine tests that exercise matmul and ReLU (forward, backward, higher order), run
# whole in a fresh process under each mode, so the env var path is the one tested.
ENGINE_SUBSET = ["tests/test_tensor_ops.py", "tests/test_nn.py", "tests/test_derivatives.py",
                 "tests/test_functional.py"]
ENGINE_FILTER = "matmul or relu or linear or mlp or MLP or hvp or hessian or jacobian or softmax"


@pytest.mark.parametrize("mode", [pytest.param("cython", marks=NEEDS_BUILD), "numpy"])
def test_engine_suite_subset_passes_under_each_mode(mode):
    files = [f for f in ENGINE_SUBSET if os.path.exists(os.path.join(REPO, f))]
    check = _run_python("from tinygrad_meta.backends import cpu; print(cpu.kernel_info()['mode'])",
                        {"TGM_CPU_KERNELS": mode})
    assert check.stdout.strip() == mode, check.stderr
    env = dict(os.environ, TGM_CPU_KERNELS=mode)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", "-k", ENGINE_FILTER]
        + files, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


@pytest.mark.parametrize("mode,expected", [pytest.param("cython", "cython", marks=NEEDS_BUILD),
                                           pytest.param("auto", "auto: cython", marks=NEEDS_BUILD),
                                           ("numpy", "numpy")])
def test_environment_mode_selects_the_conv_kernels(mode, expected):
    code = ("from tinygrad_meta.backends import cpu, im2col\n"
            "info = cpu.kernel_info()\n"
            "ours = cpu.BACKEND.im2col is not im2col.im2col and cpu.BACKEND.col2im is not im2col.col2im\n"
            "print(info['im2col'], '|', info['col2im'], '|', ours)\n")
    result = _run_python(code, {"TGM_CPU_KERNELS": mode})
    assert result.returncode == 0, result.stderr
    im2col_impl, col2im_impl, ours = (part.strip() for part in result.stdout.split("|"))
    assert im2col_impl.startswith(expected) and col2im_impl.startswith(expected)
    assert ours == str(mode != "numpy")
