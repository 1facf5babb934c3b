"""Each metric against an independent reference: torchmetrics, scikit-learn, or a brute-force loop."""

import math

import numpy as np
import pytest
import torch

from minibayeslora import metrics


def _random_probs(*shape, seed=0, sharpness=3.0):
    g = torch.Generator().manual_seed(seed)
    return (sharpness * torch.randn(*shape, generator=g, dtype=torch.float64)).softmax(-1)


@pytest.mark.parametrize("seed,classes", [(0, 2), (1, 2), (2, 5)])
def test_ece_matches_torchmetrics(seed, classes):
    from torchmetrics.classification import MulticlassCalibrationError

    probs = _random_probs(500, classes, seed=seed)
    labels = torch.randint(0, classes, (500,), generator=torch.Generator().manual_seed(seed + 10))
    reference = MulticlassCalibrationError(num_classes=classes, n_bins=15, norm="l1")(probs.float(), labels)
    assert metrics.ece(probs, labels) == pytest.approx(float(reference), abs=1e-5)


def test_ece_edge_cases_match_torchmetrics():
    from torchmetrics.classification import MulticlassCalibrationError

    # confidences exactly 1 and exactly on bin edges
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.4], [8 / 15, 7 / 15], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 0, 1])
    reference = MulticlassCalibrationError(num_classes=2, n_bins=15, norm="l1")(probs.float(), labels)
    assert metrics.ece(probs, labels) == pytest.approx(float(reference), abs=1e-6)
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.ece(perfect, torch.tensor([0, 1])) == 0.0


def test_reliability_points_by_brute_force():
    # sharp probabilities put many confidences at exactly 1 (a bin of its own); 3/15 and 10/15 sit on bin edges
    probs = torch.cat([_random_probs(200, 3, seed=6, sharpness=40.0), torch.tensor([[0.6, 0.2, 0.2], [10 / 15, 5 / 15, 0.0]])])
    labels = torch.randint(0, 3, (202,), generator=torch.Generator().manual_seed(7))
    points = metrics.reliability_points(probs, labels)
    expected = {}
    for p, y in zip(probs.tolist(), labels.tolist()):
        confidence = max(p)
        edge = next(b for b in range(16) if b == 15 or confidence < (b + 1) / 15)    # bin b: [b/15, (b+1)/15)
        expected.setdefault(edge, []).append((confidence, float(p.index(confidence) == y)))
    order = sorted(expected)
    assert points["count"].tolist() == [len(expected[b]) for b in order]
    assert points["confidence"].tolist() == pytest.approx([np.mean([c for c, _ in expected[b]]) for b in order])
    assert points["accuracy"].tolist() == pytest.approx([np.mean([h for _, h in expected[b]]) for b in order])
    assert 15 in order, "the test should cover a confidence of exactly 1"


def test_accuracy_nll_brier_by_brute_force():
    probs = _random_probs(50, 3, seed=4)
    labels = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(5))
    correct = sum(int(max(range(3), key=lambda c: probs[i, c]) == labels[i]) for i in range(50))
    assert metrics.accuracy(probs, labels) == pytest.approx(correct / 50)
    assert metrics.nll(probs, labels) == pytest.approx(sum(-math.log(probs[i, labels[i]]) for i in range(50)) / 50)
    brier = sum(sum((probs[i, c] - (1.0 if c == labels[i] else 0.0)) ** 2 for c in range(3)) for i in range(50)) / 50
    assert metrics.brier(probs, labels) == pytest.approx(float(brier))


def test_entropy_mi_and_jsd_by_brute_force():
    samples = _random_probs(7, 20, 3, seed=6)
    entropy = lambda p: -sum(float(x) * math.log(float(x)) for x in p if x > 0)  # noqa: E731
    for n in range(20):
        mean = samples[:, n].mean(0)
        expected_mi = entropy(mean) - sum(entropy(samples[s, n]) for s in range(7)) / 7
        expected_jsd = sum(sum(float(samples[s, n, c] * math.log(samples[s, n, c] / mean[c])) for c in range(3)) for s in range(7)) / 7
        assert metrics.predictive_entropy(samples.mean(0))[n] == pytest.approx(entropy(mean))
        assert metrics.mutual_information(samples)[n] == pytest.approx(expected_mi, abs=1e-10)
        assert metrics.jsd(samples)[n] == pytest.approx(expected_jsd, abs=1e-10)
    identical = samples[:1].expand(5, -1, -1)
    assert metrics.mutual_information(identical).abs().max() < 1e-12, "one model repeated has no epistemic uncertainty"


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(7)
    scores_in = torch.randint(0, 10, (200,), generator=g).double()  # many ties
    scores_out = torch.randint(3, 14, (150,), generator=g).double()
    y = torch.cat([torch.zeros(200), torch.ones(150)])
    reference = roc_auc_score(y.numpy(), torch.cat([scores_in, scores_out]).numpy())
    assert metrics.auroc(scores_in, scores_out) == pytest.approx(reference, abs=1e-12)
    assert metrics.auroc([0.0, 0.1], [0.9, 1.0]) == 1.0 and metrics.auroc([0.9, 1.0], [0.0, 0.1]) == 0.0


