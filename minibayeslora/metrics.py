"""Metrics for predictive distributions, one definition used everywhere.

Given S samples of class probabilities p_s, shape (S, N, C), the prediction is p̄ = mean_s p_s (N, C):

- accuracy: mean of [argmax p̄ = y];        NLL: −mean log p̄(y);
- balanced accuracy: the mean over classes of each class's accuracy (its recall), for data where one class
  dominates; ``majority_accuracy`` is what always answering the training set's majority class scores;
- ECE: 15 equal-width bins on the confidence max p̄; Σ_b (n_b/N)·|acc_b − conf_b| (L1, as torchmetrics'
  ``MulticlassCalibrationError(n_bins=15, norm="l1")``);
- Brier: mean over examples of Σ_c (p̄_c − 1[y = c])²;
- predictive entropy H[p̄] per example (nats);
- mutual information MI = H[p̄] − mean_s H[p_s] per example (epistemic part; total = aleatoric + MI);
- JSD of the samples = the same quantity, written as the Jensen–Shannon divergence of S distributions;
- OOD AUROC: how well a score (higher = more OOD) separates OOD (positive) from in-distribution examples.
"""

from __future__ import annotations

import torch


def _check_probs(probs: torch.Tensor, dims: int) -> torch.Tensor:
    probs = torch.as_tensor(probs, dtype=torch.float64)
    if probs.dim() != dims:
        raise ValueError(f"expected probabilities with {dims} dimensions ({'(N, C)' if dims == 2 else '(S, N, C)'}), "
                         f"got shape {tuple(probs.shape)}.")
    if (probs < -1e-6).any() or not torch.allclose(probs.sum(-1), torch.ones(()).double(), atol=1e-4):
        raise ValueError("probabilities must be non-negative and sum to 1 over the last dimension (pass softmax outputs, not logits).")
    return probs


def _check_labels(labels, n: int) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (n,):
        raise ValueError(f"expected {n} labels, got shape {tuple(labels.shape)}.")
    return labels


def accuracy(probs, labels) -> float:
    probs = _check_probs(probs, 2)
    return float((probs.argmax(-1) == _check_labels(labels, len(probs))).double().mean())


def balanced_accuracy(probs, labels) -> float:
    """(1/C') Σ_c mean_{i: y_i = c} [argmax p̄_i = c] over the C' classes present in ``labels``.

    0.5 for a classifier that always answers one class of two, whatever the class balance.
    """
    probs = _check_probs(probs, 2)
    labels = _check_labels(labels, len(probs))
    hits = (probs.argmax(-1) == labels).double()
    return float(torch.stack([hits[labels == c].mean() for c in labels.unique()]).mean())


def majority_accuracy(train_labels, test_labels) -> float:
    """Accuracy on ``test_labels`` of always predicting the most frequent class of ``train_labels``."""
    train_labels, test_labels = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
    if not len(train_labels) or not len(test_labels):
        raise ValueError("majority_accuracy needs non-empty training and test labels.")
    return float((test_labels == torch.bincount(train_labels).argmax()).double().mean())


def nll(probs, labels, eps: float = 1e-12) -> float:
    probs = _check_probs(probs, 2)
    labels = _check_labels(labels, len(probs))
    return float(-probs[torch.arange(len(probs)), labels].clamp_min(eps).log().mean())


def confidence_bins(probs, labels, n_bins: int = 15) -> dict[str, torch.Tensor]:
    """Per confidence bin (n_bins + 1,): ``count``, ``confidence`` (sum of max p) and ``correct`` (sum of hits).

    Bin b holds confidences in [b/n, (b+1)/n); a confidence of exactly 1 gets a bin of its own, as in
    torchmetrics (ECE adds |acc − conf| per bin, so where the edges fall matters). ``ece`` and the
    reliability diagram both read these bins.
    """
    probs = _check_probs(probs, 2)
    labels = _check_labels(labels, len(probs))
    confidence, predicted = probs.max(-1)
    confidence = confidence.double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    bins = torch.bucketize(confidence, edges, right=True) - 1
    zeros = torch.zeros(n_bins + 1, dtype=torch.float64)
    return {"count": torch.bincount(bins, minlength=n_bins + 1).double(),
            "confidence": zeros.index_add(0, bins, confidence),
            "correct": zeros.index_add(0, bins, (predicted == labels).double())}


def reliability_points(probs, labels, n_bins: int = 15) -> dict[str, torch.Tensor]:
    """The non-empty bins of ``confidence_bins`` as a reliability diagram's points: per bin its mean ``confidence``,
    its ``accuracy`` and its ``count`` (each (B,), B ≤ n_bins + 1 non-empty bins, in order of confidence)."""
    bins = confidence_bins(probs, labels, n_bins)
    used = bins["count"] > 0
    count = bins["count"][used]
    return {"confidence": bins["confidence"][used] / count, "accuracy": bins["correct"][used] / count, "count": count}


