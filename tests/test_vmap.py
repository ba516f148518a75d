"""tgm.vmap: equal to a Python loop over the batch, for every op, its gradients, nested
vmaps, derivatives to third order, grad from outside, and MAML's per-task step."""
import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_meta as tgm
from tinygrad_meta import functional as F
from tinygrad_meta import ops
from tinygrad_meta.tensor import record
from tinygrad_meta.vmap import BatchedTensor

F64 = "float64"


def T(array, requires_grad=False):
    return tgm.Tensor(np.asarray(array, dtype=np.float64), dtype=F64, requires_grad=requires_grad)


def close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)


def shapes(min_dims=0, max_dims=3):
    return st.lists(st.integers(1, 3), min_size=min_dims, max_size=max_dims).map(tuple)


# ----------------------------------------------------------------------------------
# One case per table op: (per-example function, [(example shape, value kind), ...])
# ----------------------------------------------------------------------------------

def _broadcast_partner(draw, shape):
    """A shape that broadcasts with ``shape``: some leading axes dropped, some set to 1."""
    drop = draw(st.integers(0, len(shape)))
    kept = shape[drop:]
    return tuple(1 if draw(st.booleans()) else n for n in kept)


def _axis(draw, ndim):
    return None if ndim == 0 or draw(st.booleans()) else draw(st.integers(-ndim, ndim - 1))


def _binary(function, kind_b="normal", kind_a="normal"):
    def case(draw):
        a = draw(shapes())
        b = _broadcast_partner(draw, a)
        a, b = (b, a) if draw(st.booleans()) else (a, b)
        return function, [(a, kind_a), (b, kind_b)]
    return case


def _unary(function, kind="normal", min_dims=0):
    def case(draw):
        return function, [(draw(shapes(min_dims)), kind)]
    return case


def _reduction(method):
    def case(draw):
        shape = draw(shapes())
        axis, keepdims = _axis(draw, len(shape)), draw(st.booleans())
        return (lambda x: method(x, axis, keepdims)), [(shape, "normal")]
    return case


def _softmax(function):
    def case(draw):
        shape = draw(shapes(1))
        axis = _axis(draw, len(shape))
        return (lambda x: function(x, axis=axis)), [(shape, "normal")]
    return case


def _matmul_case(draw):
    m, k, n = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    batch_a = draw(shapes(0, 2))
    batch_b = _broadcast_partner(draw, batch_a)
    if draw(st.booleans()):
        batch_a, batch_b = batch_b, batch_a
    trans_a, trans_b = draw(st.booleans()), draw(st.booleans())
    a = batch_a + ((k, m) if trans_a else (m, k))
    b = batch_b + ((n, k) if trans_b else (k, n))
    return (lambda x, y: F.matmul_t(x, y, trans_a, trans_b)), [(a, "normal"), (b, "normal")]


def _reshape_case(draw):
    shape = draw(shapes())
    size = int(np.prod(shape))
    target = draw(st.sampled_from([(-1,), (size, 1), (1, -1), (size,) if size else (0,)]))
    return (lambda x: x.reshape(target)), [(shape, "normal")]


def _permute_case(draw):
    shape = draw(shapes())
    order = draw(st.permutations(range(len(shape))))
    return (lambda x: x.permute(tuple(order))), [(shape, "normal")]


def _broadcast_to_case(draw):
    shape = draw(shapes())
    small = tuple(1 if draw(st.booleans()) else n for n in shape)
    small = small[draw(st.integers(0, len(small))):]
    return (lambda x: x.broadcast_to(shape)), [(small, "normal")]


_INDEX_SHAPE = (3, 2, 3)
_INDICES = [
    1, -1, slice(None, None, 2), (Ellipsis, 0), (None, 1), (0, slice(None), 2),
    np.array([2, 0, 2]),                                    # repeated entries
    (np.array([0, 2]), slice(None), np.array([1, 0])),      # split advanced: axes move first
    (slice(None), np.array([[1, 0]]), np.array([0, 2])),
    (1, slice(None), np.array([0, 2])),                     # an int and an array, apart
    np.array([True, False, True]),
    (Ellipsis, np.array([2, 1])),
]


