"""Small helpers the examples share: fast mode, optional plots, printed tables.

Not part of the library; each example imports it from its own directory.
"""
import os
import sys


def quick_mode():
    """True with ``--quick`` on the command line or ``TGM_QUICK=1`` in the environment.

    Fast mode shrinks every loop so the test suite can run each example in seconds.
    """
    return "--quick" in sys.argv[1:] or os.environ.get("TGM_QUICK", "0") not in ("", "0")


def output_dir():
    """Where plots go: ``$TGM_EXAMPLES_OUT`` or ``./examples_out``."""
    path = os.environ.get("TGM_EXAMPLES_OUT", "examples_out")
    os.makedirs(path, exist_ok=True)
    return path


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None (with a message) when missing."""
    try:
        import matplotlib
    except ImportError:
        print("(matplotlib is not installed, so no plot; `pip install matplotlib` or the "
              "`plot` extra adds it)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def check_labelled(figure, name):
    """Raise ValueError naming the panel when a panel of ``figure`` lacks an x-label, a
    y-label or a title (colorbars are exempt): an example's plot must say what it shows."""
    for index, axis in enumerate(figure.get_axes()):
        if axis.get_label() == "<colorbar>":
            continue
        missing = [what for what, text in (("x-label", axis.get_xlabel()), ("y-label", axis.get_ylabel()),
                                           ("title", axis.get_title())) if not text.strip()]
        if missing:
            raise ValueError(f"{name}: panel {index} ({axis.get_title() or 'untitled'!r}) has no "
                             f"{', '.join(missing)}")


def save(figure, name):
    """Save ``figure`` as ``<output_dir>/<name>`` and say where; every panel must be labelled."""
    check_labelled(figure, name)
    path = os.path.join(output_dir(), name)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot saved to {path}")
    return path


def table(header, rows, floatfmt="{:.6g}"):
    """Print rows under a header, columns aligned."""
    cells = [[floatfmt.format(c) if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
