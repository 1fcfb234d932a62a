"""Large networks on a GPU (skipped without CUDA): the recipe's numbers are the CPU's bit for bit, batches streamed
from host memory give the device placement's bits with copies overlapping compute, and the lean holding keeps a
bf16 network's peak device memory within 2.25x its weights."""

from __future__ import annotations

import pytest
import torch

from llmpi.compute import batches, data
from llmpi.compute.evaluate import Evaluator
from llmpi.space import checkpoint
from llmpi.space.directions import perturbed_entries, random_directions
from llmpi.space.recipe import entry_key, normal, plan_random, quantile_table

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch sees no GPU here"),
]


def test_generator_and_recipe_are_device_independent(fixture_data):
    table = torch.from_numpy(quantile_table())
    key = entry_key(5, 1, "w")
    for start, count in [(0, 1000), (123_456_789, 1 << 20)]:
        assert torch.equal(normal(key, start, count, table.cuda()).cpu(), normal(key, start, count, table))
    model = checkpoint.load_model(fixture_data.arch, fixture_data.checkpoint)
    entries = {k: v.detach() for k, v in perturbed_entries(model, "weights").items()}
    on_cpu = plan_random(entries, 0, "filter", "biasbn", "weights", 2, device="cpu")
    on_gpu = plan_random(entries, 0, "filter", "biasbn", "weights", 2, device="cuda")
    on_cpu.verify("cuda")  # the probes made on the CPU hold on the GPU
    k = next(k for k, e in enumerate(on_cpu.entries) if e.mode == "filter")
    assert torch.equal(on_cpu.on("cuda").entry(0, k, 1 << 20).cpu(), on_cpu.on("cpu").entry(0, k, 1 << 20))
    assert torch.allclose(torch.from_numpy(on_gpu.entries[k].scales[0]), torch.from_numpy(on_cpu.entries[k].scales[0]))


def test_streamed_batches_give_the_device_placements_bits(fixture_data):
    model = checkpoint.load_model(fixture_data.arch, fixture_data.checkpoint)
    entries = {k: v.detach() for k, v in perturbed_entries(model, "weights").items()}
    dirs = random_directions(entries, 0, "filter", "biasbn")
    im, lab, _ = data.load_images("cifar10", fixture_data.root, "train", 200, 0)
    x, y = data.normalize(im), torch.as_tensor(lab)
    points = [(0.0, 0.0), (0.3, -0.2), (-0.6, 0.9)]
    values = {}
    for placement in ("device", "host"):
        m = checkpoint.load_model(fixture_data.arch, fixture_data.checkpoint)
        ev = Evaluator(m, dirs, x, y, 48, placement=placement, device="cuda")
        assert ev.batches.placement == placement and ev.batches.overlapped == (placement == "host")
        values[placement] = ev.many(points)
    assert values["host"] == values["device"]
    source = batches.make_source(x, y, "cuda", "host")
    got = torch.cat([bx.cpu() for _, _, bx, _ in source(len(y), 64)])
    assert torch.equal(got, x)


def test_lean_bf16_sweep_peaks_within_2_25x_the_weights():
    """A 1 B-parameter bf16 network (2 GB of weights) with a random plane from a recipe: model, θ*, one piece of
    scratch, a small batch -- the peak device memory over building and five points stays under 2.25x."""
    from bench.memory import Network

    torch.manual_seed(0)
    with torch.device("meta"):
        net = Network(2048, 28)
    net = net.to_empty(device="cuda").to(torch.bfloat16)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02)
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    assert weight_bytes > 1.5e9
    entries = {k: v.detach() for k, v in net.named_parameters()}
    recipe = plan_random(entries, 0, "filter", "biasbn", "weights", 2, device="cuda")
    tokens = torch.randint(0, 8192, (4, 65))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    from bench.memory import loss
    from llmpi.compute.losses import FactoryLoss

    ev = Evaluator(
        net, recipe, tokens[:, :-1], tokens[:, 1:], 4, precision="bf16", device="cuda",
        loss=FactoryLoss("bench.memory:loss", loss), hold_directions="regenerate",
    )  # fmt: skip
    values = ev.many([(0.1 * k, -0.05 * k) for k in range(5)])
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    assert ev((0.0, 0.0)) == values[0]  # each point from the untouched θ*, bit for bit
    assert peak <= 2.25 * weight_bytes, f"peak {peak / 1e9:.2f} GB for {weight_bytes / 1e9:.2f} GB of weights"
