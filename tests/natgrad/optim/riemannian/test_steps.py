"""Where the steps of the retraction lab land, against closed forms: on the unit sphere the exponential
map travels s, the projection (and QR, the same for one column) arctan s, Cayley 2 arctan(s/2); on the
simplex the retraction is p e^{u/p}/Z and the exponential map travels ||u||_p until a face."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from natgrad.optim.riemannian import SIMPLEX_METHODS, SPHERE_METHODS, simplex_steps, sphere_steps

EXP, PROJ, QR, CAYLEY = SPHERE_METHODS


@pytest.mark.parametrize(("lat", "lon", "heading"), [(0, 0, 90), (35, -70, 20), (-80, 150, 200)])
def test_sphere_landings_travel_the_closed_form_arcs(lat, lon, heading):
    s = sphere_steps(lat, lon, heading, tilt_deg=25, length=1.2)
    x, d, v = s.point, s.step, s.tangent
    assert np.linalg.norm(x) == pytest.approx(1) and abs(x @ v) < 1e-12
    assert np.linalg.norm(s.euclidean) > 1.2  # the Euclidean step leaves the sphere
    np.testing.assert_allclose(v, d - (x @ d) * x, atol=1e-12)
    for y in s.landings.values():
        assert np.linalg.norm(y) == pytest.approx(1)
    np.testing.assert_allclose(s.landings[QR], s.landings[PROJ], atol=1e-12)
    n = np.linalg.norm(v)
    arcs = {EXP: n, PROJ: np.arctan(n), CAYLEY: 2 * np.arctan(n / 2)}
    for name, arc in arcs.items():
        assert np.arccos(np.clip(x @ s.landings[name], -1, 1)) == pytest.approx(arc, abs=1e-9)
    # as the step grows (geoopt's Sphere.dist clamps the cosine at 1 - 1e-7: about 4.5e-4 near zero)
    sc = s.scales
    np.testing.assert_allclose(s.travelled[EXP][sc <= np.pi], sc[sc <= np.pi], atol=5e-4)
    np.testing.assert_allclose(s.travelled[PROJ], np.arctan(sc), atol=5e-4)
    np.testing.assert_allclose(s.travelled[CAYLEY], 2 * np.arctan(sc / 2), atol=5e-4)
    small = sc <= np.pi / 2
    np.testing.assert_allclose(s.apart[PROJ][small], (sc - np.arctan(sc))[small], atol=5e-4)
    assert s.geodesic[0] == pytest.approx(x) and s.geodesic[-1] == pytest.approx(s.landings[EXP])


def test_simplex_landings():
    p = np.array([0.6, 0.3, 0.1])
    s = simplex_steps(tuple(p), angle_deg=30, length=0.2)
    u = s.tangent
    assert abs(u.sum()) < 1e-15 and np.linalg.norm(u) == pytest.approx(0.2)
    np.testing.assert_allclose(s.euclidean, p + u)
    r = p * np.exp(u / p)
    np.testing.assert_allclose(s.landings[SIMPLEX_METHODS[1]], r / r.sum(), atol=1e-12)
    assert s.face_time > 1
    exp = s.landings[SIMPLEX_METHODS[0]]
    assert 2 * np.arccos(np.sqrt(p * exp).sum()) == pytest.approx(np.sqrt((u * u / p).sum()), abs=1e-9)
    assert s.fisher_length == pytest.approx(np.sqrt((u * u / p).sum()))
    # a long step: p + u has a negative coordinate, the geodesic meets a face and is reflected there
    long = simplex_steps(tuple(p), angle_deg=-90, length=0.5)
    assert (long.euclidean < 0).any() and long.face_time < 1
    for q in list(long.landings.values()) + list(long.geodesic):
        assert (q > 0).all() and abs(q.sum() - 1) < 1e-12
    assert long.apart[SIMPLEX_METHODS[1]][0] == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="three positive probabilities"):
        simplex_steps((0.5, 0.6, -0.1), 0, 0.1)


def test_short_steps_on_the_sphere_have_their_true_distances():
    # exp travels exactly s; the projection retraction lands at angle arctan(s), s - arctan(s) from the geodesic
    # (geoopt's Sphere.dist floored both at 4.5e-4: 10x too large at s = 0.05)
    from natgrad.optim.riemannian.steps import great_circle_distance

    s = sphere_steps(0, 0, 0, 0, 1.0, max_length=0.3, points=7)
    exp, proj = SPHERE_METHODS[0], SPHERE_METHODS[1]
    np.testing.assert_allclose(s.travelled[exp], s.scales, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s.apart[proj], s.scales - np.arctan(s.scales), rtol=1e-6, atol=1e-15)
    x, y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([-1.0, 1e-9, 0.0], dtype=torch.float64)
    assert float(great_circle_distance(x, y)) == pytest.approx(np.pi - 1e-9, abs=1e-15)  # and near antipodes
