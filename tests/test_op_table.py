"""The op table is the one place derivative rules live, and each rule really is written
once: run on raw arrays (first order) and on Tensors (create_graph=True) it gives the
same numbers."""
import pathlib
import re

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import functional as F, ops, viz
from tinygrad_meta.meta.maml import sgd_update
from tinygrad_meta.optim import safe_sqrt

PACKAGE = pathlib.Path(tgm.__file__).resolve().parent


def test_every_table_entry_has_a_name_a_forward_and_a_rule():
    assert len(ops.TABLE) >= 40
    for name, op in ops.TABLE.items():
        assert op.name == name and callable(op.forward) and callable(op.vjp), name


def test_rules_are_declared_only_in_the_op_table_and_the_scalar_engine():
    declares = re.compile(r"\b(primitive\(|Op\(|defvjp)")
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("ops.py", "scalar.py"):
            continue
        source = path.read_text()
        where = path.relative_to(PACKAGE)
        assert not declares.search(source), f"{where} declares an op"
        # only the node constructor reads grad mode: no rule forks on it
        if path.name not in ("tensor.py", "autograd.py"):
            assert not re.search(r"\b(grad_enabled\(|_GRAD_ENABLED)", source), f"{where} reads grad mode"


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = tgm.Tensor(rng.uniform(0.5, 1.5, (3, 4)), dtype="float64", requires_grad=True)
    w = tgm.Tensor(rng.standard_normal((4, 2)), dtype="float64", requires_grad=True)
    b = tgm.Tensor(rng.standard_normal(2), dtype="float64", requires_grad=True)
    return x, w, b


FUNCTIONS = {
    "mul/add/sub/div": lambda x, w, b: (x * 2.0 + x / (x + 1.0) - x * x).sum(),
    "pow": lambda x, w, b: (x ** (x * 0.5)).sum(),
    "matmul": lambda x, w, b: ((x @ w) ** 2).sum(),
    "matmul_t": lambda x, w, b: (F.matmul_t(x, w, False, False) * F.matmul_t(w, x, True, True).T).sum(),
    "linear_relu": lambda x, w, b: (F.linear_relu(x, w.T, b) ** 2).sum(),  # weight (out, in)
    "linear": lambda x, w, b: F.linear(x, w.T, b).tanh().sum(),
    "batch_norm(_relu)": lambda x, w, b: (F.batch_norm_relu(x, None, None, w[:, 0], w[:, 1], training=True)
                                          * F.batch_norm(x * x, None, None, w[:, 1], training=True)).sum(),
    "mse": lambda x, w, b: F.mse_loss(x @ w, (x * x) @ w),
    "softmax family": lambda x, w, b: (F.softmax(x) * F.log_softmax(x)).sum() + F.logsumexp(x),
    "reductions": lambda x, w, b: (x.max(axis=1) * x.min(axis=0).sum()).sum() + x.mean(),
    "shapes": lambda x, w, b: (x.reshape(4, 3).T * x).sum() + x[1:, ::2].sum() * x.broadcast_to((2, 3, 4)).sum(),
    "join": lambda x, w, b: (tgm.concatenate([x, x * x]) ** 2).sum() + tgm.stack([x, x]).exp().sum(),
    "where/maximum": lambda x, w, b: (tgm.where(x > 1.0, x * x, x.exp()) * tgm.maximum(x, 1.0)).sum(),
    "sigmoid/tanh/relu/abs/clip/sqrt/log": lambda x, w, b: (
        x.sigmoid() * x.tanh() * (x - 1.0).relu() * (x - 1.0).abs() * x.clip(0.8, 1.2) * x.sqrt() * x.log()).sum(),
    "sgd_update": lambda x, w, b: (sgd_update(x, x * x, 0.1) * sgd_update(x, x, x)).sum(),
    "safe_sqrt": lambda x, w, b: safe_sqrt(x * x).sum(),
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_a_rule_gives_the_same_gradient_on_raw_arrays_and_on_tensors(name):
    f = FUNCTIONS[name]
    inputs = _inputs()
    raw = tgm.grad(f(*inputs), list(inputs), allow_unused=True)
    recorded = tgm.grad(f(*inputs), list(inputs), allow_unused=True, create_graph=True)
    for a, c in zip(raw, recorded):
        assert (a is None) == (c is None)
        if a is not None:
            np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-13, atol=1e-13)


def test_viz_names_ops_after_the_table():
    x = tgm.Tensor([1.0, 2.0], requires_grad=True)
    y = F.linear_relu(x.reshape(1, 2), tgm.Tensor(np.ones((3, 2))))
    assert viz.op_name(y) == "linear_relu" and y._op is ops.TABLE["linear_relu"]
    assert viz.op_name(x) is None
