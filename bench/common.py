"""Shared pieces of the benchmark scripts: a fixed batch and interleaved, median timings."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from minibayeslora import config, data


def seeded_lora_minilm(r: int = 8, alpha: float = 16, layer_cls=None, seed: int = 0):
    """The benchmarks' model: MiniLM with LoRA on query/value of blocks 3-5, seeded so every run is the same."""
    from minibayeslora.backbones import load_backbone
    from minibayeslora.lora import inject_lora

    config.seed_everything(seed)
    model = load_backbone("minilm")
    inject_lora(model, ["query", "value"], r=r, alpha=alpha, layers=[3, 4, 5], layer_cls=layer_cls)
    return model


def fixed_batch(model, batch: int, length: int) -> tuple[dict, torch.Tensor]:
    """The first ``batch`` training reviews padded/cut to exactly ``length`` tokens, and random labels."""
    texts = data.load_task().train.texts[:batch]
    enc = model.tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    labels = torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(0))
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, labels


def training_step(model, optimizer, batch: dict, labels: torch.Tensor, loss_fn: Callable | None = None) -> Callable[[], float]:
    """A closure running forward + backward + optimizer step; returns its wall time in seconds.

    ``loss_fn(model, batch, labels)`` defaults to the cross-entropy of ``model(**batch)``.
    """
    def step() -> float:
        t0 = time.perf_counter()
        if loss_fn is None:
            loss = torch.nn.functional.cross_entropy(model(**batch), labels)
        else:
            loss = loss_fn(model, batch, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0
    return step


def interleaved_medians(steps: dict[str, Callable[[], float]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median time of each step, running them in alternating order so drifts hit all alike."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times = {name: [] for name in names}
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            times[name].append(steps[name]())
    return {name: statistics.median(t) for name, t in times.items()}
