"""The uncertainty checks pass the package's metrics and name each typical mistake."""

import pytest
import torch
import torch.nn.functional as F

from minibayeslora import checks, metrics


def _fails_with(check, impl, hint):
    with pytest.raises(AssertionError, match=hint):
        check(impl)


def _entropy(p):
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def _unweighted_ece(probs, labels):
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    bins = (confidence * 15).long().clamp(max=14)
    return torch.stack([(correct[bins == b].mean() - confidence[bins == b].mean()).abs() for b in bins.unique()]).mean()


def _ece_one_in_last_bin(probs, labels):
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    bins = (confidence * 15).long().clamp(max=14)   # confidence 1 shares bin 14
    return sum((bins == b).double().mean() * (correct[bins == b].mean() - confidence[bins == b].mean()).abs() for b in bins.unique())


ECE = {
    "one_in_last_bin": (_ece_one_in_last_bin, "a bin of its own"),
    "unweighted": (_unweighted_ece, "weight each bin"),
    "ten_bins": (lambda p, y: metrics.ece(p, y, n_bins=10), "15 equal-width bins"),
    "global_gap": (lambda p, y: (p.max(-1).values - (p.argmax(-1) == y).double()).mean().abs(), "bin by bin"),
    "per_example_abs": (lambda p, y: ((p.argmax(-1) == y).double() - p.max(-1).values).abs().mean(), "around each bin"),
}


@pytest.mark.parametrize("name", ECE)
def test_ece_check_names_the_mistake(name):
    _fails_with(checks.check_ece, *ECE[name])


MI = {
    "swapped": (lambda s: _entropy(s).mean(0) - _entropy(s.mean(0)), "negative"),
    "total_only": (lambda s: _entropy(s.mean(0)), "total"),
    "aleatoric_only": (lambda s: _entropy(s).mean(0), "aleatoric"),
    "bits": (lambda s: (_entropy(s.mean(0)) - _entropy(s).mean(0)) / torch.log(torch.tensor(2.0)), "nats"),
    "averaged_over_n": (lambda s: (_entropy(s.mean(0)) - _entropy(s).mean(0)).mean(), "one value per example"),
    "summed_entropies": (lambda s: _entropy(s.mean(0)) - _entropy(s).sum(0), "average the entropies"),
}


@pytest.mark.parametrize("name", MI)
def test_mi_check_names_the_mistake(name):
    _fails_with(checks.check_mutual_information, *MI[name])


def _ce(logits, y):
    return torch.stack([F.cross_entropy(l, y) for l in logits]).mean()


def _jsd(probs):
    return (_entropy(probs.mean(0)) - _entropy(probs).mean(0)).mean()


JSD = {
    "added": (lambda l, y, lam: _ce(l, y) + lam * _jsd(l.softmax(-1)), "subtract"),
    "ce_of_average": (lambda l, y, lam: F.nll_loss(l.softmax(-1).mean(0).log(), y) - lam * _jsd(l.softmax(-1)), "mean of the T"),
    "on_logits": (lambda l, y, lam: _ce(l, y) - lam * (_entropy(l.mean(0)) - _entropy(l).mean(0)).mean(), "softmax"),
    "no_lambda": (lambda l, y, lam: _ce(l, y) - _jsd(l.softmax(-1)), "left out λ"),
}


@pytest.mark.parametrize("name", JSD)
def test_jsd_loss_check_names_the_mistake(name):
    _fails_with(checks.check_jsd_loss, *JSD[name])


BMA = {
    "geometric": (lambda s: s.log().mean(0).softmax(-1), "probabilities"),
    "one_sample": (lambda s: s[0], "all S"),
    "summed": (lambda s: s.sum(0), "divide by S"),
    "wrong_axis": (lambda s: s.mean(1), "dimension 0"),
}


@pytest.mark.parametrize("name", BMA)
def test_bma_check_names_the_mistake(name):
    _fails_with(checks.check_bma, *BMA[name])


def test_checks_pass_the_package():
    assert checks.check_ece(metrics.ece)
    assert checks.check_mutual_information(metrics.mutual_information)
    assert checks.check_mutual_information(metrics.jsd), "JSD of the samples is the same quantity"
    assert checks.check_jsd_loss(lambda l, y, lam: _ce(l, y) - lam * metrics.jsd(l.softmax(-1)).mean())
    assert checks.check_bma(lambda s: s.mean(0))
