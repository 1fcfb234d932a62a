"""The evaluator against the obvious computation, and its independence from batching."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import brute_force, job_dict, run_cli, write_job

from llmpi.compute import data
from llmpi.compute.evaluate import CORRECT, ROW, Evaluator, autotune, balanced, exact_sum, tally_
from llmpi.compute.forward import EAGER, ForwardPath
from llmpi.file.store import read_surface
from llmpi.space import checkpoint
from llmpi.space.directions import perturbed_entries, random_directions


def make(fx, batch_size, kind="weights", subset=64, **options):
    model = checkpoint.load_model(fx.arch, fx.checkpoint)
    entries = {k: v.detach() for k, v in perturbed_entries(model, kind).items()}
    dirs = random_directions(entries, seed=2, norm="filter", ignore="biasbn" if kind == "weights" else "none")
    im, lab, _ = data.load_images("cifar10", fx.root, "train", subset, 0)
    ev = Evaluator(model, dirs, data.normalize(im), torch.as_tensor(lab), batch_size, kind=kind, **options)
    return ev, [{k: v.numpy() for k, v in d.items()} for d in dirs]


def flat(results):
    """[(loss, acc), ...] -> [loss, acc, loss, acc, ...] for pytest.approx."""
    return [v for pair in results for v in pair]


@pytest.mark.parametrize("point", [(0.0, 0.0), (0.3, -0.2), (-1.0, 1.0)])
def test_matches_brute_force(fixture_data, point):
    ev, dirs = make(fixture_data, batch_size=16)
    loss, acc = ev(point)
    ref_loss, ref_acc = brute_force(fixture_data, dirs, point)
    assert loss == pytest.approx(ref_loss, rel=2e-5, abs=1e-6)
    assert acc == pytest.approx(ref_acc, abs=1e-9)  # counts: any difference would be a whole image


def test_states_directions_move_running_statistics(fixture_data):
    ev, dirs = make(fixture_data, batch_size=64, kind="states")
    assert "bn1.running_mean" in dirs[0] and np.any(dirs[0]["bn1.running_var"])
    loss, _ = ev((0.2, 0.1))
    ref, _ = brute_force(fixture_data, dirs, (0.2, 0.1))
    assert loss == pytest.approx(ref, rel=2e-5)


def test_each_point_starts_from_the_untouched_minimiser(fixture_data):
    ev, _ = make(fixture_data, batch_size=64)
    first = ev((0.0, 0.0))
    for p in [(0.5, 0.5), (-0.7, 0.1), (1.0, -1.0)]:
        ev(p)
    assert ev((0.0, 0.0)) == first  # bitwise: no drift from accumulated steps
    a = ev((0.25, -0.5))
    ev((1.0, 1.0))
    assert ev((0.25, -0.5)) == a


def test_batch_size_changes_only_float_rounding(fixture_data):
    results = [make(fixture_data, batch_size=b)[0]((0.4, -0.3)) for b in (7, 32, 64)]
    losses = [r[0] for r in results]
    assert max(losses) - min(losses) <= 1e-6 * abs(losses[0])
    assert len({r[1] for r in results}) == 1


def test_between_batches_hook_is_called_per_batch(fixture_data):
    ev, _ = make(fixture_data, batch_size=10)
    calls = []
    ev((0.0, 0.0), between_batches=lambda: calls.append(1))
    assert len(calls) == 7  # 64 images in batches of 10


# ---------------------------------------------------------------------------------------------------------------
# The exact tally, OOM shrinking, precision, tuning.


def per_image_losses(ev, point):
    """Per-image float32 losses at ``point`` the standard way: the network's logits, F.cross_entropy."""
    ev.move_to(point)
    with torch.no_grad():
        logits = ev.model(ev.images).float()
    ev.restore()
    return torch.nn.functional.cross_entropy(logits, ev.labels, reduction="none")


