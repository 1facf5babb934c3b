"""Bayesian-LoRA, BaLoRA and BLoB layers, each against an independent reference.

Matheron's rule against the dense Schur complement (exactly, through its Jacobian); every KL against
``torch.distributions``; the zero-variance limit against ``LoRALinear``; Monte Carlo means and
variances against closed forms; BaLoRA's local reparameterisation against explicit weight draws.
"""

import math

import pytest
import torch
from scipy.stats import ks_2samp
from torch import nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from minibayeslora.balora import BaLoRALinear, log_alpha_per_text
from minibayeslora.blob import BLoBLinear
from minibayeslora.inducing import InducingFactor, InducingLoRALinear, conditional_transforms, matheron_noise
from minibayeslora.lora import LoRALinear, inject_lora
from minibayeslora.lrvd import VariationalLoRALinear, kl_sparse_vd
from minibayeslora.predictive import MAP, NoiseSampler
from minibayeslora.stochastic import sampling, stochastic_layers
from minibayeslora.train import make_data

# ---- Matheron's rule, exactly ------------------------------------------------------------------


def _small_inducing(p=3, q=4, m=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_row = torch.randn(m, p, generator=g, dtype=torch.float64) / math.sqrt(m)
    z_col = torch.randn(m, q, generator=g, dtype=torch.float64) / math.sqrt(m)
    d_row = 0.3 + torch.rand(m, generator=g, dtype=torch.float64)
    d_col = 0.3 + torch.rand(m, generator=g, dtype=torch.float64)
    return z_row, z_col, d_row, d_col


def _jacobian_covariance(noise_fn, shapes):
    """ξ = noise_fn(*E) is linear in the E's: its covariance under iid N(0, 1) E's is J Jᵀ."""
    sizes = [math.prod(s) for s in shapes]

    def flat(vector):
        pieces = torch.split(vector, sizes)
        return noise_fn(*[piece.view(shape) for piece, shape in zip(pieces, shapes)]).flatten()

    J = torch.autograd.functional.jacobian(flat, torch.zeros(sum(sizes), dtype=torch.float64))
    return J @ J.T


def _dense_conditional(z_row, z_col, d_row, d_col):
    """Schur complement of the dense joint: Cov(F̃|U) = I − Σ_fu Σ_uu⁻¹ Σ_uf, Σ_fu = Z_rᵀ⊗Z_cᵀ, Σ_uu = K_r⊗K_c."""
    K_r = z_row @ z_row.T + torch.diag(d_row ** 2)
    K_c = z_col @ z_col.T + torch.diag(d_col ** 2)
    sigma_fu, sigma_uu = torch.kron(z_row.T, z_col.T), torch.kron(K_r, K_c)
    gain = sigma_fu @ torch.linalg.inv(sigma_uu)
    return torch.eye(sigma_fu.shape[0], dtype=torch.float64) - gain @ sigma_fu.T, gain


def _public_code_variant(z_row, z_col, d_row, d_col, E1, E2, E3, E4, jitter=1e-3):
    """The released code's Matheron step: E₂, E₃ drawn m×m and mapped by chol(Z Zᵀ + jitter)."""
    T_r, T_c, _, _ = conditional_transforms(z_row, z_col, d_row, d_col)

    def chol(z):
        gram = z @ z.T
        return torch.linalg.cholesky(gram + jitter * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype))

    u_bar = (z_row @ E1 @ z_col.T + chol(z_row) @ E2 * d_col + d_row[:, None] * (E3 @ chol(z_col).T)
             + d_row[:, None] * E4 * d_col)
    return E1 - T_r @ u_bar @ T_c


