"""Images and labels: CIFAR-10 from its standard python-pickle release, and a synthetic CIFAR-shaped set.

    from llmpi.compute.data import load_images
    images, labels, info = load_images(spec)          # uint8 (N, 32, 32, 3), int64 (N,)
    samples = load_samples(job.data)                  # either kind, or the user's data.factory
    inputs, targets = samples.to(device)

CIFAR-10 lives in ``<root>/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``). When it is missing and
the machine is online, the official archive is downloaded and its MD5 checked before anything is unpacked.
The synthetic set (deterministic, seeded, learnable) serves the demo and the tests; everything made from it says
"synthetic".

Your own data: ``data.factory: package.module:function`` is called as ``function(split, **data.kwargs)`` with
``split`` "train" or "test", and returns either a torch ``Dataset`` (``len(d)``, ``d[i] -> (input, target)``) or a
pair ``(inputs, targets)`` of tensors (or numpy arrays) with one row per sample. The inputs go to the network as
they are (no normalisation), the targets to the loss. ``data.subset``/``data.seed`` select samples exactly as for
CIFAR-10 (only the selected items of a Dataset are read), and the selected tensors' SHA-256 (dtypes, shapes,
bytes) is the data's identity in the file and its fingerprint.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from ..file.atomic import atomic_replace
from ..job.errors import DataError
from ..job.memory import MEMORY, Given, given_part, is_memory

if TYPE_CHECKING:
    from ..job.config import DataSpec

# The usual CIFAR-10 per-channel statistics (the paper's code uses these), in [0, 1] units.
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

SYNTHETIC_SIZES = {"train": 10000, "test": 2000}
SYNTHETIC_CONTENT_SEED = 2018  # the synthetic set is one fixed set; data.seed only picks subsets of it


@dataclass(frozen=True)
class DatasetInfo:
    """What the images are, for messages, file attributes and the fingerprint."""

    name: str  # "cifar10", "synthetic", or the data.factory import path
    split: str
    total: int  # images in the split before any subset
    count: int  # images selected
    sha256: str  # of the selected images and labels, in order: the data's identity
    factory: bool = False  # the user's data.factory made it

    @property
    def synthetic(self) -> bool:
        return self.name == "synthetic"

    def describe(self) -> str:
        if self.factory:
            given = is_memory(self.name)  # data given to llmpi.surface in memory: its label says so
            label, unit = (
                (self.name.removeprefix(MEMORY) + " in memory" if given else f"{self.name} (data.factory)"),
                "samples",
            )
        else:
            label, unit = ("SYNTHETIC data (not CIFAR-10)" if self.synthetic else "CIFAR-10"), "images"
        part = f"{self.count} of {self.total}" if self.count != self.total else f"all {self.total}"
        return f"{label}, {self.split} split, {part} {unit}"


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10


def _unpickle_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise
    except Exception as e:  # a truncated or overwritten file fails in many ways; all mean the same to the user
        raise DataError(
            f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}: {e}); delete the folder "
            f"{path.parent} and download it again"
        ) from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (it holds a {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path} is not a CIFAR-10 batch: it lacks 'data' or 'labels'")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(
            f"{path} is not a CIFAR-10 batch: expected uint8 data of shape (N, 3072) and N labels, got "
            f"{data.dtype} {data.shape} and {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9; the file is corrupted, download it again")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def download_cifar10(root: Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5, timeout: float = 30.0) -> None:
    """Fetch the archive, check its MD5, unpack ``cifar-10-batches-py`` into ``root``."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        payload = response.read()
    digest = hashlib.md5(payload).hexdigest()
    if digest != md5:
        raise DataError(f"the archive from {url} has MD5 {digest}, expected {md5}: refusing to unpack it")
    unpack_cifar10(payload, root)


