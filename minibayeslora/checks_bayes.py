"""Checks for the Bayesian-LoRA exercises (notebook 06); import them from ``minibayeslora.checks``.

Same contract as the other checks: pass -> one printed line and True; a recognised mistake -> an
AssertionError that names it.
"""

from __future__ import annotations

import math

import torch

from ._check_tools import _call, _diagnose, _ok

# ---- Matheron's rule ------------------------------------------------------------------------------
# The learner writes matheron_noise(z_row, z_col, d_row, d_col, randn) -> ξ (p, q), drawing every
# standard normal it needs through randn(*shape). ξ is linear in those draws, so feeding unit vectors
# gives its Jacobian J and its exact covariance J Jᵀ, whatever order or shapes the learner draws in.


class _UnitNoise:
    """A ``randn`` stand-in that returns slices of one fixed vector, recording the shapes asked for."""

    def __init__(self, vector=None):
        self.vector, self.offset, self.shapes = vector, 0, []

    def __call__(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else tuple(shape)
        self.shapes.append(shape)
        n = math.prod(shape)
        if self.vector is None:
            out = torch.zeros(n, dtype=torch.float64)
        else:
            out = self.vector[self.offset:self.offset + n]
        self.offset += n
        return out.view(shape)


def _exact_covariance(fn, args, what):
    probe = _UnitNoise()
    base = _call(fn, *args, probe, what=what, shape_hint="Z_r is (m, p), Z_c (m, q), d_row and d_col (m,): "
                 "E₁ (p, q), E₂ (p, m), E₃ (m, q), E₄ (m, m).")
    if not isinstance(base, torch.Tensor):
        raise AssertionError(f"{what} must return a torch.Tensor, got {type(base).__name__}.")
    if base.abs().max() > 1e-12:
        raise AssertionError(f"{what} is not zero when all the noise is zero: ξ must be linear in the draws "
                             "(no mean term, no fixed sample inside).")
    total = sum(math.prod(s) for s in probe.shapes)
    columns = []
    for k in range(total):
        unit = torch.zeros(total, dtype=torch.float64)
        unit[k] = 1.0
        columns.append(fn(*args, _UnitNoise(unit)).flatten())
    J = torch.stack(columns, 1)
    return J @ J.T, probe.shapes, base.shape


def _transforms(z_row, z_col, d_row, d_col, invert=True):
    K_r = z_row @ z_row.T + torch.diag(d_row ** 2)
    K_c = z_col @ z_col.T + torch.diag(d_col ** 2)
    if not invert:
        return z_row.T, z_col
    return z_row.T @ torch.linalg.inv(K_r), torch.linalg.inv(K_c) @ z_col


def _variant(kind):
    """Reference ξ and the named wrong variants, in the same randn protocol as the learner's function."""

    def noise(z_row, z_col, d_row, d_col, randn):
        m, p = z_row.shape
        q = z_col.shape[1]
        T_r, T_c = _transforms(z_row, z_col, d_row, d_col, invert=kind != "no_inverse")
        E1, E2, E3, E4 = randn(p, q), randn(p, m), randn(m, q), randn(m, m)
        u_bar = z_row @ E1 @ z_col.T
        if kind != "no_d_terms":
            u_bar = u_bar + (z_row @ E2) * d_col + d_row[:, None] * (E3 @ z_col.T) + d_row[:, None] * E4 * d_col
        correction = T_r @ u_bar @ T_c
        if kind == "plus":
            return E1 + correction
        if kind == "no_e1":
            return -correction
        return E1 - correction

    return noise


def check_matheron(matheron_noise) -> bool:
    """``matheron_noise(z_row, z_col, d_row, d_col, randn)`` -> ξ ~ N(0, I − (T_r Z_r) ⊗ (Z_cᵀ T_c)), shape (p, q)."""
    g = torch.Generator().manual_seed(0)
    m, p, q = 3, 2, 4          # m > p: Z_r Z_rᵀ (m×m) is singular, as for LoRA's A with r < m
    z_row = torch.randn(m, p, generator=g, dtype=torch.float64) / math.sqrt(m)
    z_col = torch.randn(m, q, generator=g, dtype=torch.float64) / math.sqrt(m)
    d_row = 0.4 + torch.rand(m, generator=g, dtype=torch.float64)
    d_col = 0.4 + torch.rand(m, generator=g, dtype=torch.float64)
    args = (z_row, z_col, d_row, d_col)
    try:
        cov, shapes, out_shape = _exact_covariance(matheron_noise, args, "matheron_noise")
    except torch.linalg.LinAlgError:
        raise AssertionError("a Cholesky factor failed: Z Zᵀ is singular when m > p (here m = 3, p = 2). "
                             "Do not factor Z Zᵀ: map E₂ (p×m) and E₃ (m×q) with Z itself.") from None
    if tuple(out_shape) != (p, q):
        raise AssertionError(f"ξ must have the factor's shape (p, q) = {(p, q)}, got {tuple(out_shape)}.")
    if sum(1 for s in shapes if s == (m, m)) >= 3:
        raise AssertionError("you drew E₂ and E₃ at the inducing size m×m and mapped them with a square root of Z Zᵀ "
                             "(the released code's variant). When m > p that matrix is singular: its Cholesky factor "
                             "exists only after adding a jitter, which then shifts the covariance. Draw E₂ (p×m), E₃ (m×q) "
                             "and map them with Z_r and Z_cᵀ: no factorisation needed.")
    references = {}
    for kind in ("exact", "plus", "no_d_terms", "no_e1", "no_inverse"):
        references[kind], _, _ = _exact_covariance(_variant(kind), args, kind)
    _diagnose(cov, references["exact"], {
        "the correction is subtracted: ξ = E₁ − T_r Ū T_c (with +, the covariance grows instead of shrinking).": references["plus"],
        "Ū needs all four terms: Z_r E₁ Z_cᵀ + Z_r E₂ D_c + D_r E₃ Z_cᵀ + D_r E₄ D_c (the D terms make Cov Ū = K_r ⊗ K_c).":
            references["no_d_terms"],
        "ξ starts from the joint draw's weight part E₁: ξ = E₁ − T_r Ū T_c, not −T_r Ū T_c alone.": references["no_e1"],
        "T_r = Z_rᵀ K_r⁻¹ and T_c = K_c⁻¹ Z_c: the inverses of K = Z Zᵀ + D² are part of the transforms.": references["no_inverse"],
    }, "the covariance of matheron_noise", atol=1e-9)
    return _ok("check_matheron")


# ---- the KL of the inducing posterior -----------------------------------------------------------------


def check_inducing_kl(inducing_kl) -> bool:
    """``inducing_kl(mu, sigma_u, lam, p, q)`` -> Σ KL(N(μ, σ_u²) ‖ N(0, 1)) + pq (λ²/2 − log λ − ½), a scalar."""
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(3, 3, generator=g, dtype=torch.float64)
    sigma = 0.01 + 0.09 * torch.rand(3, 3, generator=g, dtype=torch.float64)   # within the clamps σ_u ≤ 0.1, λ ≤ 0.03
    lam, p, q = torch.tensor(0.02, dtype=torch.float64), 5, 7
    got = _call(inducing_kl, mu, sigma, lam, p, q, what="inducing_kl",
                shape_hint="mu and sigma_u are (m, m), lam is a scalar: return one number.")
    if isinstance(got, (float, int)):
        got = torch.tensor(float(got), dtype=torch.float64)
    if isinstance(got, torch.Tensor) and got.dim() > 0:
        raise AssertionError("inducing_kl must return one number (sum over the inducing entries), "
                             f"got shape {tuple(got.shape)}.")
    inducing = (0.5 * (sigma ** 2 + mu ** 2 - 1) - sigma.log()).sum()
    conditional = p * q * (0.5 * lam ** 2 - lam.log() - 0.5)
    _diagnose(got.double(), inducing + conditional, {
        "KL(q ‖ p) puts q first: you computed KL(N(0, 1) ‖ N(μ, σ²)) for the inducing part.":
            (sigma.log() + (1 + mu ** 2) / (2 * sigma ** 2) - 0.5).sum() + conditional,
        "σ_u is a standard deviation: the KL has σ_u² (the variance) where you used σ_u.":
            (0.5 * (sigma + mu ** 2 - 1) - sigma.log()).sum() + conditional,
        "the conditional KL is KL(q ‖ p) with q's covariance λ² times p's: pq(λ²/2 − log λ − ½), not its reverse.":
            inducing + p * q * (0.5 / lam ** 2 + lam.log() - 0.5),
        "the conditional KL counts every weight of the p×q factor: multiply by p·q.": inducing + conditional / (p * q),
        "the conditional part is missing: q(F̃|U) differs from p(F̃|U) by the factor λ² in covariance, which costs KL.":
            inducing,
        "λ scales a standard deviation: the log term is −log λ (= −½ log λ²), not −½ log λ.":
            inducing + p * q * (0.5 * lam ** 2 - 0.5 * lam.log() - 0.5),
    }, "inducing_kl(mu, sigma_u, lam, p, q)", atol=1e-8)
    return _ok("check_inducing_kl")


# ---- BLoB's noisy forward ---------------------------------------------------------------------------------


def check_blob_bottleneck(blob_bottleneck) -> bool:
    """``blob_bottleneck(x, M, rho, E)`` -> u = x Mᵀ + x (σ ⊙ E_n)ᵀ per example n, σ = ρ²: (N, L, r).

    x (N, L, d_in) tokens, M and rho (r, d_in), E (N, r, d_in): one standard-normal matrix per example.
    """
    g = torch.Generator().manual_seed(3)
    N, L, d, r = 3, 4, 5, 2
    x = torch.randn(N, L, d, generator=g, dtype=torch.float64)
    M = torch.randn(r, d, generator=g, dtype=torch.float64)
    rho = 0.3 + 0.5 * torch.rand(r, d, generator=g, dtype=torch.float64)
    E = torch.randn(N, r, d, generator=g, dtype=torch.float64)
    x0, E0 = x.clone(), E.clone()
    got = _call(blob_bottleneck, x, M, rho, E, what="blob_bottleneck",
                shape_hint="x is (N, L, d_in), M and rho (r, d_in), E (N, r, d_in): u is (N, L, r).")
    if not (torch.equal(x, x0) and torch.equal(E, E0)):
        raise AssertionError("blob_bottleneck changed x or E in place: return a new tensor.")

    def u(sigma, noise):
        return x @ M.T + torch.einsum("nld,nrd->nlr", x, sigma * noise)

    sigma = rho ** 2
    _diagnose(got, u(sigma, E), {
        "each example has its own draw E_n: you used one E for the whole batch (every review would share its weights' noise, "
        "and the predictive would miss the spread between examples).": u(sigma, E[:1].expand_as(E)),
        "σ = ρ²: BLoB squares ρ to get the standard deviation.": u(rho, E),
        "σ = ρ² is a standard deviation: multiply E by σ, not by σ² (the variance).": u(sigma ** 2, E),
        "the noise is added to the mean: u = x Mᵀ + x (σ ⊙ E)ᵀ.": torch.einsum("nld,nrd->nlr", x, sigma * E),
    }, "blob_bottleneck(x, M, rho, E)", atol=1e-9)
    return _ok("check_blob_bottleneck")


# ---- how big the KL is ------------------------------------------------------------------------------------


def check_conditional_kl_per_example(conditional_kl_per_example) -> bool:
    """``conditional_kl_per_example(lam, layers, n_train)`` -> Σ_layers (r·d_in + d_out·r)(λ²/2 − log λ − ½) / n_train.

    ``layers`` is a list of (d_out, d_in, r), one per adapted linear layer (A is r×d_in, B is d_out×r).
    """
    layers = [(384, 384, 8)] * 6 + [(1000, 300, 4)]
    lam, n = 1e-3, 8_929
    got = _call(conditional_kl_per_example, lam, layers, n, what="conditional_kl_per_example", shape_hint="")
    per_weight = 0.5 * lam ** 2 - math.log(lam) - 0.5
    factors = sum(r * d_in + d_out * r for d_out, d_in, r in layers)
    expected = torch.tensor(factors * per_weight / n, dtype=torch.float64)
    got = torch.as_tensor(float(got), dtype=torch.float64)
    _diagnose(got, expected, {
        "both factors carry a posterior: count A (r·d_in) and B (d_out·r) of every layer.":
            torch.tensor(sum(r * d_in for _, d_in, r in layers) * per_weight / n, dtype=torch.float64),
        "the ELBO per example divides the KL by the number of training examples.": expected * n,
        "the factors are what is random, not the full d_out×d_in update: count r·d_in + d_out·r per layer.":
            torch.tensor(sum(d_out * d_in for d_out, d_in, _ in layers) * per_weight / n, dtype=torch.float64),
        "that is the KL of one weight: sum it over every weight of every factor.": torch.tensor(per_weight, dtype=torch.float64),
    }, "conditional_kl_per_example", atol=1e-6)
    return _ok("check_conditional_kl_per_example")
