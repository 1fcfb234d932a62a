"""The keys of job files as people (``--keys``) and editors (the shipped JSON Schemas) see them: generated from the
dataclasses, shipped equal to what is generated, and in agreement with the loader on every job file in jobs/."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from llmpi.job import schema as jobschema
from llmpi.job.config import Job, from_dict, load_job, to_dict
from llmpi.job.errors import JobError
from llmpi.job.training import TrainJob

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the dev extra: pip install -e .[dev]")

JOB_FILES = {
    "job": sorted((REPO / "jobs").glob("*.yaml")),
    "train-job": sorted((REPO / "jobs" / "train").glob("*.yaml")),
}


def validator(stem: str):
    schema = json.loads(jobschema.shipped(stem).read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("stem", ["job", "train-job"])
def test_shipped_schema_is_the_generated_one(stem):
    assert jobschema.shipped(stem).read_text(encoding="utf-8") == jobschema.schema_text(stem), (
        "the dataclasses changed: regenerate the schemas with `make schema`"
    )


@pytest.mark.parametrize("stem", ["job", "train-job"])
def test_every_job_file_validates(stem):
    check = validator(stem)
    assert len(JOB_FILES[stem]) > 30  # every architecture of the paper has its job
    for path in JOB_FILES[stem]:
        errors = [
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in check.iter_errors(yaml.safe_load(path.read_text()))
        ]
        assert not errors, (path.name, errors)


MINIMAL = {"name": "a", "model": {"arch": "resnet20", "checkpoint": "c.pt"}}


@pytest.mark.parametrize(
    ("change", "loader_says"),
    [
        (lambda j: j["model"].update(chekpoint="c.pt"), "unknown key 'model.chekpoint'"),
        (lambda j: j.update(gird={"x": [0, 1, 3]}), "unknown key 'gird'"),
        (lambda j: j.update(directions={"norm": "filtr"}), "directions.norm: 'filtr' is not allowed"),
        (lambda j: j.update(grid={"x": [0, 1]}), "grid.x: expected a list [float, float, int]"),
        (lambda j: j.update(grid={"x": [0, 1, 2.5]}), "grid.x[2]: expected int"),
        (lambda j: j.update(data={"batch_size": "big"}), "data.batch_size: 'big' is not allowed"),
        (lambda j: j.update(data={"seed": True}), "data.seed: expected int"),
        (lambda j: j.update(metrics=["hessain"]), "metrics[0]: 'hessain' is not allowed"),
        (lambda j: j.pop("name"), "missing required key 'name'"),
        (lambda j: j["model"].pop("checkpoint"), "model.checkpoint is required"),
    ],
)
def test_schema_refuses_what_the_loader_refuses(change, loader_says):
    job = json.loads(json.dumps(MINIMAL))
    change(job)
    with pytest.raises(JobError, match=loader_says.replace("[", r"\[")):
        from_dict(Job, job)
    assert list(validator("job").iter_errors(job)), f"the schema accepts a job the loader refuses: {loader_says}"


def test_schema_accepts_a_resolved_job_and_a_minimal_one():
    check = validator("job")
    assert not list(check.iter_errors(MINIMAL))
    resolved = to_dict(load_job(REPO / "jobs" / "vgg56.yaml"))  # every key given, defaults written out
    assert not list(check.iter_errors(resolved))
    training = {"name": "t", "model": {"arch": "resnet20"}, "train": {"epochs": 2, "milestones": [0.5]}}
    assert not list(validator("train-job").iter_errors(training))
    assert list(validator("train-job").iter_errors({**training, "directions": {}})), "sweep keys are not training keys"


def leaves(tree: dict, prefix: str = "") -> dict:
    """Flat {'a.b': value} of a nested mapping."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("kwargs",):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize(("cls", "command"), [(Job, "llmpi.sweep"), (TrainJob, "llmpi.train")])
def test_keys_lists_every_key_with_default_and_reason_without_torch_or_mpi(cls, command):
    code = (
        f"import runpy, sys; sys.argv = ['{command}', '--keys']\n"
        f"try:\n    runpy.run_module('{command}', run_name='__main__')\n"
        f"except SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"assert 'torch' not in sys.modules and 'mpi4py' not in sys.modules, 'imported torch or mpi4py'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    # the defaults as the loader fills them in, for a job that gives only the required keys
    given = {"name": "x", "model": {"arch": "resnet8", "checkpoint": "c.pt"}}
    defaults = leaves(to_dict(from_dict(cls, given)))
    lines = text.splitlines()
    for path, value in defaults.items():
        head = next((i for i, line in enumerate(lines) if line.strip().startswith(f"{path}: ")), None)
        assert head is not None, f"{path} is not listed"
        line = lines[head]
        required = {"name", "model.checkpoint"} if cls is Job else {"name"}
        if path in required:
            assert line.endswith("(required)"), line
        elif path == "model.checkpoint":
            assert line.endswith("= null"), line  # training jobs do not need one
        elif path not in ("model.arch", "output", "spectrum.output", "directions.norm"):  # given, or derived
            # (the outputs from the name, the norm from directions.kind: their defaults show null)
            shown = line.rsplit(" = ", 1)[1]
            assert yaml.safe_load(shown) == value, (path, shown, value)
        assert lines[head + 1].startswith(" " * (path.count(".") * 2 + 4)) and lines[head + 1].strip(), (
            f"{path} has no reason under it"
        )


def test_sweep_without_a_job_or_keys_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "llmpi.sweep"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and "required: job" in done.stderr


def test_the_demo_sweeps_images_its_minimiser_was_trained_on_as_they_are():
    """θ* is the lowest point of the demo's picture only if it minimises the loss the sweep evaluates: the swept
    images must be among the training images, seen unaugmented, to the end of a decayed learning rate."""
    from llmpi.compute.data import SYNTHETIC_SIZES, subset_indices
    from llmpi.job.config import load

    sweep, train = load_job(REPO / "jobs" / "demo.yaml"), load(TrainJob, REPO / "jobs" / "train" / "demo.yaml")
    assert sweep.model.checkpoint == train.output
    assert (sweep.data.dataset, sweep.data.split) == (train.data.dataset, "train")
    total = SYNTHETIC_SIZES["train"]
    swept = set(subset_indices(total, sweep.data.subset, sweep.data.seed).tolist())
    assert swept <= set(subset_indices(total, train.data.subset, train.data.seed).tolist())
    assert not train.train.augment
    assert train.train.lr * train.train.gamma ** len(train.train.milestones) <= 1e-4
    assert (sweep.grid.x, sweep.grid.y) == ((-1.0, 1.0, 21), (-1.0, 1.0, 21))
