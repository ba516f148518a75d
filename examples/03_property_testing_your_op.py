"""03: add your own op (softplus) with its backward in Tensor ops, then prove it right.

What it teaches:
* An op is a forward on raw arrays plus a backward rule `rule(out, g) -> (grad per parent,)`
  written in *Tensor ops*; `tinygrad_meta.tensor._make` records the node.
* Because the rule is made of Tensor ops, the op can be differentiated again for free.
* `gradcheck` checks first derivatives against finite differences, `gradgradcheck` the
  second; the hypothesis strategy `tensors()` throws many shapes and values at them.
* The classic bug: computing the derivative on raw arrays (numpy) inside the rule. The
  first derivative is right, so `gradcheck` passes -- but the graph is cut, the second
  derivative comes out 0, and `gradgradcheck` catches it. A rule whose own derivative
  has the wrong formula is caught the same way.

Run: python examples/03_property_testing_your_op.py [--quick]
Ends with a printed table of which checks pass and fail.
"""
import numpy as np

from _common import quick_mode, table

import tinygrad_meta as tgm
from tinygrad_meta.tensor import Tensor, _constant, _make
from tinygrad_meta.testing import GradcheckError, gradcheck, gradgradcheck

QUICK = quick_mode()


# ---- the op, done right ---------------------------------------------------------------

def _softplus_rule(out, g):
    # d/dx log(1 + e^x) = sigmoid(x), in Tensor ops: differentiable again
    (x,) = out._parents
    return (g * x.sigmoid(),)


def softplus(x):
    """log(1 + exp(x)), computed stably as logaddexp(0, x)."""
    data = x._be.xp.logaddexp(0, x.data).astype(x.dtype, copy=False)
    return _make(data, x._be, (x,), _softplus_rule)


# ---- bug 1: the derivative computed on raw arrays -------------------------------------

def _softplus_rule_raw(out, g):
    (x,) = out._parents
    s = 1.0 / (1.0 + np.exp(-x.data))          # numpy: right numbers, but outside the graph
    return (g * _constant(s, x._be),)


def softplus_raw_rule(x):
    data = x._be.xp.logaddexp(0, x.data).astype(x.dtype, copy=False)
    return _make(data, x._be, (x,), _softplus_rule_raw)


# ---- bug 2: a hand-written sigmoid op whose own derivative has the wrong sign ----------

def _sigmoid_op_rule_wrong(out, g):
    return (g * out * (1.0 + out),)             # should be out * (1 - out)


def _sigmoid_op(x):
    data = (1.0 / (1.0 + x._be.xp.exp(-x.data))).astype(x.dtype, copy=False)
    return _make(data, x._be, (x,), _sigmoid_op_rule_wrong)


def _softplus_rule_wrong_second(out, g):
    (x,) = out._parents
    return (g * _sigmoid_op(x),)


def softplus_wrong_second(x):
    data = x._be.xp.logaddexp(0, x.data).astype(x.dtype, copy=False)
    return _make(data, x._be, (x,), _softplus_rule_wrong_second)


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
    for name, f in [("softplus (rule in Tensor ops)", softplus),
                    ("bug 1: rule on raw numpy arrays", softplus_raw_rule),
                    ("bug 2: wrong derivative of the rule", softplus_wrong_second)]:
        (first, why_first), (second, why_second) = outcome(gradcheck, f, x), outcome(gradgradcheck, f, x)
        results[name] = (first, second)
        rows.append([name, first, second])
        messages += [f"  {name}:\n    {why}" for why in (why_first, why_second) if why]
    table(["op", "gradcheck (1st)", "gradgradcheck (2nd)"], rows)
    print("\nwhat the failing checks said:")
    print("\n".join(messages) + "\n")
    # the whole point: both bugs get past the first-order check and are caught by the second
    assert results["softplus (rule in Tensor ops)"] == ("pass", "pass")
    for name in ("bug 1: rule on raw numpy arrays", "bug 2: wrong derivative of the rule"):
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
