"""The build-it-yourself tutorial runs top to bottom in fast mode, and its answers are the engine's.

docs/tutorial/build_your_own_backprop.py asserts its own claims as it goes; here we run it
once (in this process, so its namespace can be inspected) and recompute each answer it
records in ``ANSWERS`` a second way with tinygrad_meta: through ``explain`` (the CLI's
node counts) and through a differently vectorised Meta-SGD.
"""
import os
import runpy

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta.cli.explain_cmd import explain
from tinygrad_meta.expr import parse_expression
from tinygrad_meta.meta import MetaSGD
from tinygrad_meta.tasks.sinusoid import sample_batch, task_rng

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIAL = os.path.join(ROOT, "docs", "tutorial", "build_your_own_backprop.py")


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    out = tmp_path_factory.mktemp("tutorial_out")
    saved = {key: os.environ.get(key) for key in ("TGM_QUICK", "TGM_TUTORIAL_OUT", "MPLBACKEND")}
    os.environ.update(TGM_QUICK="1", TGM_TUTORIAL_OUT=str(out), MPLBACKEND="Agg")
    try:
        namespace = runpy.run_path(TUTORIAL, run_name="tutorial")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return namespace, out


def test_tutorial_runs_in_fast_mode_and_draws_the_frames(tutorial):
    namespace, out = tutorial
    assert namespace["QUICK"]
    if namespace["FRAMES_PNG"] is not None:  # None only without matplotlib
        assert os.path.getsize(out / "backward_frames.png") > 10_000


def test_tutorial_engine_records_nothing_at_first_order_and_a_graph_with_create_graph(tutorial):
    namespace, _ = tutorial
    Value, grad = namespace["Value"], namespace["grad"]
    x = Value(0.8, requires_grad=True)
    y = (x * x).tanh() * x.exp()
    before = Value.recorded
    (first,) = grad(y, [x])
    assert Value.recorded == before and first.op is None
    (dy,) = grad(y, [x], create_graph=True)
    assert Value.recorded > before and dy.requires_grad
    assert dy.data == pytest.approx(first.data, rel=1e-15)


def test_forward_over_reverse_with_duals_is_the_hessian_vector_product(tutorial):
    namespace, _ = tutorial
    x = np.array([0.3, -1.1, 0.7, 2.0])
    v = np.array([1.0, -0.5, 0.25, 2.0])
    hessian = tgm.hessian(namespace["rosenbrock_tensor"], tgm.Tensor(x, dtype="float64")).numpy()
    np.testing.assert_allclose(namespace["hvp_forward_over_reverse"](x, v), hessian @ v, rtol=1e-13)


def test_node_count_answer_of_x_cubed_is_what_explain_counts(tutorial):
    answers = tutorial[0]["ANSWERS"]
    rows = explain(parse_expression("x*x*x"), 2.0, max_order=2)
    assert answers["x*x*x: ops recorded by pass 1"] == rows[1]["new_ops"]
    assert answers["x*x*x: ops recorded by pass 2"] == rows[2]["new_ops"]
    assert answers["x*x*x: ops behind d2y/dx2"] == rows[2]["ops"]


def test_growth_per_order_answer_is_what_explain_counts(tutorial):
    counts = tutorial[0]["ANSWERS"]["ops behind the k-th derivative of tanh(x*x)*exp(x)"]
    rows = explain(parse_expression("tanh(x*x)*exp(x)"), 0.7, max_order=len(counts) - 1)
    assert counts == [row["ops"] for row in rows]


def test_metasgd_rate_gradient_answer_matches_the_per_task_loop(tutorial):
    answers = tutorial[0]["ANSWERS"]

    def gap(steps):
        grads = {}
        for first_order in (False, True):
            model = tgm.nn.MLP([1, 40, 40, 1], rng=task_rng(0, 0, stream=4))
            learner = MetaSGD(model, init_lr=0.01, inner_steps=steps, first_order=first_order,
                              vectorize=False)  # per-task loop: a different code path
            _, g = learner.meta_step(sample_batch(25, 10, task_rng(0, 0)))
            grads[first_order] = np.concatenate([np.asarray(t, dtype=np.float64).ravel()
                                                 for n, t in g.items() if n.startswith("lr.")])
        return np.abs(grads[False] - grads[True]).max()

    assert answers["MetaSGD example-05 net: max |lr grad, 2nd - 1st order|, 1 step"] == 0.0
    assert gap(1) == 0.0
    # float32 network: the two code paths sum the tasks in different orders
    assert gap(2) == pytest.approx(
        answers["MetaSGD example-05 net: max |lr grad, 2nd - 1st order|, 2 steps"], rel=1e-3)


def test_answers_come_after_the_exercises(tutorial):
    with open(TUTORIAL, encoding="utf-8") as handle:
        source = handle.read()
    exercises, answers = source.index("## 4. Exercises"), source.index("## Answers")
    assert exercises < answers
    assert "12 new op nodes" not in source[:answers]
