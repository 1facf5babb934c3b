"""A static HTML site of the executed notebooks: one page per notebook, the README's course map as index.

    python -m minibayeslora.site build/notebooks build/site      # what `make site` runs

Pages are nbconvert's HTML export (the JupyterLab template). A widget needs a running kernel to redraw,
so the site shows each widget as the figure it drew when the notebook ran, at the slider's default
position, with a caption saying so; the widget state (which would draw a slider that moves nothing)
is left out. Links between notebooks become links between pages; a link to any other file of the
repository (an exercise notebook, INSTRUCTORS.md) points to it on GitHub. ``broken_links`` checks every
relative link and ``#anchor`` of the built site.
"""
from __future__ import annotations

import argparse
import html
import re
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPOSITORY = "https://github.com/minibayeslora/minibayeslora/blob/main/"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


# ---- widgets -> their last figure -----------------------------------------------------------------------


def _reachable(state: dict, model_id: str) -> list[dict]:
    """Every widget model under ``model_id`` (itself first, then its children depth-first)."""
    found, stack, seen = [], [model_id], set()
    while stack:
        key = stack.pop(0)
        if key in seen or key not in state:
            continue
        seen.add(key)
        model = state[key]
        found.append(model)
        children = model["state"].get("children", [])
        stack[:0] = [c.removeprefix("IPY_MODEL_") for c in children if isinstance(c, str)]
    return found


def _slider_positions(models: list[dict]) -> str:
    """'t = 0.50, points k = 5' from the selection sliders' descriptions and selected labels."""
    parts = []
    for model in models:
        s = model["state"]
        labels = s.get("_options_labels")
        if labels and isinstance(s.get("index"), int) and 0 <= s["index"] < len(labels):
            name = (s.get("description") or "value").strip()
            parts.append(f"{name}{' ' if name[-1] in '≤≥<>=' else ' = '}{labels[s['index']]}")   # "log α ≤ 3", "t = 0.50"
    return ", ".join(parts)


def freeze_widgets(nb) -> int:
    """Replace each widget output of ``nb`` (an nbformat notebook, changed in place) by the outputs its
    ``Output`` widgets held when the notebook was saved, under a caption; drop the widget state.

    Returns the number of widgets replaced. A widget whose state was not saved keeps a one-line note.
    """
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW) if output.get("output_type") in ("display_data", "execute_result") else None
            if view is None:
                outputs.append(output)
                continue
            models = _reachable(state, view["model_id"])
            shown = [o for m in models if m.get("model_name") == "OutputModel" for o in m["state"].get("outputs", [])]
            where = _slider_positions(models)
            caption = ("<p><em>Interactive in JupyterLab or Colab: run the notebook to move the slider. "
                       + (f"Shown here at {html.escape(where)}." if where else "Shown here as it was first drawn.")
                       + "</em></p>") if shown else "<p><em>A widget: run the notebook to see it.</em></p>"
            outputs.append({"output_type": "display_data", "metadata": {}, "data": {"text/html": caption}})
            outputs.extend(shown)
            replaced += 1
        cell["outputs"] = outputs
    nb.metadata.pop("widgets", None)
    return replaced


# ---- links --------------------------------------------------------------------------------------------


_LINK = re.compile(r'(\s(?:href|src)=")([^"]*)(")')


def _is_external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme or parts.netloc) or url.startswith("#") or url == ""


def rewrite_links(page: str, pages: set[str], repo_dir: str) -> str:
    """Point ``X.ipynb`` links at ``X.html`` when X is a page of the site, and every other relative link at
    the file in the repository on GitHub (``repo_dir`` is the page's source folder, e.g. ``notebooks/``)."""
    def fix(match: re.Match) -> str:
        url = html.unescape(match.group(2))
        if _is_external(url):
            return match.group(0)
        path, _, fragment = url.partition("#")
        name = Path(path).name
        if name.endswith(".ipynb") and name[: -len(".ipynb")] in pages:
            new = name[: -len(".ipynb")] + ".html" + (f"#{fragment}" if fragment else "")
        else:
            target = Path(repo_dir, path).as_posix()
            parts = []
            for part in target.split("/"):
                if part == "..":
                    parts = parts[:-1]
                elif part not in ("", "."):
                    parts.append(part)
            new = REPOSITORY + "/".join(parts) + (f"#{fragment}" if fragment else "")
        return match.group(1) + html.escape(new, quote=True) + match.group(3)
    return _LINK.sub(fix, page)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)
            if key in ("href", "src") and value is not None and not value.startswith("data:"):
                self.links.append(value)


