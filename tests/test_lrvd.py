import math

import pytest
import torch
from torch import nn

from minibayeslora import lrvd
from minibayeslora.lora import LoRALinear, inject_lora, lora_layers
from minibayeslora.lrvd import VariationalLoRALinear, kl_sparse_vd, sampling


def _layer(r=4, seed=0, log_alpha=None):
    torch.manual_seed(seed)
    layer = VariationalLoRALinear(nn.Linear(6, 5), r=r, alpha=2 * r)
    with torch.no_grad():
        layer.lora_B.normal_()
        if log_alpha is not None:
            layer.log_alpha.copy_(torch.tensor(log_alpha, dtype=torch.float32))
    return layer


def test_kl_matches_the_formula_and_falls_with_log_alpha():
    log_alpha = torch.linspace(-8, 8, 33, dtype=torch.float64)
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    for la, kl in zip(log_alpha.tolist(), kl_sparse_vd(log_alpha).tolist()):
        negative = k1 / (1 + math.exp(-(k2 + k3 * la))) - 0.5 * math.log1p(math.exp(-la)) - k1
        assert kl == pytest.approx(-negative, abs=1e-12)
    kl = kl_sparse_vd(log_alpha)
    assert (kl[1:] < kl[:-1]).all(), "more noise is always cheaper in KL: that is the pruning pressure"
    assert kl_sparse_vd(torch.tensor(30.0)).abs() < 1e-6, "a fully noisy weight costs nothing"
    assert kl_sparse_vd(torch.zeros(2, 3)).shape == (2, 3)


def test_mean_path_is_plain_lora_and_noise_is_off_by_default():
    layer = _layer()
    plain = LoRALinear(layer.base, 4, 8)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "log_alpha"})
    x = torch.randn(3, 6)
    layer.train()  # train() alone does not switch the noise on
    torch.testing.assert_close(layer(x), plain(x))
    with sampling(layer):
        assert not torch.allclose(layer(x), plain(x))
    assert not layer.sampling


