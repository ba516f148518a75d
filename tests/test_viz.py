"""viz.to_dot / draw, the safe expression parser, and the explain command."""
import math
import os
import re
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinygrad_meta as tgm
from tinygrad_meta import Value, grad, viz
from tinygrad_meta.__main__ import main
from tinygrad_meta.cli.explain_cmd import central_difference, explain, kinks
from tinygrad_meta.expr import parse_expression, parse_query

BOX = re.compile(r"^\s*(v\d+) \[", re.M)
OP = re.compile(r"^\s*(o\d+) \[", re.M)
EDGE = re.compile(r"^\s*(\w+) -> (\w+)", re.M)


def boxes(text):
    return BOX.findall(text)


def clusters(text):
    """{cluster label: [box ids inside it]} from DOT text written by to_dot."""
    found, current = {}, None
    for line in text.splitlines():
        if line.strip().startswith("subgraph cluster_"):
            current = []
        elif current is not None and line.strip().startswith("label="):
            found[re.search(r'label="([^"]*)"', line).group(1)] = current
        elif current is not None and line.strip() == "}":
            current = None
        elif current is not None and BOX.match(line):
            current.append(BOX.match(line).group(1))
    return found


# ---- to_dot: structure -------------------------------------------------------------

def test_counts_boxes_ops_and_edges_of_a_small_value_graph():
    x, y = Value(2.0), Value(3.0)
    z = x * y + x
    text = viz.to_dot(z)
    # nodes: x, y, x*y, z; ops: *, +; edges: 2 inputs per op + one op->result per op
    assert len(boxes(text)) == 4
    assert len(OP.findall(text)) == 2
    assert len(EDGE.findall(text)) == 2 * 2 + 2


def test_tensor_boxes_show_shape_and_dtype():
    w = tgm.Tensor(np.ones((3, 2)), requires_grad=True)
    x = tgm.Tensor(np.ones((4, 3)))
    text = viz.to_dot((x @ w).relu().sum())
    assert "(3, 2) float32" in text and "(4, 3) float32" in text
    assert '"matmul"' in text and '"relu"' in text and '"sum"' in text


def test_leaves_constants_and_outputs_are_marked():
    x = Value(1.5)
    out = x * 2.0
    text = viz.to_dot(out, names={"x": x})
    leaf_line = next(line for line in text.splitlines() if 'x\\nleaf' in line)
    assert "peripheries=2" in leaf_line
    const_line = next(line for line in text.splitlines() if "const" in line)
    assert "dashed" in const_line
    assert "output" in text and "bold" in text


def test_a_first_order_graph_without_create_graph_has_no_backward_cluster():
    x = Value(0.7)
    y = (x * x).tanh()
    assert clusters(viz.to_dot(y)) == {}


def test_nodes_recorded_by_a_backward_pass_sit_in_backward_clusters():
    x = Value(0.7)
    y = (x * x).tanh()
    (dy,) = grad(y, [x], create_graph=True)
    text = viz.to_dot(dy)
    found = clusters(text)
    assert "backward of tanh" in found and "backward of *" in found
    # every op node recorded by the backward (order 1) is inside some cluster
    nodes, _, _ = viz._collect([dy])
    ids = {id(node): f"v{i}" for i, node in enumerate(nodes)}
    in_clusters = {box for members in found.values() for box in members}
    backward_ops = [ids[id(node)] for node in nodes if viz.node_order(node) == 1 and node._op is not None]
    assert backward_ops and set(backward_ops) <= in_clusters
    forward_ops = [ids[id(node)] for node in nodes if node._op is not None and viz.node_order(node) == 0]
    assert forward_ops and not set(forward_ops) & in_clusters


def test_depth_two_nodes_get_their_own_clusters_and_colour():
    x = Value(0.7)
    (dy,) = grad((x * x).tanh(), [x], create_graph=True)
    (d2y,) = grad(dy, [x], create_graph=True)
    text = viz.to_dot(d2y)
    second = [label for label in clusters(text) if label.startswith("depth 2: backward of")]
    assert second, "no depth-2 cluster"
    colours = set(re.findall(r'cluster_\d+ \{\n\s*label="[^"]*"; fontcolor="(#\w+)"', text))
    assert len(colours) == 2  # one colour for depth 1, another for depth 2