def test_matheron_covariance_is_the_exact_conditional():
    z_row, z_col, d_row, d_col = _small_inducing()
    p, q, m = z_row.shape[1], z_col.shape[1], z_row.shape[0]
    T_r, T_c, L_r, L_c = conditional_transforms(z_row, z_col, d_row, d_col)
    target = torch.eye(p * q, dtype=torch.float64) - torch.kron(T_r @ z_row, z_col.T @ T_c)
    dense, gain = _dense_conditional(z_row, z_col, d_row, d_col)
    torch.testing.assert_close(target, dense, atol=1e-12, rtol=0)   # the Kronecker form is the Schur complement

    ours = _jacobian_covariance(lambda *E: matheron_noise(z_row, z_col, d_row, d_col, *E), [(p, q), (p, m), (m, q), (m, m)])
    assert (ours - target).abs().max() < 1e-12
    # the conditional mean: Σ_fu Σ_uu⁻¹ vec(U) = vec(T_r U T_c), and L_r Lᵀ = K (whitening)
    U = torch.randn(m, m, dtype=torch.float64)
    torch.testing.assert_close((gain @ U.flatten()).view(p, q), T_r @ U @ T_c, atol=1e-12, rtol=0)
    torch.testing.assert_close(L_r @ L_r.T, z_row @ z_row.T + torch.diag(d_row ** 2), atol=1e-12, rtol=0)

    # the released code's chol(ZZᵀ) variant: here m > p, Z_r Z_rᵀ is singular, the jitter shows
    public = _jacobian_covariance(lambda *E: _public_code_variant(z_row, z_col, d_row, d_col, *E),
                                  [(p, q), (m, m), (m, m), (m, m)])
    assert (public - target).abs().max() > 1e-6, "the chol(ZZᵀ) variant misses the conditional covariance by its jitter"
    with pytest.raises(torch.linalg.LinAlgError):               # and without a jitter it cannot even be formed
        torch.linalg.cholesky(z_row @ z_row.T)


def test_matheron_samples_batch_and_match_the_layer():
    factor = InducingFactor(3, 4, m=5).double()
    with torch.no_grad():
        factor.sigma_raw.fill_(-30.0)        # σ_u ≈ 0: the draw is mean + λ·ξ
        factor.lam_raw.fill_(math.log(math.expm1(0.02)))
        torch.manual_seed(0)
        draws = factor.sample(40_000)
    transforms = factor.transforms()
    T_r, T_c = transforms[:2]
    target = torch.eye(12, dtype=torch.float64) - torch.kron(T_r @ factor.z_row, factor.z_col.T @ T_c)
    centred = (draws - factor.mean().detach()).flatten(1) / (factor.scale * 0.02)
    empirical = centred.T @ centred / len(centred)
    assert (empirical - target).abs().max() < 0.05     # Monte Carlo: ±0.02 at 40k draws


# ---- KL terms against torch.distributions ------------------------------------------------------


def test_inducing_kl_equals_torch_distributions():
    z_row, z_col, d_row, d_col = _small_inducing()
    sigma, _ = _dense_conditional(z_row, z_col, d_row, d_col)
    mean = torch.randn(12, dtype=torch.float64)
    lam = 0.03
    reference = kl_divergence(MultivariateNormal(mean, lam ** 2 * sigma), MultivariateNormal(mean, sigma))
    factor = InducingFactor(3, 4, m=5).double()
    with torch.no_grad():
        factor.lam_raw.fill_(math.log(math.expm1(lam)))
        factor.sigma_raw.normal_(-4.0, 1.0)
        factor.mu.normal_()
    conditional = 12 * (0.5 * lam ** 2 - math.log(lam) - 0.5)
    assert reference.item() == pytest.approx(conditional, rel=1e-9) == pytest.approx(36.0841, abs=1e-4)
    inducing = kl_divergence(Normal(factor.mu, factor.sigma_u), Normal(0.0, 1.0)).sum()
    assert factor.kl().item() == pytest.approx((inducing + reference).item(), rel=1e-9)


def test_blob_and_balora_kl():
    torch.manual_seed(0)
    blob = BLoBLinear(nn.Linear(6, 5), r=3, alpha=6).double()
    prior = torch.tensor([0.0, 0.2], dtype=torch.float64)
    reference = kl_divergence(Normal(blob.lora_A, blob.sigma), Normal(prior[0], prior[1])).sum()
    assert blob.kl().item() == pytest.approx(reference.item(), rel=1e-9)

    balora = BaLoRALinear(nn.Linear(6, 5), r=3, alpha=6)
    with torch.no_grad():
        balora.log_alpha_weight.normal_()
    x = torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    balora.token_mask = mask
    balora(x)
    per_token = kl_sparse_vd(balora.log_alpha(x))
    expected = 3 * 6 * per_token[mask.bool()].mean()
    assert balora.kl().item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(RuntimeError, match="forward pass"):
        BaLoRALinear(nn.Linear(6, 5), r=3, alpha=6).kl()


