"""Surface metrics on analytic surfaces whose every metric is known in closed form or by a hand count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmpi.report.metrics import DEFINITIONS, SurfaceMetrics, default_fit_radius, surface_metrics

AXIS = np.linspace(-1.0, 1.0, 41)  # step 0.05, holds 0


def bowl(p: float, q: float, h: float = 0.0, c: float = 0.3):
    """f(a, b) = c + p a² + q b² + h a b on AXIS x AXIS, as a (ny, nx) array."""
    a, b = np.meshgrid(AXIS, AXIS)
    return c + p * a**2 + q * b**2 + h * a * b


def test_quadratic_bowl_closed_forms():
    p, q, t, r = 3.0, 1.0, 0.2, 0.2
    m = surface_metrics(AXIS, AXIS, bowl(p, q), radius=r, threshold=t)
    assert m.centre == (0.0, 0.0)
    assert m.centre_loss == pytest.approx(0.3) and m.min_loss == pytest.approx(0.3) and m.min_at == (0.0, 0.0)
    # max of p a² + q b² over the disk of radius r is p r² (p > q), reached at (±r, 0), a grid point
    assert m.sharpness == pytest.approx(p * r**2, rel=1e-12)
    # points within 0.2 = 4 steps of the centre: i² + j² <= 16, counted by hand: 49
    assert m.points_in_radius == 49
    assert m.curvature == pytest.approx((2 * q, 2 * p), rel=1e-9)  # an exact quadratic fits exactly
    # on the lattice (0.05 i, 0.05 j): 3 i² + j² <= 80, which no lattice point meets with equality
    inside = sum(1 for i in range(-20, 21) for j in range(-20, 21) if 3 * i * i + j * j <= 80)
    assert m.basin_share == pytest.approx(inside / AXIS.size**2)
    assert m.below_share == m.basin_share  # one convex region: all of it is connected
    assert m.basin_area == pytest.approx(inside * 0.05**2)
    assert m.basin_area == pytest.approx(math.pi * t / math.sqrt(p * q), rel=0.05)  # the ellipse's area
    assert m.done_share == 1.0 and math.isnan(m.convex_share)


def test_curvature_of_a_tilted_bowl_is_its_hessian_eigenvalues():
    p, q, h = 2.0, 1.0, 1.5
    m = surface_metrics(AXIS, AXIS, bowl(p, q, h) + 0.4 * np.meshgrid(AXIS, AXIS)[0], radius=0.3)
    expected = np.linalg.eigvalsh(np.array([[2 * p, h], [h, 2 * q]]))  # a linear term does not change it
    assert m.curvature == pytest.approx(tuple(expected), rel=1e-9)
    saddle = surface_metrics(AXIS, AXIS, bowl(1.0, -0.5), radius=0.3)
    assert saddle.curvature == pytest.approx((-1.0, 2.0), rel=1e-9)


def test_the_basin_is_the_connected_region_around_the_centre():
    """Two bowls: the minimiser's at the origin and a deeper one at (0.8, 0.8). Below the level both count for
    below_share; only the first is the basin."""
    a, b = np.meshgrid(AXIS, AXIS)
    loss = np.minimum(0.3 + 4 * (a**2 + b**2), 0.1 + 4 * ((a - 0.8) ** 2 + (b - 0.8) ** 2))
    m = surface_metrics(AXIS, AXIS, loss, threshold=0.11)
    # level 0.41: 4·0.0025 (i² + j²) <= 0.11 around the origin, <= 0.31 around (16, 16): i² + j² <= 11 and <= 31,
    # neither a sum of two squares, so no lattice point sits on a boundary
    first = sum(1 for i in range(-20, 21) for j in range(-20, 21) if i * i + j * j <= 11)
    second = sum(1 for i in range(-20, 21) for j in range(-20, 21) if (i - 16) ** 2 + (j - 16) ** 2 <= 31)
    assert m.basin_share == pytest.approx(first / AXIS.size**2)
    assert m.below_share == pytest.approx((first + second) / AXIS.size**2)
    assert m.min_loss == pytest.approx(0.1) and m.min_at == pytest.approx((0.8, 0.8))


def test_one_dimensional_surfaces():
    x = np.linspace(-0.5, 1.5, 81)  # an interpolation grid, step 0.025
    k, t, r = 5.0, 0.06, 0.1  # the level 0.26 is reached at |α| = 0.1095, between grid points
    loss = 0.2 + k * x**2
    m = surface_metrics(x, None, loss, radius=r, threshold=t)
    assert m.centre == (0.0,) and m.centre_loss == pytest.approx(0.2)
    assert m.sharpness == pytest.approx(k * r**2)
    assert m.points_in_radius == 9
    assert m.curvature == pytest.approx((2 * k,), rel=1e-9)
    inside = 9  # α = -0.1 ... 0.1
    assert m.basin_share == pytest.approx(inside / 81) and m.basin_area == pytest.approx(inside * 0.025)


def test_undone_points_are_left_out():
    loss = bowl(3.0, 1.0)
    done = np.ones_like(loss, dtype=bool)
    done[:, 25:] = False  # the right part is not computed yet
    partial = np.where(done, loss, np.nan)
    m = surface_metrics(AXIS, AXIS, partial, done, radius=0.2, threshold=0.2)
    assert m.done_share == pytest.approx(25 / 41)
    assert m.sharpness == pytest.approx(3.0 * 0.04)  # (−0.2, 0) is still there
    inside = sum(1 for i, a in enumerate(AXIS) for b in AXIS if i < 25 and 3 * a * a + b * b <= 0.2 + 1e-12)
    assert m.basin_share == pytest.approx(inside / (25 * 41))
    assert m.curvature == pytest.approx((2.0, 6.0), rel=1e-9)
    # NaN values count as not done even when the mask says done
    assert surface_metrics(AXIS, AXIS, partial).done_share == pytest.approx(25 / 41)


def test_infinite_losses_are_above_every_level_and_make_sharpness_infinite():
    loss = bowl(1.0, 1.0)
    loss[20, 21] = np.inf  # next to the centre
    m = surface_metrics(AXIS, AXIS, loss, radius=0.1)
    assert m.sharpness == math.inf and m.done_share == 1.0
    assert not math.isnan(m.curvature[0])  # the fit skips it


def test_centre_off_the_grid_is_the_nearest_point():
    x = np.array([-1.5, -0.5, 0.5, 1.5])  # no zero: ±0.5 are equally near; the first in order wins
    m = surface_metrics(x, None, (x - 0.3) ** 2)
    assert m.centre == (-0.5,) and m.centre_loss == pytest.approx(0.64)
    m = surface_metrics(x, x, np.zeros((4, 4)))
    assert m.centre == (-0.5, -0.5)


def test_eigen_ratio_share_and_undetermined_fits():
    ratio = np.full((41, 41), 0.5)
    ratio[:10, :] = 0.001  # 410 points nearly convex
    ratio[40, 40] = np.nan  # not computed
    m = surface_metrics(AXIS, AXIS, bowl(1.0, 1.0), eig_ratio=ratio)
    assert m.convex_share == pytest.approx(410 / (41 * 41 - 1))
    min_eig = np.full((41, 41), -1.0)
    min_eig[10:20, :] = 0.2  # λmin > 0: convex whatever the ratio
    m = surface_metrics(AXIS, AXIS, bowl(1.0, 1.0), eig_ratio=ratio, min_eig=min_eig)
    assert m.convex_share == pytest.approx(820 / (41 * 41 - 1))
    tiny = surface_metrics(AXIS, AXIS, bowl(1.0, 1.0), radius=0.05)  # 5 points cannot fix 6 coefficients
    assert tiny.fit_points == 5 and all(math.isnan(c) for c in tiny.curvature)


def test_nothing_computed_gives_nans_and_the_dict_is_plain():
    m = surface_metrics(AXIS, AXIS, np.full((41, 41), np.nan))
    assert m.done_share == 0.0 and math.isnan(m.centre_loss) and math.isnan(m.sharpness)
    assert math.isnan(m.basin_share) and math.isnan(m.min_loss)
    d = surface_metrics(AXIS, AXIS, bowl(1.0, 1.0)).to_dict()
    assert isinstance(d["curvature"], list) and isinstance(d["sharpness"], float)
    assert set(DEFINITIONS) <= set(d)
    assert set(d) == {f for f in SurfaceMetrics.__dataclass_fields__}
    with pytest.raises(ValueError, match="shape"):
        surface_metrics(AXIS, AXIS, np.zeros((41, 40)))
    with pytest.raises(ValueError, match="radius"):
        surface_metrics(AXIS, None, np.zeros(41), radius=0.0)


# -- radii that fit the grid --------------------------------------------------------------------------------------

PAPER_21 = np.linspace(-1.0, 1.0, 21)  # the paper's 21x21 grid over [-1, 1]: step 0.1
PAPER_51 = np.linspace(-1.0, 1.0, 51)  # and its 51x51: step 0.04


def within(axis: np.ndarray, r: float) -> int:
    """Grid points within distance r of the origin, counted one by one."""
    return sum(1 for a in axis for b in axis if math.hypot(a, b) <= r * (1 + 1e-9))


def test_sharpness_of_the_centre_alone_is_not_available():
    a, b = np.meshgrid(AXIS, AXIS)
    m = surface_metrics(AXIS, AXIS, 0.3 + a**2 + b**2, radius=0.04)  # below the step 0.05: the centre only
    assert m.points_in_radius == 1 and math.isnan(m.sharpness), "a max over the centre alone is not a flat minimum"
    assert m.nearest == pytest.approx(0.05)
    line = surface_metrics(PAPER_21, None, PAPER_21**2, radius=0.05)
    assert math.isnan(line.sharpness) and line.nearest == pytest.approx(0.1)
    assert surface_metrics(PAPER_21, None, PAPER_21**2, radius=0.1).sharpness == pytest.approx(0.01)


@pytest.mark.parametrize(("axis", "fit_radius", "points"), [(PAPER_21, math.hypot(0.1, 0.1), 9), (PAPER_51, 0.1, 21)])
def test_the_default_fit_radius_determines_the_fit_on_the_papers_grids(axis, fit_radius, points):
    a, b = np.meshgrid(axis, axis)
    loss = 0.2 + 1.5 * a**2 + 0.5 * b**2 + 0.25 * a * b
    assert default_fit_radius(axis, axis, 0.1) == pytest.approx(fit_radius)
    m = surface_metrics(axis, axis, loss, fit_radius=default_fit_radius(axis, axis, 0.1))
    assert m.fit_points == within(axis, fit_radius) == points
    assert m.curvature == pytest.approx(tuple(np.linalg.eigvalsh([[3.0, 0.25], [0.25, 1.0]])), rel=1e-9)
    assert m.neighbourhood == pytest.approx(math.hypot(axis[1] - axis[0], axis[1] - axis[0]))
    assert default_fit_radius(axis, None, 0.01) == pytest.approx(axis[1] - axis[0])  # 1D: the two neighbours


def test_status_defaults_fit_the_grid_and_says_which_radius_would(tmp_path):
    from test_plot_surfaces import bowl_file

    from llmpi.report.summary import render_metrics
    from llmpi.report.summary import surface_metrics as file_metrics

    path = bowl_file(tmp_path / "b21.h5", n=21)
    got = file_metrics(path)
    assert got["options"]["radius"] == 0.1 and got["options"]["fit_radius"] == pytest.approx(math.hypot(0.1, 0.1))
    assert None not in got["train_loss"]["curvature"] and got["train_loss"]["fit_points"] == 9
    assert got["train_loss"]["curvature"] == pytest.approx([2.0, 2.0], rel=1e-9)  # the bowl is (α-a0)² + (β-b0)²
    narrow = file_metrics(path, radius=0.05, fit_radius=0.05)
    m = narrow["train_loss"]
    assert m["sharpness"] is None and m["points_in_radius"] == 1
    text = render_metrics(narrow)
    assert "--radius 0.1 reaches the nearest grid point" in text
    assert "--fit-radius 0.142 holds the centre's 3x3 block" in text
    assert within(PAPER_21, 0.142) == 9
