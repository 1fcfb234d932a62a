"""Hugging Face causal language models through examples/hf_causal_lm: tiny random GPT-2 checkpoints saved with
save_pretrained (no download), swept under mpirun -n 2, every point checked against the mean next-token
cross-entropy computed here in plain torch; a bf16 checkpoint swept in bf16 with θ formed in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, run_cli, write_job

transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install -e '.[hf]'")

from examples.hf_causal_lm import lm, make_tiny  # noqa: E402
from llmpi.directions import materialise  # noqa: E402
from llmpi.file.store import read_surface  # noqa: E402
from llmpi.space import checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """Two tiny random GPT-2 checkpoints (θ2 = θ1 moved a little) and token files, as the example writes them."""
    transformers.logging.set_verbosity_error()
    return make_tiny.make(tmp_path_factory.mktemp("tiny_lm"), "gpt2", "float32")


def job_from_example(name: str, folder, out, **changes) -> dict:
    job = yaml.safe_load((REPO / "examples" / "hf_causal_lm" / f"{name}.yaml").read_text())
    text = yaml.safe_dump(job).replace("runs/tiny_lm", str(folder))
    job = yaml.safe_load(text)
    job["output"] = str(out)
    job["runtime"] = {"threads": 1, "precision": "fp32"}
    for key, value in changes.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    return job


def reference_loss(state: dict, folder, tokens: str, context: int = 32) -> tuple[float, float]:
    """Mean next-token cross-entropy and accuracy of GPT-2 with ``state``, by hand in float64: log-softmax of the
    logits, the target token's entry, averaged over every token of every window."""
    net = transformers.GPT2LMHeadModel.from_pretrained(folder / "theta1").eval()
    net.load_state_dict(state, strict=False)  # the tied output layer follows the embedding
    ids = np.fromfile(folder / tokens, dtype=np.uint16).astype(np.int64)
    n = (len(ids) - 1) // context
    x = torch.as_tensor(ids[: n * context]).view(n, context)
    y = torch.as_tensor(ids[1 : n * context + 1]).view(n, context)
    with torch.no_grad():
        logits = net(input_ids=x).logits.double()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1))
    return -logp.mean().item(), 100.0 * (logits.argmax(-1) == y).double().mean().item()


def safetensors_state(path) -> dict:
    return {k: v.clone() for k, v in checkpoint.read_state_dict(path).items()}


@pytest.mark.mpi
def test_interpolation_between_two_checkpoints_under_two_ranks(tiny_lm, tmp_path):
    """The example's line, its direction θ2 − θ1 as a recipe: each rank reads θ2 from its safetensors file."""
    job = job_from_example(
        "interpolate", tiny_lm, tmp_path / "line.h5", grid={"x": [-0.5, 1.5, 5]}, directions={"store": "recipe"}
    )
    result = run_cli("llmpi.sweep", str(write_job(tmp_path / "line.yaml", job)), ranks=2, cwd=REPO)
    assert result.returncode == 0, result.stderr
    s = read_surface(tmp_path / "line.h5")
    assert s.complete and set(s.values) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert s.direction_store == "recipe"
    theta1, theta2 = safetensors_state(tiny_lm / "theta1"), safetensors_state(tiny_lm / "theta2")
    for i, alpha in enumerate(s.x):
        state = {k: (v.double() + alpha * (theta2[k].double() - v.double())).float() for k, v in theta1.items()}
        for split in ("train", "test"):
            loss, acc = reference_loss(state, tiny_lm, f"{split}.tokens")
            assert s.values[f"{split}_loss"][i] == pytest.approx(loss, rel=1e-5)
            assert s.values[f"{split}_acc"][i] == pytest.approx(acc, abs=1e-9)
    assert s.values["train_loss"][1] != s.values["train_loss"][3]  # θ1 and θ2 are different models