# ---- the zero-uncertainty limit and the mean path -------------------------------------------------

LAYERS = {
    "inducing": lambda base: InducingLoRALinear(base, r=3, alpha=6, m=4),
    "balora-sequence": lambda base: BaLoRALinear(base, r=3, alpha=6),
    "balora-token": lambda base: BaLoRALinear(base, r=3, alpha=6, noise="token"),
    "blob-sequence": lambda base: BLoBLinear(base, r=3, alpha=6),
    "blob-token": lambda base: BLoBLinear(base, r=3, alpha=6, noise="token"),
    "blob-flipout": lambda base: BLoBLinear(base, r=3, alpha=6, noise="flipout"),
    "lrvd": lambda base: VariationalLoRALinear(base, r=3, alpha=6, threshold=None),
}


def _trained_like(name, seed=0, dtype=torch.float64):
    """A layer whose mean path is a non-zero LoRA (B moved off 0) and whose noise is large."""
    torch.manual_seed(seed)
    layer = LAYERS[name](nn.Linear(6, 5)).to(dtype)
    with torch.no_grad():
        if name == "inducing":
            layer.factor_B.mu.normal_()
            layer.factor_A.sigma_raw.fill_(-1.0), layer.factor_B.sigma_raw.fill_(-1.0)
            layer.factor_A.lam_raw.fill_(0.0), layer.factor_B.lam_raw.fill_(0.0)
        else:
            layer.lora_B.normal_()
        if name.startswith("balora"):
            layer.log_alpha_weight.normal_()
            layer.log_alpha_bias.fill_(-1.0)
        if name.startswith("blob"):
            layer.lora_A_rho.fill_(0.5)
        if name == "lrvd":
            layer.log_alpha.fill_(-1.0)
    return layer


def _zero_variance(layer):
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith(("sigma_raw", "lam_raw")):
                p.fill_(-300.0)
            elif name.endswith(("log_alpha_bias", "log_alpha")):
                p.fill_(-400.0)
            elif name.endswith("log_alpha_weight") or name.endswith("rho"):
                p.zero_()


