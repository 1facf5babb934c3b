"""Methods side by side under one protocol: one row of scores per (method, seed), a table with seed spreads,
and the Pareto front of quality against cost.

A method's predictions on a set are S draws of class probabilities, (S, N, C) (S = 1 for a point estimate);
p̄ = mean over the draws is its predictive distribution. From them ``scores`` computes

    accuracy, balanced accuracy      argmax p̄ against the labels (balanced: the mean of the per-class recalls)
    NLL, ECE, Brier                  of p̄ (ECE with 15 equal-width confidence bins)
    misclassification AUROC (H, MI)  does the score rank the wrong predictions above the right ones?
    OOD AUROC (H, MI) per OOD set    does the score rank the OOD texts above the in-distribution ones?

with H = the entropy of p̄ and MI = H[p̄] − mean_s H[p_s] (zero for a single draw). An AUROC of 0.5 is chance.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from . import metrics


def scores(samples, labels, ood: dict | None = None) -> dict:
    """One row of scores (see the module docstring) for S draws (S, N, C) on a labelled set and, per OOD set,
    draws (S', M, C) on its texts (``ood = {name: draws}``; the OOD labels are never read)."""
    samples = torch.as_tensor(samples)
    if samples.dim() != 3:
        raise ValueError(f"samples must be (S, N, C) draws of class probabilities, got shape {tuple(samples.shape)}.")
    labels = torch.as_tensor(labels)
    p_bar = samples.mean(0)
    entropy, mi = metrics.predictive_entropy(p_bar), metrics.mutual_information(samples)
    wrong = p_bar.argmax(-1) != labels
    row = {"S": samples.shape[0], "acc": metrics.accuracy(p_bar, labels), "balanced acc": metrics.balanced_accuracy(p_bar, labels),
           "NLL": metrics.nll(p_bar, labels), "ECE": metrics.ece(p_bar, labels), "Brier": metrics.brier(p_bar, labels),
           "misclass AUROC(H)": _auroc_or_nan(entropy[~wrong], entropy[wrong]),
           "misclass AUROC(MI)": _auroc_or_nan(mi[~wrong], mi[wrong])}
    for name, draws in (ood or {}).items():
        draws = torch.as_tensor(draws)
        row[f"OOD AUROC(H) {name}"] = metrics.auroc(entropy, metrics.predictive_entropy(draws.mean(0)))
        row[f"OOD AUROC(MI) {name}"] = metrics.auroc(mi, metrics.mutual_information(draws))
    return row


def _auroc_or_nan(scores_in, scores_out) -> float:
    """AUROC, or NaN where one side is empty (a model with no mistakes has no misclassification AUROC)."""
    return metrics.auroc(scores_in, scores_out) if len(scores_in) and len(scores_out) else math.nan


def seed_table(rows: pd.DataFrame, columns: list[str], by: str | list[str] = "method") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean, spread) over the seeds of each group ``by``, in the rows' order of first appearance.

    The spread is half the range of the seeds (max − min)/2, so "mean ± spread" covers every seed; it is NaN
    for a group with one seed, where nothing was measured.
    """
    grouped = rows.groupby(by, sort=False)[columns]
    mean = grouped.mean()
    spread = (grouped.max() - grouped.min()) / 2
    spread[grouped.count() < 2] = math.nan
    return mean, spread


def mean_pm_spread(mean: pd.DataFrame, spread: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The table as text, "0.812 ± 0.004" (or "0.812" where there is no spread)."""
    def cell(m, s):
        if pd.isna(m):
            return "–"
        return f"{m:.{digits}f}" if pd.isna(s) else f"{m:.{digits}f} ± {s:.{digits}f}"
    return pd.DataFrame({c: [cell(m, s) for m, s in zip(mean[c], spread[c])] for c in mean.columns}, index=mean.index)


def pareto_front(cost, loss) -> list[bool]:
    """Which points no other point beats: point i is on the front unless some j has cost_j ≤ cost_i and
    loss_j ≤ loss_i with one of the two strictly smaller (lower is better on both axes). O(n²), n = a few methods."""
    cost, loss = [float(c) for c in cost], [float(v) for v in loss]
    if len(cost) != len(loss):
        raise ValueError(f"cost and loss must have the same length, got {len(cost)} and {len(loss)}.")

    def beaten(i):
        return any(cost[j] <= cost[i] and loss[j] <= loss[i] and (cost[j] < cost[i] or loss[j] < loss[i])
                   for j in range(len(cost)) if j != i)
    return [not beaten(i) for i in range(len(cost))]
