"""Argument types the commands share."""
from __future__ import annotations

import argparse
import math

# the exit status of a process stopped by Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130


def whole_number(text: str) -> int:
    """An integer flag that also reads ``1e6`` and ``30_000``, so that ``--iters 1e5`` works
    and ``--shots 1e9`` reaches the size checks, which name the limit.

    >>> whole_number("1e6"), whole_number("30_000"), whole_number("-2")
    (1000000, 30000, -2)
    """
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number such as 1000 or 1e6, got {text!r}")
    return int(value)
