"""The Bayesian-LoRA checks pass correct implementations and name each typical mistake."""

import math

import pytest
import torch

from minibayeslora import checks
from minibayeslora.inducing import matheron_noise as package_matheron


def _fails_with(check, impl, hint):
    with pytest.raises(AssertionError, match=hint):
        check(impl)


def _transforms(z_row, z_col, d_row, d_col):
    K_r = z_row @ z_row.T + torch.diag(d_row ** 2)
    K_c = z_col @ z_col.T + torch.diag(d_col ** 2)
    return z_row.T @ torch.linalg.inv(K_r), torch.linalg.inv(K_c) @ z_col


def _matheron(z_row, z_col, d_row, d_col, randn, sign=-1.0, d_terms=True, chol=False, jitter=0.0, e1=True):
    m, p = z_row.shape
    q = z_col.shape[1]
    T_r, T_c = _transforms(z_row, z_col, d_row, d_col)
    E1 = randn(p, q)
    if chol:   # the released code's variant: E₂, E₃ at m×m through chol(Z Zᵀ (+ jitter))
        gram_r, gram_c = z_row @ z_row.T, z_col @ z_col.T
        L_r = torch.linalg.cholesky(gram_r + jitter * torch.eye(m, dtype=gram_r.dtype))
        L_c = torch.linalg.cholesky(gram_c + jitter * torch.eye(m, dtype=gram_c.dtype))
        E2, E3, E4 = randn(m, m), randn(m, m), randn(m, m)
        u_bar = z_row @ E1 @ z_col.T + (L_r @ E2) * d_col + d_row[:, None] * (E3 @ L_c.T) + d_row[:, None] * E4 * d_col
    else:
        E2, E3, E4 = randn(p, m), randn(m, q), randn(m, m)
        u_bar = z_row @ E1 @ z_col.T
        if d_terms:
            u_bar = u_bar + (z_row @ E2) * d_col + d_row[:, None] * (E3 @ z_col.T) + d_row[:, None] * E4 * d_col
    return (E1 if e1 else 0.0) + sign * T_r @ u_bar @ T_c


def _package_via_randn(z_row, z_col, d_row, d_col, randn):
    m, p = z_row.shape
    q = z_col.shape[1]
    return package_matheron(z_row, z_col, d_row, d_col, randn(p, q), randn(p, m), randn(m, q), randn(m, m))


def test_matheron_check_passes_the_package_and_a_reordered_version():
    assert checks.check_matheron(_package_via_randn)

    def reordered(z_row, z_col, d_row, d_col, randn):     # draws in another order: same distribution
        m, p = z_row.shape
        q = z_col.shape[1]
        E4, E3, E2, E1 = randn(m, m), randn(m, q), randn(p, m), randn(p, q)
        return package_matheron(z_row, z_col, d_row, d_col, E1, E2, E3, E4)

    assert checks.check_matheron(reordered)


MATHERON = {
    "plus": (lambda *a: _matheron(*a, sign=1.0), "subtracted"),
    "no_d_terms": (lambda *a: _matheron(*a, d_terms=False), "all four terms"),
    "chol_singular": (lambda *a: _matheron(*a, chol=True), "singular"),
    "chol_jittered": (lambda *a: _matheron(*a, chol=True, jitter=1e-3), "released code's variant"),
    "no_e1": (lambda *a: _matheron(*a, e1=False), "E₁"),
    "constant": (lambda *a: _matheron(*a) + 1.0, "linear"),
    "not_implemented": (lambda *a: (_ for _ in ()).throw(NotImplementedError()), "not implemented yet"),
}


@pytest.mark.parametrize("name", MATHERON)
def test_matheron_check_names_the_mistake(name):
    _fails_with(checks.check_matheron, *MATHERON[name])


def _kl(mu, sigma, lam, p, q):
    return (0.5 * (sigma ** 2 + mu ** 2 - 1) - sigma.log()).sum() + p * q * (0.5 * lam ** 2 - lam.log() - 0.5)


KL = {
    "reverse_inducing": (lambda mu, s, lam, p, q: (s.log() + (1 + mu ** 2) / (2 * s ** 2) - 0.5).sum()
                         + p * q * (0.5 * lam ** 2 - lam.log() - 0.5), "q first"),
    "std_for_variance": (lambda mu, s, lam, p, q: (0.5 * (s + mu ** 2 - 1) - s.log()).sum()
                         + p * q * (0.5 * lam ** 2 - lam.log() - 0.5), "variance"),
    "reverse_conditional": (lambda mu, s, lam, p, q: (0.5 * (s ** 2 + mu ** 2 - 1) - s.log()).sum()
                            + p * q * (0.5 / lam ** 2 + lam.log() - 0.5), "not its reverse"),
    "no_pq": (lambda mu, s, lam, p, q: (0.5 * (s ** 2 + mu ** 2 - 1) - s.log()).sum()
              + (0.5 * lam ** 2 - lam.log() - 0.5), "multiply by p·q"),
    "no_conditional": (lambda mu, s, lam, p, q: (0.5 * (s ** 2 + mu ** 2 - 1) - s.log()).sum(), "conditional part is missing"),
    "per_entry": (lambda mu, s, lam, p, q: 0.5 * (s ** 2 + mu ** 2 - 1) - s.log(), "one number"),
}


