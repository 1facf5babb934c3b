"""BaLoRA (our reconstruction): input-adaptive multiplicative noise on LoRA's A.

The BaLoRA paper ("BaLoRA: Bayesian Low-Rank Adaptation of Large Scale Models") gives two equations
and no code; this module is our reading of them. The noisy factor is

    ω_A = θ_A + √α(x) · θ_A ⊙ ε,      ε ~ N(0, 1) elementwise,

with B = θ_B deterministic, so the bottleneck u = ω_A x of a token x (d_in,) is Gaussian with mean θ_A x
and, per rank k, variance d_k(x) = α(x) Σ_j θ_A[k, j]² x_j². **Local reparameterisation** samples u
directly (``noise="token"``, the seed's equation, independent per token):

    y = W₀x + s · θ_B (θ_A x + √d(x) ⊙ ε_d),     d(x) = α(x) (θ_A ⊙ θ_A)(x ⊙ x),   s = α_lora/r.

``noise="sequence"`` (default) draws one ε matrix E (r×d_in) per example and shares it by the
example's tokens: u_t = θ_A x_t + √α(x_t) (θ_A ⊙ E) x_t, one draw of the noisy weight per review.

**α(x), ours.** log α(x) = b + wᵀx / √d_in per token, clamped at 10, starting at w = 0, b = −4 (so
every input starts with the same small noise, α = e⁻⁴ ≈ 0.018). That is d_in + 1 numbers per layer.
(The authors' earlier BARNN code gets α from a small network; one linear map is the smallest
input-adaptive choice.)

**KL, ours.** With a log-uniform prior on each weight (sparse variational dropout, Molchanov et al.
2017) the KL per weight depends only on α; α depends on the input, so we average it over the
real tokens of the batch: KL = r · d_in · mean_t KL_svd(log α(x_t)) (``lrvd.kl_sparse_vd``).

The mean path is LoRA with (θ_A, θ_B) exactly, whatever α(x) is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import noise
from .lrvd import LOG_ALPHA_MAX, kl_sparse_vd
from .stochastic import StochasticLoRALinear


class BaLoRALinear(StochasticLoRALinear):
    """LoRA with input-adaptive multiplicative noise on A. x: (..., d_in) -> y: (..., d_out).

    Extra parameters: ``log_alpha_weight`` (d_in,) and ``log_alpha_bias`` (scalar). The log α of the
    last forward pass, per position (...,), is kept in ``last_log_alpha`` (for the KL and for plots).
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, init_log_alpha: float = -4.0,
                 noise: str = "sequence"):
        super().__init__(base, r, alpha, dropout, noise=noise)
        self.log_alpha_weight = nn.Parameter(torch.zeros(self.in_features))
        self.log_alpha_bias = nn.Parameter(torch.tensor(float(init_log_alpha)))
        self.init_log_alpha = float(init_log_alpha)
        self.last_log_alpha = None
        self._last_mask = None

    def settings(self) -> dict:
        return {**super().settings(), "init_log_alpha": self.init_log_alpha}

    def log_alpha(self, x: torch.Tensor) -> torch.Tensor:
        """log α(x) per position: (..., d_in) -> (...), clamped at 10."""
        return (self.log_alpha_bias + x @ self.log_alpha_weight / math.sqrt(self.in_features)).clamp(max=LOG_ALPHA_MAX)

    def output_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Var[u_k] = α(x) Σ_j A_kj² x_j² per position and rank: (..., d_in) -> (..., r)."""
        return self.log_alpha(x).exp()[..., None] * ((x * x) @ (self.lora_A * self.lora_A).T)

    def _remember(self, x: torch.Tensor) -> torch.Tensor:
        self.last_log_alpha = log_alpha = self.log_alpha(x)
        self._last_mask = self.row_mask(x)
        return log_alpha

    def mean_update(self, x: torch.Tensor) -> torch.Tensor:
        self._remember(x)
        return super().mean_update(x)

    def noisy_update(self, x: torch.Tensor) -> torch.Tensor:
        log_alpha = self._remember(x)
        u = x @ self.lora_A.T                                                            # (..., r)
        if self.noise == "token":
            var = log_alpha.exp()[..., None] * ((x * x) @ (self.lora_A * self.lora_A).T)
            u = u + self.noise_scale * var.clamp_min(1e-30).sqrt() * noise.normal(u.shape, u.dtype, u.device, tokens=True)
        else:
            n = x.shape[0]
            E = noise.normal((n, self.r, self.in_features), x.dtype, x.device)
            flat = x.reshape(n, -1, x.shape[-1])
            drawn = torch.bmm(flat, (self.lora_A * E).transpose(1, 2)).reshape(u.shape)    # (θ_A ⊙ E_n) x_t
            u = u + self.noise_scale * (0.5 * log_alpha).exp()[..., None] * drawn
        return u @ self.lora_B.T

    def kl(self) -> torch.Tensor:
        """r · d_in · (mean over the last pass's real tokens of KL_svd(log α(x_t)))."""
        if self.last_log_alpha is None:
            raise RuntimeError("BaLoRA's KL depends on the input: run a forward pass first.")
        per_position = kl_sparse_vd(self.last_log_alpha)
        mask = self._last_mask
        mean = per_position.mean() if mask is None else (per_position * mask).sum() / mask.sum().clamp_min(1.0)
        return self.r * self.in_features * mean


def balora_layers(model: nn.Module) -> dict[str, BaLoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BaLoRALinear)}


@torch.no_grad()
def log_alpha_per_text(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Mean log α(x) over each text's real tokens, per BaLoRA layer: (N, n_layers), one mean-path pass."""
    from .stochastic import masked_tokens
    from .train import eval_mode

    layers = list(balora_layers(model).values())
    if not layers:
        raise ValueError("the model has no BaLoRALinear layers.")
    with eval_mode(model), masked_tokens(model, inputs.get("attention_mask")):
        model(**inputs)
        columns = []
        for layer in layers:
            log_alpha, mask = layer.last_log_alpha, layer._last_mask
            if log_alpha.dim() == 1:
                columns.append(log_alpha)
                continue
            mask = torch.ones_like(log_alpha) if mask is None else mask
            columns.append((log_alpha * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    return torch.stack(columns, 1).float().cpu()
