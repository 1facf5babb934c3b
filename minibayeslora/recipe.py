"""Everything a trained adapter depends on, as JSON: the recipe that ``train.fit``'s cache is keyed by.

A cached result may only be reused by a run that would train the same weights. Beyond the training
config and the data (``train._cache_path``), that run is fixed by

- the **model**: its class, backbone name, quantization, label words, max length and prompt, and a
  sha256 of every frozen tensor (the backbone's weights, a curve's anchors): ``model_recipe``;
- each **adapter layer**: its class and constructor settings (r, α, dropout, and a stochastic
  layer's own, such as its initial log α or prior σ): ``LoRALinear.settings``;
- the **loss**: every setting of the loss object, recursively (β and its warm-up for an ELBO; T, λ,
  ρ and seeds for a curve): ``describe``.

Frozen tensors are hashed once per model and hashed again only after one of them changes (each
tensor's version counter and storage address are checked), so a notebook's repeated ``fit`` calls
cost one hash per model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import weakref

import torch
from torch import nn

_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # module -> {purpose: (signature, hex digest)}
_MODEL_SETTINGS = ("name", "quantization", "label_names", "max_length", "prompt")


def describe(obj):
    """A JSON-able description of a loss or one of its parts, with every setting that changes training.

    Numbers, strings and None stand for themselves; lists, tuples and dicts are described item by item; a
    dataclass by its class and fields; a function by its qualified name and the values it closes over (e.g.
    ``jsd_regulariser(2.0)`` -> λ = 2.0); a module by its class only (its weights belong to the model's
    recipe); any other object by its class and ``settings()``. Anything else is refused rather than guessed.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [describe(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, nn.Module):
        return {"module": type(obj).__qualname__}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"class": _qualname(obj), **{f.name: describe(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if inspect.isfunction(obj):
        closure = inspect.getclosurevars(obj).nonlocals
        return {"function": _qualname(obj), **{k: describe(v) for k, v in sorted(closure.items())}}
    if hasattr(obj, "settings"):
        return {"class": _qualname(obj), **describe(obj.settings())}
    raise TypeError(f"cannot describe a {type(obj).__name__} for the training cache's key: give it a settings() "
                    f"method returning its settings, or make it a dataclass.")


def model_recipe(model: nn.Module) -> dict:
    """The model-side part of the cache key (see the module docstring)."""
    from .lora import LoRALinear

    inner = getattr(model, "model", None)   # a CurveModel wraps the classifier
    recipe = {"class": type(model).__qualname__, "frozen": frozen_digest(model),
              "adapters": {name: m.settings() for name, m in model.named_modules() if isinstance(m, LoRALinear)}}
    for holder in (model, inner):
        for attr in _MODEL_SETTINGS:
            if holder is not None and attr not in recipe and getattr(holder, attr, None) is not None:
                recipe[attr] = describe(getattr(holder, attr))
    if hasattr(model, "settings"):
        recipe["settings"] = describe(model.settings())
    return recipe


def frozen_digest(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every frozen parameter and persistent buffer."""
    return tensors_digest(model, "frozen", [(name, t) for name, t in model.state_dict(keep_vars=True).items()
                                            if not (isinstance(t, nn.Parameter) and t.requires_grad)])


def tensors_digest(owner: nn.Module, purpose, tensors: list[tuple[str, torch.Tensor]]) -> str:
    """sha256 (24 hex digits) over ``tensors``' names, dtypes, shapes and bytes, remembered per ``owner`` and
    ``purpose``: the bytes are read again only after a tensor changed. A tensor changed in place bumps its
    ``_version``; one replaced (``.data = ...``, a reload) has another storage address; either changes the
    signature checked here."""
    signature = tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for name, t in tensors)
    per_owner = _DIGESTS.setdefault(owner, {})
    stored = per_owner.get(purpose)
    if stored is not None and stored[0] == signature:
        return stored[1]
    h = hashlib.sha256()
    for name, tensor in tensors:
        h.update(name.encode())
        h.update(tensor_bytes(tensor))
    per_owner[purpose] = (signature, h.hexdigest()[:24])
    return per_owner[purpose][1]


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's dtype, shape and raw bytes, for hashing (any dtype, any device)."""
    t = tensor.detach().cpu().contiguous()
    return f"{t.dtype}{tuple(t.shape)}".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _qualname(obj) -> str:
    target = obj if inspect.isfunction(obj) else type(obj)
    return f"{target.__module__}.{target.__qualname__}"
