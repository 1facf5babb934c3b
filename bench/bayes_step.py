"""Training-step time and trainable parameters of Bayesian-LoRA, BaLoRA and BLoB vs plain LoRA at equal rank.

Same backbone (MiniLM, r = 8 on q/v of the top 3 layers + head), same cached batch (32 reviews entering
layer 3). The LoRA step is cross-entropy; each Bayesian step draws its noise (one weight sample per
review) and adds β·KL/N (``stochastic.ELBOLoss``, β = 1). Steps alternate; we print medians, the
ratios to LoRA (targets: Bayesian-LoRA ≤ 1.25, BaLoRA ≤ 1.15, BLoB ≤ 1.15) and the parameter ratios.

    python bench/bayes_step.py [--repeats 30] [--batch 32] [--rank 8] [--device cuda]
"""

from __future__ import annotations

import torch

from common import (describe, device_from, interleaved_medians, on_model_device, parser_with_device,
                    seeded_lora_minilm, training_step)
from minibayeslora import data
from minibayeslora.balora import BaLoRALinear
from minibayeslora.blob import BLoBLinear
from minibayeslora.inducing import InducingLoRALinear
from minibayeslora.lora import lora_layers
from minibayeslora.stochastic import ELBOLoss
from minibayeslora.train import make_data

METHODS = {"LoRA": (None, None), "Bayesian-LoRA": (InducingLoRALinear, 1.25), "BaLoRA": (BaLoRALinear, 1.15),
           "BLoB": (BLoBLinear, 1.15)}


def adapter_parameters(model) -> int:
    """Trainable numbers inside the adapted layers (the head, the same for every method, excluded)."""
    return sum(p.numel() for layer in lora_layers(model).values() for p in layer.parameters() if p.requires_grad)


def main() -> None:
    parser = parser_with_device(__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    device = device_from(args)

    models = {name: seeded_lora_minilm(r=args.rank, alpha=2 * args.rank, layer_cls=cls, device=device)
              for name, (cls, _) in METHODS.items()}
    split = data.load_task().train.subset(args.batch, seed=0)
    cached_model = models["LoRA"]
    cached = make_data(cached_model, split)
    batch, labels = on_model_device(cached_model, cached.inputs(torch.arange(args.batch)), cached.labels)
    steps = {}
    for name, model in models.items():
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        steps[name] = training_step(model, optimizer, batch, labels, loss_fn=None if name == "LoRA" else ELBOLoss(n_train=8929))
    med = interleaved_medians(steps, args.repeats)
    lora_params = adapter_parameters(models["LoRA"])
    print(f"MiniLM + r={args.rank} (q/v, layers 3-5) on the prefix cache, batch {args.batch}; "
          f"{args.repeats} interleaved repeats, {describe(device)}")
    print(f"{'method':>14} {'step (ms)':>10} {'time ratio':>11} {'target':>7} {'adapter params':>15} {'param ratio':>12}")
    for name, (_, target) in METHODS.items():
        params = adapter_parameters(models[name])
        print(f"{name:>14} {med[name] * 1000:10.1f} {med[name] / med['LoRA']:11.3f} {('<= ' + str(target)) if target else '':>7} "
              f"{params:15,d} {params / lora_params:12.3f}")


if __name__ == "__main__":
    main()
