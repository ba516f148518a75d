"""hvp, jvp, jacobian, hessian: known values, the algebra that ties them together, and
third-order checks of tensor compositions."""
import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta.testing import check_grads, gradcheck

RNG = np.random.default_rng(1234)
A = RNG.standard_normal((3, 3))
B = RNG.standard_normal((3, 2))


def T(array, requires_grad=False):
    return tgm.Tensor(np.asarray(array, dtype=np.float64), dtype="float64", requires_grad=requires_grad)


def scalar_f(x):
    """A non-quadratic scalar function with a dense Hessian."""
    h = (T(A) @ x).tanh()
    return (h * h).sum() + (x * x.sum()).exp().sum() * 0.1


X0 = np.array([0.3, -0.5, 0.8])
V0 = np.array([1.0, 0.5, -2.0])


def test_hessian_of_a_sum_of_cubes_is_diagonal_6x():
    x = T([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(tgm.hessian(lambda t: (t ** 3).sum(), x).numpy(), np.diag(6 * x.numpy()))


def test_hessian_is_symmetric():
    H = tgm.hessian(scalar_f, T(X0)).numpy()
    assert H.shape == (3, 3)
    assert np.abs(H - np.diag(np.diag(H))).max() > 1e-3  # dense, so symmetry says something
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-14)


def test_hessian_of_a_matrix_input_has_shape_x_by_x_and_is_symmetric():
    f = lambda w: (T(X0[:2]) @ w).tanh().sum() * (w * w).sum()
    H = tgm.hessian(f, T(RNG.standard_normal((2, 3)))).numpy()
    assert H.shape == (2, 3, 2, 3)
    flat = H.reshape(6, 6)
    np.testing.assert_allclose(flat, flat.T, rtol=1e-12, atol=1e-14)


def test_hvp_equals_hessian_times_v():
    H = tgm.hessian(scalar_f, T(X0)).numpy()
    hv = tgm.hvp(scalar_f, T(X0), T(V0)).numpy()
    np.testing.assert_allclose(hv, H @ V0, rtol=1e-12, atol=1e-14)


def test_jacobian_of_a_known_map():
    # f(x) = A tanh(x): J = A diag(1 - tanh(x)^2)
    J = tgm.jacobian(lambda x: T(A) @ x.tanh(), T(X0)).numpy()
    np.testing.assert_allclose(J, A * (1 - np.tanh(X0) ** 2), rtol=1e-12)


def test_jacobian_shape_is_output_shape_plus_input_shape():
    J = tgm.jacobian(lambda w: (w.T @ T(B)).exp(), T(RNG.standard_normal((3, 4))))
    assert J.shape == (4, 2, 3, 4)


def test_jvp_equals_jacobian_times_v():
    f = lambda x: (T(B).T @ x).tanh() * x[:2]
    out, jv = tgm.jvp(f, T(X0), T(V0))
    J = tgm.jacobian(f, T(X0)).numpy()
    np.testing.assert_allclose(out.numpy(), f(T(X0)).numpy(), rtol=1e-15)
    np.testing.assert_allclose(jv.numpy(), J @ V0, rtol=1e-12, atol=1e-14)


def test_list_inputs_give_lists_and_hessian_blocks_transpose_into_each_other():
    f = lambda a, b: ((a @ b).tanh() ** 2).sum()
    a, b = T(RNG.standard_normal((2, 3))), T(B)
    va, vb = T(np.ones((2, 3))), T(np.full((3, 2), 0.5))
    (Haa, Hab), (Hba, Hbb) = [[h.numpy() for h in row] for row in tgm.hessian(f, [a, b])]
    assert Hab.shape == (2, 3, 3, 2) and Hba.shape == (3, 2, 2, 3)
    np.testing.assert_allclose(Hab, np.transpose(Hba, (2, 3, 0, 1)), rtol=1e-12, atol=1e-14)
    hva, hvb = tgm.hvp(f, [a, b], [va, vb])
    expected_a = np.tensordot(Haa, va.numpy(), 2) + np.tensordot(Hab, vb.numpy(), 2)
    expected_b = np.tensordot(Hba, va.numpy(), 2) + np.tensordot(Hbb, vb.numpy(), 2)
    np.testing.assert_allclose(hva.numpy(), expected_a, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(hvb.numpy(), expected_b, rtol=1e-11, atol=1e-13)


def test_hvp_with_create_graph_is_differentiable_with_respect_to_the_callers_input():
    v = T(V0)
    assert gradcheck(lambda x: tgm.hvp(scalar_f, x, v, create_graph=True), [T(X0)])


def test_derivative_helpers_leave_the_inputs_alone():
    x = T(X0, requires_grad=True)
    tgm.hessian(scalar_f, x)
    tgm.hvp(scalar_f, x, T(V0))
    assert x.grad is None and x.requires_grad


def test_a_function_that_ignores_its_input_has_zero_derivatives():
    x = T(X0)
    np.testing.assert_array_equal(tgm.hessian(lambda t: (t * 2.0).sum(), x).numpy(), np.zeros((3, 3)))
    np.testing.assert_array_equal(tgm.hvp(lambda t: (t * 2.0).sum(), x, T(V0)).numpy(), np.zeros(3))


def test_derivative_helpers_reject_non_scalar_functions_and_bad_vectors():
    with pytest.raises(ValueError, match=r"hessian: f must return a scalar, got shape \(3,\)"):
        tgm.hessian(lambda t: t * 2.0, T(X0))
    with pytest.raises(ValueError, match=r"hvp: vector 0 has shape \(2,\), input 0 has shape \(3,\)"):
        tgm.hvp(scalar_f, T(X0), T([1.0, 2.0]))
    with pytest.raises(TypeError, match="jacobian: inputs must be a Tensor or a list of Tensors"):
        tgm.jacobian(lambda t: t, 3.0)


# ---- third order: tensor compositions ------------------------------------------------

THIRD_ORDER = {
    "tanh": (lambda x: (x.tanh() * x).sum(axis=0), [X0.reshape(3, 1) @ np.ones((1, 2))]),
    "exp": (lambda x: (x.exp() / (x * x + 1.0)).mean(), [X0]),
    "log_softmax": (lambda x: tgm.functional.log_softmax(x, axis=-1)[:, 0], [RNG.standard_normal((2, 3))]),
    "matmul chain": (lambda x, w1, w2: ((x @ w1).tanh() @ w2).sum(),
                     [RNG.standard_normal((2, 3)), RNG.standard_normal((3, 3)) * 0.5,
                      RNG.standard_normal((3, 2))]),
    "mlp with relu and cross_entropy": (
        lambda w, x: tgm.functional.cross_entropy((x @ w).relu() * 2.0 - x[:, :2].tanh(), np.array([0, 1, 1])),
        [np.array([[0.5, -0.3], [1.0, 0.7], [-0.2, 0.9]]), np.array([[1.0, 0.5, -0.5], [0.3, 0.2, 1.0], [2.0, -1.0, 0.1]])]),
}


@pytest.mark.parametrize("name", list(THIRD_ORDER))
def test_tensor_compositions_match_finite_differences_to_third_order(name):
    f, arrays = THIRD_ORDER[name]
    assert check_grads(f, [T(a) for a in arrays], order=3)


# ---- conjugate gradient ------------------------------------------------------------

def spd_matrix(n, condition, seed=0):
    """Q diag(eigenvalues from 1 to ``condition``) Qᵀ: SPD with a known condition number."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q @ np.diag(np.geomspace(1.0, condition, n)) @ q.T


def test_conjugate_gradient_solves_a_known_spd_system_in_at_most_n_iterations():
    a = spd_matrix(6, 50.0)
    b = np.random.default_rng(1).standard_normal(6)
    result = tgm.derivatives.conjugate_gradient(lambda v: a @ v, b, tol=1e-12)
    assert result.converged and result.iterations <= 6 and result.residual <= 1e-12
    np.testing.assert_allclose(result.solution, np.linalg.solve(a, b), rtol=1e-9)
    assert result.curvature > 0


def test_conjugate_gradient_stops_at_the_tolerance_and_reports_its_iterations():
    a = spd_matrix(40, 1e4, seed=2)
    b = np.random.default_rng(3).standard_normal(40)
    loose = tgm.derivatives.conjugate_gradient(lambda v: a @ v, b, tol=1e-2, max_iters=200)
    tight = tgm.derivatives.conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iters=200)
    assert loose.converged and tight.converged
    assert loose.iterations < tight.iterations
    assert tight.residual <= 1e-10 < loose.residual <= 1e-2
    # the reported residual is the true one of the returned solution
    true = np.linalg.norm(b - a @ loose.solution) / np.linalg.norm(b)
    np.testing.assert_allclose(loose.residual, true, rtol=1e-6)
    capped = tgm.derivatives.conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iters=3)
    assert capped.iterations == 3 and not capped.converged and capped.residual > 1e-10


def test_conjugate_gradient_on_a_list_of_arrays_with_hessian_vector_products():
    # f(x, y) = 0.5 xᵀ A x + 0.5 * 3 y² + x₀ y: one Hessian over both inputs
    a = spd_matrix(3, 10.0, seed=4)
    f = lambda x, y: 0.5 * (x * (T(a) @ x)).sum() + 1.5 * (y * y).sum() + (x[0] * y).sum()
    hessian = np.zeros((4, 4))
    hessian[:3, :3], hessian[3, 3] = a, 3.0
    hessian[0, 3] = hessian[3, 0] = 1.0
    point = [T(np.zeros(3)), T(np.zeros(1))]

    def matvec(vectors):
        return [h.numpy() for h in tgm.hvp(lambda x, y: f(x, y), point, [T(v) for v in vectors])]

    b = [np.array([1.0, -2.0, 0.5]), np.array([2.0])]
    result = tgm.derivatives.conjugate_gradient(matvec, b, tol=1e-12)
    expected = np.linalg.solve(hessian, np.concatenate(b))
    np.testing.assert_allclose(np.concatenate(result.solution), expected, rtol=1e-9)
    assert [s.shape for s in result.solution] == [(3,), (1,)]


def test_conjugate_gradient_stops_on_negative_curvature():
    a = np.diag([2.0, -1.0])
    result = tgm.derivatives.conjugate_gradient(lambda v: a @ v, np.array([0.0, 1.0]))
    assert not result.converged and result.curvature <= 0 and result.iterations == 0


def test_conjugate_gradient_of_a_zero_right_hand_side_is_zero_at_once():
    result = tgm.derivatives.conjugate_gradient(lambda v: 2 * v, np.zeros(3))
    assert result.converged and result.iterations == 0 and not result.solution.any()
