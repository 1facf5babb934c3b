"""Plot helpers shared by the notebooks.

``save_figure`` writes a figure to ``$MINIBAYESLORA_FIGURES`` (``make course`` points it at
``build/figures``); when the variable is unset it does nothing, so interactive runs leave no files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def save_figure(fig, name: str) -> Path | None:
    """Save ``fig`` as ``<name>.png`` under ``$MINIBAYESLORA_FIGURES``; return the path (or None)."""
    folder = os.environ.get("MINIBAYESLORA_FIGURES")
    if not folder:
        return None
    if not name or any(c in name for c in "/\\"):
        raise ValueError(f"figure name must be a plain file stem, got {name!r}.")
    path = Path(folder).expanduser() / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_rank_sweep(table):
    """Test accuracy and training time against the rank r (a DataFrame with ``r``, ``test acc``, ``train s``)."""
    import matplotlib.pyplot as plt

    missing = {"r", "test acc", "train s"} - set(table.columns)
    if missing:
        raise KeyError(f"the sweep table lacks columns {sorted(missing)}.")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
    left.plot(table["r"], table["test acc"], "o-")
    left.set(xscale="log", xlabel="rank r", ylabel="test accuracy", title="Accuracy vs rank")
    right.plot(table["r"], table["train s"], "o-", color="tab:orange")
    right.set(xscale="log", xlabel="rank r", ylabel="seconds", title="Training time vs rank")
    right.set_ylim(bottom=0)  # from zero: small differences must look small
    for ax in (left, right):
        ax.set_xticks(list(table["r"]), [str(r) for r in table["r"]])
    fig.tight_layout()
    return fig


def plot_spectra(spectra: dict, title: str = ""):
    """Singular values of several ΔW (``{layer name: 1-D array}``), one line per layer, log scale."""
    import matplotlib.pyplot as plt

    if not spectra:
        raise ValueError("no spectra to plot.")
    fig, ax = plt.subplots(figsize=(6, 3))
    for name, values in spectra.items():
        values = np.asarray(values)
        short = ".".join(p for p in name.split(".") if p.isdigit() or p in ("query", "value", "key", "q_proj", "v_proj"))
        ax.plot(np.arange(1, len(values) + 1), values, "o-", label=short or name)
    ax.set(yscale="log", xlabel="singular value index", ylabel="σ_k(ΔW)", title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


WIDGET_WIDTH = 10.5   # inches: 1,050 px at the notebook's 100 dpi, unshrunk on a 1366 × 768 laptop screen
FONT = 9              # the smallest font in a widget's figure, in points


def title_and_legend(ax, title: str, handles=None, ncol: int = 2, **legend_kw):
    """``ax``'s title with its legend in a band between the title and the data.

    A widget redraws with new data at every slider position, so a legend inside the axes would sooner or
    later cover some; above the axes it never does. ``handles`` defaults to the axes' labelled artists.
    """
    handles = ax.get_legend_handles_labels()[0] if handles is None else handles
    rows = -(-len(handles) // ncol)
    ax.set_title(title, pad=6 + 1.6 * FONT * rows)
    return ax.legend(handles, [h.get_label() for h in handles], fontsize=FONT, loc="lower left",
                     bbox_to_anchor=(0.0, 1.0), ncol=ncol, frameon=False, borderaxespad=0.3, **legend_kw)


def style_key(methods: list[str], groups: list[str], colors: list[str], styles: list[str]) -> list:
    """Legend handles for curves coloured by method and styled by group ("o-", "s--", ...): one entry per
    method and one per group instead of one per curve."""
    from matplotlib.lines import Line2D

    by_method = [Line2D([], [], color=colors[j % len(colors)], lw=2, label=m) for j, m in enumerate(methods)]
    by_group = [Line2D([], [], color="grey", marker=styles[i % len(styles)][0], ls=styles[i % len(styles)][1:], label=g)
                for i, g in enumerate(groups)]
    return by_method + by_group


@dataclass
class CurveExplorer:
    """Everything the t-slider shows, precomputed once (so moving the slider costs no model call).

    ``ts`` (G,) grid of t with G ≥ 51; ``probs`` (G, R, C) class probabilities of R chosen reviews
    at θ(t) for each grid t; ``reviews`` R short labels; ``class_names`` C names;
    ``path`` {"t": (P,), "nll": {split: (P,)}, "acc": {split: (P,)}} along the curve;
    ``plane`` optional {"xs": (X,), "ys": (Y,), "loss": (Y, X), "curve_xy": (G, 2), "anchors_xy": (K+1, 2)}:
    a loss surface and the curve's (projected) trace on it.
    """

    ts: np.ndarray
    probs: np.ndarray
    reviews: list[str]
    class_names: list[str]
    path: dict
    plane: dict | None = None

    def __post_init__(self):
        self.ts, self.probs = np.asarray(self.ts, dtype=float), np.asarray(self.probs, dtype=float)
        G = len(self.ts)
        if self.probs.shape != (G, len(self.reviews), len(self.class_names)):
            raise ValueError(f"probs must have shape (len(ts), len(reviews), len(class_names)) = "
                             f"{(G, len(self.reviews), len(self.class_names))}, got {self.probs.shape}.")
        if G < 2 or np.any(np.diff(self.ts) <= 0) or self.ts[0] != 0 or self.ts[-1] != 1:
            raise ValueError("ts must increase from 0 to 1.")
        if self.plane is not None and np.shape(self.plane["curve_xy"]) != (G, 2):
            raise ValueError(f"plane['curve_xy'] must have shape ({G}, 2), got {np.shape(self.plane['curve_xy'])}.")

    def index(self, t: float) -> int:
        """The grid point nearest to t."""
        if not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t}.")
        return int(np.abs(self.ts - float(t)).argmin())


def plot_curve_explorer(explorer: CurveExplorer, t: float):
    """Three panels at the grid point nearest t: loss and accuracy along the curve with a marker at t;
    the loss plane with the curve's trace and θ(t); class-probability bars of the chosen reviews."""
    import matplotlib.pyplot as plt

    i = explorer.index(t)
    t_now, path = explorer.ts[i], explorer.path
    R, C = explorer.probs.shape[1:]
    bars_height = max(2.0, 0.3 * R * max(1, C / 2) + 1.0)
    if explorer.plane is not None:   # two panels on top, the bars below: readable at 1366 px screens
        fig = plt.figure(figsize=(WIDGET_WIDTH, 3.6 + bars_height), layout="constrained")
        grid = fig.add_gridspec(2, 2, height_ratios=[3.6, bars_height], width_ratios=[1.15, 1.0])
        axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])]
    else:
        fig = plt.figure(figsize=(WIDGET_WIDTH, max(3.6, bars_height)), layout="constrained")
        grid = fig.add_gridspec(1, 2, width_ratios=[1.0, 1.0])
        axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
    along = axes[0]
    twin = along.twinx()
    for split, losses in path["nll"].items():
        line, = along.plot(path["t"], losses, "-", label=f"{split} NLL")
        along.plot([t_now], [np.interp(t_now, path["t"], losses)], "o", color=line.get_color(), ms=8)
    for split, accs in path["acc"].items():
        twin.plot(path["t"], accs, ":", color="grey", label=f"{split} acc")
    twin.set_ylabel("accuracy (dotted)")
    along.axvline(t_now, color="k", lw=1)
    along.set(xlabel="t", ylabel="NLL")
    title_and_legend(along, f"Along the curve, t = {t_now:.2f}")
    if explorer.plane is not None:
        plane, ax = explorer.plane, axes[1]
        contour = ax.contourf(plane["xs"], plane["ys"], plane["loss"], levels=15, cmap="viridis")
        fig.colorbar(contour, ax=ax, label="train NLL")
        xy = np.asarray(plane["curve_xy"])
        ax.plot(xy[:, 0], xy[:, 1], "w-", lw=1.5)
        ax.plot(*np.asarray(plane["anchors_xy"]).T, "w*", ms=12)
        ax.plot([xy[i, 0]], [xy[i, 1]], "o", color="tab:red", ms=9)
        ax.set(title="θ(t) in the plane of the optima", xticks=[], yticks=[])
    bars = axes[-1]
    height = 0.8 / C
    for c in range(C):
        bars.barh(np.arange(R) + (c - (C - 1) / 2) * height, explorer.probs[i, :, c], height=height, label=explorer.class_names[c])
    bars.set_yticks(np.arange(R), explorer.reviews, fontsize=FONT)
    bars.invert_yaxis()
    bars.set(xlim=(0, 1), xlabel="p(class | review)")
    title_and_legend(bars, "Predictive distribution at θ(t)", ncol=C)
    return fig


