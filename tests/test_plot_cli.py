"""``python -m llmpi.plot``: what it writes, where, and how it refuses bad input (one `llmpi: error:` line, exit 2)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from test_plot_surfaces import bowl_file, line_file, partial_done

from llmpi.plot import main

PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmpi.plot", *map(str, args)], capture_output=True, text=True, timeout=300,
        cwd=cwd, env=env,
    )  # fmt: skip


def test_default_run_writes_every_picture_next_to_the_file_headless(tmp_path):
    path = bowl_file(tmp_path / "vgg56.h5")  # 51x51, the paper's size: its default pictures must be quick
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"} | {"MPLBACKEND": "TkAgg"}
    start = time.monotonic()
    done = run_cli(path, env=env)  # a GUI backend asked for and no display: must still draw, never open a window
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    printed = done.stdout.split()
    expected = [
        f"vgg56.h5_{value}_{kind}.{fmt}"
        for kind in ("2dcontour", "2dcontourf", "2dheat", "3dsurface")
        for value in ("train_loss", "train_acc")
        for fmt in ("png", "pdf")
    ] + ["vgg56.h5_viewer.html", "vgg56.h5_train_loss.vtk"]
    assert [os.path.basename(p) for p in printed] == expected
    for p in printed:
        with open(p, "rb") as f:
            data = f.read()
        assert len(data) > 1000, p
        if p.endswith(".png"):
            assert data[:8] == PNG
        elif p.endswith(".pdf"):
            assert data[:5] == b"%PDF-"
    print(f"default run on a 51x51 file: {seconds:.1f} s")  # shown with -s; about 10 s on an idle 2-core machine


def test_the_readme_contour_command_with_log_levels(tmp_path):
    path = bowl_file(tmp_path / "vgg56.h5", n=21)
    done = run_cli(path, "--kind", "contour", "--vmin", "0.1", "--vmax", "10", "--levels", "0.5", "--log")
    assert done.returncode == 0, done.stderr
    names = [os.path.basename(p) for p in done.stdout.split()]
    assert names == ["vgg56.h5_train_loss_2dcontour_log.png", "vgg56.h5_train_loss_2dcontour_log.pdf"]


def test_one_viewer_for_several_files_of_different_grids(tmp_path):
    a = bowl_file(tmp_path / "a.h5", n=21)
    b = bowl_file(tmp_path / "b.h5", n=11, lo=-0.5, hi=0.5, a0=0.0, b0=0.0)
    out = tmp_path / "compare.html"
    assert main([str(a), str(b), "--kind", "html", "-o", str(out)]) == 0
    page = out.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page), "everything inline: no external resource"
    assert "plotly.js v" in page  # the bundle itself, inline
    data = json.loads(re.search(r'id="llmpi-data">(.*?)</script>', page, re.S).group(1))
    assert [layer["label"] for layer in data["layers"]] == ["a", "b"]
    assert data["layers"][0]["x"] == pytest.approx(np.linspace(-1, 1, 21))
    assert data["layers"][1]["y"] == pytest.approx(np.linspace(-0.5, 0.5, 11))


def test_1d_files_get_curves_a_viewer_and_vtk_but_no_contours(tmp_path, capsys):
    small, large = line_file(tmp_path / "small.h5"), line_file(tmp_path / "large.h5", a0=0.3)
    assert main([str(small), str(large)]) == 0
    names = [os.path.basename(p) for p in capsys.readouterr().out.split()]
    assert names[:3] == ["small.h5_and_1_more_1d_loss_acc.png", "small.h5_and_1_more_1d_loss_acc.pdf",
                         "small.h5_and_1_more_viewer.html"]  # fmt: skip
    assert sorted(names[3:]) == sorted(
        f"{f}.h5_{v}.vtk" for f in ("small", "large") for v in ("train_loss", "test_loss")
    )


def test_partial_file_plots(tmp_path, capsys):
    path = bowl_file(tmp_path / "running.h5", n=21, done=partial_done(21, 5))
    args = [str(path), "--kind", "heat", "--kind", "surface", "--value", "train_loss", "-o", f"{tmp_path}/out/"]
    assert main(args) == 0
    names = sorted(os.path.basename(p) for p in capsys.readouterr().out.split())
    assert names == sorted(f"running.h5_train_loss_{k}.{f}" for k in ("2dheat", "3dsurface") for f in ("png", "pdf"))


def test_output_file_picks_the_format(tmp_path, capsys):
    path = bowl_file(tmp_path / "b.h5", n=11)
    assert main([str(path), "--kind", "surface", "--value", "train_acc", "-o", str(tmp_path / "s.svg")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "s.svg")]
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")


def _not_a_surface(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    return tmp_path / "other.h5"


@pytest.mark.parametrize(
    "make_args, words",
    [
        (lambda t: [t / "missing.h5"], "does not exist"),
        (lambda t: [_not_a_surface(t)], "not a surface file"),
        (lambda t: [(t / "text.h5").write_text("hello") and t / "text.h5"], "not a readable HDF5 file"),
        (lambda t: [line_file(t / "l.h5"), "--kind", "contour"], "1D surface"),
        (lambda t: [bowl_file(t / "b.h5", n=5), "--kind", "1d"], "2D surface"),
        (lambda t: [bowl_file(t / "b.h5", n=5), "--value", "test_loss"], "has no value 'test_loss'"),
        (lambda t: [bowl_file(t / "b.h5", n=5), "--vmin", "3", "--vmax", "1"], "--vmin 3 must be below --vmax 1"),
        (lambda t: [bowl_file(t / "b.h5", n=5), "--log", "--vmin", "0"], "positive --vmin"),
        (lambda t: [bowl_file(t / "b.h5", n=5), "--levels", "1e-9", "--kind", "contour"], "choose a larger step"),
        (lambda t: [bowl_file(t / "b.h5", n=5), "-o", t / "one.png"], "writes 10 outputs"),
        (lambda t: [bowl_file(t / "b.h5", n=5), "--kind", "vtk", "-o", t / "x.png"], "written as .vtk"),
        (lambda t: [bowl_file(t / "b.h5", n=5), "--kind", "nonsense"], "invalid choice"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, capsys, make_args, words):
    args = [str(a) for a in make_args(tmp_path)]
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("llmpi: error: ") and words in err, err
    assert "Traceback" not in err


def test_errors_exit_2_from_the_real_command(tmp_path):
    done = run_cli(tmp_path / "nope.h5")
    assert done.returncode == 2 and done.stderr.startswith("llmpi: error: ") and done.stdout == ""
