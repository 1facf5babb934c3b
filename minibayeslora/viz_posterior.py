"""Notebook 06's widget: how the predictive distribution of a few reviews changes with S and the posterior scale.

``PosteriorExplorer`` holds precomputed draws; ``plot_posterior_explorer`` is the pure plotting
function (tested); ``posterior_widget`` is a thin ipywidgets layer over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PosteriorExplorer:
    """Draws of class probabilities for n chosen examples, per method and posterior scale.

    ``draws``: {method: (len(scales), S_max, n, C)}, the first S draws of a row being the S-sample
    predictive; ``scales``: the noise-scale multipliers (0 = the mean path's LoRA, 1 = as trained);
    ``names``: labels of the n examples; ``sizes``: the sample counts S offered (each ≤ S_max);
    ``kinds``: optional group of each example (e.g. "RT test", "OOD") for the right panel's mean MI.
    """

    draws: dict
    scales: list
    names: list
    sizes: list
    kinds: list | None = None

    def __post_init__(self):
        if not self.draws:
            raise ValueError("no methods to show.")
        for method, d in self.draws.items():
            if d.dim() != 4 or d.shape[0] != len(self.scales) or d.shape[2] != len(self.names):
                raise ValueError(f"{method}: draws must be ({len(self.scales)}, S_max, {len(self.names)}, C), got {tuple(d.shape)}.")
            if max(self.sizes) > d.shape[1] or min(self.sizes) < 1:
                raise ValueError(f"{method}: every S must be in 1..{d.shape[1]}, got {self.sizes}.")
        if list(self.scales) != sorted(self.scales):
            raise ValueError(f"scales must be increasing, got {self.scales}.")
        if self.kinds is not None and len(self.kinds) != len(self.names):
            raise ValueError("kinds needs one entry per example.")

    def chosen(self, method: str, S: int, scale: float):
        """(S, n, C): the first S draws at the scale nearest ``scale``."""
        i = int(np.abs(np.asarray(self.scales, dtype=float) - float(scale)).argmin())
        return self.draws[method][i, :S]


def plot_posterior_explorer(explorer: PosteriorExplorer, S: int, scale: float):
    """Left: p(class 1) of each chosen example under S posterior draws (dots) and their mean p̄ (bar), one row per
    example and method, with the MI per row in a column right of the axes. Right: mean MI of each group of
    examples against the posterior scale, at this S, the current scale marked."""
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    from .metrics import mutual_information
    from .viz import FONT, WIDGET_WIDTH, style_key, title_and_legend

    n, methods = len(explorer.names), list(explorer.draws)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offsets = np.linspace(-0.25, 0.25, len(methods)) if len(methods) > 1 else [0.0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDGET_WIDTH, 1.4 + 0.5 * n * max(1, len(methods) / 2)), layout="constrained",
                                      gridspec_kw={"width_ratios": [3, 2]})
    label_at = blended_transform_factory(left.transAxes, left.transData)
    for j, method in enumerate(methods):
        chosen = explorer.chosen(method, S, scale)                                       # (S, n, C)
        p_bar, mi = chosen.mean(0)[:, 1], mutual_information(chosen)
        y = np.arange(n) + offsets[j]
        color = colors[j % len(colors)]
        left.scatter(chosen[..., 1].flatten(), np.tile(y, len(chosen)), s=12, alpha=0.4, color=color)
        left.scatter(p_bar, y, marker="|", s=250, linewidths=2, color=color, label=method)
        for yi, m in zip(y, mi.tolist()):
            left.text(1.01, yi, f"MI {m:.4f}", transform=label_at, fontsize=FONT, va="center", color=color)
    left.axvline(0.5, color="k", lw=0.5, ls=":")
    left.set_yticks(range(n), explorer.names, fontsize=FONT)
    left.invert_yaxis()
    left.set(xlim=(0, 1), xlabel="p(positive): dots = posterior draws, bar = p̄")
    title_and_legend(left, f"S = {S} draws at {explorer.scales[int(np.abs(np.asarray(explorer.scales) - scale).argmin())]:g}× "
                           "the posterior's noise", ncol=min(3, len(methods)), markerscale=0.5)
    kinds = explorer.kinds or ["chosen"] * n
    styles = ["o-", "s--", "^:", "d-."]
    for j, method in enumerate(methods):
        for g, kind in enumerate(dict.fromkeys(kinds)):
            rows = [i for i, k in enumerate(kinds) if k == kind]
            curve = [mutual_information(explorer.draws[method][i, :S][:, rows]).mean().item() for i in range(len(explorer.scales))]
            right.plot(explorer.scales, curve, styles[g % len(styles)], color=colors[j % len(colors)], label=f"{method}, {kind}")
    right.axvline(scale, color="k", lw=1)
    right.set(xlabel="posterior noise scale (0 = LoRA, 1 = as trained)", ylabel="mean MI (nats)")
    right.set_ylim(bottom=0)
    title_and_legend(right, f"MI against the scale, S = {S}", style_key(methods, list(dict.fromkeys(kinds)), colors, styles))
    return fig


def posterior_widget(explorer: PosteriorExplorer):
    """Sliders over S and the posterior scale that redraw ``plot_posterior_explorer`` (needs ipywidgets)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(S, scale):
        plot_posterior_explorer(explorer, S, scale)
        plt.show()

    sizes = widgets.SelectionSlider(options=[(str(s), s) for s in explorer.sizes], value=explorer.sizes[-1], description="draws S",
                                    continuous_update=False, layout=widgets.Layout(width="50%"))
    one = min(explorer.scales, key=lambda s: abs(s - 1.0))
    scales = widgets.SelectionSlider(options=[(f"{s:g}", s) for s in explorer.scales], value=one, description="noise ×",
                                     continuous_update=False, layout=widgets.Layout(width="50%"))
    return widgets.interactive(show, S=sizes, scale=scales)