def ece(probs, labels, n_bins: int = 15) -> float:
    bins = confidence_bins(probs, labels, n_bins)
    return float((bins["correct"] - bins["confidence"]).abs().sum() / bins["count"].sum())


def brier(probs, labels) -> float:
    probs = _check_probs(probs, 2)
    labels = _check_labels(labels, len(probs))
    onehot = torch.nn.functional.one_hot(labels, probs.shape[-1]).double()
    return float(((probs - onehot) ** 2).sum(-1).mean())


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def predictive_entropy(probs) -> torch.Tensor:
    """H[p̄] per example: (N, C) -> (N,)."""
    return _entropy(_check_probs(probs, 2))


def mutual_information(samples) -> torch.Tensor:
    """H[mean_s p_s] − mean_s H[p_s] per example: (S, N, C) -> (N,), ≥ 0."""
    samples = _check_probs(samples, 3)
    return (_entropy(samples.mean(0)) - _entropy(samples).mean(0)).clamp_min(0.0)


def jsd(samples) -> torch.Tensor:
    """Jensen–Shannon divergence of the S distributions per example (equal weights): (S, N, C) -> (N,).

    JSD = mean_s KL(p_s ‖ p̄), which equals the mutual information above; both names are kept
    because notebook 04 uses it as a training regulariser and as an uncertainty score.
    """
    samples = _check_probs(samples, 3)
    mean = samples.mean(0, keepdim=True)
    ratio = samples.clamp_min(1e-30).log() - mean.clamp_min(1e-30).log()
    return (samples * ratio).sum(-1).mean(0).clamp_min(0.0)


def auroc(scores_in, scores_out) -> float:
    """P(score of a random OOD example > score of a random in-distribution one), ties count ½."""
    scores_in = torch.as_tensor(scores_in, dtype=torch.float64).flatten()
    scores_out = torch.as_tensor(scores_out, dtype=torch.float64).flatten()
    if len(scores_in) == 0 or len(scores_out) == 0:
        raise ValueError("auroc needs at least one in-distribution and one OOD score.")
    scores = torch.cat([scores_in, scores_out])
    # average ranks (ties share their mean rank), then the Mann–Whitney U statistic
    order = torch.argsort(scores, stable=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    unique, inverse = torch.unique(scores, return_inverse=True)
    mean_rank = torch.zeros(len(unique), dtype=torch.float64).index_add(0, inverse, ranks)
    mean_rank /= torch.bincount(inverse, minlength=len(unique)).double()
    ranks = mean_rank[inverse]
    n_out = len(scores_out)
    u = ranks[len(scores_in):].sum() - n_out * (n_out + 1) / 2
    return float(u / (n_out * len(scores_in)))


def cluster_bootstrap(statistic, groups, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap interval of ``statistic`` that resamples whole groups (e.g. movies) with replacement.

    ``statistic(idx)`` takes a LongTensor of row indices and returns a float computed on those rows (a metric, or
    the difference of two methods' metrics on the same rows, for a paired interval). ``groups`` (N,) names each
    row's group. Reviews of one movie are not independent, so resampling single reviews would make the interval
    too narrow; resampling movies keeps each movie's reviews together. Returns (value on all rows, low, high).
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}.")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}.")
    if len(groups) == 0:
        raise ValueError("cluster_bootstrap needs at least one row.")
    group_of_row = torch.tensor(_group_codes(groups))
    n_groups = int(group_of_row.max()) + 1
    order = torch.argsort(group_of_row, stable=True)
    sizes = torch.bincount(group_of_row, minlength=n_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    rows_of_group = [order[s:s + n] for s, n in zip(starts.tolist(), sizes.tolist())]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_boot):
        picked = torch.randint(n_groups, (n_groups,), generator=generator)
        values.append(float(statistic(torch.cat([rows_of_group[g] for g in picked.tolist()]))))
    values = torch.tensor(values, dtype=torch.float64)
    tail = (1 - level) / 2
    low, high = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return float(statistic(torch.arange(len(groups)))), low, high


def _group_codes(groups) -> list[int]:
    """Integer codes for group labels of any hashable type (strings included), in order of first appearance."""
    codes: dict = {}
    return [codes.setdefault(g, len(codes)) for g in (groups.tolist() if torch.is_tensor(groups) else groups)]


def intervals(p_bars: dict, labels, groups, n_boot: int = 500, level: float = 0.95, seed: int = 0) -> dict:
    """``{name: {"acc" | "NLL" | "ECE" | "Brier": (value, low, high)}}`` for several methods' p̄ (N, C) on one set.

    Every method and metric uses the same ``n_boot`` resamples of the groups (same ``seed``), so intervals of
    different methods are comparable; for the interval of a *difference*, call ``cluster_bootstrap`` on it.
    """
    labels = torch.as_tensor(labels)
    functions = {"acc": accuracy, "NLL": nll, "ECE": ece, "Brier": brier}
    return {name: {metric: cluster_bootstrap(lambda i, f=f, p=p: f(p[i], labels[i]), groups, n_boot, level, seed)
                   for metric, f in functions.items()}
            for name, p in p_bars.items()}
