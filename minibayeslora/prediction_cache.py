"""A disk cache for predictive samples and path evaluations, so a re-run notebook does not repeat its evaluations.

``sample_probabilities(method, data, S)`` stores its (S, N, C) result as safetensors under
``cache_dir()/predictions``, keyed by a hash of everything the samples depend on:

- the method: its class and settings (seed, noise scale, temperature, ...), and for every model or
  list of adapter states it holds, a hash of all their tensors (frozen ones through
  ``recipe.frozen_digest``, hashed once per model; the small trainable ones every time) and each
  adapter layer's settings;
- the data (texts, labels, cached-prefix layer), S, the device type (CPU and CUDA draw different random
  numbers) and the package version. Not the batch size: draws are seeded per example (``noise``).

A method may instead list what its samples depend on in ``cache_description()`` (Laplace-LoRA: the model, the
posterior's mean, precision and prior precision, its settings and seed). A method that holds something this
module cannot describe, or that is not one of the package's own classes (a class written in a notebook may
change between runs), is simply not cached.

``connectivity.evaluate_path`` stores its losses and accuracies along a path as JSON under
``cache_dir()/paths``, keyed by the model (as above), the t grid and a hash of the adapter state at every t, the data
and the batch size; a model with a module class from outside the package and the libraries it builds on (a layer
written in a notebook) is not cached.
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__, config
from .recipe import describe, frozen_digest, tensor_bytes


class Undescribable(Exception):
    """The method holds a value whose effect on the samples the key cannot capture."""


def method_key(method, data, S: int) -> str | None:
    """The cache key of ``sample_probabilities(method, data, S)``, or None if it cannot be cached.

    The batch size is not in it: draws are seeded per example (``noise``), so it does not change the result.

    Only the package's own methods are cached: a class written in a notebook (an exercise) may change its code
    between runs under the same name and settings, and must run afresh every time.
    """
    if not type(method).__module__.startswith("minibayeslora."):
        return None
    try:
        described = _describe_method(method)
    except Undescribable:
        return None
    device = next((config.model_device(v).type for v in vars(method).values() if isinstance(v, nn.Module)), "cpu")
    key = {"method": described, "data": data.fingerprint(), "S": S, "draws": "per example, S copies per call",
           "device": device, "version": __version__}
    return _hash(key)


TRUSTED_MODULES = ("minibayeslora.", "torch.", "transformers.", "peft.", "bitsandbytes.")


def path_key(model: nn.Module, ts, states: list[dict], data, batch_size) -> str | None:
    """The cache key of ``evaluate_path`` at these states, or None if the model runs code from outside the package."""
    if not all(type(m).__module__.startswith(TRUSTED_MODULES) for m in model.modules()):
        return None
    try:
        described = {"model": model_digest(model), "states": [_describe_value(state) for state in states]}
    except Undescribable:
        return None
    key = {"path": described, "ts": [float(t) for t in ts], "data": data.fingerprint(), "batch_size": batch_size,
           "device": config.model_device(model).type, "version": __version__}
    return _hash(key)


def load_json(key: str) -> dict | None:
    path = config.cache_dir("paths") / f"{key}.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError:      # a truncated file: recompute rather than fail
        print(f"Ignoring unreadable path cache {path.name}; recomputing.")
        return None


def store_json(key: str, result: dict) -> None:
    config.write_atomically(config.cache_dir("paths") / f"{key}.json", lambda tmp: tmp.write_text(json.dumps(result)))


def _hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def load(key: str) -> torch.Tensor | None:
    path = config.cache_dir("predictions") / f"{key}.safetensors"
    if not path.exists():
        return None
    try:
        return load_file(str(path))["samples"]
    except Exception as err:  # a truncated or foreign file: recompute rather than fail
        print(f"Ignoring unreadable prediction cache {path.name} ({type(err).__name__}); recomputing.")
        return None


def store(key: str, samples: torch.Tensor) -> None:
    config.write_atomically(config.cache_dir("predictions") / f"{key}.safetensors",
                            lambda tmp: save_file({"samples": samples.contiguous()}, str(tmp)))


def model_digest(model: nn.Module) -> dict:
    """Frozen tensors (memoised), trainable tensors and adapter settings of a model, hashed."""
    from .lora import LoRALinear

    trainable = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            trainable.update(name.encode())
            trainable.update(tensor_bytes(p))
    return {"frozen": frozen_digest(model), "trainable": trainable.hexdigest()[:24],
            "adapters": {name: m.settings() for name, m in model.named_modules() if isinstance(m, LoRALinear)}}


def _describe_method(method) -> dict:
    out = {"class": f"{type(method).__module__}.{type(method).__qualname__}"}
    # a method holding an object from another library says itself what its samples depend on
    items = method.cache_description() if hasattr(method, "cache_description") else vars(method)
    for name, value in sorted(items.items()):
        out[name] = _describe_value(value)
    return out


def _describe_value(value):
    if isinstance(value, nn.Module):
        return model_digest(value)
    if torch.is_tensor(value):
        return hashlib.sha256(tensor_bytes(value)).hexdigest()[:24]
    if isinstance(value, dict) and all(torch.is_tensor(v) for v in value.values()):   # an adapter state
        h = hashlib.sha256()
        for k in sorted(value):
            h.update(k.encode())
            h.update(tensor_bytes(value[k]))
        return h.hexdigest()[:24]
    if isinstance(value, (list, tuple)):
        return [_describe_value(v) for v in value]
    try:
        return describe(value)
    except TypeError as err:
        raise Undescribable(str(err)) from err