def curve_widget(explorer: CurveExplorer):
    """A t-slider over the precomputed grid that redraws ``plot_curve_explorer`` (needs ipywidgets)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(t):
        plot_curve_explorer(explorer, t)
        plt.show()

    slider = widgets.SelectionSlider(options=[(f"{t:.2f}", float(t)) for t in explorer.ts], value=float(explorer.ts[len(explorer.ts) // 2]),
                                     description="t", continuous_update=True, layout=widgets.Layout(width="60%"))
    return widgets.interactive(show, t=slider)


@dataclass
class PointsExplorer:
    """Curve BMA with k points, precomputed for a slider over k.

    ``points``: {method: (T, n, C) probabilities of n chosen examples at T equally spaced t};
    ``names``: the n examples' labels; ``ks``: the point counts offered (each must lie on the T grid,
    ``curves.nested_grid``); ``mean_mi``: {method: {set name: mean MI over that set for each k}}.
    """

    points: dict
    names: list
    ks: list
    mean_mi: dict

    def __post_init__(self):
        from .curves import nested_grid

        if not self.points:
            raise ValueError("no methods to show.")
        for method, probs in self.points.items():
            if probs.dim() != 3 or probs.shape[1] != len(self.names):
                raise ValueError(f"{method}: points must be (T, {len(self.names)}, C), got {tuple(probs.shape)}.")
            for k in self.ks:
                nested_grid(probs.shape[0], k)
        for method, by_set in self.mean_mi.items():
            if any(len(values) != len(self.ks) for values in by_set.values()):
                raise ValueError(f"{method}: mean_mi needs one value per k in {self.ks}.")


def plot_points_explorer(explorer: PointsExplorer, k: int):
    """Left: p(class 1) of each chosen example at the k curve points (dots) and their average p̄ (bar), with
    the MI; right: mean MI per set against k, the current k marked."""
    import matplotlib.pyplot as plt

    from matplotlib.transforms import blended_transform_factory

    from .curves import nested_grid
    from .metrics import mutual_information

    n, methods = len(explorer.names), list(explorer.points)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offsets = np.linspace(-0.2, 0.2, len(methods)) if len(methods) > 1 else [0.0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDGET_WIDTH, 1.6 + 0.3 * n * max(1, len(methods))),
                                      layout="constrained", gridspec_kw={"width_ratios": [3, 2]})
    label_at = blended_transform_factory(left.transAxes, left.transData)   # x in axes units, y in data units
    for j, method in enumerate(methods):
        chosen = explorer.points[method][nested_grid(explorer.points[method].shape[0], k)]      # (k, n, C)
        p_bar, mi = chosen.mean(0)[:, 1], mutual_information(chosen)
        y = np.arange(n) + offsets[j]
        left.scatter(chosen[..., 1].flatten(), np.tile(y, len(chosen)), s=14, alpha=0.45, color=colors[j % len(colors)])
        left.scatter(p_bar, y, marker="|", s=250, linewidths=2, color=colors[j % len(colors)], label=f"{method}: p̄")
        for yi, m in zip(y, mi.tolist()):   # in a column right of the axes, where no dot can cover it
            left.text(1.01, yi, f"MI {m:.3f}", transform=label_at, fontsize=FONT, va="center", color=colors[j % len(colors)])
    left.axvline(0.5, color="k", lw=0.5, ls=":")
    left.set_yticks(range(n), explorer.names, fontsize=FONT)
    left.invert_yaxis()
    left.set(xlim=(0, 1), xlabel="p(positive): one dot per curve point, bar = average p̄")
    title_and_legend(left, f"k = {k} curve point{'s' if k != 1 else ''}", ncol=min(3, len(methods)), markerscale=0.5)
    styles = ["o-", "s--", "^:", "d-."]
    for j, (method, by_set) in enumerate(explorer.mean_mi.items()):
        for i, (set_name, values) in enumerate(by_set.items()):
            right.plot(explorer.ks, values, styles[i % len(styles)], color=colors[j % len(colors)], label=f"{method}, {set_name}")
    right.axvline(k, color="k", lw=1)
    right.set_xscale("log", base=2)
    right.set_xticks(explorer.ks, [str(x) for x in explorer.ks])
    right.set(xlabel="curve points k", ylabel="mean MI (nats)")
    sets = list(dict.fromkeys(name for by_set in explorer.mean_mi.values() for name in by_set))
    title_and_legend(right, "Mean MI per set against k", style_key(list(explorer.mean_mi), sets, colors, styles))
    return fig


def points_widget(explorer: PointsExplorer):
    """A slider over ``explorer.ks`` that redraws ``plot_points_explorer`` (needs ipywidgets)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(k):
        plot_points_explorer(explorer, k)
        plt.show()

    slider = widgets.SelectionSlider(options=[(str(k), k) for k in explorer.ks], value=explorer.ks[-1],
                                     description="points k", continuous_update=True, layout=widgets.Layout(width="60%"))
    return widgets.interactive(show, k=slider)


