"""BatchNorm folded into the layer before it, anew at every point. Pure torch numerics, no MPI.

    folded = fold(model, example)         # None when torch.fx cannot trace the network
    gathered = folded.gather(sources)     # name -> float32 tensor holding that entry's value at the current point
    folded.refresh(gathered)              # after every change of the point: recompute the folded weights
    logits = folded.network(x)            # the same function as model(x) in eval mode, without BatchNorm kernels

In eval mode a BatchNorm is the affine map y = γ·(z − μ)/√(σ² + ε) + β per channel, with its running statistics
μ, σ². When z is the output of a convolution or linear layer W·x + b that feeds nothing else, the two are one layer:

    s = γ / √(σ² + ε),     W' = s·W (each output channel, or output row, scaled),     b' = s·(b − μ) + β.

A point moves W, b, γ, β (``directions.type: weights``) and with ``type: states`` μ and σ² too, so W' and b' are
recomputed at every point from that point's values, in float32 (parameter-sized work: ~0.3 M multiply-adds for a
ResNet-56, against ~125 M per image in the forward pass), then rounded once into the network's dtype. The folded
network is a ``torch.fx`` rewrite of the original that shares every other module (and so every other weight)
with it; only the folded layers own new tensors, rewritten in place (their addresses never change, which a
compiled forward and CUDA graphs rely on).

What folds: a BatchNorm with running statistics whose input is a ``Conv1d/2d/3d`` or ``Linear`` (its output's
channels on dim 1) used by that BatchNorm alone. What does not: a BatchNorm after anything else -- DenseNet's
pre-activation BatchNorms follow a concatenation or a pooling, not a layer -- stays as it is, and
``Folded.describe`` says how many folded. Networks torch.fx cannot trace (data-dependent control flow in
``forward``) are not folded at all.

Exactness: algebraically the same function; in floating point the convolution sums s·w·x instead of scaling the
sum, so per-image losses move in their last bits. Measured in tests/test_fold.py on every zoo network with
BatchNorm (relative deviation of the mean loss from the unfolded network's, both direction types): see the bound
there and in the README (BatchNorm section).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Pair:
    """A layer (conv or linear) and the BatchNorm that alone reads its output, by module path."""

    layer: str
    norm: str


def _normalizes(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.track_running_stats
        and module.running_mean is not None
        and not module.training
    )


def foldable_pairs(graph: fx.Graph, modules: Mapping[str, nn.Module]) -> list[Pair]:
    """Every (layer, BatchNorm) of ``graph`` that folds: the layer's single user is the BatchNorm, and the layer's
    output has the BatchNorm's channels on dim 1 (from the shapes ``ShapeProp`` recorded)."""
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _normalizes(modules[node.target]):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        layer, norm = modules[source.target], modules[node.target]
        if not isinstance(layer, LAYERS) or norm.num_features != _out_channels(layer):
            continue
        shape = getattr(source.meta.get("tensor_meta"), "shape", None)
        if shape is None or len(shape) < 2 or shape[1] != norm.num_features:
            continue  # e.g. a Linear on (N, L, C) whose channels are not on dim 1
        if isinstance(layer, nn.Linear) and len(shape) != 2:
            continue
        pairs.append(Pair(source.target, node.target))
    return pairs


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


