"""LoRA: a frozen linear layer plus a trainable low-rank update.

    y = W₀ x + b₀ + (α/r) · B A x,     A ∈ R^{r×d_in} (random),  B ∈ R^{d_out×r} (zeros)

so ΔW = (α/r)·B A has rank ≤ r and is exactly zero at initialisation: training starts from the
pretrained model. Names follow PEFT (``lora_A``, ``lora_B``, ``scaling = alpha / r``).

An *adapter state* is a plain dict name -> tensor holding every trainable tensor of a model (the
LoRA factors and the classifier head). Curves, ensembles and posteriors in later notebooks are
distributions over such dicts. Converters map them to and from PEFT's format.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from . import noise

#: Module-list names under which transformers keep their blocks (``...layer.3.attention...``).
_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|blocks)\.(\d+)\.")


def _is_quantized(module: nn.Module) -> bool:
    return type(module).__name__ in {"Linear4bit", "Linear8bitLt", "LinearNF4", "LinearFP4"}


class LoRALinear(nn.Module):
    """A frozen ``base`` linear layer (``nn.Linear``, or bitsandbytes 4/8-bit for QLoRA) plus (α/r)·BA.

    x: (..., d_in) -> y: (..., d_out). ``dropout`` acts on the adapter's input only:
    y = base(x) + (α/r) · B A dropout(x).
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not (isinstance(base, nn.Linear) or _is_quantized(base)):
            raise TypeError(f"LoRALinear wraps nn.Linear or a bitsandbytes Linear4bit/Linear8bitLt, got {type(base).__name__}.")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"rank r must be a positive int, got {r!r}.")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha!r}.")
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self._init_factors()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def _init_factors(self) -> None:
        """A ~ PEFT's Kaiming-uniform default, B = 0. (Subclasses that generate A and B override this.)"""
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's default for A

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) · B A, shape (d_out, d_in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        update = (noise.dropout(self.dropout, x).to(self.lora_A.dtype) @ self.lora_A.T) @ self.lora_B.T
        return y + (update * self.scaling).to(y.dtype)

    def merge(self) -> None:
        """W₀ ← W₀ + ΔW, so inference costs one matmul. Merging a merged layer does nothing."""
        if self.merged:
            return
        if _is_quantized(self.base):
            raise NotImplementedError("cannot merge into a quantized base exactly: keep the adapter separate (QLoRA).")
        with torch.no_grad():
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        """W₀ ← W₀ − ΔW (undoes ``merge``). Unmerging an unmerged layer does nothing."""
        if not self.merged:
            return
        with torch.no_grad():
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def settings(self) -> dict:
        """The constructor's settings (all but ``base``): the training cache keys on them (``recipe``).

        A subclass with settings of its own extends this dict with every one of them.
        """
        p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        return {"class": type(self).__qualname__, "r": self.r, "alpha": float(self.alpha), "dropout": float(p)}

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}, merged={self.merged}"


def layer_index(name: str) -> int | None:
    """Block index in a module name: ``encoder.encoder.layer.3.attention.self.query`` -> 3."""
    match = _LAYER_INDEX.search("." + name + ".")
    return int(match.group(1)) if match else None


def inject_lora(model: nn.Module, target_modules, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                layers=None, trainable_modules=("head",), layer_cls: type = None,
                layer_kwargs: dict | None = None) -> dict[str, LoRALinear]:
    """Replace each matching linear by a ``LoRALinear`` and freeze everything else.

    ``target_modules``: names as in PEFT (a module matches when its name ends in ``.<target>``);
    ``layers``: block indices to adapt (None = all); ``trainable_modules``: submodules that stay
    trainable (the classifier head); ``layer_cls``: a ``LoRALinear`` subclass to inject instead
    (e.g. ``lrvd.VariationalLoRALinear``), built with ``layer_kwargs`` as extra keyword arguments
    (e.g. ``{"init_log_alpha": 0.0}``). Returns ``{module name: LoRALinear}``.
    """
    layer_cls = layer_cls or LoRALinear
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, LoRALinear)):
        raise TypeError(f"layer_cls must be LoRALinear or a subclass of it, got {layer_cls!r}.")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not targets:
        raise ValueError("target_modules is empty.")
    wanted_layers = None if layers is None else {int(i) for i in layers}
    model.requires_grad_(False)
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            raise ValueError(f"{name} already holds a LoRA adapter; load a fresh backbone to inject again.")
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if wanted_layers is not None and layer_index(name) not in wanted_layers:
            continue
        if isinstance(module, nn.Linear) or _is_quantized(module):
            chosen.append(name)
    if not chosen:
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear) or _is_quantized(m)})
        raise ValueError(f"no linear layer matches target_modules={targets} (layers={layers}); "
                         f"linear layer names in this model: {linears}.")
    injected = {}
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lora = layer_cls(getattr(parent, child), r, alpha, dropout, **(layer_kwargs or {}))
        device = next(getattr(parent, child).parameters()).device
        setattr(parent, child, lora.to(device) if not _is_quantized(lora.base) else _move_factors(lora, device))
        injected[name] = lora
    for name in trainable_modules:
        if hasattr(model, name):
            getattr(model, name).requires_grad_(True)
    return injected


