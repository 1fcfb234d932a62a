"""The matplotlib pictures and the ParaView file, checked by what they show: pixels and geometry compared with the
analytic bowl the surface file was written from (tests/test_plot_surfaces.py), never with the plotting code.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.contour import ContourSet
from test_plot_surfaces import A0, B0, LOSS0, bowl_acc, bowl_file, bowl_loss, line_file, partial_done

from llmpi.report.landscape import Landscape, Scale
from llmpi.report.paraview import write_vtk
from llmpi.report.static import contour, figure_1d, figure_2d, figure_surface

VIRIDIS = colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]


@pytest.fixture(scope="module")
def bowl(tmp_path_factory):
    return Landscape.read(bowl_file(tmp_path_factory.mktemp("bowl") / "bowl.h5"))


def render(fig) -> np.ndarray:
    """The figure as an (h, w, 3) float image, exactly as savefig would draw it at the figure's dpi."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0


def pixel(fig, ax, a: float, b: float) -> tuple[int, int]:
    """(row, column) of the data point (a, b) in the rendered image."""
    x, y = ax.transData.transform((a, b))
    return round(fig.canvas.get_width_height()[1] - y), round(x)


def viridis_index(rgb: np.ndarray) -> np.ndarray:
    """The viridis position (0..255) of each pixel, -1 where the colour is not viridis (lines, text, marks)."""
    colours, where = np.unique(np.round(rgb.reshape(-1, 3) * 255).astype(np.int64), axis=0, return_inverse=True)
    d = ((colours[:, None, :] / 255 - VIRIDIS[None, :, :]) ** 2).sum(-1)  # few distinct colours: cheap
    index = d.argmin(1)
    index[d.min(1) > 3e-4] = -1
    return index[where.ravel()].reshape(rgb.shape[:-1])


