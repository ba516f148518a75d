"""tgm.compile: replays equal eager calls bit for bit, and what cannot be replayed raises.

Every equality here is exact (np.array_equal): a replay runs the same kernels on the
same arrays in the same order as the eager call it was traced from, so there is no
rounding difference to allow for. Each test also feeds new values after the trace, so a
program that baked in the traced values would fail.
"""
import gc
import tracemalloc

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import TraceError
from tinygrad_meta.functional import mse_loss
from tinygrad_meta.meta import MAML, MetaSGD, Reptile
from tinygrad_meta.nn import MLP
from tinygrad_meta.optim import Adam

from meta_checks import small_batch


def same(a, b):
    """Bit-for-bit equality of two (nested) results of Tensors, arrays and numbers."""
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, tgm.Tensor):
        assert isinstance(b, tgm.Tensor) and not b.requires_grad
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a.numpy(), b.numpy()), (a.numpy(), b.numpy())
    else:
        assert np.array_equal(a, b)


def rng_tensor(seed, *shape, requires_grad=False, dtype="float32"):
    return tgm.Tensor(np.random.default_rng(seed).standard_normal(shape), dtype=dtype,
                      requires_grad=requires_grad)


def check_replays(fn, make_args, calls=3):
    """fn compiled == fn eager for several argument values (the first call traces)."""
    compiled = tgm.compile(fn)
    for call in range(calls):
        same(fn(*make_args(call)), compiled(*make_args(call)))
    info = compiled.cache_info()
    assert (info.traces, info.hits) == (1, calls - 1)
    return compiled


# ---- gradients -----------------------------------------------------------------------

W = rng_tensor(100, 3, 4, requires_grad=True)
B = rng_tensor(101, 4, requires_grad=True)


def layer_loss(x):
    return ((x @ W + B).tanh() ** 2).mean()


def test_first_order_gradient():
    def fn(x):
        loss = layer_loss(x)
        return loss, tgm.grad(loss, [W, B])
    check_replays(fn, lambda i: (rng_tensor(i, 5, 3),))


def test_second_order_gradient_of_gradient():
    def fn(x):
        loss = layer_loss(x)
        gw, gb = tgm.grad(loss, [W, B], create_graph=True)
        penalty = (gw * gw).sum() + (gb * gb).sum()
        return tgm.grad(penalty, [W, B, x])
    check_replays(fn, lambda i: (rng_tensor(i, 5, 3, requires_grad=True),))


def test_numpy_inputs_dict_outputs_and_float64():
    w = rng_tensor(7, 3, 2, requires_grad=True, dtype="float64")

    def fn(x, scale):
        y = (tgm.Tensor(x, dtype="float64") @ w).sigmoid().sum() * scale
        (g,) = tgm.grad(y, [w])
        return {"y": y, "g": g, "tag": "ok"}
    check_replays(fn, lambda i: (np.random.default_rng(i).standard_normal((4, 3)), 0.5))


def test_hvp_and_jacobian():
    v = rng_tensor(3, 6, dtype="float64")

    def f(x):
        return (x.tanh() * x).sum() + (x ** 3).sum()

    def fn(x):
        return tgm.hvp(f, x, v), tgm.jacobian(lambda t: t.sin() * t[::-1], x)
    check_replays(fn, lambda i: (rng_tensor(i, 6, dtype="float64"),))


def test_backward_sets_grads_like_eager_for_an_adam_training_loop():
    """loss.backward() inside, Adam outside: parameters after 5 steps equal eager's."""
    def run(compiled):
        model = MLP([3, 8, 1], rng=np.random.default_rng(0))
        opt = Adam(model.parameters(), lr=0.05)

        def step(x, y):
            opt.zero_grad()
            loss = mse_loss(model(tgm.Tensor(x)), tgm.Tensor(y))
            loss.backward()
            return loss
        step = tgm.compile(step) if compiled else step
        losses = []
        for i in range(5):
            rng = np.random.default_rng(i)
            losses.append(step(rng.standard_normal((16, 3)), rng.standard_normal((16, 1))))
            opt.step()
        return losses, [p.numpy() for p in model.parameters()]
    eager, compiled = run(False), run(True)
    same(eager[0], compiled[0])
    same(eager[1], compiled[1])


