"""Each metric against an independent reference: torchmetrics, scikit-learn, or a brute-force loop."""

import math

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
