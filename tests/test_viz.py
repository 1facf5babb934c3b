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


def _explorer(G=51, with_plane=True):
    ts = np.linspace(0, 1, G)
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(G, 3, 1))
    probs = np.concatenate([p, 1 - p], axis=2)
    path = {"t": np.linspace(0, 1, 11), "nll": {"train": np.linspace(0.3, 0.4, 11), "test": np.full(11, 0.5)},
            "acc": {"test": np.full(11, 0.8)}}
    plane = {"xs": np.arange(4.0), "ys": np.arange(3.0), "loss": rng.uniform(size=(3, 4)),
             "curve_xy": np.stack([3 * ts, 2 * ts * (1 - ts)], 1), "anchors_xy": [[0, 0], [3, 0]]} if with_plane else None
    return viz.CurveExplorer(ts, probs, ["a", "b", "ood"], ["negative", "positive"], path, plane)


def test_curve_explorer_marks_the_grid_point_nearest_t():
    explorer = _explorer()
    fig = viz.plot_curve_explorer(explorer, 0.31)  # nearest grid point: 0.30 (index 15)
    titled = {ax.get_title().split(",")[0]: ax for ax in fig.axes if ax.get_title()}
    along, plane_ax, bars = titled["Along the curve"], titled["θ(t) in the plane of the optima"], titled["Predictive distribution at θ(t)"]
    markers = [line for line in along.lines if line.get_marker() == "o"]
    assert [m.get_xdata()[0] for m in markers] == [pytest.approx(0.3)] * 2
    assert markers[0].get_ydata()[0] == pytest.approx(0.3 + 0.1 * 0.3), "marker sits on the train loss at t"
    red = [line for line in plane_ax.lines if line.get_marker() == "o"][0]
    assert (red.get_xdata()[0], red.get_ydata()[0]) == pytest.approx((0.9, 2 * 0.3 * 0.7))
    widths = np.array([patch.get_width() for patch in bars.patches]).reshape(2, 3)  # class-major, as drawn
    np.testing.assert_allclose(widths.T, explorer.probs[15])
    assert [t.get_text() for t in bars.get_yticklabels()] == ["a", "b", "ood"]


def test_curve_explorer_without_plane_and_bad_input():
    fig = viz.plot_curve_explorer(_explorer(with_plane=False), 1.0)
    assert sorted(ax.get_title().split(",")[0] for ax in fig.axes if ax.get_title()) == ["Along the curve", "Predictive distribution at θ(t)"]
    with pytest.raises(ValueError, match="t must lie"):
        _explorer().index(1.5)
    good = _explorer()
    with pytest.raises(ValueError, match="shape"):
        viz.CurveExplorer(good.ts, good.probs[:, :2], good.reviews, good.class_names, good.path)
    with pytest.raises(ValueError, match="increase"):
        viz.CurveExplorer(good.ts[::-1], good.probs, good.reviews, good.class_names, good.path)


def test_curve_widget_redraws_on_the_slider():
    widget = viz.curve_widget(_explorer())
    slider = widget.children[0]
    assert len(slider.options) == 51
    slider.value = 1.0  # must not raise


def test_reliability_diagram_points_are_bin_means():
    import torch

    probs = torch.tensor([[0.9, 0.1], [0.09, 0.91], [0.25, 0.75], [0.45, 0.55]])
    labels = torch.tensor([0, 0, 1, 0])
    fig = viz.reliability_diagram({"m": (probs, labels)})
    ax = fig.axes[0]
    line = [l for l in ax.lines if l.get_label() == "m"][0]
    # bins of width 1/15: {0.55}, {0.75}, {0.9, 0.91} -> accuracies 0, 1, 1/2
    np.testing.assert_allclose(line.get_xdata(), [0.55, 0.75, 0.905])
    np.testing.assert_allclose(line.get_ydata(), [0.0, 1.0, 0.5])
    with pytest.raises(ValueError):
        viz.reliability_diagram({})


def test_mi_histograms_one_step_histogram_per_set():
    fig = viz.mi_histograms({"RT test": [0.0, 0.01, 0.02], "drug reviews": [0.05, 0.1]})
    ax = fig.axes[0]
    assert len(ax.patches) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["RT test (mean 0.010)", "drug reviews (mean 0.075)"]