# ---- meta-learners (compile=True) --------------------------------------------------

@pytest.mark.parametrize("cls, options", [
    (MAML, {}), (MAML, {"first_order": True}), (MAML, {"adapt_only": "layers.2"}),  # ANIL
    (MetaSGD, {}), (MAML, {"inner_steps": 2, "vectorize": False}),
    (Reptile, {}), (Reptile, {"vectorize": False}),
], ids=["maml", "fomaml", "anil", "metasgd", "maml-looped", "reptile", "reptile-looped"])
def test_meta_learner_compiled_equals_eager(cls, options):
    def run(compiled):
        learner = cls(MLP([1, 8, 8, 1], rng=np.random.default_rng(0)), compile=compiled, **options)
        opt = Adam(learner.meta_parameters(), lr=0.01)
        losses = []
        for i in range(4):
            loss, grads = learner.meta_step(small_batch(seed=i, dtype=np.float32))
            learner.outer_update(grads) if cls is Reptile else opt.step(grads)
            losses.append(loss)
        return losses, [p.numpy() for p in learner.meta_parameters().values()], learner
    (eager_losses, eager_params, _), (losses, params, learner) = run(False), run(True)
    assert eager_losses == losses
    same(eager_params, params)
    assert learner._compiled_step.cache_info().hits == 3


def test_unrolled_hypergradient():
    from tinygrad_meta.meta.hyperopt import make_hyperparameters
    from tinygrad_meta.meta.hyperopt.unrolled import unrolled_hypergradient_tensors
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 2)), rng.standard_normal((12, 1))
    init = {"w": rng.standard_normal((2, 1)) * 0.1}
    hyper = make_hyperparameters(3, lr=0.1)

    def fn(scale):
        def train_loss(params, step):
            return (((tgm.Tensor(x, dtype="float64") @ params["w"]) - tgm.Tensor(y, dtype="float64")) ** 2).mean() * scale
        val, hypergrads, _, losses = unrolled_hypergradient_tensors(
            train_loss, lambda p: (p["w"] ** 2).sum(), init, hyper, 3)
        return val, hypergrads["log_lr"], losses
    compiled = tgm.compile(fn)
    for scale in (1.0, 1.0, 2.0):
        same(fn(scale), compiled(scale))


# ---- cache and outputs -------------------------------------------------------------

def test_new_shapes_trace_new_programs_and_the_cache_evicts():
    compiled = tgm.compile(lambda x: (x * x).sum(), cache_size=2)
    for n in (2, 3, 4, 2):
        same((rng_tensor(n, n) ** 2).sum(), compiled(rng_tensor(n, n)))
    info = compiled.cache_info()
    assert (info.traces, info.evictions, info.size, info.maxsize) == (4, 2, 2, 2)


def test_outputs_of_earlier_calls_are_not_overwritten():
    compiled = tgm.compile(lambda x: x * 2.0)
    first = compiled(rng_tensor(0, 3))
    kept = first.numpy().copy()
    compiled(rng_tensor(1, 3))
    compiled(rng_tensor(2, 3))
    assert np.array_equal(first.numpy(), kept)


def test_closure_parameters_are_read_at_every_replay():
    w = rng_tensor(0, 3)
    compiled = tgm.compile(lambda x: (x * w).sum())
    x = rng_tensor(1, 3)
    compiled(x)
    w.data = w.data + 1.0  # rebinding, as the optimizers do
    same((x * w).sum(), compiled(x))


# ---- what cannot be replayed raises ----------------------------------------------

