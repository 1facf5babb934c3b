"""Adapters with weight noise: the one base every Bayesian LoRA layer of the course builds on.

A *stochastic* adapter layer is a LoRA layer whose update is random,

    y = W₀x + (α/r) · B̃ Ã x,      (Ã, B̃) ~ q(A, B)   (a posterior over the factors),

and whose **mean path** (noise off) is a plain LoRA with fixed factors (``to_lora()``). Each method
(``lrvd``, ``inducing``, ``balora``, ``blob``) says what q is through three methods:

- ``noisy_update(x)``: one draw of B̃ Ã x for the adapter input x (..., d_in) -> (..., d_out);
- ``mean_factors()``: the mean path's (A (r, d_in), B (d_out, r));
- ``kl()``: KL(q ‖ p) of the layer, a scalar.

**Which draws share noise** (``noise=``): ``"sequence"`` (the default) draws one weight sample per
example and uses it for all of the example's tokens, which is exactly one draw of the noisy
weights per review; ``"token"`` draws independently per token (noise the model partly averages
away over the tokens). Inputs without a token axis, (N, d_in), behave the same under both.

Noise is switched on explicitly, ``with sampling(model): ...``, independent of ``train()`` /
``eval()`` (dropout and noise are separate switches). ``sampling(model, scale=c)`` multiplies every
noise standard deviation by c: c = 0 gives the mean path's LoRA, the zero-uncertainty limit. Layers draw
their noise through ``noise``: in training from torch's global RNG, in a prediction pass from one generator
per example and copy, so that an example's draws do not depend on its batch.

Training minimises the negative ELBO per example, ``ELBOLoss``:

    L = CE(f_θ̃(x), y) + β · Σ_layers KL / N_train,    θ̃ ~ q  (one draw per example),

with an optional KL warm-up (β ramps from 0), label smoothing and entropy bonus (the tricks of the
public Bayesian-LoRA code, off by default so that the ELBO is the ELBO).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import noise
from .lora import LoRALinear


class StochasticLoRALinear(LoRALinear):
    """A ``LoRALinear`` whose update is drawn from q when ``sampling`` is on (see the module docstring).

    x: (..., d_in) -> y: (..., d_out). Subclasses implement ``noisy_update`` and ``kl`` and, if the
    factors are not stored as ``lora_A``/``lora_B``, ``mean_factors``.
    """

    NOISE: tuple[str, ...] = ("sequence", "token")

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, noise: str = "sequence"):
        if noise not in self.NOISE:
            raise ValueError(f"noise must be one of {self.NOISE} for {type(self).__name__}, got {noise!r}.")
        super().__init__(base, r, alpha, dropout)
        self.noise = noise
        self.sampling = False
        self.noise_scale = 1.0   # multiplies every noise std while sampling; 0 = the mean path
        self.copies = 1          # how many stacked copies of a batch one pass holds (see ``sampling``)
        self.token_mask = None   # (N, L) 0/1 of real tokens, set by ``masked_tokens`` (input-dependent KLs)

    def settings(self) -> dict:
        return {**super().settings(), "noise": self.noise}

    # ---- what a method defines ------------------------------------------------------------------
    def noisy_update(self, x: torch.Tensor) -> torch.Tensor:
        """One draw of B̃ Ã x (before the α/r scaling): (..., d_in) -> (..., d_out)."""
        raise NotImplementedError

    def kl(self) -> torch.Tensor:
        """KL(q ‖ p) of this layer's adapter, a scalar tensor."""
        raise NotImplementedError

    def mean_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean path's factors (A (r, d_in), B (d_out, r))."""
        return self.lora_A, self.lora_B

    @property
    def factor_dtype(self) -> torch.dtype:
        return self.lora_A.dtype

    # ---- shared machinery --------------------------------------------------------------------------
    def mean_update(self, x: torch.Tensor) -> torch.Tensor:
        A, B = self.mean_factors()
        return (x @ A.T) @ B.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            if self.sampling:
                raise RuntimeError("a merged layer cannot sample its noise: call unmerge() first.")
            return y
        x = noise.dropout(self.dropout, x).to(self.factor_dtype)
        update = self.noisy_update(x) if self.sampling else self.mean_update(x)
        return y + (update * self.scaling).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The mean path's ΔW = (α/r) · B A, shape (d_out, d_in)."""
        A, B = self.mean_factors()
        return (B @ A) * self.scaling

    def to_lora(self) -> LoRALinear:
        """A plain ``LoRALinear`` (same frozen base, same α/r) with the mean path's factors: equal outputs."""
        A, B = self.mean_factors()
        plain = LoRALinear(self.base, self.r, self.alpha)
        plain.dropout = self.dropout
        plain.lora_A, plain.lora_B = nn.Parameter(A.detach().clone()), nn.Parameter(B.detach().clone())
        return plain

    def per_example_shape(self, u: torch.Tensor) -> tuple[int, ...]:
        """Shape of one noise draw per example for ``u`` (N, ..., k): (N, 1, ..., 1, k)."""
        return (u.shape[0],) + (1,) * (u.dim() - 2) + (u.shape[-1],) if u.dim() > 1 else tuple(u.shape)

    def copy_index(self, n_rows: int, device=None) -> torch.Tensor:
        """Which stacked copy each of ``n_rows`` rows belongs to: rows [s·N, (s+1)·N) -> s."""
        if n_rows % self.copies:
            raise ValueError(f"{n_rows} rows cannot be split into {self.copies} stacked copies.")
        return torch.arange(n_rows, device=device) // (n_rows // self.copies)

    def row_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """The real-token mask (N, L) matching x (N, L, d), or None when unknown."""
        mask = self.token_mask
        if mask is None or x.dim() != 3 or tuple(mask.shape) != tuple(x.shape[:2]):
            return None
        return mask.to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", noise={self.noise}"