def unpack_cifar10(archive: bytes, root: Path) -> list[Path]:
    """Write the regular files of ``cifar-10-batches-py/`` from the archive into ``root``, each atomically.

    Member by member rather than ``extractall``: only plain files whose names stay inside that folder are
    written (no links, devices, absolute paths or ``..``), with the file mode of a new file, so nothing depends
    on tarfile's extraction filters, which Python 3.10 before 3.10.12 and 3.11 before 3.11.4 lack.
    """
    written = []
    folder = root / CIFAR10_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) != 2 or parts[0] != CIFAR10_DIR or parts[1] in ("..", "."):
                continue
            source = tar.extractfile(member)
            assert source is not None, "a regular member always has data"
            target = folder / parts[1]
            data = source.read()
            atomic_replace(target, lambda tmp, data=data: tmp.write_bytes(data))  # a crash leaves no half file
            written.append(target)
    return written


def load_cifar10(root: str | Path, split: str, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 NHWC) and labels of a CIFAR-10 split from the standard pickle batches."""
    root = Path(root)
    folder = root / CIFAR10_DIR
    names = CIFAR10_FILES[split]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and download and os.environ.get("LLMPI_OFFLINE") != "1":
        url = os.environ.get("LLMPI_CIFAR10_URL", CIFAR10_URL)
        md5 = os.environ.get("LLMPI_CIFAR10_MD5", CIFAR10_MD5)
        try:
            download_cifar10(root, url, md5)
        except OSError as e:  # offline, DNS failure, refused, timeout, disk: all end in the same advice
            reason = getattr(e, "reason", e)
            raise DataError(
                f"CIFAR-10 is not in {folder} ({', '.join(missing)} missing) and downloading it from {url} failed "
                f"({reason}). Put the python-pickle release there: unpack cifar-10-python.tar.gz into {root}/, "
                f"or set data.root to the folder that holds {CIFAR10_DIR}/"
            ) from None
        missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 is not in {folder} ({', '.join(missing)} missing). Unpack cifar-10-python.tar.gz "
            f"(from {CIFAR10_URL}) into {root}/, or set data.root to the folder that holds {CIFAR10_DIR}/"
        )
    parts = [_unpickle_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_cifar10_batches(root: str | Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> Path:
    """Write images in the release's exact pickle format (``data_batch_1..5``, ``test_batch``, ``batches.meta``).

    For tests and for users who convert their own data: the train split is cut into five batches.
    """
    folder = Path(root) / CIFAR10_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in CIFAR10_FILES.items():
        data = images[split].transpose(0, 3, 1, 2).reshape(len(images[split]), 3072)
        for name, chunk, lab in zip(names, np.array_split(data, len(names)), np.array_split(labels[split], len(names))):
            batch = {
                b"batch_label": name.encode(),
                b"labels": [int(v) for v in lab],
                b"data": np.ascontiguousarray(chunk),
            }
            batch[b"filenames"] = [f"{name}_{i}.png".encode() for i in range(len(lab))]
            with open(folder / name, "wb") as f:
                pickle.dump(batch, f, protocol=2)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in classes], b"num_cases_per_batch": 10000}, f, protocol=2)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Synthetic: ten classes, each a smooth random colour pattern, seen through noise, shifts and contrast changes.


def synthetic_images(split: str, seed: int = SYNTHETIC_CONTENT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic, learnable CIFAR-shaped set: uint8 (N, 32, 32, 3) and labels 0..9.

    The ten class templates are shared by both splits; the splits draw different images from them.
    """
    n = SYNTHETIC_SIZES[split]
    rng_templates = np.random.default_rng(seed)
    coarse = rng_templates.normal(size=(10, 3, 4, 4))
    templates = np.kron(coarse, np.ones((1, 1, 8, 8)))  # 10 x 3 x 32 x 32, blocky
    for _ in range(2):  # smooth the blocks into blobs
        templates = (templates + np.roll(templates, 1, 2) + np.roll(templates, -1, 2)) / 3
        templates = (templates + np.roll(templates, 1, 3) + np.roll(templates, -1, 3)) / 3
    templates /= templates.std(axis=(1, 2, 3), keepdims=True)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = rng.integers(0, 10, size=n)
    shifts = rng.integers(-3, 4, size=(n, 2))
    contrast = rng.uniform(0.6, 1.4, size=(n, 1, 1, 1))
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for start in range(0, n, 1000):
        sl = slice(start, min(n, start + 1000))
        base = templates[labels[sl]]
        base = np.stack([np.roll(b, tuple(s), axis=(1, 2)) for b, s in zip(base, shifts[sl])])
        noisy = base * contrast[sl] + rng.normal(scale=1.0, size=base.shape)
        out[sl] = np.clip(128 + 40 * noisy, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return out, labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------


def subset_indices(total: int, subset: int | None, seed: int, too_many: str | None = None) -> np.ndarray:
    """The first ``subset`` entries of a permutation of ``range(total)`` seeded by ``seed``; all if None.

    ``too_many``: the message when ``subset > total`` (formatted with ``subset`` and ``total``).
    """
    if subset is None:
        return np.arange(total)
    if subset > total:
        message = too_many or "data.subset is {subset} but the split has only {total} images; use at most {total}"
        raise DataError(message.format(subset=subset, total=total))
    return np.random.default_rng(seed).permutation(total)[:subset]


def identity(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def load_images(
    dataset: str, root: str | Path, split: str, subset: int | None, seed: int, too_many: str | None = None
) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    """The selected images (uint8 NHWC) and labels of a split, with a description of them."""
    if dataset == "cifar10":
        images, labels = load_cifar10(root, split)
    elif dataset == "synthetic":
        images, labels = synthetic_images(split)
    else:
        raise DataError(f"data.dataset: unknown dataset {dataset!r}; known: cifar10, synthetic")
    total = len(labels)
    index = subset_indices(total, subset, seed, too_many)
    images, labels = images[index], labels[index]
    info = DatasetInfo(dataset, split, total=total, count=len(index), sha256=identity(images, labels))
    return images, labels, info


# ----------------------------------------------------------------------------------------------------------------
# Either kind of data, as the sweep uses it


@dataclass
class Samples:
    """A split's selected samples and what they are. CIFAR-10 and synthetic images stay uint8 NHWC numpy until
    they reach the device (a quarter of the memory of floats); a factory's tensors are used as they are."""

    inputs: Any  # np.ndarray uint8 (N, 32, 32, 3) or a torch.Tensor (N, ...)
    targets: Any  # np.ndarray int64 (N,) or a torch.Tensor (N, ...)
    info: DatasetInfo

    def head(self, count: int) -> Samples:
        """The first ``count`` samples (for trying the network and loss on a few before a sweep)."""
        return Samples(self.inputs[:count], self.targets[:count], self.info)

    def to(self, device: Any = None) -> tuple[Any, Any]:
        """(inputs, targets) as tensors on ``device``; images normalised with the CIFAR statistics."""
        import torch

        if isinstance(self.inputs, np.ndarray):
            return normalize(self.inputs, device=device), torch.as_tensor(self.targets, device=device)
        return self.inputs.to(device), self.targets.to(device)


def load_samples(
    spec: DataSpec,
    split: str | None = None,
    subset: int | None = None,
    too_many: str | None = None,
    given: Given | None = None,
) -> Samples:
    """The samples a job's ``data`` section selects; ``split``/``subset`` override the section's (for the
    BatchNorm recalibration set), ``too_many`` is then the message for a subset larger than the split. Data given
    in memory (``data.factory`` a label, ``llmpi.job.memory``) comes from ``given`` and is selected exactly as a
    factory's."""
    split = split or spec.split
    assert split in ("train", "test"), "data.split: both is loaded one split at a time"
    subset = spec.subset if subset is None else subset  # data.subset applies to each split of split: both
    if spec.factory is None:
        return Samples(*load_images(spec.dataset, spec.root, split, subset, spec.seed, too_many))
    held = given_part(given, "data.factory", spec.factory)
    if held is not None:
        result = held.split(split, spec.factory)
        if not hasattr(result, "__getitem__") and hasattr(result, "dataset"):  # a DataLoader: its items, in order
            result = result.dataset
    else:
        from ..job.factories import call

        result = call(spec.factory, "data.factory", split, **spec.kwargs)
    inputs, targets, total = _factory_tensors(spec.factory, result, subset, spec.seed, too_many)
    info = DatasetInfo(spec.factory, split, total, len(targets), tensor_identity(inputs, targets), factory=True)
    return Samples(inputs, targets, info)


def _factory_tensors(path: str, result: Any, subset: int | None, seed: int, too_many: str | None) -> tuple:
    """The selected (inputs, targets) of what a data factory returned, or a DataError naming the factory."""
    import torch

    memory = is_memory(path)
    key, gave = ("the data given in memory", "holds") if memory else (f"data.factory: {path!r}", "returned")
    arrays = (torch.Tensor, np.ndarray)
    if isinstance(result, (tuple, list)) and len(result) == 2 and all(isinstance(v, arrays) for v in result):
        inputs, targets = (torch.as_tensor(v) for v in result)
        if inputs.ndim == 0 or targets.ndim == 0 or len(inputs) != len(targets):
            raise DataError(
                f"{key} {gave} inputs of shape {tuple(inputs.shape)} and targets of shape {tuple(targets.shape)}: "
                f"both need one row per sample, as many inputs as targets"
            )
        total = len(inputs)
        if subset is not None:  # all of them: used as they are, so a memory-mapped set stays mapped (no copy)
            index = torch.from_numpy(subset_indices(total, subset, seed, too_many))
            inputs, targets = inputs[index], targets[index]
    elif hasattr(result, "__len__") and hasattr(result, "__getitem__") and not isinstance(result, (str, bytes, dict)):
        total = len(result)
        index = subset_indices(total, subset, seed, too_many)
        items = [result[int(i)] for i in index]
        bad = next(
            (k for k, item in enumerate(items) if not (isinstance(item, (tuple, list)) and len(item) == 2)), None
        )
        if bad is not None:
            raise DataError(
                f"{key}: item {int(index[bad])} of its Dataset is {type(items[bad]).__name__}, not (input, target)"
            )
        try:
            inputs = torch.stack([torch.as_tensor(x) for x, _ in items]) if items else torch.empty(0)
            targets = torch.stack([torch.as_tensor(y) for _, y in items]) if items else torch.empty(0)
        except (TypeError, RuntimeError, ValueError) as e:
            raise DataError(
                f"{key}: the items of its Dataset cannot be stacked into tensors ({e}); every input must be a "
                f"tensor (or number, or array) of one shape, and so must every target"
            ) from None
    else:
        raise DataError(
            f"{key} {'is' if memory else 'returned'} a {type(result).__name__}, not a torch Dataset (len(d) and "
            f"d[i] -> (input, target)) or a pair (inputs, targets) of tensors"
        )
    if total == 0:
        raise DataError(f"{key} {gave} no samples for this split")
    return inputs.contiguous(), targets.contiguous(), total


def tensor_identity(*tensors: Any, chunk: int = 1 << 26) -> str:
    """SHA-256 of tensors' dtypes, shapes and bytes, in order: a factory data set's identity. Hashed ``chunk``
    bytes at a time from the tensor's own memory, so a memory-mapped set larger than RAM is never copied whole."""
    import torch

    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype} {tuple(t.shape)};".encode())
        if t.numel():
            flat = t.reshape(-1).view(torch.uint8).numpy()
            for start in range(0, len(flat), chunk):
                h.update(flat[start : start + chunk])
    return h.hexdigest()


def normalize(images_u8, device=None, dtype=None):
    """uint8 NHWC images -> normalised float NCHW tensor (CIFAR statistics), on ``device``."""
    import torch

    dtype = dtype or torch.float32
    x = torch.as_tensor(images_u8).to(device=device).permute(0, 3, 1, 2).to(dtype) / 255.0
    mean = torch.tensor(CIFAR_MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()
