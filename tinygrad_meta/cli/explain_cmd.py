"""``python -m tinygrad_meta explain "tanh(x*x) at x=0.7"``: derivatives to 4th order, checked.

For a scalar expression in one variable, prints the value and its derivatives computed
by the ``Value`` engine (``grad`` with ``create_graph=True``, applied again and again)
next to central finite differences and their difference, counts the op nodes recorded
at each order (all of them by rule depth, and those each ``grad`` call added), warns
when the point sits on a kink (a relu whose input is 0) or so close to one that the
finite-difference stencil straddles it, and writes a picture of each order's graph
(DOT always, SVG when the Graphviz ``dot`` program is installed) into ``--out``.
"""
from __future__ import annotations

import math
import os
import shutil
import sys

from ..autograd import grad
from ..expr import FUNCTIONS, parse_expression, parse_query
from ..scalar import Value
from .. import viz

__all__ = ["register", "run", "derivatives", "central_difference", "explain", "kinks"]

MAX_ORDER = 6


def register(subparsers):
    parser = subparsers.add_parser(
        "explain",
        help="derivatives of a scalar expression to 4th order, vs finite differences, with graph pictures",
        description=(
            "Differentiate a scalar expression of one variable again and again with the Value "
            "engine (grad with create_graph=True), compare each derivative with central finite "
            "differences, count the graph nodes each order records, and write a picture of each "
            "order's graph. Allowed: numbers, the variable, + - * / **, unary minus and "
            f"{', '.join(FUNCTIONS)}."),
        epilog='example: python -m tinygrad_meta explain "tanh(x*x) at x=0.7" --out explain_out')
    parser.add_argument("query", help='"EXPR at x=VALUE", or just EXPR together with --at VALUE')
    parser.add_argument("--at", type=float, default=None, help="the point (when the query has no 'at x=...')")
    parser.add_argument("--order", type=int, default=4, help=f"highest derivative, 1..{MAX_ORDER} (default 4)")
    parser.add_argument("--out", default="explain_out", help="directory for the pictures (default explain_out)")
    parser.add_argument("--no-pictures", action="store_true", help="do not write any pictures")
    parser.add_argument("--max-nodes", type=int, default=400, help="largest picture, in boxes (default 400)")
    parser.add_argument("--collapse", choices=["auto", "none", "shape", "op"], default="auto",
                        help="merge repeated nodes in the pictures (default auto: none up to "
                             "order 2, shape from order 3 on, where the full graphs get too big to read)")
    parser.set_defaults(func=run)


def _step(x, order):
    """The finite-difference step of ``central_difference`` for this order."""
    return sys.float_info.epsilon ** (1.0 / (order + 4)) * max(1.0, abs(x))


def central_difference(f, x, order):
    """The ``order``-th derivative of the float function ``f`` at ``x`` by central differences.

    The textbook stencil ``sum_k (-1)^k C(n,k) f(x + (n/2 - k) h) / h^n`` has error
    O(h^2); one Richardson step, ``(4 D(h/2) - D(h)) / 3``, cancels that term, leaving
    O(h^4). Rounding contributes about eps·|f| / h^n, so h ≈ eps^(1/(n+4)) balances the
    two (scaled by |x| for large x): relative accuracy near eps^(4/(n+4)), about 1e-8
    for the 4th derivative.

    >>> import math
    >>> round(central_difference(math.exp, 0.0, 2), 8)
    1.0
    """
    if order < 1:
        return f(x)
    h = _step(x, order)

    def stencil(step):
        total = 0.0
        for k in range(order + 1):
            total += (-1) ** k * math.comb(order, k) * f(x + (order / 2 - k) * step)
        return total / step ** order

    return (4.0 * stencil(h / 2) - stencil(h)) / 3.0


def derivatives(expression, point, max_order):
    """``(x, [f, f', ..., f^(max_order)])`` as Values, each differentiable again.

    A derivative that no longer depends on x (the graph ends: e.g. the 3rd derivative of
    x*x) is a constant 0 Value from then on.
    """
    x = Value(point)
    values = [expression(x)]
    for _ in range(max_order):
        previous = values[-1]
        if not previous.requires_grad:
            values.append(Value(0.0, requires_grad=False))
            continue
        (d,) = grad(previous, [x], create_graph=True, allow_unused=True)
        values.append(Value(0.0, requires_grad=False) if d is None else d)
    return x, values


def explain(expression, point, max_order=4):
    """The rows of the explain table: one dict per order 0..max_order.

    Each row has ``order``, ``engine`` (our derivative), ``finite_difference``,
    ``difference`` (absolute), ``ops`` (op nodes in the graph behind that derivative),
    ``ops_by_order`` ({rule depth: count} in that graph), ``new_ops`` (op nodes first
    recorded by that derivative's ``grad`` call) and ``new_ops_by_depth`` (those split
    by rule depth), plus the Values under ``"value"`` and the leaf under ``"x"``.

    >>> rows = explain(parse_expression("x**3"), 2.0, max_order=3)
    >>> [row["engine"] for row in rows]
    [8.0, 12.0, 12.0, 6.0]
    """
    if not 1 <= max_order <= MAX_ORDER:
        raise ValueError(f"explain: order must be between 1 and {MAX_ORDER}, got {max_order}")
    x, values = derivatives(expression, point, max_order)
    passes = viz.ops_per_pass(values)
    rows = []
    for order, (value, added) in enumerate(zip(values, passes)):
        stats = viz.graph_stats(value)
        fd = central_difference(expression, point, order)
        rows.append({
            "order": order, "engine": value.data, "finite_difference": fd,
            "difference": abs(value.data - fd), "ops": stats["ops"],
            "ops_by_order": stats["ops_by_depth"], "new_ops": added["ops"],
            "new_ops_by_depth": added["by_depth"], "value": value, "x": x,
        })
    return rows


