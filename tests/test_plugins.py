"""Factories named by import path: resolved, called, identified; every failure names the key and the path."""

from __future__ import annotations

import sys

import pytest

from llmpi.job.errors import JobError
from llmpi.job.factories import call, identity, resolve


@pytest.fixture
def userpkg(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "import torch\n"
        "VALUE = 3\n"
        "def build(width=4):\n    return torch.nn.Linear(width, 2)\n"
        "def broken():\n    raise ValueError('no such width')\n"
        "class Holder:\n    @staticmethod\n    def make():\n        return 7\n"
    )
    (pkg / "bad_import.py").write_text("import not_a_real_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        del sys.modules[name]


def test_resolve_and_call(userpkg):
    assert resolve("userpkg.nets:build", "model.factory")(width=3).in_features == 3
    assert call("userpkg.nets:Holder.make", "model.factory") == 7


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("userpkg.nets.build", "is not an import path; write it as package.module:function"),
        ("userpkg.nets:", "is not an import path"),
        ("userpkg.nope:build", "cannot import module 'userpkg.nope'"),
        ("userpkg.nets:missing", "module 'userpkg.nets' has no attribute 'missing'"),
        ("userpkg.nets:VALUE", "is a int, not something that can be called"),
        ("userpkg.bad_import:x", "importing 'userpkg.bad_import'"),
    ],
)
def test_bad_paths_name_key_and_path(userpkg, spec, message):
    with pytest.raises(JobError) as e:
        resolve(spec, "model.factory")
    assert str(e.value).startswith("model.factory: ") and message in str(e.value)


def test_factory_that_raises(userpkg):
    with pytest.raises(
        JobError, match=r"data.factory: 'userpkg.nets:broken' raised ValueError: no such width \(.*nets.py:6\)"
    ):
        call("userpkg.nets:broken", "data.factory")


def test_identity_hashes_the_source(userpkg):
    a = identity("userpkg.nets:build")
    assert a["path"] == "userpkg.nets:build" and len(a["source_sha256"]) == 64
    import hashlib

    assert a["source_sha256"] == hashlib.sha256((userpkg / "nets.py").read_bytes()).hexdigest()