def test_node_order_follows_origin_chain():
    x = Value(0.3)
    y = (x * x).tanh()
    (dy,) = grad(y, [x], create_graph=True)
    (d2y,) = grad(dy, [x], create_graph=True)
    assert viz.node_order(y) == 0 and viz.node_order(x) == 0
    assert viz.node_order(dy) == 1
    assert max(viz.node_order(n) for n in viz._collect([d2y])[0]) == 2


def test_same_graph_gives_the_same_text():
    def build():
        x = Value(0.7)
        (dy,) = grad((x * x).tanh(), [x], create_graph=True)
        return viz.to_dot(dy, names={"x": x})
    assert build() == build()


def test_several_outputs_share_nodes():
    x = Value(2.0)
    a = x * x
    b = a + 1.0
    c = a.exp()
    text = viz.to_dot([b, c])
    # x, a, b, c and the constant 1.0
    assert len(boxes(text)) == 5
    assert text.count('label="output') == 2


def test_rule_depth_is_not_the_grad_call_that_recorded_a_node():
    # the second grad runs the forward nodes' rules again: depth-1 nodes from pass 2
    x = Value(0.7)
    y = (x * x).tanh()
    (dy,) = grad(y, [x], create_graph=True)
    (d2y,) = grad(dy, [x], create_graph=True)
    passes = viz.ops_per_pass([y, dy, d2y])
    assert [p["ops"] for p in passes] == [2, 7, 19]
    assert passes[1]["by_depth"] == {1: 7}
    assert set(passes[2]["by_depth"]) == {1, 2} and sum(passes[2]["by_depth"].values()) == 19
    assert viz.rule_depth(d2y) == 1  # d2y/dx2 itself is recorded by a forward node's rule


def test_stages_frame_what_each_pass_added():
    x = Value(0.7)
    y = (x * x).tanh()
    (dy,) = grad(y, [x], create_graph=True)
    (d2y,) = grad(dy, [x], create_graph=True)
    text = viz.to_dot(d2y, stages=[("forward", y), ("pass 1", dy), ("pass 2", d2y)], compact=True)
    assert text.count("subgraph cluster_stage_") == 3
    frame_two = text[text.index('label="pass 2"'):]
    # the output d2y/dx2 is inside the frame of pass 2
    output_box = re.search(r'(v\d+) \[label="output', text).group(1)
    assert f"{output_box} [" in frame_two
    with pytest.raises(ValueError, match="stages"):
        viz.to_dot(d2y, stages=[y, dy])


def test_compact_writes_ops_inside_boxes_and_halves_the_nodes():
    x = Value(0.7)
    (dy,) = grad((x * x).tanh(), [x], create_graph=True)
    full, compact = viz.to_dot(dy), viz.to_dot(dy, compact=True)
    assert len(OP.findall(compact)) == 0 and len(OP.findall(full)) == 9
    assert len(boxes(compact)) == len(boxes(full))


def test_every_picture_has_a_legend_naming_the_depths_drawn():
    x = Value(0.7)
    (dy,) = grad((x * x).tanh(), [x], create_graph=True)
    text = viz.to_dot(dy, names={"x": x}, title="dy/dx")
    legend = re.search(r"label=<<TABLE.*</TABLE>>", text).group(0)
    assert "depth 0: recorded by the forward pass" in legend
    assert "depth 1: recorded by the backward rule of a depth-0 node" in legend
    assert "depth 2" not in legend
    assert "double border: leaf" in legend and "dashed border: constant" in legend
    assert "<B>dy/dx</B>" in legend
    assert "label=<<TABLE" not in viz.to_dot(dy, legend=False)


