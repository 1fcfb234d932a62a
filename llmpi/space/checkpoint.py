"""Checkpoints: the trained minimiser θ*, loaded safely and matched to its architecture.

Accepted: a bare state_dict, or a dict holding one under 'state_dict' (the paper's code, ``llmpi.train``);
parameter names may carry DataParallel's/DDP's ``module.`` or torch.compile's ``_orig_mod.`` prefix, in either
order. Files are read with ``weights_only=True``: a pickle that would run code is refused, never executed.
Also accepted: a ``.safetensors`` file, or a folder holding them (what Hugging Face's ``save_pretrained`` writes,
sharded or not): memory-mapped, in the dtype they were saved in (bf16 stays bf16), never executed. A folder's
identity (``sha256_file``) covers every file directly in it. Weights tied to another entry (a language model's
output layer sharing the embedding) may be absent from the file: they are loaded through the entry they share.
Checkpoints from PyTorch before 0.4.1 (the paper's era) lack BatchNorm's ``num_batches_tracked`` counters; those
are filled in with 0 (the counter only matters for BatchNorm with ``momentum=None``, which no network here uses).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import pickle
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..job.errors import CheckpointError, JobError

PREFIXES = ("module.", "_orig_mod.")
BN_COUNTER = "num_batches_tracked"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file; of a folder (a Hugging Face checkpoint), of each file's name and SHA-256 in name order."""
    path = Path(path)
    if path.is_dir():
        listing = "".join(f"{p.name}:{sha256_file(p, chunk)}\n" for p in sorted(path.iterdir()) if p.is_file())
        return hashlib.sha256(listing.encode()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_sha256(state: dict[str, torch.Tensor], chunk: int = 1 << 26) -> str:
    """SHA-256 of a state_dict's tensors in order -- each entry's name, dtype, shape and bytes -- hashed ``chunk``
    bytes at a time from the tensor's own memory (one copy to the CPU for tensors elsewhere)."""
    h = hashlib.sha256()
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)};".encode())
        if t.numel():
            flat = t.reshape(-1).view(torch.uint8).numpy()
            for start in range(0, len(flat), chunk):
                h.update(flat[start : start + chunk])
    return h.hexdigest()


def code_sha256(function: object) -> str:
    """SHA-256 of the compiled code of a function (a callable object: its ``__call__``; a class: its ``forward``),
    with the code it defines inside: what a change to its text changes, in a notebook too, where the source may
    not be found. The same code gives the same hash in every process of one Python version."""
    code = getattr(function, "__code__", None)
    if code is None:
        method = getattr(function, "forward", None)
        if method is None and callable(function):
            method = type(function).__call__
        code = getattr(method, "__code__", None)
    h = hashlib.sha256()
    if code is not None:
        _hash_code(code, h)
    else:  # a built-in: its name is all there is
        h.update(repr(getattr(function, "__qualname__", type(function).__qualname__)).encode())
    return h.hexdigest()


def _hash_code(code: types.CodeType, h: hashlib._Hash) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _hash_code(const, h)
        else:
            h.update(repr(const).encode())


def model_identity(model: nn.Module) -> dict[str, str]:
    """A network given in memory, identified as a checkpoint file and a factory identify one in a job file: the hash
    of its weights (every state_dict entry: parameters and buffers), of its structure (every module's name, class and
    settings, every entry's name, dtype and shape), and of its code (the ``forward`` of each class outside torch)."""
    structure = hashlib.sha256()
    code = hashlib.sha256()
    seen: set[type] = set()
    for name, module in model.named_modules():
        cls = type(module)
        structure.update(f"{name}:{cls.__module__}.{cls.__qualname__}({module.extra_repr()})\n".encode())
        if cls not in seen and not cls.__module__.startswith("torch."):
            seen.add(cls)
            code.update(f"{cls.__module__}.{cls.__qualname__}:{code_sha256(cls)}\n".encode())
    state = model.state_dict()
    for key, t in state.items():
        structure.update(f"{key} {t.dtype} {tuple(t.shape)}\n".encode())
    return {
        "weights_sha256": state_sha256(state),
        "structure_sha256": structure.hexdigest(),
        "code_sha256": code.hexdigest(),
    }


def copy_model(model: nn.Module) -> nn.Module:
    """A copy of a network given in memory, in eval mode, for the sweep to move and perturb: the caller's network
    -- its parameters, buffers, mode and device -- is never touched."""
    with torch.no_grad():
        return copy.deepcopy(model).eval()


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of one ``.safetensors`` file, memory-mapped copy-on-write: nothing is read until used, and the
    pages are shared by every process that maps the same file (the ranks of a node)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        mapped = np.memmap(path, dtype=np.uint8, mode="c")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({e})") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"checkpoint {path}: entry {name!r} has dtype {info.get('dtype')}, not supported")
        start, stop = (8 + size + o for o in info["data_offsets"])
        raw = torch.from_numpy(mapped[start:stop])
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if start % itemsize:  # not aligned for its dtype: copy out of the mapping
            raw = raw.clone()
        out[name] = raw.view(dtype).reshape(info["shape"])
    return out


def _read_folder(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"checkpoint {path} is a folder without .safetensors files; give a torch.save file, a .safetensors file "
            f"or a folder written by save_pretrained"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_safetensors(file))
    return state


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
    if path.is_dir():
        return _strip_prefixes(_read_folder(path))
    if path.suffix == ".safetensors" and path.is_file():
        return _strip_prefixes(read_safetensors(path))
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
        # zip files memory-mapped: the tensors are read from the page cache as they are copied into the network,
        # instead of a second copy of the checkpoint in the process's memory (legacy files cannot be mapped)
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=head.startswith(b"PK\x03\x04"))
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


def _with_tied(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` plus the entries the model ties to another one that ``state`` has (same storage and shape):
    files written by save_pretrained keep only one name of a tied pair."""
    by_storage: dict[tuple, list[str]] = {}
    for key, t in own.items():
        if t.numel():
            by_storage.setdefault((t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)), []).append(key)
    filled = dict(state)
    for keys in by_storage.values():
        present = [k for k in keys if k in state]
        for key in keys:
            if key not in filled and present:
                filled[key] = state[present[0]]
    return filled


@functools.cache
def _signature(arch: str) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer names of ``arch`` with their shapes; built once on the meta device (no memory)."""
    from ..models import build

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
    from ..models import REGISTRY

    for name in sorted(REGISTRY):
        if _fits(name, state):
            return name
    return None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], arch: str, path: str | Path) -> None:
    """Copy ``state`` into ``model`` strictly; on a mismatch name the missing/unexpected keys and the right arch."""
    own = model.state_dict()
    given, state = state, _with_tied(_with_bn_counters(state, own), own)
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
    from ..models import build

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
    model = build_model(spec)
    load_into(model, read_state_dict(spec.checkpoint), spec.factory, spec.checkpoint)
    return model.eval()


def build_model(spec) -> nn.Module:
    """The network a job's ``model`` section names, freshly initialised: ``arch`` from ``llmpi.models``, or the
    user's ``factory`` (called with ``model.kwargs``; anything but an ``nn.Module`` is refused, naming the key)."""
    if spec.factory is None:
        from ..models import build

        return build(spec.arch)
    from ..job.factories import call

    model = call(spec.factory, "model.factory", **spec.kwargs)
    if not isinstance(model, nn.Module):
        raise JobError(
            f"model.factory: {spec.factory!r} returned a {type(model).__name__}, not a torch.nn.Module; "
            f"return the network itself"
        )
    return model
