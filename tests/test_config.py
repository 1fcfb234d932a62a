"""Job files: every key the README documents, typos named with the nearest valid key, overrides YAML-typed."""

from __future__ import annotations

import pytest
import yaml

from llmpi.job.config import Job, load_job, to_yaml
from llmpi.job.errors import JobError

FULL = """
name: vgg56
model:
  arch: vgg56
  checkpoint: checkpoints/resnet56_noshort.pt
data:
  dataset: cifar10
  root: data
  split: train
  subset: null
  seed: 0
  batch_size: auto
directions:
  kind: random
  seed: 0
  norm: filter
  ignore: biasbn
  type: weights
grid:
  x: [-1.0, 1.0, 51]
  y: [-1.0, 1.0, 51]
  block: auto
output: surfaces/vgg56.h5
runtime:
  device: auto
  threads: auto
"""


def load_text(tmp_path, text, *overrides):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return load_job(path, overrides)


def test_a_job_with_every_key_loads(tmp_path):
    job = load_text(tmp_path, FULL)
    assert isinstance(job, Job)
    assert job.model.arch == "resnet56_noshort"  # vgg56 is the paper's name for it
    assert job.grid.x == (-1.0, 1.0, 51) and job.grid.y == (-1.0, 1.0, 51)
    assert job.grid.size == 51 * 51
    assert job.data.subset is None and job.data.batch_size == "auto"
    assert job.output == "surfaces/vgg56.h5"


def test_defaults_fill_in_and_output_follows_name(tmp_path):
    job = load_text(tmp_path, "name: small\nmodel: {arch: resnet20, checkpoint: c.pt}\n")
    assert job.output == "surfaces/small.h5"
    assert job.grid.y is None and job.grid.x == (-1.0, 1.0, 51)
    assert job.directions.norm == "filter" and job.directions.ignore == "biasbn"


def test_resolved_yaml_round_trips(tmp_path):
    job = load_text(tmp_path, FULL)
    again = load_text(tmp_path, to_yaml(job))
    assert again == job


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: a\nmodel: {arch: resnet20, chekpoint: c.pt}\n",
            "unknown key 'model.chekpoint'; did you mean 'checkpoint'",
        ),
        ("name: a\nmodel: {arch: resnet20}\ngird: {x: [0, 1, 3]}\n", "unknown key 'gird'; did you mean 'grid'"),
        (
            "name: a\nmodel: {arch: resnet20}\ndirections: {norm: filtr}\n",
            "'filtr' is not allowed; did you mean 'filter'",
        ),
        ("name: a\nmodel: {arch: resnet20}\ngrid: {x: [0, 1, 0]}\n", "grid.x: num must be at least 1"),
        ("name: a\nmodel: {arch: resnet20}\ngrid: {x: [1, 0, 5]}\n", "grid.x: min 1.0 is greater than max 0.0"),
        ("name: a\nmodel: {arch: resnet20}\ngrid: {x: [0, 1]}\n", "grid.x: expected a list [float, float, int]"),
        ("name: a\nmodel: {arch: resnet20}\ngrid: {x: [0, 1, 2.5]}\n", "grid.x[2]: expected int, got 2.5"),
        ("name: a\nmodel: {arch: resnet20}\ndata: {subset: 0}\n", "data.subset must be null or a positive"),
        ("name: a\nmodel: {arch: resnet20}\ndata: {batch_size: big}\n", "data.batch_size: 'big' is not allowed"),
        ("name: a\nmodel: {arch: resnet20}\nruntime: {threads: -2}\n", "runtime.threads must be 'auto' or a positive"),
        ("name: a\nmodel: {arch: resnet21}\n", "unknown architecture 'resnet21'; did you mean"),
        ("model: {arch: resnet20}\n", "missing required key 'name'"),
        ("name: a\nmodel: {checkpoint: c.pt}\n", "missing required key 'model.arch'"),
        ("name: a\nmodel: [resnet20]\n", "model: expected a mapping"),
        ("- just\n- a list\n", "must be a mapping of keys"),
        ("name: a\nmodel: {arch: resnet20\n", "is not valid YAML at line"),
        ("name: a\nmodel: {arch: resnet20}\ndata: {seed: true}\n", "data.seed: expected int, got True"),
    ],
)
def test_bad_jobs_name_the_key_and_the_fix(tmp_path, text, expected):
    with pytest.raises(JobError) as e:
        load_text(tmp_path, text)
    assert expected in str(e.value)


def test_set_overrides_are_yaml_typed_and_checked(tmp_path):
    job = load_text(
        tmp_path,
        FULL,
        "grid.x=[-0.5,0.5,21]",
        "output=surfaces/zoom.h5",
        "data.subset=1000",
        "grid.y=null",
        "runtime.threads=4",
    )
    assert job.grid.x == (-0.5, 0.5, 21) and job.grid.y is None
    assert job.output == "surfaces/zoom.h5" and job.data.subset == 1000 and job.runtime.threads == 4
    with pytest.raises(JobError, match="unknown key 'grid.z'; did you mean 'grid.x'|unknown key 'grid.z'"):
        load_text(tmp_path, FULL, "grid.z=[0,1,3]")
    with pytest.raises(JobError, match="expects key=value"):
        load_text(tmp_path, FULL, "grid.x")
    with pytest.raises(JobError, match="'grid.x' is a value, not a section"):
        load_text(tmp_path, FULL, "grid.x.y=3")
    with pytest.raises(JobError, match="unknown key 'runtim'"):
        load_text(tmp_path, FULL, "runtim.threads=2")


