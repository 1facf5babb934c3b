"""The static site: widgets become their saved figure, links between notebooks become links between pages,
every other relative link points to GitHub, and the link checker finds what is broken."""
import re
from pathlib import Path

import nbformat
import pytest

from minibayeslora import site

ROOT = Path(__file__).resolve().parents[1]

WIDGET_CELL = """import ipywidgets as widgets
import matplotlib.pyplot as plt

def show(t):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, t])
    plt.show()

widgets.interactive(show, t=widgets.SelectionSlider(options=[("one", 1), ("two", 2), ("three", 3)], value=2, description="t"))"""


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Two notebooks executed by nbclient (the engine of nbconvert and `make course`): a widget, and links."""
    from nbclient import NotebookClient
    from traitlets.config import Config

    folder = tmp_path_factory.mktemp("executed")
    widget = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A widget\n\n## Part one"),
                                             nbformat.v4.new_code_cell(WIDGET_CELL)])
    widget.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    config = Config()     # the kernel client make course uses: plain nbclient can hang on a widget cell (nbclient#312)
    config.AsyncKernelManager.client_class = "minibayeslora.notebook_run.SlicedKernelClient"
    NotebookClient(widget, timeout=120, kernel_name="python3", config=config).execute()
    nbformat.write(widget, folder / "01_widget.ipynb")
    links = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "# Links\n\nNext: [the widget](01_widget.ipynb#Part-one); the [exercises](../exercises/02_links_exercises.ipynb);"
        " [a paper](https://arxiv.org/abs/2106.09685).")])
    nbformat.write(links, folder / "02_links.ipynb")
    return folder


def test_a_widget_becomes_the_figure_it_drew(executed):
    nb = nbformat.read(executed / "01_widget.ipynb", as_version=4)
    assert site.WIDGET_STATE in nb.metadata["widgets"], "nbclient saved the widget state (the premise)"
    assert site.freeze_widgets(nb) == 1
    outputs = nb.cells[1].outputs
    assert not any(site.WIDGET_VIEW in o.get("data", {}) for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure drawn at the default position"
    caption = next(o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {}))
    assert "t = two" in caption, caption
    assert "widgets" not in nb.metadata, "no widget state: a slider that moves nothing would mislead"


def test_a_caption_reads_like_the_slider():
    state = {"s": {"model_name": "SelectionSliderModel", "state": {"description": "log α ≤", "_options_labels": ["2", "3"], "index": 1}},
             "t": {"model_name": "SelectionSliderModel", "state": {"description": "t", "_options_labels": ["0.50"], "index": 0}}}
    assert site._slider_positions([state["s"], state["t"]]) == "log α ≤ 3, t = 0.50"


def test_links_between_notebooks_stay_on_the_site_others_go_to_github():
    page = ('<a href="03_bezier_curves.ipynb#Part">x</a> <a href="../exercises/03_ex.ipynb">y</a> '
            '<a href="#local">z</a> <a href="https://arxiv.org">w</a> <img src="figures/a.png">')
    fixed = site.rewrite_links(page, {"03_bezier_curves"}, "notebooks")
    assert 'href="03_bezier_curves.html#Part"' in fixed
    assert f'href="{site.REPOSITORY}exercises/03_ex.ipynb"' in fixed
    assert f'src="{site.REPOSITORY}notebooks/figures/a.png"' in fixed
    assert 'href="#local"' in fixed and 'href="https://arxiv.org"' in fixed


def test_the_link_checker_finds_missing_pages_and_anchors(tmp_path):
    (tmp_path / "a.html").write_text('<h1 id="top">A</h1><a href="b.html#there">1</a><a href="#top">2</a>'
                                     '<a href="c.html">3</a><a href="b.html#nowhere">4</a><a href="https://x.org/y">5</a>')
    (tmp_path / "b.html").write_text('<h2 id="there">B</h2><a href="a.html#top">back</a>')
    assert site.broken_links(tmp_path) == ["a.html: c.html", "a.html: b.html#nowhere (no such anchor)"]


def test_the_index_links_every_notebook_of_the_course():
    index = site.course_map((ROOT / "README.md").read_text(encoding="utf-8"))
    linked = set(re.findall(r"\(notebooks/([^)#]+)\.ipynb\)", index))
    assert linked == {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}


def test_a_built_site_has_a_page_per_notebook_and_no_broken_link(executed, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# course\n\nIntro.\n\n## Course map\n\n| # | notebook |\n|---|---|\n"
                      "| 01 | [Widget](notebooks/01_widget.ipynb) |\n| 02 | [Links](notebooks/02_links.ipynb) |\n\n## Other\n")
    built = site.build_site(executed, tmp_path / "site", readme)
    assert built["pages"] == ["01_widget.html", "02_links.html", "index.html"] and built["widgets"] == 1
    assert site.broken_links(tmp_path / "site") == []
    links = (tmp_path / "site" / "02_links.html").read_text(encoding="utf-8")
    assert 'href="01_widget.html#Part-one"' in links
    assert "02_links_exercises.ipynb" in links and site.REPOSITORY in links
    assert 'href="01_widget.html"' in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert site.main([str(executed), str(tmp_path / "again"), "--readme", str(readme)]) == 0


def test_no_executed_notebooks_is_one_clear_sentence(tmp_path, capsys):
    assert site.main([str(tmp_path), str(tmp_path / "site"), "--readme", str(ROOT / "README.md")]) == 1
    assert "make course" in capsys.readouterr().err
