"""Checks for the ★★★ exercises of notebooks 01–05: results the learner derives, not formulas the text gives.

Each check compares with a closed form derived independently here (or a brute-force computation) and names
the wrong derivations a learner is likely to reach.
"""

from __future__ import annotations

import torch

from . import metrics
from ._check_tools import _call, _diagnose, _ok


def check_lora_grads(lora_grads) -> bool:
    """``lora_grads(x (N, d_in), grad_y (N, d_out), A (r, d_in), B (d_out, r), scaling) -> (grad_A, grad_B)``.

    For y = x W₀ᵀ + s · x Aᵀ Bᵀ and any loss with ∂L/∂y = grad_y: ∂L/∂B = s · grad_yᵀ (x Aᵀ) and
    ∂L/∂A = s · (grad_y B)ᵀ x. The reference is autograd.
    """
    g = torch.Generator().manual_seed(0)
    x, grad_y = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    A = torch.randn(3, 5, generator=g, dtype=torch.float64).requires_grad_()
    B = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    s = 2.5
    (s * (x @ A.T @ B.T) * grad_y).sum().backward()
    got = _call(lora_grads, x, grad_y, A.detach(), B.detach(), s, what="lora_grads")
    if not (isinstance(got, tuple) and len(got) == 2):
        raise AssertionError("lora_grads must return a pair (grad_A, grad_B).")
    got_A, got_B = got
    if isinstance(got_A, torch.Tensor) and got_A.shape == B.shape and isinstance(got_B, torch.Tensor) and got_B.shape == A.shape:
        raise AssertionError("lora_grads returned (grad_B, grad_A): the order is (grad_A, grad_B).")
    A0, B0, n = A.detach(), B.detach(), len(x)
    _diagnose(got_B, B.grad, {
        "∂L/∂B is missing the scaling s = α/r.": B.grad / s,
        "sum over the examples, do not average: grad_y already carries the loss's weighting of each example.": B.grad / n,
    }, "grad_B", atol=1e-8)
    _diagnose(got_A, A.grad, {
        "∂L/∂A is missing the scaling s = α/r.": A.grad / s,
        "sum over the examples, do not average: grad_y already carries the loss's weighting of each example.": A.grad / n,
    }, "grad_A", atol=1e-8)
    zero_B = _call(lora_grads, x, grad_y, A0, torch.zeros_like(B0), s, what="lora_grads")
    if not torch.allclose(zero_B[0], torch.zeros_like(A0)):
        raise AssertionError("with B = 0, ∂L/∂A must be exactly zero: A's gradient flows through B.")
    return _ok("check_lora_grads")