def stochastic_layers(model: nn.Module) -> dict[str, StochasticLoRALinear]:
    """``{module name: layer}`` of every stochastic adapter layer (the model itself counts, name '')."""
    return {name: m for name, m in model.named_modules() if isinstance(m, StochasticLoRALinear)}


def _require_layers(model: nn.Module) -> dict[str, StochasticLoRALinear]:
    layers = stochastic_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no stochastic adapter layer (inject_lora with layer_cls= "
                         "VariationalLoRALinear, InducingLoRALinear, BaLoRALinear or BLoBLinear).")
    return layers


@contextmanager
def sampling(model: nn.Module, on: bool = True, scale: float | None = None, copies: int | None = None):
    """Switch every stochastic layer's noise on (or off) inside the block, whatever train()/eval() says.

    ``scale`` multiplies the noise std (0 = the mean path's LoRA); ``copies`` tells the layers that a
    batch holds that many stacked copies (``predictive.repeat_batch``), so that noise drawn once per
    pass (BLoB's flipout) is drawn once per copy. Everything is restored on exit.
    """
    layers = list(_require_layers(model).values())
    if scale is not None and not scale >= 0:
        raise ValueError(f"scale must be ≥ 0, got {scale!r}.")
    if copies is not None and (not isinstance(copies, int) or copies < 1):
        raise ValueError(f"copies must be a positive int, got {copies!r}.")
    saved = [(layer.sampling, layer.noise_scale, layer.copies) for layer in layers]
    for layer in layers:
        layer.sampling = on
        layer.noise_scale = layer.noise_scale if scale is None else float(scale)
        layer.copies = layer.copies if copies is None else copies
    try:
        yield model
    finally:
        for layer, (state, noise_scale, n_copies) in zip(layers, saved):
            layer.sampling, layer.noise_scale, layer.copies = state, noise_scale, n_copies


@contextmanager
def masked_tokens(model: nn.Module, attention_mask: torch.Tensor | None):
    """Tell every stochastic layer which positions are real tokens (for KLs that depend on the input)."""
    layers = list(stochastic_layers(model).values())
    for layer in layers:
        layer.token_mask = attention_mask
    try:
        yield model
    finally:
        for layer in layers:
            layer.token_mask = None


def total_kl(model: nn.Module) -> torch.Tensor:
    """Σ over the stochastic layers of KL(q ‖ p), a scalar."""
    return torch.stack([layer.kl() for layer in _require_layers(model).values()]).sum()


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H[softmax(logits)] per row (nats): (N, C) -> (N,)."""
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def kl_warmup(kl_weight: float, step: int, warmup_steps: int) -> float:
    """The KL weight at ``step``: β · min(1, step / warmup_steps), a linear ramp from 0 (β from the start if 0)."""
    return kl_weight if warmup_steps <= 0 else kl_weight * min(1.0, step / warmup_steps)


@dataclass
class ELBOLoss:
    """Negative ELBO per training example for ``train.fit``: CE (noise on) + β(step) · KL / n_train.

    ``kl_weight`` is β (1 = the ELBO; larger = a tempered posterior); it ramps from 0 over
    ``warmup_steps`` calls (KL warm-up). ``label_smoothing`` and ``entropy_bonus`` (γ: the loss gets
    −γ · mean H[p]) reproduce the public Bayesian-LoRA recipe; both are 0 by default. On a model
    without stochastic layers the KL weight must be 0: then this is cross-entropy with those tricks.
    """

    n_train: int
    kl_weight: float = 1.0
    warmup_steps: int = 0
    label_smoothing: float = 0.0
    entropy_bonus: float = 0.0

    def __post_init__(self):
        if self.n_train < 1:
            raise ValueError(f"n_train must be positive, got {self.n_train}.")
        if not self.kl_weight >= 0:
            raise ValueError(f"the KL weight β must be ≥ 0, got {self.kl_weight!r}.")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}.")
        if not self.entropy_bonus >= 0:
            raise ValueError(f"entropy_bonus must be ≥ 0, got {self.entropy_bonus!r}.")
        self.calls = 0

    def reset(self) -> None:
        """Start the KL warm-up again: ``train.fit`` calls this before training, so a reused loss starts afresh."""
        self.calls = 0

    def beta(self) -> float:
        return kl_warmup(self.kl_weight, self.calls, self.warmup_steps)

    def __call__(self, model: nn.Module, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        stochastic = bool(stochastic_layers(model))
        if not stochastic and self.kl_weight > 0:
            _require_layers(model)
        with sampling(model) if stochastic else nullcontext(), masked_tokens(model, inputs.get("attention_mask")):
            logits = model(**inputs)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            if self.entropy_bonus:
                loss = loss - self.entropy_bonus * prediction_entropy(logits).mean()
            if stochastic:
                loss = loss + self.beta() * total_kl(model) / self.n_train
        self.calls += 1
        return loss