def test_threshold_sweep_shows_the_nearest_row():
    sweep = pd.DataFrame({"threshold": [1.0, 2.0, 3.0], "adapter numbers": [100, 200, 300], "test acc": [0.7, 0.75, 0.8],
                          "test ECE": [0.05, 0.04, 0.03], "kept 3.query": [1, 2, 3], "kept 3.value": [0, 1, 2]})
    fig = viz.plot_threshold_sweep(sweep, 2.2)
    left, right = fig.axes[0], fig.axes[1]
    assert [p.get_height() for p in left.patches] == [2, 1]
    assert "200 adapter numbers" in left.get_title() and "2" in left.get_title()
    marker = [line for line in right.lines if line.get_marker() == "o" and len(line.get_xdata()) == 1][0]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (2.0, 0.75)
    with pytest.raises(KeyError, match="kept"):
        viz.plot_threshold_sweep(sweep.drop(columns=["kept 3.query", "kept 3.value"]), 1.0)


def test_threshold_widget_starts_at_the_default_threshold_and_redraws():
    import matplotlib.pyplot as plt

    sweep = pd.DataFrame({"threshold": [1.0, 2.0, 3.0, 4.0], "adapter numbers": [100, 200, 300, 400],
                          "test acc": [0.7, 0.75, 0.8, 0.8], "test ECE": [0.05, 0.04, 0.03, 0.03], "kept 3.query": [1, 2, 3, 4]})
    widget = viz.threshold_widget(sweep)
    slider = widget.children[0]
    assert slider.value == 3.0 and len(slider.options) == 4
    slider.value = 1.0  # must redraw without raising
    plt.close("all")
    with pytest.raises(ValueError, match="empty"):
        viz.threshold_widget(sweep.iloc[:0])


def _points_explorer():
    import torch

    torch.manual_seed(0)
    points = {"curve": torch.rand(5, 3, 2).softmax(-1), "curve + JSD": torch.rand(5, 3, 2).softmax(-1)}
    return viz.PointsExplorer(points, ["a", "b", "c"], [1, 2, 3, 5],
                              {"curve": {"RT test": [0.0, 0.01, 0.02, 0.02]}, "curve + JSD": {"RT test": [0.0, 0.02, 0.03, 0.03]}})


def test_points_explorer_bars_are_the_average_of_the_chosen_points():
    import torch

    from minibayeslora import metrics

    explorer = _points_explorer()
    fig = viz.plot_points_explorer(explorer, 3)
    left = fig.axes[0]
    dots, bars = left.collections[0], left.collections[1]          # the first method's points and p̄
    chosen = explorer.points["curve"][[0, 2, 4]]                    # t = 0, 0.5, 1 of the 5-point grid
    np.testing.assert_allclose(dots.get_offsets()[:, 0], chosen[..., 1].flatten().numpy(), rtol=1e-6)
    np.testing.assert_allclose(bars.get_offsets()[:, 0], chosen.mean(0)[:, 1].numpy(), rtol=1e-6)
    mi = metrics.mutual_information(chosen)
    assert [t.get_text() for t in left.texts[:3]] == [f"MI {m:.3f}" for m in mi.tolist()]
    with pytest.raises(ValueError, match="k − 1 must divide"):
        viz.PointsExplorer(explorer.points, explorer.names, [4], {})
    with pytest.raises(ValueError, match="one value per k"):
        viz.PointsExplorer(explorer.points, explorer.names, [1, 2], {"curve": {"RT test": [0.0]}})
    with pytest.raises(ValueError, match=r"\(T, 2, C\)"):
        viz.PointsExplorer(explorer.points, ["a", "b"], [1], {})


def test_points_widget_starts_at_the_most_points_and_redraws():
    import matplotlib.pyplot as plt

    widget = viz.points_widget(_points_explorer())
    slider = widget.children[0]
    assert slider.value == 5 and len(slider.options) == 4
    slider.value = 1  # must redraw without raising
    plt.close("all")


def _posterior_explorer():
    import torch

    g = torch.Generator().manual_seed(0)
    draws = {m: torch.rand(3, 8, 4, 2, generator=g).softmax(-1) for m in ("BLoB", "BaLoRA")}
    return viz.PosteriorExplorer(draws, [0.0, 1.0, 2.0], ["a", "b", "c", "d"], [1, 2, 4, 8], kinds=["ID", "ID", "OOD", "OOD"])


