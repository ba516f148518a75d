"""Bad input gets a clear error that names the problem: shapes, dtypes, devices, indices,
and misuse of grad()/backward(). No public call lets a bare numpy message through."""
import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta.backends.cpu import CPUBackend

T = tgm.Tensor


def leaf(shape, dtype="float32"):
    return T(np.ones(shape), dtype=dtype, requires_grad=True)


# ---- shapes --------------------------------------------------------------------------

def test_matmul_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(25, 40\) and \(41, 1\) don't align"):
        leaf((25, 40)) @ leaf((41, 1))


def test_batched_matmul_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3, 4\) and \(3, 4, 5\)"):
        leaf((2, 3, 4)) @ leaf((3, 4, 5))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow"])
def test_broadcast_mismatch_names_both_shapes(op):
    fn = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / b, "pow": lambda a, b: a ** b}[op]
    with pytest.raises(ValueError, match=rf"{op}: shapes \(2, 3\) and \(4,\) are not compatible"):
        fn(leaf((2, 3)), leaf((4,)))


def test_broadcast_to_names_the_shape_and_the_target():
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast shape \(2, 3\) to \(3, 3\)"):
        leaf((2, 3)).broadcast_to((3, 3))


# ---- grad() and backward() misuse -----------------------------------------------------

def test_backward_of_a_non_scalar_needs_a_gradient():
    with pytest.raises(RuntimeError, match=r"backward: output 0 has shape \(2, 3\).*only for a scalar"):
        (leaf((2, 3)) * 2.0).backward()


def test_grad_of_a_non_scalar_needs_grad_outputs():
    x = leaf((3,))
    with pytest.raises(RuntimeError, match=r"grad: output 0 has shape \(3,\).*pass grad_outputs"):
        tgm.grad(x * 2.0, [x])


def test_grad_outputs_of_the_wrong_shape_names_both_shapes():
    x = leaf((3,))
    with pytest.raises(ValueError, match=r"grad_outputs has shape \(2,\) but the output has shape \(3,\)"):
        tgm.grad(x * 2.0, [x], grad_outputs=[T([1.0, 1.0])])


def test_an_unused_input_is_an_error_unless_allow_unused():
    x, unused = leaf((2,)), leaf((3,))
    with pytest.raises(RuntimeError, match="grad: input 1 was not used.*allow_unused=True"):
        tgm.grad((x * 2.0).sum(), [x, unused])
    gx, gu = tgm.grad((x * 2.0).sum(), [x, unused], allow_unused=True)
    assert gu is None and gx.numpy().tolist() == [2.0, 2.0]


def test_grad_of_a_tensor_that_does_not_require_grad():
    with pytest.raises(RuntimeError, match="grad: input 0 does not require grad"):
        tgm.grad((leaf((2,)) * 2.0).sum(), [T([1.0, 2.0])])


def test_grad_or_backward_of_an_output_without_a_graph():
    with pytest.raises(RuntimeError, match="grad: output 0 does not require grad"):
        tgm.grad(T([1.0]).sum(), [leaf((1,))])
    x = leaf((1,))
    with tgm.no_grad():
        y = (x * 2.0).sum()
    with pytest.raises(RuntimeError, match="backward: the output does not require grad.*no_grad"):
        y.backward()


# ---- dtypes and devices --------------------------------------------------------------

@pytest.mark.parametrize("op", [
    lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a @ b.reshape(3, 1),
    lambda a, b: tgm.concatenate([a, b]), lambda a, b: tgm.where(True, a, b),
    lambda a, b: tgm.maximum(a, b), lambda a, b: tgm.stack([a, b])])
def test_mixing_float32_and_float64_raises_naming_both_dtypes(op):
    with pytest.raises(TypeError, match="dtype mismatch float32 and float64"):
        op(leaf((3,), "float32"), leaf((3,), "float64"))


def test_an_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="only floating point tensors can require grad, not int64"):
        T(np.array([1, 2], dtype=np.int64), requires_grad=True)
    with pytest.raises(TypeError, match="not int32"):
        T(np.array([1, 2], dtype=np.int32)).requires_grad_()


def test_unknown_dtypes_and_devices_are_named():
    with pytest.raises(TypeError, match="unknown dtype 'float17'"):
        T([1.0], dtype="float17")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        T([1.0], device="tpu")


class _OtherDevice(CPUBackend):
    """A second host backend: a stand-in for "cuda" that needs no GPU."""
    name = "other"


def test_mixing_devices_raises_naming_both():
    here = leaf((2,))
    there = T([1.0, 2.0], device=_OtherDevice(), requires_grad=True)
    assert there.device == "other"
    with pytest.raises(RuntimeError, match=r"different devices \(cpu and other\).*\.to\(device\)"):
        here + there
    with pytest.raises(RuntimeError, match="different devices"):
        here @ there


# ---- indexing ------------------------------------------------------------------------

