"""The bad-input catalogue: every mistake a user can make gives one clear message that says what to do, a non-zero
exit, no traceback (unless --debug), and leaves an existing surface file exactly as it was. Real CLI, real files."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import build_once, job_dict, run_cli, write_job

from llmpi import models
from llmpi.compute import data

pytestmark = pytest.mark.mpi


@dataclass
class Case:
    name: str
    expect: str  # a phrase the single error message must contain
    edit: Callable[[dict, Path], object] = lambda job, d: None  # may change the job, or return raw YAML text
    args: tuple[str, ...] = ()
    ranks: int | None = None
    keep_output: bool = True  # put a valid surface file at the output first and check it is untouched
    code: int = 2
    env: dict = field(default_factory=dict)


def set_in(path: str, value):
    def edit(job, d):
        node = job
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value

    return edit


def corrupt_cifar(job, d):
    root = d / "cifar"
    shutil.copytree(job["data"]["root"], root)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])
    job["data"]["root"] = str(root)


def empty_root(job, d):
    (d / "empty").mkdir()
    job["data"]["root"] = str(d / "empty")


def checkpoint_file(content: Callable[[Path], None]):
    def edit(job, d):
        path = d / "bad.pt"
        content(path)
        job["model"]["checkpoint"] = str(path)

    return edit


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/llmpi-evil-ran",))


def evil_pickle(path):
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"conv1.weight": Evil()}}, f)


def other_arch(path):
    torch.save({"state_dict": models.build("resnet20").state_dict()}, path)


def output_under_a_file(job, d):
    (d / "plainfile").write_text("x")
    job["output"] = str(d / "plainfile" / "s.h5")


def output_text_file(job, d):
    Path(job["output"]).write_text("not hdf5")


def output_foreign_hdf5(job, d):
    with h5py.File(job["output"], "w") as f:
        f["something"] = np.arange(3)


def output_directory(job, d):
    Path(job["output"]).mkdir()


def use_factory(section: str, path: str, **extra):
    """Replace a section's built-in choice by a factory (users' own model, data, loss)."""

    def edit(job, d):
        if section == "model":
            job["model"].pop("arch")
        job[section] = {**job.get(section, {}), "factory": path, **extra}

    return edit


def tinylm_job(**evaluation):
    """The examples/tinylm model and data (a fresh checkpoint), with the built-in loss or ``evaluation`` given."""

    def edit(job, d):
        from examples import tinylm

        torch.save(tinylm.model().state_dict(), d / "lm.pt")
        job["model"] = {"factory": "examples.tinylm:model", "checkpoint": str(d / "lm.pt")}
        job["data"] = {"factory": "examples.tinylm:data", "kwargs": {"samples": 8}}
        if evaluation:
            job["evaluation"] = evaluation
            job["loss"] = {"factory": "examples.tinylm:loss"}

    return edit


def torch_module(factory: str, **kwargs):
    """A network from torch.nn by import path (``model.factory: torch.nn:Linear``) with its own weights saved."""

    def edit(job, d):
        module = getattr(torch.nn, factory.split(":")[1])(**kwargs)
        torch.save({"state_dict": module.state_dict()}, d / "net.pt")
        job["model"] = {"factory": factory, "kwargs": kwargs, "checkpoint": str(d / "net.pt")}

    return edit


CASES = [
    Case("malformed YAML", "is not valid YAML at line", lambda j, d: "name: x\nmodel: {arch: resnet8\n"),
    Case(
        "unknown key",
        "unknown key 'model.chekpoint'; did you mean 'checkpoint'",
        lambda j, d: j["model"].update(chekpoint="x.pt"),
    ),
    Case("misspelled section", "unknown key 'gird'; did you mean 'grid'", lambda j, d: j.update(gird=j.pop("grid"))),
    Case("wrong type", "grid.x: expected a list [float, float, int]", set_in("grid.x", "wide")),
    Case("grid num < 1", "grid.y: num must be at least 1", set_in("grid.y", [-1.0, 1.0, 0])),
    Case("grid min > max", "grid.x: min 1.0 is greater than max -1.0", set_in("grid.x", [1.0, -1.0, 5])),
    Case("missing dataset", "CIFAR-10 is not in", empty_root),
    Case("corrupted CIFAR batch", "data_batch_2 is not a readable CIFAR-10 batch", corrupt_cifar),
    Case("missing checkpoint", "does not exist; train one", set_in("model.checkpoint", "/nonexistent/ck.pt")),
    Case("checkpoint for another arch", "it fits arch 'resnet20'", checkpoint_file(other_arch)),
    Case("pickle with code in it", "was refused", checkpoint_file(evil_pickle)),
    Case("garbage checkpoint", "cannot be read", checkpoint_file(lambda p: p.write_bytes(b"\x00garbage" * 10))),
    Case(
        "checkpoint without a state_dict", "holds no state_dict", checkpoint_file(lambda p: torch.save({"epoch": 1}, p))
    ),
    Case("output directory not writable", "cannot create the output directory", output_under_a_file, keep_output=False),
    Case("output not an HDF5 file", "exists but is not an HDF5 file", output_text_file, keep_output=False),
    Case("HDF5 file llmpi did not write", "did not write", output_foreign_hdf5, keep_output=False),
    Case("output is a directory", "exists and is not a file", output_directory, keep_output=False),
    Case(
        "a different job's file",
        "holds another job's surface (directions.seed: file 3, job 9)",
        set_in("directions.seed", 9),
    ),
    Case("unknown arch", "unknown architecture 'resnet57'; did you mean", set_in("model.arch", "resnet57")),
    Case(
        "more ranks than points",
        "3 ranks for a grid of 2 points: use at most 2 ranks",
        lambda j, d: j["grid"].update(x=[0.0, 1.0, 2], y=None),
        ranks=3,
    ),
    Case("CUDA requested but absent", "runtime.device is cuda but torch sees no GPU", set_in("runtime.device", "cuda")),
    Case("unknown --set key", "--set: unknown key 'grid.z'", args=("--set", "grid.z=[0,1,2]")),
    Case("--set without =", "--set expects key=value", args=("--set", "grid.x")),
    Case("--set value of the wrong type", "data.subset: expected int or null", args=("--set", "data.subset=lots")),
    Case("job is a list", "must be a mapping of keys", lambda j, d: "- a\n- b\n"),
    Case(
        "subset larger than the split",
        "data.subset is 5000 but the split has only 500 images",
        set_in("data.subset", 5000),
    ),
    Case("batch size 0", "data.batch_size must be 'auto' or a positive integer", set_in("data.batch_size", 0)),
    Case("threads 0", "runtime.threads must be 'auto' or a positive integer", set_in("runtime.threads", 0)),
    Case("no checkpoint given", "model.checkpoint is required", lambda j, d: j["model"].pop("checkpoint") and None),
    Case("no name", "missing required key 'name'", lambda j, d: j.pop("name") and None),
    Case(
        "unknown norm",
        "directions.norm: 'filtr' is not allowed; did you mean 'filter'",
        set_in("directions.norm", "filtr"),
    ),
    Case("unknown split", "data.split: 'validation' is not allowed", set_in("data.split", "validation")),
    Case("unknown dataset", "data.dataset: 'imagenet' is not allowed", set_in("data.dataset", "imagenet")),
    Case(
        "unknown direction kind",
        "directions.kind: 'randm' is not allowed; did you mean 'random'",
        set_in("directions.kind", "randm"),
    ),
    Case(
        "model factory path wrong",
        "model.factory: cannot import module 'examples.nosuch'",
        use_factory("model", "examples.nosuch:model"),
    ),
    Case(
        "model factory raises",
        "model.factory: 'examples.tinylm:model' raised ValueError: dim 30 is not a multiple of heads 4",
        use_factory("model", "examples.tinylm:model", kwargs={"dim": 30}),
    ),
    Case(
        "model factory returns no nn.Module",
        "model.factory: 'builtins:dict' returned a dict, not a torch.nn.Module",
        use_factory("model", "builtins:dict"),
    ),
    Case(
        "data factory returns the wrong type",
        "data.factory: 'builtins:str' returned a str, not a torch Dataset",
        use_factory("data", "builtins:str"),
    ),
    Case(
        "loss factory returns the wrong type",
        "loss.factory: 'operator:is_' returned a bool, not (summed loss, number of samples, number correct or None)",
        use_factory("loss", "operator:is_"),
    ),
    Case("built-in loss on a language model", "loss.name: crossentropy needs a classifier", tinylm_job()),
    Case(
        "a network that refuses the data",
        "the network torch.nn:Linear cannot take the data: on 2 samples of a tensor of shape (2, 3, 32, 32) "
        "(torch.float32) it raised RuntimeError: mat1 and mat2 shapes cannot be multiplied",
        torch_module("torch.nn:Linear", in_features=5, out_features=10),
    ),
    Case(
        "a network without parameters",
        "model: torch.nn:BatchNorm1d has no parameters: a loss landscape moves a network's weights",
        torch_module("torch.nn:BatchNorm1d", num_features=4, affine=False),
    ),
    Case("recalibrate without BatchNorm", "has no BatchNorm layer", tinylm_job(bn="recalibrate")),
    Case(
        "recalibration set larger than the split",
        "= 12800 training samples to recalibrate BatchNorm, but the train split has 500",
        set_in("evaluation", {"bn": "recalibrate", "bn_batches": 100}),
    ),
    Case(
        "recalibrate with states directions",
        "recomputes the BatchNorm running statistics that directions.type: states perturbs",
        lambda j, d: j.update(evaluation={"bn": "recalibrate"}, directions={**j["directions"], "type": "states"}),
    ),
]


@pytest.fixture(scope="session")
def good_surface(fixture_data, tmp_path_factory):
    """A valid surface file of the catalogue's base job, to place at the output of every case (a copy: read-only;
    once per run, the cases are spread over the xdist workers)."""

    def sweep(d):
        job = write_job(d / "job.yaml", job_dict(fixture_data, d / "good.h5", grid={"x": [-1.0, 1.0, 2], "y": None}))
        result = run_cli("llmpi.sweep", str(job))
        assert result.returncode == 0, result.stderr

    return build_once(tmp_path_factory, "good-surface", sweep) / "good.h5"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_clear_message(fixture_data, good_surface, tmp_path, case):
    out = tmp_path / "surface.h5"
    job = job_dict(fixture_data, out, grid={"x": [-1.0, 1.0, 2], "y": None})
    if case.keep_output:
        shutil.copy(good_surface, out)
    raw = case.edit(job, tmp_path)
    path = tmp_path / "job.yaml"
    if isinstance(raw, str):
        path.write_text(raw)
    else:
        path.write_text(yaml.safe_dump(job, sort_keys=False))
    before = out.read_bytes() if out.is_file() else None
    if case.name == "CUDA requested but absent" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_cli("llmpi.sweep", str(path), *case.args, ranks=case.ranks, timeout=120, env=case.env)
    assert result.returncode == case.code, result.stderr
    assert case.expect in result.stderr, result.stderr
    assert result.stderr.count("llmpi: error:") == 1, result.stderr
    assert "Traceback" not in result.stderr
    if before is not None:
        assert out.read_bytes() == before, "the existing surface file was modified"
    assert not os.path.exists("/tmp/llmpi-evil-ran")


def test_missing_job_file_and_debug_traceback(tmp_path):
    missing = run_cli("llmpi.sweep", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "job file" in missing.stderr and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    debug = run_cli("llmpi.sweep", str(tmp_path / "nope.yaml"), "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_catalogue_is_large():
    assert len(CASES) >= 25


def test_data_fixture_helpers_write_the_release_format(tmp_path):
    # the corrupted-batch case relies on write_cifar10_batches producing five train batches
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8) for s in ("train", "test")}
    labels = {s: rng.integers(0, 10, 10) for s in ("train", "test")}
    folder = data.write_cifar10_batches(tmp_path, images, labels)
    assert sorted(p.name for p in folder.iterdir()) == [
        "batches.meta",
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]
