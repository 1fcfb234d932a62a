"""The compiled forward (llmpi.compute.forward): one compilation serves every point, the weights are graph inputs, one
static batch shape, and its values stay within the bound of the eager network's.

Compiling costs tens of seconds on a CPU, so the module compiles once: ``tinynet`` (tests/tinynet.py), folded,
on 20 images in batches of 8 (the last batch padded from 4 to 8 images).
"""

from __future__ import annotations

import copy

import pytest
import torch
from tinynet import TinyNet
from torch._dynamo.utils import counters

from llmpi.compute.evaluate import Evaluator
from llmpi.compute.forward import ForwardPath
from llmpi.space.directions import perturbed_entries, random_directions

POINTS = [(0.05 * (i % 10) - 0.2, 0.04 * (i // 10) - 0.2) for i in range(100)]  # a 10x10 grid
COMPILED_BOUND = 1e-5  # relative, in the loss, against the eager unfolded network (fold's own bound is tighter)


@pytest.fixture(scope="module")
def compiled():
    """A compiled folded evaluator, its eager twin, and dynamo's counters from before the compilation."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():  # BatchNorm that does something
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 1.5)
    images, labels = torch.randn(20, 3, 32, 32), torch.arange(20) % 10
    entries = {k: v.detach() for k, v in perturbed_entries(model, "states").items()}
    dirs = random_directions(entries, seed=1, norm="filter", ignore="none")
    original = copy.deepcopy(model)
    eager = Evaluator(copy.deepcopy(model), dirs, images, labels, 8, kind="states")
    counters.clear()
    ev = Evaluator(model, dirs, images, labels, 8, kind="states", fold=True, compile=True)
    seconds = ev.prepare()
    return ev, eager, seconds, dirs, images, labels, original


def test_one_graph_serves_a_100_point_sweep_in_blocks(compiled):
    ev, eager, seconds, *_ = compiled
    assert seconds > 0 and ev.network.compile_seconds == seconds
    values = []
    for block in range(10):  # as a sweep hands them out, with a settle (prepare) before some blocks
        values += ev.many(POINTS[10 * block : 10 * (block + 1)])
        if block % 3 == 0:
            assert ev.prepare() == 0.0  # already compiled: nothing to do
    assert counters["frames"]["total"] == 1 and counters["stats"]["unique_graphs"] == 1  # no recompilation
    assert not counters["graph_break"]
    reference = eager.many(POINTS[::9])
    for got, want in zip(values[::9], reference):
        assert got[0] == pytest.approx(want[0], rel=COMPILED_BOUND) and got[1] == want[1]
    # weights as inputs, not constants: the values follow the point (a constant graph would repeat the first one)
    assert len({v[0] for v in values}) == len(values)


def test_the_last_batch_is_padded_to_the_one_static_shape(compiled):
    ev, *_ = compiled
    assert ev.static_shapes and ev.batch_size == 8
    tail = ev._pad(ev.images[16:20], 16, 20)
    assert tail.shape[0] == 8 and torch.equal(tail[:4], ev.images[16:20]) and not tail[4:].any()
    assert ev._pad(ev.images[16:20], 16, 20) is tail  # made once, kept for every point
    assert ev._pad(ev.images[0:8], 0, 8).data_ptr() == ev.images.data_ptr()  # full batches as they come


def test_a_second_evaluator_of_the_same_network_reuses_the_compilation(compiled):
    """data.split: both builds one evaluator per split on one network: they share its compiled forward."""
    ev, _, _, dirs, images, labels, original = compiled
    ev.restore()  # an evaluator takes the network's weights as they are for θ*
    other = Evaluator(ev.model, dirs, images[:12].flip(0), labels[:12], 8, kind="states", fold=True, compile=True)
    assert other.network is ev.network and other.prepare() == 0.0
    got = other((0.1, -0.1))
    want = Evaluator(copy.deepcopy(original), dirs, images[:12].flip(0), labels[:12], 8, kind="states")
    assert got[0] == pytest.approx(want((0.1, -0.1))[0], rel=COMPILED_BOUND)
    assert counters["frames"]["total"] == 1 and counters["stats"]["unique_graphs"] == 1


def test_a_compiled_path_is_described_and_the_eager_one_never_compiles(compiled):
    ev, eager, *_ = compiled
    assert ev.network.describe() == "folded+compiled (1 of 1 BatchNorm layers folded)"
    assert eager.path == ForwardPath() and eager.prepare() == 0.0 and not eager.static_shapes
