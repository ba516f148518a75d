"""Command line: ``python -m tinygrad_meta <command> ...``.

Each command lives in ``tinygrad_meta/cli/<command>.py`` and provides
``register(subparsers)``, which adds its sub-parser and sets ``func`` to a function
``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .checkpoint import RunFileError

# the order commands are listed in --help
COMMANDS = ["train", "eval", "info", "hyperopt", "explain"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinygrad_meta",
        description="tinygrad_meta: autograd to any order, and meta-learning on it.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tinygrad_meta.cli.{name}_cmd")
        except ModuleNotFoundError as error:
            if error.name != f"tinygrad_meta.cli.{name}_cmd":
                raise
            continue
        module.register(subparsers)
    return parser


def os_error_message(error: OSError) -> str:
    """One line for an OSError: ``cannot write checkpoint runs/x/checkpoint.npz: Is a directory``."""
    if isinstance(error, RunFileError) or error.errno is None or not error.filename:
        return str(error)  # RunFileError and our own messages (``no checkpoint at ...``) say it all
    return f"cannot use {error.filename}: {error.strerror}"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OSError as error:
        # a full disk, a read-only folder, a directory where a file goes: one line, no traceback
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