def test_posterior_explorer_shows_the_first_s_draws_their_mean_and_mi():
    from minibayeslora import metrics

    explorer = _posterior_explorer()
    fig = viz.plot_posterior_explorer(explorer, 4, 2.0)
    left, right = fig.axes[:2]
    dots, bars = left.collections[0], left.collections[1]                # the first method: draws and p̄
    chosen = explorer.draws["BLoB"][2, :4]                               # scale 2.0, first 4 draws
    np.testing.assert_allclose(dots.get_offsets()[:, 0], chosen[..., 1].flatten().numpy(), rtol=1e-6)
    np.testing.assert_allclose(bars.get_offsets()[:, 0], chosen.mean(0)[:, 1].numpy(), rtol=1e-6)
    labels = [t.get_text() for t in left.texts[:4]]
    assert labels == [f"MI {m:.4f}" for m in metrics.mutual_information(chosen).tolist()]
    assert all(t.get_position()[0] > 1.0 for t in left.texts), "MI labels sit right of the axes, never under the dots"
    id_line = right.lines[0]                                              # BLoB, ID reviews, one point per scale
    expected = [metrics.mutual_information(explorer.draws["BLoB"][i, :4][:, :2]).mean().item() for i in range(3)]
    np.testing.assert_allclose(id_line.get_ydata(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="every S"):
        viz.PosteriorExplorer(explorer.draws, explorer.scales, explorer.names, [16])
    with pytest.raises(ValueError, match="draws must be"):
        viz.PosteriorExplorer(explorer.draws, [0.0, 1.0], explorer.names, [1])
    with pytest.raises(ValueError, match="increasing"):
        viz.PosteriorExplorer(explorer.draws, [1.0, 0.0, 2.0], explorer.names, [1])


def test_posterior_widget_starts_at_the_largest_s_and_scale_one():
    import matplotlib.pyplot as plt

    widget = viz.posterior_widget(_posterior_explorer())
    sizes, scales = widget.children[:2]
    assert sizes.value == 8 and scales.value == 1.0
    sizes.value, scales.value = 1, 0.0      # must redraw without raising
    plt.close("all")


def _sweep():
    return pd.DataFrame({"threshold": [1.0, 2.0, 3.0], "adapter numbers": [100, 200, 300], "test acc": [0.7, 0.75, 0.8],
                         "test ECE": [0.05, 0.04, 0.03], "kept 3.query": [1, 2, 3], "kept 3.value": [0, 1, 2]})


def _plot_pair(view):
    import torch

    from minibayeslora import viz_compare

    labels = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(1))
    return viz_compare.plot_method_pair(_pair_predictions(), labels, "MAP", "BLoB", view)


WIDGET_FIGURES = {
    "nb03 curve": lambda: viz.plot_curve_explorer(_explorer(), 0.5),
    "nb03 curve, no plane": lambda: viz.plot_curve_explorer(_explorer(with_plane=False), 0.5),
    "nb04 points": lambda: viz.plot_points_explorer(_points_explorer(), 1),
    "nb05 threshold": lambda: viz.plot_threshold_sweep(_sweep(), 2.0),
    "nb06 posterior": lambda: viz.plot_posterior_explorer(_posterior_explorer(), 4, 1.0),
    "nb07 pair, reliability": lambda: _plot_pair("reliability"),
    "nb07 pair, entropy": lambda: _plot_pair("entropy"),
}


