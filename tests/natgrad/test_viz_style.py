"""What every figure shares: a colour per method, decades on log axes, bytes in SI units, titles
in words, and nothing drawn that is not in the data (no bar of 1 for a zero cost)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import plotly.colors
import plotly.graph_objects as go
import pytest
from PIL import Image

from natgrad.costs import human_bytes
from natgrad.viz import (
    COLORS,
    PREVIOUS,
    color_of,
    cost_figure,
    costs_figure,
    fisher_panels,
    hparams_text,
    layer_cost_figure,
    log_decades,
    loss_figure,
    rank_bars_figure,
    recolor,
    safeguard_trace_figure,
    traces_figure,
)
from natgrad.viz.preconditioners import training_figure
from natgrad.viz.race import race_figure, step_time_figure
from natgrad.viz.style import SPARE

ALIASES = [{"SGD", "SGD+momentum"}, {"Sophia", "Sophia-G"}, {"Muon", "torch.optim.Muon"},
           {"Shampoo", "exponent -1/4", "Shampoo -1/4"}, {"exponent -1/2", "Shampoo -1/2"},
           {"Adam", "power −1/2", "Adam / RMSprop"}, {"power −1 ", "diagonal Fisher"},
           {"natural gradient", "full natural gradient", "U V^T"}]


def _traj(loss, status="ok"):
    n = len(loss)
    return SimpleNamespace(step=list(range(n)), seconds=[0.01 * i for i in range(n)], loss=loss, status=status)


def test_methods_that_differ_have_different_colours_and_spares_are_nobodys():
    by_color: dict[str, set[str]] = {}
    for name, c in COLORS.items():
        by_color.setdefault(c, set()).add(name)
    for names in by_color.values():
        if len(names) > 1:
            assert names in ALIASES, f"{sorted(names)} share a colour but are different methods"
    assert not set(SPARE) & set(COLORS.values())


def test_one_name_has_one_colour_in_every_chart():
    trajs = {"K-FAC": _traj([1.0, 0.1]), "Adam": _traj([1.0, 0.5]), "layer 3": _traj([1.0, 0.7])}
    figs = [loss_figure(trajs), race_figure(trajs), recolor(loss_figure(trajs))]
    for fig in figs:
        for t in fig.data:
            if t.name in ("K-FAC", "Adam"):
                assert t.line.color == COLORS[t.name]
    bars = step_time_figure({"Adam": 3.0, "K-FAC": 9.0})
    assert list(bars.data[0].marker.color) == [COLORS["Adam"], COLORS["K-FAC"]]
    series = {"K-FAC": {m: [0.5, 0.6] for m in ("cosine with the natural gradient", "relative error (best step length)",
                                                "condition number of P(F + λI)")}}
    assert {t.line.color for t in training_figure([0, 1], series).data} == {COLORS["K-FAC"]}
    # the longest name that starts the label wins: AdamW is not Adam, a previous run keeps its method's colour
    assert color_of("AdamW (tuned)") == COLORS["AdamW"] != COLORS["Adam"]
    assert color_of(f"K-FAC {PREVIOUS}") == COLORS["K-FAC"]
    assert color_of("layer 2", 1) == SPARE[1]


def test_previous_runs_are_dashed():
    fig = loss_figure({"Adam": _traj([1.0, 0.5]), f"Adam {PREVIOUS}": _traj([1.0, 0.4])})
    assert [t.line.dash for t in fig.data] == ["solid", "dash"]


def test_log_axes_label_decades_only_when_they_span_a_decade():
    wide = loss_figure({"Adam": _traj([10.0, 1.0, 1e-3])})
    assert wide.layout.yaxis.dtick == 1 and wide.layout.yaxis.exponentformat == "power"
    narrow = loss_figure({"Adam": _traj([0.5, 0.3])})
    assert narrow.layout.yaxis.dtick is None  # a decade tick would leave the axis without a label
    # subplots: each log axis is judged by its own data
    fig = go.Figure([go.Scatter(x=[1, 2], y=[1e-6, 1.0]), go.Scatter(x=[1, 2], y=[0.2, 0.3], xaxis="x2", yaxis="y2")])
    fig.update_layout(yaxis=dict(type="log"), yaxis2=dict(type="log"), xaxis2=dict(anchor="y2"))
    log_decades(fig)
    assert fig.layout.yaxis.dtick == 1 and fig.layout.yaxis2.dtick is None


ROWS = [{"name": "exact Fisher block", "bytes": 4e10, "bytes_text": human_bytes(4e10), "invert": 9e15},
        {"name": "K-FAC (A and G)", "bytes": 1.6e10, "bytes_text": human_bytes(1.6e10), "invert": 4e12},
        {"name": "diagonal", "bytes": 4e9, "bytes_text": human_bytes(4e9), "invert": 0.0}]


def test_a_zero_cost_has_no_bar_and_says_zero():
    fig = cost_figure(ROWS, "invert", "FLOPs to invert")
    bar = fig.data[0]
    assert bar.y[2] is None and bar.text[2].startswith("0")
    assert all(v > 1 for v in bar.y[:2])
    # plotly writes no text for a missing bar: the label is drawn at the foot of the axis, inside its range
    (label,) = fig.layout.annotations
    assert (label.x, label.y, label.yref, label.text) == ("diagonal", 0, "y domain", "0 (none)")
    parts = layer_cost_figure([{"layer": "1", "statistics": 10.0, "inverses": 0.0, "apply": 5.0}])
    assert [t.y[0] for t in parts.data] == [10.0, None, 5.0]


def test_costs_side_by_side_keep_each_panels_axis():
    fig = costs_figure(ROWS, {"bytes": "memory", "invert": "FLOPs to invert"}, "one layer", axis_titles={"invert": "FLOPs"})
    assert fig.layout.title.text == "one layer"
    # the panels' titles, then the zero cost's label on the second panel's axes
    assert [a.text for a in fig.layout.annotations] == ["memory", "FLOPs to invert", "0 (none)"]
    assert (fig.layout.annotations[2].xref, fig.layout.annotations[2].yref) == ("x2", "y2 domain")
    alone = {v: cost_figure(ROWS, v, t, axis_title=a) for v, t, a in (("bytes", "memory", ""), ("invert", "FLOPs", "FLOPs"))}
    # the same bars and labels as each cost drawn alone, each on its own axes
    assert [(t.xaxis, t.yaxis) for t in fig.data] == [("x", "y"), ("x2", "y2")]
    assert list(fig.data[0].text) == list(alone["bytes"].data[0].text) == ["40 GB", "16 GB", "4 GB"]
    assert list(fig.data[1].y) == list(alone["invert"].data[0].y)
    assert list(fig.layout.yaxis.ticktext) == list(alone["bytes"].layout.yaxis.ticktext)  # SI bytes, not "10B"
    assert fig.layout.yaxis2.dtick == 1 and fig.layout.yaxis2.title.text == "FLOPs"
    assert fig.layout.yaxis.title.text == "memory"
    assert list(fig.layout.yaxis2.range) == list(alone["invert"].layout.yaxis.range)
    linear = costs_figure(ROWS, {"bytes": "memory", "invert": "FLOPs"}, "one layer", log=False)
    assert linear.layout.yaxis.title.text == "memory (GB)" and linear.layout.yaxis2.type != "log"


def test_byte_axes_use_the_tables_units():
    log = cost_figure(ROWS, "bytes", "memory")
    ticks = list(log.layout.yaxis.ticktext)
    assert "10 GB" in ticks and not any(re.fullmatch(r"[\d.]+B", t) for t in ticks)  # never "10B"
    assert list(log.data[0].text) == ["40 GB", "16 GB", "4 GB"]  # as human_bytes writes the table
    linear = cost_figure(ROWS, "bytes", "memory", log=False)
    assert linear.layout.yaxis.type != "log" and linear.layout.yaxis.title.text == "memory (GB)"
    assert list(linear.data[0].y) == pytest.approx([40.0, 16.0, 4.0])  # a 4x difference is 4x as tall
    ranks = rank_bars_figure({"statistics": [3e6, 1e6]}, "memory per rank", "memory", bytes_axis=True, level=2e6)
    assert ranks.layout.yaxis.title.text == "memory (MB)" and list(ranks.data[0].y) == [3.0, 1.0]
    assert ranks.layout.shapes[0].y0 == 2.0


def test_trace_panels_are_titled_in_words():
    traces = {k: [1.0, 0.5] for k in ("damping", "rho", "alpha", "step_norm")}
    fig = safeguard_trace_figure([1, 2], traces, {"rejected": [0, 1], "bound": [0, 0]}, log_y=("damping",))
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:2] == ["damping λ", "reduction ratio ρ = actual/predicted"]
    assert not {"rho", "alpha", "step_norm", "damping"} & set(titles)
    assert not any(t.name in ("rho", "alpha", "step_norm") for t in fig.data)


def _decode(source: str) -> np.ndarray:
    """The pixels of a ``data:image/png;base64,...`` image, decoded by Pillow (not by our encoder)."""
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source[len(prefix):]))).convert("RGB"))


def _rdbu_r(t: np.ndarray) -> np.ndarray:
    """RdBu_r at fractions ``t`` by linear interpolation between its published stops, in 0..255."""
    stops = [tuple(int(c) for c in re.findall(r"\d+", s)) for s in plotly.colors.sequential.RdBu_r]
    at = np.linspace(0, 1, len(stops))
    return np.stack([np.interp(t, at, [s[k] for s in stops]) for k in range(3)], axis=-1)


def test_heatmaps_have_axis_titles_named_layers_and_a_titled_colour_bar():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 12))
    m = a @ a.T
    figs = fisher_panels({"exact": m, "K-FAC": np.diag(np.diag(m))}, {"K-FAC": 0.25}, boundaries=[5, 9])
    assert len(figs) == 2
    for fig in figs:
        assert fig.layout.xaxis.title.text == "parameter index (column)"
        assert fig.layout.yaxis.title.text == "parameter index (row)"
        assert [t.split("<br>")[0] for t in fig.layout.xaxis.ticktext] == ["layer 1", "layer 2", "layer 3"]
        assert fig.layout.xaxis.ticktext[1].endswith("5–8")
        # one pixel per entry, row 0 at the top: the axes span the matrix's cells exactly
        assert tuple(fig.layout.xaxis.range) == (-0.5, 11.5) and tuple(fig.layout.yaxis.range) == (11.5, -0.5)
    assert "relative error 25.0%" in figs[1].layout.title.text
    # one colour bar for the pair (the scale is shared), on the last panel, titled in words
    assert len(figs[0].data) == 1 and len(figs[1].data) == 2
    bar = figs[1].data[1].marker
    assert bar.showscale and "entry" in bar.colorbar.title.text and (bar.cmin, bar.cmax) == (0, 254)
    # colours: 255 levels of the signed-log value sign(x) log10(1 + |x|/s), s = 1e-4 of the first matrix's
    # largest entry, on RdBu_r: a zero entry is the scale's middle (white), the largest its red end
    scale = float(np.abs(m).max()) * 1e-4
    zmax = max(np.log10(1 + np.abs(x) / scale).max() for x in (m, np.diag(np.diag(m))))
    for fig, shown in zip(figs, (m, np.diag(np.diag(m))), strict=True):
        image = fig.data[0]
        assert isinstance(image, go.Image) and "row %{y}, column %{x}" in image.hovertemplate
        pixels = _decode(image.source)
        assert pixels.shape == (12, 12, 3)
        signed_log = np.sign(shown) * np.log10(1 + np.abs(shown) / scale)
        expected = _rdbu_r((signed_log + zmax) / (2 * zmax))
        assert np.abs(pixels - expected).max() <= 3  # a level is at most 1/254 of the scale: < 3 of 255
    assert tuple(_decode(figs[1].data[0].source)[0, 1]) == tuple(np.rint(_rdbu_r(np.array(0.5))).astype(int))
    biggest = np.unravel_index(np.abs(m).argmax(), m.shape)
    assert tuple(_decode(figs[0].data[0].source)[biggest]) == (103, 0, 31)  # RdBu_r's last stop
    # an indexed-colour image (one byte a pixel, the 255 levels in its palette), not RGB's three bytes a pixel
    image = Image.open(io.BytesIO(base64.b64decode(figs[0].data[0].source.split(",", 1)[1])))
    assert image.mode == "P" and len(image.getpalette()) // 3 == 256  # 255 levels and grey for NaN / inf
    # rows run down the image and columns across it: an entry above the diagonal is drawn above it
    corner = np.zeros((3, 3))
    corner[0, 2] = 1.0
    pixels = _decode(fisher_panels({"upper": corner})[0].data[0].source)
    assert tuple(pixels[0, 2]) == (103, 0, 31) and tuple(pixels[2, 0]) == tuple(pixels[1, 1])
    # the colour bar's labels are entries' values: the largest tick maps back to a real magnitude
    level = max(bar.colorbar.tickvals)
    k = level / 254 * 2 * zmax - zmax
    assert float(bar.colorbar.ticktext[list(bar.colorbar.tickvals).index(level)]) == pytest.approx(
        scale * (10**k - 1), rel=0.05)


def test_benchmark_legends_are_words_not_dicts():
    text = hparams_text({"lr": 0.005879932287106993, "damping": 0.1, "betas": [0.965, 0.99], "fisher_type": "true"},
                        keys=("lr", "damping", "rho"))
    assert text == "learning rate 0.00588, damping λ 0.1"
    assert "{" not in hparams_text({"betas": [0.9, 0.99], "weight_decay": 0.1})


def test_every_figure_has_a_title_and_axis_titles():
    for fig in (loss_figure({"Adam": _traj([1.0, 0.5])}), cost_figure(ROWS, "bytes", "memory"),
                step_time_figure({"Adam": 1.0}), rank_bars_figure({"s": [1.0]}, "time", "seconds")):
        spec = json.loads(fig.to_json())["layout"]
        assert spec.get("title", {}).get("text")
        assert spec["xaxis"].get("title", {}).get("text") and spec["yaxis"].get("title", {}).get("text")


def test_figures_take_numpy_scalars_and_arrays():
    # numpy float32 traces were dropped (the 'rejected' marker then sat at 0 on a log axis), float32
    # hyper-parameters printed 17 digits, and numpy trajectories of a diverged run raised 'truth value ambiguous'
    from natgrad.viz import contour_paths_figure
    from natgrad.viz.race import race_figure

    f = safeguard_trace_figure([0, 1, 2], {"damping": np.array([1e-3, 2e-3, 4e-3], np.float32)}, {"rejected": [0, 1, 0]},
                               log_y=["damping"])
    assert list(f.data[0].y) == pytest.approx([1e-3, 2e-3, 4e-3], rel=1e-6)
    assert list(f.data[1].y) == pytest.approx([2e-3], rel=1e-6)
    assert hparams_text({"lr": np.float32(0.0012345), "betas": (np.float32(0.9), 0.999)}) == \
        "learning rate 0.00123, β (0.9, 0.999)"
    t = SimpleNamespace(step=np.arange(3), seconds=np.arange(3.0), loss=np.array([1.0, 2.0, np.nan]), status="diverged")
    for make in (loss_figure, race_figure):
        fig = make({"Adam": t})
        assert any(d.marker.symbol == "x" for d in fig.data)  # the divergence is marked
    xs = np.linspace(-1, 1, 5)
    fig = contour_paths_figure(xs, xs, np.add.outer(xs, xs) ** 2,
                               {"Adam": np.zeros((0, 2)), "SGD": np.array([[0.2, 0.3], [0.1, 0.1]])})
    start = next(d for d in fig.data if d.name == "start")  # the first path with points starts it
    assert (start.x[0], start.y[0]) == (0.2, 0.3)


def test_a_heatmap_draws_entries_that_are_not_finite_in_grey():
    # (a NaN took colour level 0, the most negative entry's colour; a NaN in the first matrix was a ValueError
    # 'cannot convert float NaN to integer')
    a = np.array([[1.0, np.nan], [np.inf, -1.0]])
    figs = fisher_panels({"first": a, "second": np.eye(2)})
    pixels = _decode(figs[0].data[0].source)
    assert tuple(pixels[0, 1]) == tuple(pixels[1, 0]) == (128, 128, 128)
    assert tuple(pixels[0, 0]) == (103, 0, 31)  # the finite entries keep their scale: 1 is the largest
    assert "grey: not a finite number" in figs[0].layout.title.text
    assert "grey" not in figs[1].layout.title.text
    with pytest.raises(ValueError, match="2-D and not empty"):
        fisher_panels({"empty": np.zeros((0, 0))})


def _log_axis_values(fig):
    """Every y value that a trace of ``fig`` puts on a log axis."""
    out = []
    for t in fig.data:
        axis = fig.layout["yaxis" + (t.yaxis or "y")[1:]]
        if axis.type == "log" and t.y is not None:
            out += [v for v in t.y if v is not None]
    return out


def test_log_axes_get_no_value_they_cannot_draw():
    # plotly.js draws a value <= 0 far below a log axis: a line dived off the plot to each zero
    from natgrad.viz.preconditioners import METRICS, singular_values_figure, spectrum_figure, training_figure

    figs = [traces_figure([0, 1, 2], {"damping": [0.0, -1.0, 1.0]}, log_y=["damping"]),
            layer_cost_figure([{"layer": "1", "statistics": -3, "inverses": math.nan, "apply": 5}]),
            singular_values_figure({"Muon": [1.0, 1.0, 0.0, 0.0]}),  # a rank-deficient matrix
            training_figure([0, 1], {"Adam": {m: [0.1, 0.0] for m in METRICS}}, losses=[0.0, math.nan]),
            spectrum_figure({"Adam": SimpleNamespace(eigenvalues=[-1e-3, 0.0, 1.0, 2.0])}),
            loss_figure({"a": SimpleNamespace(step=[0, 1], seconds=[0.1, 0.2], loss=[0.0, 1.0], status="ok")})]
    for fig in figs:
        values = _log_axis_values(fig)
        assert values and all(math.isfinite(v) and v > 0 for v in values), fig.layout.title.text
    spectrum = figs[4].data[0].y
    assert list(spectrum) == [None, None, 1.0, 2.0]  # not 1e-16: no point that is not in the data
    # on a linear axis the same values stay (a zero trace is a line at 0)
    linear = traces_figure([0, 1, 2], {"rho": [0.0, -1.0, 1.0]})
    assert list(linear.data[0].y) == [0.0, -1.0, 1.0]


def test_a_log_axis_over_many_decades_keeps_about_a_dozen_ticks():
    # (1e-300 to 1e300 got a tick at each of 600 decades)
    for low, high, step in ((1e-3, 1e3, 1), (1e-6, 1e6, 1), (1e-30, 1e30, 5), (1e-300, 1e300, 50)):
        fig = go.Figure(go.Scatter(x=[0, 1], y=[low, high]))
        fig.update_yaxes(type="log")
        assert log_decades(fig).layout.yaxis.dtick == step


def test_rank_bars_need_one_value_per_rank_in_every_part():
    # (parts of different lengths lost their extra values without a word)
    with pytest.raises(ValueError, match="one value per rank"):
        rank_bars_figure({"statistics": [1.0, 2.0], "roots": [1.0]}, "memory", "bytes")


def test_long_titles_are_broken_into_lines_plotly_can_show_on_a_phone():
    from natgrad.viz.style import wrap_title

    title = "digits autoencoder (64-128-64-32-8-32-64-128-64)"
    assert wrap_title(title) == "digits autoencoder<br>(64-128-64-32-8-32-64-128-64)"
    assert wrap_title("the race") == "the race"
    assert all(len(line) <= 36 for line in wrap_title("a b c " * 30).split("<br>"))


def test_contour_levels_go_to_the_browser_as_float32_unless_float32_cannot_hold_them():
    from natgrad.viz import contour_paths_figure

    xs = np.linspace(-1, 1, 7)
    z = np.add.outer(xs, xs) ** 2
    fig = contour_paths_figure(xs, xs, z, {})
    sent = json.loads(fig.to_json())["data"][0]["z"]
    assert sent["dtype"] == "f4"  # half the bytes of float64
    assert np.asarray(fig.data[0].z) == pytest.approx(np.log10(1 + z - z.min()), rel=1e-6)
    huge = contour_paths_figure(xs, xs, 1e200 * z, {}, log_levels=False)  # float32 would make these inf
    assert np.isfinite(np.asarray(huge.data[0].z)).all()
