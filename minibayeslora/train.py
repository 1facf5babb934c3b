"""One small, plain training loop used by every notebook, and a train-or-load cache.

``fit`` minimises the mean loss over minibatches with AdamW:

    θ ← AdamW(θ, ∇_θ mean_i ℓ(f_θ(x_i), y_i)),   ℓ = cross-entropy by default,

evaluates on the validation set every ``eval_every`` steps and keeps the state with the lowest
validation NLL (keep-best). Only trainable tensors (LoRA factors and head) are optimised, and the
batches of a run depend only on ``TrainConfig.seed``.

Data come as ``ClassificationData``: token batches (``TextData``) or, when the bottom layers are
frozen, their cached outputs (``PrefixData``, see ``prefix_cache``): the loop does not care which.

``fit(..., cache_key={...})`` stores the result as safetensors + JSON under
``cache_dir()/adapters``, keyed by a hash of the key, the training config, the recipe (the model's
backbone, a hash of its frozen weights and every adapter layer's class and settings; every setting
of the loss; see ``recipe``), the adapter's tensor names and shapes, the data and the package
version; a later identical call loads it instead of training, and so does a run whose result ships with the
course (``checkpoints/``, see ``shipped``; ``MINIBAYESLORA_RETRAIN=1`` ignores those). A keep-best run also stores its final
state under the key of the same run without keep-best (the two runs take identical steps; only the
state kept at the end differs). Files are written atomically; an unreadable file is retrained with
a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import __version__, config, shipped
from .lora import adapter_state, layer_index, load_adapter_state, lora_layers
from .prefix_cache import prefix_features
from .progress import progress_bar
from .recipe import describe, model_recipe


class ClassificationData:
    """N examples: ``inputs(idx)`` -> model kwargs for rows ``idx``; ``labels`` (N,) LongTensor."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, idx) -> dict:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def lengths(self) -> torch.Tensor | None:
        """Token count per example when it is known without tokenising (None otherwise)."""
        return None


class TextData(ClassificationData):
    """Raw texts, tokenised per batch by the model's own tokenizer."""

    def __init__(self, model, texts: list[str], labels: torch.Tensor):
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels.")
        self.model, self.texts, self.labels = model, list(texts), torch.as_tensor(labels, dtype=torch.long)

    def inputs(self, idx) -> dict:
        return self.model.tokenize([self.texts[i] for i in torch.as_tensor(idx).reshape(-1).tolist()])

    def fingerprint(self) -> str:
        return _hash_texts(self.texts, self.labels)


class PrefixData(ClassificationData):
    """Texts whose frozen bottom layers ``0..start_layer-1`` were run once and cached."""

    def __init__(self, model, texts: list[str], labels: torch.Tensor, start_layer: int):
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels.")
        self.features = prefix_features(model, texts, start_layer)
        self.texts, self.labels, self.start_layer = list(texts), torch.as_tensor(labels, dtype=torch.long), start_layer

    def inputs(self, idx) -> dict:
        return self.features.batch(idx)

    def lengths(self) -> torch.Tensor:
        return self.features.lengths

    def fingerprint(self) -> str:
        return _hash_texts(self.texts, self.labels) + f"@{self.start_layer}"


def _hash_texts(texts, labels) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode() + b"\0")
    h.update(labels.numpy().tobytes())
    return h.hexdigest()[:16]


def first_adapted_layer(model) -> int:
    """Lowest block index holding a LoRA layer (the prefix below it is frozen)."""
    indices = [layer_index(n) for n in lora_layers(model)]
    if not indices or None in indices:
        return 0
    return min(indices)


#: ``make_data`` warns when the model's ``max_length`` cuts more than this share of a dataset's texts.
TRUNCATION_WARNING = 0.05
_truncation_checked: set[tuple] = set()     # data sets already checked, so each warns once


