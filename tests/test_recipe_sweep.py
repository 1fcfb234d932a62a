"""Sweeps whose directions are a recipe, through the real command line: 1 rank and 2 ranks give the same bits,
every point is the loss at θ* + a·δ + b·η with the directions the recipe makes (written out by ``python -m
llmpi.directions materialise``), a kill -9 resumes to the same bits, and a resume with other directions is
refused naming what differs."""

from __future__ import annotations

import json
import random

import h5py
import numpy as np
import pytest
import torch
from conftest import brute_force, job_dict, run_cli, write_job
from faultkit import arrays, resume, run_and_kill

from llmpi.file.grid import Grid
from llmpi.file.store import SurfaceStore, read_directions, read_surface
from llmpi.job.config import load_job
from llmpi.job.errors import StoreError
from llmpi.ranks.fingerprint import directions_fields
from llmpi.report import summary

pytestmark = pytest.mark.mpi

GRID = {"x": [-1.0, 1.0, 6], "y": [-1.0, 1.0, 5], "block": 2}
RECIPE = {"kind": "random", "seed": 3, "norm": "filter", "ignore": "biasbn", "type": "weights", "store": "recipe"}


@pytest.fixture(scope="module")
def swept(fixture_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe")
    job = job_dict(fixture_data, d / "two.h5", grid=GRID, directions=RECIPE)
    two = run_cli("llmpi.sweep", str(write_job(d / "two.yaml", job)), ranks=2)
    assert two.returncode == 0, two.stderr
    one = run_cli("llmpi.sweep", str(write_job(d / "one.yaml", {**job, "output": str(d / "one.h5")})))
    assert one.returncode == 0, one.stderr
    return d, job


def test_one_and_two_ranks_are_bitwise_equal_and_the_file_is_small(swept):
    d, _ = swept
    two, one = read_surface(d / "two.h5"), read_surface(d / "one.h5")
    assert two.complete and two.direction_store == "recipe"
    for name in ("train_loss", "train_acc"):
        assert np.array_equal(one.values[name], two.values[name])
    with h5py.File(d / "two.h5", "r") as f:
        assert "directions" not in f and f.attrs["directions_store"] == "recipe"
        assert json.loads(f.attrs["fingerprint_fields"])["directions"]["store"] == "recipe"
    with pytest.raises(StoreError, match=r"stores the recipe of its directions.*python -m llmpi.directions materiali"):
        _ = two.directions


def test_materialised_directions_give_every_value_and_status_and_plots_work(fixture_data, swept):
    d, _ = swept
    from llmpi.directions import main as directions_command  # python -m llmpi.directions, in this process

    assert directions_command(["materialise", str(d / "two.h5"), "-o", str(d / "full.h5")]) == 0
    for out in ("two.h5", "full.h5"):  # the recipe file itself, or any existing file: refused, nothing written
        assert directions_command(["materialise", str(d / "two.h5"), "-o", str(d / out)]) == 2
    full = read_surface(d / "full.h5")
    assert full.attrs["materialised"] and full.direction_store == "recipe"
    assert np.array_equal(full.values["train_loss"], read_surface(d / "two.h5").values["train_loss"])
    dirs = read_directions(d / "full.h5")
    conv = dirs[0]["layer1.0.conv1.weight"]
    w = torch.load(fixture_data.checkpoint)["state_dict"]["layer1.0.conv1.weight"]
    assert np.allclose(np.linalg.norm(conv.reshape(len(conv), -1), axis=1), w.flatten(1).norm(dim=1).numpy(), rtol=1e-5)
    assert not dirs[0]["bn1.weight"].any()  # ignore: biasbn, as in a full file
    s = read_surface(d / "two.h5")
    for j, i in [(0, 0), (2, 3), (4, 5)]:
        loss, acc = brute_force(fixture_data, dirs, (s.x[i], s.y[j]))
        assert s.values["train_loss"][j, i] == pytest.approx(loss, rel=2e-5)
        assert s.values["train_acc"][j, i] == pytest.approx(acc, abs=1e-9)
    text = summary.render(summary.summarize(d / "two.h5"))
    assert "stored as a recipe" in text and "done: 30 / 30" in text
    from llmpi.plot import main as plot

    assert plot([str(d / "two.h5"), "--kind", "heat", "--value", "train_loss", "-o", str(d / "heat.png")]) == 0
    assert (d / "heat.png").stat().st_size > 0


def test_resume_with_other_directions_is_refused_naming_the_difference(swept):
    d, _ = swept
    refused = run_cli("llmpi.sweep", str(d / "two.yaml"), "--set", "directions.seed=9")
    assert refused.returncode == 2 and "directions.seed: file 3, job 9" in refused.stderr, refused.stderr
    theirs = json.loads(read_surface(d / "two.h5").attrs["fingerprint_fields"])
    grid = Grid.from_spec(GRID["x"], GRID["y"])
    for override, expected in [
        ("directions.norm=layer", "directions.norm: file 'filter', job 'layer'"),
        ("directions.store=full", "directions.store: file 'recipe', job None"),
        ("model.arch=resnet20", "arch: file 'resnet8', job 'resnet20'"),
    ]:
        other = load_job(d / "two.yaml", [override])
        ours = {**theirs, "arch": other.model.arch, "directions": directions_fields(other, other.directions.store)}
        with pytest.raises(StoreError, match="another job's surface") as e:
            SurfaceStore._check(d / "two.h5", grid, ["train_loss", "train_acc"], ours)
        assert expected in str(e.value)


def test_kill_9_with_a_recipe_resumes_to_the_same_bits(fixture_data, swept, tmp_path):
    d, job = swept
    reference = arrays(d / "one.h5")
    out = tmp_path / "k.h5"
    path = write_job(tmp_path / "k.yaml", {**job, "output": str(out)})
    killed = run_and_kill(path, out, random.Random(7))
    assert killed.returncode != 0, killed
    result = resume(path)
    assert result.returncode == 0, f"{killed.how}: resume failed\n{result.stderr}"
    got = arrays(out)
    assert got["done"].all()
    for name in ("train_loss", "train_acc"):
        assert np.array_equal(got[name], reference[name]), killed.how
