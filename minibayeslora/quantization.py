"""What 4-bit (NF4) and 8-bit quantisation do to a backbone's weights.

bitsandbytes stores each frozen weight W (d_out, d_in) compressed:

- **NF4** (QLoRA): blocks of 64 consecutive values share one absmax scale s; each value becomes the
  nearest of 16 "normal-float" levels q_k (quantiles of N(0, 1), rescaled to [−1, 1]):
  Ŵ = s · q_{k(W/s)}. 4 bits per value.
- **int8** (LLM.int8, vector-wise): each row i shares a scale s_i = max_j |W_ij|;
  Ŵ_ij = round(127 · W_ij / s_i) · s_i / 127. 8 bits per value.

``dequantized_weight`` recovers Ŵ from a quantized layer, so we can measure ‖Ŵ − W‖ / ‖W‖.
LoRA's factors stay in full precision (QLoRA): only W₀ is quantized.
"""

from __future__ import annotations

import torch
from torch import nn

#: The 16 NF4 levels of the QLoRA paper (Dettmers et al., 2023).
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])


def quantized_kind(module: nn.Module) -> str | None:
    name = type(module).__name__
    return {"Linear4bit": "nf4", "LinearNF4": "nf4", "Linear8bitLt": "int8"}.get(name)


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """Ŵ (d_out, d_in) in float32 of a bitsandbytes Linear4bit / Linear8bitLt (or W of an nn.Linear)."""
    kind = quantized_kind(module)
    if kind is None:
        if isinstance(module, nn.Linear):
            return module.weight.detach().float()
        raise TypeError(f"expected nn.Linear, Linear4bit or Linear8bitLt, got {type(module).__name__}.")
    import bitsandbytes.functional as bnbf

    weight = module.weight
    if kind == "nf4":
        return bnbf.dequantize_4bit(weight.data, weight.quant_state).float().reshape(module.out_features, module.in_features)
    return weight.CB.float() * weight.SCB.float()[:, None] / 127.0


def nf4_round_trip(weight: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Reference NF4 quantise-dequantise in plain torch (blockwise absmax, nearest level)."""
    flat = weight.detach().float().reshape(-1, block)
    scale = flat.abs().amax(1, keepdim=True)
    levels = NF4_LEVELS.to(flat.device)
    codes = (flat / scale).unsqueeze(-1).sub(levels).abs().argmin(-1)
    return (levels[codes] * scale).reshape(weight.shape)


def int8_round_trip(weight: torch.Tensor) -> torch.Tensor:
    """Reference row-wise absmax int8 quantise-dequantise in plain torch."""
    w = weight.detach().float()
    scale = w.abs().amax(1, keepdim=True)
    return torch.round(127.0 * w / scale) * scale / 127.0


def weight_errors(reference: nn.Module, quantized: nn.Module) -> dict[str, float]:
    """Relative error ‖Ŵ − W‖_F / ‖W‖_F of every quantized linear, by module name."""
    ref = dict(reference.named_modules())
    errors = {}
    for name, module in quantized.named_modules():
        if quantized_kind(module) is None:
            continue
        if name not in ref:
            raise KeyError(f"{name} is quantized but missing from the reference model.")
        w = ref[name].weight.detach().float()
        errors[name] = ((dequantized_weight(module).to(w.device) - w).norm() / w.norm()).item()
    if not errors:
        raise ValueError("no bitsandbytes layer found: load the model with quantization='4bit' or '8bit'.")
    return errors
