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