def reliability_diagram(curves: dict, n_bins: int = 15):
    """Accuracy vs confidence per bin (15 equal-width confidence bins, as `metrics.ece`), one line per method: ``{name: (p̄ (N, C), labels (N,))}``.

    Points on the diagonal are calibrated; below it, over-confident. Marker area ∝ bin count.
    """
    import matplotlib.pyplot as plt
    import torch

    from . import metrics

    if not curves:
        raise ValueError("no methods to plot.")
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for name, (probs, labels) in curves.items():
        points = metrics.reliability_points(torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels), n_bins)
        line, = ax.plot(points["confidence"], points["accuracy"], "-", label=name)
        ax.scatter(points["confidence"], points["accuracy"], s=8 + 200 * points["count"] / points["count"].sum(),
                   color=line.get_color())
    ax.set(xlabel="confidence (max p̄)", ylabel="accuracy", xlim=(0.45, 1.0), ylim=(0.3, 1.0), title="Reliability")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def mi_histograms(scores: dict, bins: int = 30, xlabel: str = "mutual information (nats)"):
    """Histograms of an uncertainty score per set: ``{set name: (N,) scores}`` (e.g. RT test vs OOD sets)."""
    import matplotlib.pyplot as plt

    if not scores:
        raise ValueError("no scores to plot.")
    values = {name: np.asarray(v, dtype=float).ravel() for name, v in scores.items()}
    top = max(v.max() for v in values.values())
    edges = np.linspace(0, top if top > 0 else 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, v in values.items():
        ax.hist(v, bins=edges, density=True, histtype="step", lw=1.5, label=f"{name} (mean {v.mean():.3f})")
    ax.set(xlabel=xlabel, ylabel="density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_threshold_sweep(sweep, threshold: float):
    """What pruning at a log α threshold keeps, and what it costs.

    ``sweep`` is a DataFrame with one row per threshold: ``threshold``, ``adapter numbers``,
    ``test acc``, ``test ECE`` and one ``kept <layer>`` column per adapted layer. Left: kept
    ranks per layer at the row nearest ``threshold``; right: accuracy and ECE against the
    threshold, with a marker there.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    missing = {"threshold", "adapter numbers", "test acc", "test ECE"} - set(sweep.columns)
    kept_columns = [c for c in sweep.columns if c.startswith("kept ")]
    if missing or not kept_columns:
        raise KeyError(f"the sweep table lacks columns {sorted(missing) or ['kept <layer>']}.")
    i = int(np.abs(sweep["threshold"].to_numpy() - float(threshold)).argmin())
    row = sweep.iloc[i]
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDGET_WIDTH, 3.6), layout="constrained")
    left.bar(range(len(kept_columns)), [row[c] for c in kept_columns])
    left.set_xticks(range(len(kept_columns)), [c.removeprefix("kept ") for c in kept_columns], rotation=30, fontsize=FONT)
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.set(ylabel="kept rank", title=f"log α ≤ {row['threshold']:g}: {int(row['adapter numbers']):,} adapter numbers")
    right.plot(sweep["threshold"], sweep["test acc"], "o-", label="test accuracy")
    right.plot([row["threshold"]], [row["test acc"]], "o", color="k", ms=9)
    twin = right.twinx()
    twin.plot(sweep["threshold"], sweep["test ECE"], "s--", color="tab:orange", label="test ECE")
    twin.set_ylabel("ECE (dashed)")
    right.axvline(row["threshold"], color="k", lw=1)
    right.set(xlabel="log α threshold (components with log α above it are pruned)", ylabel="accuracy")
    title_and_legend(right, "Accuracy and calibration after pruning",
                     right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0])
    return fig


def threshold_widget(sweep):
    """A log α threshold slider over the precomputed ``sweep`` rows that redraws ``plot_threshold_sweep``."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from .lrvd import THRESHOLD

    thresholds = [float(t) for t in sweep["threshold"]]
    if not thresholds:
        raise ValueError("the sweep table is empty.")

    def show(threshold):
        plot_threshold_sweep(sweep, threshold)
        plt.show()

    slider = widgets.SelectionSlider(options=[(f"{t:g}", t) for t in thresholds],
                                     value=min(thresholds, key=lambda t: abs(t - THRESHOLD)), description="log α ≤",
                                     continuous_update=True, layout=widgets.Layout(width="60%"))
    return widgets.interactive(show, threshold=slider)


from .viz_posterior import PosteriorExplorer, plot_posterior_explorer, posterior_widget  # noqa: E402,F401
