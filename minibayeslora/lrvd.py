"""Rank-wise variational dropout for LoRA (LRVD): learn which rank components an adapter needs.

Each rank component r of a LoRA layer gets one multiplicative Gaussian noise variable,

    y = W₀x + (α_lora/r) · B (z ⊙ A x),     z_r ~ N(1, α_r),  one learned log α_r per rank,

so a layer adds r numbers to LoRA's. (α_r is the noise variance; the LoRA scaling
α_lora/r is a different α.) **Local reparameterisation**: rather than sampling z for the weights,
sample the bottleneck u = A x directly, u ~ N(A x, α ⊙ (A x)²). Which draws share a z is a choice
(``noise=``): ``"sequence"`` draws one z per example and uses it for all the example's tokens,
u_t = z ⊙ A x_t, which is exactly one draw of the noisy weights per example; ``"token"`` draws
independently per token, a cheaper-to-ignore noise, because the model averages it away over the
tokens (mean pooling, attention). Inputs without a token axis (N, d_in) behave the same under both.

**KL** (Molchanov et al., 2017, log-uniform prior), per log α, elementwise:

    −KL ≈ k₁ σ(k₂ + k₃ log α) − ½ log(1 + 1/α) − k₁,   k = (0.63576, 1.87320, 1.48695).

It falls as log α grows, so the objective, mean CE + β·Σ KL / N (β ramps from 0 to 1: KL warm-up),
pushes every α_r up; the data term holds α_r down only for components the task needs. A
component with log α_r > 3 (α_r > 20: its noise swamps its signal) is *pruned*.

**Why it breaks the gauge.** LoRA's factors can be re-mixed, A → G A, B → B G⁻¹, without changing
B A (notebook 02). The noise is diagonal in the rank coordinates, so re-mixing changes the noise the
model sees: the objective now prefers a basis in which a few coordinates carry the signal and the
rest can be switched off.

**Mean path.** With sampling off, z is replaced by its mean 1 and, as in sparse variational dropout,
components above the threshold are dropped; ``prune`` then returns a plain LoRA of the kept ranks
with exactly that output. Sampling is switched on explicitly (``sampling(model)``), independent of
``train()``/``eval()``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from . import noise
from .lora import LoRALinear
from .stochastic import ELBOLoss, StochasticLoRALinear, sampling, total_kl  # noqa: F401 (re-exported)

K1, K2, K3 = 0.63576, 1.87320, 1.48695
NOISE_SHARING = ("sequence", "token")
THRESHOLD = 3.0
LOG_ALPHA_MAX = 10.0  # α beyond e¹⁰ changes nothing but overflows sooner


def kl_sparse_vd(log_alpha: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ log-uniform prior) per element of ``log_alpha`` (Molchanov et al. 2017 fit): same shape."""
    negative_kl = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
    return -negative_kl


class VariationalLoRALinear(StochasticLoRALinear):
    """LoRA with a learned noise level per rank: ``log_alpha`` (r,). x: (..., d_in) -> y: (..., d_out)."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, init_log_alpha: float = -4.0,
                 threshold: float | None = THRESHOLD, noise: str = "sequence"):
        super().__init__(base, r, alpha, dropout, noise=noise)
        self.log_alpha = nn.Parameter(torch.full((r,), float(init_log_alpha)))
        self.init_log_alpha, self.threshold = float(init_log_alpha), threshold

    def settings(self) -> dict:
        return {**super().settings(), "init_log_alpha": self.init_log_alpha, "threshold": self.threshold}

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Boolean (r,): the rank components with log α ≤ threshold."""
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            return torch.ones(self.r, dtype=torch.bool, device=self.log_alpha.device)
        return self.log_alpha.detach() <= threshold

    def noisy_update(self, x: torch.Tensor) -> torch.Tensor:
        u = x @ self.lora_A.T                                                              # (..., r)
        std = (0.5 * self.log_alpha.clamp(max=LOG_ALPHA_MAX)).exp() * self.noise_scale
        if self.noise == "token":
            u = u + u.abs() * std * noise.normal(u.shape, u.dtype, u.device, tokens=True)
        else:  # one z per example, shared along every axis between the batch and the rank
            u = u * (1 + std * noise.normal(self.per_example_shape(u), u.dtype, u.device))
        return u @ self.lora_B.T

    def mean_update(self, x: torch.Tensor) -> torch.Tensor:
        u = x @ self.lora_A.T
        return (u * self.keep_mask().to(u.dtype)) @ self.lora_B.T

    def mean_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean path drops the pruned components: (A, B diag(keep))."""
        return self.lora_A, self.lora_B * self.keep_mask().to(self.lora_B.dtype)

    def kl(self) -> torch.Tensor:
        return kl_sparse_vd(self.log_alpha).sum()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kept={int(self.keep_mask().sum())}"


def variational_layers(model: nn.Module) -> dict[str, VariationalLoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, VariationalLoRALinear)}


def rank_log_alpha(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: log α (r,)}``, detached."""
    return {name: layer.log_alpha.detach().clone() for name, layer in variational_layers(model).items()}


def kept_ranks(model: nn.Module, threshold: float = THRESHOLD) -> dict[str, int]:
    return {name: int(layer.keep_mask(threshold).sum()) for name, layer in variational_layers(model).items()}


class LRVDLoss(ELBOLoss):
    """Negative ELBO per training example for LRVD: ``stochastic.ELBOLoss`` (CE with the rank noise on +
    β(step) · KL / n_train, β ramping from 0 to ``kl_weight`` over ``warmup_steps`` calls), so the
    adapter first learns the task and only then starts switching rank components off."""


def prune_layer(layer: VariationalLoRALinear, threshold: float = THRESHOLD) -> nn.Module:
    """A plain ``LoRALinear`` holding the kept rank components (or the bare base layer if none is kept).

    Its scaling is the original α_lora/r, so its output equals ``layer``'s mean path with this threshold.
    """
    keep = layer.keep_mask(threshold)
    k = int(keep.sum())
    if k == 0:
        return layer.base
    plain = LoRALinear(layer.base, k, layer.scaling * k, dropout=0.0)
    plain.dropout = layer.dropout
    with torch.no_grad():
        plain.lora_A.copy_(layer.lora_A[keep])
        plain.lora_B.copy_(layer.lora_B[:, keep])
    return plain.to(layer.lora_A.device)


def prune(model: nn.Module, threshold: float = THRESHOLD) -> nn.Module:
    """A copy of ``model`` with every LRVD layer replaced by a plain LoRA of its kept ranks."""
    pruned = copy.deepcopy(model)
    for name, layer in variational_layers(pruned).items():
        parent_name, _, child = name.rpartition(".")
        parent = pruned.get_submodule(parent_name) if parent_name else pruned
        setattr(parent, child, prune_layer(layer, threshold))
    return pruned


def adapter_numbers(model: nn.Module) -> int:
    """Trainable numbers a model's adapters hold for inference: A and B of every LoRA layer (log α excluded)."""
    return sum(m.lora_A.numel() + m.lora_B.numel() for m in model.modules() if isinstance(m, LoRALinear))