@pytest.mark.parametrize("name", list(WIDGET_FIGURES))
def test_widget_figures_are_readable_on_a_laptop_screen(name):
    """At the notebook's 100 dpi a widget figure is at most 1,100 px wide (a 1366 × 768 screen shows it unshrunk)
    and no text in it is smaller than 9 pt."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    fig = WIDGET_FIGURES[name]()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")   # what the inline backend shows
    width = Image.open(buffer).size[0]
    sizes = {t.get_text(): t.get_fontsize() for t in fig.findobj(plt.Text) if t.get_text().strip()}
    plt.close(fig)
    assert width <= 1100, f"{name}: {width} px wide"
    small = {text: size for text, size in sizes.items() if size < 9}
    assert not small, f"{name}: texts below 9 pt: {small}"


def test_points_explorer_legend_and_labels_stay_clear_of_the_data():
    import matplotlib.pyplot as plt

    fig = viz.plot_points_explorer(_points_explorer(), 1)
    left = fig.axes[0]
    fig.canvas.draw()
    assert left.get_title() == "k = 1 curve point"
    assert all(t.get_position()[0] > 1.0 for t in left.texts), "MI labels sit right of the axes, never under the dots"
    legend_box = left.get_legend().get_window_extent()
    assert legend_box.y0 >= left.get_window_extent().y1 - 1, "the legend sits above the axes, off the data"
    plt.close(fig)


def test_threshold_sweep_right_panel_has_a_legend_for_both_axes():
    fig = viz.plot_threshold_sweep(_sweep(), 2.0)
    legends = [ax.get_legend() for ax in fig.axes[1:] if ax.get_legend() is not None]      # the right panel and its twin
    labels = [t.get_text() for t in legends[0].get_texts()]
    assert labels == ["test accuracy", "test ECE"]


@pytest.mark.parametrize("name", list(WIDGET_FIGURES))
def test_widget_legends_never_cover_data(name):
    """A widget redraws with new data at every slider position, so no legend may sit where data can be drawn:
    every legend's box lies outside every data area (the axes, colorbars aside) of the figure."""
    import matplotlib.pyplot as plt

    fig = WIDGET_FIGURES[name]()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    areas = [ax.get_window_extent(renderer) for ax in fig.axes if not hasattr(ax, "_colorbar")]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends, f"{name}: no legend"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        covered = [area for area in areas if box.x0 < area.x1 - 1 and box.x1 > area.x0 + 1
                   and box.y0 < area.y1 - 1 and box.y1 > area.y0 + 1]
        assert not covered, f"{name}: the legend {[t.get_text() for t in legend.get_texts()]} lies over a data area"
    plt.close(fig)


def _pair_predictions():
    import torch

    g = torch.Generator().manual_seed(0)
    draws = lambda s, n: (2 * torch.randn(s, n, 2, generator=g)).softmax(-1)   # noqa: E731
    return {"MAP": {"test": draws(1, 40), "ood": draws(1, 20)}, "BLoB": {"test": draws(4, 40), "ood": draws(4, 20)}}


def test_method_pair_shows_each_methods_own_numbers():
    import matplotlib.pyplot as plt
    import torch

    from minibayeslora import metrics, viz_compare

    predictions = _pair_predictions()
    labels = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(1))
    fig = viz_compare.plot_method_pair(predictions, labels, "MAP", "BLoB")
    ece = metrics.ece(predictions["BLoB"]["test"].mean(0).double(), labels)
    assert f"ECE {ece:.3f}" in fig.axes[1].get_title() and "S = 4" in fig.axes[1].get_title()
    fig = viz_compare.plot_method_pair(predictions, labels, "MAP", "BLoB", "mutual information", draws=2)
    mi = metrics.mutual_information(predictions["BLoB"]["test"][:2]).numpy()
    ood_mi = metrics.mutual_information(predictions["BLoB"]["ood"][:2]).numpy()
    assert f"OOD AUROC {metrics.auroc(mi, ood_mi):.3f}" in fig.axes[1].get_title()
    assert "S = 2" in fig.axes[1].get_title() and "S = 1" in fig.axes[0].get_title()
    with pytest.raises(KeyError, match="no predictions for"):
        viz_compare.plot_method_pair(predictions, labels, "MAP", "Laplace")
    with pytest.raises(ValueError, match="view must be"):
        viz_compare.plot_method_pair(predictions, labels, "MAP", "BLoB", "variance")
    plt.close("all")


def test_method_pair_widget_starts_at_every_draw_and_redraws():
    import matplotlib.pyplot as plt
    import torch

    from minibayeslora import viz_compare

    widget = viz_compare.method_pair_widget(_pair_predictions(), torch.zeros(40, dtype=torch.long), "MAP", "BLoB")
    first, second, view, draws = widget.children[:4]
    assert (first.value, second.value, view.value, draws.value, draws.max) == ("MAP", "BLoB", "reliability", 4, 4)
    view.value, draws.value = "entropy", 1      # must redraw without raising
    plt.close("all")