@pytest.mark.parametrize("read, cause", [
    (lambda y: y.item(), r"\.item\(\)"), (lambda y: float(y), r"\.item\(\).*float\(\)"),
    (lambda y: int(y), r"\.item\(\).*int\(\)"), (lambda y: y.numpy(), r"\.numpy\(\)"),
    (lambda y: float(y.data), r"^tgm.compile: float\(\)"),
    (lambda y: np.asarray(y.data).tolist(), r"\.tolist\(\)"),
])
def test_reading_a_value_inside_raises_naming_the_read(read, cause):
    compiled = tgm.compile(lambda x: read((x * x).sum()))
    with pytest.raises(TraceError, match=cause):
        compiled(rng_tensor(0, 3))


def test_python_control_flow_on_a_value_is_a_guard_that_retraces_when_it_flips():
    def fn(x):
        return x * 2.0 if (x.sum() > 0) else x.exp()
    compiled = tgm.compile(fn)
    positive, negative = tgm.Tensor([1.0, 2.0]), tgm.Tensor([-1.0, -2.0])
    for x in (positive, positive, negative, negative, positive):
        same(fn(x), compiled(x))
    info = compiled.cache_info()
    assert (info.traces, info.guard_retraces, info.hits) == (3, 2, 2)


def test_a_guard_that_flips_after_a_side_effect_raises():
    w = rng_tensor(0, 2, requires_grad=True)

    def fn(x):
        w.grad = None
        (x * w).sum().backward()
        return x * 2.0 if (x.sum() > 0) else x * 3.0
    compiled = tgm.compile(fn)
    compiled(tgm.Tensor([1.0, 2.0]))
    with pytest.raises(TraceError, match="came out differently from the trace, after"):
        compiled(tgm.Tensor([-1.0, -2.0]))


def test_log_softmax_with_an_infinite_row_takes_its_other_branch():
    def fn(x):
        return tgm.functional.log_softmax(x, axis=-1)
    compiled = tgm.compile(fn)
    finite, infinite = tgm.Tensor([[1.0, 2.0]]), tgm.Tensor([[np.inf, 2.0]])
    for x in (finite, finite, infinite, finite):
        same(fn(x), compiled(x))


def test_in_place_write_into_an_input_raises():
    def fn(x):
        x.data[0] = 0.0
        return x * 1.0
    with pytest.raises(TraceError, match="writes in place into input array 0"):
        tgm.compile(fn)(rng_tensor(0, 3))

    def fn_view(a):
        a.reshape(-1)[:2] += 1.0
        return a.sum()
    with pytest.raises(TraceError, match="in place into input array 0"):
        tgm.compile(fn_view)(np.ones((2, 2)))


def test_check_mode_catches_a_program_that_changed():
    flags = {"relu": False}

    def fn(x):
        return x.relu() if flags["relu"] else x.tanh()
    compiled = tgm.compile(fn, check_every=2)
    compiled(rng_tensor(0, 3))
    flags["relu"] = True
    with pytest.raises(TraceError, match="array call 0 was a call of .*tanh.* and is now .*relu|maximum"):
        compiled(rng_tensor(1, 3))


def test_check_mode_catches_random_numbers_drawn_inside():
    rng = np.random.default_rng(0)
    compiled = tgm.compile(lambda x: x + tgm.Tensor(rng.standard_normal(3)), check_every=2)
    compiled(rng_tensor(0, 3))
    with pytest.raises(TraceError, match="different program"):
        compiled(rng_tensor(0, 3))


def test_check_mode_passes_a_pure_function():
    compiled = tgm.compile(lambda x: (x.exp() * W[0, 0]).sum(), check_every=1)
    for i in range(3):
        compiled(rng_tensor(i, 3))
    assert compiled.cache_info().traces == 3


def test_optimizer_step_inside_raises():
    w = rng_tensor(0, 3, requires_grad=True)
    opt = Adam([w], lr=0.1)

    def fn(x):
        (x * w).sum().backward()
        opt.step()
    with pytest.raises(TraceError, match=r"Adam.step\(\) inside a compiled function"):
        tgm.compile(fn)(rng_tensor(1, 3))
    w.grad = None