def _move_factors(lora: LoRALinear, device) -> LoRALinear:
    lora.lora_A.data, lora.lora_B.data = lora.lora_A.data.to(device), lora.lora_B.data.to(device)
    return lora


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor, detached and cloned: ``{parameter name: tensor}``."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's trainable tensors; names and shapes must match exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(f"adapter state does not fit this model: missing {missing[:4]}{'…' if len(missing) > 4 else ''}, "
                       f"unexpected {unexpected[:4]}{'…' if len(unexpected) > 4 else ''} "
                       f"(was it trained with other target_modules, layers or head?).")
    for name, p in params.items():
        if tuple(state[name].shape) != tuple(p.shape):
            raise ValueError(f"shape mismatch for {name}: state has {tuple(state[name].shape)}, model has "
                             f"{tuple(p.shape)} (a different rank r?).")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


# ---- PEFT interoperability ---------------------------------------------------------------------
# PEFT keys look like ``base_model.model.<module>.lora_A.weight`` and, for a fully trained module
# kept with ``modules_to_save``, ``base_model.model.<module>.weight``.

_PEFT_PREFIX = "base_model.model."


def adapter_state_to_peft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our adapter state -> PEFT's saved-adapter state dict (same tensors, PEFT's names)."""
    out = {}
    for name, tensor in state.items():
        if name.endswith((".lora_A", ".lora_B")):
            name = name + ".weight"
        out[_PEFT_PREFIX + name] = tensor
    return out


def peft_to_adapter_state(peft_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's adapter state dict (from ``get_peft_model_state_dict`` or a saved adapter) -> ours."""
    out = {}
    for name, tensor in peft_state.items():
        name = name.removeprefix(_PEFT_PREFIX)
        name = re.sub(r"\.(lora_[AB])(?:\.default)?\.weight$", r".\1", name)
        name = name.replace(".modules_to_save.default.", ".")
        out[name] = tensor
    return out


def peft_config_for(model: nn.Module, trainable_modules=("head",)):
    """A ``peft.LoraConfig`` that reproduces the LoRA injected in ``model`` (same r, α, dropout, layers)."""
    from peft import LoraConfig

    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers; call inject_lora first.")
    ranks = {(m.r, m.alpha, float(getattr(m.dropout, "p", 0.0))) for m in layers.values()}
    if len(ranks) != 1:
        raise ValueError(f"PEFT's LoraConfig needs one (r, alpha, dropout) for all layers, found {ranks}.")
    (r, alpha, dropout), = ranks
    indices = sorted({layer_index(n) for n in layers if layer_index(n) is not None})
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=sorted({n.rsplit(".", 1)[-1] for n in layers}),
                      layers_to_transform=indices or None,
                      modules_to_save=[m for m in trainable_modules if hasattr(model, m)] or None)


def save_peft_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the model's adapter in PEFT's format (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    peft_config_for(model).save_pretrained(str(path))
    save_file({k: v.contiguous() for k, v in adapter_state_to_peft(adapter_state(model)).items()},
              str(path / "adapter_model.safetensors"))
    return path


def load_peft_adapter(model: nn.Module, source) -> None:
    """Load a PEFT adapter (a saved folder, or a PEFT state dict) into a model with matching LoRA layers.

    The folder's ``r`` and ``lora_alpha`` must equal the model's: the same factors under another
    scaling would give another model.
    """
    from safetensors.torch import load_file

    if isinstance(source, (str, Path)):
        folder = Path(source)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        for name, layer in lora_layers(model).items():
            if (layer.r, float(layer.alpha)) != (cfg["r"], float(cfg["lora_alpha"])):
                raise ValueError(f"{name} has r={layer.r}, alpha={layer.alpha} but the PEFT adapter has "
                                 f"r={cfg['r']}, lora_alpha={cfg['lora_alpha']}.")
        source = load_file(str(folder / "adapter_model.safetensors"))
    load_adapter_state(model, peft_to_adapter_state(source))
