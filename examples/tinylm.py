"""A tiny character-level transformer language model, swept with llmpi through its three factories.

    python -m examples.tinylm examples/tinylm.yaml        # train: writes the job's model.checkpoint in seconds
    mpirun -n 2 python -m llmpi.sweep examples/tinylm.yaml # sweep the surface around it
    python -m llmpi.plot surfaces/tinylm.h5                 # draw it

Nothing here is part of llmpi: this file is what a user writes. The job names three functions by import path
(run from the repository root, so ``examples.tinylm`` imports):

* ``model(**model.kwargs)``: the network, an ``nn.Module`` (a 2-layer pre-norm causal transformer);
* ``data(split, **data.kwargs)``: ``(inputs, targets)`` token tensors, one row per window of ``context``
  characters of a corpus generated here (deterministically, from a seeded toy grammar: no download), targets the
  inputs shifted by one character;
* ``loss(model, batch)``: (summed next-token cross-entropy over all tokens of the batch, number of tokens, number
  of correctly predicted next tokens), so the surface is the mean per-token loss and the accuracy is the
  next-token accuracy in percent.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "she", "he", "the bird", "our teacher"]
VERBS = ["sees", "likes", "finds", "eats", "wants", "draws", "hears"]
OBJECTS = ["the ball", "a fish", "red apples", "the moon", "some bread", "a song", "the river"]
ADVERBS = ["", "", " today", " again", " slowly", " at night"]
VOCAB = sorted(set("".join(SUBJECTS + VERBS + OBJECTS + ADVERBS) + " ."))
CORPUS_SEED = {"train": 0, "test": 1}


def corpus(split: str, characters: int) -> str:
    """At least ``characters`` characters of sentences from a toy grammar; the same text every time."""
    rng = random.Random(CORPUS_SEED[split])
    parts, length = [], 0
    while length < characters:
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ADVERBS)}. "
        parts.append(sentence)
        length += len(sentence)
    return "".join(parts)


def encode(text: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(VOCAB)}
    return torch.tensor([index[c] for c in text], dtype=torch.int64)


def data(split: str, context: int = 32, samples: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples`` non-overlapping windows of ``context`` tokens (inputs) and the same shifted by one (targets)."""
    tokens = encode(corpus(split, samples * context + 1))
    inputs = tokens[: samples * context].view(samples, context)
    targets = tokens[1 : samples * context + 1].view(samples, context)
    return inputs, targets


class Block(nn.Module):
    """Pre-norm transformer block: causal multi-head self-attention, then a 4x MLP, each with a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 2, context: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), dim)
        self.position = nn.Parameter(torch.zeros(context, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(VOCAB))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (batch, time, vocabulary) for tokens (batch, time)."""
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def model(dim: int = 32, heads: int = 4, layers: int = 2, context: int = 32) -> nn.Module:
    """The model factory (``model.factory: examples.tinylm:model``)."""
    if dim % heads:
        raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
    return TinyLM(dim, heads, layers, context)


def loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int, torch.Tensor]:
    """The loss factory: (Σ next-token cross-entropy over the batch's tokens, tokens, correct next tokens).

    The per-token losses are summed in float64, so the batch's sum carries no float32 rounding of its own.
    """
    inputs, targets = batch
    logits = net(inputs).float()
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    correct = (logits.argmax(dim=-1) == targets).sum()
    return per_token.double().sum(), targets.numel(), correct


def train(job_path: str, steps: int = 300, batch: int = 32, lr: float = 3e-3, seed: int = 0) -> str:
    """Train the job's model on its data (Adam), write ``model.checkpoint``; returns the checkpoint path."""
    from pathlib import Path

    from llmpi.job.config import load_job

    job = load_job(job_path)
    torch.manual_seed(seed)
    net = model(**job.model.kwargs)
    inputs, targets = data("train", **job.data.kwargs)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    net.train()
    for step in range(steps):
        pick = torch.randint(len(inputs), (batch,), generator=generator)
        total, count, _ = loss(net, (inputs[pick], targets[pick]))
        optimizer.zero_grad()
        (total / count).backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {float(total.detach()) / count:.3f}", flush=True)
    net.eval()
    with torch.no_grad():
        total, count, correct = loss(net, data("test", **job.data.kwargs))
    out = Path(job.model.checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "steps": steps}, out)
    print(
        f"trained in {time.perf_counter() - t0:.1f} s: test loss {float(total) / count:.3f}, next-token accuracy "
        f"{100 * int(correct) / count:.1f}% -> {out}"
    )
    return str(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.tinylm", description="train the tiny LM of a job file")
    p.add_argument("job", help="the sweep job (examples/tinylm.yaml): its model/data kwargs and checkpoint path")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    train(args.job, steps=args.steps, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
