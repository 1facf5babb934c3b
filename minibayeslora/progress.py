"""Progress bars as plain text, the same in a terminal, a notebook, nbconvert and a saved notebook.

``progress_bar(iterable, desc=...)`` is tqdm's text bar written to stdout and redrawn in place
(carriage return) at most once a second. We do not use tqdm's notebook widget: a widget closed
when its loop ends (``leave=False``) leaves a reference in the saved notebook whose model is gone,
and JupyterLab shows "Error displaying widget: model not found" in its place after a reload; a
web page rendered from the notebook cannot show a widget at all. Text has neither problem.
"""

from __future__ import annotations

import sys

from tqdm.std import tqdm


def progress_bar(iterable=None, desc: str | None = None, total: int | None = None, disable: bool = False,
                 leave: bool = False, **kwargs) -> tqdm:
    """A text progress bar over ``iterable`` (see the module docstring); ``leave=False`` erases it when done."""
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=leave, file=sys.stdout,
                mininterval=1.0, ncols=100, **kwargs)