class Folded:
    """The folded network, and the recipe that recomputes its folded weights from the point's values."""

    def __init__(self, network: fx.GraphModule, pairs: list[Pair], norms: int, original: nn.Module) -> None:
        self.network, self.pairs, self.norms = network, pairs, norms
        originals = dict(original.named_modules())
        self._eps = [float(originals[p.norm].eps) for p in pairs]
        self._targets = [network.get_submodule(p.layer) for p in pairs]
        # the names of the original entries each pair reads: weight, bias, γ, β, μ, σ² (None where absent)
        self.entries: list[tuple[str | None, ...]] = []
        for p in pairs:
            layer, norm = originals[p.layer], originals[p.norm]
            self.entries.append(
                (
                    f"{p.layer}.weight",
                    f"{p.layer}.bias" if layer.bias is not None else None,
                    f"{p.norm}.weight" if norm.weight is not None else None,
                    f"{p.norm}.bias" if norm.bias is not None else None,
                    f"{p.norm}.running_mean",
                    f"{p.norm}.running_var",
                )
            )

    def describe(self) -> str:
        rest = self.norms - len(self.pairs)
        text = f"{len(self.pairs)} of {self.norms} BatchNorm layers folded"
        if rest:
            text += f" ({rest} follow no convolution or linear layer of their own and stay)"
        return text

    def names(self) -> set[str]:
        """Every entry of the original network the folded weights are computed from."""
        return {n for entry in self.entries for n in entry if n is not None}

    def gather(self, sources: Mapping[str, torch.Tensor]) -> list[tuple[torch.Tensor | None, ...]]:
        """For ``refresh``: per pair, the float32 tensors that hold each entry's value at the current point (the
        caller rewrites them in place per point, so this is gathered once)."""
        for name in self.names():
            if sources[name].dtype != torch.float32:
                raise ValueError(f"{name}: folding reads float32 values, got {sources[name].dtype}")
        return [tuple(None if n is None else sources[n] for n in entry) for entry in self.entries]

    @torch.no_grad()
    def refresh(self, gathered: list[tuple[torch.Tensor | None, ...]]) -> None:
        """W' = s·W, b' = s·(b − μ) + β with s = γ/√(σ² + ε), in float32, written into the folded layers."""
        for (w, b, gamma, beta, mean, var), eps, target in zip(gathered, self._eps, self._targets):
            s = torch.rsqrt(var + eps)
            if gamma is not None:
                s.mul_(gamma)
            shift = (b - mean if b is not None else mean.neg()).mul_(s)
            if beta is not None:
                shift.add_(beta)
            target.weight.copy_(w * s.view(-1, *([1] * (w.dim() - 1))))
            target.bias.copy_(shift)


def trace(model: nn.Module) -> fx.GraphModule | None:
    """``model`` as a torch.fx graph, or None when it cannot be traced symbolically (then it is not folded)."""
    try:
        return fx.symbolic_trace(model)
    except Exception:  # fx raises TraceError, TypeError, NotImplementedError, ... from user code: all mean "no"
        return None


def fold(model: nn.Module, example: torch.Tensor) -> Folded | None:
    """The folded network of ``model`` (in eval mode, on its device and dtype), or None when it cannot be traced.

    ``example``: a batch of inputs (one image is enough) to learn the layers' output shapes. The result shares all
    unfolded modules with ``model``; call ``refresh`` before using ``network``.
    """
    traced = trace(model)
    if traced is None:
        return None
    with torch.no_grad():
        ShapeProp(traced).propagate(example)
    modules = dict(model.named_modules())
    norms = sum(1 for n in traced.graph.nodes if n.op == "call_module" and _normalizes(modules[n.target]))
    pairs = foldable_pairs(traced.graph, modules)
    graph = traced.graph
    for p in pairs:
        (node,) = [n for n in graph.nodes if n.op == "call_module" and n.target == p.norm]
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
    # The GraphModule copies references to the leaf modules the graph calls (shared with ``model``) under fresh
    # containers, so replacing a folded layer below leaves ``model`` untouched.
    network = fx.GraphModule(model, graph, class_name=f"Folded{type(model).__name__}")
    for p in pairs:
        layer = modules[p.layer]
        new = copy.copy(layer)  # the same configuration (stride, padding, groups ...), its own tensors below
        new._parameters = dict(layer._parameters)
        weight = torch.empty_like(layer.weight, requires_grad=False)  # same dtype, device and memory format
        new.weight = nn.Parameter(weight, requires_grad=False)
        new.bias = nn.Parameter(
            torch.empty(_out_channels(layer), dtype=weight.dtype, device=weight.device), requires_grad=False
        )
        parent, _, name = p.layer.rpartition(".")
        setattr(network.get_submodule(parent) if parent else network, name, new)
    network.eval()
    return Folded(network, pairs, norms, model)
