"""Where θ* and the directions are held (llmpi.space.theta) and where the data are (llmpi.compute.batches): every
holding and placement gives the same bits, θ is formed in float32 and rounded once, and the lean holdings keep θ* in its
own dtype and only one piece of scratch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmpi.compute import batches, data
from llmpi.compute.evaluate import Evaluator
from llmpi.job.errors import JobError
from llmpi.space import checkpoint
from llmpi.space import theta as weights
from llmpi.space.directions import perturbed_entries, random_directions
from llmpi.space.recipe import plan_random

POINTS = [(0.0, 0.0), (0.3, -0.2), (-0.7, 0.5)]


@pytest.fixture(scope="module")
def setup(fixture_data):
    model = checkpoint.load_model(fixture_data.arch, fixture_data.checkpoint)
    entries = {k: v.detach() for k, v in perturbed_entries(model, "weights").items()}
    im, lab, _ = data.load_images("cifar10", fixture_data.root, "train", 48, 0)
    return fixture_data, entries, data.normalize(im), torch.as_tensor(lab)


def evaluator(setup, directions, **options):
    fx, _, x, y = setup
    model = checkpoint.load_model(fx.arch, fx.checkpoint)
    if options.pop("bf16_checkpoint", False):
        model = model.to(torch.bfloat16)
    return Evaluator(model, directions, x, y, 16, **options)


@pytest.mark.parametrize("kind", ["recipe", "full"])
def test_every_holding_gives_the_same_bits(setup, kind):
    _, entries, _, _ = setup
    if kind == "recipe":
        dirs = plan_random(entries, seed=3, norm="filter", ignore="biasbn", type="weights", axes=2)
        holdings = ["device", "host", "regenerate"]
    else:
        dirs = random_directions(entries, seed=3, norm="filter", ignore="biasbn")
        holdings = ["device", "host"]
    evs = [evaluator(setup, dirs, hold_directions=h) for h in holdings]
    assert [ev.weights.holding for ev in evs] == holdings
    reference = evs[0].many(POINTS)
    for ev in evs[1:]:
        assert ev.many(POINTS) == reference
        ev.move_to((0.4, -0.9))
        evs[0].move_to((0.4, -0.9))
        assert all(torch.equal(a, b) for a, b in zip(ev.targets, evs[0].targets))


def test_lean_holdings_keep_bf16_theta_and_round_once(setup):
    """A bf16 checkpoint: θ* stays bf16 on the device (half the bytes), θ = θ* + a·δ + b·η is formed in float32
    and rounded once to bf16 -- exactly what a hand computation in float32 gives."""
    _, entries, _, _ = setup
    r = plan_random(entries, seed=1, norm="filter", ignore="biasbn", type="weights", axes=2)
    lean = evaluator(setup, r, hold_directions="regenerate", precision="bf16", bf16_checkpoint=True)
    held = evaluator(setup, r, hold_directions="device", precision="bf16", bf16_checkpoint=True)
    assert {t.dtype for t in lean.weights.base} == {torch.bfloat16}
    assert {t.dtype for t in held.weights.base} == {torch.float32}
    a, b = 0.37, -1.1
    lean.move_to((a, b))
    maker = r.on("cpu")
    index = {e.name: k for k, e in enumerate(r.entries)}
    for name, target in zip(lean.names, lean.targets):
        theta = entries[name].to(torch.bfloat16).float()
        d = [maker.entry(axis, index[name], 1 << 20, theta) for axis in (0, 1)]
        # float32 throughout (torch.add with alpha: θ + a·δ as one operation per element), then one rounding
        expected = torch.add(torch.add(theta, d[0], alpha=a), d[1], alpha=b).to(torch.bfloat16)
        assert torch.equal(target, expected), name
    assert lean.many(POINTS) == held.many(POINTS)
    # beyond θ* in bf16: one piece of float32 scratch, and one entry's worth for the conv kernels the CPU keeps in
    # channels_last (formed contiguous, then copied in)
    scratch = lean.weights.scratch.numel() * 4 + lean.weights.whole.numel() * 4
    assert lean.weights.whole.numel() == max(t.numel() for t in lean.weights.base if t.dim() == 4)
    assert lean.weights.device_bytes() == sum(t.numel() * 2 for t in lean.weights.base) + scratch
    assert held.weights.device_bytes() >= sum(t.numel() * 4 * 3 for t in held.weights.base)


def test_holding_policy_follows_the_size_and_refuses_what_cannot_be():
    lean = weights.LEAN_PARAMETERS
    assert weights.choose_holding("auto", lean, recipe=True) == "device"
    assert weights.choose_holding("auto", lean + 1, recipe=True) == "regenerate"
    assert weights.choose_holding("auto", lean + 1, recipe=False) == "host"
    assert weights.choose_holding("host", 10, recipe=True) == "host"
    with pytest.raises(JobError, match="regenerate needs directions.store: recipe"):
        weights.choose_holding("regenerate", 10, recipe=False)
    from llmpi.job.config import Job, from_dict

    job = {
        "name": "j",
        "model": {"arch": "resnet8", "checkpoint": "m.pt"},
        "runtime": {"hold_directions": "regenerate"},
    }
    with pytest.raises(JobError, match="set directions.store: recipe .or auto., or hold_directions: device or host"):
        from_dict(Job, {**job, "directions": {"store": "full"}})
    assert from_dict(Job, job).runtime.hold_directions == "regenerate"  # store auto: decided by the size


def test_host_placement_on_a_cpu_is_the_device_views_no_copies(setup):
    """On a CPU the host is the device: both placements hold the selection where it lies and hand out views of
    it; a memory-mapped selection stays mapped; the values are the same bits."""
    _, entries, x, y = setup
    dirs = random_directions(entries, seed=0, norm="filter", ignore="biasbn")
    on_device = evaluator(setup, dirs, placement="device")
    on_host = evaluator(setup, dirs, placement="host")
    assert (on_host.batches.placement, on_host.batches.overlapped) == ("host", False)
    assert "on a CPU the host is the device" in on_host.batches.describe()
    assert on_host.many(POINTS) == on_device.many(POINTS)
    source = batches.make_source(x, y, "cpu", "host")
    for start, stop, bx, by in source(len(y), 20):
        assert bx.data_ptr() == x[start].data_ptr() and torch.equal(by, y[start:stop])


def test_memory_mapped_selection_stays_mapped(tmp_path):
    tokens = np.memmap(tmp_path / "t.bin", dtype=np.int32, mode="w+", shape=(64, 8))
    tokens[:] = np.arange(512).reshape(64, 8)
    tokens.flush()
    mapped = torch.from_numpy(np.memmap(tmp_path / "t.bin", dtype=np.int32, mode="c", shape=(64, 8)))
    source = batches.make_source(mapped, mapped[:, 0], "cpu", "auto")
    got = list(source(64, 30))
    assert [b[0] for b in got] == [0, 30, 60] and got[1][2].data_ptr() == mapped[30].data_ptr()


def test_device_placement_that_does_not_fit_says_what_is_needed(monkeypatch):
    monkeypatch.setattr(batches, "free_device_memory", lambda device: 1 << 30)
    x = torch.zeros(1, 1024 * 512).expand(1024, -1)  # 2 GiB of inputs as far as their size goes, 2 MiB in memory
    y = torch.zeros(1024, dtype=torch.int64)
    with pytest.raises(JobError, match=r"needs 2\.00 GiB of cuda:0 .* 1\.00 GiB is free .* data\.placement: host"):
        batches.make_source(x, y, "cuda:0", "device")
    assert batches.resolve_placement("auto", 1 << 29, 1 << 30) == "device"
    assert batches.resolve_placement("auto", (1 << 29) + 1, 1 << 30) == "host"
    with pytest.raises(ValueError, match="data.placement must be one of auto, device, host"):
        batches.make_source(x, y, "cpu", "disk")