@pytest.mark.parametrize("name", LAYERS)
def test_zero_variance_is_lora_with_the_mean_factors(name):
    layer = _trained_like(name)
    x = torch.randn(4, 7, 6, dtype=torch.float64)
    plain = layer.to_lora()
    assert type(plain) is LoRALinear and plain.scaling == layer.scaling
    with torch.no_grad():
        torch.testing.assert_close(layer(x), plain(x), atol=1e-12, rtol=0)              # mean path = LoRA
        with sampling(layer):
            noisy = layer(x)
        assert (noisy - plain(x)).abs().max() > 1e-3, "the noise is on"
        with sampling(layer, scale=0.0):                                                 # scale 0: LoRA again
            assert (layer(x) - plain(x)).abs().max() <= 1e-7
        _zero_variance(layer)
        with sampling(layer):
            assert (layer(x) - layer.to_lora()(x)).abs().max() <= 1e-7
    torch.testing.assert_close(layer.delta_weight(), plain.delta_weight(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", LAYERS)
def test_b_at_zero_is_the_base_model_and_mc_mean_is_the_mean_path(name):
    torch.manual_seed(1)
    fresh = LAYERS[name](nn.Linear(6, 5)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), fresh.base(x), atol=0, rtol=0)            # B̄ = 0: ΔW = 0 at the start
    layer = _trained_like(name)
    one = torch.randn(1, 1, 6, dtype=torch.float64)
    n = 20_000
    with torch.no_grad(), sampling(layer, copies=n if name == "blob-flipout" else 1):
        torch.manual_seed(2)
        draws = layer(one.expand(n, 1, 6)).squeeze(1)                                   # n per-example draws
        mean_path = layer.to_lora()(one).reshape(-1)
    standard_error = draws.std(0) / math.sqrt(n)
    assert ((draws.mean(0) - mean_path).abs() <= 4 * standard_error).all(), name


@pytest.mark.parametrize("name", ["balora-sequence", "balora-token", "blob-sequence", "blob-token", "blob-flipout"])
def test_output_variance_matches_its_closed_form(name):
    layer = _trained_like(name)
    x = torch.randn(1, 1, 6, dtype=torch.float64)
    n = 20_000
    with torch.no_grad(), sampling(layer, copies=n if name == "blob-flipout" else 1):
        torch.manual_seed(3)
        draws = layer(x.expand(n, 1, 6)).squeeze(1)
        variance = layer.scaling ** 2 * layer.output_variance(x).reshape(1, -1) @ (layer.lora_B ** 2).T
    torch.testing.assert_close(draws.var(0), variance.reshape(-1), rtol=0.06, atol=1e-9)


def test_balora_local_reparameterisation_matches_explicit_weight_draws():
    layer = _trained_like("balora-token")
    x = torch.randn(1, 6, dtype=torch.float64)
    n = 40_000
    with torch.no_grad(), sampling(layer):
        torch.manual_seed(4)
        local = layer(x.expand(n, 6))
        # explicit: ω_A = θ_A + √α(x) θ_A ⊙ ε, one weight matrix per draw
        alpha = layer.log_alpha(x).exp()
        omega = layer.lora_A + alpha.sqrt() * layer.lora_A * torch.randn(n, 3, 6, dtype=torch.float64)
        explicit = layer.base(x) + layer.scaling * torch.einsum("nkj,j->nk", omega, x[0]) @ layer.lora_B.T
    torch.testing.assert_close(local.mean(0), explicit.mean(0), atol=0.05, rtol=0.02)
    torch.testing.assert_close(torch.cov(local.T), torch.cov(explicit.T), atol=0.05, rtol=0.06)


def test_sequence_noise_is_shared_by_tokens_and_independent_across_examples():
    for name in ("inducing", "balora-sequence", "blob-sequence"):
        layer = _trained_like(name)
        x = torch.randn(3, 1, 6, dtype=torch.float64).expand(3, 5, 6)   # each example: 5 copies of one token
        with torch.no_grad(), sampling(layer):
            y = layer(x)
        assert torch.allclose(y, y[:, :1].expand_as(y)), name
        same_input = torch.randn(1, 1, 6, dtype=torch.float64).expand(2, 1, 6)
        with torch.no_grad(), sampling(layer):
            pair = layer(same_input)
        assert not torch.allclose(pair[0], pair[1]), f"{name}: two examples must get two draws"


# ---- bad input ---------------------------------------------------------------------------------------


def test_bad_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="m must be an int ≥ r"):
        InducingLoRALinear(nn.Linear(6, 5), r=4, alpha=8, m=3)
    with pytest.raises(ValueError, match="noise must be one of"):
        InducingLoRALinear(nn.Linear(6, 5), r=2, alpha=4, noise="token")
    with pytest.raises(ValueError, match="noise must be one of"):
        BaLoRALinear(nn.Linear(6, 5), r=2, alpha=4, noise="flipout")
    with pytest.raises(ValueError, match="positive"):
        BLoBLinear(nn.Linear(6, 5), r=2, alpha=4, prior_sd=0.0)
    layer = _trained_like("blob-flipout")
    with pytest.raises(ValueError, match="stacked copies"), sampling(layer, copies=4):
        layer(torch.randn(6, 6, dtype=torch.float64))


# ---- in a real model: inject, prefix cache, sampler ---------------------------------------------------

KWARGS = {InducingLoRALinear: {"m": 9}, BaLoRALinear: {}, BLoBLinear: {}}


