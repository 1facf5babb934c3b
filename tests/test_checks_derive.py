"""The ★★★ checks accept a correct derivation (written independently here), name each wrong one, and their
closed forms agree with brute force."""

import math

import numpy as np
import pytest
import torch

from minibayeslora import checks


def _fails_with(check, impl, hint):
    with pytest.raises(AssertionError, match=hint):
        check(impl)


# ---- LoRA's gradients ----------------------------------------------------------------------------------------

def _lora_grads(x, grad_y, A, B, s):
    return s * B.T @ grad_y.T @ x, s * grad_y.T @ (x @ A.T)


@pytest.mark.parametrize("wrong, hint", [
    (lambda x, gy, A, B, s: tuple(t / s for t in _lora_grads(x, gy, A, B, s)), "missing the scaling"),
    (lambda x, gy, A, B, s: tuple(t / len(x) for t in _lora_grads(x, gy, A, B, s)), "do not average"),
    (lambda x, gy, A, B, s: _lora_grads(x, gy, A, B, s)[::-1], r"returned \(grad_B, grad_A\)"),
])
def test_lora_grads_check(wrong, hint):
    assert checks.check_lora_grads(_lora_grads)
    _fails_with(checks.check_lora_grads, wrong, hint)


# ---- the gauge between two factorisations ------------------------------------------------------------------

def _gauge_between(A, B, A2, B2):
    return A2 @ torch.linalg.pinv(A)


@pytest.mark.parametrize("wrong, hint", [
    (lambda A, B, A2, B2: A @ torch.linalg.pinv(A2), "that is G⁻¹"),
    (lambda A, B, A2, B2: A2 @ A.T, "pseudo-inverse"),
    (lambda A, B, A2, B2: (A2 @ torch.linalg.pinv(A)).T, "transposed"),
])
def test_gauge_between_check(wrong, hint):
    assert checks.check_gauge_between(_gauge_between)
    assert checks.check_gauge_between(lambda A, B, A2, B2: torch.linalg.inv(torch.linalg.pinv(B) @ B2))  # via B
    _fails_with(checks.check_gauge_between, wrong, hint)


# ---- the best middle point of a quadratic curve in a quadratic bowl ----------------------------------------

def test_best_middle_point_closed_form_matches_quadrature():
    """Minimise ∫₀¹ ½ (θ(t) − c)ᵀ H (θ(t) − c) dt numerically (Gauss–Legendre, normal equations) for a random H."""
    g = torch.Generator().manual_seed(0)
    d = 3
    theta_a, theta_b, c = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(3))
    L = torch.randn(d, d, generator=g, dtype=torch.float64)
    H = L @ L.T + 0.5 * torch.eye(d, dtype=torch.float64)
    nodes, weights = np.polynomial.legendre.leggauss(10)
    t = torch.tensor((nodes + 1) / 2, dtype=torch.float64)
    w = torch.tensor(weights / 2, dtype=torch.float64)
    b0, b1, b2 = (1 - t) ** 2, 2 * t * (1 - t), t ** 2
    # d/dP₁: Σ_j w_j b1_j H (b0_j θa + b1_j P₁ + b2_j θb − c) = 0
    lhs = (w * b1 ** 2).sum() * H
    rhs = H @ ((w * b1).sum() * c - (w * b1 * b0).sum() * theta_a - (w * b1 * b2).sum() * theta_b)
    numeric = torch.linalg.solve(lhs, rhs)
    torch.testing.assert_close(numeric, 2.5 * c - 0.75 * (theta_a + theta_b), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("wrong, hint", [
    (lambda a, b, c: 2 * c - (a + b) / 2, "passes through c"),
    (lambda a, b, c: c, "bends towards it"),
    (lambda a, b, c: (a + b) / 2, "straight line's midpoint"),
    (lambda a, b, c: 2.5 * c - 1.5 * (a + b), "−3/4 each"),
])
def test_best_middle_point_check(wrong, hint):
    assert checks.check_best_middle_point(lambda a, b, c: (5 * c - 1.5 * (a + b)) / 2)
    _fails_with(checks.check_best_middle_point, wrong, hint)


# ---- the two-point JSD is the two-point MI -----------------------------------------------------------------

def _kl(a, b):
    return (a * (a / b).log()).sum(-1)


def _jsd_two(p, q):
    m = (p + q) / 2
    return (_kl(p, m) + _kl(q, m)) / 2


@pytest.mark.parametrize("wrong, hint", [
    (lambda p, q: (_kl(p, q) + _kl(q, p)) / 2, "symmetrised KL"),
    (lambda p, q: 2 * _jsd_two(p, q), "summed the two KLs"),
    (lambda p, q: (_kl((p + q) / 2, p) + _kl((p + q) / 2, q)) / 2, r"KL\(p‖m\), not KL\(m‖p\)"),
    (lambda p, q: _jsd_two(p, q) / math.log(2), "natural logarithms"),
])
def test_two_point_jsd_check(wrong, hint):
    assert checks.check_two_point_jsd(_jsd_two)
    _fails_with(checks.check_two_point_jsd, wrong, hint)


# ---- what a rank-k map gains by fitting noise ----------------------------------------------------------------

def _noise_fit_gain(x, eps, k, sigma):
    Q, _ = torch.linalg.qr(x)                       # orthonormal basis of x's column space
    s = torch.linalg.svdvals(Q.T @ eps)
    return float((s[:k] ** 2).sum() / (2 * sigma ** 2))


def test_noise_fit_gain_matches_gradient_descent_on_a_rank_k_map():
    g = torch.Generator().manual_seed(5)
    n, d, d_out, k, sigma = 120, 5, 4, 2, 0.5
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    eps = sigma * torch.randn(n, d_out, generator=g, dtype=torch.float64)
    U = (0.1 * torch.randn(d_out, k, generator=g, dtype=torch.float64)).requires_grad_()
    V = (0.1 * torch.randn(k, d, generator=g, dtype=torch.float64)).requires_grad_()
    optimizer = torch.optim.LBFGS([U, V], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = ((eps - x @ (U @ V).T) ** 2).sum() / (2 * sigma ** 2)
        loss.backward()
        return loss

    optimizer.step(closure)
    brute = float((eps ** 2).sum() / (2 * sigma ** 2) - closure().detach())
    assert brute == pytest.approx(_noise_fit_gain(x, eps, k, sigma), rel=1e-6)


@pytest.mark.parametrize("wrong, hint", [
    (lambda x, e, k, s: float((torch.linalg.svdvals(e)[:k] ** 2).sum() / (2 * s ** 2)), "project ε first"),
    (lambda x, e, k, s: _noise_fit_gain(x, e, x.shape[1], s), "rank limit"),
    (lambda x, e, k, s: _noise_fit_gain(x, e, k, s) * s, "not /2σ"),
    (lambda x, e, k, s: 2 * _noise_fit_gain(x, e, k, s), "dropped the ½"),
])
def test_noise_fit_gain_check(wrong, hint):
    assert checks.check_noise_fit_gain(_noise_fit_gain)
    _fails_with(checks.check_noise_fit_gain, wrong, hint)
