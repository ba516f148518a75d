"""One module per command of ``python -m tinygrad_meta``: ``<name>_cmd.py`` with ``register(subparsers)``."""
