"""tinygrad_meta.progress: the one progress display (tqdm, or plain lines without it)."""
import io
import sys

import pytest

from tinygrad_meta.progress import Progress


def run(total, **kwargs):
    lines = []
    with Progress(total, log=lines.append, **kwargs) as progress:
        for i in range(1, total + 1):
            progress.update(i, f"loss {i}")
    return lines, progress


def test_without_tqdm_it_prints_the_last_iteration_as_a_plain_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # "import tqdm" now raises ImportError
    lines, progress = run(4)
    assert not progress.uses_bar
    assert lines == ["iteration 4/4  loss 4"]


def test_plain_lines_are_throttled_by_print_every_s():
    lines, _ = run(5, bar=False, print_every_s=0.0, label="outer step")
    assert lines == [f"outer step {i}/5  loss {i}" for i in range(1, 6)]


def test_disabled_shows_nothing_but_write_still_logs():
    lines = []
    progress = Progress(3, enabled=False, log=lines.append)
    progress.update(3, "loss 1")
    progress.write("a note")
    assert lines == ["a note"] and not progress.uses_bar


def test_with_tqdm_the_bar_counts_from_initial_and_shows_the_status():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    lines = []
    progress = Progress(4, initial=2, desc="demo", file=stream, log=lines.append)
    assert progress.uses_bar
    progress.update(3, "loss 3")
    progress.write("between")
    progress.update(4, "loss 4")
    progress.close()
    text = stream.getvalue()
    assert "demo" in text and "4/4" in text and "loss 4" in text and "between" in text
    assert lines == []  # the bar replaces the plain lines