def axes_box(fig, ax) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel bounds of the axes area, a few pixels inside the frame."""
    height = fig.canvas.get_width_height()[1]
    x0, y0, x1, y1 = ax.get_window_extent().extents
    return int(height - y1) + 3, int(height - y0) - 3, int(x0) + 3, int(x1) - 3


# -- 2D pictures --------------------------------------------------------------------------------------------------


def test_filled_contours_darkest_region_is_around_the_bowl_minimum(bowl):
    fig = figure_2d(bowl, "train_loss", "contourf", Scale())
    ax = fig.axes[0]
    image = render(fig)
    top, bottom, left, right = axes_box(fig, ax)
    index = viridis_index(image[top:bottom, left:right])
    filled = index >= 0
    assert filled.mean() > 0.8, "the bowl covers the whole grid: the axes must be filled"
    darkest = index == index[filled].min()
    rows, cols = np.nonzero(darkest)
    centre = (rows.mean() + top, cols.mean() + left)
    expected = pixel(fig, ax, A0, B0)
    assert abs(centre[0] - expected[0]) < 4 and abs(centre[1] - expected[1]) < 4, (centre, expected)
    # each band between two levels is one colour, darker the lower its (analytic) values
    levels = next(c for c in ax.collections if isinstance(c, ContourSet)).levels
    inv = ax.transData.inverted()
    height = fig.canvas.get_width_height()[1]
    colours: dict[int, set] = {}
    rng = np.random.default_rng(0)
    for r, c in zip(rng.integers(top, bottom, 600), rng.integers(left, right, 600)):
        k = index[r - top, c - left]
        a, b = inv.transform((c + 0.5, height - r - 0.5))
        value = float(bowl_loss(a, b))
        if k < 0 or np.min(np.abs(levels - value)) < 0.03:  # a line, a mark, or on a band edge
            continue
        colours.setdefault(int(np.searchsorted(levels, value)), set()).add(int(k))
    assert all(len(ks) == 1 for ks in colours.values()), colours
    bands = sorted(colours)
    assert len(bands) > 8
    ordered = [next(iter(colours[band])) for band in bands]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered), ordered
    matplotlib.pyplot.close(fig)


def test_heatmap_colours_are_the_analytic_values(bowl):
    lo, hi = 0.25, 2.25
    fig = figure_2d(bowl, "train_loss", "heat", Scale(vmin=lo, vmax=hi))
    ax = fig.axes[0]
    image = render(fig)
    top, bottom, left, right = axes_box(fig, ax)
    index = viridis_index(image[top:bottom, left:right])
    inv = ax.transData.inverted()
    height = fig.canvas.get_width_height()[1]
    rows, cols = np.nonzero(index >= 0)
    pick = np.random.default_rng(1).choice(len(rows), 500, replace=False)
    errors = []
    for r, c in zip(rows[pick], cols[pick]):
        a, b = inv.transform((c + left + 0.5, height - (r + top) - 0.5))
        # the cell of a pixel is its nearest grid point (shading="nearest")
        ga, gb = np.round(a / 0.04) * 0.04, np.round(b / 0.04) * 0.04
        expected = np.clip(bowl_loss(ga, gb), lo, hi)
        errors.append(abs(lo + index[r, c] / 255 * (hi - lo) - expected))
    assert np.percentile(errors, 95) < 0.02, np.percentile(errors, [50, 95, 100])
    matplotlib.pyplot.close(fig)


def test_contour_lines_lie_on_the_analytic_circles(bowl):
    step = 0.3
    fig = figure_2d(bowl, "train_loss", "contour", Scale(vmin=0.35, vmax=1.25, step=step))
    ax = fig.axes[0]
    image = render(fig)
    ink = (image < 0.85).any(-1)  # anything drawn on the white axes
    hits, gaps = [], []
    for level in (0.35, 0.65, 0.95):
        radius = np.sqrt(level - LOSS0)
        for t in np.linspace(0, 2 * np.pi, 90, endpoint=False):
            a, b = A0 + radius * np.cos(t), B0 + radius * np.sin(t)
            if not (-0.97 < a < 0.97 and -0.97 < b < 0.97):
                continue
            r, c = pixel(fig, ax, a, b)
            hits.append(ink[r - 2 : r + 3, c - 2 : c + 3].any())
            # halfway (in loss) to the next level there is no line
            mid = np.sqrt(level + step / 2 - LOSS0)
            a2, b2 = A0 + mid * np.cos(t), B0 + mid * np.sin(t)
            if -0.97 < a2 < 0.97 and -0.97 < b2 < 0.97 and np.hypot(a2, b2) > 0.12:  # away from the θ* star
                r, c = pixel(fig, ax, a2, b2)
                gaps.append(ink[r - 1 : r + 2, c - 1 : c + 2].any())
    assert np.mean(hits) > 0.8, np.mean(hits)  # inline labels break a few places
    assert np.mean(gaps) < 0.1, np.mean(gaps)
    matplotlib.pyplot.close(fig)


def test_log_levels_are_decades_apart_by_the_step(bowl):
    fig = figure_2d(bowl, "train_loss", "contour", Scale(vmin=0.1, vmax=10, step=0.5, log=True))
    levels = fig.axes[0].collections[0].levels
    assert levels == pytest.approx([0.1, 10**-0.5, 1.0, 10**0.5, 10.0])
    matplotlib.pyplot.close(fig)


def test_minimiser_and_lowest_point_are_marked_where_they_are(bowl):
    fig = figure_2d(bowl, "train_loss", "contourf", Scale())
    ax = fig.axes[0]
    image = render(fig)
    r, c = pixel(fig, ax, 0.0, 0.0)  # θ*: a red star
    patch = image[r - 3 : r + 4, c - 3 : c + 4].reshape(-1, 3)
    assert ((patch[:, 0] > 0.7) & (patch[:, 1] < 0.3) & (patch[:, 2] < 0.3)).sum() >= 5
    r, c = pixel(fig, ax, A0, B0)  # the lowest computed loss: a black cross
    patch = image[r - 3 : r + 4, c - 3 : c + 4].reshape(-1, 3)
    assert (patch.max(1) < 0.15).sum() >= 5
    assert ax.get_xlabel().startswith("α") and "filter-normalised" in ax.get_xlabel()
    assert ax.get_ylabel().startswith("β")
    assert "SYNTHETIC data" in fig._suptitle.get_text()
    matplotlib.pyplot.close(fig)


def test_partial_file_leaves_undone_points_blank_and_says_how_many(tmp_path):
    n, rows = 51, 20
    land = Landscape.read(bowl_file(tmp_path / "partial.h5", n=n, done=partial_done(n, rows)))
    for kind in ("contourf", "heat"):
        fig = figure_2d(land, "train_loss", kind, Scale())
        assert f"{rows * n + 1} of {n * n} points" in fig._suptitle.get_text()
        ax = fig.axes[0]
        image = render(fig)
        done_px = pixel(fig, ax, -0.3, -0.7)
        undone_px = pixel(fig, ax, -0.5, 0.6)
        assert viridis_index(image[done_px][None])[0] >= 0
        assert viridis_index(image[undone_px][None])[0] == -1
        assert np.allclose(image[undone_px], matplotlib.colors.to_rgb("#e4e4e4"), atol=0.02)
        matplotlib.pyplot.close(fig)
    # a file with nothing computed yet still draws (a blank grid, "0 of n points")
    empty = Landscape.read(bowl_file(tmp_path / "empty.h5", n=11, done=np.zeros((11, 11), bool)))
    fig = figure_2d(empty, "train_loss", "contour", Scale())
    assert "0 of 121 points" in fig._suptitle.get_text()
    matplotlib.pyplot.close(fig)


def test_surface_3d_bounding_box_is_the_grid_and_the_values(bowl):
    fig = figure_surface(bowl, "train_loss", Scale())
    ax = fig.axes[0]
    top_loss = float(bowl_loss(-1.0, 1.0))  # the corner farthest from the minimum
    assert ax.xy_dataLim.intervalx == pytest.approx([-1, 1])
    assert ax.xy_dataLim.intervaly == pytest.approx([-1, 1])
    assert ax.zz_dataLim.intervalx == pytest.approx([LOSS0, top_loss])
    assert ax.get_zlim() == pytest.approx((LOSS0, top_loss))
    image = render(fig)
    box = axes_box(fig, ax)
    coloured = viridis_index(image[box[0] : box[1], box[2] : box[3]]) >= 0
    assert coloured.mean() > 0.15, "the surface covers a good part of the 3D axes"
    matplotlib.pyplot.close(fig)
    # --log draws log10 heights, --vmax clips them (the paper's zmax)
    fig = figure_surface(bowl, "train_loss", Scale(vmax=1.0, log=True))
    ax = fig.axes[0]
    assert ax.zz_dataLim.intervalx == pytest.approx([np.log10(LOSS0), 0.0])
    matplotlib.pyplot.close(fig)


# -- 1D -----------------------------------------------------------------------------------------------------------


def test_1d_loss_and_accuracy_on_twin_axes_for_several_files(tmp_path):
    small = Landscape.read(line_file(tmp_path / "small_batch.h5", a0=0.0))
    large = Landscape.read(line_file(tmp_path / "large_batch.h5", a0=0.3))
    fig = figure_1d([small, large], None, Scale())
    loss_ax, acc_ax = fig.axes[:2]
    assert loss_ax.get_shared_x_axes().joined(loss_ax, acc_ax)
    assert acc_ax.get_ylim() == (0, 100) and "accuracy" in acc_ax.get_ylabel()
    losses = {line.get_label(): line.get_ydata() for line in loss_ax.get_lines()}
    accs = {line.get_label(): line.get_ydata() for line in acc_ax.get_lines()}
    x = np.linspace(-1, 1, 41)
    assert losses["large_batch: train loss"] == pytest.approx(bowl_loss(x, 0.0, 0.3, 0.0))
    assert losses["small_batch: test loss"] == pytest.approx(bowl_loss(x, 0.0, 0.0, 0.0) + 0.3)
    assert accs["large_batch: train accuracy"] == pytest.approx(bowl_acc(x, 0.0, 0.3, 0.0))
    assert len(losses) == 5 and len(accs) == 4  # 2 files x 2 splits, plus the θ* line
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "small_batch: train loss" in texts and "large_batch: test accuracy" in texts
    image = render(fig)
    assert (image < 0.9).any(-1).mean() > 0.03, "curves are drawn"
    matplotlib.pyplot.close(fig)


# -- ParaView -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log", [False, True])
def test_vtk_structured_grid_reads_back_with_a_vtk_reader(tmp_path, log):
    meshio = pytest.importorskip("meshio", reason="meshio (a VTK reader) is in the dev extra: pip install -e .[dev]")
    n = 11
    done = partial_done(n, 6)
    land = Landscape.read(bowl_file(tmp_path / "p.h5", n=n, done=done))
    out = write_vtk(land, "train_loss", Scale(vmax=2.0, log=log), tmp_path / "p.vtk")
    mesh = meshio.read(out)
    x = np.linspace(-1, 1, n)
    A, B = np.meshgrid(x, x)
    assert mesh.points[:, 0] == pytest.approx(A.ravel())
    assert mesh.points[:, 1] == pytest.approx(B.ravel())
    loss = bowl_loss(A, B).ravel()
    height = np.log10(np.minimum(loss, 2.0)) if log else np.minimum(loss, 2.0)
    shown = done.ravel()
    assert mesh.points[shown, 2] == pytest.approx(height[shown])
    data = {k: np.asarray(v).ravel() for k, v in mesh.point_data.items()}
    assert data["train_loss"][shown] == pytest.approx(loss[shown])
    assert np.isnan(data["train_loss"][~shown]).all()
    assert data["train_acc"][shown] == pytest.approx(bowl_acc(A, B).ravel()[shown])
    assert (data["done"] == shown).all()
    assert (data["vtkGhostType"] == np.where(shown, 0, 2)).all()
    assert np.isfinite(mesh.points).all(), "hidden points keep finite coordinates so bounds stay sane"
    assert mesh.cells[0].type == "quad" and len(mesh.cells[0].data) == (n - 1) ** 2


def test_contour_function_kept_for_callers(tmp_path):
    out = contour(bowl_file(tmp_path / "b.h5", n=11))
    assert out == tmp_path / "b.h5_train_loss_2dcontour.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- titles, legends and the cut of the 3D surface ---------------------------------------------------------------


def test_titles_name_the_job_not_the_factory(tmp_path):
    lands = []
    for name in ("wide_net", "narrow_net"):
        land = Landscape.read(bowl_file(tmp_path / f"{name}.h5", n=5, arch="mypkg.nets:build"))
        land.job = {"name": name, "model": {"factory": "mypkg.nets:build"}}  # two networks from one factory
        lands.append(land)
    titles = [land.title("train_loss") for land in lands]
    assert titles[0].startswith("wide_net — train loss") and titles[1].startswith("narrow_net — train loss")
    assert not any("mypkg" in t for t in titles)
    zoo = Landscape.read(bowl_file(tmp_path / "z.h5", n=5))
    assert zoo.title(None).startswith("bowl (resnet8)")  # the job's name, and the zoo architecture it sweeps


def test_several_1d_files_are_named_and_the_legend_stays_inside(tmp_path):
    lands = [
        Landscape.read(line_file(tmp_path / f"{stem}.h5", a0=a0))
        for stem, a0 in (("small_batch_vgg9_minimiser_run_one", 0.0), ("large_batch_vgg9_minimiser_run_one", 0.3))
    ]
    fig = figure_1d(lands, None, Scale())
    fig.canvas.draw()
    title = " ".join(fig._suptitle.get_text().split())
    # both files come from a job named "bowl": the title tells them apart by file name
    assert title.startswith("small_batch_vgg9_minimiser_run_one vs large_batch_vgg9_minimiser_run_one")
    renderer = fig.canvas.get_renderer()
    figure_box = fig.bbox
    for artist in (fig.legends[0], fig._suptitle, *fig.axes):
        box = artist.get_window_extent(renderer)
        assert box.x0 >= figure_box.x0 - 1 and box.x1 <= figure_box.x1 + 1, artist
        assert box.y0 >= figure_box.y0 - 1 and box.y1 <= figure_box.y1 + 1, artist
    legend = fig.legends[0].get_window_extent(renderer)
    plot = fig.axes[0].get_tightbbox(renderer)  # the plot with its tick labels and axis labels
    assert legend.y1 <= plot.y0 + 1, "the legend sits under the plot, not over its labels"
    assert len(fig.legends[0].get_texts()) == 9  # 2 files x (2 losses + 2 accuracies) + θ*
    matplotlib.pyplot.close(fig)


def test_3d_surface_is_cut_level_at_the_cap_without_plateaus(bowl):
    from llmpi.report.static import _cut_surface

    cap = 1.0  # the bowl reaches it on the circle (α - A0)² + (β - B0)² = 0.75
    fig = figure_surface(bowl, "train_loss", Scale(vmax=cap))
    ax = fig.axes[0]
    assert ax.zz_dataLim.intervalx == pytest.approx([LOSS0, cap])
    matplotlib.pyplot.close(fig)
    x = np.linspace(-1, 1, 51)
    X, Y = np.meshgrid(x, x)
    polygons = _cut_surface(X, Y, bowl_loss(X, Y), LOSS0, cap)
    tops = [p for p in polygons if np.all(p[:, 2] >= cap - 1e-12)]
    assert not tops, "no polygon lies flat on the cap: the clipped region is left out, not drawn level"
    assert max(p[:, 2].max() for p in polygons) == pytest.approx(cap, abs=1e-12)
    edge = np.concatenate([p[np.isclose(p[:, 2], cap, atol=1e-12)] for p in polygons])
    radius = np.hypot(edge[:, 0] - A0, edge[:, 1] - B0)  # the cut's vertices lie on the level circle
    assert radius == pytest.approx(np.sqrt(cap - LOSS0), abs=0.04**2 / 2)  # linear interpolation's error on a cell
    area = sum(0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1))) for p in polygons)
    fine = np.linspace(-1, 1, 2001)  # the part of the grid's square where the bowl is below the cap, counted finely
    below = bowl_loss(*np.meshgrid(fine, fine)) <= cap
    assert area == pytest.approx(below.mean() * 4.0, rel=0.01)


def test_3d_surface_of_a_partial_file_leaves_undone_cells_out(tmp_path):
    from llmpi.report.static import _cut_surface

    n = 11
    land = Landscape.read(bowl_file(tmp_path / "p.h5", n=n, done=partial_done(n, 4)))
    X, Y = np.meshgrid(land.x, land.y)
    polygons = _cut_surface(X, Y, land.values("train_loss"), 0.0, 100.0)
    assert len(polygons) == 3 * (n - 1)  # the cells between the 4 computed rows, nothing with an undone corner
    assert all(np.isfinite(p).all() for p in polygons)