# ops whose derivative jumps where their input is 0 (the only such op the expressions
# can use is relu; the Tensor ops abs, clip, maximum and minimum would need their own test)
_KINKED_OPS = ("relu",)


def _kink_inputs(expression, point):
    """The inputs of every kinked op when the expression is evaluated at ``point``."""
    nodes, _, _ = viz._collect([expression(Value(point))])
    return [(viz.op_name(node), node._parents[0].data) for node in nodes
            if viz.op_name(node) in _KINKED_OPS]


def kinks(expression, point, max_order):
    """Warnings (strings) when ``point`` is on a kink or the stencil straddles one.

    On a kink the derivative does not exist: the engine returns the rule's one-sided
    convention (relu'(0) = 0) while the central differences average both sides. Near
    one, the stencil of some order reaches across it and its finite difference is no
    estimate of the derivative. Empty when neither happens.

    >>> kinks(parse_expression("relu(x - 1)"), 1.0, 2)[0].startswith("x = 1.0 sits on a kink")
    True
    >>> kinks(parse_expression("relu(x)"), 0.5, 4)
    []
    """
    name = expression.variable
    at_point = _kink_inputs(expression, point)
    warnings = [f"{name} = {point!r} sits on a kink of {op} (its input is exactly 0): the derivative "
                f"does not exist there; the engine returns the rule's convention ({op}'(0) = 0) and "
                "the central differences average the two sides, so the two columns disagree"
                for op, value in at_point if value == 0.0]
    if warnings:
        return warnings
    # the widest stencil, that of the highest order, reaches (order/2)·h either side
    reach = max_order / 2 * _step(point, max_order)
    for side in (point - reach, point + reach):
        for (op, here), (_, there) in zip(at_point, _kink_inputs(expression, side)):
            if (here > 0) != (there > 0):
                return [f"a kink of {op} lies within {reach:.2g} of {name} = {point!r}, inside the "
                        "finite-difference stencil: the finite differences of the orders whose "
                        "stencil reaches it straddle the kink and are not estimates of the derivative"]
    return []


def _format_table(rows):
    header = ["order", "engine (Value)", "finite difference", "|difference|",
              "ops in graph", "by rule depth", "new ops", "new ops by rule depth"]
    lines = []
    for row in rows:
        by_order = " ".join(f"{k}:{n}" for k, n in row["ops_by_order"].items()) or "-"
        new_by_depth = " ".join(f"{k}:{n}" for k, n in row["new_ops_by_depth"].items()) or "-"
        lines.append([str(row["order"]), f"{row['engine']:.12g}", f"{row['finite_difference']:.12g}",
                      f"{row['difference']:.2e}", str(row["ops"]), by_order, str(row["new_ops"]),
                      new_by_depth])
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)
    return "\n".join(out)


def run(args) -> int:
    try:
        if " at " in f" {args.query} ":
            if args.at is not None:
                raise ValueError("explain: give the point once, either 'at x=...' or --at")
            expression, point = parse_query(args.query)
        else:
            if args.at is None:
                raise ValueError("explain: say where, e.g. 'tanh(x*x) at x=0.7' or --at 0.7")
            expression, point = parse_expression(args.query), args.at
        rows = explain(expression, point, args.order)
        warnings = kinks(expression, point, args.order)
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    name = expression.variable
    print(f"f({name}) = {expression.source}   at {name} = {point!r}")
    print(f"derivatives by grad(..., create_graph=True) applied {args.order} times, "
          "vs central finite differences (one Richardson step)\n")
    print(_format_table(rows))
    print("\nops in graph: op nodes behind that derivative; by rule depth: 0 = recorded by the "
          "forward pass,\nk = recorded while the backward rule of a depth k-1 node ran (the colour "
          "of the pictures);\nnew ops: what that derivative's grad call recorded, split by rule "
          "depth (a grad call runs the\nrules of nodes of every depth, so it records nodes of "
          "several depths).")
    for warning in warnings:
        print(f"\nwarning: {warning}")

    if args.no_pictures:
        return 0
    os.makedirs(args.out, exist_ok=True)
    collapse_of = {"none": False, "shape": True, "op": "op"}
    have_dot = shutil.which("dot") is not None
    written = []
    for row in rows:
        order = row["order"]
        label = "f" if order == 0 else f"d^{order}f/d{name}^{order}"
        path = os.path.join(args.out, f"order_{order}" + (".svg" if have_dot else ".dot"))
        value = row["value"]
        collapse = (order >= 3) if args.collapse == "auto" else collapse_of[args.collapse]
        try:
            stages = [("forward" if k == 0 else f"grad call {k}", rows[k]["value"])
                      for k in range(order + 1) if rows[k]["value"].requires_grad]
            written += viz.draw(value, path, names={name: row["x"]}, max_nodes=args.max_nodes,
                                collapse=collapse, compact=True, stages=stages or None,
                                title=f"{label} of {expression.source} at {name}={point!r}")
        except RuntimeError as error:  # dot could not lay it out; the .dot is still there
            written.append(os.path.splitext(path)[0] + ".dot")
            print(f"warning: {error}", file=sys.stderr)
    print(f"\nwrote {len(written)} files to {args.out}/: " + ", ".join(os.path.basename(p) for p in written))
    if not have_dot:
        print("note: only .dot files were written; install the Debian/Ubuntu package graphviz "
              "(apt-get install graphviz) for SVG pictures, or render with `dot -Tsvg FILE.dot -o FILE.svg`")
    return 0