@pytest.mark.parametrize("index", [(0, 5), 7, (slice(None), [0, 3]), (0, 0, 0)])
def test_indexing_out_of_range_is_our_index_error_naming_the_shape(index):
    with pytest.raises(IndexError, match=r"getitem: .*\(tensor shape \(2, 3\)\)"):
        leaf((2, 3))[index]


# ---- no bare numpy messages ----------------------------------------------------------

BAD_CALLS = {
    "sum axis": (lambda: leaf((2, 3)).sum(axis=2), ValueError, r"sum: axis 2 is out of range .* 2 dims"),
    "max axis of 0-d": (lambda: leaf(()).max(axis=0), ValueError, r"max: axis 0 is out of range .* 0 dims"),
    "repeated axis": (lambda: leaf((2, 3)).sum(axis=(1, -1)), ValueError, r"sum: repeated axis"),
    "mean of empty": (lambda: T(np.zeros((0, 3))).mean(axis=0), ValueError, r"mean: .*empty .*\(0, 3\)"),
    "max of empty": (lambda: T(np.zeros((0, 3))).max(), ValueError, r"max: empty tensor of shape \(0, 3\)"),
    "reshape": (lambda: leaf((2, 3)).reshape(4, 2), ValueError, r"reshape: cannot reshape \(2, 3\)"),
    "permute": (lambda: leaf((2, 3)).permute(0, 0), ValueError, r"permute: \(0, 0\) is not a permutation"),
    "swapaxes": (lambda: leaf((2, 3)).swapaxes(0, 4), ValueError, r"swapaxes: axis 4 is out of range"),
    "mT of 1-d": (lambda: leaf((3,)).mT, ValueError, r"mT: needs .* at least 2 dims"),
    "concatenate": (lambda: tgm.concatenate([leaf((2, 3)), leaf((2, 2))]), ValueError,
                    r"concatenate: shapes \(2, 3\) and \(2, 2\)"),
    "stack": (lambda: tgm.stack([leaf((2,)), leaf((3,))]), ValueError, r"stack: all tensors must have one shape"),
    "matmul 0-d": (lambda: leaf((3,)) @ leaf(()), ValueError, r"matmul: operands must be at least 1-D"),
    "item": (lambda: leaf((3,)).item(), ValueError, r"item: tensor has 3 elements"),
    "truth value": (lambda: bool(leaf((3,))), ValueError, r"truth value of a tensor with 3 elements"),
    "string operand": (lambda: leaf((3,)) + "a", TypeError, r"add: cannot use str as a tensor operand"),
    "ragged data": (lambda: T([[1.0], [1.0, 2.0]]), TypeError, r"Tensor: cannot make an array from list"),
    "string data": (lambda: T("abc"), TypeError, r"Tensor: unsupported dtype"),
    "negative shape": (lambda: tgm.zeros((2, -1)), ValueError, r"negative dimension in shape \(2, -1\)"),
    "clip without bounds": (lambda: leaf((2,)).clip(), ValueError, r"clip: give min, max or both"),
    "negative rpow base": (lambda: (-2.0) ** leaf((2,)), ValueError, r"pow: a number base must be >= 0"),
    "cross_entropy float labels": (lambda: tgm.functional.cross_entropy(leaf((2, 3)), np.array([0.5, 1.0])),
                                   TypeError, r"cross_entropy: labels must be integers"),
    "cross_entropy label range": (lambda: tgm.functional.cross_entropy(leaf((2, 3)), np.array([0, 3])),
                                  ValueError, r"cross_entropy: labels must lie in \[0, 3\)"),
    "cross_entropy label shape": (lambda: tgm.functional.cross_entropy(leaf((2, 3)), np.array([0])),
                                  ValueError, r"cross_entropy: logits of shape \(2, 3\) need labels of shape \(2,\)"),
    "mse_loss shapes": (lambda: tgm.functional.mse_loss(leaf((4, 1)), leaf((4,))), ValueError,
                        r"mse_loss: prediction shape \(4, 1\) != target shape \(4,\)"),
    "softmax axis": (lambda: tgm.functional.softmax(leaf((2, 3)), axis=2), ValueError, r"softmax: axis 2"),
    "grad with no inputs": (lambda: tgm.grad(leaf((1,)).sum(), []), ValueError, r"grad: inputs is empty"),
    "grad_outputs count": (lambda: tgm.grad(leaf((1,)).sum(), [leaf((1,))], grad_outputs=[1.0, 2.0]),
                           ValueError, r"grad: got 1 outputs but 2 grad_outputs"),
    "hessian of non-scalar": (lambda: tgm.hessian(lambda t: t * 2.0, leaf((3,))), ValueError,
                              r"hessian: f must return a scalar"),
    "Value plus Tensor": (lambda: tgm.Value(1.0) + leaf((3,)), TypeError, r"cannot combine a Value with a Tensor"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_calls_raise_our_message(name):
    call, error, pattern = BAD_CALLS[name]
    with pytest.raises(error, match=pattern) as info:
        call()
    # our errors are raised from our own code, not re-raised numpy internals
    assert "numpy" not in type(info.value).__module__