def test_constants_can_be_left_out_but_named_data_stays_an_input():
    x = tgm.Tensor(np.ones((3, 1)))
    w = tgm.Tensor(np.ones((1, 2)), requires_grad=True)
    y = ((x @ w) * (x @ w)).sum()
    (g,) = grad(y, [w], create_graph=True)
    text = viz.to_dot(g, names={"batch x": x}, constants=False, compact=True)
    assert "batch x" in text and "constants (data, seeds) not drawn" in text
    assert 'const\n' not in text.replace('batch x\nconst', '')  # only the named one is drawn
    batch_line = next(line for line in text.splitlines() if "batch x" in line)
    assert "#dbe9f6" in batch_line  # drawn as depth-0 data, not inside a backward rule
    assert len(boxes(text)) < len(boxes(viz.to_dot(g, names={"batch x": x}, compact=True)))


# ---- to_dot: large graphs -----------------------------------------------------------

def _long_chain(n):
    x = Value(0.1)
    y = x
    for _ in range(n):
        y = y * 1.01 + 0.001
    return y


def test_max_nodes_cuts_with_a_note_counting_what_is_left_out():
    y = _long_chain(50)
    total = viz.graph_stats(y)["nodes"]
    text = viz.to_dot(y, max_nodes=20)
    assert len(boxes(text)) == 20
    note = re.search(r"… (\d+) more nodes not drawn \(max_nodes=20\)", text)
    assert note and int(note.group(1)) == total - 20
    assert re.search(r"^\s*cut -> o\d+", text, re.M)


def test_collapse_merges_repeated_ops_and_counts_them():
    y = _long_chain(30)
    text = viz.to_dot(y, collapse=True)
    assert len(boxes(text)) < 10
    assert "* ×" in text and "+ ×" in text
    assert int(re.search(r"\* ×(\d+)", text).group(1)) == 30
    # the output (the last +) stays a box of its own
    assert int(re.search(r"\+ ×(\d+)", text).group(1)) == 30 - 1


def test_collapse_by_op_keeps_a_maml_like_step_small():
    rng = np.random.default_rng(0)
    shapes = [(1, 8), (8,), (8, 8), (8,), (8, 1), (1,)]
    params = [tgm.Tensor(rng.normal(size=s), requires_grad=True) for s in shapes]

    def net(p, x):
        h = (x @ p[0] + p[1]).relu()
        h = (h @ p[2] + p[3]).relu()
        return h @ p[4] + p[5]

    x, y = tgm.Tensor(rng.normal(size=(5, 1))), tgm.Tensor(rng.normal(size=(5, 1)))
    loss = ((net(params, x) - y) ** 2).mean()
    grads = grad(loss, params, create_graph=True)
    fast = [p - 0.1 * g for p, g in zip(params, grads)]
    outer = ((net(fast, x) - y) ** 2).mean()
    full = len(boxes(viz.to_dot(outer)))
    small = len(boxes(viz.to_dot(outer, collapse="op")))
    assert small < full / 2
    assert "backward of matmul" in viz.to_dot(outer, collapse="op")


def test_bad_arguments_name_the_problem():
    with pytest.raises(TypeError, match="not a Tensor or Value"):
        viz.to_dot(3.0)
    with pytest.raises(ValueError, match="max_nodes"):
        viz.to_dot(Value(1.0), max_nodes=0)
    with pytest.raises(ValueError, match="collapse"):
        viz.to_dot(Value(1.0), collapse="yes")
    with pytest.raises(ValueError, match=r"\.dot, \.svg"):
        viz.draw(Value(1.0), "graph.jpeg")


def test_graph_stats_counts_ops_by_order_and_bytes():
    x = tgm.Tensor(np.ones(5), dtype="float64", requires_grad=True)
    y = (x * x).sum()
    stats = viz.graph_stats(y)
    assert stats["ops"] == 2 and stats["leaves"] == 1 and stats["ops_by_order"] == {0: 2}
    # x, x*x and the sum each own one buffer: 5 + 5 + 1 float64 values
    assert stats["data_bytes"] == (5 + 5 + 1) * 8


# ---- draw -----------------------------------------------------------------------------

def test_draw_dot_only_needs_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    written = viz.draw(Value(2.0).exp(), tmp_path / "g.dot")
    assert written == [str(tmp_path / "g.dot")]
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


