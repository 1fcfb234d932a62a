"""Checkpoints: the trained minimiser θ*, loaded safely and matched to its architecture.

Accepted: a bare state_dict, or a dict holding one under 'state_dict' (the paper's code, ``llmpi.train``);
parameter names may carry DataParallel's/DDP's ``module.`` or torch.compile's ``_orig_mod.`` prefix, in either
order. Files are read with ``weights_only=True``: a pickle that would run code is refused, never executed.
Checkpoints from PyTorch before 0.4.1 (the paper's era) lack BatchNorm's ``num_batches_tracked`` counters; those
are filled in with 0 (the counter only matters for BatchNorm with ``momentum=None``, which no network here uses).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError

PREFIXES = ("module.", "_orig_mod.")
BN_COUNTER = "num_batches_tracked"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, prefixes stripped, loaded without executing any code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; train one with `python -m llmpi.train jobs/train/<arch>.yaml` "
            f"or set model.checkpoint"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a pickle (protocol 2+)
        raise CheckpointError(f"checkpoint {path} cannot be read: it is not a torch.save file (it starts {head!r})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0].strip()
        raise CheckpointError(
            f"checkpoint {path} was refused: it is not a plain tensor file that loads without running code "
            f"(weights_only=True: {' '.join(reason.split()) or 'rejected'}). llmpi never runs code from checkpoints; "
            f"if the file is yours, re-save it as torch.save({{'state_dict': model.state_dict()}}, path)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); is it a complete torch.save file?"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} holds no state_dict: expected a dict of tensors or a dict with a 'state_dict' entry"
        )
    return _strip_prefixes(dict(obj))


def _with_bn_counters(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` plus a zero ``num_batches_tracked`` for each BatchNorm whose statistics it has but not its counter."""
    filled = dict(state)
    for key in own:
        module, _, leaf = key.rpartition(".")
        if leaf == BN_COUNTER and key not in state and f"{module}.running_mean" in state:
            filled[key] = torch.zeros((), dtype=own[key].dtype)
    return filled


@functools.cache
def _signature(arch: str) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer names of ``arch`` with their shapes; built once on the meta device (no memory)."""
    from .models import build

    with torch.device("meta"):
        model = build(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fits(arch: str, state: dict[str, torch.Tensor]) -> bool:
    own = _signature(arch)
    optional = {k for k in own if k.rpartition(".")[2] == BN_COUNTER and k not in state}
    return state.keys() == own.keys() - optional and all(tuple(v.shape) == own[k] for k, v in state.items())


def arch_that_fits(state: dict[str, torch.Tensor]) -> str | None:
    """The registered architecture whose parameters match ``state`` exactly (names and shapes), or None.

    The signatures are built once per process on the meta device, so asking again costs a dict comparison.
    """
    from .models import REGISTRY

    for name in sorted(REGISTRY):
        if _fits(name, state):
            return name
    return None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], arch: str, path: str | Path) -> None:
    """Copy ``state`` into ``model`` strictly; on a mismatch name the missing/unexpected keys and the right arch."""
    own = model.state_dict()
    given, state = state, _with_bn_counters(state, own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if wrong:
            parts.append(f"shape mismatches: {few(wrong)}")
        fit = arch_that_fits(given)
        advice = f"it fits arch {fit!r}: set model.arch: {fit}" if fit else "no known arch fits it"
        raise CheckpointError(f"checkpoint {path} does not fit arch {arch!r} ({'; '.join(parts)}); {advice}")
    model.load_state_dict(state, strict=True)


def load_model(arch: str, path: str | Path) -> nn.Module:
    """A network of ``arch`` holding the checkpoint's weights, on the CPU, in eval mode."""
    from .models import build

    # Built without initialising (meta, then uninitialised CPU memory): the strict load below overwrites every
    # parameter and buffer, and initialising 50M parameters first would cost every rank seconds. torch.empty with
    # the shape, not Module.to_empty: to_empty's empty_like on meta tensors runs torch's Python reference, whose
    # first call imports sympy (0.3 s of CPU on every rank of every run).
    with torch.device("meta"):
        model = build(arch)
    model = model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu"))
    load_into(model, read_state_dict(path), arch, path)
    return model.eval()


def load_job_model(spec) -> nn.Module:
    """The network a job's ``model`` section names (``arch`` or the user's ``factory``) holding its checkpoint."""
    if spec.factory is None:
        return load_model(spec.arch, spec.checkpoint)
    from .models import from_spec

    model = from_spec(spec)
    load_into(model, read_state_dict(spec.checkpoint), spec.factory, spec.checkpoint)
    return model.eval()
