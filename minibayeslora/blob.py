"""BLoB (Bayesian LoRA by Backpropagation; Wang et al., 2024): a diagonal Gaussian on A, B deterministic.

    q(A) = N(M, σ²) elementwise,  σ = ρ²,   p(A) = N(0, β_p²) with β_p = 0.2,   B = θ_B (a point),

so the bottleneck u = Ã x of a token x is Gaussian per rank k with mean M x and variance
Σ_j σ_kj² x_j², and y = W₀x + s · B u. M starts like LoRA's A (Kaiming), B at 0, ρ ~ U(ε/√2, ε) with
ε = 0.05 (as in the public code, ``modelwrappers/blob.py`` of Wang-ML-Lab/bayesian-peft).

    KL(q ‖ p) = Σ_kj [log β_p − log σ_kj + (σ_kj² + M_kj²) / (2 β_p²) − ½].

Which draws share noise (``noise=``):

- ``"sequence"`` (default): one E (r×d_in) per example, shared by its tokens:
  u_t = M x_t + (σ ⊙ E_n) x_t, one draw of Ã per review;
- ``"token"``: independent per token, by local reparameterisation u_t = M x_t + √((x_t²)(σ²)ᵀ) ⊙ ε_t;
- ``"flipout"``: the public code's scheme: one E per forward pass, decorrelated across tokens by
  random signs, u_t = M x_t + ((x_t ⊙ r_t)(σ ⊙ E)ᵀ) ⊙ ς_t with r_t, ς_t ∈ {±1} per token. (With stacked
  copies of a batch, E is drawn once per copy, so the copies stay independent draws.)

Our training differs from the public code: one AdamW on CE + β·KL/N_train (``stochastic.ELBOLoss``)
with its own learning rate for ρ, where the code alternates an AdamW step on the CE with an SGD step
on a reweighted KL.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import noise
from .stochastic import StochasticLoRALinear

RHO_INIT, PRIOR_SD = 0.05, 0.2


class BLoBLinear(StochasticLoRALinear):
    """LoRA with A ~ N(M, ρ⁴) (``lora_A`` is M, ``lora_A_rho`` is ρ) and B deterministic."""

    NOISE = ("sequence", "token", "flipout")

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, prior_sd: float = PRIOR_SD,
                 rho_init: float = RHO_INIT, noise: str = "sequence"):
        super().__init__(base, r, alpha, dropout, noise=noise)
        if prior_sd <= 0 or rho_init <= 0:
            raise ValueError(f"prior_sd and rho_init must be positive, got {prior_sd!r} and {rho_init!r}.")
        self.prior_sd, self.rho_init = float(prior_sd), float(rho_init)
        self.lora_A_rho = nn.Parameter(torch.empty(r, self.in_features).uniform_(rho_init / math.sqrt(2), rho_init))

    def settings(self) -> dict:
        return {**super().settings(), "prior_sd": self.prior_sd, "rho_init": self.rho_init}

    @property
    def sigma(self) -> torch.Tensor:
        """σ = ρ², (r, d_in)."""
        return self.lora_A_rho ** 2

    def output_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Var[u_k] = Σ_j σ_kj² x_j² per position and rank: (..., d_in) -> (..., r)."""
        return (x * x) @ (self.sigma ** 2).T

    def noisy_update(self, x: torch.Tensor) -> torch.Tensor:
        u = x @ self.lora_A.T                                                             # (..., r)
        sigma = self.sigma * self.noise_scale
        if self.noise == "token":
            var = (x * x) @ (sigma ** 2).T
            u = u + var.clamp_min(1e-30).sqrt() * noise.normal(u.shape, u.dtype, u.device, tokens=True)
        elif self.noise == "sequence":
            n = x.shape[0]
            E = noise.normal((n, self.r, self.in_features), x.dtype, x.device)
            flat = x.reshape(n, -1, x.shape[-1])
            u = u + torch.bmm(flat, (sigma * E).transpose(1, 2)).reshape(u.shape)
        else:  # flipout: one E per copy of the batch, random signs per token on the input and the output
            E = noise.shared_normal((self.copies, self.r, self.in_features), x.dtype, x.device)
            copy = self.copy_index(x.shape[0], x.device)
            sign_in = noise.signs(x.shape, x.dtype, x.device, tokens=True)
            sign_out = noise.signs(u.shape, x.dtype, x.device, tokens=True)
            flat = (x * sign_in).reshape(x.shape[0], -1, x.shape[-1])
            drawn = torch.bmm(flat, (sigma * E)[copy].transpose(1, 2)).reshape(u.shape)
            u = u + drawn * sign_out
        return u @ self.lora_B.T

    def kl(self) -> torch.Tensor:
        sigma, mean, prior = self.sigma, self.lora_A, self.prior_sd
        return (math.log(prior) - sigma.log() + (sigma ** 2 + mean ** 2) / (2 * prior ** 2) - 0.5).sum()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", prior_sd={self.prior_sd}"
