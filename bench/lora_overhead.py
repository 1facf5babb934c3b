"""Training-step time of our LoRA vs PEFT's on MiniLM, same configuration, measured in one run.

Both models start from the same backbone with LoRA (r = 8, α = 16) on query/value of the top 3
layers + the head, and the same factors. A step is forward + backward + AdamW update at batch 32,
length 48 from token ids (no prefix cache, so both run all 6 layers). Steps alternate between the
two models; we report medians over the repeats and the ratio ours / PEFT (target ≤ 1.05).

    python bench/lora_overhead.py [--repeats 30] [--batch 32] [--length 48]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from minibayeslora import config, data
from minibayeslora.backbones import load_backbone
from minibayeslora.lora import adapter_state_to_peft, adapter_state, inject_lora, peft_config_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=48)
    args = parser.parse_args()

    from peft import get_peft_model, set_peft_model_state_dict

    config.seed_everything(0)
    ours = load_backbone("minilm")
    pristine = copy.deepcopy(ours)
    inject_lora(ours, ["query", "value"], r=8, alpha=16, layers=[3, 4, 5])
    theirs = get_peft_model(pristine, peft_config_for(ours))
    set_peft_model_state_dict(theirs, adapter_state_to_peft(adapter_state(ours)))
    ours.train(), theirs.train()

    texts = data.load_task().train.texts[: args.batch]
    batch = ours.tokenizer(texts, padding="max_length", truncation=True, max_length=args.length, return_tensors="pt")
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    labels = torch.randint(0, 2, (args.batch,))
    runs = {}
    for name, model in (("ours", ours), ("peft", theirs)):
        params = [p for p in model.parameters() if p.requires_grad]
        runs[name] = (model, torch.optim.AdamW(params, lr=1e-4), params)
    assert sum(p.numel() for p in runs["ours"][2]) == sum(p.numel() for p in runs["peft"][2]), "different trainable sets"

    def step(name: str) -> float:
        model, optimizer, _ = runs[name]
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(**batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    for _ in range(3):  # warm-up
        step("ours"), step("peft")
    times = {"ours": [], "peft": []}
    for i in range(args.repeats):
        order = ("ours", "peft") if i % 2 == 0 else ("peft", "ours")  # alternate who goes first
        for name in order:
            times[name].append(step(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"MiniLM + LoRA r=8 on q/v of layers 3-5 + head; batch {args.batch}, length {args.length}; "
          f"{args.repeats} interleaved repeats, {torch.get_num_threads()} threads")
    print(f"ours: {med['ours'] * 1000:.1f} ms/step (median)")
    print(f"peft: {med['peft'] * 1000:.1f} ms/step (median)")
    print(f"ratio ours/peft: {med['ours'] / med['peft']:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
