"""Directions: Gaussian, seeded, filter-normalised exactly as the paper defines it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmpi import models
from llmpi.space.directions import perturbed_entries, random_directions


@pytest.fixture
def weights():
    torch.manual_seed(1)
    model = models.build("resnet8")
    with torch.no_grad():  # non-trivial BN parameters and statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1, 1)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model


def test_filter_norm_matches_each_filter_of_the_weight(weights):
    entries = {k: v.detach() for k, v in perturbed_entries(weights, "weights").items()}
    (d,) = random_directions(entries, seed=0, norm="filter", ignore="biasbn", count=1)
    checked = 0
    for name, w in entries.items():
        if w.dim() <= 1:
            continue
        for i in range(w.shape[0]):  # one filter at a time, with numpy as the independent reference
            wn = np.linalg.norm(w[i].numpy().astype(np.float64))
            dn = np.linalg.norm(d[name][i].numpy().astype(np.float64))
            assert dn == pytest.approx(wn, rel=1e-5)
            checked += 1
    assert checked > 100  # conv output channels and the linear layer's 10 rows


def test_biasbn_zero_and_none_copies_the_weight(weights):
    entries = {k: v.detach() for k, v in perturbed_entries(weights, "weights").items()}
    (zeroed,) = random_directions(entries, seed=0, norm="filter", ignore="biasbn", count=1)
    (copied,) = random_directions(entries, seed=0, norm="filter", ignore="none", count=1)
    one_dim = [k for k, w in entries.items() if w.dim() <= 1]
    assert "bn1.weight" in one_dim and "linear.bias" in one_dim
    for k in one_dim:
        assert not zeroed[k].any()
        assert torch.equal(copied[k], entries[k])
    for k in entries:
        if entries[k].dim() > 1:
            assert torch.equal(zeroed[k], copied[k])


def test_layer_weight_and_none_norms(weights):
    entries = {k: v.detach() for k, v in perturbed_entries(weights, "weights").items()}
    raw = {}
    g = torch.Generator().manual_seed(5)
    for k, w in entries.items():
        raw[k] = torch.randn(w.shape, generator=g)
    (layer,) = random_directions(entries, 5, "layer", "biasbn", count=1)
    (weight,) = random_directions(entries, 5, "weight", "biasbn", count=1)
    (none,) = random_directions(entries, 5, "none", "biasbn", count=1)
    for k, w in entries.items():
        if w.dim() <= 1:
            continue
        assert torch.equal(none[k], raw[k])
        assert float(layer[k].norm()) == pytest.approx(float(w.norm()), rel=1e-5)
        assert torch.allclose(weight[k], raw[k] * w)


def test_seeded_and_x_differs_from_y(weights):
    entries = {k: v.detach() for k, v in perturbed_entries(weights, "weights").items()}
    a = random_directions(entries, 11, "filter", "biasbn")
    b = random_directions(entries, 11, "filter", "biasbn")
    c = random_directions(entries, 12, "filter", "biasbn")
    for k in entries:
        assert torch.equal(a[0][k], b[0][k]) and torch.equal(a[1][k], b[1][k])
    conv = "layer1.0.conv1.weight"
    assert not torch.equal(a[0][conv], a[1][conv])
    assert not torch.equal(a[0][conv], c[0][conv])


def test_states_include_running_statistics(weights):
    states = perturbed_entries(weights, "states")
    params = perturbed_entries(weights, "weights")
    assert "bn1.running_mean" in states and "bn1.running_mean" not in params
    assert not any("num_batches_tracked" in k for k in states)
    (d,) = random_directions({k: v.detach() for k, v in states.items()}, 0, "filter", "none", count=1)
    assert torch.equal(d["bn1.running_var"], weights.bn1.running_var)
