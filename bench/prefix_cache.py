"""Step time of MiniLM training with and without the prefix cache, measured in one run.

Trainable: the query/value weights of the top 3 layers and the head (the cpu profile's adapter
placement). A step is forward + backward + AdamW update at batch 32, length 48. Uncached steps
run all 6 layers from token ids; cached steps enter at layer 3 with precomputed hidden states.
The two alternate; we report medians and the ratio uncached / cached (> 1: the cache is faster).

    python bench/prefix_cache.py [--repeats 15] [--batch 32] [--length 48] [--top 3] [--device cuda]
"""

from __future__ import annotations

import torch

from common import describe, device_from, fixed_batch, interleaved_medians, parser_with_device, training_step
from minibayeslora import config
from minibayeslora.backbones import load_backbone


def main() -> None:
    parser = parser_with_device(__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--top", type=int, default=3, help="number of adapted (top) layers")
    args = parser.parse_args()
    device = device_from(args)

    config.seed_everything(0)
    model = load_backbone("minilm", device=device).train()
    start = model.num_layers - args.top
    trainable = [model.head.weight, model.head.bias]
    for layer in model.layers[start:]:
        for lin in (layer.attention.self.query, layer.attention.self.value):
            trainable.append(lin.weight.requires_grad_(True))
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)

    batch, labels = fixed_batch(model, args.batch, args.length)
    with torch.no_grad():
        prefix = model.run_layers(model.embed(batch["input_ids"]), batch["attention_mask"], 0, start)
    cached = {"prefix_hidden": prefix, "attention_mask": batch["attention_mask"], "start_layer": start}
    med = interleaved_medians({"uncached": training_step(model, optimizer, batch, labels),
                               "cached": training_step(model, optimizer, cached, labels)}, args.repeats)
    print(f"MiniLM, top {args.top} layers trainable, batch {args.batch}, length {args.length}, "
          f"{args.repeats} interleaved repeats, {describe(device)}")
    print(f"uncached step: {med['uncached']:.3f} s (median)")
    print(f"cached step:   {med['cached']:.3f} s (median)")
    print(f"ratio uncached/cached: {med['uncached'] / med['cached']:.2f}")


if __name__ == "__main__":
    main()