def _getitem_case(draw):
    index = draw(st.sampled_from(_INDICES))
    return (lambda x: x[index]), [(_INDEX_SHAPE, "normal")]


def _index_put_case(draw):
    index = draw(st.sampled_from(_INDICES))
    out_shape = np.zeros(_INDEX_SHAPE)[index].shape
    return (lambda g: record(ops.index_put, g, index, _INDEX_SHAPE)), [(out_shape, "normal")]


def _join_case(join):
    def case(draw):
        shape = draw(shapes(1))
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        other = list(shape)
        if join is tgm.concatenate:
            other[axis] = draw(st.integers(1, 3))
        parts = [(shape, "normal"), (tuple(other), "normal")]
        if draw(st.booleans()):
            parts.append((tuple(other), "normal"))
        return (lambda *xs: join(list(xs), axis=axis)), parts
    return case


def _where_case(draw):
    shape = draw(shapes())
    other = _broadcast_partner(draw, shape)
    if draw(st.booleans()):  # a condition computed from a (maybe batched) operand
        return (lambda a, b: tgm.where(a > 0.1, a, b)), [(shape, "normal"), (other, "normal")]
    condition = np.random.default_rng(len(shape)).random(_broadcast_partner(draw, shape)) > 0.5
    return (lambda a, b: tgm.where(condition, a, b)), [(shape, "normal"), (other, "normal")]


def _linear_case(fused):
    def case(draw):
        n_in, n_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        lead = draw(shapes(1, 2))
        function = F.linear_relu if fused else F.linear
        inputs = [(lead + (n_in,), "normal"), ((n_out, n_in), "normal")]  # PyTorch's layout
        if draw(st.booleans()):
            return (lambda x, w: function(x, w)), inputs
        return (lambda x, w, b: function(x, w, b)), inputs + [((n_out,), "normal")]
    return case


def _mse_case(draw):
    shape = draw(shapes())
    return (lambda p, t: F.mse_loss(p, t)), [(shape, "normal"), (shape, "normal")]


def _mse_grad_case(draw):
    shape = draw(shapes())
    return (lambda p, t, u: record(ops.mse_grad, p, t, u, 0.5)), \
        [(shape, "normal"), (shape, "normal"), ((), "normal")]


def _sgd_update_case(draw):
    shape = draw(shapes())
    if draw(st.booleans()):
        return (lambda p, g: record(ops.sgd_update, [p, g], -0.1)), [(shape, "normal")] * 2
    return (lambda p, g, lr: record(ops.sgd_update, [p, g, lr], None)), \
        [(shape, "normal"), (shape, "normal"), (_broadcast_partner(draw, shape), "positive")]


def _fused_grad_case(op):
    def case(draw):
        shape = draw(shapes())
        be = tgm.backends.get_backend("cpu")
        extra = (be,) if op is ops.relu_grad else ()
        return (lambda g, y: record(op, g, y, *extra)), [(shape, "normal"), (shape, "normal")]
    return case


def _astype_case(draw):
    return (lambda x: x.astype("float32").astype(F64) * 2.0), [(draw(shapes()), "normal")]


