"""Plot helpers shared by the notebooks.

``save_figure`` writes a figure to ``$MINIBAYESLORA_FIGURES`` (``make course`` points it at
``build/figures``); when the variable is unset it does nothing, so interactive runs leave no files.
"""

from __future__ import annotations

import os
from pathlib import Path


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
    import numpy as np

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