@pytest.mark.parametrize("name", KL)
def test_inducing_kl_check_names_the_mistake(name):
    _fails_with(checks.check_inducing_kl, *KL[name])


def test_inducing_kl_check_passes_the_package():
    from minibayeslora.inducing import InducingFactor

    def via_package(mu, sigma, lam, p, q):
        factor = InducingFactor(p, q, m=mu.shape[0]).double()
        with torch.no_grad():
            factor.mu.copy_(mu)
            factor.sigma_raw.copy_(torch.log(torch.expm1(sigma)))
            factor.lam_raw.copy_(torch.log(torch.expm1(lam)))
        return factor.kl()

    assert checks.check_inducing_kl(via_package)
    assert checks.check_inducing_kl(lambda mu, s, lam, p, q: float(_kl(mu, s, lam, p, q)))


def _bottleneck(x, M, rho, E):
    return x @ M.T + torch.einsum("nld,nrd->nlr", x, rho ** 2 * E)


def _in_place(x, M, rho, E):
    E.mul_(rho ** 2)
    return x @ M.T + torch.einsum("nld,nrd->nlr", x, E)


BLOB = {
    "shared_noise": (lambda x, M, rho, E: _bottleneck(x, M, rho, E[:1].expand_as(E)), "own draw"),
    "rho_as_sigma": (lambda x, M, rho, E: x @ M.T + torch.einsum("nld,nrd->nlr", x, rho * E), "squares ρ"),
    "variance": (lambda x, M, rho, E: x @ M.T + torch.einsum("nld,nrd->nlr", x, rho ** 4 * E), "not by σ²"),
    "no_mean": (lambda x, M, rho, E: torch.einsum("nld,nrd->nlr", x, rho ** 2 * E), "added to the mean"),
    "in_place": (_in_place, "in place"),
}


@pytest.mark.parametrize("name", BLOB)
def test_blob_check_names_the_mistake(name):
    _fails_with(checks.check_blob_bottleneck, *BLOB[name])


def test_blob_check_passes_the_package_layer():
    from torch import nn

    from minibayeslora.blob import BLoBLinear
    from minibayeslora.stochastic import sampling

    def via_layer(x, M, rho, E):
        layer = BLoBLinear(nn.Linear(M.shape[1], M.shape[0]), r=M.shape[0], alpha=M.shape[0]).double()
        with torch.no_grad():
            layer.lora_A.copy_(M)
            layer.lora_A_rho.copy_(rho)
            layer.lora_B.copy_(torch.eye(M.shape[0], dtype=torch.float64))
        original = torch.randn
        torch.randn = lambda *shape, **kw: E.clone()          # the layer's one draw per example is E
        try:
            with torch.no_grad(), sampling(layer):
                return layer(x) - layer.base(x)
        finally:
            torch.randn = original

    assert checks.check_blob_bottleneck(via_layer)


def _kl_per_example(lam, layers, n):
    return sum(r * d_in + d_out * r for d_out, d_in, r in layers) * (0.5 * lam ** 2 - math.log(lam) - 0.5) / n


SIZE = {
    "only_A": (lambda lam, layers, n: sum(r * d_in for _, d_in, r in layers) * (0.5 * lam ** 2 - math.log(lam) - 0.5) / n,
               "count A"),
    "no_division": (lambda lam, layers, n: _kl_per_example(lam, layers, n) * n, "number of training examples"),
    "full_matrix": (lambda lam, layers, n: sum(o * i for o, i, _ in layers) * (0.5 * lam ** 2 - math.log(lam) - 0.5) / n,
                    "not the full"),
    "one_weight": (lambda lam, layers, n: 0.5 * lam ** 2 - math.log(lam) - 0.5, "one weight"),
}


@pytest.mark.parametrize("name", SIZE)
def test_kl_size_check_names_the_mistake(name):
    _fails_with(checks.check_conditional_kl_per_example, *SIZE[name])


def test_kl_size_check_passes_the_reference():
    assert checks.check_conditional_kl_per_example(_kl_per_example)
