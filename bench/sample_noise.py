"""Cost of per-example noise in a Monte Carlo prediction: a noisy pass over S stacked copies vs the same pass without noise.

Same backbone (MiniLM, r = 8 on q/v of the top 3 layers + head), same 16 validation reviews on the prefix cache,
S = 32 stacked copies (512 rows, the size of a notebook's S = 64 pass over 8 reviews). For each sampling method,
two passes over the same stacked batch:

- ``noisy``: ``predict_samples(inputs, S)``, every row drawing its noise with the example's own generator
  (``minibayeslora.noise``: one seeded generator per example, which draws that example's S copies at once);
- ``noiseless``: the same model's pass over the S stacked copies with its noise off (the mean path).

Prints medians, the ratios noisy / noiseless (the price of the random numbers and of the draws' arithmetic), and
how many random-number calls one noisy pass makes (each a kernel launch on a GPU).

    python bench/sample_noise.py [--repeats 7] [--batch 16] [--samples 32] [--device cuda]
"""

from __future__ import annotations

from unittest import mock

import torch

from common import describe, device_from, interleaved_medians, parser_with_device, timed
from minibayeslora import config, data
from minibayeslora.backbones import lora_classifier
from minibayeslora.balora import BaLoRALinear
from minibayeslora.blob import BLoBLinear
from minibayeslora.inducing import InducingLoRALinear
from minibayeslora.lrvd import VariationalLoRALinear
from minibayeslora.predictive import MAP, MCDropout, NoiseSampler, repeat_batch
from minibayeslora.train import make_data

METHODS = {"Bayesian-LoRA": (InducingLoRALinear, {}), "BaLoRA": (BaLoRALinear, {"noise": "sequence"}),
           "BLoB": (BLoBLinear, {"noise": "sequence"}), "LRVD (token)": (VariationalLoRALinear, {"noise": "token"}),
           "MC dropout": (None, {"dropout": 0.1})}


def sampler(name: str, device):
    """The method's seeded model (fresh adapters: the noise costs the same whatever its size) and its sampler."""
    layer_cls, kwargs = METHODS[name]
    if layer_cls is None:
        model = lora_classifier(0, r=8, alpha=16, dropout=kwargs["dropout"], name="minilm", device=device)
        return model, MCDropout(model, seed=0)
    model = lora_classifier(0, r=8, alpha=16, layer_cls=layer_cls, layer_kwargs=kwargs, name="minilm", device=device)
    return model, NoiseSampler(model, seed=0)


def random_calls(fn) -> int:
    """How many times one call of ``fn`` asks torch for random numbers (randn, rand, randint)."""
    counts = [0]
    originals = {name: getattr(torch, name) for name in ("randn", "rand", "randint")}

    def counting(original):
        def call(*args, **kwargs):
            counts[0] += 1
            return original(*args, **kwargs)
        return call

    with mock.patch.multiple(torch, **{name: counting(f) for name, f in originals.items()}):
        fn()
    return counts[0]


def main() -> None:
    parser = parser_with_device(__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    device = device_from(args)
    split = data.load_task().val.subset(args.batch, seed=0)

    steps, calls = {}, {}
    for name in METHODS:
        model, method = sampler(name, device)
        inputs = config.to_device(make_data(model, split).inputs(torch.arange(args.batch)), device)
        stacked = repeat_batch(inputs, args.samples)
        steps[name, "noisy"] = timed(lambda method=method, inputs=inputs: method.predict_samples(inputs, args.samples), device)
        steps[name, "noiseless"] = timed(lambda model=model, stacked=stacked: MAP(model).predict_samples(stacked), device)
        calls[name] = random_calls(lambda method=method, inputs=inputs: method.predict_samples(inputs, args.samples))
    med = interleaved_medians(steps, args.repeats, warmup=1)
    print(f"MiniLM + r=8 (q/v, layers 3-5) on the prefix cache, {args.batch} reviews x S={args.samples} copies "
          f"({args.batch * args.samples} rows); {args.repeats} interleaved repeats, {describe(device)}")
    print(f"{'method':>14} {'noisy (ms)':>11} {'noiseless (ms)':>15} {'ratio':>7} {'random calls per pass':>22}")
    for name in METHODS:
        noisy, plain = med[name, "noisy"], med[name, "noiseless"]
        print(f"{name:>14} {noisy * 1000:11.1f} {plain * 1000:15.1f} {noisy / plain:7.2f} {calls[name]:22d}")


if __name__ == "__main__":
    main()
