"""Per-example noise: Monte Carlo predictions that do not depend on the batch size, checked by brute force."""

from unittest import mock

import pytest
import torch
from torch import nn

from minibayeslora import noise
from minibayeslora.balora import BaLoRALinear
from minibayeslora.blob import BLoBLinear
from minibayeslora.inducing import InducingLoRALinear
from minibayeslora.lora import inject_lora
from minibayeslora.lrvd import VariationalLoRALinear
from minibayeslora.predictive import MCDropout, NoiseSampler, sample_probabilities
from minibayeslora.train import make_data

SAMPLERS = {
    "LRVD, token": (VariationalLoRALinear, {"noise": "token"}),
    "LRVD, sequence": (VariationalLoRALinear, {"noise": "sequence"}),
    "Bayesian-LoRA": (InducingLoRALinear, {"m": 4}),
    "BaLoRA, token": (BaLoRALinear, {"noise": "token"}),
    "BaLoRA, sequence": (BaLoRALinear, {"noise": "sequence"}),
    "BLoB, token": (BLoBLinear, {"noise": "token"}),
    "BLoB, sequence": (BLoBLinear, {"noise": "sequence"}),
    "BLoB, flipout": (BLoBLinear, {"noise": "flipout"}),
    "MC dropout": (None, {}),
}


def _noisy_model(model, layer_cls, layer_kwargs):
    """Adapters on block 5's query and value, their mean moved off 0 and their noise at its largest."""
    if layer_cls is None:
        inject_lora(model, ["query", "value"], r=4, alpha=8, layers=[5], dropout=0.3)
    else:
        inject_lora(model, ["query", "value"], r=4, alpha=8, layers=[5], layer_cls=layer_cls, layer_kwargs=layer_kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("lora_B", "factor_B.mu")):
                p.normal_(std=0.5)
            elif name.endswith(("log_alpha", "sigma_raw", "lam_raw", "log_alpha_bias")):
                p.fill_(0.0)
            elif name.endswith("rho"):
                p.fill_(0.3)
    return model


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_draws_do_not_depend_on_the_batch(name, minilm_fresh, task, isolated_cache):
    layer_cls, layer_kwargs = SAMPLERS[name]
    model = _noisy_model(minilm_fresh, layer_cls, layer_kwargs)
    method = MCDropout(model, seed=2) if layer_cls is None else NoiseSampler(model, seed=2)
    data = make_data(model, task.val.subset(7, seed=0))           # texts of different lengths: padding differs per batch
    whole = sample_probabilities(method, data, S=3, batch_size=7, cache=False)
    assert whole.std(0).max() > 1e-5, "the draws differ"
    for batch_size in (1, 3):                                     # batch of 1: the brute-force reference
        torch.testing.assert_close(sample_probabilities(method, data, S=3, batch_size=batch_size, cache=False), whole,
                                   atol=2e-5, rtol=1e-4, msg=f"batch_size {batch_size}")
    # a batch given directly is examples 0..N-1: the dataset's first rows, whatever batch they come in
    direct = method.predict_samples(data.inputs(torch.arange(7)), 3)
    torch.testing.assert_close(direct, whole, atol=2e-5, rtol=1e-4)
    other = MCDropout(model, seed=3) if layer_cls is None else NoiseSampler(model, seed=3)
    assert not other.predict_samples(data.inputs(torch.arange(7)), 3).equal(direct), "another seed, other draws"


def test_a_row_draws_for_its_real_tokens_only_wherever_the_padding_is():
    def draw(mask):
        with noise.per_example(seed=1, examples=[4, 9], copies=2, attention_mask=torch.tensor(mask)):
            return noise.normal((4, len(mask[0]), 3), torch.float32, "cpu", tokens=True)

    unpadded = draw([[1, 1, 1], [1, 1, 1]])
    right, left = draw([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]), draw([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1]])
    torch.testing.assert_close(right[:, :3], unpadded, atol=0, rtol=0)
    torch.testing.assert_close(left[:, 2:], unpadded, atol=0, rtol=0)
    assert not right[:, 3:].any() and not left[:, :2].any(), "padding gets no noise"
    rows = unpadded.reshape(4, -1)
    assert len({tuple(r.tolist()) for r in rows}) == 4, "every (example, copy) has its own draw"
    # brute force: example 9's two copies are one draw of its own generator, copy s = slice s (rows s·N + i)
    own = torch.randn((2, 3, 3), generator=torch.Generator().manual_seed(noise.example_seed(1, 9)))
    torch.testing.assert_close(unpadded[[1, 3]], own, atol=0, rtol=0)
    with noise.per_example(seed=1, examples=[9], copies=2, attention_mask=torch.ones(1, 3)):
        alone = noise.normal((2, 3, 3), torch.float32, "cpu", tokens=True)
    torch.testing.assert_close(alone, unpadded[[1, 3]], atol=0, rtol=0)   # example 9 alone: rows (copy 0, copy 1)


def test_outside_a_prediction_pass_the_helpers_draw_what_torch_draws():
    """Training keeps its global-RNG draws: a seeded run trains the same weights as before per-example noise."""
    torch.manual_seed(0)
    got = (noise.normal((3, 4), torch.float32, "cpu"), noise.signs((3, 4), torch.float32, "cpu"),
           noise.shared_normal((2, 5), torch.float32, "cpu"))
    dropout, x = nn.Dropout(0.3), torch.ones(3, 4)
    got_dropout = noise.dropout(dropout, x)
    torch.manual_seed(0)
    want = (torch.randn(3, 4), torch.randint(0, 2, (3, 4)).float() * 2 - 1, torch.randn(2, 5))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=0, rtol=0)
    torch.testing.assert_close(got_dropout, dropout(x), atol=0, rtol=0)


def test_a_pass_asks_for_random_numbers_once_per_example_and_site_whatever_S_is():
    """On a GPU each call is a kernel launch: S = 64 copies must not mean 64 times the calls."""
    calls = []
    randn = torch.randn

    def counting(*args, **kwargs):
        calls.append(args[0])
        return randn(*args, **kwargs)

    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    with noise.per_example(seed=0, examples=[3, 1, 2], copies=64, attention_mask=mask), \
            mock.patch.object(torch, "randn", counting):
        sequence = noise.normal((192, 4), torch.float32, "cpu")
        tokens = noise.normal((192, 3, 4), torch.float32, "cpu", tokens=True)
    assert calls == [(64, 4)] * 3 + [(64, 2, 4), (64, 3, 4), (64, 1, 4)]
    assert sequence.shape == (192, 4) and tokens.shape == (192, 3, 4)
    assert (tokens.view(64, 3, 3, 4).ne(0).all(-1) == mask.bool()).all(), "real tokens drawn, padding 0"


def test_a_draw_that_is_not_per_row_is_refused():
    with noise.per_example(seed=0, examples=[0, 1], copies=2), pytest.raises(RuntimeError, match="rows"):
        noise.normal((3, 2), torch.float32, "cpu")
    with noise.examples([5, 6]), pytest.raises(ValueError, match="2 example indices for a batch of 3"):
        noise.current_examples(3)
    assert noise.current_examples(3) == [0, 1, 2]
