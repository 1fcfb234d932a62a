"""Directions stored as a recipe: the generator against an independent pure-Python computation, the recipe's
normalisations against numpy, its size, the proof on resume, and the file layout (status, materialise)."""

from __future__ import annotations

import hashlib
import math
import statistics

import numpy as np
import pytest
import torch

from llmpi.space import checkpoint, recipe
from llmpi.space.directions import perturbed_entries
from llmpi.space.recipe import EntryRecipe, Recipe, entry_key, normal, plan_random, quantile_table, spans

MASK = (1 << 64) - 1


def reference_normal(key: int, index: int) -> float:
    """Element ``index`` of the generator, in plain Python integers and floats (splitmix64, then Φ⁻¹ from the
    table), written here from the module docstring's definition."""
    z = (key + (index + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z ^= z >> 31
    odd = 2 * (z & ((1 << 52) - 1)) + 1
    octave = odd.bit_length() - 1
    position = (odd - (1 << octave)) * recipe.CELLS / (1 << octave)
    cell = octave * recipe.CELLS + int(position)
    table = quantile_table()
    value = float(np.float32(table[cell] + (position - int(position)) * (table[cell + 1] - table[cell])))
    return -value if z >> 63 else value


@pytest.fixture(scope="module")
def table():
    return torch.from_numpy(quantile_table())


def test_generator_is_the_documented_function_of_key_and_index(table):
    key = entry_key(7, 1, "layer1.0.conv1.weight") & MASK
    got = normal(entry_key(7, 1, "layer1.0.conv1.weight"), 1000, 200, table).tolist()
    assert got == [reference_normal(key, i) for i in range(1000, 1200)]


def test_generator_is_addressable_any_split_gives_the_same_bits(table):
    whole = normal(12345, 0, 5000, table)
    parts = torch.cat([normal(12345, a, b - a, table) for a, b in [(0, 1), (1, 777), (777, 4096), (4096, 5000)]])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, normal(12346, 0, 5000, table))
    keys = {entry_key(s, a, n) for s in (0, 1) for a in (0, 1) for n in ("w", "v")}
    assert len(keys) == 8  # seed, axis and entry each change the key


def test_generator_is_standard_normal(table):
    x = np.sort(normal(entry_key(0, 0, "w"), 0, 400_000, table).double().numpy())
    assert abs(x.mean()) < 5e-3 and abs(x.std() - 1) < 5e-3
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    ks = np.max(np.abs(cdf - np.arange(1, len(x) + 1) / len(x)))
    assert ks < 3e-3  # Kolmogorov-Smirnov: a 400k-sample draw from N(0,1) stays below 2.7e-3 with p = 0.999
    assert recipe.interpolation_error(4000) < 1.3e-6  # the table's Φ⁻¹ against NormalDist's
    assert quantile_table()[0] == pytest.approx(-statistics.NormalDist().inv_cdf(2.0**-54))


def test_spans_cover_each_entry_without_splitting_rows_unevenly():
    assert spans(10, 5, 12) == [(0, 10)]
    assert spans(12, 3, 7) == [(0, 6), (6, 12)]
    assert spans(10, 5, 3) == [(0, 3), (3, 5), (5, 8), (8, 10)]
    for numel, row, chunk in [(60, 6, 13), (60, 60, 7), (1, 1, 4)]:
        pieces = spans(numel, row, chunk)
        assert [a for a, _ in pieces[1:]] == [b for _, b in pieces[:-1]] and pieces[-1][1] == numel


@pytest.fixture(scope="module")
def resnet8(fixture_data):
    model = checkpoint.load_model(fixture_data.arch, fixture_data.checkpoint)
    return {k: v.detach() for k, v in perturbed_entries(model, "weights").items()}


@pytest.mark.parametrize("norm", ["filter", "layer", "weight", "none"])
def test_recipe_normalises_like_the_paper(resnet8, norm, table):
    r = plan_random(resnet8, seed=4, norm=norm, ignore="biasbn", type="weights", axes=2, chunk=300)
    maker = r.on("cpu")
    for k, e in enumerate(r.entries):
        w = resnet8[e.name].double().numpy()
        if w.ndim <= 1:
            assert e.mode == "zero"
            continue
        d = [maker.entry(a, k, 1000, resnet8[e.name]).double().numpy() for a in (0, 1)]
        raw = normal(e.keys[0], 0, e.numel, table).double().numpy().reshape(w.shape)
        if norm == "filter":  # every filter at its weight's filter norm, numpy as the reference
            for i in range(w.shape[0]):
                assert np.linalg.norm(d[0][i]) == pytest.approx(np.linalg.norm(w[i]), rel=1e-5)
        elif norm == "layer":
            assert np.linalg.norm(d[1]) == pytest.approx(np.linalg.norm(w), rel=1e-5)
        elif norm == "weight":
            assert np.allclose(d[0], raw * w, rtol=1e-6, atol=0)
        else:
            assert np.array_equal(d[0], raw)
        assert not np.array_equal(d[0], d[1])  # x and y differ


def test_recipe_copies_one_dimensional_entries_with_ignore_none(resnet8):
    r = plan_random(resnet8, seed=0, norm="filter", ignore="none", type="weights", axes=1)
    maker = r.on("cpu")
    k = next(k for k, e in enumerate(r.entries) if e.name == "bn1.weight")
    assert r.entries[k].mode == "copy"
    assert torch.equal(maker.entry(0, k, 64, resnet8["bn1.weight"]), resnet8["bn1.weight"])


def test_recipe_chunking_and_plan_device_do_not_change_values(resnet8):
    a = plan_random(resnet8, seed=1, norm="filter", ignore="biasbn", type="weights", axes=2, chunk=1 << 20)
    b = plan_random(resnet8, seed=1, norm="filter", ignore="biasbn", type="weights", axes=2, chunk=100)
    k = next(k for k, e in enumerate(a.entries) if e.mode == "filter" and e.row > 100)
    for s_a, s_b in zip(a.entries[k].scales, b.entries[k].scales):
        assert np.allclose(s_a, s_b, rtol=1e-6)  # float64 sums in another order: the same scale to float32
    d1 = a.on("cpu").entry(0, k, 1 << 20)
    d2 = a.on("cpu").entry(0, k, 37)  # pieces of one row each
    assert torch.equal(d1, d2)


def test_recipe_round_trips_and_proves_itself(resnet8):
    r = plan_random(resnet8, seed=2, norm="filter", ignore="biasbn", type="weights", axes=2)
    back = Recipe.from_arrays(r.to_arrays())
    assert back.describe() == r.describe() and [e.keys for e in back.entries] == [e.keys for e in r.entries]
    for e, f in zip(r.entries, back.entries):
        assert all(np.array_equal(s, t) for s, t in zip(e.scales, f.scales))
    back.check_entries(resnet8)
    back.verify("cpu")
    wrong = Recipe.from_arrays(r.to_arrays())
    wrong.entries[3].probes[1] = "0" * 16
    with pytest.raises(ValueError, match=rf"entry {wrong.entries[3].name!r} of direction y: this device"):
        wrong.verify("cpu")
    other = dict(resnet8)
    other["linear.weight"] = torch.zeros(12, 64)
    with pytest.raises(ValueError, match=r"made for entry 'linear.weight' of shape \(10, 64\).*\(12, 64\)"):
        back.check_entries(other)
    arrays = r.to_arrays()
    arrays["table"] = arrays["table"].copy()
    arrays["table"][5] += 1e-9
    with pytest.raises(ValueError, match="quantile table does not match its checksum"):
        Recipe.from_arrays(arrays)


def test_recipe_of_a_300m_parameter_network_is_under_10_mb():
    """The shapes of a 355 M-parameter GPT-2 medium (24 blocks of width 1024, 50257-token vocabulary): the
    recipe's arrays, scales of every filter included, as the file stores them."""
    shapes = [("wte", (50257, 1024)), ("wpe", (1024, 1024))]
    for b in range(24):
        shapes += [(f"h.{b}.ln_1.weight", (1024,)), (f"h.{b}.attn.c_attn.weight", (1024, 3072))]
        shapes += [(f"h.{b}.attn.c_proj.weight", (1024, 1024)), (f"h.{b}.mlp.c_fc.weight", (1024, 4096))]
        shapes += [(f"h.{b}.mlp.c_proj.weight", (4096, 1024)), (f"h.{b}.ln_2.weight", (1024,))]
    parameters = sum(math.prod(s) for _, s in shapes)
    assert parameters > 300e6
    entries = [
        EntryRecipe(n, s, "filter", [1, 2], ["0" * 16] * 2, [np.ones(s[0], np.float32)] * 2)
        if len(s) > 1
        else EntryRecipe(n, s, "zero")
        for n, s in shapes
    ]
    r = Recipe(0, "filter", "biasbn", "weights", 2, quantile_table(), entries)
    size = sum(a.nbytes for a in r.to_arrays().values())
    assert size < 10e6 and size < parameters * 4 / 100  # under 1% of one float32 direction
    assert Recipe.from_arrays(r.to_arrays()).entries[1].scales[1].shape == (1024,)


def test_probe_is_a_hash_of_the_ends_of_the_entry(table):
    key = entry_key(3, 0, "w")
    ends = torch.cat([normal(key, 0, 64, table), normal(key, 936, 64, table)])
    assert recipe._probe(key, 1000, table) == hashlib.sha256(ends.numpy().tobytes()).hexdigest()[:16]


def test_difference_recipes_make_the_full_directions_bitwise(fixture_data, other_minimisers, resnet8):
    """interpolate and plane as recipes: θ2 − θ1 and θ3 − θ1 made piece by piece equal llmpi.space.between' full
    directions bit for bit; the Gram matrix is the plane's; a changed checkpoint fails the probe, naming the entry."""
    from llmpi.space import between as paths
    from llmpi.space.recipe import plan_difference

    second, third = (checkpoint.read_state_dict(p) for p in other_minimisers)
    r, gram = plan_difference(resnet8, [("checkpoint2", second), ("checkpoint3", third)], "plane", "weights", chunk=500)
    plane = paths.plane_through(resnet8, second, third)
    maker = r.on("cpu")
    for k, e in enumerate(r.entries):
        for axis in (0, 1):
            assert torch.equal(maker.entry(axis, k, 300, resnet8[e.name]), plane.directions[axis][e.name]), e.name
    flat = [torch.cat([d[n].double().reshape(-1) for n in resnet8]) for d in plane.directions]
    assert np.allclose(gram, [[float(a @ b) for b in flat] for a in flat], rtol=1e-12)
    back = Recipe.from_arrays(r.to_arrays())
    assert back.sources == ["checkpoint2", "checkpoint3"] and back.kind == "plane"
    back.others = {"checkpoint2": second, "checkpoint3": third}
    back.verify("cpu", resnet8)
    changed = {**second, "conv1.weight": second["conv1.weight"] + 1e-3}
    back.others = {"checkpoint2": changed, "checkpoint3": third}
    with pytest.raises(ValueError, match="entry 'conv1.weight' of direction x: this device"):
        back.verify("cpu", resnet8)
    with pytest.raises(ValueError, match="model.checkpoint2 lacks entry 'conv1.weight'"):
        plan_difference(resnet8, [("checkpoint2", {k: v for k, v in second.items() if k != "conv1.weight"})],
                        "interpolate", "weights")  # fmt: skip


def test_pca_directions_cannot_be_a_recipe():
    from llmpi.job.config import DirectionsSpec, from_dict
    from llmpi.job.errors import JobError

    with pytest.raises(JobError, match="kind pca's components come from a trajectory .* directions.store: full"):
        from_dict(DirectionsSpec, {"kind": "pca", "trajectory": "runs/x", "store": "recipe"})
    assert from_dict(DirectionsSpec, {"kind": "plane", "store": "recipe"}).store == "recipe"