def test_clear_errors_on_bad_input():
    with pytest.raises(ValueError, match="logits"):
        metrics.ece(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(S, N, C\)"):
        metrics.mutual_information(_random_probs(4, 2))
    with pytest.raises(ValueError, match="labels"):
        metrics.accuracy(_random_probs(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        metrics.auroc([], [1.0])


def test_cluster_bootstrap_with_one_row_per_group_matches_scipys_bootstrap():
    from scipy.stats import bootstrap

    from minibayeslora.metrics import cluster_bootstrap

    x = torch.rand(300, generator=torch.Generator().manual_seed(0)) ** 3   # skewed, so the interval is not symmetric
    value, low, high = cluster_bootstrap(lambda i: x[i].mean().item(), list(range(300)), n_boot=4000)
    ref = bootstrap((x.numpy(),), np.mean, n_resamples=4000, method="percentile", random_state=0).confidence_interval
    assert value == pytest.approx(x.mean().item())
    # two Monte Carlo estimates of the same quantiles: equal to well within the interval's width
    width = high - low
    assert abs(low - ref.low) < 0.05 * width and abs(high - ref.high) < 0.05 * width


def test_cluster_bootstrap_resamples_groups_not_rows():
    """Rows of one group share a value: the group-level interval is the ordinary bootstrap of the group means,
    and it is much wider than the (wrong) row-level interval, which treats the copies as independent."""
    from minibayeslora.metrics import cluster_bootstrap

    g = torch.Generator().manual_seed(1)
    group_values = torch.randn(40, generator=g)
    x = group_values.repeat_interleave(25)                       # 40 groups of 25 identical rows
    groups = [f"movie {i // 25}" for i in range(len(x))]
    _, low, high = cluster_bootstrap(lambda i: x[i].mean().item(), groups, n_boot=3000, seed=2)
    _, g_low, g_high = cluster_bootstrap(lambda i: group_values[i].mean().item(), list(range(40)), n_boot=3000, seed=3)
    _, r_low, r_high = cluster_bootstrap(lambda i: x[i].mean().item(), list(range(len(x))), n_boot=3000, seed=4)
    assert (high - low) == pytest.approx(g_high - g_low, rel=0.1)
    assert (high - low) > 3 * (r_high - r_low)                   # √25 = 5 in theory


def test_cluster_bootstrap_is_seeded_and_rejects_bad_input():
    from minibayeslora.metrics import cluster_bootstrap

    x = torch.arange(10.0)
    stat = lambda i: x[i].mean().item()  # noqa: E731
    assert cluster_bootstrap(stat, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], n_boot=50, seed=5) == \
        cluster_bootstrap(stat, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], n_boot=50, seed=5)
    for kwargs in ({"n_boot": 0}, {"level": 1.0}):
        with pytest.raises(ValueError):
            cluster_bootstrap(stat, list(range(10)), **kwargs)
    with pytest.raises(ValueError, match="at least one row"):
        cluster_bootstrap(stat, [])


def test_intervals_contain_the_value_and_share_their_resamples():
    from minibayeslora.metrics import cluster_bootstrap, intervals

    g = torch.Generator().manual_seed(6)
    labels = torch.randint(2, (300,), generator=g)
    p = torch.softmax(2 * torch.randn(300, 2, generator=g), -1)
    groups = [i // 6 for i in range(300)]
    out = intervals({"m": p, "m again": p.clone()}, labels, groups, n_boot=200, seed=1)
    assert out["m"] == out["m again"], "same data, same resamples: same intervals"
    for metric, (value, low, high) in out["m"].items():
        assert low <= value <= high, metric
    assert out["m"]["NLL"] == cluster_bootstrap(lambda i: metrics.nll(p[i], labels[i]), groups, 200, seed=1)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # class 1 of 3 is predicted, never true
def test_balanced_accuracy_matches_sklearn_and_the_majority_baseline():
    from sklearn.metrics import balanced_accuracy_score

    g = torch.Generator().manual_seed(3)
    for n_classes in (2, 3):
        probs = torch.softmax(torch.randn(200, n_classes, generator=g), -1)
        labels = (torch.rand(200, generator=g) < 0.8).long() * (n_classes - 1)  # imbalanced: 80 % the last class
        expected = balanced_accuracy_score(labels.numpy(), probs.argmax(-1).numpy())
        assert metrics.balanced_accuracy(probs, labels) == pytest.approx(expected)
    always_last = torch.tensor([[0.1, 0.9]]).repeat(200, 1)
    labels = (torch.rand(200, generator=g) < 0.75).long()
    assert metrics.balanced_accuracy(always_last, labels) == pytest.approx(0.5)
    assert metrics.accuracy(always_last, labels) == pytest.approx(metrics.majority_accuracy(labels, labels))
    assert metrics.majority_accuracy(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 1, 0])) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        metrics.majority_accuracy(torch.tensor([], dtype=torch.long), labels)
