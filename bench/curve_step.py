"""Training-step time of a Bézier curve of adapters vs a plain LoRA adapter, on the prefix cache.

Same backbone (MiniLM, LoRA r = 8 on q/v of the top 3 layers + head), same cached batch (32 reviews
entering layer 3). The plain step trains one adapter; the curve step draws one t, evaluates the
quadratic chain's point θ(t) and trains its middle control point (``functional_call``). Steps
alternate; we print medians and the ratio curve / plain (target ≤ 1.15).

    python bench/curve_step.py [--repeats 30] [--batch 32] [--device cuda]
"""

from __future__ import annotations

import copy

import torch

from common import (describe, device_from, interleaved_medians, on_model_device, parser_with_device,
                    seeded_lora_minilm, training_step)
from minibayeslora import data
from minibayeslora.curve_training import CurveLoss, CurveModel
from minibayeslora.curves import BezierChain
from minibayeslora.lora import adapter_state
from minibayeslora.train import make_data


def main() -> None:
    parser = parser_with_device(__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    device = device_from(args)

    plain = seeded_lora_minilm(device=device)
    anchors = [adapter_state(plain)]
    anchors.append({k: v + 0.01 * torch.randn_like(v) for k, v in anchors[0].items()})
    curve = CurveModel(copy.deepcopy(plain), BezierChain(anchors, degree=2))
    plain.train(), curve.train()

    split = data.load_task().train.subset(args.batch, seed=0)
    cached_model = plain
    cached = make_data(cached_model, split)
    batch, labels = on_model_device(cached_model, cached.inputs(torch.arange(args.batch)), cached.labels)
    curve_step = training_step(curve, torch.optim.AdamW([p for p in curve.parameters() if p.requires_grad], lr=1e-4),
                               batch, labels, loss_fn=CurveLoss(n_t=1, seed=0))
    plain_step = training_step(plain, torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-4),
                               batch, labels)
    med = interleaved_medians({"plain": plain_step, "curve": curve_step}, args.repeats)
    print(f"MiniLM + LoRA r=8 (q/v, layers 3-5) on the prefix cache, batch {args.batch}; "
          f"{args.repeats} interleaved repeats, {describe(device)}")
    print(f"plain LoRA step: {med['plain'] * 1000:.1f} ms (median)")
    print(f"curve step:      {med['curve'] * 1000:.1f} ms (median)")
    print(f"ratio curve/plain: {med['curve'] / med['plain']:.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
