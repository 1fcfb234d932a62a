"""Checkpoints: the trained minimiser θ*, loaded safely and matched to its architecture.

Accepted: a bare state_dict, or a dict holding one under 'state_dict' (the paper's code, ``llmpi.train``);
parameter names may carry DataParallel's ``module.`` or torch.compile's ``_orig_mod.`` prefix. Files are read with
``weights_only=True``: a pickle that would run code is refused, never executed.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError

PREFIXES = ("module.", "_orig_mod.")


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


def _fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own)


def arch_that_fits(state: dict[str, torch.Tensor]) -> str | None:
    """The registered architecture whose parameters match ``state`` exactly, built on the meta device (cheap)."""
    from .models import REGISTRY

    for name, builder in sorted(REGISTRY.items()):
        with torch.device("meta"):
            model = builder()
        if _fits(model, state):
            return name
    return None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], arch: str, path: str | Path) -> None:
    """Copy ``state`` into ``model`` strictly; on a mismatch name the missing/unexpected keys and the right arch."""
    own = model.state_dict()
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
        fit = arch_that_fits(state)
        advice = f"it fits arch {fit!r}: set model.arch: {fit}" if fit else "no known arch fits it"
        raise CheckpointError(f"checkpoint {path} does not fit arch {arch!r} ({'; '.join(parts)}); {advice}")
    model.load_state_dict(state, strict=True)


def load_model(arch: str, path: str | Path) -> nn.Module:
    """A network of ``arch`` holding the checkpoint's weights, on the CPU, in eval mode."""
    from .models import build

    model = build(arch)
    load_into(model, read_state_dict(path), arch, path)
    return model.eval()
