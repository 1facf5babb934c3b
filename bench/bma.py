"""Cost of a 16-state Bayesian model average: S states in one batched pass vs S separate passes.

Same model (MiniLM + LoRA r = 8 on q/v of the top 3 layers + head), same 64 validation reviews,
S = 16 random adapter states (an ensemble or 16 points of a curve). Three ways to get the (S, N, C)
probabilities:

- ``batched``: one pass over S stacked copies of the prefix-cached batch (``StateAverage(batched=True)``);
- ``sequential, cached``: S passes over the prefix-cached batch, one state each (``functional_call``);
- ``sequential, uncached``: S passes of the whole model over the tokens, the naive way.

Prints medians and the ratios batched / sequential (target ≤ 0.5 on a GPU).

    python bench/bma.py [--repeats 7] [--batch 64] [--samples 16] [--device cuda]
"""

from __future__ import annotations

import torch

from common import describe, device_from, interleaved_medians, parser_with_device, seeded_lora_minilm, timed
from minibayeslora import config, data
from minibayeslora.lora import adapter_state
from minibayeslora.predictive import StateAverage
from minibayeslora.train import TextData, make_data


def main() -> None:
    parser = parser_with_device(__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()

    device = device_from(args)
    model = seeded_lora_minilm(device=device)
    base = adapter_state(model)
    g = torch.Generator().manual_seed(0)
    states = [{k: v + 0.02 * torch.randn(v.shape, generator=g).to(device) for k, v in base.items()}
              for _ in range(args.samples)]

    split = data.load_task().val.subset(args.batch, seed=0)
    cached = config.to_device(make_data(model, split).inputs(torch.arange(args.batch)), device)
    tokens = config.to_device(TextData(model, split.texts, split.labels).inputs(torch.arange(args.batch)), device)
    batched, sequential = StateAverage(model, states, batched=True), StateAverage(model, states)
    torch.testing.assert_close(batched.predict_samples(cached), sequential.predict_samples(cached), atol=1e-4, rtol=1e-3)

    med = interleaved_medians({
        "batched": timed(lambda: batched.predict_samples(cached), device),
        "sequential, cached": timed(lambda: sequential.predict_samples(cached), device),
        "sequential, uncached": timed(lambda: sequential.predict_samples(tokens), device),
    }, args.repeats, warmup=1)
    print(f"MiniLM + r=8 (q/v, layers 3-5), S={args.samples} states, {args.batch} reviews; "
          f"{args.repeats} interleaved repeats, {describe(device)}")
    for name, seconds in med.items():
        print(f"{name:22s} {seconds * 1000:8.1f} ms (median)")
    print(f"ratio batched / sequential, cached:   {med['batched'] / med['sequential, cached']:.3f}  (target <= 0.5)")
    print(f"ratio batched / sequential, uncached: {med['batched'] / med['sequential, uncached']:.3f}  (target <= 0.5)")


if __name__ == "__main__":
    main()