CASES = {
    "add": _binary(lambda a, b: a + b),
    "sub": _binary(lambda a, b: a - b),
    "mul": _binary(lambda a, b: a * b),
    "div": _binary(lambda a, b: a / b, kind_b="away"),
    "pow": _binary(lambda a, b: a ** b, kind_a="positive"),
    "neg": _unary(lambda x: -x),
    "add_scalar": _unary(lambda x: x + 1.5),
    "rsub_scalar": _unary(lambda x: 2.0 - x),
    "mul_scalar": _unary(lambda x: x * 3.0),
    "rdiv_scalar": _unary(lambda x: 2.0 / x, "away"),
    "pow_scalar": _unary(lambda x: x ** 3),
    "rpow_scalar": _unary(lambda x: 2.0 ** x),
    "matmul": _matmul_case,
    "sum": _reduction(lambda x, axis, keep: x.sum(axis, keep)),
    "max": _reduction(lambda x, axis, keep: x.max(axis, keep)),
    "min": _reduction(lambda x, axis, keep: x.min(axis, keep)),
    "logsumexp": _reduction(lambda x, axis, keep: F.logsumexp(x, axis, keep)),
    "softmax": _softmax(F.softmax),
    "log_softmax": _softmax(F.log_softmax),
    "reshape": _reshape_case,
    "permute": _permute_case,
    "broadcast_to": _broadcast_to_case,
    "getitem": _getitem_case,
    "index_put": _index_put_case,
    "concatenate": _join_case(tgm.concatenate),
    "stack": _join_case(tgm.stack),
    "where": _where_case,
    "maximum": _binary(tgm.maximum),
    "minimum": _binary(tgm.minimum),
    "exp": _unary(lambda x: x.exp()),
    "log": _unary(lambda x: x.log(), "positive"),
    "sqrt": _unary(lambda x: x.sqrt(), "positive"),
    "abs": _unary(lambda x: abs(x)),
    "clip": _unary(lambda x: x.clip(-0.5, 0.7)),
    "tanh": _unary(lambda x: x.tanh()),
    "tanh_grad": _fused_grad_case(ops.tanh_grad),
    "sigmoid": _unary(lambda x: x.sigmoid()),
    "sigmoid_grad": _fused_grad_case(ops.sigmoid_grad),
    "relu": _unary(lambda x: x.relu()),
    "relu_grad": _fused_grad_case(ops.relu_grad),
    "linear": _linear_case(False),
    "linear_relu": _linear_case(True),
    "mse": _mse_case,
    "mse_grad": _mse_grad_case,
    "sgd_update": _sgd_update_case,
    "safe_sqrt": _unary(lambda v: record(ops.safe_sqrt, v), "zeros"),
    "masked_power": _unary(lambda v: record(ops.masked_power, v, 0.5, -0.5), "zeros"),
    "astype": _astype_case,
}


def _one_axis_case(method):
    def case(draw):
        shape = draw(shapes(1))
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        return (lambda x: method(x, axis)), [(shape, "normal")]
    return case


def _matrix_case(method):
    def case(draw):
        shape = draw(shapes(2))
        return method, [(shape, "normal")]
    return case


def _pad_case(draw):
    shape = draw(shapes(1))
    widths = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in shape]
    return (lambda x: tgm.pad(x, widths, constant_values=0.5)), [(shape, "normal")]


def _tile_case(draw):
    shape = draw(shapes())
    reps = tuple(draw(st.integers(1, 2)) for _ in range(draw(st.integers(0, len(shape)))))
    return (lambda x: x.tile(reps)), [(shape, "normal")]


def _diagonal_case(draw):
    shape = draw(shapes(2))
    axis1, axis2 = draw(st.permutations(range(len(shape))))[:2]
    offset = draw(st.integers(-1, 1))
    return (lambda x: x.diagonal(offset, axis1, axis2)), [(shape, "normal")]


def _einsum_case(draw):
    spec, first, second = draw(st.sampled_from([
        ("ij,jk->ik", (2, 3), (3, 2)), ("ij,ij->i", (2, 3), (2, 3)), ("ii->", (3, 3), None),
        ("i,j->ij", (2,), (3,)), ("bij,bjk->bik", (2, 2, 3), (2, 3, 2))]))
    if second is None:
        return (lambda x: tgm.einsum(spec, x)), [(first, "normal")]
    return (lambda x, y: tgm.einsum(spec, x, y)), [(first, "normal"), (second, "normal")]


CASES.update({
    "round": _unary(lambda x: (x * 10.0).round(1)),
    "softplus": _unary(lambda x: F.softplus(x, beta=2.0)),
    "leaky_relu": _unary(lambda x: F.leaky_relu(x, 0.1)),
    "elu": _unary(lambda x: F.elu(x, 0.7)),
    "gelu": _unary(lambda x: F.gelu(x) + F.gelu(x, approximate="tanh")),
    "triu": _matrix_case(lambda x: x.triu(1)),
    "tril": _matrix_case(lambda x: x.tril(-1)),
    "prod": _reduction(lambda x, axis, keep: x.prod(axis, keep)),
    "cumsum": _one_axis_case(lambda x, axis: x.cumsum(axis)),
    "flip": _one_axis_case(lambda x, axis: x.flip(axis)),
    "roll": _one_axis_case(lambda x, axis: x.roll(2, axis)),
    "repeat": _one_axis_case(lambda x, axis: x.repeat(2, axis)),
    "pad": _pad_case,
    "tile": _tile_case,
    "diagonal": _diagonal_case,
    "einsum": _einsum_case,
})


