"""Checks for the rank-selection exercises (notebook 05); import them from ``minibayeslora.checks``.

Same contract as the other checks: pass -> one printed line and True; a recognised mistake -> an
AssertionError that names it.
"""

from __future__ import annotations

import torch

from ._check_tools import _call, _diagnose, _ok

K1, K2, K3 = 0.63576, 1.87320, 1.48695


def check_kl_sparse_vd(kl_sparse_vd) -> bool:
    """``kl_sparse_vd(log_alpha)`` -> −(k₁σ(k₂ + k₃ log α) − ½ log(1 + 1/α) − k₁), elementwise."""
    log_alpha = torch.linspace(-6, 6, 13, dtype=torch.float64).view(13, 1).expand(13, 2).clone()
    got = _call(kl_sparse_vd, log_alpha, what="kl_sparse_vd", shape_hint="Work elementwise on log_alpha.")
    sigmoid, alpha = torch.sigmoid, log_alpha.exp()
    negative = K1 * sigmoid(K2 + K3 * log_alpha) - 0.5 * torch.log1p(1 / alpha) - K1
    expected = -negative
    if isinstance(got, torch.Tensor) and got.dim() == 0 and torch.isclose(got.double(), expected.sum(), rtol=1e-4):
        raise AssertionError("kl_sparse_vd must be elementwise (same shape as log_alpha): do not sum it.")
    _diagnose(got, expected, {
        "you returned −KL (the approximation is of −KL): flip the sign.": negative,
        "the constant −k₁ keeps the KL at 0 for α → ∞: include it.": expected - K1,
        "the middle term is −½ log(1 + 1/α), with 1/α, not α.": -(K1 * sigmoid(K2 + K3 * log_alpha) - 0.5 * torch.log1p(alpha) - K1),
        "the sigmoid takes k₂ + k₃·log α, not k₂ + k₃·α.": -(K1 * sigmoid(K2 + K3 * alpha) - 0.5 * torch.log1p(1 / alpha) - K1),
    }, "kl_sparse_vd(log_alpha)", atol=1e-6)
    return _ok("check_kl_sparse_vd")


def check_local_reparameterisation(noisy_bottleneck) -> bool:
    """``noisy_bottleneck(u, log_alpha, eps)`` -> a draw of u ⊙ z, z ~ N(1, α), as u + |u|·√α·ε.

    ``u`` (N, r) is the bottleneck A x, ``log_alpha`` (r,), ``eps`` (N, r) standard normal noise.
    Writing u + u·√α·ε (z sampled directly) is the same distribution and passes too.
    """
    g = torch.Generator().manual_seed(0)
    u = torch.randn(6, 4, generator=g, dtype=torch.float64)
    log_alpha = torch.tensor([-2.0, -0.5, 0.5, 1.5], dtype=torch.float64)
    eps = torch.randn(6, 4, generator=g, dtype=torch.float64)
    got = _call(noisy_bottleneck, u, log_alpha, eps, what="noisy_bottleneck",
                shape_hint="u and eps are (N, r), log_alpha is (r,): broadcast over the rows.")
    alpha = log_alpha.exp()
    reference = u + u.abs() * alpha.sqrt() * eps
    z_form = u + u * alpha.sqrt() * eps
    if isinstance(got, torch.Tensor) and got.shape == z_form.shape and torch.allclose(got, z_form, atol=1e-8):
        return _ok("check_local_reparameterisation")
    _diagnose(got, reference, {
        "α is a variance: the standard deviation is |u|·√α, not |u|·α.": u + u.abs() * alpha * eps,
        "log_alpha is log α: exponentiate it (std = |u|·exp(½ log α)).": u + u.abs() * log_alpha * eps,
        "the noise scales with the signal: std |u|·√α, not √α alone (multiplicative noise).": u + alpha.sqrt() * eps,
        "the variance is α·u², so the std is |u|·√α, not α·u².": u + alpha * u ** 2 * eps,
        "z has mean 1: add the noise to u, do not replace u by it.": u.abs() * alpha.sqrt() * eps,
    }, "noisy_bottleneck(u, log_alpha, eps)", atol=1e-8)
    return _ok("check_local_reparameterisation")


def check_prune(prune) -> bool:
    """``prune(A, B, log_alpha, threshold)`` -> (A_kept (k, d_in), B_kept (d_out, k)) of ranks with log α ≤ threshold."""
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(5, 7, generator=g), torch.randn(6, 5, generator=g)
    log_alpha = torch.tensor([-3.0, 4.0, 0.5, 3.5, 2.9])
    A0, B0 = A.clone(), B.clone()
    got = _call(prune, A, B, log_alpha, 3.0, what="prune",
                shape_hint="A is (r, d_in): keep rows; B is (d_out, r): keep columns.")
    if not (isinstance(got, tuple) and len(got) == 2):
        raise AssertionError("prune must return a pair (A_kept, B_kept).")
    if not (torch.equal(A, A0) and torch.equal(B, B0)):
        raise AssertionError("prune changed A or B in place: return new tensors.")
    keep = log_alpha <= 3.0
    A_kept, B_kept = got
    _diagnose(A_kept, A[keep], {
        "you kept the noisy ranks: keep log α ≤ threshold, prune log α > threshold.": A[~keep],
        "A is (r, d_in): select its rows, not its columns.": A[:, :int(keep.sum())],
    }, "A_kept")
    _diagnose(B_kept, B[:, keep], {
        "you kept the noisy ranks: keep log α ≤ threshold, prune log α > threshold.": B[:, ~keep],
    }, "B_kept")
    x = torch.randn(3, 7, generator=g)
    if not torch.allclose(x @ A_kept.T @ B_kept.T, x @ (A * keep[:, None]).T @ B.T, atol=1e-5):
        raise AssertionError("B_kept A_kept must equal B diag(keep) A.")
    return _ok("check_prune")

