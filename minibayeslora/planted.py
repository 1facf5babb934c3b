"""A synthetic linear task with a planted low rank: the ground truth for rank selection (notebook 05).

Synthetic on purpose: on real text nobody knows the "true" rank of the update, so a method's
claim to find it cannot be checked. Here the teacher is

    y = W₀ x + ΔW* x + ε,   ΔW* = U diag(s) Vᵀ of rank k,  x ~ N(0, I),  ε ~ N(0, σ² I),

with a frozen random W₀ (the "pretrained" layer). A student LoRA (or LRVD) layer of rank r > k on
top of the same W₀ learns ΔW from (x, y) pairs by minimising the Gaussian NLL
‖y − ŷ‖² / (2σ²) per example (+ β · KL / n for LRVD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import config
from .lora import LoRALinear
from .lrvd import VariationalLoRALinear, sampling
from .progress import progress_bar
from .stochastic import kl_warmup


@dataclass
class PlantedRank:
    base: nn.Linear           # W₀ (d, d), frozen
    delta: torch.Tensor       # ΔW* (d, d), rank k
    x: torch.Tensor           # (n, d)
    y: torch.Tensor           # (n, d)
    noise: float              # σ of ε

    @property
    def rank(self) -> int:
        return int(torch.linalg.matrix_rank(self.delta))


def planted_rank_task(d: int = 64, singular_values=(3.0, 2.0, 1.0), n: int = 512, noise: float = 0.1,
                      seed: int = 0) -> PlantedRank:
    if len(singular_values) > d:
        raise ValueError(f"rank {len(singular_values)} does not fit in dimension {d}.")
    g = torch.Generator().manual_seed(seed)
    k = len(singular_values)
    base = nn.Linear(d, d).requires_grad_(False)
    with torch.no_grad():
        base.weight.copy_(torch.randn(d, d, generator=g) / math.sqrt(d))
        base.bias.zero_()
    U, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    delta = U @ torch.diag(torch.tensor(singular_values, dtype=torch.float32)) @ V.T
    x = torch.randn(n, d, generator=g)
    with torch.no_grad():
        y = base(x) + x @ delta.T + noise * torch.randn(n, d, generator=g)
    return PlantedRank(base, delta, x, y, noise)


@dataclass
class LinearFitConfig:
    steps: int = 6000
    lr: float = 1e-2
    log_alpha_lr: float = 5e-2
    kl_weight: float = 1.0         # β: 1 is the ELBO; larger values temper the posterior towards the prior
    warmup_steps: int = 500        # β ramps in linearly
    seed: int = 0
    record_every: int = 100


def fit_linear(layer: LoRALinear, task: PlantedRank, cfg: LinearFitConfig, progress: bool = True) -> list[torch.Tensor]:
    """Full-batch Adam on the task's NLL (+ β·KL/n for an LRVD layer); returns log α every ``record_every`` steps."""
    variational = isinstance(layer, VariationalLoRALinear)
    groups = [{"params": [layer.lora_A, layer.lora_B]}]
    if variational:
        groups.append({"params": [layer.log_alpha], "lr": cfg.log_alpha_lr})
    optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    n = len(task.x)
    x, y = task.x.to(layer.lora_A.device), task.y.to(layer.lora_A.device)
    trajectory = []
    with config.private_rng(cfg.seed):  # seeded noise draws that leave the caller's random stream alone
        for step in progress_bar(range(cfg.steps), desc="fitting", disable=not progress):
            _linear_step(layer, x, y, task.noise, optimizer, cfg, step, n, variational, trajectory)
    return trajectory


def _linear_step(layer, x, y, noise: float, optimizer, cfg: LinearFitConfig, step: int, n: int, variational: bool,
                 trajectory: list) -> None:
    """One full-batch step of ``fit_linear``; appends log α to ``trajectory`` every ``record_every`` steps."""
    if variational:
        with sampling(layer, on=True):
            prediction = layer(x)
    else:
        prediction = layer(x)
    loss = ((prediction - y) ** 2).sum(1).mean() / (2 * noise ** 2)
    if variational:
        beta = kl_warmup(cfg.kl_weight, step, cfg.warmup_steps)
        loss = loss + beta * layer.kl() / n
        if step % cfg.record_every == 0:
            trajectory.append(layer.log_alpha.detach().clone())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles in degrees between the column spans of ``a`` (d, p) and ``b`` (d, q), ascending."""
    qa, _ = torch.linalg.qr(a.double())
    qb, _ = torch.linalg.qr(b.double())
    cosines = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines))


def component_angles(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """For each column of ``vectors`` (d, p): the angle in degrees to the nearest column of ``basis`` (d, q), up to sign.

    Principal angles only compare spans; this asks whether each vector *is* one of the basis
    directions (0°) or a mixture of them (up to 90°).
    """
    v = vectors.double() / vectors.double().norm(dim=0)
    b = basis.double() / basis.double().norm(dim=0)
    cosines = (b.T @ v).abs().max(0).values.clamp(max=1.0)
    return torch.rad2deg(torch.arccos(cosines))


def rank_components(layer: LoRALinear, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B columns (d_out, k), A rows as columns (d_in, k), strengths ‖b_r‖·‖a_r‖ (k,)) of the kept components."""
    B, A = layer.lora_B.detach(), layer.lora_A.detach()
    if keep is not None:
        B, A = B[:, keep], A[keep]
    return B, A.T, B.norm(dim=0) * A.norm(dim=1) * layer.scaling
