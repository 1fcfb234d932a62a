"""CIFAR-10 from its python-pickle batches (generated here in the exact release format), download with checksum,
the synthetic set, subsets."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from llmpi.compute import data
from llmpi.job.errors import DataError


def small_release(tmp_path, n_train=50, n_test=20):
    rng = np.random.default_rng(0)
    images = {
        s: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for s, n in (("train", n_train), ("test", n_test))
    }
    labels = {s: rng.integers(0, 10, n) for s, n in (("train", n_train), ("test", n_test))}
    data.write_cifar10_batches(tmp_path, images, labels)
    return images, labels


def test_reads_the_pickle_format(tmp_path):
    images, labels = small_release(tmp_path)
    # the release stores rows as 3072 bytes, channel-major: check one pixel by hand from the raw pickle
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert raw[b"data"].shape == (10, 3072)
    assert raw[b"data"][2, 1024 + 32 * 5 + 7] == images["train"][2, 5, 7, 1]  # green channel, row 5, column 7
    for split in ("train", "test"):
        im, lab = data.load_cifar10(tmp_path, split, download=False)
        assert np.array_equal(im, images[split]) and np.array_equal(lab, labels[split])


def test_missing_dataset_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPI_OFFLINE", "1")
    with pytest.raises(DataError, match=r"not in .*cifar-10-batches-py.*Unpack cifar-10-python.tar.gz"):
        data.load_cifar10(tmp_path, "train")


def test_corrupted_batch_is_named(tmp_path):
    small_release(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3 is not a readable CIFAR-10 batch"):
        data.load_cifar10(tmp_path, "train", download=False)


def test_download_checks_md5_before_unpacking(tmp_path, monkeypatch):
    src = tmp_path / "src"
    small_release(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(buf.getvalue())
    good = hashlib.md5(buf.getvalue()).hexdigest()
    monkeypatch.delenv("LLMPI_OFFLINE", raising=False)
    monkeypatch.setenv("LLMPI_CIFAR10_URL", archive.as_uri())
    monkeypatch.setenv("LLMPI_CIFAR10_MD5", "0" * 32)
    with pytest.raises(DataError, match="MD5"):
        data.load_cifar10(tmp_path / "bad", "train")
    assert not (tmp_path / "bad" / "cifar-10-batches-py").exists()
    monkeypatch.setenv("LLMPI_CIFAR10_MD5", good)
    im, _ = data.load_cifar10(tmp_path / "good", "test")
    assert im.shape == (20, 32, 32, 3)


def test_unpacking_writes_only_the_release_files_inside_the_folder(tmp_path):
    """Whatever the archive holds besides the batches -- a path out of the folder, an absolute path, a link, a
    subfolder -- is not written, on every Python the package allows (no tarfile extraction filter needed)."""
    buf = io.BytesIO()

    def add(name: str, payload: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(payload) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)

    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        add("cifar-10-batches-py/data_batch_1", b"batch one")
        add("cifar-10-batches-py/../escaped")
        add("/tmp/absolute")
        add("cifar-10-batches-py/link", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add("cifar-10-batches-py/sub/deeper")
        add("elsewhere/test_batch")
    root = tmp_path / "root"
    written = data.unpack_cifar10(buf.getvalue(), root)
    assert written == [root / "cifar-10-batches-py" / "data_batch_1"]
    assert written[0].read_bytes() == b"batch one"
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert files == ["root", "root/cifar-10-batches-py", "root/cifar-10-batches-py/data_batch_1"]


def test_subset_is_a_seeded_permutation_prefix(tmp_path):
    small_release(tmp_path, n_train=50)
    im, lab, info = data.load_images("cifar10", tmp_path, "train", 7, seed=4)
    full, full_lab = data.load_cifar10(tmp_path, "train", download=False)
    index = np.random.default_rng(4).permutation(50)[:7]
    assert np.array_equal(im, full[index]) and np.array_equal(lab, full_lab[index])
    assert info.count == 7 and info.total == 50 and not info.synthetic
    with pytest.raises(DataError, match="only 50 images"):
        data.load_images("cifar10", tmp_path, "train", 51, seed=0)


def test_synthetic_is_deterministic_and_labelled():
    a, la = data.synthetic_images("test")
    b, lb = data.synthetic_images("test")
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert a.shape == (2000, 32, 32, 3) and a.dtype == np.uint8 and set(np.unique(la)) == set(range(10))
    _, _, info = data.load_images("synthetic", "unused", "test", 10, 0)
    assert "SYNTHETIC" in info.describe()


def test_normalize_uses_the_cifar_statistics():
    im = np.full((1, 32, 32, 3), 128, np.uint8)
    x = data.normalize(im)
    expected = (128 / 255 - np.array([125.3, 123.0, 113.9]) / 255) / (np.array([63.0, 62.1, 66.7]) / 255)
    assert x.shape == (1, 3, 32, 32)
    assert np.allclose(x[0, :, 0, 0].numpy(), expected, atol=1e-6)
