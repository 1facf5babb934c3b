"""One interface for every predictive method: ``predict_samples(inputs, S) -> (S, N, C)`` probabilities.

A method is any object with that method. ``inputs`` is one batch of model kwargs (token ids or a
prefix-cache batch) for N examples; the S samples are S draws from the method's predictive
distribution (S = 1 for a point estimate). The model runs on its own device; the probabilities
come back on the CPU, where metrics and plots use them. ``sample_probabilities`` runs a method over a whole
dataset, and ``metrics`` turns the result into numbers (p̄ = mean over S).

Noise is switched on explicitly by each method and the model stays in ``eval()`` mode.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

from . import config, noise, prediction_cache
from .train import batched_logits, eval_mode


class Predictive(Protocol):
    def predict_samples(self, inputs: dict, S: int) -> torch.Tensor: ...


def batch_rows(inputs: dict) -> int:
    """N, the number of examples in a batch of model kwargs: the first axis of its first tensor."""
    for value in inputs.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    raise ValueError(f"a batch needs at least one tensor with a first (example) axis; got keys {sorted(inputs)}.")


def repeat_batch(inputs: dict, S: int) -> dict:
    """Stack S copies of a batch along its first dimension (N -> S·N); non-tensor values pass through."""
    n = batch_rows(inputs)
    return {k: v.repeat(S, *([1] * (v.dim() - 1))) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v
            for k, v in inputs.items()}


@torch.no_grad()
def stacked_draws(model: nn.Module, inputs: dict, S: int, seed: int, noise_on) -> torch.Tensor:
    """S seeded draws of a per-example noise in one eval-mode pass over S stacked copies: (S, N, C).

    ``noise_on`` is a context manager that switches the method's noise on for the pass. Every example of the pass
    draws its S copies' noise from its own generator (``noise.per_example``), seeded by the seed and the example's
    index (set by ``sample_probabilities``; 0..N-1 for a batch given directly): an example's draws do not depend
    on the batch it is in.
    """
    if S < 1:
        raise ValueError(f"S must be ≥ 1, got {S}.")
    device = config.model_device(model)
    inputs = config.to_device(inputs, device)  # repeat on the model's device, not before the copy
    n = batch_rows(inputs)
    rows = noise.per_example(seed, noise.current_examples(n), S, inputs.get("attention_mask"), device)
    with eval_mode(model), config.private_rng(seed), rows, noise_on:
        logits = model(**repeat_batch(inputs, S))
    return logits.float().softmax(-1).view(S, -1, logits.shape[-1]).cpu()


class MAP:
    """The trained model itself: one sample, (1, N, C), whatever S is asked for."""

    def __init__(self, model: nn.Module):
        self.model = model

    @torch.no_grad()
    def predict_samples(self, inputs: dict, S: int = 1) -> torch.Tensor:
        with eval_mode(self.model):
            return self.model(**inputs).float().softmax(-1).unsqueeze(0).cpu()


class NoiseSampler:
    """S draws of a stochastic adapter's weight noise (LRVD, Bayesian-LoRA, BaLoRA, BLoB), one stacked pass.

    The batch is repeated S times (``repeat_batch``) and run once with the noise on; per-example
    noise gives every copy of every example its own draw, so the S samples of an example are iid.
    Draws are seeded (``seed``): the same call gives the same samples. ``scale`` multiplies every
    noise std (0 = the mean path's LoRA, 1 = the posterior as trained).
    """

    layer_cls = None  # set by subclasses that accept only one kind of layer

    def __init__(self, model: nn.Module, seed: int = 0, scale: float = 1.0):
        from .stochastic import StochasticLoRALinear, stochastic_layers

        wanted = self.layer_cls or StochasticLoRALinear
        if not any(isinstance(m, wanted) for m in stochastic_layers(model).values()):
            if self.layer_cls is None:
                raise ValueError("the model has no stochastic adapter layer (inject_lora with layer_cls="
                                 "VariationalLoRALinear, InducingLoRALinear, BaLoRALinear or BLoBLinear).")
            raise ValueError(f"the model has no {wanted.__name__} layers (inject with layer_cls={wanted.__name__}).")
        if not scale >= 0:
            raise ValueError(f"scale must be ≥ 0, got {scale!r}.")
        self.model, self.seed, self.scale = model, seed, scale

    def predict_samples(self, inputs: dict, S: int) -> torch.Tensor:
        from .stochastic import sampling

        if not isinstance(S, int) or S < 1:
            raise ValueError(f"S must be ≥ 1, got {S!r}.")
        return stacked_draws(self.model, inputs, S, self.seed, sampling(self.model, scale=self.scale, copies=S))


class LRVDSampler(NoiseSampler):
    """``NoiseSampler`` for a model with LRVD layers (rank noise)."""

    @property
    def layer_cls(self):
        from .lrvd import VariationalLoRALinear

        return VariationalLoRALinear


def sample_probabilities(method: Predictive, data, S: int, batch_size: int = 64, cache: bool = True) -> torch.Tensor:
    """``method.predict_samples`` over a whole ClassificationData: (S', N, C) with rows in data order.

    Sampling methods seed each example's draws by its index in ``data`` (``noise``), so the result does not
    depend on ``batch_size``, which only sets how many examples one forward pass holds. With ``cache``
    (default), the result is stored on disk and a later identical call loads it (``prediction_cache``: keyed
    by the method's settings and every tensor of its model or states, the data and S).
    """
    key = prediction_cache.method_key(method, data, S) if cache else None
    if key is not None and (cached := prediction_cache.load(key)) is not None:
        return cached

    def draws(inputs, idx):
        with noise.examples(idx):   # each example's draws are seeded by its index: the same for any batch_size
            return method.predict_samples(inputs, S).transpose(0, 1)

    samples = batched_logits(draws, data, batch_size, indexed=True)
    samples = samples.transpose(0, 1).contiguous()
    if key is not None:
        prediction_cache.store(key, samples)
    return samples


class MCDropout:
    """Dropout on each adapter's input (``LoRALinear(dropout=p)``), switched on only while sampling.

    The model stays in ``eval()``; the S draws run as one pass over S stacked copies of the batch.
    """

    def __init__(self, model: nn.Module, seed: int = 0):
        from .lora import lora_layers

        self.dropouts = [layer.dropout for layer in lora_layers(model).values() if isinstance(layer.dropout, nn.Dropout)]
        if not self.dropouts:
            raise ValueError("the model's LoRA layers have no dropout: inject with dropout > 0.")
        self.model, self.seed = model, seed

    @contextmanager
    def _dropout_on(self):
        for dropout in self.dropouts:
            dropout.train()
        try:
            yield
        finally:
            for dropout in self.dropouts:
                dropout.eval()

    def predict_samples(self, inputs: dict, S: int) -> torch.Tensor:
        return stacked_draws(self.model, inputs, S, self.seed, self._dropout_on())


class StateAverage:
    """Average over a list of adapter states (a deep ensemble, or points of a curve): (len(states), N, C).

    ``batched=True`` runs all S states in one pass over S stacked copies of the batch
    (``stacked_states``); otherwise each state replaces the model's tensors in its own pass through
    ``functional_call``. Both give the same numbers; S is fixed by the list.
    """

    def __init__(self, model: nn.Module, states: list[dict], batched: bool = False):
        if not states:
            raise ValueError("no adapter states to average over.")
        device = config.model_device(model)
        self.model, self.batched = model, batched
        self.states = [{name: tensor.to(device) for name, tensor in state.items()} for state in states]

    @torch.no_grad()
    def predict_samples(self, inputs: dict, S: int | None = None) -> torch.Tensor:
        from torch.func import functional_call

        inputs = config.to_device(inputs, config.model_device(self.model))
        with eval_mode(self.model):
            if self.batched:
                with stacked_states(self.model, self.states):
                    logits = self.model(**repeat_batch(inputs, len(self.states)))
                return logits.float().softmax(-1).view(len(self.states), -1, logits.shape[-1]).cpu()
            return torch.stack([functional_call(self.model, state, args=(), kwargs=inputs, strict=False).float().softmax(-1)
                                for state in self.states]).cpu()


@contextmanager
def stacked_states(model: nn.Module, states: list[dict]):
    """Inside the block, rows [s·N, (s+1)·N) of a batch of S·N (``repeat_batch``) run through ``states[s]``.

    Supports states made of plain LoRA factors and linear layers (the head): each such module
    computes its S versions with batched matmuls, x (S·N, ..., d_in) -> (S, N·…, d_in) @ W_sᵀ.
    The frozen rest of the model runs once on the whole S·N batch. For prediction only: adapter
    dropout is not applied, and LoRA subclasses (LRVD) and merged layers are refused.
    """
    from .lora import LoRALinear

    S = len(states)
    names = set(states[0])
    if any(set(state) != names for state in states):
        raise KeyError("every state must hold the same tensor names.")
    device = config.model_device(model)
    stack = {name: torch.stack([state[name].to(device) for state in states]) for name in names}   # (S, *shape)
    patched, covered = [], set()
    try:
        for prefix, module in model.named_modules():
            own = {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
            if type(module) is LoRALinear and {f"{prefix}.lora_A", f"{prefix}.lora_B"} <= names:
                if module.merged:
                    raise ValueError(f"{prefix} is merged: unmerge() it before averaging over adapter states.")
                A, B = stack[f"{prefix}.lora_A"], stack[f"{prefix}.lora_B"]

                def forward(x, m=module, A=A, B=B):
                    y = m.base(x)
                    u = torch.bmm(x.reshape(S, -1, x.shape[-1]).to(A.dtype), A.transpose(1, 2))          # (S, N·…, r)
                    update = torch.bmm(u, B.transpose(1, 2)).reshape(*x.shape[:-1], B.shape[1])
                    return y + (update * m.scaling).to(y.dtype)
            elif isinstance(module, nn.Linear) and own and own <= names:
                W = stack[f"{prefix}.weight" if prefix else "weight"]
                b = stack.get(f"{prefix}.bias" if prefix else "bias")

                def forward(x, W=W, b=b):
                    xs = x.reshape(S, -1, x.shape[-1]).to(W.dtype)
                    y = torch.bmm(xs, W.transpose(1, 2)) if b is None else torch.baddbmm(b[:, None, :], xs, W.transpose(1, 2))
                    return y.reshape(*x.shape[:-1], W.shape[1])
            else:
                continue
            covered |= {f"{prefix}.lora_A", f"{prefix}.lora_B"} if isinstance(module, LoRALinear) else own
            module.forward = forward
            patched.append(module)
        left = names - covered
        if left:
            raise ValueError(f"stacked_states handles LoRA factors and linear layers only; cannot stack {sorted(left)[:3]}.")
        yield model
    finally:
        for module in patched:
            del module.forward


def curve_states(chain, ts) -> list[dict]:
    """The chain's points θ(t) for each t, detached: the states of a curve BMA on a t grid."""
    with torch.no_grad():
        return [{k: v.detach() for k, v in chain.point(float(t)).items()} for t in ts]
