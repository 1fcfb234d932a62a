"""The model zoo: names, parameter names/shapes and counts of the paper's networks, checkpoint formats, job files.

Expected numbers are independent of the code under test: parameter counts were worked out by hand from the layer
formulas (conv k*k*cin*cout, BatchNorm 2c, linear cin*cout + cout) and agree with published figures; the keys and
shapes come from reading the paper's published model definitions (github.com/tomgoldstein/loss-landscape,
cifar10/models/).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmpi import models
from llmpi.job.config import ModelSpec, load, load_job
from llmpi.job.errors import JobError
from llmpi.job.training import TrainJob
from llmpi.space.checkpoint import CheckpointError, arch_that_fits, load_model

JOBS = Path(__file__).resolve().parent.parent / "jobs"

# The names in the paper's cifar10/model_loader.py.
PAPER_ARCHS = [
    "vgg9",
    "densenet121",
    *(f"resnet{d}{s}" for d in (18, 34, 50, 101, 152) for s in ("", "_noshort")),
    *(f"resnet{d}{s}" for d in (20, 56, 110) for s in ("", "_noshort")),
    "resnet32_noshort",
    "resnet44_noshort",
    "resnet50_16_noshort",
    *(f"wrn56_{k}{s}" for k in (2, 4, 8) for s in ("", "_noshort")),
    "wrn110_2_noshort",
    "wrn110_4_noshort",
]
EXTRA_ARCHS = ["resnet8", "resnet8_noshort"]  # demo/test members, not in the paper

# Trainable parameters, by hand. CIFAR ResNet of depth 6n+2, width k (c = 16k, 32k, 64k):
#   stem 27c1 + 2c1; per block 9*cin*c + 9*c*c + 4c; projection (first block of stages 2, 3) cin*c + 2c;
#   linear 64k*10 + 10.
# 4-stage ResNet: stem 27*64 + 128; basic block as above; bottleneck (p planes) cin*p + 9p^2 + 4p^2 + 12p;
#   projection where the shape changes cin*4p + 8p (stage 1's first bottleneck too: 64 -> 256); linear 512e*10 + 10.
# DenseNet-121 (g = 32): stem 27*64; layer on c channels 2c + 128c + 256 + 9*128*32; transition 2c + c*c/2;
#   final BatchNorm 2*1024, linear 10250.
# VGG-9: seven 3x3 convs with bias + BatchNorm, fc 4096*256 + 256 + BatchNorm1d 512, classifier 2570.
EXPECTED_PARAMS = {
    "vgg9": 2_789_706,
    "densenet121": 6_956_298,
    "resnet18": 11_173_962,
    "resnet18_noshort": 11_000_138,
    "resnet34": 21_282_122,
    "resnet34_noshort": 21_108_298,
    "resnet50": 23_520_842,
    "resnet50_noshort": 20_744_266,
    "resnet101": 42_512_970,
    "resnet101_noshort": 39_736_394,
    "resnet152": 58_156_618,
    "resnet152_noshort": 55_380_042,
    "resnet8": 78_042,
    "resnet8_noshort": 75_290,
    "resnet20": 272_474,
    "resnet20_noshort": 269_722,
    "resnet32_noshort": 464_154,
    "resnet44_noshort": 658_586,
    "resnet50_16_noshort": 755_802,
    "resnet56": 855_770,
    "resnet56_noshort": 853_018,
    "resnet110": 1_730_714,
    "resnet110_noshort": 1_727_962,
    "wrn56_2": 3_412_394,
    "wrn56_2_noshort": 3_401_770,
    "wrn56_4": 13_628_234,
    "wrn56_4_noshort": 13_586_506,
    "wrn56_8": 54_470_282,
    "wrn56_8_noshort": 54_304_906,
    "wrn110_2_noshort": 6_893_482,
    "wrn110_4_noshort": 27_537_226,
}

# Published figures, in millions. He et al. 2016, Table 6 (CIFAR ResNets with parameter-free option-A shortcuts:
# the count of our _noshort nets; option-B projections add 0.3%); the CIFAR versions of ResNet-18..152 and
# DenseNet-121 as commonly reported (e.g. kuangliu/pytorch-cifar).
PUBLISHED_M = {
    "resnet20": 0.27,
    "resnet32_noshort": 0.46,
    "resnet44_noshort": 0.66,
    "resnet56": 0.85,
    "resnet110": 1.7,
    "resnet18": 11.17,
    "resnet34": 21.28,
    "resnet50": 23.52,
    "resnet101": 42.51,
    "resnet152": 58.16,
    "densenet121": 6.96,
}

# A few state_dict entries per family, read off the paper's model code, and entries that must NOT exist.
EXPECTED_KEYS = {
    "resnet56": {
        "conv1.weight": (16, 3, 3, 3),
        "bn1.running_mean": (16,),
        "layer1.0.conv1.weight": (16, 16, 3, 3),
        "layer2.0.conv1.weight": (32, 16, 3, 3),
        "layer2.0.shortcut.0.weight": (32, 16, 1, 1),
        "layer2.0.shortcut.1.running_var": (32,),
        "layer3.0.shortcut.0.weight": (64, 32, 1, 1),
        "layer3.8.bn2.weight": (64,),
        "linear.weight": (10, 64),
        "linear.bias": (10,),
    },
    "resnet56_noshort": {"layer2.0.conv1.weight": (32, 16, 3, 3), "layer3.8.conv2.weight": (64, 64, 3, 3)},
    "wrn56_4": {
        "conv1.weight": (64, 3, 3, 3),
        "layer2.0.shortcut.0.weight": (128, 64, 1, 1),
        "layer3.0.shortcut.0.weight": (256, 128, 1, 1),
        "linear.weight": (10, 256),
    },
    "wrn110_2_noshort": {"layer3.17.conv2.weight": (128, 128, 3, 3), "linear.weight": (10, 128)},
    "resnet50_16_noshort": {"layer3.7.conv2.weight": (64, 64, 3, 3), "linear.weight": (10, 64)},
    "resnet18": {
        "conv1.weight": (64, 3, 3, 3),
        "layer1.1.conv2.weight": (64, 64, 3, 3),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.shortcut.0.weight": (128, 64, 1, 1),
        "layer4.1.bn2.bias": (512,),
        "linear.weight": (10, 512),
    },
    "resnet50": {
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
        "layer1.1.conv1.weight": (64, 256, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "linear.weight": (10, 2048),
    },
    "resnet50_noshort": {"layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.1.conv1.weight": (64, 256, 1, 1)},
    "resnet152": {"layer2.7.conv1.weight": (128, 512, 1, 1), "layer3.35.bn3.weight": (1024,)},
    "vgg9": {
        "features.0.weight": (64, 3, 3, 3),
        "features.0.bias": (64,),
        "features.1.running_mean": (64,),
        "features.3.weight": (64, 64, 3, 3),
        "features.7.weight": (128, 64, 3, 3),
        "features.14.weight": (256, 128, 3, 3),
        "features.20.weight": (256, 256, 3, 3),
        "features.21.weight": (256,),
        "fc.0.weight": (256, 4096),
        "fc.1.running_var": (256,),
        "classifier.weight": (10, 256),
    },
    "densenet121": {
        "conv1.weight": (64, 3, 3, 3),
        "dense1.0.bn1.weight": (64,),
        "dense1.0.conv1.weight": (128, 64, 1, 1),
        "dense1.0.conv2.weight": (32, 128, 3, 3),
        "dense1.5.bn1.weight": (224,),
        "trans1.bn.weight": (256,),
        "trans1.conv.weight": (128, 256, 1, 1),
        "dense2.11.conv1.weight": (128, 480, 1, 1),
        "trans2.conv.weight": (256, 512, 1, 1),
        "trans3.conv.weight": (512, 1024, 1, 1),
        "dense4.15.bn1.weight": (992,),
        "bn.weight": (1024,),
        "linear.weight": (10, 1024),
    },
}
ABSENT_KEYS = {
    "resnet56": ["layer1.0.shortcut.0.weight", "layer3.9.conv1.weight", "layer4.0.conv1.weight"],
    "resnet18": ["layer1.0.shortcut.0.weight", "layer1.0.conv3.weight"],
    "resnet152": ["layer3.36.conv1.weight"],
    "densenet121": ["trans4.conv.weight", "dense4.16.conv1.weight"],
}
# Total state_dict entries (BatchNorm: weight, bias, running_mean, running_var, num_batches_tracked):
#   resnet56 = 1 + 5 + 27 blocks * 12 + 2 projections * 6 + 2; resnet152 = 6 + 50 * 18 + 4 * 6 + 2;
#   densenet121 = 1 + 58 layers * 12 + 3 transitions * 6 + 5 + 2; vgg9 = 7 * (2 + 5) + (2 + 5) + 2.
EXPECTED_KEY_COUNT = {"resnet56": 344, "resnet56_noshort": 332, "resnet152": 932, "densenet121": 722, "vgg9": 58}


@functools.cache
def meta_state(arch: str) -> dict[str, torch.Tensor]:
    """Names and shapes without memory (read-only use: cached across tests)."""
    with torch.device("meta"):
        return models.build(arch).state_dict()


def randomise(model: nn.Module, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Random BatchNorm weights and biases, running statistics measured on ``images``, counters random: no buffer
    keeps its default, so a round trip that drops one shows. Measured (not random) statistics keep the eval-mode
    signal alive through the deep shortcut-free nets -- random ones can shrink it into denormal floats, which the
    CPU computes a hundred times slower. Returns the training-mode logits of that measuring pass."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
        logits = model.train()(images)
        for m in norms:
            m.momentum = 0.1
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=g)))
    return logits


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The heavy forward passes on one thread: the arithmetic is the same, but two OpenMP threads that spin-wait
    for each other on a machine shared with other jobs made this file 4x slower (10 min instead of 2.5)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------------------
# Names


def test_registry_is_the_papers_zoo_plus_the_demo_nets():
    own = [name for name, make in models.REGISTRY.items() if make.__module__.startswith("llmpi.")]
    assert sorted(own) == sorted(PAPER_ARCHS + EXTRA_ARCHS)  # tests may register their own nets beside these
    assert len(PAPER_ARCHS) == 29
    assert models.canonical_arch("vgg56") == "resnet56_noshort"
    with torch.device("meta"):
        assert models.build("vgg56").state_dict().keys() == models.build("resnet56_noshort").state_dict().keys()


def test_unknown_arch_names_the_nearest():
    with pytest.raises(ValueError, match=r"did you mean 'wrn56_4'"):
        models.canonical_arch("wrn56-4")
    with pytest.raises(JobError, match=r"^model.arch: unknown architecture 'wrn56-4'; did you mean 'wrn56_4'"):
        ModelSpec(arch="wrn56-4")


def test_names_are_in_natural_order():
    order = models.names()
    assert order.index("resnet8") < order.index("resnet20") < order.index("resnet56") < order.index("resnet110")


# ---------------------------------------------------------------------------------------------------------------
# Parameter names, shapes and counts


@pytest.mark.parametrize("arch", sorted(EXPECTED_PARAMS))
def test_parameter_count_matches_the_hand_count(arch):
    assert models.parameter_count(arch) == EXPECTED_PARAMS[arch]


@pytest.mark.parametrize("arch", sorted(PUBLISHED_M))
def test_parameter_count_matches_published_figures(arch):
    millions = models.parameter_count(arch) / 1e6
    assert millions == pytest.approx(PUBLISHED_M[arch], rel=0.02), f"{arch}: {millions:.3f}M"


@pytest.mark.parametrize("arch", sorted(EXPECTED_KEYS))
def test_state_dict_keys_and_shapes_match_the_papers_code(arch):
    state = meta_state(arch)
    for key, shape in EXPECTED_KEYS[arch].items():
        assert key in state, f"{arch} lacks {key}"
        assert tuple(state[key].shape) == shape, key
    for key in ABSENT_KEYS.get(arch, []):
        assert key not in state, f"{arch} has {key}"
    if arch in EXPECTED_KEY_COUNT:
        assert len(state) == EXPECTED_KEY_COUNT[arch]


@pytest.mark.parametrize("arch", [a for a in PAPER_ARCHS if a.endswith("_noshort")])
def test_noshort_nets_have_no_shortcut_modules(arch):
    # The paper's shortcut-free blocks have no `shortcut` attribute at all (not even an empty one).
    with torch.device("meta"):
        model = models.build(arch)
    assert not [name for name, _ in model.named_modules() if "shortcut" in name]


@pytest.mark.parametrize("arch", ["resnet56", "resnet18", "resnet50"])
def test_identity_shortcuts_carry_no_parameters(arch):
    # Where a block keeps its shape the paper's shortcut is an empty Sequential: no keys, but the path exists.
    with torch.device("meta"):
        model = models.build(arch)
    shortcut_keys = {k.split(".shortcut")[0] for k in model.state_dict() if ".shortcut." in k}
    stages = 3 if arch == "resnet56" else 4
    first_stage_projects = arch == "resnet50"  # bottlenecks expand 64 -> 256 channels already in stage 1
    assert shortcut_keys == {f"layer{s}.0" for s in range(1 if first_stage_projects else 2, stages + 1)}


def test_distinct_archs_have_distinct_signatures():
    # Otherwise "the arch that fits" a checkpoint would be ambiguous. The shipped networks only: tests register
    # networks of their own (tests/tinynet.py: tinynet and refusednet, the same weights by design) in whatever worker
    # imports them.
    signatures = {}
    for arch in [name for name, build in models.REGISTRY.items() if build.__module__.startswith("llmpi.")]:
        sig = tuple((k, tuple(v.shape)) for k, v in meta_state(arch).items())
        assert sig not in signatures, f"{arch} and {signatures.get(sig)} are indistinguishable"
        signatures[sig] = arch


# ---------------------------------------------------------------------------------------------------------------
# Forward semantics that the paper's checkpoints rely on, checked against hand-derived outcomes.


def test_global_average_equals_the_papers_fixed_pooling():
    x = torch.randn(3, 7, 8, 8, generator=torch.Generator().manual_seed(1))
    from llmpi.models.resnet import global_average

    assert torch.equal(global_average(x), F.avg_pool2d(x, 8).view(3, -1))
    assert torch.equal(global_average(x[..., :4, :4]), F.avg_pool2d(x[..., :4, :4], 4).view(3, -1))


@pytest.mark.parametrize(
    ("arch", "last_bn"),
    [("resnet20", "bn2"), ("resnet20_noshort", "bn2"), ("resnet50", "bn3"), ("resnet50_noshort", "bn3")],
)
def test_shortcuts_are_the_only_path_when_the_residual_is_zero(arch, last_bn, batch):
    """With every block's last BatchNorm zeroed, a shortcut-free net outputs exactly the classifier bias for any
    input; a net with shortcuts still passes the image through (identity and projection paths)."""
    torch.manual_seed(0)
    model = models.build(arch).eval()
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.endswith(last_bn) and name.count(".") == 2:
                m.weight.zero_()
                m.bias.zero_()
        out = model(batch)
    bias = model.linear.bias.detach().expand(2, 10)
    if arch.endswith("_noshort"):
        assert torch.equal(out, bias)
    else:
        assert not torch.allclose(out, bias)
        assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize(
    ("arch", "can_be_negative"), [("resnet50_noshort", True), ("resnet50", False), ("resnet18_noshort", False)]
)
def test_only_the_papers_shortcut_free_bottleneck_ends_without_relu(arch, can_be_negative):
    # The paper's Bottleneck_noshortcut returns bn3's output as it is; every other block ends with a ReLU.
    torch.manual_seed(0)
    block = models.build(arch).layer1[0].eval()
    with torch.no_grad():
        out = block(torch.randn(2, 64, 8, 8))
    assert bool((out < 0).any()) is can_be_negative


def test_dense_layer_puts_new_features_first():
    from llmpi.models.densenet import DenseLayer

    layer = DenseLayer(16, 8).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (2, 24, 8, 8)
    assert torch.equal(out[:, 8:], x)


def test_paper_init_follows_the_papers_recipe():
    torch.manual_seed(0)
    model = models.paper_init(models.build("resnet20"))
    w = model.layer3[0].conv2.weight  # fan-in 64 * 9
    assert w.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert model.linear.weight.std().item() == pytest.approx(1e-3, rel=0.15)
    assert torch.count_nonzero(model.linear.bias) == 0
    assert torch.all(model.layer1[0].bn1.weight == 1) and torch.count_nonzero(model.layer1[0].bn1.bias) == 0
    vgg = models.paper_init(models.build("vgg9"))
    assert torch.count_nonzero(vgg.features[0].bias) == 0
    assert torch.all(vgg.fc[1].weight == 1)


# ---------------------------------------------------------------------------------------------------------------
# Every network: builds, runs the fixture batch, round-trips a checkpoint


@pytest.mark.parametrize("arch", PAPER_ARCHS + EXTRA_ARCHS)
def test_forward_and_checkpoint_round_trip(arch, batch, tmp_path):
    """Builds, runs the fixture batch in training mode (``randomise`` does), saves, loads back every tensor
    bit-identically and runs the batch in eval mode. Two forward passes only: this covers the 55M-parameter nets."""
    torch.manual_seed(0)
    model = models.build(arch)
    logits = randomise(model, batch)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1]), "the two images give the same logits"
    state = model.state_dict()
    path = tmp_path / f"{arch}.pt"
    torch.save({"state_dict": state, "epoch": 300, "acc": 93.0}, path)
    del model
    loaded = load_model(arch, path)
    assert not loaded.training
    got = loaded.state_dict()
    assert list(got) == list(state)
    assert all(torch.equal(got[k], state[k]) for k in state)
    with torch.no_grad():
        out = loaded(batch)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint formats users have


@functools.cache
def _reference(arch: str) -> tuple[nn.Module, torch.Tensor]:
    """A randomised network in eval mode and its logits on the fixture batch (shared by the format tests)."""
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = models.build(arch)
    randomise(model, images, seed=1)
    model.eval()
    with torch.no_grad():
        return model, model(images)


def _in_format(fmt: str, model: nn.Module) -> object:
    state = model.state_dict()

    def prefixed(prefix: str) -> dict[str, torch.Tensor]:
        return {prefix + k: v for k, v in state.items()}

    if fmt == "bare":
        return state
    if fmt == "wrapped":  # the paper's main.py and llmpi.train
        return {"state_dict": state, "epoch": 300, "acc": 93.1}
    if fmt == "dataparallel":  # real `module.` keys
        return nn.DataParallel(model).state_dict()
    if fmt == "compiled":  # torch.compile's wrapper keeps the net as `_orig_mod` (importing dynamo costs 15 s)
        return prefixed("_orig_mod.")
    if fmt == "ddp_of_compiled":
        return prefixed("module._orig_mod.")
    if fmt == "compiled_ddp":
        return {"state_dict": prefixed("_orig_mod.module.")}
    assert fmt == "pre_0.4.1_no_bn_counters", fmt  # PyTorch before 0.4.1 had no num_batches_tracked
    return {"state_dict": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, "epoch": 300}


FORMATS = ["bare", "wrapped", "dataparallel", "compiled", "ddp_of_compiled", "compiled_ddp", "pre_0.4.1_no_bn_counters"]


@pytest.mark.parametrize("arch", ["resnet20", "vgg9"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy_tar"])
def test_checkpoint_formats_load(arch, fmt, legacy, batch, tmp_path):
    model, expected = _reference(arch)
    path = tmp_path / "model_300.t7"
    torch.save(_in_format(fmt, model), path, _use_new_zipfile_serialization=not legacy)
    loaded = load_model(arch, path)
    with torch.no_grad():
        assert torch.equal(loaded(batch), expected)
    if fmt == "pre_0.4.1_no_bn_counters":
        assert (
            int(loaded.bn1.num_batches_tracked if arch == "resnet20" else loaded.features[1].num_batches_tracked) == 0
        )


def test_checkpoint_of_another_arch_names_the_one_that_fits(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": models.build("resnet56").state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"does not fit arch 'resnet20'.*set model.arch: resnet56"):
        load_model("resnet20", path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: layer2\.0\.shortcut.*set model.arch: resnet56\b"):
        load_model("resnet56_noshort", path)


def test_alias_loads_the_canonical_arch_checkpoint(batch, tmp_path):
    torch.manual_seed(0)
    model = models.build("resnet56_noshort")
    randomise(model, batch)
    model.eval()
    path = tmp_path / "resnet56_noshort.pt"
    torch.save(model.state_dict(), path)
    with torch.no_grad():
        assert torch.equal(load_model("vgg56", path)(batch), model(batch))


@pytest.mark.parametrize("arch", PAPER_ARCHS + EXTRA_ARCHS)
def test_arch_that_fits_recognises_every_arch(arch):
    state = meta_state(arch)
    assert arch_that_fits(state) == arch
    without_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert arch_that_fits(without_counters) == arch


def test_arch_that_fits_rejects_a_near_miss():
    state = dict(meta_state("resnet20"))
    state["linear.weight"] = torch.empty(100, 64, device="meta")  # CIFAR-100 head
    assert arch_that_fits(state) is None
    del state["linear.weight"]
    assert arch_that_fits(state) is None


# ---------------------------------------------------------------------------------------------------------------
# Job files


@pytest.mark.parametrize("path", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_job_validates(path):
    job = load_job(path)
    assert job.name == path.stem


@pytest.mark.parametrize("path", sorted((JOBS / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_train_job_validates(path):
    job = load(TrainJob, path)
    assert job.name == path.stem


@pytest.mark.parametrize("arch", [*PAPER_ARCHS, "vgg56"])
def test_each_paper_network_has_the_papers_sweep_job(arch):
    job = load_job(JOBS / f"{arch}.yaml")
    trained_as = models.canonical_arch(arch)  # vgg56 sweeps the resnet56_noshort minimiser
    assert job.model.arch == trained_as
    assert job.model.checkpoint == f"checkpoints/{trained_as}.pt"
    assert (job.data.dataset, job.data.root, job.data.split, job.data.subset) == ("cifar10", "data", "train", None)
    assert (job.grid.x, job.grid.y) == ((-1.0, 1.0, 51), (-1.0, 1.0, 51))
    assert (job.directions.kind, job.directions.norm, job.directions.ignore) == ("random", "filter", "biasbn")
    assert job.output == f"surfaces/{arch}.h5"


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_each_paper_network_has_the_papers_training_job(arch):
    job = load(TrainJob, JOBS / "train" / f"{arch}.yaml")
    t = job.train
    assert job.model.arch == arch
    assert (job.data.dataset, job.data.root, job.data.subset) == ("cifar10", "data", None)
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.momentum, t.nesterov) == (300, 128, 0.1, 5e-4, 0.9, True)
    # the paper divides the learning rate by 10 at epochs 150, 225 and 275
    assert sorted({max(1, round(m * t.epochs)) for m in t.milestones}) == [150, 225, 275]
    assert t.gamma == 0.1
    assert job.output == f"checkpoints/{arch}.pt"
    assert load_job(JOBS / f"{arch}.yaml").model.checkpoint == job.output