@pytest.mark.parametrize("layer_cls", list(KWARGS), ids=lambda c: c.__name__)
def test_in_minilm_over_the_prefix_cache(layer_cls, minilm_fresh, task, isolated_cache):
    from minibayeslora.backbones import load_backbone

    torch.manual_seed(0)
    base = load_backbone("minilm")
    model = minilm_fresh
    layers = inject_lora(model, ["query", "value"], r=4, alpha=8, layers=[4, 5], layer_cls=layer_cls,
                         layer_kwargs=KWARGS[layer_cls])
    assert set(stochastic_layers(model)) == set(layers)
    texts = task.val.texts[:5]
    tokens = model.tokenize(texts)
    with torch.no_grad():
        torch.testing.assert_close(model(**tokens), base(**tokens), atol=1e-6, rtol=0)   # ΔW = 0 at the start
        for layer in layers.values():                                                   # move the mean off LoRA's 0
            for name, p in layer.named_parameters():
                if name in ("lora_B", "factor_B.mu"):
                    p.normal_(std=0.5)
                elif name.endswith(("sigma_raw", "lam_raw", "log_alpha_bias")):
                    p.fill_(0.0)             # the largest noise the clamps allow (σ_u 0.1, λ 0.03; BaLoRA α = 1)
                elif name.endswith("rho"):
                    p.fill_(0.3)
    data = make_data(model, task.val.subset(5, seed=0))
    assert data.inputs(torch.arange(5))["start_layer"] == 4
    cached, raw = data.inputs(torch.arange(5)), model.tokenize(task.val.subset(5, seed=0).texts)
    sampler = NoiseSampler(model, seed=5)
    torch.testing.assert_close(sampler.predict_samples(cached, 3), sampler.predict_samples(raw, 3), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(MAP(model).predict_samples(cached), MAP(model).predict_samples(raw), atol=1e-5, rtol=1e-4)
    samples = sampler.predict_samples(cached, 4)
    assert samples.shape == (4, 5, 2) and samples.std(0).max() > 1e-6    # Bayesian-LoRA's clamps keep its noise small
    torch.testing.assert_close(sampler.predict_samples(cached, 4), samples, atol=0, rtol=0)        # seeded
    assert not NoiseSampler(model, seed=6).predict_samples(cached, 4).equal(samples)
    # to_lora(): the mean path as plain LoRA layers gives the same model
    mean_path = MAP(model).predict_samples(cached)
    assert not torch.allclose(mean_path, MAP(base).predict_samples(cached), atol=1e-3)
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.to_lora())
    torch.testing.assert_close(MAP(model).predict_samples(cached), mean_path, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no stochastic"):
        NoiseSampler(model)


def test_sampler_draws_are_iid_across_stacked_copies():
    """Per-example noise: copy s of an example is a fresh draw; BLoB's flipout draws E once per copy."""
    for name in ("inducing", "balora-sequence", "blob-flipout"):
        layer = _trained_like(name, dtype=torch.float32)
        model = _Head(layer)
        x = torch.randn(2, 3, 6)
        S = 3000
        samples = NoiseSampler(model, seed=0).predict_samples({"x": x}, S)[..., 1]      # (S, 2)
        lag = torch.corrcoef(torch.stack([samples[:-1, 0], samples[1:, 0]]))[0, 1]
        assert abs(lag) < 4 / math.sqrt(S), f"{name}: consecutive copies are correlated ({lag:.3f})"
        same = ks_2samp(samples[: S // 2, 0].numpy(), samples[S // 2:, 0].numpy())
        assert same.pvalue > 1e-3, f"{name}: the first and second half of the copies differ in distribution"
    with pytest.raises(ValueError, match="S must"):
        NoiseSampler(model).predict_samples({"x": x}, 0)


class _Head(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer, self.head = layer, nn.Linear(5, 2).to(layer.base.weight.dtype)
        with torch.no_grad():
            self.head.weight.normal_()

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


def test_balora_log_alpha_per_text_uses_real_tokens_only(minilm_fresh, task):
    inject_lora(minilm_fresh, ["value"], r=2, alpha=4, layers=[5], layer_cls=BaLoRALinear)
    (layer,) = stochastic_layers(minilm_fresh).values()
    with torch.no_grad():
        layer.log_alpha_weight.normal_()
    texts = ["a fine film", "a long and rambling but occasionally lovely piece of work"]
    tokens = minilm_fresh.tokenize(texts)
    together = log_alpha_per_text(minilm_fresh, tokens)
    alone = torch.cat([log_alpha_per_text(minilm_fresh, minilm_fresh.tokenize([t])) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)    # padding does not change a text's mean
