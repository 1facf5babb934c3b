"""Shared pieces of the benchmark scripts: the device, a fixed batch; interleaved, median timings (``minibayeslora.timing``).

Every bench takes ``--device`` (default ``config.device()``: the GPU when there is one), puts the model and its
fixed batch there before timing, synchronises the device around each timed step, and prints the device.
"""

from __future__ import annotations

import argparse

import torch

from minibayeslora import config, data
from minibayeslora.timing import interleaved_medians, timed, training_step  # noqa: F401 (the benches import them from here)


def parser_with_device(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose description is the bench's first docstring line, with ``--device``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", default=str(config.device()),
                        help="where to run: cpu, cuda, cuda:1 ... (default: %(default)s)")
    return parser


def device_from(args) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: this machine has no CUDA device; use --device cpu.")
    return device


def describe(device: torch.device) -> str:
    """The device in words, for the first line of every bench's output."""
    if device.type == "cuda":
        return f"device {device} ({torch.cuda.get_device_name(device)})"
    return f"device cpu ({torch.get_num_threads()} threads)"


def seeded_lora_minilm(r: int = 8, alpha: float = 16, layer_cls=None, seed: int = 0, device=None):
    """The benchmarks' model: MiniLM with LoRA on query/value of blocks 3-5, seeded so every run is the same."""
    from minibayeslora.backbones import lora_classifier

    return lora_classifier(seed, r=r, alpha=alpha, layer_cls=layer_cls, name="minilm", device=device)


def fixed_batch(model, batch: int, length: int) -> tuple[dict, torch.Tensor]:
    """The first ``batch`` training reviews padded/cut to exactly ``length`` tokens, and random labels, on the model's device."""
    texts = data.load_task().train.texts[:batch]
    enc = model.tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    labels = torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(0))
    return on_model_device(model, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, labels)


def on_model_device(model, batch: dict, labels: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Batch and labels moved once, before timing, so that no step times a host-to-device copy."""
    device = config.model_device(model)
    return config.to_device(batch, device), labels.to(device)
