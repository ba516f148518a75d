"""README snippets work when pasted alone: each python block runs in a fresh namespace, and
no shell line offers alternatives as ``a|b`` (a shell would run that as a pipeline)."""
import re

import pytest

from test_readme import README, python_blocks

BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_each_python_block_runs_on_its_own(line, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def _shell_lines(text):
    lines, inside = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside:
            lines.append((number, line.split("#", 1)[0]))
    return lines


def test_no_shell_line_lists_alternatives_with_a_pipe():
    alternatives = re.compile(r"--[\w-]+[ =][\w.-]+\|[\w.-]+")
    offending = [(number, line) for number, line in _shell_lines(README.read_text(encoding="utf-8"))
                 if alternatives.search(line)]
    assert offending == []