@pytest.mark.parametrize("batch_size", [64, 13])
def test_mean_is_the_correctly_rounded_sum_of_the_per_image_losses(fixture_data, batch_size):
    ev, _ = make(fixture_data, batch_size=batch_size)
    for point in [(0.0, 0.0), (0.4, -0.3), (-0.9, 0.6)]:
        losses = per_image_losses(make(fixture_data, batch_size=64)[0], point)
        expected = math.fsum(losses.double().tolist()) / len(losses)
        loss, _ = ev(point)
        if batch_size == 64:
            assert loss == expected  # bitwise: same kernels, and the sum is exactly rounded
        else:
            assert loss == pytest.approx(expected, rel=1e-6)


def test_tally_is_fsum_for_any_float32_values_and_order_independent():
    rng = np.random.default_rng(5)
    columns = []
    for scale in (-45, -38, -20, 0, 5, 30, 38):  # subnormals up to near float32's maximum, mixed in one row
        columns.append(rng.standard_normal(200) * 10.0**scale)
    v = np.concatenate([*columns, np.zeros(3), [-0.0, 2.0**-149, 3.4e38]]).astype(np.float32)
    rows = np.stack([v, np.abs(v), rng.permutation(v)])
    losses = torch.from_numpy(rows)
    hits = torch.zeros(losses.shape, dtype=torch.bool)
    tally = torch.empty(3, ROW, dtype=torch.float64)
    tally_(losses, hits, tally)
    got = [exact_sum(r) for r in tally.tolist()]
    assert got == [math.fsum(r.astype(np.float64).tolist()) for r in rows]
    assert got[0] == got[2]  # a permutation of the same values: the same bits


@pytest.mark.parametrize(
    "special, expected", [([1.0, math.nan, 2.0], math.nan), ([1.0, math.inf, 2.0], math.inf), ([1.5, 2.5], 4.0)]
)
def test_tally_of_non_finite_losses_follows_fsum(special, expected):
    losses = torch.tensor([special], dtype=torch.float32)
    tally = torch.empty(1, ROW, dtype=torch.float64)
    tally_(losses, torch.ones_like(losses, dtype=torch.bool), tally)
    (row,) = tally.tolist()
    assert exact_sum(row) == pytest.approx(expected, nan_ok=True)
    assert row[CORRECT] == len(special)


POINTS = [(0.0, 0.0), (0.3, -0.2), (-1.0, 1.0), (0.5, 0.5), (0.1, -0.7)]


@pytest.mark.parametrize("kind", ["weights", "states"])
def test_a_point_does_not_depend_on_its_neighbours_or_the_order(fixture_data, kind):
    """Blocks depend on the number of ranks and on what a resume left to do: on every forward path a point's value
    must depend on nothing but the point."""
    for path in (EAGER, ForwardPath(fold=True)):
        ev, _ = make(fixture_data, batch_size=24, kind=kind, fold=path.fold)
        reference = ev.many(POINTS)
        assert ev.many(POINTS[::-1]) == reference[::-1], path
        assert [ev(p) for p in POINTS] == reference, path


def fail_above(model, limit, error):
    """A forward pre-hook that raises ``error`` for batches larger than ``limit`` images (an injected OOM)."""

    def hook(module, args):
        if args[0].shape[0] > limit:
            raise error

    return model.register_forward_pre_hook(hook)


OOMS = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes."),
]


@pytest.mark.parametrize("error", OOMS, ids=["cuda", "cpu"])
def test_out_of_memory_halves_the_batch_and_gives_the_normal_result(fixture_data, error):
    normal, _ = make(fixture_data, batch_size=16)
    expected = normal.many(POINTS[:3])
    ev, _ = make(fixture_data, batch_size=64)
    ev.shrink_on_oom = True
    fail_above(ev.model, 16, error)
    with pytest.warns(RuntimeWarning, match="out of memory") as caught:
        got = ev.many(POINTS[:3])
    assert [str(w.message).split(";")[0][-13:] for w in caught] == ["with batch 64", "with batch 32"]
    assert got == expected and ev.batch_size == 16
    unbatched, _ = make(fixture_data, batch_size=64)
    assert flat(got) == pytest.approx(flat(unbatched.many(POINTS[:3])), rel=1e-6)


