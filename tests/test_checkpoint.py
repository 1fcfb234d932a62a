"""Checkpoints in the shapes users have them; unsafe pickles refused; mismatches explained."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from llmpi import models
from llmpi.job.errors import CheckpointError
from llmpi.space.checkpoint import load_model, read_state_dict


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(3)
    return models.build("resnet8").eval()


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "module", "orig_mod", "both"])
def test_checkpoint_variants_load_identically(tmp_path, net, wrap):
    state = net.state_dict()
    if wrap in ("module", "both"):
        state = {f"module.{k}": v for k, v in state.items()}
    if wrap in ("orig_mod", "both"):
        state = {f"_orig_mod.{k}": v for k, v in state.items()}
    obj = state if wrap == "bare" else {"state_dict": state, "epoch": 300, "acc": 93.1}
    path = tmp_path / "ck.pt"
    torch.save(obj, path)
    loaded = load_model("resnet8", path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/llmpi-pwned",))


def test_pickle_with_code_is_refused_not_run(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": Evil()}}, f)
    if os.path.exists("/tmp/llmpi-pwned"):
        os.remove("/tmp/llmpi-pwned")
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)
    assert not os.path.exists("/tmp/llmpi-pwned")


def test_wrong_arch_names_missing_keys_and_the_arch_that_fits(tmp_path, net):
    path = tmp_path / "r8.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load_model("resnet20", path)
    msg = str(e.value)
    assert "does not fit arch 'resnet20'" in msg and "missing keys: layer1.1" in msg
    assert "it fits arch 'resnet8'" in msg


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*llmpi.train"):
        read_state_dict(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read|refused"):
        read_state_dict(tmp_path / "junk.pt")
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        read_state_dict(tmp_path / "nostate.pt")
