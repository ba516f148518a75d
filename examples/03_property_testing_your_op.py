"""03: add your own op (softplus) with its backward rule, then prove it right.

What it teaches:
* An op is what every entry of the engine's op table (tinygrad_meta/ops.py) is: a
  forward on raw arrays plus a backward rule `vjp(o, g, out, ins, params, needs)` written
  once over the namespace `o`. `record(op, x)` applies it to Tensors.
* At first order the rule runs on raw arrays; with `create_graph=True` the same code runs
  on Tensors and is recorded, so the op can be differentiated again for free.
* `gradcheck` checks first derivatives against finite differences, `gradgradcheck` the
  second; the hypothesis strategy `tensors()` throws many shapes and values at them.
* The classic bug: computing the derivative with numpy directly inside the rule, instead
  of through `o`. The first derivative is right, so `gradcheck` passes -- but the result
  is a constant to autograd, the second derivative comes out 0, and `gradgradcheck`
  catches it. A rule whose own derivative has the wrong formula is caught the same way.

Run: python examples/03_property_testing_your_op.py [--quick]
Ends with a printed table of which checks pass and fail.
"""
import numpy as np

from _common import quick_mode, table

import tinygrad_meta as tgm
from tinygrad_meta.ops import Op
from tinygrad_meta.tensor import Tensor, record
from tinygrad_meta.testing import GradcheckError, gradcheck, gradgradcheck

QUICK = quick_mode()


def softplus_forward(x):
    """log(1 + exp(x)), computed stably as logaddexp(0, x)."""
    return np.logaddexp(0, x).astype(x.dtype, copy=False)


# ---- the op, done right ---------------------------------------------------------------

def softplus_vjp(o, g, out, ins, params, needs):
    # d/dx log(1 + e^x) = sigmoid(x), through o: raw arrays at first order, Tensors after
    return (g * o.sigmoid(ins[0]),)


SOFTPLUS = Op("my_softplus", softplus_forward, 1, softplus_vjp)


def softplus(x):
    return record(SOFTPLUS, x)


# ---- bug 1: the derivative computed with numpy directly ------------------------------------

def softplus_vjp_numpy(o, g, out, ins, params, needs):
    s = 1.0 / (1.0 + np.exp(-o.raw(ins[0])))     # numpy: right numbers, but outside the graph
    return (g * s,)


SOFTPLUS_NUMPY = Op("my_softplus_numpy", softplus_forward, 1, softplus_vjp_numpy)


def softplus_raw_rule(x):
    return record(SOFTPLUS_NUMPY, x)


# ---- bug 2: a hand-written sigmoid op whose own derivative has the wrong sign ----------

SIGMOID_WRONG = Op("my_sigmoid", lambda x: (1.0 / (1.0 + np.exp(-x))).astype(x.dtype, copy=False), 1,
                   lambda o, g, out, ins, params, needs: (g * out * (1.0 + out),))  # should be 1 - out
SOFTPLUS_WRONG_SECOND = Op("my_softplus_wrong_second", softplus_forward, 1,
                           lambda o, g, out, ins, params, needs: (g * o.apply(SIGMOID_WRONG, ins[0]),))


def softplus_wrong_second(x):
    return record(SOFTPLUS_WRONG_SECOND, x)


# ---- the checks ---------------------------------------------------------------------------

def outcome(check, f, x):
    try:
        check(lambda t: f(t), [x])
        return "pass", ""
    except GradcheckError as error:
        return "FAIL", str(error).splitlines()[0]


def main():
    x = Tensor(np.array([[-3.0, -0.5], [0.0, 1.5], [4.0, 20.0]]), dtype="float64")
    forward = softplus(x).numpy()
    reference = np.log1p(np.exp(-np.abs(x.numpy()))) + np.maximum(x.numpy(), 0)
    assert np.allclose(forward, reference, rtol=1e-12), "forward disagrees with numpy"
    big = softplus(Tensor([-800.0, 800.0], dtype="float64")).numpy()
    print(f"forward matches numpy; stable at the extremes: softplus(-800) = {big[0]:.3g}, "
          f"softplus(800) = {big[1]:.6g}\n")

    rows, results, messages = [], {}, []
    for name, f in [("softplus (rule through o)", softplus),
                    ("bug 1: rule computed with numpy", softplus_raw_rule),
                    ("bug 2: wrong derivative of the rule", softplus_wrong_second)]:
        (first, why_first), (second, why_second) = outcome(gradcheck, f, x), outcome(gradgradcheck, f, x)
        results[name] = (first, second)
        rows.append([name, first, second])
        messages += [f"  {name}:\n    {why}" for why in (why_first, why_second) if why]
    table(["op", "gradcheck (1st)", "gradgradcheck (2nd)"], rows)
    print("\nwhat the failing checks said:")
    print("\n".join(messages) + "\n")
    # the whole point: both bugs get past the first-order check and are caught by the second
    assert results["softplus (rule through o)"] == ("pass", "pass")
    for name in ("bug 1: rule computed with numpy", "bug 2: wrong derivative of the rule"):
        assert results[name] == ("pass", "FAIL"), name

    # the second derivative the raw-array rule gives is exactly 0: the graph was cut
    t = Tensor([0.3], dtype="float64", requires_grad=True)
    (d1,) = tgm.grad(softplus_raw_rule(t).sum(), [t], create_graph=True)
    print(f"bug 1 explained: its first derivative at 0.3 is {d1.item():.6f} (right), but it "
          f"{'does not require grad' if not d1.requires_grad else 'still has a graph'}, so "
          "d2/dx2 = 0 instead of sigmoid'(0.3) = "
          f"{(1 / (1 + np.exp(-0.3))) * (1 - 1 / (1 + np.exp(-0.3))):.6f}\n")

    try:
        from hypothesis import HealthCheck, given, settings, strategies as st
        from tinygrad_meta.testing import tensors
    except ImportError:
        print("(hypothesis is not installed, so no property tests; pip install \"tinygrad-meta[test]\")")
        return
    examples = 10 if QUICK else 60
    values = st.floats(-6.0, 6.0, allow_nan=False, allow_infinity=False)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(tensors(elements=values))
    def property_softplus(t):
        gradcheck(softplus, [t])
        gradgradcheck(softplus, [t])

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, print_blob=False,
              suppress_health_check=[HealthCheck.too_slow])
    @given(tensors(elements=values))
    def property_buggy(t):
        gradgradcheck(softplus_wrong_second, [t])

    property_softplus()
    print(f"hypothesis: softplus passed gradcheck and gradgradcheck on {examples} random tensors "
          "(0-d to 3-d, values in [-6, 6])")
    try:
        property_buggy()
        raise SystemExit("hypothesis did not catch bug 2")
    except GradcheckError as error:
        print("hypothesis caught bug 2 and shrank it to a small failing example:")
        print("  " + str(error).splitlines()[0])


if __name__ == "__main__":
    main()
