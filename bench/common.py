"""Shared pieces of the benchmark scripts: a fixed batch; interleaved, median timings (``minibayeslora.timing``)."""

from __future__ import annotations

import torch

from minibayeslora import config, data
from minibayeslora.timing import interleaved_medians, training_step  # noqa: F401 (the benches import them from here)


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