# ---- convolution and batch norm (issue 11): small images, random geometry
def _conv_geometry(draw):
    groups = draw(st.sampled_from([1, 2]))
    cg, og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    dilation = (1, draw(st.integers(1, 2)))
    size = (draw(st.integers(3, 4)), draw(st.integers(5, 6)))
    n = draw(st.integers(1, 2))
    x_shape = (n, cg * groups) + size
    w_shape = (og * groups, cg) + kernel
    conv = (stride, padding, dilation, groups, tgm.backends.get_backend("cpu"), None)
    out = ops.conv2d.forward(np.zeros(x_shape), np.zeros(w_shape), *conv).shape
    return x_shape, w_shape, out, conv


def _conv_case(draw):
    x_shape, w_shape, _, conv = _conv_geometry(draw)
    # with a columns cache, as functional.conv2d records it (the batching rule ignores it)
    conv = conv[:-1] + (ops.ConvColumns(),)
    return (lambda x, w: record(ops.conv2d, x, w, *conv)), [(x_shape, "normal"), (w_shape, "normal")]


def _conv_input_grad_case(draw):
    x_shape, w_shape, out, conv = _conv_geometry(draw)
    return (lambda g, w: record(ops.conv2d_input_grad, g, w, x_shape, *conv)), \
        [(out, "normal"), (w_shape, "normal")]


def _conv_weight_grad_case(draw):
    x_shape, w_shape, out, conv = _conv_geometry(draw)
    return (lambda x, g: record(ops.conv2d_weight_grad, x, g, w_shape, *conv)), \
        [(x_shape, "normal"), (out, "normal")]


def _im2col_case(transpose):
    def case(draw):
        x_shape, w_shape, _, (stride, padding, dilation, _, be, _) = _conv_geometry(draw)
        kernel = w_shape[-2:]
        cols = ops.im2col.forward(np.zeros(x_shape), kernel, stride, padding, dilation, 0.0, be).shape
        if transpose:
            return (lambda c: record(ops.col2im, c, x_shape, kernel, stride, padding, dilation, be)), \
                [(cols, "normal")]
        return (lambda x: record(ops.im2col, x, kernel, stride, padding, dilation, -1.5, be)), \
            [(x_shape, "normal")]
    return case


def _batch_norm_train_case(op):
    def case(draw):
        shape = (draw(st.integers(2, 3)), draw(st.integers(1, 2))) + draw(shapes(0, 2))
        affine = (draw(st.booleans()), draw(st.booleans()))
        channel = [((shape[1],), "positive")] * sum(affine)
        return (lambda x, *wb: record(op, [x, *wb], affine, 1e-3)), [(shape, "normal")] + channel
    return case


def _max_pool_tiles_case(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)),
             kernel[0] * draw(st.integers(1, 3)), kernel[1] * draw(st.integers(1, 3)))
    return (lambda x: record(ops.max_pool_tiles, x, kernel)), [(shape, "normal")]


CASES.update({
    "max_pool_tiles": _max_pool_tiles_case,
    "conv2d": _conv_case,
    "conv2d_input_grad": _conv_input_grad_case,
    "conv2d_weight_grad": _conv_weight_grad_case,
    "im2col": _im2col_case(False),
    "col2im": _im2col_case(True),
    "batch_norm_train": _batch_norm_train_case(ops.batch_norm_train),
    "batch_norm_relu_train": _batch_norm_train_case(ops.batch_norm_relu_train),
})
NOT_BATCHABLE = {"to"}
# ops batched by the generic loop (ops.batch_by_loop) rather than a rule of their own
EXPECTED_ON_LOOP_FALLBACK = set()


def _auto_case(op):
    """A case for an op added without one: a parameterless elementwise op of 1 or 2
    same-shaped inputs in (0.1, 0.9) (inside every usual domain)."""
    forward = op.forward
    arity = forward.nin if isinstance(forward, np.ufunc) else \
        len(inspect.signature(forward).parameters)
    if op.nin not in (1, 2) or arity != op.nin:
        return None

    def case(draw):
        shape = draw(shapes())
        return (lambda *xs: record(op, *xs)), [(shape, "unit")] * op.nin
    return case