def test_missing_job_file_is_a_job_error(tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")


def test_job_yaml_is_plain_yaml(tmp_path):
    text = to_yaml(load_text(tmp_path, FULL))
    assert yaml.safe_load(text)["grid"]["x"] == [-1.0, 1.0, 51]


@pytest.mark.parametrize(
    ("kind", "grid", "cautioned"),
    [
        ("interpolate", "{x: [-0.5, 1.5, 9]}", True),
        ("interpolate", "{x: [0.0, 1.2, 9]}", True),
        ("interpolate", "{x: [0.0, 1.0, 9]}", False),
        ("plane", "{x: [0.0, 1.0, 5], y: [0.0, 0.0, 1]}", False),  # the edge α + β <= 1 of the triangle
        ("plane", "{x: [-0.5, 1.5, 5], y: [-0.5, 1.5, 5]}", True),
        ("plane", "{x: [0.0, 1.0, 5], y: [0.0, 1.0, 5]}", True),  # (1, 1) is outside the triangle
    ],
)
def test_states_beyond_the_models_is_cautioned_with_the_alternative(tmp_path, kind, grid, cautioned):
    third = "checkpoint3: c.pt, " if kind == "plane" else ""
    text = (
        f"name: a\nmodel: {{arch: resnet20, checkpoint: a.pt, checkpoint2: b.pt, {third}}}\n"
        f"directions: {{kind: {kind}, type: states}}\ngrid: {grid}\n"
    )
    job = load_text(tmp_path, text)
    assert bool(job.cautions) == cautioned
    if cautioned:
        (caution,) = job.cautions
        assert "running variances" in caution and "directions.type: weights with evaluation.bn: recalibrate" in caution
    weights = load_text(tmp_path, text.replace("type: states", "type: weights"))
    assert weights.cautions == [], "weights leave the statistics alone: nothing to extrapolate"


def test_no_checked_in_job_is_cautioned():
    from conftest import REPO

    for path in sorted((REPO / "jobs").glob("*.yaml")):
        assert load_job(path).cautions == [], path.name


@pytest.mark.parametrize("text", ["1e-8", "1E-8", "+1e-08", "1.e-8", "0.00000001"])
def test_float_keys_take_exponents_without_a_dot(tmp_path, text):
    """PyYAML (YAML 1.1) reads 1e-8 as a string; a float key takes it as the number, in the file and in --set."""
    assert isinstance(yaml.safe_load(f"tol: {text}")["tol"], (str, float))  # 1e-8 and 1E-8 are strings there
    in_file = load_text(tmp_path, FULL + f"metrics: [hessian]\nhessian:\n  tol: {text}\n")
    assert in_file.hessian.tol == 1e-8 and type(in_file.hessian.tol) is float
    assert load_text(tmp_path, FULL, f"hessian.tol={text}").hessian.tol == 1e-8


@pytest.mark.parametrize("text", ["1e-8x", "e-8", "tiny", "1e", "1e-8 1"])
def test_a_float_key_still_refuses_what_is_no_number(tmp_path, text):
    with pytest.raises(JobError, match=r"hessian.tol: expected float, got"):
        load_text(tmp_path, FULL, f"hessian.tol={text}")


def test_an_integer_key_does_not_take_a_float_string(tmp_path):
    with pytest.raises(JobError, match=r"hessian.max_hvps: expected int, got '1e3'"):
        load_text(tmp_path, FULL, "hessian.max_hvps=1e3")


def test_the_hessians_parameter_set_follows_the_directions_unless_it_has_its_own(tmp_path):
    job = load_text(tmp_path, FULL)
    assert job.hessian.ignore is None and job.hessian.parameters(job.directions) == "biasbn"
    own = load_text(tmp_path, FULL, "hessian.ignore=none")
    assert own.hessian.parameters(own.directions) == "none"
    with pytest.raises(JobError, match=r"hessian.ignore: 'al' is not allowed"):
        load_text(tmp_path, FULL, "hessian.ignore=al")


def test_the_hessians_own_parameter_set_is_in_the_fingerprint_only_when_it_differs(tmp_path):
    """A Hessian job written before hessian.ignore existed keeps its fingerprint (and resumes): the key is
    recorded only when it names another set than directions.ignore, which the fingerprint holds already."""
    from llmpi.compute.data import DatasetInfo
    from llmpi.ranks.fingerprint import Identity, fingerprint

    identity = Identity("0" * 64, {"train": DatasetInfo("cifar10", "train", 50000, 64, "1" * 64)})
    hessian = FULL + "metrics: [hessian]\n"
    before = fingerprint(load_text(tmp_path, hessian), identity)["hessian"]
    assert set(before) == {"tol", "max_hvps", "basis", "images", "seed", "batch_size"}  # as the last release's
    assert fingerprint(load_text(tmp_path, hessian, "hessian.ignore=biasbn"), identity)["hessian"] == before
    own = fingerprint(load_text(tmp_path, hessian, "hessian.ignore=none"), identity)["hessian"]
    assert own == {**before, "ignore": "none"}
