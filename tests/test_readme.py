"""The docs never lie: README.md's python blocks run, in order, in one namespace, and
every docstring example in the package passes (doctest).

A README block preceded by a ``<!-- no-test -->`` line is skipped (for snippets that need
outside programs or variables from prose); one preceded by ``<!-- excerpt: PATH -->`` is
not run but must appear verbatim in PATH, so a quoted rule cannot drift from the code."""
import doctest
import importlib
import pathlib
import pkgutil
import re

import pytest

import tinygrad_meta

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP_MARK = "<!-- no-test -->"
EXCERPT_MARK = "<!-- excerpt: "


def test_readme_excerpts_appear_verbatim_in_their_source_files():
    lines = README.read_text().splitlines()
    excerpts = 0
    for i, line in enumerate(lines):
        if line.strip().startswith(EXCERPT_MARK):
            path = line.strip()[len(EXCERPT_MARK):].rstrip(" ->")
            end = lines.index("```", i + 2)
            code = "\n".join(lines[i + 2:end])
            assert code in (ROOT / path).read_text(), f"README line {i + 1}: excerpt not in {path}"
            excerpts += 1
    assert excerpts >= 1


def python_blocks(text):
    """(line number, code) for each ```python block not marked with SKIP_MARK."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            if previous != SKIP_MARK and not previous.startswith(EXCERPT_MARK):
                blocks.append((start + 1, "\n".join(lines[start:end])))
            i = end
        i += 1
    return blocks


def test_block_extraction_honours_the_skip_mark():
    text = "```python\na = 1\n```\n\n<!-- no-test -->\n```python\nb = 2\n```\n```bash\nc\n```\n"
    assert python_blocks(text) == [(2, "a = 1")]


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2, "README should show at least a first- and a second-order example"
    monkeypatch.chdir(tmp_path)   # blocks that write files write them here
    namespace = {"__name__": "__readme__"}
    for line, code in blocks:
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as error:
            pytest.fail(f"README.md block at line {line} raised {type(error).__name__}: {error}")


def test_readme_shows_first_and_second_order_examples():
    code = "\n".join(code for _, code in python_blocks(README.read_text(encoding="utf-8")))
    assert ".backward()" in code
    assert re.search(r"create_graph=True", code)


def test_readme_test_command_is_the_one_ci_runs():
    readme = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = 'pip install -e ".[test]" && python -m pytest'
    assert command in readme and command in ci


def _source_modules():
    # Python source modules only: compiled kernels' docstrings belong to their own tests
    names = []
    for info in pkgutil.walk_packages(tinygrad_meta.__path__, "tinygrad_meta."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", ["tinygrad_meta"] + _source_modules())
def test_docstring_examples_pass(name, tmp_path, monkeypatch):
    try:
        module = importlib.import_module(name)
    except ImportError as error:   # a module for an optional extra (cupy, matplotlib)
        pytest.skip(f"{name} needs an optional dependency: {error}")
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"
