"""Run the frozen bottom of a network once per dataset and reuse its output.

When adapters sit only in layers ``start_layer..L-1`` (the course's default: the top 3
of MiniLM's 6 blocks, or of SmolLM2's 30), the hidden states entering layer ``start_layer``,

    h_start = layer_{start-1} ∘ … ∘ layer_0 ∘ embed(x),

never change during training or multi-sample prediction. We compute them once (eval mode, no
grad) and keep them in memory and on disk, keyed by the frozen weights, the texts, the layer
and the max length. A cached batch enters the model at ``start_layer``:
``model(**features.batch(idx))`` equals ``model(**model.tokenize(texts))`` (tested).

Storage is ragged: only real tokens are kept, ``hidden`` (T, H) with ``offsets`` (N+1,), so
padding costs nothing; a batch is padded to its own longest text. The memory cache keeps the most
recently used features up to ``MEMORY_LIMIT_BYTES`` (default 2 GiB; ``MINIBAYESLORA_PREFIX_MEMORY_MB``);
the frozen weights are hashed once per model and rehashed only when one of them is changed in place
or replaced (each tensor's version counter and storage address are checked on every call).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from . import config
from .progress import progress_bar
from .recipe import tensors_digest

MEMORY_LIMIT_BYTES = int(float(os.environ.get("MINIBAYESLORA_PREFIX_MEMORY_MB", 2048)) * 2**20)
_MEMORY: OrderedDict[str, "PrefixFeatures"] = OrderedDict()      # least recently used first


@dataclass
class PrefixFeatures:
    """Cached hidden states of N texts: ``hidden`` (T, H) real tokens only, ``offsets`` (N+1,)."""

    hidden: torch.Tensor
    offsets: torch.Tensor
    start_layer: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def batch(self, idx=None) -> dict:
        """Rows ``idx`` as model inputs: ``prefix_hidden`` (B, L_b, H), ``attention_mask`` (B, L_b)."""
        idx = torch.arange(len(self)) if idx is None else torch.as_tensor(idx).reshape(-1)
        lengths = self.lengths[idx]
        positions = torch.arange(int(lengths.max()))
        mask = positions[None, :] < lengths[:, None]                                   # (B, L_b)
        # row b, position p reads token offsets[idx_b] + p (clamped where it is padding, then zeroed)
        tokens = (self.offsets[idx][:, None] + positions[None, :]).clamp(max=len(self.hidden) - 1)
        hidden = self.hidden[tokens].masked_fill_(~mask[..., None], 0.0)               # (B, L_b, H)
        return {"prefix_hidden": hidden, "attention_mask": mask.long(), "start_layer": self.start_layer}

    @property
    def nbytes(self) -> int:
        return self.hidden.numel() * self.hidden.element_size() + self.offsets.numel() * self.offsets.element_size()


def _fingerprint(model, start_layer: int, texts: list[str], max_length: int) -> str:
    """Hash of everything the cached states depend on: frozen weights below the layer, texts, layer, length.

    The weights' digest is remembered per model (``recipe.tensors_digest``): read once, again only after a change.
    """
    frozen = [model.embeddings] + list(model.layers[:start_layer])
    tensors = [(name, t) for module in frozen for name, t in sorted(module.state_dict(keep_vars=True).items())]
    h = hashlib.sha256()
    h.update(json.dumps({"layer": start_layer, "max_length": max_length,
                         "model": getattr(model, "name", type(model).__name__)}).encode())
    h.update(tensors_digest(model, ("prefix", start_layer), tensors).encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


@torch.no_grad()
def compute_prefix(model, texts: list[str], start_layer: int, max_length: int | None = None,
                   batch_size: int = 64, progress: bool = True) -> PrefixFeatures:
    """Hidden states entering layer ``start_layer`` for every text (no caching)."""
    if not 0 <= start_layer <= model.num_layers:
        raise ValueError(f"start_layer must be in 0..{model.num_layers}, got {start_layer}.")
    was_training = model.training
    model.eval()
    max_length = max_length or model.max_length
    # Sorting by length keeps batches nearly free of padding; rows go back in order afterwards.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pieces: list[torch.Tensor | None] = [None] * len(texts)
    dev = config.model_device(model)
    steps = range(0, len(texts), batch_size)
    for i in progress_bar(steps, desc=f"prefix (layers 0..{start_layer - 1})", disable=not progress or len(steps) < 4):
        rows = order[i:i + batch_size]
        batch = model.tokenize([texts[r] for r in rows], max_length=max_length)
        ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
        hidden = model.run_layers(model.embed(ids), mask, 0, start_layer).float().cpu()
        for row, h, m in zip(rows, hidden, mask.cpu()):
            pieces[row] = h[m.bool()]
    model.train(was_training)
    lengths = torch.tensor([len(p) for p in pieces])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return PrefixFeatures(torch.cat(pieces), offsets, start_layer)


def prefix_features(model, texts: list[str], start_layer: int, max_length: int | None = None,
                    disk: bool = True, progress: bool = True) -> PrefixFeatures:
    """Cached ``compute_prefix``: memory first, then disk (``cache_dir()/prefix``), else compute and store."""
    texts = list(texts)
    max_length = max_length or model.max_length
    key = _fingerprint(model, start_layer, texts, max_length)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = config.cache_dir("prefix") / f"{key}.safetensors"
    features = None
    if disk and path.exists():
        try:
            stored = load_file(str(path))
            features = PrefixFeatures(stored["hidden"], stored["offsets"], start_layer)
        except Exception as err:  # a truncated or foreign file: recompute rather than fail
            print(f"Ignoring unreadable prefix cache {path.name} ({type(err).__name__}); recomputing.")
    if features is None:
        features = compute_prefix(model, texts, start_layer, max_length, progress=progress)
        if disk:
            config.write_atomically(path, lambda tmp: save_file(
                {"hidden": features.hidden.contiguous(), "offsets": features.offsets}, str(tmp)))
    _remember(key, features)
    return features


def _remember(key: str, features: PrefixFeatures) -> None:
    """Keep ``features`` in memory, dropping the least recently used ones beyond ``MEMORY_LIMIT_BYTES``."""
    _MEMORY[key] = features
    while len(_MEMORY) > 1 and sum(f.nbytes for f in _MEMORY.values()) > MEMORY_LIMIT_BYTES:
        _MEMORY.popitem(last=False)


def clear_memory_cache() -> None:
    _MEMORY.clear()