@pytest.mark.mpi
def test_random_plane_with_a_recipe_under_two_ranks(tiny_lm, tmp_path):
    job = job_from_example(
        "plane", tiny_lm, tmp_path / "plane.h5", grid={"x": [-1.0, 1.0, 3], "y": [-1.0, 1.0, 2]},
        data={"placement": "host"},
    )  # fmt: skip
    result = run_cli("llmpi.sweep", str(write_job(tmp_path / "plane.yaml", job)), ranks=2, cwd=REPO)
    assert result.returncode == 0, result.stderr
    s = read_surface(tmp_path / "plane.h5")
    assert s.complete and s.direction_store == "recipe"
    materialise(tmp_path / "plane.h5", tmp_path / "full.h5")
    dirs = read_surface(tmp_path / "full.h5").directions
    assert "lm_head.weight" not in dirs[0] and dirs[0]["transformer.wte.weight"].any()  # tied: moved once
    theta = safetensors_state(tiny_lm / "theta1")
    d = [{k: torch.as_tensor(v).double() for k, v in direction.items()} for direction in dirs]
    for j, b in enumerate(s.y):
        for i, a in enumerate(s.x):
            state = {k: (v.double() + a * d[0][k] + b * d[1][k]).float() for k, v in theta.items()}
            loss, acc = reference_loss(state, tiny_lm, "train.tokens")
            assert s.values["train_loss"][j, i] == pytest.approx(loss, rel=1e-5)
            assert s.values["train_acc"][j, i] == pytest.approx(acc, abs=1e-9)


def test_bf16_checkpoint_is_swept_in_bf16_formed_in_float32(tiny_lm, tmp_path):
    """A bf16 checkpoint: θ* stays bf16 on the device, θ = θ* + a·δ + b·η is formed in float32 and rounded once,
    and the loss is the plain computation's at those bf16 weights (run in float32 here: bf16 activations differ)."""
    from llmpi.compute.evaluate import Evaluator
    from llmpi.space.recipe import plan_random

    folder = make_tiny.make(tmp_path / "bf16", "llama", "bfloat16")
    net = lm.model(str(folder / "theta1"))
    checkpoint.load_into(net, checkpoint.read_state_dict(folder / "theta1"), "llama", folder / "theta1")
    assert next(net.parameters()).dtype == torch.bfloat16
    entries = {k: v.detach().clone() for k, v in net.named_parameters()}
    recipe = plan_random(entries, 0, "filter", "biasbn", "weights", 2)
    x, y = lm.data("train", str(folder / "train.tokens"), context=32)
    ev = Evaluator(net, recipe, x, y, 8, precision="bf16", loss=_factory(), hold_directions="regenerate")
    assert {t.dtype for t in ev.weights.base} == {torch.bfloat16}
    loss, acc = ev((0.5, -0.25))
    maker, index = recipe.on("cpu"), {e.name: k for k, e in enumerate(recipe.entries)}
    state = {}
    for name, w in entries.items():
        if name in index and recipe.entries[index[name]].mode != "zero":
            d = [maker.entry(a, index[name], 1 << 20, w) for a in (0, 1)]
            w = torch.add(torch.add(w.float(), d[0], alpha=0.5), d[1], alpha=-0.25).to(torch.bfloat16)
        state[name] = w
    for name, target in zip(ev.names, ev.targets):
        assert torch.equal(target, state[name]), name
    reference = transformers.LlamaForCausalLM.from_pretrained(folder / "theta1", dtype=torch.float32).eval()
    reference.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    with torch.no_grad():
        logits = reference(input_ids=x.long()).logits.double()
    expected = -torch.log_softmax(logits, -1).gather(-1, y.long().unsqueeze(-1)).mean().item()
    assert loss == pytest.approx(expected, rel=2e-2) and 0 <= acc <= 100


def _factory():
    from llmpi.compute.losses import FactoryLoss

    return FactoryLoss("examples.hf_causal_lm.lm:loss")
