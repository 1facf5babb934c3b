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

    def __post_init__(self):
        if self.n_t < 1:
            raise ValueError(f"n_t must be ≥ 1, got {self.n_t}.")
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, curve: CurveModel, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
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
class FlatPerturbation:
    """``CurveLoss(perturb=FlatPerturbation(ρ))``: Gaussian noise on θ(t), scaled per row (after Flat-LoRA).

    Each row w_i of every tensor (a 1-D tensor is one row) gets ε ~ N(0, σ_i² I) with
    σ_i = ρ_eff · ‖w_i‖ / √n, n the row length, so the noise is a fixed fraction of each row's size.
    ρ_eff ramps from 0 to ρ over the first ``ramp_calls`` calls (training calls it n_t times per step).
    Also usable at prediction time (ramp_calls=0): each call draws fresh, seeded noise. The noise is
    not differentiated through; gradients reach θ(t) as if unperturbed (θ̃ = θ + ε).
    """

    rho: float = 0.05
    ramp_calls: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.rho < 0 or self.ramp_calls < 0:
            raise ValueError(f"rho and ramp_calls must be ≥ 0, got {self.rho} and {self.ramp_calls}.")
        self.calls = 0
        self.generator = torch.Generator().manual_seed(self.seed)

    def current_rho(self) -> float:
        if self.ramp_calls == 0:
            return self.rho
        return self.rho * min(1.0, self.calls / self.ramp_calls)

    def __call__(self, state: dict, t: float | None = None) -> dict:
        rho = self.current_rho()
        self.calls += 1
        out = {}
        for name, w in state.items():
            rows = w.detach().reshape(w.shape[0] if w.dim() > 1 else 1, -1)
            sigma = rho * rows.norm(dim=1, keepdim=True) / math.sqrt(rows.shape[1])
            noise = torch.randn(rows.shape, generator=self.generator, dtype=rows.dtype) * sigma
            out[name] = w + noise.reshape(w.shape).to(w.device)
        return out
