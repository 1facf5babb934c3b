"""Training-step time of our LoRA vs PEFT's on MiniLM, same configuration, measured in one run.

Both models start from the same backbone with LoRA (r = 8, α = 16) on query/value of the top 3
layers + the head, and the same factors. A step is forward + backward + AdamW update at batch 32,
length 48 from token ids (no prefix cache, so both run all 6 layers). Steps alternate between the
two models; we report medians over the repeats and the ratio ours / PEFT (target ≤ 1.05).

    python bench/lora_overhead.py [--repeats 30] [--batch 32] [--length 48] [--device cuda]
"""

from __future__ import annotations

import copy

import torch

from common import describe, device_from, fixed_batch, interleaved_medians, parser_with_device, training_step
from minibayeslora import config
from minibayeslora.backbones import load_backbone
from minibayeslora.lora import adapter_state, adapter_state_to_peft, inject_lora, peft_config_for


def main() -> None:
    parser = parser_with_device(__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=48)
    args = parser.parse_args()
    device = device_from(args)

    from peft import get_peft_model, set_peft_model_state_dict

    config.seed_everything(0)
    ours = load_backbone("minilm", device=device)
    pristine = copy.deepcopy(ours)
    inject_lora(ours, ["query", "value"], r=8, alpha=16, layers=[3, 4, 5])
    theirs = get_peft_model(pristine, peft_config_for(ours))
    set_peft_model_state_dict(theirs, adapter_state_to_peft(adapter_state(ours)))
    batch, labels = fixed_batch(ours, args.batch, args.length)
    steps = {}
    for name, model in (("ours", ours.train()), ("peft", theirs.train())):
        params = [p for p in model.parameters() if p.requires_grad]
        steps[name] = training_step(model, torch.optim.AdamW(params, lr=1e-4), batch, labels)
    n_ours, n_peft = (sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (ours, theirs))
    assert n_ours == n_peft, f"different trainable sets: {n_ours} vs {n_peft}"

    med = interleaved_medians(steps, args.repeats)
    print(f"MiniLM + LoRA r=8 on q/v of layers 3-5 + head; batch {args.batch}, length {args.length}; "
          f"{args.repeats} interleaved repeats, {describe(device)}")
    print(f"ours: {med['ours'] * 1000:.1f} ms/step (median)")
    print(f"peft: {med['peft'] * 1000:.1f} ms/step (median)")
    print(f"ratio ours/peft: {med['ours'] / med['peft']:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