def broken_links(site: Path) -> list[str]:
    """Every relative link or ``#anchor`` of the HTML files under ``site`` that has no target, as 'page: url'."""
    parsed = {}
    for page in sorted(site.glob("*.html")):
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        parsed[page.name] = parser
    broken = []
    for name, parser in parsed.items():
        for url in parser.links:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:
                continue
            target = unquote(parts.path) or name
            if target not in parsed and not (site / target).exists():
                broken.append(f"{name}: {url}")
            elif parts.fragment and target in parsed and not {parts.fragment, unquote(parts.fragment)} & parsed[target].ids:
                broken.append(f"{name}: {url} (no such anchor)")
    return broken


# ---- pages --------------------------------------------------------------------------------------------


def course_map(readme: str) -> str:
    """The README's title paragraph and its '## Course map' section, as markdown."""
    intro = readme.split("\n## ", 1)[0]
    match = re.search(r"^## Course map\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    if match is None:
        raise ValueError("the README has no '## Course map' section to make the site's index from.")
    return intro.strip() + "\n\n## Course map\n" + match.group(1).rstrip() + "\n"


def _export(nb, title: str) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def build_site(notebooks: Path, out: Path, readme: Path) -> dict:
    """Export every ``*.ipynb`` in ``notebooks`` to ``out/<name>.html`` and the course map to ``out/index.html``.

    Returns ``{"pages": [...], "widgets": n, "seconds": t}``.
    """
    import nbformat

    start = time.perf_counter()
    sources = sorted(notebooks.glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no executed notebooks in {notebooks}: run `make course` first (or pass the folder "
                                f"that holds them).")
    out.mkdir(parents=True, exist_ok=True)
    pages, widgets = {p.stem for p in sources}, 0
    for source in sources:
        nb = nbformat.read(source, as_version=4)
        widgets += freeze_widgets(nb)
        title = next((line.lstrip("# ").strip() for c in nb.cells if c.cell_type == "markdown"
                      for line in c.source.splitlines() if line.startswith("# ")), source.stem)
        (out / f"{source.stem}.html").write_text(rewrite_links(_export(nb, title), pages, "notebooks"), encoding="utf-8")
    index = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(course_map(readme.read_text(encoding="utf-8")))])
    (out / "index.html").write_text(rewrite_links(_export(index, "minibayeslora"), pages, ""), encoding="utf-8")
    return {"pages": sorted(p.name for p in out.glob("*.html")), "widgets": widgets,
            "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", type=Path, help="folder of executed notebooks (e.g. build/notebooks)")
    parser.add_argument("out", type=Path, help="folder for the HTML pages (e.g. build/site)")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="README whose course map is the index")
    args = parser.parse_args(argv)
    try:
        built = build_site(args.notebooks, args.out, args.readme)
    except (FileNotFoundError, ValueError) as error:
        print(error, file=sys.stderr)
        return 1
    expected = {f"{p.stem}.html" for p in args.notebooks.glob("*.ipynb")} | {"index.html"}
    missing = sorted(expected - set(built["pages"]))
    broken = broken_links(args.out)
    print(f"{len(built['pages'])} pages ({len(expected) - 1} notebooks + index), {built['widgets']} widgets shown as "
          f"figures, built in {built['seconds']:.1f} s: {args.out}/index.html")
    for problem in [f"missing page {m}" for m in missing] + [f"broken link {b}" for b in broken]:
        print(problem, file=sys.stderr)
    return 1 if missing or broken else 0


if __name__ == "__main__":
    sys.exit(main())