def test_local_reparameterisation_matches_sampling_z_by_brute_force():
    layer = _layer(log_alpha=[-2.0, -0.5, 0.5, 1.0])
    x = torch.randn(1, 6).expand(200_000, 6)
    with torch.no_grad(), sampling(layer):
        y = layer(x)
    # brute force: draw z_r ~ N(1, α_r) explicitly and compute W₀x + s·B(z ⊙ Ax)
    alpha = layer.log_alpha.detach().exp()
    u = x[:1] @ layer.lora_A.detach().T
    z = 1 + alpha.sqrt() * torch.randn(200_000, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = layer.base(x[:1]) + layer.scaling * (z * u) @ layer.lora_B.T
    torch.testing.assert_close(y.mean(0), reference.mean(0), atol=0.05, rtol=0.02)
    torch.testing.assert_close(y.var(0), reference.var(0), atol=0.05, rtol=0.03)


def test_pruned_layer_equals_the_mean_path():
    layer = _layer(log_alpha=[-3.0, 3.5, 0.0, 5.0])
    x = torch.randn(7, 6)
    with torch.no_grad():
        mean_path = layer(x)
        pruned = lrvd.prune_layer(layer)
        assert isinstance(pruned, LoRALinear) and pruned.r == 2 and pruned.scaling == layer.scaling
        torch.testing.assert_close(pruned(x), mean_path)
        # and the mean path is the full LoRA minus exactly the dropped components
        full = layer.base(x) + layer.scaling * (x @ layer.lora_A.T) @ layer.lora_B.T
        dropped = layer.scaling * (x @ layer.lora_A[[1, 3]].T) @ layer.lora_B[:, [1, 3]].T
        torch.testing.assert_close(mean_path, full - dropped)
    assert layer.delta_weight().shape == (5, 6)
    torch.testing.assert_close(layer.delta_weight(), pruned.delta_weight())
    nothing_kept = _layer(log_alpha=[4.0] * 4)
    assert lrvd.prune_layer(nothing_kept) is nothing_kept.base


def test_merged_layer_refuses_to_sample():
    layer = _layer()
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"), sampling(layer):
        layer(torch.randn(2, 6))


def test_prune_a_real_model(minilm_fresh, task):
    model = minilm_fresh
    layers = inject_lora(model, ["query", "value"], r=4, alpha=8, layers=[4, 5], layer_cls=VariationalLoRALinear)
    with torch.no_grad():
        for i, layer in enumerate(layers.values()):
            layer.lora_B.normal_(std=0.02)
            layer.log_alpha.copy_(torch.tensor([-4.0, 4.0, -1.0, 6.0]) if i % 2 else torch.tensor([4.0] * 4))
    assert lrvd.kept_ranks(model) == {name: (2 if i % 2 else 0) for i, name in enumerate(layers)}
    batch = model.tokenize(task.val.texts[:3])
    pruned = lrvd.prune(model)
    with torch.no_grad():
        torch.testing.assert_close(pruned(**batch), model(**batch), atol=1e-5, rtol=1e-5)
    assert not lrvd.variational_layers(pruned) and len(lora_layers(pruned)) == 2, "layers with no kept rank lose their adapter"
    assert len(lrvd.variational_layers(model)) == 4, "the original is untouched"
    assert lrvd.adapter_numbers(pruned) == 2 * 2 * (384 + 384)
    assert set(lrvd.rank_log_alpha(model)) == set(layers)


def test_lrvd_loss_ramps_the_kl_in(minilm_fresh, task):
    model = minilm_fresh
    inject_lora(model, ["query"], r=2, alpha=4, layers=[5], layer_cls=VariationalLoRALinear)
    batch, labels = model.tokenize(task.val.texts[:4]), task.val.labels[:4]
    loss_fn = lrvd.LRVDLoss(n_train=100, warmup_steps=4, kl_weight=2.0)
    kl = lrvd.total_kl(model).item()
    for step in range(6):
        torch.manual_seed(step)
        loss = loss_fn(model, batch, labels).item()
        torch.manual_seed(step)
        with torch.no_grad(), sampling(model):
            ce = nn.functional.cross_entropy(model(**batch), labels).item()
        assert loss == pytest.approx(ce + 2.0 * min(1.0, step / 4) * kl / 100, rel=1e-5)
    with pytest.raises(ValueError):
        lrvd.LRVDLoss(n_train=0)
    with pytest.raises(TypeError, match="subclass"):
        inject_lora(model, ["value"], layer_cls=nn.Linear)


def test_sequence_noise_shares_one_z_per_example_and_token_noise_does_not():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 6).expand(3, 5, 6)  # 3 examples, each 5 copies of one token
    for noise in ("sequence", "token"):
        layer = VariationalLoRALinear(nn.Linear(6, 5), r=4, alpha=8, noise=noise)
        with torch.no_grad():
            layer.lora_B.normal_()
            layer.log_alpha.fill_(0.0)
            clean = layer(x)
            with sampling(layer):
                y = layer(x)
        same_within = torch.allclose(y, y[:, :1].expand_as(y))
        assert same_within == (noise == "sequence"), noise
        assert not torch.allclose(y[0, 0], clean[0, 0])
    # the shared draw is exactly one weight draw: W₀x + s·B(z ⊙ A x) with one z per example
    layer = VariationalLoRALinear(nn.Linear(6, 5), r=4, alpha=8, noise="sequence")
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.log_alpha.copy_(torch.tensor([-1.0, 0.0, 0.5, 1.0]))
        torch.manual_seed(3)
        with sampling(layer):
            y = layer(x)
        torch.manual_seed(3)
        z = 1 + layer.log_alpha.exp().sqrt() * torch.randn(3, 1, 4)
        reference = layer.base(x) + layer.scaling * (z * (x @ layer.lora_A.T)) @ layer.lora_B.T
    torch.testing.assert_close(y, reference)
    with pytest.raises(ValueError, match="noise"):
        VariationalLoRALinear(nn.Linear(6, 5), r=4, alpha=8, noise="layer")


def test_inject_lora_passes_layer_kwargs(minilm_fresh):
    layers = inject_lora(minilm_fresh, ["value"], r=2, alpha=4, layers=[5], layer_cls=VariationalLoRALinear,
                         layer_kwargs={"init_log_alpha": 0.5, "noise": "token"})
    (layer,) = layers.values()
    assert layer.noise == "token" and torch.equal(layer.log_alpha.detach(), torch.full((2,), 0.5))
