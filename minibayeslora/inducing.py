"""Bayesian-LoRA (our reconstruction): a posterior over each LoRA factor through a small inducing matrix.

Each factor F ∈ {A (r×d_in), B (d_out×r)} of shape p×q is *generated*, not stored. Its prior is a
standard normal F̃ = F / s_F (s_F = prior_sd/√q), augmented with an m×m inducing matrix U:

    [F̃, U] jointly Gaussian,  F̃ ~ N(0, I),  Cov U = K_r ⊗ K_c,  Cov(F̃, U) = Z_rᵀ ⊗ Z_cᵀ,
    K_r = Z_r Z_rᵀ + D_r²  (m×m, Z_r m×p),   K_c = Z_c Z_cᵀ + D_c²  (m×m, Z_c m×q).

Conditioning gives p(F̃ | U) = N(T_r U T_c, I − (T_r Z_r) ⊗ (Z_cᵀ T_c)), with T_r = Z_rᵀ K_r⁻¹ (p×m)
and T_c = K_c⁻¹ Z_c (m×q): a *difference* of Kronecker products, whose Cholesky factor would be a
pq×pq matrix. **Matheron's rule** samples it without one: draw the joint, then correct,

    ξ = E₁ − T_r Ū T_c,   Ū = Z_r E₁ Z_cᵀ + Z_r E₂ D_c + D_r E₃ Z_cᵀ + D_r E₄ D_c,

with E₁ (p×q), E₂ (p×m), E₃ (m×q), E₄ (m×m) iid N(0, 1): Ū is the inducing part of one joint
draw whose F̃ part is E₁, so ξ ~ N(0, I − (T_r Z_r) ⊗ (Z_cᵀ T_c)) exactly (tested through its Jacobian).

**Variational posterior.** U is whitened, U = L_r u L_cᵀ (L = chol K), p(u) = N(0, I), and
q(u) = N(μ, diag σ_u²); q(F̃ | U) keeps the conditional mean and scales its covariance by λ². A draw:

    u = μ + σ_u ⊙ ε,  U = L_r u L_cᵀ,  F = s_F (T_r U T_c + λ ξ).

KL(q ‖ p) = Σ KL(N(μ, σ_u²) ‖ N(0, 1)) + pq (λ²/2 − log λ − ½) (the second term is the KL between two
Gaussians with the same mean whose covariances differ by the factor λ²). σ_u = min(softplus ρ, 0.1)
and λ = min(softplus ℓ, 0.03), both starting at 10⁻³, as in the public code.

**Mean path.** F̄ = s_F T_r L_r μ L_cᵀ T_c. As σ_u, λ → 0 the layer is a plain LoRA with factors
(Ā, B̄), and with m ≥ r every LoRA is reachable: LoRA is the zero-uncertainty limit.

**Our deviations from the public code** (Bayesian-LoRA, arXiv 2601.21003, and its released code):
μ_B starts at 0, so ΔW = 0 at the start as in LoRA (the code starts μ ~ N(0, 1) in both factors);
Matheron's rule maps E₂, E₃ with Z itself (the code draws them at size m×m and maps them with
chol(Z Zᵀ), which is singular when m > p, e.g. for A with r = 8 < m = 9); the KL is the closed form
above; draws are one per example (the code draws one weight sample per forward pass for the whole
batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import noise
from .stochastic import StochasticLoRALinear

SIGMA_U_MAX, LAMBDA_MAX, INIT_SCALE = 0.1, 0.03, 1e-3


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def conditional_transforms(z_row, z_col, d_row, d_col):
    """(T_r (p×m), T_c (m×q), L_r, L_c (m×m)) for Z_r (m×p), Z_c (m×q) and the diagonals d_row, d_col (m,).

    K = Z Zᵀ + diag(d)²; T_r = Z_rᵀ K_r⁻¹, T_c = K_c⁻¹ Z_c, L = chol K. Computed in float64 (K can be
    nearly singular when m > p) and returned in the dtype of ``z_row``.
    """
    dtype = z_row.dtype
    z_row, z_col, d_row, d_col = (t.double() for t in (z_row, z_col, d_row, d_col))
    K_r = z_row @ z_row.T + torch.diag(d_row ** 2)
    K_c = z_col @ z_col.T + torch.diag(d_col ** 2)
    L_r, L_c = torch.linalg.cholesky(K_r), torch.linalg.cholesky(K_c)
    T_r = torch.cholesky_solve(z_row, L_r).T          # Z_rᵀ K_r⁻¹ (K symmetric)
    T_c = torch.cholesky_solve(z_col, L_c)            # K_c⁻¹ Z_c
    return tuple(t.to(dtype) for t in (T_r, T_c, L_r, L_c))


def matheron_noise(z_row, z_col, d_row, d_col, E1, E2, E3, E4, transforms=None) -> torch.Tensor:
    """ξ = E₁ − T_r Ū T_c with Ū = Z_r E₁ Z_cᵀ + Z_r E₂ D_c + D_r E₃ Z_cᵀ + D_r E₄ D_c.

    E₁ (..., p, q), E₂ (..., p, m), E₃ (..., m, q), E₄ (..., m, m), leading dims batched; returns (..., p, q)
    distributed as N(0, I − (T_r Z_r) ⊗ (Z_cᵀ T_c)) when the E's are standard normal.
    """
    T_r, T_c, _, _ = transforms if transforms is not None else conditional_transforms(z_row, z_col, d_row, d_col)
    u_bar = (z_row @ E1 @ z_col.T + (z_row @ E2) * d_col + d_row[:, None] * (E3 @ z_col.T)
             + d_row[:, None] * E4 * d_col)
    return E1 - T_r @ u_bar @ T_c


class InducingFactor(nn.Module):
    """The posterior over one p×q factor (see the module docstring); parameters m(p+q) + 2m² + 2m + 1."""

    def __init__(self, p: int, q: int, m: int = 9, prior_sd: float = 1.0, zero_mean: bool = False):
        super().__init__()
        if m < 1:
            raise ValueError(f"the number of inducing rows/columns m must be positive, got {m}.")
        self.p, self.q, self.m = p, q, m
        self.scale = prior_sd / math.sqrt(q)
        self.z_row = nn.Parameter(torch.randn(m, p) / math.sqrt(m))
        self.z_col = nn.Parameter(torch.randn(m, q) / math.sqrt(m))
        self.d_row_raw = nn.Parameter(torch.full((m,), _inverse_softplus(INIT_SCALE)))
        self.d_col_raw = nn.Parameter(torch.full((m,), _inverse_softplus(INIT_SCALE)))
        self.mu = nn.Parameter(torch.zeros(m, m) if zero_mean else torch.randn(m, m))
        self.sigma_raw = nn.Parameter(torch.full((m, m), _inverse_softplus(INIT_SCALE)))
        self.lam_raw = nn.Parameter(torch.tensor(_inverse_softplus(INIT_SCALE)))

    @property
    def d_row(self):
        return F.softplus(self.d_row_raw)

    @property
    def d_col(self):
        return F.softplus(self.d_col_raw)

    @property
    def sigma_u(self):
        return F.softplus(self.sigma_raw).clamp(max=SIGMA_U_MAX)

    @property
    def lam(self):
        return F.softplus(self.lam_raw).clamp(max=LAMBDA_MAX)

    def transforms(self):
        return conditional_transforms(self.z_row, self.z_col, self.d_row, self.d_col)

    def mean(self, transforms=None) -> torch.Tensor:
        """F̄ = s_F T_r L_r μ L_cᵀ T_c, (p, q)."""
        T_r, T_c, L_r, L_c = transforms if transforms is not None else self.transforms()
        return self.scale * (T_r @ (L_r @ self.mu @ L_c.T) @ T_c)

    def sample(self, n: int, noise_scale: float = 1.0, transforms=None) -> torch.Tensor:
        """n iid draws of F, (n, p, q); ``noise_scale`` multiplies σ_u and λ (0 = the mean, n times)."""
        T_r, T_c, L_r, L_c = transforms if transforms is not None else self.transforms()
        p, q, m = self.p, self.q, self.m
        kw = {"dtype": self.mu.dtype, "device": self.mu.device}
        u = self.mu + noise_scale * self.sigma_u * noise.normal((n, m, m), **kw)
        E1, E2 = noise.normal((n, p, q), **kw), noise.normal((n, p, m), **kw)
        E3, E4 = noise.normal((n, m, q), **kw), noise.normal((n, m, m), **kw)
        xi = matheron_noise(self.z_row, self.z_col, self.d_row, self.d_col, E1, E2, E3, E4, (T_r, T_c, L_r, L_c))
        return self.scale * (T_r @ (L_r @ u @ L_c.T) @ T_c + noise_scale * self.lam * xi)

    def kl(self) -> torch.Tensor:
        """KL(q(u) ‖ N(0, I)) + KL(q(F̃|U) ‖ p(F̃|U)), a scalar."""
        sigma, lam = self.sigma_u, self.lam
        inducing = (0.5 * (sigma ** 2 + self.mu ** 2 - 1.0) - sigma.log()).sum()
        conditional = self.p * self.q * (0.5 * lam ** 2 - lam.log() - 0.5)
        return inducing + conditional

    def extra_repr(self) -> str:
        return f"p={self.p}, q={self.q}, m={self.m}, s_F={self.scale:.4g}"


class InducingLoRALinear(StochasticLoRALinear):
    """Bayesian-LoRA layer: A (r×d_in) and B (d_out×r) each drawn from an ``InducingFactor``.

    ``lora_A``/``lora_B`` are read-only views of the mean path. Noise is one draw of (A, B) per
    example (``noise="sequence"``, the only mode: a draw per token would cost a weight matrix per
    token). ``m`` inducing rows/columns (default 9), ``prior_sd`` sets s_F = prior_sd/√q. The default
    1.0 is the public code's rebuttal setting: with its main setting, 0.1, the mean factors are ten
    times smaller for the same μ, and μ (moved by Adam about one learning rate per step) cannot grow
    a LoRA-sized update within a few hundred steps.
    """

    NOISE = ("sequence",)

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, m: int = 9,
                 prior_sd: float = 1.0, noise: str = "sequence"):
        if not isinstance(m, int) or m < r:
            raise ValueError(f"the inducing size m must be an int ≥ r = {r} (else the mean path cannot reach every "
                             f"rank-{r} LoRA), got m={m!r}.")
        self._inducing = {"m": m, "prior_sd": float(prior_sd)}
        super().__init__(base, r, alpha, dropout, noise=noise)

    def settings(self) -> dict:
        return {**super().settings(), **self._inducing}

    def _init_factors(self) -> None:
        m, prior_sd = self._inducing["m"], self._inducing["prior_sd"]
        self.factor_A = InducingFactor(self.r, self.in_features, m, prior_sd)
        self.factor_B = InducingFactor(self.out_features, self.r, m, prior_sd, zero_mean=True)  # ΔW = 0 at the start

    @property
    def lora_A(self) -> torch.Tensor:
        return self.factor_A.mean()

    @property
    def lora_B(self) -> torch.Tensor:
        return self.factor_B.mean()

    @property
    def factor_dtype(self) -> torch.dtype:
        return self.factor_A.mu.dtype

    def mean_factors(self):
        return self.factor_A.mean(), self.factor_B.mean()

    def noisy_update(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        A = self.factor_A.sample(n, self.noise_scale)                      # (n, r, d_in)
        B = self.factor_B.sample(n, self.noise_scale)                      # (n, d_out, r)
        flat = x.reshape(n, -1, x.shape[-1])                              # (n, L, d_in)
        update = torch.bmm(torch.bmm(flat, A.transpose(1, 2)), B.transpose(1, 2))
        return update.reshape(*x.shape[:-1], self.out_features)

    def kl(self) -> torch.Tensor:
        return self.factor_A.kl() + self.factor_B.kl()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", m={self._inducing['m']}"