def test_accumulating_into_an_existing_grad_raises():
    w = rng_tensor(0, 3, requires_grad=True)
    compiled = tgm.compile(lambda x: (x * w).sum().backward())
    compiled(rng_tensor(1, 3))  # traced with w.grad None
    with pytest.raises(TraceError, match="already has a .grad"):
        compiled(rng_tensor(1, 3))  # the replay would not accumulate
    w.grad = tgm.Tensor(np.ones(3))
    with pytest.raises(TraceError, match="accumulates into a .grad that existed"):
        tgm.compile(lambda x: (x * w).sum().backward())(rng_tensor(1, 3))


def test_escaped_traced_value_raises():
    kept = []

    def fn(x):
        y = x * 2.0
        kept.append(y.data)
        return y
    tgm.compile(fn)(rng_tensor(0, 3))
    with pytest.raises(TraceError, match="escaped"):
        kept[0] + 1.0


def test_closure_tensor_changing_shape_raises():
    w = rng_tensor(0, 3)
    compiled = tgm.compile(lambda x: (x * w).sum())
    compiled(rng_tensor(1, 3))
    w.data = np.ones(1, dtype=np.float32)  # x * w still works eagerly (broadcast)
    with pytest.raises(TraceError, match="shape \\(3,\\).*now holds an array of shape \\(1,\\)"):
        compiled(rng_tensor(1, 3))


def test_bad_arguments():
    with pytest.raises(TypeError, match="expected a callable"):
        tgm.compile(3)
    with pytest.raises(ValueError, match="cache_size"):
        tgm.compile(lambda: 0, cache_size=0)
    with pytest.raises(TypeError, match="argument of type object"):
        tgm.compile(lambda o: 0)(object())


# ---- memory --------------------------------------------------------------------------

def test_memory_stays_flat_over_compiled_iterations():
    """A compiled MAML step allocates nothing that outlives it (the 10,000-iteration row is
    in benchmarks/maml.py --memory)."""
    learner = MAML(MLP([1, 16, 16, 1], rng=np.random.default_rng(0)), compile=True)
    opt = Adam(learner.meta_parameters(), lr=1e-3)
    batch = small_batch(tasks=5, shots=5, dtype=np.float32)

    def steps(n):
        for _ in range(n):
            _, grads = learner.meta_step(batch)
            opt.step(grads)
    steps(20)
    gc.collect()
    tracemalloc.start()
    try:
        steps(20)
        growth = []
        for _ in range(3):  # three windows of 100 iterations
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            steps(100)
            gc.collect()
            growth.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
    # numpy reports its buffers to tracemalloc; a leak of one gradient set per iteration
    # would be 100 * ~1.5 kB in every window. One window can grow by a few kB when an
    # interpreter cache happens to warm up inside it (seen in about 1 run in 6 with a
    # single window), so the quietest window must stay under 8 kB.
    assert min(growth) < 8 * 1024, growth


def test_hyperoptimizer_compiled_equals_eager():
    from tinygrad_meta.meta.hyperopt import HyperOptimizer, make_hyperparameters
    x = tgm.Tensor(np.linspace(-1, 1, 8), dtype="float64")
    y = 3.0 * x

    def run(compiled):
        loss = lambda p, *step: ((p["w"] * x - y) ** 2).mean()  # noqa: E731
        opt = HyperOptimizer(loss, loss, {"w": np.array(0.0)}, make_hyperparameters(4, lr=0.01),
                             steps=4, meta_lr=0.1, compile=compiled)
        history = opt.run(4, progress=False)
        return history["val_loss"], history["hypergrad_norm"], opt.hyperparams["log_lr"].numpy()
    eager, compiled = run(False), run(True)
    assert eager[:2] == compiled[:2]
    same(eager[2], compiled[2])


def test_hvp_compile_option_equals_eager():
    w = rng_tensor(5, 4, dtype="float64")

    def f(x):
        return ((x * w).tanh() ** 2).sum()
    for seed in range(3):
        x, v = rng_tensor(seed, 4, dtype="float64"), rng_tensor(seed + 10, 4, dtype="float64")
        same(tgm.hvp(f, x, v), tgm.hvp(f, x, v, compile=True))
    with pytest.raises(ValueError, match="create_graph"):
        tgm.hvp(f, x, v, create_graph=True, compile=True)


