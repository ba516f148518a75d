"""functional.binary_cross_entropy(_with_logits) and functional.accuracy: PyTorch's
semantics, exact at logits of magnitude 1e4, differentiable to second order."""
import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import functional as F
from tinygrad_meta.testing import gradcheck, gradgradcheck


def _t64(values, requires_grad=False):
    return tgm.Tensor(np.asarray(values, dtype=np.float64), dtype="float64", requires_grad=requires_grad)


def _numpy_bce(p, y):
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def test_bce_with_logits_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3)) * 3, rng.uniform(size=(4, 3))
    loss = F.binary_cross_entropy_with_logits(_t64(x), y)
    assert loss.shape == ()
    np.testing.assert_allclose(loss.item(), _numpy_bce(1 / (1 + np.exp(-x)), y), rtol=1e-12)


def test_bce_with_logits_is_exact_and_finite_for_logits_of_magnitude_1e4():
    x = _t64([1e4, -1e4, 1e4, -1e4], requires_grad=True)
    y = [1.0, 0.0, 0.0, 1.0]
    loss = F.binary_cross_entropy_with_logits(x, y)
    # right and confident: 0; wrong by 1e4: 1e4 each; mean over four elements
    assert loss.item() == (0 + 0 + 1e4 + 1e4) / 4
    (g,) = tgm.grad(loss, [x])
    # d/dx = (sigmoid(x) - y) / N, saturated
    np.testing.assert_array_equal(g.numpy(), [0.0, 0.0, 0.25, -0.25])


def test_bce_with_logits_passes_gradcheck_and_gradgradcheck_in_logits_and_targets():
    rng = np.random.default_rng(1)
    x, y = _t64(rng.standard_normal(5) * 2), _t64(rng.uniform(size=5))
    assert gradcheck(F.binary_cross_entropy_with_logits, [x, y])
    assert gradgradcheck(F.binary_cross_entropy_with_logits, [x, y])


def test_bce_of_probabilities_matches_the_formula_and_its_derivatives():
    rng = np.random.default_rng(2)
    p, y = rng.uniform(0.05, 0.95, size=(3, 2)), rng.uniform(size=(3, 2))
    np.testing.assert_allclose(F.binary_cross_entropy(_t64(p), y).item(), _numpy_bce(p, y), rtol=1e-12)
    assert gradcheck(F.binary_cross_entropy, [_t64(p), _t64(y)])
    assert gradgradcheck(F.binary_cross_entropy, [_t64(p), _t64(y)])


def test_bce_of_probabilities_clamps_each_log_at_minus_100_like_torch():
    p = _t64([0.0, 1.0, 0.0], requires_grad=True)
    loss = F.binary_cross_entropy(p, [1.0, 0.0, 0.0])
    assert loss.item() == pytest.approx(200.0 / 3, rel=1e-12)   # two wrong elements, one right
    (g,) = tgm.grad(loss, [p])
    assert np.isfinite(g.numpy()).all()


def test_bce_rejects_bad_probabilities_and_mismatched_shapes():
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\].*with_logits"):
        F.binary_cross_entropy(_t64([0.5, 1.5]), [1.0, 0.0])
    with pytest.raises(ValueError, match=r"targets of shape \(3,\) must have the inputs' shape \(2,\)"):
        F.binary_cross_entropy_with_logits(_t64([0.5, 1.5]), [1.0, 0.0, 1.0])


def test_bce_matches_torch_when_torch_is_installed():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal(6) * 5, rng.uniform(size=6)
    ours = F.binary_cross_entropy_with_logits(_t64(x), y).item()
    theirs = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(y)).item()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    p = 1 / (1 + np.exp(-x))
    ours = F.binary_cross_entropy(_t64(p), y).item()
    theirs = torch.nn.functional.binary_cross_entropy(torch.tensor(p), torch.tensor(y)).item()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_accuracy_of_class_logits_is_a_plain_float():
    logits = tgm.Tensor([[2.0, 0.1, 0.0], [0.3, 0.9, 0.1], [0.0, 0.2, 1.0], [1.0, 0.0, 0.5]],
                        requires_grad=True)
    result = F.accuracy(logits, np.array([0, 1, 1, 0]))
    assert type(result) is float and result == 0.75


def test_accuracy_of_one_logit_per_example_thresholds_at_zero():
    assert F.accuracy(tgm.Tensor([2.0, -1.0, 0.5, -0.2]), [1, 0, 0, 0]) == 0.75


def test_accuracy_rejects_labels_of_the_wrong_shape_or_dtype():
    with pytest.raises(ValueError, match=r"logits of shape \(2, 3\) need labels of shape \(2,\)"):
        F.accuracy(tgm.Tensor(np.zeros((2, 3))), [0, 1, 2])
    with pytest.raises(TypeError, match="labels must be integers"):
        F.accuracy(tgm.Tensor(np.zeros((2, 3))), [0.0, 1.0])
