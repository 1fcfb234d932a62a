"""The evaluator against the obvious computation, and its independence from batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import brute_force

from llmpi import checkpoint, data
from llmpi.directions import perturbed_entries, random_directions
from llmpi.evaluate import Evaluator


def make(fx, batch_size, kind="weights", subset=64):
    model = checkpoint.load_model(fx.arch, fx.checkpoint)
    entries = {k: v.detach() for k, v in perturbed_entries(model, kind).items()}
    dirs = random_directions(entries, seed=2, norm="filter", ignore="biasbn" if kind == "weights" else "none")
    im, lab, _ = data.load_images("cifar10", fx.root, "train", subset, 0)
    ev = Evaluator(model, dirs, data.normalize(im), torch.as_tensor(lab), batch_size, kind=kind)
    return ev, [{k: v.numpy() for k, v in d.items()} for d in dirs]


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
