"""compare.scores against scikit-learn and loops written out by hand; the seed table and the Pareto front by brute force."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from minibayeslora import compare


def _draws(S, N, C, seed):
    g = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(S, N, C, generator=g, dtype=torch.float64)).softmax(-1)


def test_scores_match_independent_references():
    from sklearn.metrics import balanced_accuracy_score, brier_score_loss, log_loss, roc_auc_score

    samples, ood = _draws(6, 200, 2, 0), _draws(6, 80, 2, 1)
    labels = torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(2))
    row = compare.scores(samples, labels, {"other": ood})
    p_bar = samples.mean(0).numpy()
    y = labels.numpy()
    assert row["S"] == 6
    assert row["acc"] == pytest.approx(float((p_bar.argmax(1) == y).mean()))
    assert row["balanced acc"] == pytest.approx(balanced_accuracy_score(y, p_bar.argmax(1)))
    assert row["NLL"] == pytest.approx(log_loss(y, p_bar), rel=1e-9)
    assert row["Brier"] == pytest.approx(2 * brier_score_loss(y, p_bar[:, 1]), rel=1e-9)   # sklearn: one class's term

    def entropy(p):
        return -(p * np.log(p)).sum(-1)

    def mi(s):
        s = s.numpy()
        return entropy(s.mean(0)) - entropy(s).mean(0)

    wrong = p_bar.argmax(1) != y
    assert row["misclass AUROC(H)"] == pytest.approx(roc_auc_score(wrong, entropy(p_bar)))
    assert row["misclass AUROC(MI)"] == pytest.approx(roc_auc_score(wrong, mi(samples)))
    is_ood = np.r_[np.zeros(200), np.ones(80)]
    assert row["OOD AUROC(H) other"] == pytest.approx(roc_auc_score(is_ood, np.r_[entropy(p_bar), entropy(ood.mean(0).numpy())]))
    assert row["OOD AUROC(MI) other"] == pytest.approx(roc_auc_score(is_ood, np.r_[mi(samples), mi(ood)]))


def test_scores_of_a_point_estimate_and_of_a_perfect_model():
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]])
    row = compare.scores(probs, torch.tensor([0, 1, 0]))
    assert row["acc"] == 1.0
    assert math.isnan(row["misclass AUROC(H)"])      # no mistakes: nothing to rank
    with pytest.raises(ValueError, match=r"\(S, N, C\)"):
        compare.scores(probs[0], torch.tensor([0, 1, 0]))


def test_seed_table_is_mean_and_half_range():
    rows = pd.DataFrame({"method": ["a", "a", "a", "b"], "seed": [0, 1, 2, 0], "NLL": [0.5, 0.7, 0.6, 0.4]})
    mean, spread = compare.seed_table(rows, ["NLL"])
    assert list(mean.index) == ["a", "b"]
    assert mean.loc["a", "NLL"] == pytest.approx(0.6) and spread.loc["a", "NLL"] == pytest.approx(0.1)
    assert math.isnan(spread.loc["b", "NLL"])
    text = compare.mean_pm_spread(mean, spread)
    assert text.loc["a", "NLL"] == "0.600 ± 0.100" and text.loc["b", "NLL"] == "0.400"


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    cost, loss = rng.integers(0, 6, 12).tolist(), rng.integers(0, 6, 12).tolist()   # small integers: ties happen
    front = compare.pareto_front(cost, loss)
    for i in range(12):
        dominated = any((cost[j], loss[j]) != (cost[i], loss[i]) and cost[j] <= cost[i] and loss[j] <= loss[i]
                        for j in range(12))
        assert front[i] == (not dominated)
    assert any(front)                                   # a finite set always has a front
    best_loss = min(loss)
    assert any(f and v == best_loss for f, v in zip(front, loss))