def truncated_share(model, texts) -> tuple[float, float]:
    """(share of ``texts`` that ``model.tokenize`` cuts at its ``max_length``, median length in tokens)."""
    if not hasattr(model, "text_lengths") or not len(texts):
        return 0.0, 0.0
    lengths, room = model.text_lengths(texts)
    lengths = torch.tensor(lengths, dtype=torch.float)
    return (lengths > room).float().mean().item(), lengths.median().item()


def _warn_if_truncated(model, texts, labels) -> None:
    tokenizer = getattr(model, "tokenizer", None)
    key = (type(model).__name__, getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
           getattr(model, "max_length", None), _hash_texts(texts, labels))
    if key in _truncation_checked:
        return
    _truncation_checked.add(key)
    share, median = truncated_share(model, texts)
    if share > TRUNCATION_WARNING:
        warnings.warn(f"make_data: {share:.0%} of these {len(texts)} texts are longer than the model's "
                      f"max_length={model.max_length} tokens and lose their end (median length {median:.0f} tokens); "
                      f"load the backbone with a larger max_length, e.g. load_backbone(..., max_length=256).",
                      stacklevel=3)


def make_data(model, split, use_prefix_cache: bool = True) -> ClassificationData:
    """A split (``.texts``, ``.labels``) as training data; cached prefix where the model allows it.

    Warns when the model's ``max_length`` cuts more than 5 % of the texts (``truncated_share``).
    """
    _warn_if_truncated(model, split.texts, torch.as_tensor(split.labels, dtype=torch.long))
    start = first_adapted_layer(model) if use_prefix_cache and getattr(model, "supports_prefix", False) else 0
    if start > 0:
        return PrefixData(model, split.texts, split.labels, start)
    return TextData(model, split.texts, split.labels)


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    eval_every: int = 50
    max_grad_norm: float | None = 1.0
    seed: int = 0
    keep_best: bool = True
    warmup_steps: int = 0
    schedule: str = "constant"  # or "cosine": lr decays to 0 along a half cosine after the warm-up
    param_lr: dict = field(default_factory=dict)  # {name suffix: lr}, e.g. {"log_alpha": 3e-2}; no weight decay there

    @classmethod
    def for_data(cls, n_train: int, epochs: float = 1.0, batch_size: int = 32, evals_per_epoch: int = 4,
                 warmup_fraction: float = 0.1, **settings) -> "TrainConfig":
        """A recipe in epochs rather than steps, so that it transfers between data sets of different sizes.

        steps = ⌈epochs · n_train / batch_size⌉; the validation set is checked ``evals_per_epoch`` times per
        epoch (so keep-best can catch a good step on a small data set, where a step count tuned on a large one
        over-fits between two checks); the warm-up is ``warmup_fraction`` of the steps. Other fields pass
        through ``settings`` (``lr``, ``schedule``, ``seed`` ...).
        """
        if n_train < 1 or not epochs > 0 or batch_size < 1 or evals_per_epoch < 1 or not 0 <= warmup_fraction < 1:
            raise ValueError(f"for_data needs n_train ≥ 1, epochs > 0, batch_size ≥ 1, evals_per_epoch ≥ 1 and "
                             f"0 ≤ warmup_fraction < 1; got {n_train}, {epochs}, {batch_size}, {evals_per_epoch}, "
                             f"{warmup_fraction}.")
        steps_per_epoch = math.ceil(n_train / batch_size)
        steps = math.ceil(epochs * n_train / batch_size)
        return cls(steps=steps, batch_size=batch_size, eval_every=max(1, steps_per_epoch // evals_per_epoch),
                   warmup_steps=round(warmup_fraction * steps), **settings)

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}.")


@dataclass
class History:
    """``train_loss`` per step; ``eval`` rows {step, val_nll, val_acc}; ``records`` rows {step, **record(model)}; the kept step."""

    train_loss: list[float] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    best_step: int = 0
    seconds: float = 0.0
    from_cache: bool = False

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "from_cache"}


def cross_entropy(model, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(**inputs), labels)