def test_draw_without_graphviz_writes_dot_and_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(viz.GraphvizNotFoundError, match="graphviz"):
        viz.draw(Value(2.0).exp(), tmp_path / "g.svg")
    assert (tmp_path / "g.dot").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_draw_renders_svg_with_graphviz(tmp_path):
    x = Value(0.7)
    (dy,) = grad((x * x).tanh(), [x], create_graph=True)
    written = viz.draw(dy, tmp_path / "g.svg", names={"x": x})
    assert written[-1].endswith("g.svg")
    svg = (tmp_path / "g.svg").read_text()
    assert "<svg" in svg and "backward of tanh" in svg


def _fake_dot(fail_times):
    import subprocess
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if len(calls) <= fail_times:
            raise subprocess.CalledProcessError(1, command, stderr="triangulation failed")
        open(command[-1], "w").write("<svg></svg>")
    return run, calls


def test_draw_retries_with_straight_edges_when_dot_fails_to_route(tmp_path, monkeypatch):
    run, calls = _fake_dot(fail_times=1)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(viz.subprocess, "run", run)
    written = viz.draw(Value(2.0).exp(), tmp_path / "g.svg")
    assert written[-1].endswith("g.svg") and len(calls) == 2
    assert "-Gsplines=line" in calls[1]


def test_draw_reports_a_dot_failure_and_keeps_the_dot_file(tmp_path, monkeypatch):
    run, _ = _fake_dot(fail_times=2)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(viz.subprocess, "run", run)
    with pytest.raises(RuntimeError, match="triangulation failed"):
        viz.draw(Value(2.0).exp(), tmp_path / "g.svg")
    assert (tmp_path / "g.dot").exists()


# ---- the expression parser -------------------------------------------------------------

@pytest.mark.parametrize("text", [
    '__import__("os").system("true")', "x.real", "x[0]", "lambda: x", "sin(x)", "exp(x, 2)",
    "exp(x=1)", "y + 1", "x if x else 1", "(1+2j)", "True + x", "exp", "x^2", "[x]", "'a'",
])
def test_parser_rejects_everything_outside_the_whitelist(text):
    with pytest.raises(ValueError):
        parse_expression(text)


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=0.05, max_value=3.0))
def test_parsed_expression_evaluates_like_math(x):
    f = parse_expression("tanh(x*x) - exp(-x)/x + log(x)**2 + sigmoid(2*x) + relu(x - 1)")
    expected = (math.tanh(x * x) - math.exp(-x) / x + math.log(x) ** 2
                + 1 / (1 + math.exp(-2 * x)) + max(x - 1, 0.0))
    assert f(x) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_parse_query_reads_the_point_and_the_variable_name():
    f, point = parse_query("exp(t) * t at t=-1.5")
    assert point == -1.5 and f.variable == "t"
    assert f(point) == pytest.approx(math.exp(-1.5) * -1.5)
    with pytest.raises(ValueError, match="at x=VALUE"):
        parse_query("exp(x)")


# ---- explain ----------------------------------------------------------------------------

def test_explain_derivatives_of_exp_2x_match_the_analytic_ones():
    # d^k/dx^k exp(2x) = 2^k exp(2x)
    rows = explain(parse_expression("exp(2*x)"), 0.3, max_order=4)
    for row in rows:
        analytic = 2 ** row["order"] * math.exp(0.6)
        assert row["engine"] == pytest.approx(analytic, rel=1e-12)
        # central differences with one Richardson step: relative error about
        # eps^(4/(k+4)), i.e. ~2e-8 at k = 4; 1e-6 leaves room for the constants
        assert row["finite_difference"] == pytest.approx(analytic, rel=1e-6)


def test_central_difference_matches_known_derivatives():
    # d^3/dx^3 sin(x) = -cos(x)
    assert central_difference(math.sin, 0.4, 3) == pytest.approx(-math.cos(0.4), rel=1e-7)


