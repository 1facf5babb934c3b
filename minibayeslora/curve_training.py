"""Training a Bézier chain of adapters: minimise E_t CE(θ(t)) with the course's training loop.

``CurveModel`` wraps a backbone with LoRA and a ``BezierChain`` over its adapter states. The
backbone's own adapter tensors are frozen; for a given t the chain's point θ(t) replaces them
through ``torch.func.functional_call``, so gradients flow into the chain's control points only.

``CurveLoss`` is the loss handed to ``train.fit``: for each minibatch it draws ``n_t`` values of t
(uniform, or uniform in arc length) and averages the cross-entropy at each,

    loss = (1/T) Σ_j CE(f(x; θ(t_j)), y)  [+ extra(curve, logits_j, y)],

where ``extra`` is an optional term (the JSD regulariser of notebook 04) and ``perturb`` an optional
map θ(t) -> θ̃(t) (flat-minima noise, also notebook 04).

``CurveModel.forward`` (used by ``fit``'s validation and keep-best) returns log p̄, the log of the
class probabilities averaged over ``eval_ts`` along the curve: a cheap curve-BMA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .curves import BezierChain, sample_t
from .metrics import _entropy  # differentiable, unvalidated: the metrics' own H[p] per row


class CurveModel(nn.Module):
    def __init__(self, model: nn.Module, chain: BezierChain, eval_ts=(0.0, 0.25, 0.5, 0.75, 1.0)):
        super().__init__()
        own = {n for n, p in model.named_parameters()}
        missing = [n for n in chain.names if n not in own]
        if missing:
            raise KeyError(f"the chain's tensors {missing[:3]} are not parameters of the model.")
        self.model = model.requires_grad_(False)
        self.chain = chain
        self.eval_ts = tuple(float(t) for t in eval_ts)

    def settings(self) -> dict:
        """What the training cache keys on besides the frozen tensors (the anchors, the classifier) and the chain's shapes."""
        return {"eval_ts": list(self.eval_ts), "degree": self.chain.degree, "mode": self.chain.mode}

    def logits_at(self, t: float, state: dict | None = None, **inputs) -> torch.Tensor:
        """Logits (N, C) of the model at θ(t) (or at a given ``state``, e.g. a perturbed θ(t))."""
        return functional_call(self.model, self.chain.point(t) if state is None else state, args=(), kwargs=inputs,
                               strict=False)

    def forward(self, **inputs) -> torch.Tensor:
        """log p̄ with p̄ = mean over ``eval_ts`` of softmax(logits at θ(t)): (N, C)."""
        log_probs = torch.stack([F.log_softmax(self.logits_at(t, **inputs), -1) for t in self.eval_ts])
        return torch.logsumexp(log_probs, 0) - torch.log(torch.tensor(float(len(self.eval_ts))))