def test_conv_and_pooling_second_order():
    """Runs once the convolution ops are in (they live on another branch until merged)."""
    F = tgm.functional
    if not hasattr(F, "conv2d") or not hasattr(F, "max_pool2d"):
        pytest.skip("tgm.functional.conv2d / max_pool2d are not in this tree yet")
    w = rng_tensor(0, 4, 1, 3, 3, requires_grad=True)
    b = rng_tensor(1, 4, requires_grad=True)

    def fn(x):
        loss = (F.max_pool2d(F.conv2d(x, w, b, padding=1).relu(), 2) ** 2).mean()
        gw, gb = tgm.grad(loss, [w, b], create_graph=True)
        return loss, tgm.grad((gw ** 2).sum() + (gb ** 2).sum(), [w, b])
    check_replays(fn, lambda i: (rng_tensor(i, 2, 1, 6, 6),))


def test_hasattr_on_a_traced_array_follows_numpy():
    def fn(x):
        data = x.data
        assert hasattr(data, "shape") and not hasattr(data, "_graph_ops")
        return x * 2.0
    check_replays(fn, lambda i: (rng_tensor(i, 3),))


# ---- repeated pure calls are computed once (common-subexpression merging) ----------

def test_repeated_pure_call_is_computed_once_and_matches_eager():
    def f(x):
        return (x * 3.0 + 1.0) + (x * 3.0).sum(axis=0)

    step = tgm.compile(f)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5))
    step(x)
    source = step.program_source(x)
    assert source.count("(s0, 3.0, )") == 1, source  # the second x * 3.0 reads the first
    x2 = rng.standard_normal((4, 5))
    same(step(x2), f(x2))


def test_merged_outputs_stay_distinct_arrays():
    # the caller receives two arrays, as eager gives; merging must not hand back one twice
    # (the second product, merged into the first, would make b a view of a)
    step = tgm.compile(lambda x: (x * 2.0, (x * 2.0).reshape(2, 3)))
    x = np.arange(6.0)
    step(x)
    a, b = step(x)
    assert not np.shares_memory(a, b)
    a += 1.0
    same(b, (x * 2.0).reshape(2, 3))


def test_in_place_write_ends_a_merge_of_what_read_the_written_memory():
    def f(x):
        y = x + 0.0
        before = y.reshape(2, 3).sum(axis=1)
        np.add(y, 1.0, out=y)  # the same reshape and sum after it read other values
        after = y.reshape(2, 3).sum(axis=1) * 1.0  # not an output itself: may be merged
        return before, after

    step = tgm.compile(f)
    x = np.arange(6.0)
    step(x)
    before, after = step(x)
    same(before, np.array([3.0, 12.0]))
    same(after, np.array([6.0, 15.0]))


def test_cross_entropy_compiles_and_keeps_its_label_check():
    """cross_entropy's gradient scatters through the labels (an input): the replay follows
    new labels bit for bit, and labels out of range still raise the eager error."""
    from tinygrad_meta.functional import cross_entropy
    w = tgm.Tensor(np.arange(12.0).reshape(3, 4) / 10, requires_grad=True)

    @tgm.compile
    def step(x, y):
        loss = cross_entropy(tgm.Tensor(x) @ w, y)
        return loss, tgm.grad(loss, [w])
    x = np.random.default_rng(0).standard_normal((5, 3))
    for y in (np.array([0, 1, 2, 3, 0]), np.array([3, 3, 2, 1, 1])):
        loss, (gw,) = step(x, y)
        eager = cross_entropy(tgm.Tensor(x) @ w, y)
        (ge,) = tgm.grad(eager, [w])
        assert float(loss) == eager.item() and np.array_equal(gw.numpy(), ge.numpy())
    assert step.cache_info().traces == 1
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        step(x, np.array([0, 1, 2, 4, 0]))
