"""Step time of MiniLM training with and without the prefix cache, measured in one run.

Trainable: the query/value weights of the top 3 layers and the head (the cpu profile's adapter
placement; the LoRA factors themselves arrive with notebook 01). A step is forward + backward +
AdamW update at batch 32, length 48. Uncached steps run all 6 layers from token ids; cached
steps enter at layer 3 with precomputed hidden states. The two are interleaved and we report
medians and the ratio uncached / cached (> 1 means the cache is faster).

    python bench/prefix_cache.py [--repeats 15] [--batch 32] [--length 48]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from minibayeslora import config, data
from minibayeslora.backbones import load_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--top", type=int, default=3, help="number of adapted (top) layers")
    args = parser.parse_args()

    config.seed_everything(0)
    model = load_backbone("minilm").train()
    start = model.num_layers - args.top
    trainable = [model.head.weight, model.head.bias]
    for layer in model.layers[start:]:
        for lin in (layer.attention.self.query, layer.attention.self.value):
            lin.weight.requires_grad_(True)
            trainable.append(lin.weight)
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)

    texts = data.load_task().train.texts[: args.batch]
    enc = model.tokenizer(texts, padding="max_length", truncation=True, max_length=args.length, return_tensors="pt")
    labels = torch.randint(0, 2, (args.batch,))
    with torch.no_grad():
        prefix = model.run_layers(model.embed(enc["input_ids"]), enc["attention_mask"], 0, start)
    uncached = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    cached = {"prefix_hidden": prefix, "attention_mask": enc["attention_mask"], "start_layer": start}

    def step(batch) -> float:
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(**batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    for _ in range(3):  # warm-up
        step(uncached), step(cached)
    times = {"uncached": [], "cached": []}
    for _ in range(args.repeats):
        times["uncached"].append(step(uncached))
        times["cached"].append(step(cached))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"MiniLM, top {args.top} layers trainable, batch {args.batch}, length {args.length}, "
          f"{args.repeats} interleaved repeats, {torch.get_num_threads()} threads")
    print(f"uncached step: {med['uncached']:.3f} s (median)")
    print(f"cached step:   {med['cached']:.3f} s (median)")
    print(f"ratio uncached/cached: {med['uncached'] / med['cached']:.2f}")


if __name__ == "__main__":
    main()
