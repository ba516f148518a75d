"""The application layer's layout: run bookkeeping in run.py, no import cycles between
train.py and evaluate.py, and no imports hidden inside functions to dodge one."""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tinygrad_meta"
APPLICATION = ["train.py", "evaluate.py", "run.py", "tasks/__init__.py", "tasks/base.py", "tasks/sinusoid.py",
               "cli/train_cmd.py", "cli/eval_cmd.py", "cli/arguments.py", "cli/info_cmd.py",
               "cli/explain_cmd.py"]
# optional dependencies, imported where they are used so that a missing one costs only that feature
OPTIONAL = {"matplotlib", "tqdm", "cupy"}


def _function_level_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, alias.name) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


@pytest.mark.parametrize("name", APPLICATION)
def test_no_imports_inside_functions_except_optional_packages(name):
    hidden = [(line, module) for line, module in _function_level_imports(PACKAGE / name)
              if module.split(".")[0] not in OPTIONAL]
    assert hidden == [], f"{name} imports inside functions: {hidden}"


def test_evaluate_does_not_import_train():
    imported = {node.module for node in ast.walk(ast.parse((PACKAGE / "evaluate.py").read_text()))
                if isinstance(node, ast.ImportFrom)}
    assert "train" not in imported and "run" in imported


@pytest.mark.parametrize("module", ["tinygrad_meta.run", "tinygrad_meta.evaluate", "tinygrad_meta.train",
                                    "tinygrad_meta.tasks", "tinygrad_meta.cli.eval_cmd"])
def test_each_module_imports_first_in_a_fresh_process(module):
    # a cycle shows up as an ImportError ("partially initialized module") for some first import
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
