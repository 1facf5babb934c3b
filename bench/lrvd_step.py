"""Training-step time of LRVD (rank-wise variational dropout) vs plain LoRA at equal rank, on the prefix cache.

Same backbone (MiniLM, r = 16 on q/v of the top 3 layers + head), same cached batch (32 reviews
entering layer 3). The LoRA step is cross-entropy; the LRVD step samples the rank noise (local
reparameterisation) and adds the KL term (``LRVDLoss``). Steps alternate; we print medians and the
ratio LRVD / LoRA (target ≤ 1.1).

    python bench/lrvd_step.py [--repeats 30] [--batch 32] [--rank 16] [--device cuda]
"""

from __future__ import annotations

import torch

from common import (describe, device_from, interleaved_medians, on_model_device, parser_with_device,
                    seeded_lora_minilm, training_step)
from minibayeslora import data
from minibayeslora.lrvd import LRVDLoss, VariationalLoRALinear
from minibayeslora.train import make_data


def main() -> None:
    parser = parser_with_device(__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    device = device_from(args)

    models = {}
    for name, layer_cls in (("lora", None), ("lrvd", VariationalLoRALinear)):
        models[name] = seeded_lora_minilm(r=args.rank, alpha=2 * args.rank, layer_cls=layer_cls, device=device)
        models[name].train()

    split = data.load_task().train.subset(args.batch, seed=0)
    cached_model = models["lora"]
    cached = make_data(cached_model, split)
    batch, labels = on_model_device(cached_model, cached.inputs(torch.arange(args.batch)), cached.labels)
    def trainable(model):
        return [p for p in model.parameters() if p.requires_grad]

    lrvd_step = training_step(models["lrvd"], torch.optim.AdamW(trainable(models["lrvd"]), lr=1e-4), batch, labels,
                              loss_fn=LRVDLoss(n_train=8929))
    lora_step = training_step(models["lora"], torch.optim.AdamW(trainable(models["lora"]), lr=1e-4), batch, labels)
    med = interleaved_medians({"lora": lora_step, "lrvd": lrvd_step}, args.repeats)
    print(f"MiniLM + r={args.rank} (q/v, layers 3-5) on the prefix cache, batch {args.batch}; "
          f"{args.repeats} interleaved repeats, {describe(device)}")
    print(f"LoRA step: {med['lora'] * 1000:.1f} ms (median)")
    print(f"LRVD step: {med['lrvd'] * 1000:.1f} ms (median)")
    print(f"ratio LRVD/LoRA: {med['lrvd'] / med['lora']:.3f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
