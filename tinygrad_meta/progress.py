"""One progress bar for every long loop: tqdm when it is installed, plain lines when not.

tqdm is optional (numpy is the only runtime dependency), so :class:`Progress` falls back
to printing ``"<label> <i>/<total>  <status>"`` through ``log`` every few seconds and at
the last iteration. Meta-training and the hyperparameter runner both use it.

>>> lines = []
>>> with Progress(total=3, desc="demo", label="step", bar=False, log=lines.append) as progress:
...     for i in range(1, 4):
...         progress.update(i, f"loss {1.0 / i:.3f}")
>>> lines
['step 3/3  loss 0.333']
"""
from __future__ import annotations

import importlib
import sys
import time

__all__ = ["Progress"]


def _tqdm_class():
    """tqdm's bar class, or None when tqdm is not importable.

    Looked up when a bar is made, not at import, so a missing (or, in a test, hidden)
    tqdm switches to plain lines without reloading anything."""
    try:
        return importlib.import_module("tqdm").tqdm
    except ImportError:
        return None


class Progress:
    """A progress display for ``total`` iterations, resumable from ``initial``.

    ``enabled=False`` shows nothing. ``bar``: use tqdm when importable (False: always
    plain lines). ``desc``: the bar's label; ``unit``: its unit; ``leave``: keep the
    finished bar on screen. ``status_every``: refresh the bar's status text only every
    that many iterations (setting it costs a redraw). Without a bar a line
    ``"<label> <i>/<total>  <status>"`` goes to ``log`` at most every ``print_every_s``
    seconds, and always at the last iteration. Example: see the module docstring.
    """

    def __init__(self, total, initial=0, enabled=True, desc="progress", unit="it", leave=True,
                 bar=True, status_every=1, print_every_s=5.0, label="iteration", log=print,
                 file=None):
        self.total = int(total)
        self.enabled = bool(enabled)
        self.status_every = max(int(status_every), 1)
        self.print_every_s = float(print_every_s)
        self.label = label
        self.log = log
        self.file = sys.stderr if file is None else file
        self._last_print = time.monotonic()
        self._bar = None
        tqdm = _tqdm_class() if self.enabled and bar else None
        if tqdm is not None:
            self._bar = tqdm(total=self.total, initial=int(initial), desc=desc, unit=unit,
                             leave=leave, dynamic_ncols=True, mininterval=0.5, file=self.file)

    @property
    def uses_bar(self):
        """True when a tqdm bar is showing (False: plain lines, or disabled)."""
        return self._bar is not None

    def update(self, iteration, status=""):
        """Iteration ``iteration`` (1-based, of ``total``) is done; ``status``: a short
        text such as ``"meta-loss 0.1234"``."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            if status and iteration % self.status_every == 0:
                self._bar.set_postfix_str(status, refresh=False)
            return
        now = time.monotonic()
        if now - self._last_print > self.print_every_s or iteration == self.total:
            self._last_print = now
            self.log(f"{self.label} {iteration}/{self.total}  {status}".rstrip())

    def write(self, text):
        """Print a line without breaking the bar (through ``log`` without one)."""
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        else:
            self.log(text)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False
