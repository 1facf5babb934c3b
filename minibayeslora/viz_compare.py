"""Two methods side by side (notebook 07's widget): their reliability diagrams, or histograms of an uncertainty
score on the test set and on the OOD set.

``predictions`` maps a method's name to ``{"test": draws (S, N, C), "ood": draws (S', M, C)}`` (class
probabilities, S draws; S = 1 for a point estimate); ``labels`` are the test labels (N,).
"""

from __future__ import annotations

import numpy as np
import torch

from . import metrics
from .viz import FONT, WIDGET_WIDTH, title_and_legend

VIEWS = ("reliability", "entropy", "mutual information")


def _score(draws: torch.Tensor, view: str) -> np.ndarray:
    if view == "entropy":
        return metrics.predictive_entropy(draws.mean(0)).numpy()
    return metrics.mutual_information(draws).numpy()


def plot_method_pair(predictions: dict, labels, first: str, second: str, view: str = "reliability",
                     draws: int | None = None):
    """One panel per method: the reliability diagram of p̄ on the test set (``view="reliability"``; 15 bins, as
    ``metrics.ece``), or the histograms of its entropy or MI on the test and OOD sets (same bins in both panels).
    ``draws``: use only each method's first ``draws`` samples (all of them by default; a point estimate has one)."""
    import matplotlib.pyplot as plt

    unknown = [name for name in (first, second) if name not in predictions]
    if unknown:
        raise KeyError(f"no predictions for {unknown}; the methods are {sorted(predictions)}.")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}.")
    if draws is not None and draws < 1:
        raise ValueError(f"draws must be ≥ 1, got {draws}.")
    predictions = {name: {part: p[:draws] for part, p in predictions[name].items()} for name in (first, second)}
    labels = torch.as_tensor(labels)
    fig, axes = plt.subplots(1, 2, figsize=(WIDGET_WIDTH, 4.2), layout="constrained", sharey=True)
    if view == "reliability":
        for ax, name in zip(axes, (first, second)):
            p_bar = predictions[name]["test"].mean(0).double()
            points = metrics.reliability_points(p_bar, labels)
            conf, acc = points["confidence"].numpy(), points["accuracy"].numpy()
            ax.plot([0, 1], [0, 1], "k:", lw=1, label="calibrated")
            ax.bar(conf, acc, width=1 / 15, alpha=0.35, edgecolor="k", lw=0.5)
            ax.plot(conf, acc, "o-", ms=3, label="accuracy per confidence bin")
            ax.set(xlim=(0.45, 1.0), ylim=(0.0, 1.0), xlabel="confidence (max p̄)")
            title_and_legend(ax, f"{name}, S = {len(predictions[name]['test'])}\nECE {metrics.ece(p_bar, labels):.3f}, "
                                 f"accuracy {metrics.accuracy(p_bar, labels):.3f}", ncol=1)
        axes[0].set_ylabel("accuracy in the bin")
        for ax in axes:
            ax.tick_params(labelsize=FONT)
        return fig
    scores = {name: {part: _score(predictions[name][part], view) for part in ("test", "ood")} for name in (first, second)}
    top = max(v.max() for by_part in scores.values() for v in by_part.values())
    edges = np.linspace(0.0, top if top > 0 else 1.0, 31)
    for ax, name in zip(axes, (first, second)):
        for part, label in (("test", "test"), ("ood", "OOD")):
            ax.hist(scores[name][part], bins=edges, density=True, histtype="step", lw=1.5,
                    label=f"{label} (mean {scores[name][part].mean():.3f})")
        auroc = metrics.auroc(scores[name]["test"], scores[name]["ood"])
        ax.set(xlabel=f"{view} (nats)")
        title_and_legend(ax, f"{name}, S = {len(predictions[name]['test'])}\nOOD AUROC {auroc:.3f}", ncol=1)
    axes[0].set_ylabel("density")
    return fig


def method_pair_widget(predictions: dict, labels, first: str, second: str):
    """Two method menus, a view menu and a slider over the number of draws used, redrawing ``plot_method_pair``."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    names = list(predictions)
    most = max(p["test"].shape[0] for p in predictions.values())

    def show(first, second, view, draws):
        plot_method_pair(predictions, labels, first, second, view, draws)
        plt.show()

    return widgets.interactive(show, first=widgets.Dropdown(options=names, value=first, description="left"),
                               second=widgets.Dropdown(options=names, value=second, description="right"),
                               view=widgets.Dropdown(options=VIEWS, value="reliability", description="show"),
                               draws=widgets.IntSlider(value=most, min=1, max=most, description="draws S",
                                                       continuous_update=False))