def check_gauge_between(gauge_between) -> bool:
    """``gauge_between(A, B, A2, B2) -> G (r, r)`` with A2 = G A and B2 = B G⁻¹ (A full row rank)."""
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    G = torch.randn(3, 3, generator=g, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    A2, B2 = G @ A, B @ torch.linalg.inv(G)
    got = _call(gauge_between, A, B, A2, B2, what="gauge_between", shape_hint="A is (r, d_in), B is (d_out, r); G is (r, r).")
    _diagnose(got, G, {
        "that is G⁻¹: you solved A = G A2 (or B2 = B G) the other way round.": torch.linalg.inv(G),
        "A2 Aᵀ is not enough: A is not orthogonal, so multiply by (A Aᵀ)⁻¹ (i.e. use the pseudo-inverse A⁺).": A2 @ A.T,
        "G is transposed: A2 = G A, so G acts on A from the left.": G.T,
    }, "gauge_between", atol=1e-8)
    return _ok("check_gauge_between")


def check_best_middle_point(best_middle_point) -> bool:
    """``best_middle_point(theta_a, theta_b, c) -> P1`` minimising ∫₀¹ ½ (θ(t) − c)ᵀ H (θ(t) − c) dt over a quadratic
    Bézier curve θ(t) = (1−t)² θ_a + 2t(1−t) P₁ + t² θ_b, for any positive-definite H.

    Closed form: ∫b₁² = 2/15, ∫b₁b₀ = ∫b₁b₂ = 1/10, ∫b₁ = 1/3, so P₁ = (5/2) c − (3/4)(θ_a + θ_b).
    """
    g = torch.Generator().manual_seed(2)
    theta_a, theta_b, c = (torch.randn(4, generator=g, dtype=torch.float64) for _ in range(3))
    expected = 2.5 * c - 0.75 * (theta_a + theta_b)
    got = _call(best_middle_point, theta_a, theta_b, c, what="best_middle_point", shape_hint="all inputs are (d,) vectors.")
    _diagnose(got, expected, {
        "that curve passes through c at t = ½ (P₁ = 2c − (θ_a + θ_b)/2); minimise the loss over all of t, not at one point.":
            2 * c - 0.5 * (theta_a + theta_b),
        "P₁ = c puts the control point in the bowl, but the curve only bends towards it: integrate b₁(t) against the loss.": c,
        "that is the straight line's midpoint; the curve can do better.": 0.5 * (theta_a + theta_b),
        "the weights of θ_a, θ_b come from ∫b₁b₀ = ∫b₁b₂ = 1/10 against ∫b₁² = 2/15: −3/4 each, not −3/2.":
            2.5 * c - 1.5 * (theta_a + theta_b),
    }, "best_middle_point", atol=1e-8)
    return _ok("check_best_middle_point")


def check_two_point_jsd(jsd_two) -> bool:
    """``jsd_two(p (N, C), q (N, C)) -> (N,)``: ½ KL(p ‖ m) + ½ KL(q ‖ m) with m = (p + q)/2, in nats."""
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(7, 3, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(7, 3, generator=g, dtype=torch.float64), -1)
    expected = metrics.mutual_information(torch.stack([p, q]))  # the two-point MI: the identity the exercise proves
    m = (p + q) / 2

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    got = _call(jsd_two, p, q, what="jsd_two", shape_hint="p and q are (N, C); return one value per example, (N,).")
    _diagnose(got, expected, {
        "that is the symmetrised KL ½[KL(p‖q) + KL(q‖p)]: the JSD compares each with the mixture m.": 0.5 * (kl(p, q) + kl(q, p)),
        "you summed the two KLs: the JSD averages them (½ each).": kl(p, m) + kl(q, m),
        "the KLs run from each distribution to the mixture, KL(p‖m), not KL(m‖p).": 0.5 * (kl(m, p) + kl(m, q)),
        "use natural logarithms (nats), as metrics.mutual_information does.": expected / torch.log(torch.tensor(2.0, dtype=torch.float64)),
    }, "jsd_two", atol=1e-10)
    return _ok("check_two_point_jsd")


def check_noise_fit_gain(noise_fit_gain) -> bool:
    """``noise_fit_gain(x (n, d), eps (n, d_out), k, sigma) -> float``: the largest gain in Gaussian log-likelihood,
    Σ‖ε_i‖²/2σ² − min_M Σ‖ε_i − M x_i‖²/2σ², over maps M of rank ≤ k (nats).

    Reference: project ε onto the column space of x (the fitted values of least squares), keep its top-k
    singular values: gain = Σ_{j≤k} s_j² / 2σ² (tests/test_checks_derive.py confirms it by optimising a rank-k map).
    """
    g = torch.Generator().manual_seed(4)
    n, d, d_out, k, sigma = 200, 6, 5, 2, 0.3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    eps = sigma * torch.randn(n, d_out, generator=g, dtype=torch.float64)
    fitted = x @ torch.linalg.lstsq(x, eps).solution
    s_fit, s_raw = torch.linalg.svdvals(fitted), torch.linalg.svdvals(eps)
    expected = torch.tensor(float((s_fit[:k] ** 2).sum() / (2 * sigma ** 2)), dtype=torch.float64)
    got = _call(noise_fit_gain, x, eps, k, sigma, what="noise_fit_gain", shape_hint="x is (n, d), eps is (n, d_out).")
    got = torch.as_tensor(float(got), dtype=torch.float64)
    _diagnose(got, expected, {
        "a linear map of x can only fit the part of ε that lies in x's column space: project ε first (least squares).":
            (s_raw[:k] ** 2).sum() / (2 * sigma ** 2),
        "the rank limit: keep only the top k singular values.": (s_fit ** 2).sum() / (2 * sigma ** 2),
        "the Gaussian log-likelihood has ‖·‖²/2σ², not /2σ.": (s_fit[:k] ** 2).sum() / (2 * sigma),
        "the Gaussian log-likelihood has ‖·‖²/2σ²: you dropped the ½.": (s_fit[:k] ** 2).sum() / sigma ** 2,
    }, "noise_fit_gain", atol=1e-6)
    return _ok("check_noise_fit_gain")
