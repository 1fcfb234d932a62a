"""Write a tiny randomly initialised causal LM (two checkpoints of it) and token files, to try the example offline.

    python -m examples.hf_causal_lm.make_tiny runs/tiny_lm [--arch gpt2|llama] [--dtype float32|bfloat16]

Writes ``<out>/theta1`` and ``<out>/theta2`` (save_pretrained folders: config.json, model.safetensors; θ2 is θ1
moved a little, so the line between them is a short one), and ``<out>/train.tokens``, ``<out>/test.tokens``
(uint16 token ids from a seeded random walk over the vocabulary, so there is something to predict). Then, from the
repository root, ``mpirun -n 2 python -m llmpi.sweep examples/hf_causal_lm/interpolate.yaml`` and ``.../plane.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

VOCAB, CONTEXT = 96, 32


def config(arch: str):
    """A few tens of thousands of parameters, two layers: seconds on a CPU."""
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
        )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=CONTEXT, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
    raise ValueError(f"arch must be gpt2 or llama, not {arch!r}")


def tokens(count: int, seed: int) -> np.ndarray:
    """A random walk over the vocabulary (steps of -2..2): the next token is predictable to a degree."""
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.integers(-2, 3, size=count)) % VOCAB).astype(np.uint16)


def make(out: str | Path, arch: str = "gpt2", dtype: str = "float32", seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = AutoModelForCausalLM.from_config(config(arch))
    second = AutoModelForCausalLM.from_config(config(arch))
    with torch.no_grad():
        for p, q in zip(net.parameters(), second.parameters()):
            q.copy_(p + 0.05 * p.std().nan_to_num(1.0) * torch.randn_like(p))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    net.to(torch_dtype).save_pretrained(out / "theta1")
    second.to(torch_dtype).save_pretrained(out / "theta2")
    tokens(20 * CONTEXT + 1, seed).tofile(out / "train.tokens")
    tokens(10 * CONTEXT + 1, seed + 1).tofile(out / "test.tokens")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.hf_causal_lm.make_tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write theta1/, theta2/, train.tokens, test.tokens into")
    p.add_argument("--arch", default="gpt2", choices=("gpt2", "llama"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = p.parse_args(argv)
    print(make(args.out, args.arch, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
