"""What a user of pip gets: a wheel that builds from the source tree and carries the package data (viewer, job
schemas), the licence, the pinned requirements and the six console scripts, each of which answers --help."""

from __future__ import annotations

import contextlib
import importlib
import io
import shutil
import subprocess
import sys
import zipfile
from configparser import ConfigParser

import pytest
from conftest import REPO

SCRIPTS = {
    "llmpi-sweep": "llmpi.sweep:main",
    "llmpi-spectrum": "llmpi.spectrum:main",
    "llmpi-plot": "llmpi.plot:main",
    "llmpi-status": "llmpi.status:main",
    "llmpi-train": "llmpi.train:main",
    "llmpi-slurm": "llmpi.slurm:main",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """``pip wheel --no-deps`` of a copy of the source tree (the build leaves build/ and egg-info behind)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "llmpi", src / "llmpi", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(base / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0 and "No module named" in done.stderr and "setuptools" in done.stderr:
        pytest.skip("building a wheel without network needs setuptools in the environment")
    assert done.returncode == 0, done.stderr
    (path,) = (base / "dist").glob("llmpi-*.whl")
    return zipfile.ZipFile(path)


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (member,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(member).decode()


def test_wheel_carries_the_package_data_and_the_licence(wheel):
    names = set(wheel.namelist())
    for data in ("llmpi/report/viewer.html", "llmpi/report/viewer.js", "llmpi/schemas/job.schema.json",
                 "llmpi/schemas/train-job.schema.json"):  # fmt: skip
        assert data in names, f"{data} is not in the wheel"
        assert wheel.read(data) == (REPO / data).read_bytes()
    licence = next(n for n in names if n.endswith("LICENSE") and ".dist-info/" in n)
    assert wheel.read(licence).decode().startswith("MIT License")
    assert "the llmpi authors" in wheel.read(licence).decode()
    assert not any("tests/" in n or n.startswith("jobs/") for n in names)


def test_wheel_metadata_pins_what_the_code_needs(wheel):
    meta = dist_info(wheel, "METADATA")
    requires = [line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist: ")]
    assert "h5py>=3.5" in requires  # h5py.File(..., locking=False)
    assert "Requires-Python: >=3.10" in meta.splitlines()
    assert "Classifier: Programming Language :: Python :: 3.10" in meta
    assert 'jsonschema; extra == "dev"' in requires


def test_console_scripts_point_at_commands_that_answer_help(wheel, capsys):
    entry_points = ConfigParser()
    entry_points.read_string(dist_info(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == SCRIPTS
    for script, target in SCRIPTS.items():
        module, attr = target.split(":")
        main = getattr(importlib.import_module(module), attr)
        with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()):
            main(["--help"])
        assert e.value.code == 0, script
        assert "usage:" in capsys.readouterr().out, script