def _parse_table(out):
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0].isdigit() and len(cells) >= 5:
            rows[int(cells[0])] = (float(cells[1]), float(cells[2]), float(cells[3]), int(cells[4]))
    return rows


def test_explain_command_prints_engine_next_to_finite_differences(tmp_path, capsys):
    code = main(["explain", "tanh(x*x) at x=0.7", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    rows = _parse_table(out)
    assert sorted(rows) == [0, 1, 2, 3, 4]
    for order, (engine, fd, difference, ops) in rows.items():
        # FD accuracy falls with order (see central_difference); relative 1e-5 holds to 4th
        assert engine == pytest.approx(fd, rel=1e-5, abs=1e-9)
        assert difference == pytest.approx(abs(engine - fd), rel=0.05, abs=1e-12)
    # derivatives of tanh(x^2) from tanh' = 1 - tanh^2
    t = math.tanh(0.49)
    assert rows[1][0] == pytest.approx(2 * 0.7 * (1 - t * t), rel=1e-9)
    ops = [rows[k][3] for k in range(5)]
    assert ops == sorted(ops) and ops[4] > ops[1]  # each order records a bigger graph
    for order in range(5):
        assert (tmp_path / f"order_{order}.dot").exists()


def test_explain_warns_when_the_point_sits_on_a_relu_kink(capsys):
    assert main(["explain", "relu(x) at x=0", "--no-pictures"]) == 0
    out = capsys.readouterr().out
    assert "warning: x = 0.0 sits on a kink of relu" in out
    rows = _parse_table(out)
    # the engine's convention relu'(0) = 0 vs the symmetric difference (0 + 1) / 2
    assert rows[1][0] == 0.0 and rows[1][1] == pytest.approx(0.5, rel=1e-6)


def test_explain_warns_when_the_stencil_straddles_a_kink_and_not_elsewhere():
    expression = parse_expression("relu(x)")
    assert "inside the finite-difference stencil" in kinks(expression, 1e-3, 4)[0]
    assert kinks(expression, 0.5, 4) == []
    assert kinks(parse_expression("tanh(x*x)"), 0.0, 4) == []
    assert kinks(parse_expression("relu(x*x - 1)"), -1.0, 2)[0].startswith("x = -1.0 sits on a kink")


def test_explain_counts_what_each_grad_call_added_by_depth(capsys):
    rows = explain(parse_expression("tanh(x*x)"), 0.7, max_order=2)
    assert [row["new_ops"] for row in rows] == [2, 7, 19]
    assert rows[2]["new_ops_by_depth"] == viz.ops_per_pass([r["value"] for r in rows])[2]["by_depth"]


def test_explain_collapses_the_pictures_of_high_orders_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["explain", "tanh(x*x) at x=0.7", "--order", "4", "--out", str(tmp_path)]) == 0
    order2, order4 = ((tmp_path / f"order_{k}.dot").read_text() for k in (2, 4))
    rows = explain(parse_expression("tanh(x*x)"), 0.7, max_order=4)
    assert " ×" not in order2 and " ×" in order4
    # collapsed: far fewer boxes than the 112 op nodes behind the 4th derivative
    assert len(boxes(order4)) < rows[4]["ops"] / 2
    # framed by pass: the forward and the 4th grad call at least (a pass whose nodes the
    # 4th derivative no longer reaches gets no frame)
    assert 'label="forward"' in order4 and 'label="grad call 4"' in order4


def test_explain_command_writes_dot_when_graphviz_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["explain", "x**3", "--at", "2", "--order", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "graphviz" in out
    assert sorted(os.listdir(tmp_path)) == ["order_0.dot", "order_1.dot", "order_2.dot"]


def test_explain_command_rejects_bad_input_clearly(capsys):
    assert main(["explain", "sin(x) at x=1", "--no-pictures"]) == 2
    assert "sin(x)" in capsys.readouterr().err
    assert main(["explain", "x*x", "--no-pictures"]) == 2
    assert "at x=0.7" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["tinygrad_meta.viz", "tinygrad_meta.expr",
                                    "tinygrad_meta.cli.explain_cmd"])
def test_docstring_examples_run(module):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
