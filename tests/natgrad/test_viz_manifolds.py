"""The Riemannian lesson's figures: edges drawn along Poincare geodesics (checked with the distance
formula), frames picked from run records, points where the methods land."""

from __future__ import annotations

import math

import numpy as np
import pytest

from natgrad.optim.riemannian import sphere_steps
from natgrad.viz import disk_frames, poincare_figure, recorded_points, sphere_figure, stiefel_figure


def _d(x, y):
    x, y = np.asarray(x), np.asarray(y)
    return math.acosh(1 + 2 * np.sum((x - y) ** 2) / ((1 - x @ x) * (1 - y @ y)))


def _segments(xs, ys):
    out, cur = [], []
    for a, b in zip(xs, ys, strict=True):
        if np.isnan(a):  # NaN ends an arc (a gap in the plotly line)
            out.append(np.array(cur))
            cur = []
        else:
            cur.append((a, b))
    return out


def test_edges_follow_poincare_geodesics_and_outside_points_are_marked():
    x = np.array([[0.1, -0.2], [0.6, 0.3], [-0.2, 0.7], [1.02, 0.1]])  # no edge through the centre: all curved
    fig = poincare_figure([(0, x * 0.5), (9, x)], ["r", "a", "b", "c"], [0, 1, 1, 2], [(1, 0), (2, 0), (3, 1)])
    arcs, broken, nodes, outside = fig.data
    segs = _segments(arcs.x, arcs.y)
    assert len(segs) == 2  # the edge to c has no geodesic: c is outside
    for seg, (a, b) in zip(segs, [(1, 0), (2, 0)], strict=True):
        np.testing.assert_allclose(seg[0], x[a], atol=1e-4)
        np.testing.assert_allclose(seg[-1], x[b], atol=1e-4)
        assert len(seg) >= 3
        mid = seg[len(seg) // 2]  # the middle one is halfway in hyperbolic distance
        assert _d(x[a], mid) == pytest.approx(_d(mid, x[b]), rel=1e-3)
        assert _d(x[a], mid) + _d(mid, x[b]) == pytest.approx(_d(x[a], x[b]), rel=1e-4)  # on the shortest path
    np.testing.assert_allclose(broken.x, [1.02, 0.6, np.nan], rtol=1e-6)  # float32 on the wire
    assert len(outside.x) == 1 and len(nodes.x) == 3
    assert [f.name for f in fig.frames] == ["0", "9"] and fig.layout.sliders[0].active == 1


def test_frames_come_from_the_records_and_skip_undefined_positions():
    extras = {"x0": [0.1, 0.2, 0.3, None], "y0": [0.0, 0.0, 0.1, None], "x1": [0.0, 0.5, 0.9, None],
              "y1": [0.0, 0.1, 0.2, None]}
    assert np.isnan(recorded_points(extras, ["x0"])[3, 0])
    frames = disk_frames([0, 1, 2, 3], extras, 2, frames=2)
    assert [s for s, _ in frames] == [0, 2]
    np.testing.assert_allclose(frames[-1][1], [[0.3, 0.1], [0.9, 0.2]])
    assert disk_frames([0], {"x0": [None], "y0": [None]}, 1) == []


def test_sphere_figure_marks_each_landing_on_the_unit_sphere():
    s = sphere_steps(10, 40, 30, 15, 2.0)
    fig = sphere_figure(s)
    for name, p in s.landings.items():
        (trace,) = [t for t in fig.data if t.name == name]
        np.testing.assert_allclose([trace.x[0], trace.y[0], trace.z[0]], p)
        assert math.isclose(np.linalg.norm(p), 1.0, abs_tol=1e-9)
    assert any(t.name.startswith("x + d: norm") for t in fig.data)


def test_stiefel_figure_draws_the_best_value():
    fig = stiefel_figure({"Riemannian SGD": ([0, 1], [1.0, 2.0], [1e-7, 2e-7])}, best=2.5)
    assert [s.y0 for s in fig.layout.shapes] == [2.5]
    assert fig.data[0].line.color == fig.data[1].line.color


def _distance_to_polyline(p: np.ndarray, line: np.ndarray) -> float:
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-300), 0, 1)
    return float(np.min(np.linalg.norm(a + t[:, None] * ab - p, axis=1)))


def test_arcs_keep_only_the_points_they_need_and_stay_on_the_geodesic():
    import geoopt
    import torch

    from natgrad.viz.manifolds import ARC_TOLERANCE

    x = np.array([[-0.7, 0.0], [0.7, 0.0],  # long, through the centre: a straight diameter
                  [0.0, -0.6], [0.6, 0.1],  # long and curved
                  [0.97, 0.2], [0.95, 0.26]])  # short, at the rim
    edges = [(0, 1), (2, 3), (4, 5)]
    fig = poincare_figure([(0, x)], list("abcdef"), [0] * 6, edges)
    segs = _segments(fig.data[0].x, fig.data[0].y)
    assert len(segs[0]) == 2  # a diameter is straight
    assert all(len(s) < 25 for s in segs)  # (25 computed per arc)
    ball = geoopt.PoincareBall().to(dtype=torch.float64)
    dense_t = torch.linspace(0, 1, 400, dtype=torch.float64)[:, None]
    for seg, (a, b) in zip(segs, edges, strict=True):
        np.testing.assert_allclose(seg[[0, -1]], x[[a, b]], atol=1e-4)
        xa, xb = torch.tensor(x[a]), torch.tensor(x[b])
        dense = ball.geodesic(dense_t, xa, xb).numpy()
        worst = max(_distance_to_polyline(p, seg.astype(float)) for p in dense)
        assert worst <= ARC_TOLERANCE + 2e-4  # (the drawn points are rounded to 4 decimals, then float32)
        if len(seg) >= 3:  # the middle point kept is halfway in hyperbolic distance
            mid = seg[len(seg) // 2]
            assert _d(x[a], mid) == pytest.approx(_d(mid, x[b]), rel=1e-3)