def _case_for(name):
    return CASES.get(name) or _auto_case(ops.TABLE[name])


def _values(rng, shape, kind):
    if kind == "positive":
        return rng.uniform(0.5, 2.0, shape)
    if kind == "unit":
        return rng.uniform(0.1, 0.9, shape)
    if kind == "away":  # no division by numbers near 0
        return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    if kind == "zeros":  # v >= 0 with exact zeros, where safe_sqrt's derivatives are defined as 0
        return np.where(rng.random(shape) < 0.3, 0.0, rng.uniform(0.5, 2.0, shape))
    return rng.normal(size=shape)


def _draw_problem(data, name):
    """The case, a batch size, which inputs are batched (on which axis), the stacked
    inputs and the output axis."""
    function, specs = _case_for(name)(data.draw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    size = data.draw(st.integers(1, 3))
    flags = data.draw(st.lists(st.booleans(), min_size=len(specs), max_size=len(specs))
                      .filter(any))
    in_axes, args, examples = [], [], []
    for (shape, kind), batched in zip(specs, flags):
        if batched:
            stacked = _values(rng, (size,) + shape, kind)
            axis = data.draw(st.integers(0, len(shape)))
            in_axes.append(axis)
            args.append(T(np.moveaxis(stacked, 0, axis)))
            examples.append([T(stacked[i]) for i in range(size)])
        else:
            value = T(_values(rng, shape, kind), requires_grad=True)
            in_axes.append(None)
            args.append(value)
            examples.append([value] * size)
    per_example = [[column[i] for column in examples] for i in range(size)]
    return function, tuple(in_axes), args, per_example


@pytest.mark.parametrize("name", sorted(set(ops.TABLE) - NOT_BATCHABLE))
@settings(max_examples=12)
@given(data=st.data())
def test_vmap_of_each_op_equals_a_loop_over_the_batch(name, data):
    if _case_for(name) is None:
        pytest.fail(f"no vmap case for op {name!r}: add one to CASES in tests/test_vmap.py")
    function, in_axes, args, per_example = _draw_problem(data, name)
    looped = [function(*example).numpy() for example in per_example]
    out_axis = data.draw(st.integers(-looped[0].ndim - 1, looped[0].ndim))
    got = tgm.vmap(function, in_axes=in_axes, out_axes=out_axis)(*args)
    close(got.numpy(), np.stack(looped, axis=out_axis))


@pytest.mark.parametrize("name", sorted(set(ops.TABLE) - NOT_BATCHABLE))
@settings(max_examples=8)
@given(data=st.data())
def test_per_example_gradients_of_each_op_equal_a_loop(name, data):
    """grad inside vmap, w.r.t. batched inputs and unbatched (shared) ones, at first order
    and with create_graph: each op's backward rule run on batched nodes."""
    if _case_for(name) is None:
        pytest.fail(f"no vmap case for op {name!r}: add one to CASES in tests/test_vmap.py")
    function, in_axes, args, per_example = _draw_problem(data, name)
    create_graph = data.draw(st.booleans())
    out_shape = function(*per_example[0]).shape
    cotangent = T(np.random.default_rng(7).normal(size=out_shape))

    def gradients(*xs):
        leaves = [x if x.requires_grad else x.detach().requires_grad_() for x in xs]
        y = (function(*leaves) * cotangent).sum()
        grads = tgm.grad(y, leaves, create_graph=create_graph, allow_unused=True)
        return tuple(tgm.zeros_like(x) if g is None else g for x, g in zip(leaves, grads))

    looped = [gradients(*example) for example in per_example]
    got = tgm.vmap(gradients, in_axes=in_axes)(*args)
    for index, g in enumerate(got):
        close(g.numpy(), np.stack([row[index].numpy() for row in looped]))


def test_every_table_op_has_a_batching_rule_or_is_listed_on_the_loop_fallback():
    on_loop = {name for name, op in ops.TABLE.items() if op.batch is None}
    assert on_loop == EXPECTED_ON_LOOP_FALLBACK, (
        f"ops on the loop fallback (ops.batch_by_loop): {sorted(on_loop)}; give them a "
        "batching rule at the end of ops.py, or list them in EXPECTED_ON_LOOP_FALLBACK")


def test_an_op_without_a_rule_is_batched_by_the_loop_fallback():
    cube = ops.Op("cube", lambda x: x ** 3, 1, lambda o, g, out, ins, params, needs:
                  (g * ins[0] * ins[0] * 3.0,))
    xs = T(np.random.default_rng(0).normal(size=(4, 3)))
    close(tgm.vmap(lambda x: record(cube, x))(xs).numpy(), xs.numpy() ** 3)


def test_an_op_that_cannot_be_batched_raises_naming_it():
    xs = T(np.ones((2, 3)))
    with pytest.raises(NotImplementedError, match="'to'"):
        tgm.vmap(lambda x: record(ops.to, x, x._be, tgm.backends.get_backend("cpu")))(xs)


def test_loop_fallback_names_an_op_whose_example_outputs_differ_in_shape():
    positives = ops.Op("positives", lambda x: x[x > 0], 1)
    xs = T([[1.0, -1.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="'positives'"):
        tgm.vmap(lambda x: record(positives, x))(xs)


# ----------------------------------------------------------------------------------
# Composition: nesting, higher order, grad from outside, pytrees
# ----------------------------------------------------------------------------------

RNG = np.random.default_rng(3)
W = T(RNG.normal(size=(3, 3)), requires_grad=True)
V = T(RNG.normal(size=(3,)), requires_grad=True)


def smooth(x):
    """A per-example function mixing several kinds of op, closing over W and V."""
    h = F.linear(x.reshape(1, 3), W).tanh() * V
    return (F.softmax(h, axis=-1) * x).sum() + (h.sigmoid() ** 2).mean()


def test_nested_vmap_with_both_levels_batched_equals_a_double_loop():
    xs = T(RNG.normal(size=(2, 4, 3)))
    got = tgm.vmap(tgm.vmap(smooth))(xs)
    close(got.numpy(), [[smooth(xs[i][j]).item() for j in range(4)] for i in range(2)])


def test_nested_vmap_over_different_axes_with_an_unbatched_inner_argument():
    xs, ys = T(RNG.normal(size=(4, 3, 2))), T(RNG.normal(size=(2, 3)))

    def pair(x, y):  # x: (3,), y: (3,)
        return tgm.vmap(lambda a, b: (a * b * V).sum(), in_axes=(None, 0))(x, ys * y)
    got = tgm.vmap(pair, in_axes=(2, 0), out_axes=1)(xs, ys)
    want = [[(xs[:, :, i] * (ys * ys[i])[j] * V).sum().item() for j in range(2)] for i in range(2)]
    close(got.numpy(), np.array(want).T)


def test_vmap_of_a_function_that_uses_vmap_inside_and_reduces():
    xs = T(RNG.normal(size=(3, 5, 3)))
    got = tgm.vmap(lambda block: tgm.vmap(smooth)(block).max())(xs)
    close(got.numpy(), [max(smooth(xs[i][j]).item() for j in range(5)) for i in range(3)])


def _derivatives(x, order):
    """d^k/dx^k of sum(smooth-ish(x)) for k = 1..order, each w.r.t. the example."""
    x = x.detach().requires_grad_()
    y = ((x * V).tanh() * (x @ W).sigmoid()).sum() + (x ** 3).sum()
    out = []
    for _ in range(order):
        (y,) = tgm.grad(y, [x], create_graph=True)
        out.append(y)
        y = (y * V).sum()
    return tuple(out)


def test_vmap_of_grad_to_third_order_equals_a_loop():
    xs = T(RNG.normal(size=(4, 3)))
    got = tgm.vmap(lambda x: _derivatives(x, 3))(xs)
    for order in range(3):
        close(got[order].numpy(), [_derivatives(xs[i], 3)[order].numpy() for i in range(4)])


def test_third_order_per_example_gradients_of_a_shared_parameter_equal_a_loop():
    def third(x):
        (g1,) = tgm.grad(smooth(x), [V], create_graph=True)
        (g2,) = tgm.grad((g1 * g1).sum(), [V], create_graph=True)
        (g3,) = tgm.grad((g2 * V).sum(), [V])
        return g3
    xs = T(RNG.normal(size=(3, 3)))
    close(tgm.vmap(third)(xs).numpy(), [third(xs[i]).numpy() for i in range(3)])


def test_grad_of_vmap_from_outside_sums_over_the_batch():
    xs = T(RNG.normal(size=(5, 3)), requires_grad=True)
    loss = (tgm.vmap(smooth)(xs) * T(np.arange(5.0))).sum()
    got = tgm.grad(loss, [W, V, xs])
    want = tgm.grad(sum(smooth(xs[i]) * float(i) for i in range(5)), [W, V, xs])
    for g, w in zip(got, want):
        close(g.numpy(), w.numpy())


def test_grad_of_vmap_of_grad_from_outside_is_second_order_and_matches_a_loop():
    xs = T(RNG.normal(size=(4, 3)))

    def inner(x):
        return tgm.grad(smooth(x), [W], create_graph=True)[0]
    got = tgm.grad((tgm.vmap(inner)(xs) ** 2).sum(), [W, V], create_graph=True)
    want = tgm.grad(sum((inner(xs[i]) ** 2).sum() for i in range(4)), [W, V], create_graph=True)
    for g, w in zip(got, want):
        close(g.numpy(), w.numpy())
    # and once more: third order through the vmap boundary
    close(tgm.grad(got[1].sum(), [V])[0].numpy(), tgm.grad(want[1].sum(), [V])[0].numpy())


def test_pytrees_dict_inputs_with_per_key_axes_and_tuple_outputs():
    params = {"w": T(RNG.normal(size=(3, 4))), "b": T(RNG.normal(size=(3,)))}
    x = T(RNG.normal(size=(3,)))

    def f(p, x):
        return {"y": (p["w"] * x).sum(), "pair": (p["b"], x * 2.0)}
    got = tgm.vmap(f, in_axes=({"w": 1, "b": None}, None), out_axes={"y": 0, "pair": (None, 0)})(
        params, x)
    close(got["y"].numpy(), [(params["w"][:, i] * x).sum().item() for i in range(4)])
    assert got["pair"][0] is params["b"]
    close(got["pair"][1].numpy(), np.broadcast_to(x.numpy() * 2, (4, 3)))


def test_an_output_that_does_not_depend_on_the_batch_is_broadcast():
    xs = T(np.ones((4, 2)))
    got = tgm.vmap(lambda x: V * 2.0, out_axes=1)(xs)
    close(got.numpy(), np.stack([V.numpy() * 2.0] * 4, axis=1))
    (g,) = tgm.grad(got.sum(), [V])
    close(g.numpy(), np.full(3, 8.0))


def test_grad_of_a_batched_per_example_input_inside_vmap():
    xs = T(RNG.normal(size=(4, 3)))
    got = tgm.vmap(lambda x: tgm.hvp(lambda t: smooth(t), x, V))(xs)
    close(got.numpy(), [tgm.hvp(lambda t: smooth(t), xs[i], V).numpy() for i in range(4)])


# ----------------------------------------------------------------------------------
# MAML: an inner SGD step on shared params per task, then the query loss
# ----------------------------------------------------------------------------------

def _maml_task(forward, params, inner_lr=0.1):
    def task(support_x, support_y, query_x, query_y):
        loss = F.mse_loss(forward(support_x, params), support_y)
        grads = tgm.grad(loss, list(params.values()), create_graph=True)
        fast, _ = tgm.optim.sgd_step(params, dict(zip(params, grads)), lr=inner_lr)
        return F.mse_loss(forward(query_x, fast), query_y)
    return task


def _check_maml(forward, params, tasks, shots, n_in, n_out):
    rng = np.random.default_rng(11)
    batch = [T(rng.normal(size=(tasks, shots, n))) for n in (n_in, n_out, n_in, n_out)]
    task = _maml_task(forward, params)
    vectorised = tgm.vmap(task)(*batch)
    looped = [task(*(b[i] for b in batch)) for i in range(tasks)]
    close(vectorised.numpy(), [loss.item() for loss in looped])
    got = tgm.grad(vectorised.mean(), list(params.values()))
    want = tgm.grad(sum(looped) * (1.0 / tasks), list(params.values()))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-10, atol=1e-10)


def test_vmapped_maml_matches_the_task_loop_for_an_mlp():
    model = tgm.nn.MLP([1, 16, 16, 1], dtype=F64, rng=np.random.default_rng(0))

    def forward(x, p):
        return tgm.func.functional_call(model, p, x)
    _check_maml(forward, model.parameter_dict(), tasks=5, shots=10, n_in=1, n_out=1)


def test_vmapped_maml_matches_the_task_loop_with_a_per_feature_parameter():
    # T == K == out == 5: any axis mix-up between tasks, shots and features would broadcast
    rng = np.random.default_rng(5)
    params = {"weight": T(rng.normal(size=(5, 5)), requires_grad=True),
              "scale": T(rng.normal(size=(5,)), requires_grad=True)}

    def forward(x, p):
        return (F.linear(x, p["weight"]) * p["scale"]).tanh()
    _check_maml(forward, params, tasks=5, shots=5, n_in=5, n_out=5)


# ----------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------

def test_mismatched_batch_sizes_name_the_arguments_and_sizes():
    with pytest.raises(ValueError, match=r"args\[0\] has 3 on axis 0, args\[1\] has 4 on axis 0"):
        tgm.vmap(lambda a, b: a + b)(T(np.ones((3, 2))), T(np.ones((4, 2))))


def test_in_axes_that_do_not_match_the_arguments_are_an_error():
    with pytest.raises(ValueError, match="in_axes has 1 entries but"):
        tgm.vmap(lambda a, b: a + b, in_axes=(0,))(T(np.ones(2)), T(np.ones(2)))
    with pytest.raises(ValueError, match="keys"):
        tgm.vmap(lambda p: p["a"], in_axes=({"b": 0},))({"a": T(np.ones(2))})
    with pytest.raises(ValueError, match="out of range"):
        tgm.vmap(lambda a: a, in_axes=2)(T(np.ones((2, 2))))
    with pytest.raises(ValueError, match="none of"):
        tgm.vmap(lambda a: a, in_axes=None)(T(np.ones(2)))


def test_out_axes_that_do_not_match_the_outputs_are_an_error():
    xs = T(np.ones((3, 2)))
    with pytest.raises(ValueError, match="out_axes for output has 2 entries"):
        tgm.vmap(lambda x: x, out_axes=(0, 0))(xs)
    with pytest.raises(ValueError, match="differs between examples"):
        tgm.vmap(lambda x: x, out_axes=None)(xs)
    with pytest.raises(TypeError, match="returned a float"):
        tgm.vmap(lambda x: 1.0)(xs)


@pytest.mark.parametrize("what, call", [
    (r"\.item\(\)", lambda x: x.sum().item()),
    (r"\.numpy\(\)", lambda x: x.numpy()),
    (r"bool\(\)", lambda x: x if x.sum() > 0 else -x),
])
def test_value_dependent_control_flow_inside_vmap_is_a_clear_error(what, call):
    with pytest.raises(RuntimeError, match=f"vmap: {what}.*value-dependent"):
        tgm.vmap(call)(T(np.ones((3, 2))))


def test_a_batched_index_is_an_error_naming_getitem():
    with pytest.raises(NotImplementedError, match="'getitem'"):
        tgm.vmap(lambda x, i: x[i])(T(np.ones((3, 2))), tgm.Tensor(np.zeros((3,), dtype=np.int64)))


def test_batched_tensors_report_the_example_shape():
    seen = []
    tgm.vmap(lambda x: seen.append((type(x), x.shape, x.ndim, x.size)) or x)(T(np.ones((3, 2, 4))))
    assert seen == [(BatchedTensor, (2, 4), 2, 8)]


def test_grad_inside_vmap_with_respect_to_the_unbatched_input_is_an_error():
    xs = T(np.ones((3, 2)), requires_grad=True)
    with pytest.raises(NotImplementedError, match="before it entered the vmap"):
        tgm.vmap(lambda x: tgm.grad((x * x).sum(), [xs])[0])(xs)