def test_out_of_memory_with_a_fixed_batch_says_what_to_set(fixture_data):
    ev, _ = make(fixture_data, batch_size=64)
    fail_above(ev.model, 16, OOMS[0])
    with pytest.raises(MemoryError, match="set data.batch_size smaller or to auto"):
        ev((0.1, 0.1))


def test_other_errors_are_not_taken_for_out_of_memory(fixture_data):
    ev, _ = make(fixture_data, batch_size=64)
    ev.shrink_on_oom = True
    fail_above(ev.model, 16, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        ev((0.1, 0.1))
    assert ev.batch_size == 64


def test_bf16_is_close_to_fp32_and_tf32_is_fp32_on_a_cpu(fixture_data):
    fp32 = make(fixture_data, batch_size=64)[0].many(POINTS[:3])
    bf16 = make(fixture_data, batch_size=64, precision="bf16")[0]
    assert bf16.images.dtype == torch.bfloat16 and bf16.weights.base[0].dtype == torch.float32
    got = bf16.many(POINTS[:3])
    assert [g[0] for g in got] == pytest.approx([f[0] for f in fp32], rel=3e-2)
    assert got != fp32
    assert make(fixture_data, batch_size=64, precision="tf32")[0].many(POINTS[:3]) == fp32
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16"):
        make(fixture_data, batch_size=64, precision="fp16")


def test_autotune_skips_small_jobs_and_probes_large_ones(fixture_data):
    ev, _ = make(fixture_data, batch_size=7, subset=48)
    small = autotune(ev, work_images=100)
    assert small.table == [] and ev.batch_size == 48 and "not probed" in small.describe()
    assert small.forward == ForwardPath() and ev.path == small.forward  # too little work for any choice to pay
    before = ev.many(POINTS[:2])
    tuned = autotune(ev, work_images=1e7, max_batch=192, compile=False)
    assert [b for b, _ in tuned.table] == [48]  # the CPU's first candidate is the data size; half is below the minimum
    assert [p for p, _ in tuned.paths] == ["eager", "folded"]  # both timed at the chosen batch
    assert ev.batch_size == tuned.batch_size and ev.path == tuned.forward
    assert tuned.images_per_second == max(r for _, r in tuned.paths)
    assert flat(ev.many(POINTS[:2])) == pytest.approx(flat(before), rel=1e-5)


def test_autotune_chooses_eager_for_a_tiny_job_without_compiling(fixture_data):
    """compile: auto probes eager and folded, and does not compile where the sweep is shorter than compiling."""
    ev, _ = make(fixture_data, batch_size=64, subset=64)
    tuned = autotune(ev, work_images=64 * 20, fold=False, budget_fraction=1.0)  # 20 points: seconds, probed
    assert tuned.forward == EAGER and tuned.compile_seconds is None and tuned.table
    assert "not compiled: the sweep needs" in tuned.describe()


@pytest.mark.parametrize("images, batch, expected", [(500, 64, 63), (512, 64, 64), (50000, 8192, 7143), (10, 64, 10)])
def test_balanced_batches_pad_less_than_one_image_per_batch(images, batch, expected):
    got = balanced(images, batch)
    batches = -(-images // got)
    assert got == expected and batches == -(-images // batch) and batches * got - images < batches


def test_autotune_halves_a_first_probe_that_does_not_fit_and_stops_before_larger_ones(fixture_data, recwarn):
    ev, _ = make(fixture_data, batch_size=7, subset=48)
    fail_above(ev.model, 12, OOMS[1])
    tuned = autotune(ev, work_images=1e7, max_batch=192, fold=False, compile=False)
    assert [b for b, _ in tuned.table] == [12]  # 48 and 24 ran out of memory; 24 is not probed again
    assert ev.batch_size == 12
    assert not [w for w in recwarn if "out of memory" in str(w.message)]  # probing is silent


# ---------------------------------------------------------------------------------------------------------------
# Through the real command line: what is decided once for all ranks, and what the fingerprint holds.


@pytest.fixture(scope="module")
def ranks_1_and_3(fixture_data, tmp_path_factory):
    """The same job on 3 ranks and on 1 rank with BatchNorm folded (``runtime.fold: true``; compile auto: too small
    a job to compile)."""
    d = tmp_path_factory.mktemp("ranks")
    out = {}
    for ranks in (3, None):
        job = job_dict(fixture_data, d / f"w{ranks}.h5", grid={"block": 4})
        job["runtime"]["fold"] = True
        result = run_cli("llmpi.sweep", str(write_job(d / f"w{ranks}.yaml", job)), ranks=ranks)
        assert result.returncode == 0, result.stderr
        assert ", folded (9 of 9 BatchNorm layers folded), fp32, deterministic kernels" in result.stdout
        out[ranks] = d / f"w{ranks}.h5"
    return d, out


@pytest.mark.mpi
def test_folded_sweep_is_rank_count_independent_and_right(fixture_data, ranks_1_and_3):
    _, files = ranks_1_and_3
    three, one = read_surface(files[3]), read_surface(files[None])
    assert three.complete and one.complete
    for name in ("train_loss", "train_acc"):
        assert np.array_equal(three.values[name], one.values[name])
    dirs = three.directions
    for j, i in [(0, 0), (1, 3), (3, 4)]:
        loss, acc = brute_force(fixture_data, dirs, (three.x[i], three.y[j]))
        assert three.values["train_loss"][j, i] == pytest.approx(loss, rel=2e-5)
        assert three.values["train_acc"][j, i] == pytest.approx(acc, abs=1e-9)
    setup = json.loads(files[3].with_name(files[3].name + ".run.json").read_text())["setup"]
    assert (setup["fold"], setup["compile"], setup["kernels"]) == (True, False, "deterministic")
    assert setup["compile_seconds"] == [0.0, 0.0, 0.0]


@pytest.mark.mpi
def test_precision_is_in_the_fingerprint_and_batch_or_forward_path_are_not(ranks_1_and_3):
    d, _ = ranks_1_and_3
    job = str(d / "w3.yaml")
    other = run_cli("llmpi.sweep", job, "--set", "runtime.precision=bf16", ranks=3)
    assert other.returncode == 2 and "precision: file 'fp32', job 'bf16'" in other.stderr
    same = run_cli(
        "llmpi.sweep", job, "--set", "runtime.fold=false", "--set", "runtime.kernels=fast",
        "--set", "data.batch_size=16", ranks=3,
    )  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert "20 already done" in same.stdout and "0 points in" in same.stdout


def test_runtime_keys_are_checked(tmp_path, fixture_data):
    from llmpi.job.config import load_job
    from llmpi.job.errors import JobError

    path = write_job(tmp_path / "job.yaml", job_dict(fixture_data, tmp_path / "x.h5"))
    job = load_job(path)
    rt = job.runtime
    assert (rt.precision, rt.compile, rt.fold, rt.kernels) == ("fp32", "auto", "auto", "deterministic")
    assert load_job(path, ["runtime.compile=true"]).runtime.compile is True  # old job files keep working
    assert load_job(path, ["runtime.compile=false", "runtime.fold=false"]).runtime.fold is False
    with pytest.raises(ValueError, match="runtime.precision: 'fp16' is not allowed"):
        load_job(path, ["runtime.precision=fp16"])
    with pytest.raises(JobError, match="runtime.kernels: 'fastest' is not allowed; did you mean 'fast'"):
        load_job(path, ["runtime.kernels=fastest"])
    with pytest.raises(JobError, match="runtime.compile: 'yes please' is not allowed; valid: auto or bool"):
        load_job(path, ["runtime.compile=yes please"])
    with pytest.raises(JobError, match="BatchNorm in train mode; set runtime.fold: auto"):
        load_job(path, ["runtime.fold=true", "evaluation.bn=recalibrate"])


def test_points_per_pass_is_gone_and_says_what_to_do(tmp_path, fixture_data):
    from llmpi.job.config import load_job
    from llmpi.job.errors import JobError

    raw = job_dict(fixture_data, tmp_path / "x.h5", runtime={"device": "cpu", "points_per_pass": 4})
    path = write_job(tmp_path / "old.yaml", raw)
    with pytest.raises(JobError, match="runtime.points_per_pass is gone: .* delete the key from the job file"):
        load_job(path)
    fresh = write_job(tmp_path / "job.yaml", job_dict(fixture_data, tmp_path / "x.h5"))
    with pytest.raises(JobError, match="--set: runtime.points_per_pass is gone"):
        load_job(fresh, ["runtime.points_per_pass=1"])


# ---------------------------------------------------------------------------------------------------------------
# On a GPU (skipped without one).

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch sees no GPU here")


def on_gpu(fx, batch_size, **options):
    model = checkpoint.load_model(fx.arch, fx.checkpoint)
    entries = {k: v.detach() for k, v in perturbed_entries(model, "weights").items()}
    dirs = random_directions(entries, seed=2, norm="filter", ignore="biasbn")
    im, lab, _ = data.load_images("cifar10", fx.root, "train", 64, 0)
    device = torch.device("cuda")
    x, y = data.normalize(im, device=device), torch.as_tensor(lab, device=device)
    return Evaluator(model, dirs, x, y, batch_size, **options)


@pytest.mark.gpu
@cuda
def test_gpu_values_match_the_cpu_repeat_bitwise_and_ignore_neighbours(fixture_data):
    cpu = make(fixture_data, batch_size=64)[0].many(POINTS)
    for fold in (False, True):
        gpu = on_gpu(fixture_data, batch_size=32, fold=fold)
        assert gpu.images.device.type == "cuda" and gpu.images.is_contiguous()  # fp32 on a GPU: NCHW
        values = gpu.many(POINTS)
        assert flat(values) == pytest.approx(flat(cpu), rel=1e-5)
        assert gpu.many(POINTS) == values
        assert gpu.many(POINTS[::-1]) == values[::-1] and [gpu(p) for p in POINTS] == values


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_gpu_reduced_precisions_stay_close(fixture_data, precision):
    reference = on_gpu(fixture_data, batch_size=64).many(POINTS)
    got = on_gpu(fixture_data, batch_size=64, precision=precision).many(POINTS)
    assert [g[0] for g in got] == pytest.approx([r[0] for r in reference], rel=3e-2)
    folded = on_gpu(fixture_data, batch_size=64, precision=precision, fold=True)
    assert folded.images.is_contiguous(memory_format=torch.channels_last)
    assert [w[0] for w in folded.many(POINTS)] == pytest.approx([g[0] for g in got], rel=1e-2)
    on_gpu(fixture_data, batch_size=64)  # puts fp32 (TF32 off) back for the tests after this one
    assert not torch.backends.cudnn.allow_tf32


@pytest.mark.gpu
@cuda
def test_gpu_compiled_follows_the_weights_from_point_to_point(fixture_data):
    eager = on_gpu(fixture_data, batch_size=32).many(POINTS)
    compiled = on_gpu(fixture_data, batch_size=24, compile=True, fold=True)  # 64 images: the last batch padded
    assert compiled.prepare() > 0
    assert flat(compiled.many(POINTS)) == pytest.approx(flat(eager), rel=1e-5)
    assert flat(compiled.many(POINTS[::-1])) == pytest.approx(flat(eager[::-1]), rel=1e-5)


@pytest.mark.gpu
@cuda
def test_gpu_fast_kernels_stay_within_1e_5_of_deterministic(fixture_data):
    from llmpi.compute import runtime

    deterministic = on_gpu(fixture_data, batch_size=32).many(POINTS)
    try:
        runtime.set_kernels("fast")
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        fast = on_gpu(fixture_data, batch_size=32).many(POINTS)
    finally:
        runtime.set_kernels("deterministic")
    assert flat(fast) == pytest.approx(flat(deterministic), rel=1e-5)
