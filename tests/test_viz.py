import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from minibayeslora import viz  # noqa: E402


def test_plot_rank_sweep_draws_the_table():
    table = pd.DataFrame({"r": [1, 2, 4], "test acc": [0.7, 0.75, 0.8], "train s": [10.0, 11.0, 12.5]})
    fig = viz.plot_rank_sweep(table)
    left, right = fig.axes
    np.testing.assert_allclose(left.lines[0].get_ydata(), table["test acc"])
    np.testing.assert_allclose(right.lines[0].get_xdata(), table["r"])
    assert right.get_ylim()[0] == 0
    with pytest.raises(KeyError, match="train s"):
        viz.plot_rank_sweep(table.drop(columns="train s"))


def test_plot_spectra_one_line_per_layer():
    fig = viz.plot_spectra({"encoder.layer.3.attention.self.query": [3.0, 1.0], "encoder.layer.3.attention.self.value": [2.0, 0.5]})
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["3.query", "3.value"]
    with pytest.raises(ValueError):
        viz.plot_spectra({})


def test_save_figure_only_when_asked(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    monkeypatch.delenv("MINIBAYESLORA_FIGURES", raising=False)
    assert viz.save_figure(fig, "x") is None
    monkeypatch.setenv("MINIBAYESLORA_FIGURES", str(tmp_path / "figs"))
    assert viz.save_figure(fig, "x") == tmp_path / "figs" / "x.png" and (tmp_path / "figs" / "x.png").stat().st_size > 0
    with pytest.raises(ValueError):
        viz.save_figure(fig, "../escape")