@dataclass
class CurveLoss:
    """Loss for ``train.fit(curve_model, ..., loss_fn=CurveLoss(...))``."""

    n_t: int = 1
    arc_length: bool = False
    seed: int = 0
    extra: Callable | None = None      # extra(curve_model, [logits_j], labels, ts) -> scalar added to the loss
    perturb: Callable | None = None    # perturb(state, t) -> state
    fixed_ts: tuple | None = None      # the same t's every batch instead of random ones (e.g. (0, 1): the two ends)

    def __post_init__(self):
        if self.n_t < 1:
            raise ValueError(f"n_t must be ≥ 1, got {self.n_t}.")
        if self.fixed_ts is not None and (len(self.fixed_ts) == 0 or not all(0.0 <= float(t) <= 1.0 for t in self.fixed_ts)):
            raise ValueError(f"fixed_ts must be a non-empty tuple of values in [0, 1], got {self.fixed_ts}.")
        self.generator = torch.Generator().manual_seed(self.seed)

    def reset(self) -> None:
        """Draw t (and the perturbation's noise) from the start of their seeded streams again; ``train.fit`` calls
        this before training, so a loss reused in a second run gives the same run, not a continuation."""
        self.generator = torch.Generator().manual_seed(self.seed)
        for part in (self.perturb, self.extra):
            if hasattr(part, "reset"):
                part.reset()

    def __call__(self, curve: CurveModel, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        if self.fixed_ts is not None:
            ts = torch.tensor([float(t) for t in self.fixed_ts])
        else:
            ts = sample_t(self.n_t, self.generator, chain=curve.chain if self.arc_length else None)
        logits = []
        for t in ts.tolist():
            state = curve.chain.point(t)
            if self.perturb is not None:
                state = self.perturb(state, t)
            logits.append(curve.logits_at(t, state=state, **inputs))
        loss = torch.stack([F.cross_entropy(l, labels) for l in logits]).mean()
        if self.extra is not None:
            loss = loss + self.extra(curve, logits, labels, ts)
        return loss


def jsd_regulariser(lam: float) -> Callable:
    """``CurveLoss(extra=jsd_regulariser(λ))``: −λ · mean over the batch of the JSD of the T predictions.

    JSD_n = H[mean_j p_j(x_n)] − mean_j H[p_j(x_n)] over the T values of t drawn for the batch (T ≥ 2):
    subtracting it rewards the points of the curve for disagreeing, so the curve spans different functions.
    """
    if lam < 0:
        raise ValueError(f"λ must be ≥ 0, got {lam}.")

    def extra(curve, logits: list, labels: torch.Tensor, ts) -> torch.Tensor:
        if len(logits) < 2:
            raise ValueError("the JSD regulariser needs at least two values of t per batch: CurveLoss(n_t=2) or more.")
        probs = torch.stack([F.softmax(l.float(), -1) for l in logits])                       # (T, N, C)
        return -lam * (_entropy(probs.mean(0)) - _entropy(probs).mean(0)).mean()

    return extra


@dataclass
class FactorPerturbation:
    """``CurveLoss(perturb=FactorPerturbation(ρ))``: Gaussian noise on the adapter state θ(t), scaled per row.

    Each row w_i of every tensor of the state (LoRA factors A and B, and the head; a 1-D tensor is one row) gets
    ε ~ N(0, σ_i² I) with σ_i = ρ_eff · ‖w_i‖ / √n, n the row length, so the noise is a fixed fraction of each
    row's size. This is noise in *LoRA space*, not Flat-LoRA's (Li et al. 2025), which perturbs the merged weight
    W₀ + s·B A instead: see ``MergedWeightPerturbation``. ρ_eff ramps from 0 to ρ over the first ``ramp_calls``
    calls (training calls it n_t times per step). Also usable at prediction time (ramp_calls=0): each call draws
    fresh, seeded noise. The noise is not differentiated through; gradients reach θ(t) as if unperturbed.
    """

    rho: float = 0.05
    ramp_calls: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.rho < 0 or self.ramp_calls < 0:
            raise ValueError(f"rho and ramp_calls must be ≥ 0, got {self.rho} and {self.ramp_calls}.")
        self.reset()

    def reset(self) -> None:
        """Restart the ρ ramp and the seeded noise stream."""
        self.calls = 0
        self.generator = torch.Generator().manual_seed(self.seed)

    def current_rho(self) -> float:
        if self.ramp_calls == 0:
            return self.rho
        return self.rho * min(1.0, self.calls / self.ramp_calls)

    def _next_rho(self) -> float:
        rho = self.current_rho()
        self.calls += 1
        return rho

    def _row_noise(self, w: torch.Tensor, rho: float) -> torch.Tensor:
        """ε with the shape of ``w``: per row, N(0, (ρ‖w_i‖/√n)²) entries; drawn on the CPU generator (seeded)."""
        rows = w.detach().reshape(w.shape[0] if w.dim() > 1 else 1, -1)
        sigma = rho * rows.norm(dim=1, keepdim=True) / math.sqrt(rows.shape[1])
        noise = torch.randn(rows.shape, generator=self.generator, dtype=rows.dtype, device="cpu") * sigma.cpu()
        return noise.reshape(w.shape).to(w.device)

    def __call__(self, state: dict, t: float | None = None) -> dict:
        rho = self._next_rho()
        return {name: w + self._row_noise(w, rho) for name, w in state.items()}


@dataclass
class MergedWeightPerturbation(FactorPerturbation):
    """Flat-LoRA's perturbation (Li et al. 2025): noise on the merged weight W = W₀ + s·B A of each LoRA layer.

    For every adapted layer, ε has rows ε_i ~ N(0, σ_i² I) with σ_i = ρ_eff · ‖W_i‖ / √d_in (W_i a row of the
    *merged* weight, detached), and the forward pass uses W₀ + ε + s·B A: gradients reach A and B exactly as
    without noise. Flat-LoRA's argument is that flatness must hold for the full weight the model uses, not in
    the factor coordinates (where the gauge of B A makes "flat" basis-dependent). Tensors other than the
    adapted layers (the classifier head) are not perturbed. ``layers``: ``lora.lora_layers(model)``.
    """

    layers: dict = None

    def __post_init__(self):
        super().__post_init__()
        if not self.layers:
            raise ValueError("MergedWeightPerturbation needs the model's LoRA layers: layers=lora_layers(model).")

    def __call__(self, state: dict, t: float | None = None) -> dict:
        rho = self._next_rho()
        out = dict(state)
        for name, layer in self.layers.items():
            A, B = state[f"{name}.lora_A"].detach(), state[f"{name}.lora_B"].detach()
            w0 = layer.base.weight.detach()
            merged = w0 + layer.scaling * (B @ A).to(w0.dtype)
            out[f"{name}.base.weight"] = w0 + self._row_noise(merged, rho)
        return out
