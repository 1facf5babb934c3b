"""Checks for the uncertainty exercises (notebook 04); import them from ``minibayeslora.checks``.

Same contract as the other checks: pass -> one printed line and True; a recognised mistake -> an
AssertionError that names it. References are the package's ``metrics`` (themselves tested against
torchmetrics and brute force).
"""

from __future__ import annotations

import torch

from . import metrics
from ._check_tools import _call, _diagnose, _ok
from .metrics import _entropy

SAMPLE_SHAPES = "samples are (S, N, C): S draws, N examples, C classes; reduce over S, keep N."


def _samples(seed: int, S: int = 5, N: int = 40, C: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2.5 * torch.randn(S, N, C, generator=g, dtype=torch.float64), -1)


def check_ece(ece) -> bool:
    """``ece(probs (N, C), labels (N,)) -> float``: 15 equal-width confidence bins, L1, weighted by bin size."""
    g = torch.Generator().manual_seed(2)
    probs = torch.softmax(1.5 * torch.randn(400, 3, generator=g, dtype=torch.float64), -1)
    labels = torch.multinomial(probs.pow(0.5), 1, generator=g).squeeze(1)
    got = _call(ece, probs, labels, what="ece", shape_hint="probs is (N, C), labels is (N,).")
    got = torch.as_tensor(float(got), dtype=torch.float64)
    expected = torch.tensor(metrics.ece(probs, labels), dtype=torch.float64)
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    bins = (confidence * 15).long().clamp(max=14)
    per_bin = [(correct[bins == b].mean() - confidence[bins == b].mean()).abs() for b in range(15) if (bins == b).any()]
    _diagnose(got, expected, {
        "weight each bin's |accuracy − confidence| by its share of the examples, do not average the bins equally.":
            torch.stack(per_bin).mean(),
        "with 10 bins: the course uses 15 equal-width bins.": torch.tensor(metrics.ece(probs, labels, n_bins=10), dtype=torch.float64),
        "you took |accuracy − confidence| over all examples at once: compare them bin by bin.": (correct.mean() - confidence.mean()).abs(),
        "the absolute value goes around each bin's gap, not around each example's gap.": (correct - confidence).abs().mean(),
    }, "ece(probs, labels)", atol=1e-6)
    # confidences of exactly 1 next to others in the top bin: whether they share it changes the gaps
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.96, 0.04], [0.96, 0.04]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0, 0])
    got = torch.as_tensor(float(_call(ece, probs, labels, what="ece", shape_hint="probs is (N, C), labels is (N,).")), dtype=torch.float64)
    last_bin = (torch.tensor([0.0, 1.0, 1.0, 1.0]).mean() - torch.tensor([1.0, 1.0, 0.96, 0.96]).mean()).abs()
    _diagnose(got, torch.tensor(metrics.ece(probs, labels), dtype=torch.float64), {
        "a confidence of exactly 1 gets a bin of its own (bin 15, after [14/15, 1)), as in torchmetrics; "
        "you put it in the last bin.": last_bin.double(),
    }, "ece(probs, labels) with confidences of exactly 1", atol=1e-6)
    return _ok("check_ece")


def check_mutual_information(mutual_information) -> bool:
    """``mutual_information(samples (S, N, C)) -> (N,)``: H[mean_s p_s] − mean_s H[p_s]."""
    samples = _samples(0)
    got = _call(mutual_information, samples, what="mutual_information", shape_hint=SAMPLE_SHAPES)
    total, expected_entropy = _entropy(samples.mean(0)), _entropy(samples).mean(0)
    if isinstance(got, torch.Tensor) and got.dim() == 0:
        raise AssertionError("mutual_information must return one value per example, shape (N,): do not average over N.")
    _diagnose(got, total - expected_entropy, {
        "the order is H[p̄] − mean_s H[p_s] (total minus aleatoric); yours is negative.": expected_entropy - total,
        "that is the total (predictive) entropy H[p̄]; subtract the expected entropy mean_s H[p_s].": total,
        "that is the aleatoric part mean_s H[p_s]; MI is the total H[p̄] minus it.": expected_entropy,
        "use natural logarithms (nats), as everywhere in the course.": (total - expected_entropy) / torch.log(torch.tensor(2.0)),
        "mean_s H[p_s]: average the entropies over S, do not sum them.": total - _entropy(samples).sum(0),
    }, "mutual_information(samples)", atol=1e-8)
    return _ok("check_mutual_information")


def check_jsd_loss(jsd_loss) -> bool:
    """``jsd_loss(logits (T, N, C), labels (N,), lam) -> scalar``: mean_j CE(logits_j, y) − λ · mean_n JSD_n."""
    g = torch.Generator().manual_seed(4)
    logits = 2 * torch.randn(3, 20, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (20,), generator=g)
    lam = 0.3
    got = _call(jsd_loss, logits, labels, lam, what="jsd_loss", shape_hint="logits are (T, N, C): one row of logits per t.")
    got = torch.as_tensor(got, dtype=torch.float64)
    ce = torch.stack([torch.nn.functional.cross_entropy(l, labels) for l in logits]).mean()
    probs = logits.softmax(-1)
    jsd = _entropy(probs.mean(0)) - _entropy(probs).mean(0)
    _diagnose(got, ce - lam * jsd.mean(), {
        "the regulariser *rewards* disagreement between the t values: subtract λ·JSD, do not add it.": ce + lam * jsd.mean(),
        "the data term is the mean of the T cross-entropies, not the cross-entropy of the averaged prediction.":
            torch.nn.functional.nll_loss(probs.mean(0).log(), labels) - lam * jsd.mean(),
        "compute the JSD on probabilities (softmax of the logits), not on the logits.":
            ce - lam * (_entropy(logits.mean(0)) - _entropy(logits).mean(0)).mean(),
        "you left out λ.": ce - jsd.mean(),
    }, "jsd_loss(logits, labels, lam)", atol=1e-8)
    return _ok("check_jsd_loss")


def check_bma(bma) -> bool:
    """``bma(samples (S, N, C)) -> (N, C)``: the model average p̄ = mean_s p_s of the probabilities."""
    samples = _samples(1)
    got = _call(bma, samples, what="bma", shape_hint=SAMPLE_SHAPES)
    logits_mean = samples.log().mean(0).softmax(-1)
    _diagnose(got, samples.mean(0), {
        "you averaged log-probabilities (a geometric mean): Bayesian model averaging averages the probabilities.": logits_mean,
        "average over the samples (dimension 0), not over the classes or the examples.": samples.mean(1),
        "that is one sample: average all S of them.": samples[0],
        "divide by S: p̄ must sum to 1 over the classes.": samples.sum(0),
    }, "bma(samples)", atol=1e-8)
    return _ok("check_bma")
