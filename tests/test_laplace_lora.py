"""Laplace-LoRA against a case whose posterior is known: a logistic last layer on fixed features.

For logits linear in θ the generalised Gauss–Newton *is* the Hessian of the NLL, so the Laplace precision must
equal the brute-force Hessian of  Σ_i −log softmax(W x_i + b)[y_i] + λ/2 ‖θ‖²  at the MAP (torch.autograd).
"""

import pytest
import torch
from torch import nn

from minibayeslora import metrics
from minibayeslora.laplace_lora import LaplaceConfig, fit_laplace
from minibayeslora.train import ClassificationData

D, C, N, PRIOR = 4, 3, 120, 2.0


class LastLayer(nn.Module):
    """A frozen feature map (standing in for the backbone) and a trainable linear head."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(D, D)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(D, C)

    def forward(self, features):
        return self.head(torch.tanh(self.frozen(features)))


class Features(ClassificationData):
    def __init__(self, x, y):
        self.x, self.labels = x, y

    def inputs(self, idx):
        return {"features": self.x[torch.as_tensor(idx)]}

    def fingerprint(self):
        return "features"


def _map_fit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = (x @ torch.randn(D, C, generator=g) + 0.5 * torch.randn(N, C, generator=g)).argmax(-1)
    torch.manual_seed(0)
    model = LastLayer()
    h = torch.tanh(model.frozen(x)).detach()

    def objective(theta):
        W, b = theta[:C * D].view(C, D), theta[C * D:]
        return nn.functional.cross_entropy(h @ W.T + b, y, reduction="sum") + 0.5 * PRIOR * theta @ theta

    theta = torch.zeros(C * D + C, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective(theta)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        model.head.weight.copy_(theta[:C * D].view(C, D))
        model.head.bias.copy_(theta[C * D:])
    hessian = torch.autograd.functional.hessian(objective, theta.detach())
    return model, Features(x, y), theta.detach(), hessian


def test_diagonal_laplace_precision_is_the_brute_force_hessian_of_a_logistic_last_layer():
    model, data, theta, hessian = _map_fit()
    la = fit_laplace(model, data, LaplaceConfig(prior_precision=PRIOR, tune=None, batch_size=32))
    assert la.posterior.n_params == C * D + C, "only the head's tensors (the trainable ones) get a posterior"
    torch.testing.assert_close(la.posterior.mean, theta, atol=1e-5, rtol=0)
    torch.testing.assert_close(la.posterior_variance, 1 / hessian.diagonal(), rtol=1e-4, atol=1e-7)
    # a wrong curvature (the empirical Fisher, or forgetting the prior) would miss by far more than that
    assert (la.posterior_variance - 1 / (hessian.diagonal() - PRIOR)).abs().max() > 1e-3


def test_laplace_predictive_samples_the_gaussian_around_the_map():
    model, data, theta, hessian = _map_fit()
    la = fit_laplace(model, data, LaplaceConfig(prior_precision=PRIOR, tune=None, pred_type="nn"))
    inputs = data.inputs(torch.arange(8))
    rng_before = torch.get_rng_state()
    samples = la.predict_samples(inputs, S=4000)
    assert torch.equal(torch.get_rng_state(), rng_before), "a seeded prediction leaves the global RNG alone"
    assert samples.shape == (4000, 8, C)
    torch.testing.assert_close(la.predict_samples(inputs, S=4000), samples, msg="same seed, same draws")
    assert torch.equal(torch.cat([p.reshape(-1) for p in model.head.parameters()]).detach(), theta), \
        "the model is back at the MAP after sampling"
    # brute force: our own draws θ_s ~ N(θ*, diag(1 / diag H)), through the same last layer
    g = torch.Generator().manual_seed(1)
    draws = theta + torch.randn(4000, theta.numel(), generator=g) / hessian.diagonal().sqrt()
    h = torch.tanh(model.frozen(data.x[:8])).detach()
    logits = torch.einsum("nd,scd->snc", h, draws[:, :C * D].view(-1, C, D)) + draws[:, None, C * D:]
    expected = logits.softmax(-1).mean(0)
    torch.testing.assert_close(samples.mean(0), expected, atol=0.01, rtol=0)
    assert metrics.mutual_information(samples).min() > 0, "the draws disagree"
    # the linearised predictive of a model linear in θ is the same distribution (sampled a few examples at a time)
    glm = fit_laplace(model, data, LaplaceConfig(prior_precision=PRIOR, tune=None, pred_type="glm", batch_size=3))
    torch.testing.assert_close(glm.predict_samples(inputs, S=4000).mean(0), expected, atol=0.01, rtol=0)


def test_nn_predictive_does_not_depend_on_the_batch_size_and_tuning_moves_the_prior():
    from minibayeslora.predictive import sample_probabilities

    model, data, *_ = _map_fit()
    la = fit_laplace(model, data, LaplaceConfig(prior_precision=PRIOR, tune=None, pred_type="nn"))
    whole = sample_probabilities(la, data, S=8, batch_size=N, cache=False)
    torch.testing.assert_close(sample_probabilities(la, data, S=8, batch_size=7, cache=False), whole)
    tuned = fit_laplace(model, data, LaplaceConfig(prior_precision=PRIOR, tune="marglik"))
    assert tuned.prior_precision != PRIOR and tuned.prior_precision > 0
    by_val = fit_laplace(model, data, LaplaceConfig(tune="val", val_grid=(0.1, 10.0)), val_data=data)
    assert by_val.prior_precision in (0.1, 10.0) and by_val.fit_seconds > 0


def test_glm_predictive_does_not_depend_on_the_batch_size_and_samples_laplace_torchs_gaussian():
    from minibayeslora import noise
    from minibayeslora.predictive import sample_probabilities

    model, data, *_ = _map_fit()
    la = fit_laplace(model, data, LaplaceConfig(prior_precision=PRIOR, tune=None, pred_type="glm", batch_size=3), seed=4)
    whole = sample_probabilities(la, data, S=8, batch_size=N, cache=False)
    for batch_size in (7, 1):
        torch.testing.assert_close(sample_probabilities(la, data, S=8, batch_size=batch_size, cache=False), whole)
    # reference: laplace-torch's own glm sampler on example 5 alone, with that example's generator
    generator = torch.Generator().manual_seed(noise.example_seed(4, 5))
    with torch.enable_grad():
        expected = la.posterior.functional_samples(data.inputs(torch.tensor([5])), pred_type="glm", n_samples=8,
                                                   generator=generator).softmax(-1)
    torch.testing.assert_close(whole[:, 5:6], expected)


def test_laplace_refuses_what_it_cannot_do():
    model, data, *_ = _map_fit()
    with pytest.raises(ValueError, match="val_data"):
        fit_laplace(model, data, LaplaceConfig(tune="val"))
    with pytest.raises(ValueError, match="Kronecker"):
        LaplaceConfig(hessian_structure="kron")
    with pytest.raises(ValueError, match="prior_precision"):
        LaplaceConfig(prior_precision=0)
    model.head.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable tensors"):
        fit_laplace(model, data, LaplaceConfig(tune=None))


def test_laplace_lora_on_minilm_covers_every_adapter_and_the_head(task):
    from minibayeslora.backbones import lora_classifier
    from minibayeslora.train import make_data

    model = lora_classifier(0, r=2)
    train = make_data(model, task.train.subset(48, seed=0))
    with torch.no_grad():   # B ≠ 0, as after training, so that the adapters change the logits
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    la = fit_laplace(model, train, LaplaceConfig(tune=None))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert la.posterior.n_params == trainable == la.posterior_variance.numel()
    assert (la.posterior_variance > 0).all() and (la.posterior_variance <= 1.0 + 1e-6).all(), "prior variance 1 bounds it"
    test = make_data(model, task.test.subset(16, seed=0))
    samples = la.predict_samples(test.inputs(torch.arange(16)), S=6)
    assert samples.shape == (6, 16, 2) and torch.allclose(samples.sum(-1), torch.ones(6, 16))
    assert samples.std(0).max() > 0


def test_laplace_predictions_are_cached_until_the_posterior_changes(isolated_cache, monkeypatch):
    from minibayeslora import prediction_cache
    from minibayeslora.predictive import sample_probabilities

    model, data, *_ = _map_fit()
    la = fit_laplace(model, data, LaplaceConfig(prior_precision=PRIOR, tune=None))
    key = prediction_cache.method_key(la, data, S=8)
    assert key is not None
    first = sample_probabilities(la, data, S=8)
    monkeypatch.setattr(la, "predict_samples", lambda *a: pytest.fail("a repeated call must load, not predict"))
    torch.testing.assert_close(sample_probabilities(la, data, S=8), first)
    monkeypatch.undo()
    refit = fit_laplace(model, data, LaplaceConfig(prior_precision=PRIOR, tune=None))
    assert prediction_cache.method_key(refit, data, S=8) == key, "the same posterior, the same key"
    la.posterior.prior_precision = 2 * PRIOR
    assert prediction_cache.method_key(la, data, S=8) != key, "another prior, another posterior"
    other = fit_laplace(model, data, LaplaceConfig(prior_precision=PRIOR, tune=None, pred_type="nn"))
    assert prediction_cache.method_key(other, data, S=8) != key


def test_a_cached_fit_is_the_fit_it_stored_and_is_keyed_by_the_trained_weights(isolated_cache, monkeypatch):
    """A fit stored under a cache_key loads without fitting (laplace-torch's fit is not called), and the loaded
    posterior is the fitted one: the same precision, λ and glm draws. Other trained weights miss the cache; under
    MINIBAYESLORA_REQUIRE_CHECKPOINTS a fit that is neither cached nor shipped raises, and a shipped one loads."""
    import laplace

    from minibayeslora import shipped

    model, data, *_ = _map_fit()
    cfg = LaplaceConfig(prior_precision=PRIOR, tune="marglik", batch_size=3)
    fitted = fit_laplace(model, data, cfg, seed=1, cache_key={"test": "laplace"})
    assert not fitted.from_cache and fitted.fit_seconds > 0
    monkeypatch.setattr(laplace.DiagLaplace, "fit", lambda *a, **k: pytest.fail("a cached fit must load, not fit"))
    loaded = fit_laplace(model, data, cfg, seed=1, cache_key={"test": "laplace"})
    assert loaded.from_cache and loaded.fit_seconds == fitted.fit_seconds
    assert loaded.prior_precision == fitted.prior_precision != PRIOR, "the tuned λ, not the starting one"
    torch.testing.assert_close(loaded.posterior.posterior_precision, fitted.posterior.posterior_precision, rtol=0, atol=0)
    torch.testing.assert_close(loaded.posterior.log_marginal_likelihood(), fitted.posterior.log_marginal_likelihood())
    inputs = data.inputs(torch.arange(10))
    torch.testing.assert_close(loaded.predict_samples(inputs, 5), fitted.predict_samples(inputs, 5), rtol=0, atol=0)

    with torch.no_grad():
        model.head.bias.add_(0.1)   # other trained weights: another posterior, so the cache must miss
    with pytest.raises(pytest.fail.Exception, match="must load, not fit"):
        fit_laplace(model, data, cfg, seed=1, cache_key={"test": "laplace"})
    with torch.no_grad():
        model.head.bias.sub_(0.1)

    monkeypatch.setenv("MINIBAYESLORA_REQUIRE_CHECKPOINTS", "1")
    with pytest.raises(shipped.MissingCheckpoint):
        fit_laplace(model, data, cfg, seed=1, cache_key={"test": "not shipped"})
    monkeypatch.setenv("MINIBAYESLORA_CHECKPOINTS", str(isolated_cache))   # the cache as the shipped folder
    monkeypatch.setenv("MINIBAYESLORA_CACHE", str(isolated_cache / "empty"))
    assert fit_laplace(model, data, cfg, seed=1, cache_key={"test": "laplace"}).from_cache