@contextmanager
def eval_mode(model):
    """``model.eval()`` inside the block; the caller's train/eval flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def batched_logits(forward: Callable, data: ClassificationData, batch_size: int | None = None,
                   indexed: bool = False) -> torch.Tensor:
    """``forward(inputs) -> (n, ...)`` (logits, or any per-example output) over the whole dataset: (N, ...), rows in data order.

    ``inputs`` are CPU batches (the model moves them to its device); the result is gathered on the CPU.
    With ``indexed``, ``forward(inputs, idx)`` also gets the batch's row indices in ``data``.
    ``batch_size`` defaults to ``config.eval_batch_size()`` (64 on the CPU, 512 on a GPU).

    Batches are taken in order of length where the data know their lengths, so each batch is
    padded to nearly its own length (2-3x faster than random batches on this CPU).
    """
    batch_size = batch_size or config.eval_batch_size()
    lengths = data.lengths()
    order = torch.argsort(lengths, stable=True) if lengths is not None else torch.arange(len(data))
    batches = [order[i:i + batch_size] for i in range(0, len(data), batch_size)]
    chunks = [(forward(data.inputs(idx), idx) if indexed else forward(data.inputs(idx))).cpu() for idx in batches]
    out = torch.empty((len(data),) + chunks[0].shape[1:], dtype=torch.float32)
    out[order] = torch.cat(chunks).float()
    return out


def predict_logits(model, data: ClassificationData, batch_size: int | None = None) -> torch.Tensor:
    """Logits (N, C) of the whole dataset, in eval mode."""
    with eval_mode(model):
        return batched_logits(lambda inputs: model(**inputs), data, batch_size)


def evaluate(model, data: ClassificationData, batch_size: int | None = None) -> dict:
    """``{"nll": mean −log p(y|x), "acc": accuracy}`` on ``data``."""
    logits = predict_logits(model, data, batch_size)
    labels = data.labels
    return {"nll": F.cross_entropy(logits, labels).item(), "acc": (logits.argmax(1) == labels).float().mean().item()}


def fit(model, train_data: ClassificationData, val_data: ClassificationData | None = None,
        cfg: TrainConfig | None = None, loss_fn: Callable = cross_entropy, cache_key: dict | None = None,
        progress: bool = True, record: Callable | None = None, record_every: int = 50) -> History:
    """Train the model's trainable tensors; return the History. See the module docstring.

    ``record(model) -> dict`` of JSON-able values (e.g. every layer's log α as lists), if given, is
    called at step 0 and every ``record_every`` steps; its rows land in ``History.records`` and are
    cached with the adapter, so a cached run still has its trajectories.
    """
    cfg = cfg or TrainConfig()
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {cfg.steps} and {cfg.batch_size}.")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if not params:
        raise ValueError("the model has no trainable tensors: inject LoRA (or unfreeze the head) first.")
    groups = _param_groups(named, cfg)
    path = recipe = key = None
    if cache_key is not None:
        recipe = _recipe(model, loss_fn)
        path, key = _cache_path(recipe, train_data, val_data, cfg, cache_key)
        cached = shipped.load_cached(path, key, lambda candidate: _load(candidate, model))
        if cached is not None:
            return cached

    if hasattr(loss_fn, "reset"):   # a stateful loss (KL warm-up, seeded t draws) starts afresh in every run
        loss_fn.reset()
    generator = torch.Generator().manual_seed(cfg.seed)
    cfg.lr_factor(0)  # validates the schedule before any work
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
    history, best_nll, best_state = History(), float("inf"), None
    start, order = time.perf_counter(), torch.empty(0, dtype=torch.long)
    if record is not None:
        if record_every < 1:
            raise ValueError(f"record_every must be positive, got {record_every}.")
        history.records.append({"step": 0, **record(model)})
    device = config.model_device(model)
    model.train()
    bar = progress_bar(range(1, cfg.steps + 1), desc="training", disable=not progress)
    for step in bar:
        if len(order) < cfg.batch_size:  # a fresh permutation per epoch; no partial batches
            order = torch.cat([order, torch.randperm(len(train_data), generator=generator)])
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        loss = loss_fn(model, config.to_device(train_data.inputs(idx), device), train_data.labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        history.train_loss.append(loss.item())
        if record is not None and (step % record_every == 0 or step == cfg.steps):
            history.records.append({"step": step, **record(model)})
        if val_data is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            metrics = evaluate(model, val_data)
            history.eval.append({"step": step, "val_nll": metrics["nll"], "val_acc": metrics["acc"]})
            bar.set_postfix(val_nll=f"{metrics['nll']:.3f}", val_acc=f"{metrics['acc']:.3f}")
            if metrics["nll"] < best_nll:
                best_nll, best_state, history.best_step = metrics["nll"], adapter_state(model), step
            model.train()
    final = None
    if cfg.keep_best and best_state is not None:
        final = (adapter_state(model), dataclasses.replace(history, eval=list(history.eval), best_step=cfg.steps))
        load_adapter_state(model, best_state)
    else:
        history.best_step = cfg.steps
    model.eval()
    history.seconds = time.perf_counter() - start
    if path is not None:
        _save(path, key, model, history)
        shipped.record(path, key)
        if final is not None:  # the same run without keep-best ends in the final state: cache it under that key too
            state, final_history = final
            final_history.seconds = history.seconds
            _save(*_cache_path(recipe, train_data, val_data, dataclasses.replace(cfg, keep_best=False), cache_key),
                  state, final_history)
    return history


def _param_groups(named, cfg: TrainConfig) -> list[dict]:
    """One AdamW group per ``param_lr`` suffix (its own lr, no weight decay) plus one for the rest."""
    unused = [suffix for suffix in cfg.param_lr if not any(n.endswith(suffix) for n, _ in named)]
    if unused:
        raise ValueError(f"param_lr names {unused}, which no trainable tensor's name ends with.")
    special = {suffix: [] for suffix in cfg.param_lr}
    rest = []
    for name, p in named:
        suffix = next((s for s in cfg.param_lr if name.endswith(s)), None)
        (special[suffix] if suffix is not None else rest).append(p)
    groups = [{"params": rest}] if rest else []
    return groups + [{"params": ps, "lr": cfg.param_lr[s], "weight_decay": 0.0} for s, ps in special.items()]


# ---- train-or-load cache --------------------------------------------------------------------------

def _recipe(model, loss_fn) -> dict:
    """What the trained weights depend on besides config and data: the model (``recipe.model_recipe``), the
    trainable tensors' names and shapes, and every setting of the loss (``recipe.describe``)."""
    return {"model": model_recipe(model), "loss": describe(loss_fn),
            "adapter": {name: list(t.shape) for name, t in adapter_state(model).items()}}


def _cache_path(recipe: dict, train_data, val_data, cfg: TrainConfig, cache_key: dict):
    """The run's cache path (named by the digest of its key) and the key itself."""
    return shipped.cache_path({"key": cache_key, "config": dataclasses.asdict(cfg), "recipe": recipe,
                               "version": __version__, "train": train_data.fingerprint(),
                               "val": val_data.fingerprint() if val_data is not None else None})


def _load(path, model) -> History | None:
    weights, meta = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not (weights.exists() and meta.exists()):
        return None
    try:
        state = load_file(str(weights))
        history = History(**json.loads(meta.read_text())["history"], from_cache=True)
        load_adapter_state(model, state)
    except Exception as err:
        warnings.warn(f"cached adapter {weights.name} is unreadable ({type(err).__name__}: {err}); retraining.")
        return None
    model.eval()
    return history


def _save(path, key: dict, model_or_state, history: History) -> None:
    weights, meta = path.with_suffix(".safetensors"), path.with_suffix(".json")
    state = model_or_state if isinstance(model_or_state, dict) else adapter_state(model_or_state)
    config.write_atomically(weights, lambda tmp: save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp)))
    config.write_atomically(meta, lambda tmp: tmp.write_text(json.dumps({"history": history.to_json(), "key": key}, indent=1)))
