"""Pictures of the graphs: the forward graph, the graph a backward pass recorded, and more.

``to_dot(outputs)`` returns Graphviz DOT text for the graph behind one or more
``Tensor``s or ``Value``s; ``draw(outputs, "graph.svg")`` writes it to disk and renders
it with the ``dot`` program when that is installed.

What the picture shows (every picture carries a legend saying the same):

* every node of the graph as a box: a ``Value``'s data and grad, a ``Tensor``'s shape
  and dtype (and its numbers when it is tiny); leaves that require grad have a double
  border, constants a dashed one, the outputs a bold one;
* every recorded op as an ellipse feeding the box it produced (``compact=True`` writes
  the op's name inside the box instead, which halves the picture);
* the fill colour is the **rule depth** of a node (``rule_depth``): 0 for a node an
  ordinary forward pass recorded; for a node recorded while the backward rule of node N
  ran with ``create_graph=True``, one more than N's depth. Nodes of depth >= 1 sit in a
  dashed cluster "backward of <op of N>".

The depth is *not* the number of the ``grad`` call that recorded a node: the second
``grad`` of tanh(x*x) runs the rules of the forward nodes again (recording depth-1
nodes, drawn like the first pass's) as well as the rules of the depth-1 nodes
(recording depth-2 nodes). ``stages=[(title, outputs), ...]`` frames what each pass
added, and ``ops_per_pass`` counts it.

>>> from tinygrad_meta import Value, grad
>>> from tinygrad_meta.viz import to_dot
>>> x = Value(0.7)
>>> (dy,) = grad((x * x).tanh(), [x], create_graph=True)
>>> text = to_dot(dy, names={"x": x})
>>> text.startswith("digraph") and "backward of tanh" in text
True
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess

__all__ = ["to_dot", "draw", "graph_stats", "ops_per_pass", "rule_depth", "node_order", "op_name",
           "GraphvizNotFoundError"]

# fill colour per order (0 = forward); cluster outlines use the darker partner
_FILL = ["#dbe9f6", "#fde0c5", "#d4efd4", "#e6d7f2", "#f6d5dc"]
_EDGE = ["#4a78a8", "#d9822b", "#3c9a3c", "#8a5cb8", "#c0506a"]
_ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}


class GraphvizNotFoundError(RuntimeError):
    """The ``dot`` program is needed to render SVG/PNG but is not installed."""


# ---- facts about one node ----------------------------------------------------------

def op_name(node):
    """The name of the op that produced ``node`` ("mul", "tanh", "*", ...), None for a leaf.

    The name is the op table's (ops.py; Value's ops in scalar.py are named by symbol).
    """
    op = getattr(node, "_op", None)
    return None if op is None else op.name


def rule_depth(node):
    """0 for a node recorded by a forward pass; 1 + the depth of ``node._origin`` otherwise.

    ``_origin`` is the node whose backward rule was running (with ``create_graph=True``)
    when ``node`` was recorded. The depth says how many rules were nested when the node
    was made, not which ``grad`` call made it (see the module docstring).
    """
    depth = 0
    origin = getattr(node, "_origin", None)
    while origin is not None:
        depth += 1
        origin = getattr(origin, "_origin", None)
    return depth


# the name older code and the explain table use
node_order = rule_depth


def _is_node(obj):
    return hasattr(obj, "_parents") and hasattr(obj, "requires_grad")


def _as_outputs(outputs, caller):
    items = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    if not items:
        raise ValueError(f"{caller}: outputs is empty; pass a Tensor, a Value or a list of them")
    for index, item in enumerate(items):
        if not _is_node(item):
            raise TypeError(f"{caller}: output {index} is a {type(item).__name__}, not a Tensor or Value")
    return items


# ---- the graph as plain data -------------------------------------------------------

def _collect(outputs):
    """Every node reachable from ``outputs``, breadth first: nearest the outputs first.

    Returns (nodes, index, first_child): the discovery order is what makes node ids
    stable from run to run (``id()`` would not be).
    """
    nodes, index, first_child = [], {}, {}
    queue = collections.deque()
    for node in outputs:
        if id(node) not in index:
            index[id(node)] = len(nodes)
            nodes.append(node)
            queue.append(node)
    while queue:
        node = queue.popleft()
        for parent in node._parents:
            if id(parent) not in index:
                index[id(parent)] = len(nodes)
                first_child[id(parent)] = node
                nodes.append(parent)
                queue.append(parent)
    return nodes, index, first_child


def _kind(node):
    if getattr(node, "_op", None) is not None:
        return "op"
    return "leaf" if node.requires_grad else "const"


def _placement(nodes, first_child):
    """(order, origin) per node. A constant has no origin of its own (it records
    nothing), so it is drawn with the first node that uses it: the ``1.0`` inside the
    rule ``g * (1 - out*out)`` belongs to the backward cluster, not to the forward graph.
    """
    placement = {}
    for node in nodes:
        # a constant has no parents, so its first user is never a constant
        owner = first_child.get(id(node), node) if _kind(node) == "const" else node
        origin = getattr(owner, "_origin", None)
        placement[id(node)] = (node_order(owner), origin)
    return placement


def _array_bytes(node, seen_buffers):
    data = getattr(node, "data", None)
    if not hasattr(data, "nbytes"):
        return 8 if isinstance(data, float) else 0
    base = data
    while getattr(base, "base", None) is not None:
        base = base.base
    if id(base) in seen_buffers:
        return 0
    seen_buffers.add(id(base))
    return int(getattr(base, "nbytes", data.nbytes))


def graph_stats(outputs):
    """Counts and sizes of the graph behind ``outputs``.

    Returns a dict: ``nodes`` (all reachable), ``ops`` (recorded op nodes), ``leaves``
    (leaves requiring grad), ``constants``, ``ops_by_depth`` ({rule depth: count of op
    nodes}; ``ops_by_order`` is the same dict under its older name), and ``data_bytes``
    (bytes of the distinct buffers the nodes hold: 8 per ``Value``, the owning array's
    ``nbytes`` per Tensor buffer).

    >>> from tinygrad_meta import Value
    >>> x = Value(2.0)
    >>> graph_stats(x * x + 1.0)["ops"]
    2
    """
    outputs = _as_outputs(outputs, "graph_stats")
    nodes, _, _ = _collect(outputs)
    kinds = collections.Counter(_kind(node) for node in nodes)
    by_depth = dict(sorted(collections.Counter(
        rule_depth(node) for node in nodes if _kind(node) == "op").items()))
    seen_buffers = set()
    return {
        "nodes": len(nodes),
        "ops": kinds["op"],
        "leaves": kinds["leaf"],
        "constants": kinds["const"],
        "ops_by_depth": by_depth,
        "ops_by_order": by_depth,
        "data_bytes": sum(_array_bytes(node, seen_buffers) for node in nodes),
    }


def ops_per_pass(passes):
    """What each pass added: for successive outputs (a forward result, then each ``grad``
    of it), the op nodes first reachable from that pass's output, split by rule depth.

    ``passes``: a list; each entry a Tensor/Value or a list of them. Returns one dict per
    pass: ``ops`` (new op nodes) and ``by_depth`` ({rule depth: count}).

    >>> from tinygrad_meta import Value, grad
    >>> x = Value(0.7)
    >>> y = (x * x).tanh()
    >>> (dy,) = grad(y, [x], create_graph=True)
    >>> [p["ops"] for p in ops_per_pass([y, dy])]
    [2, 7]
    """
    if not isinstance(passes, (list, tuple)) or not passes:
        raise ValueError("ops_per_pass: passes must be a non-empty list of outputs, one per pass")
    seen, out = set(), []
    for index, outputs in enumerate(passes):
        nodes, _, _ = _collect(_as_outputs(outputs, f"ops_per_pass (pass {index})"))
        new = [node for node in nodes if _kind(node) == "op" and id(node) not in seen]
        seen.update(id(node) for node in nodes)
        depths = collections.Counter(rule_depth(node) for node in new)
        out.append({"ops": len(new), "by_depth": dict(sorted(depths.items()))})
    return out


# ---- labels --------------------------------------------------------------------------

def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _html(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _number(x):
    return f"{x:.4g}"


def _describe(node, show_values):
    """The lines of a value box: shape/dtype or data/grad."""
    data = node.data
    if isinstance(data, float):  # a Value
        lines = [f"data {_number(data)}"]
        g = getattr(node, "grad", None)
        if g is not None:
            lines.append(f"grad {_number(getattr(g, 'data', g))}")
        return lines if show_values else ["scalar"]
    shape = tuple(getattr(data, "shape", ()))
    lines = [f"{shape} {getattr(data, 'dtype', '')}".strip()]
    if show_values and getattr(data, "size", 0) <= 4:
        import numpy as np
        flat = np.asarray(node.numpy() if hasattr(node, "numpy") else data).ravel()
        lines.append("[" + ", ".join(_number(float(v)) for v in flat) + "]")
    return lines


def _cluster_title(origin):
    depth = rule_depth(origin) + 1
    title = f"backward of {op_name(origin)}"
    if depth == 1:
        return title
    chain, parent = [], getattr(origin, "_origin", None)
    while parent is not None:
        chain.append(f"backward of {op_name(parent)}")
        parent = getattr(parent, "_origin", None)
    return f"depth {depth}: {title} (in {' < '.join(chain)})"


def _legend(title, depths, kinds, has_clusters, stage_frames, collapse, compact):
    """An HTML-like graph label: the title, then what colours, borders and frames mean."""
    rows = []
    if title:
        rows.append(f'<TR><TD COLSPAN="2"><B>{_html(title)}</B></TD></TR>')
    meaning = {0: "depth 0: recorded by the forward pass",
               1: "depth 1: recorded by the backward rule of a depth-0 node"}
    for depth in depths:
        text = meaning.get(depth, f"depth {depth}: recorded by the backward rule of a depth-{depth - 1} node")
        fill = _FILL[min(depth, len(_FILL) - 1)]
        rows.append(f'<TR><TD BGCOLOR="{fill}" BORDER="1" WIDTH="22"> </TD>'
                    f'<TD ALIGN="LEFT">{_html(text)}</TD></TR>')
    borders = []
    if "leaf" in kinds:
        borders.append("double border: leaf that requires grad")
    if "const" in kinds:
        borders.append("dashed border: constant")
    if "no const" in kinds:
        borders.append("constants (data, seeds) not drawn")
    borders.append("bold border: output")
    if not (collapse or compact):
        borders.append("ellipse: the op that made the box it points to")
    elif "op" in kinds:
        borders.append("first line of a box: the op that made it" +
                       (" (×n: n nodes merged)" if collapse else ""))
    if has_clusters:
        borders.append("dashed frame \u201cbackward of OP\u201d: what one run of OP\u2019s backward rule recorded")
    if stage_frames:
        borders.append("grey frame: the nodes a pass or step added first")
    for text in borders:
        rows.append(f'<TR><TD COLSPAN="2" ALIGN="LEFT">{_html(text)}</TD></TR>')
    return ('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="1" CELLPADDING="1">'
            + "".join(rows) + "</TABLE>>")


# ---- DOT -----------------------------------------------------------------------------

class _Unit:
    """One box in the picture: a single node, or (collapsed) every node sharing a signature."""

    def __init__(self, key):
        self.key = key
        self.members = []


def _stage_of(nodes, stages, caller):
    """{id(node): stage index} for ``stages`` = [(title, outputs), ...], earliest first."""
    if stages is None:
        return {}, []
    if not isinstance(stages, (list, tuple)) or not all(
            isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[0], str) for s in stages):
        raise ValueError(f"{caller}: stages must be a list of (title, outputs) pairs, earliest pass first")
    stage, titles = {}, []
    for index, (title, outputs) in enumerate(stages):
        titles.append(title)
        reached, _, _ = _collect(_as_outputs(outputs, f"{caller} (stage {title!r})"))
        for node in reached:
            stage.setdefault(id(node), index)
    return stage, titles


def to_dot(outputs, max_nodes=400, collapse=False, show_values=True, names=None,
           rankdir="LR", title=None, compact=False, stages=None, legend=True, constants=True):
    """Graphviz DOT text for the graph behind ``outputs``.

    ``outputs``: a Tensor or Value, or a list of them (drawn together, shared nodes once).
    ``max_nodes``: draw at most this many boxes, those nearest the outputs; the rest
    become one note box saying how many were left out.
    ``collapse``: ``True`` (or ``"shape"``) merges nodes that share rule depth, backward
    cluster, op name, shape and dtype into one box labelled "op ×count" (edges labelled
    with counts); ``"op"`` merges by op name alone (shapes differ inside a box), which
    keeps a whole MAML step to a few dozen boxes.
    ``show_values``: print Value data/grad and tiny Tensors' numbers.
    ``names``: {"x": node} labels for nodes of interest (a named node is never merged).
    ``rankdir``: Graphviz layout direction ("LR" or "TB").
    ``title``: a caption for the picture.
    ``compact``: write each op's name in the box it produced instead of an ellipse.
    ``stages``: [(title, outputs), ...], one per pass or step, earliest first: each node
    is framed with the first stage whose outputs reach it (what that pass added).
    ``legend``: draw the legend (colours, borders, frames) under the title.
    ``constants``: ``False`` leaves constants out (the legend says so), which unclutters
    graphs whose constants are data and seeds rather than part of the story.

    Node ids follow the breadth-first discovery order from the outputs, so the same
    graph always gives the same text.

    >>> from tinygrad_meta import Value
    >>> x = Value(3.0)
    >>> print(to_dot(x * x, names={"x": x}).splitlines()[0])
    digraph tinygrad_meta {
    """
    outputs = _as_outputs(outputs, "to_dot")
    if collapse not in (False, True, "shape", "op"):
        raise ValueError(f"to_dot: collapse must be False, True (same as 'shape') or 'op', got {collapse!r}")
    if not isinstance(max_nodes, int) or max_nodes < 1:
        raise ValueError(f"to_dot: max_nodes must be a positive int, got {max_nodes!r}")
    if rankdir not in ("LR", "RL", "TB", "BT"):
        raise ValueError(f"to_dot: rankdir must be LR, RL, TB or BT, got {rankdir!r}")
    named = {}
    for name, node in (names or {}).items():
        if not _is_node(node):
            raise TypeError(f"to_dot: names[{name!r}] is a {type(node).__name__}, not a Tensor or Value")
        named[id(node)] = str(name)

    nodes, _, first_child = _collect(outputs)
    placement = _placement(nodes, first_child)
    stage_of, stage_titles = _stage_of(nodes, stages, "to_dot")
    for node in nodes:
        if _kind(node) != "const":
            continue
        if id(node) in named:
            # named data (a batch, a target) is drawn as an input, not inside a rule
            placement[id(node)] = (0, None)
        elif id(first_child.get(id(node), node)) in stage_of:
            # a constant is framed with the node that uses it, as it is clustered with it
            stage_of[id(node)] = stage_of[id(first_child.get(id(node), node))]
    output_ids = {id(node) for node in outputs}
    inline_ops = bool(collapse) or bool(compact)

    # group nodes into units (one per node unless collapsing)
    units, unit_of = [], {}
    by_key = {}
    for position, node in enumerate(nodes):
        if not constants and _kind(node) == "const" and id(node) not in named:
            continue
        order, origin = placement[id(node)]
        if collapse and id(node) not in named and id(node) not in output_ids:
            data = node.data
            cluster = (stage_of.get(id(node)), order, op_name(origin) if origin is not None else None)
            key = (cluster, _kind(node), op_name(node))
            if collapse != "op":
                key += (tuple(getattr(data, "shape", ())), str(getattr(data, "dtype", "")))
        else:
            key = ("node", position)
        unit = by_key.get(key)
        if unit is None:
            unit = by_key[key] = _Unit(key)
            units.append(unit)
        unit.members.append(node)
        unit_of[id(node)] = unit

    shown = units[:max_nodes]
    shown_set = {id(unit) for unit in shown}
    number = {id(unit): i for i, unit in enumerate(shown)}
    hidden_nodes = sum(len(unit.members) for unit in units[max_nodes:])

    lines = [
        "digraph tinygrad_meta {",
        f"  rankdir={rankdir};",
        # newrank: without it dot's ranking fails on edges that cross many clusters
        '  graph [fontname="Helvetica", fontsize=11, nodesep=0.2, ranksep=0.3, newrank=true];',
        '  node [fontname="Helvetica", fontsize=10, style=filled, fillcolor="#ffffff", '
        'margin="0.06,0.03", height=0.3];',
        '  edge [color="#555555", arrowsize=0.6, fontname="Helvetica", fontsize=9];',
    ]

    # boxes, grouped by stage frame, then by the backward cluster they belong to
    clusters = collections.OrderedDict()
    for unit in shown:
        node = unit.members[0]
        order, origin = placement[id(node)]
        if collapse:
            cluster_key = (order, op_name(origin)) if origin is not None else None
        else:
            cluster_key = id(origin) if origin is not None else None
        stage = stage_of.get(id(node))
        clusters.setdefault((stage, cluster_key), (order, origin, []))[2].append(unit)

    def emit_unit(unit, indent):
        node = unit.members[0]
        i = number[id(unit)]
        order, _ = placement[id(node)]
        kind = _kind(node)
        fill = _FILL[min(order, len(_FILL) - 1)]
        count = len(unit.members)
        label = []
        if id(node) in named:
            label.append(named[id(node)])
        if kind == "leaf":
            label.append("leaf" if count == 1 else f"leaf ×{count}")
        elif kind == "const":
            label.append("const" if count == 1 else f"const ×{count}")
        if inline_ops and kind == "op":
            label.append(f"{op_name(node)} ×{count}" if count > 1 else op_name(node))
        if collapse == "op" and count > 1:
            shapes = {tuple(getattr(member.data, "shape", ())) for member in unit.members}
            label.append(f"{len(shapes)} shapes" if len(shapes) > 1 else _describe(node, False)[0])
        else:
            label.extend(_describe(node, show_values and count == 1))
        if id(node) in output_ids:
            label.insert(0, "output")
        attrs = [f"label={_quote(chr(10).join(label))}", "shape=box", f'fillcolor="{fill}"']
        styles = ["filled"]
        if kind == "leaf":
            attrs.append("peripheries=2")
        elif kind == "const":
            styles.append("dashed")
        if id(node) in output_ids:
            styles.append("bold")
            attrs.append("penwidth=2")
        attrs.append(f'style="{",".join(styles)}"')
        out = [f"{indent}v{i} [{', '.join(attrs)}];"]
        if kind == "op" and not inline_ops:
            out.append(f'{indent}o{i} [label={_quote(op_name(node))}, shape=ellipse, '
                       f'fillcolor="{fill}", style=filled];')
            out.append(f"{indent}o{i} -> v{i};")
        return out

    cluster_number = [0]

    def emit_cluster(cluster_key, order, origin, members, indent):
        if cluster_key is None:
            for unit in members:
                lines.extend(emit_unit(unit, indent))
            return
        if collapse:
            title_text = f"backward of {cluster_key[1]}"
            if order > 1:
                title_text = f"depth {order}: {title_text}"
        else:
            title_text = _cluster_title(origin)
        color = _EDGE[min(order, len(_EDGE) - 1)]
        lines.append(f"{indent}subgraph cluster_{cluster_number[0]} {{")
        cluster_number[0] += 1
        lines.append(f"{indent}  label={_quote(title_text)}; fontcolor=\"{color}\"; color=\"{color}\"; "
                     f"style=\"rounded,dashed\";")
        for unit in members:
            lines.extend(emit_unit(unit, indent + "  "))
        lines.append(f"{indent}}}")

    has_clusters = any(key[1] is not None for key in clusters)
    for stage in sorted({key[0] for key in clusters}, key=lambda s: (s is None, s if s is not None else 0)):
        parts = [(key[1], value) for key, value in clusters.items() if key[0] == stage]
        if stage is None:
            for cluster_key, (order, origin, members) in parts:
                emit_cluster(cluster_key, order, origin, members, "  ")
            continue
        lines.append(f"  subgraph cluster_stage_{stage} {{")
        lines.append(f"    label={_quote(stage_titles[stage])}; labeljust=l; fontcolor=\"#444444\"; "
                     'color="#999999"; style="rounded"; penwidth=1.5;')
        for cluster_key, (order, origin, members) in parts:
            emit_cluster(cluster_key, order, origin, members, "    ")
        lines.append("  }")

    # edges: parent box -> op ellipse (or the box itself when ops are inline) of the child
    edge_counts = collections.OrderedDict()
    cut_targets = []
    for unit in shown:
        for child in unit.members:
            for parent in child._parents:
                target = number[id(unit)]
                parent_unit = unit_of.get(id(parent))
                if parent_unit is None:  # a constant left out on purpose
                    continue
                if id(parent_unit) in shown_set:
                    edge = (number[id(parent_unit)], target)
                    edge_counts[edge] = edge_counts.get(edge, 0) + 1
                elif target not in cut_targets:
                    cut_targets.append(target)
    head = "v" if inline_ops else "o"
    for (source, target), count in edge_counts.items():
        if collapse:
            extra = f" [label=\"×{count}\"]" if count > 1 else ""
            lines.append(f"  v{source} -> v{target}{extra};")
        else:
            lines.extend([f"  v{source} -> {head}{target};"] * count)
    if hidden_nodes:
        lines.append(f"  cut [label={_quote(f'… {hidden_nodes} more nodes not drawn (max_nodes={max_nodes})')}, "
                     'shape=note, fillcolor="#fff7c2"];')
        for target in cut_targets:
            lines.append(f"  cut -> {head}{target} [style=dotted];")
    if legend:
        shown_nodes = [member for unit in shown for member in unit.members]
        depths = sorted({placement[id(node)][0] for node in shown_nodes})
        kinds = {_kind(node) for node in shown_nodes}
        if not constants:
            kinds.add("no const")
        lines.append(f"  label={_legend(title, depths, kinds, has_clusters, bool(stage_titles), collapse, compact)}; "
                     "labelloc=t; labeljust=l;")
    elif title:
        lines.append(f"  label={_quote(title)}; labelloc=t;")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(outputs, path, **options):
    """Write the picture of the graph behind ``outputs``; returns the paths written.

    ``path`` ending in ``.dot`` writes DOT only; ``.svg``, ``.png`` or ``.pdf`` writes
    the ``.dot`` beside it and renders it with Graphviz's ``dot``; no extension means
    ``.dot`` and ``.svg``. ``options`` go to ``to_dot``.

    Raises ``GraphvizNotFoundError`` (after writing the ``.dot``) when ``dot`` is not
    installed.

    >>> from tinygrad_meta import Value
    >>> import tempfile, os
    >>> x = Value(1.5)
    >>> written = draw(x.exp(), os.path.join(tempfile.mkdtemp(), "g.dot"))
    >>> written[0].endswith("g.dot")
    True
    """
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    ext = ext.lower()
    if ext == ".dot":
        formats = []
    elif ext in (".svg", ".png", ".pdf"):
        formats = [ext[1:]]
    elif ext == "":
        formats = ["svg"]
    else:
        raise ValueError(f"draw: cannot write {path!r}; use a .dot, .svg, .png or .pdf path")
    text = to_dot(outputs, **options)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    dot_path = root + ".dot"
    with open(dot_path, "w", encoding="utf-8") as handle:
        handle.write(text)
    written = [dot_path]
    for fmt in formats:
        target = f"{root}.{fmt}"
        executable = shutil.which("dot")
        if executable is None:
            raise GraphvizNotFoundError(
                f"draw: wrote {dot_path}, but {target} needs the Graphviz program 'dot', which is "
                "not on PATH; install the Debian/Ubuntu package graphviz "
                "(sudo apt-get install graphviz), or render it elsewhere with "
                f"`dot -T{fmt} {dot_path} -o {target}`")
        # dot's curved-edge router occasionally gives up on big clustered graphs;
        # straight edges are the fallback that always routes
        for extra in ([], ["-Gsplines=line"]):
            try:
                subprocess.run([executable, f"-T{fmt}", *extra, dot_path, "-o", target],
                               check=True, capture_output=True, text=True, timeout=300)
                break
            except subprocess.CalledProcessError as error:
                failure = error.stderr.strip().splitlines()
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"draw: dot took over 300 s on {dot_path}; pass a smaller max_nodes or "
                    "collapse=True") from None
        else:
            raise RuntimeError(f"draw: dot failed on {dot_path} (the .dot file is fine; try a "
                               f"smaller max_nodes or collapse=True): {' | '.join(failure[:3])}")
        written.append(target)
    return written
