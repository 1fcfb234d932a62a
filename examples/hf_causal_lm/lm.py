"""Factories for sweeping a Hugging Face causal language model (GPT-2, Llama, Mistral, Qwen, ...) with llmpi.

    model.factory: examples.hf_causal_lm.lm:model     model(path, dtype="auto") -> AutoModelForCausalLM
    data.factory:  examples.hf_causal_lm.lm:data      data(split, train=..., test=..., context=..., dtype=...)
    loss.factory:  examples.hf_causal_lm.lm:loss      loss(model, (inputs, targets)) -> (Σ token CE, tokens, hits)

Nothing here is part of llmpi; ``transformers`` is needed only by ``model`` (``pip install -e ".[hf]"``), and only
local folders are read (``local_files_only``: nothing is downloaded). The surface is the mean next-token
cross-entropy per token; the accuracy is the share of tokens whose next token is the arg-max prediction.

Token files are flat arrays of token ids written by numpy (``array.astype(np.uint16).tofile(path)``; uint16 holds
vocabularies up to 65,536 such as GPT-2's, int32 any). ``data`` memory-maps the file and cuts it into consecutive
windows of ``context`` tokens (inputs) and the same windows shifted by one token (targets): both are views of the
mapping, so a corpus larger than memory is never read whole -- with ``data.placement: host`` the sweep streams
batches from it (``data.subset`` picks windows and reads only those).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model(path: str, dtype: str = "auto") -> nn.Module:
    """The model factory: ``AutoModelForCausalLM.from_pretrained(path)`` from a local folder, in ``dtype`` (auto:
    the dtype it was saved in; bf16 checkpoints stay bf16). llmpi then loads ``model.checkpoint`` -- the same
    folder -- into it strictly, which is what the surface file's fingerprint identifies."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ImportError(
            "examples.hf_causal_lm needs transformers: pip install -e '.[hf]' (or pip install transformers)"
        ) from None
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    net = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True)
    return net.eval()


def windows(path: str, context: int, dtype: str = "uint16") -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets): windows of ``context`` tokens of a memory-mapped token file and the same shifted by one,
    both views of one read-only (copy-on-write) mapping."""
    tokens = torch.from_numpy(np.memmap(path, dtype=np.dtype(dtype), mode="c"))
    count = (len(tokens) - 1) // context
    if count < 1:
        raise ValueError(f"{path} holds {len(tokens)} tokens: fewer than one window of {context} plus one")
    inputs = tokens.as_strided((count, context), (context, 1), 0)
    targets = tokens.as_strided((count, context), (context, 1), 1)
    return inputs, targets


def data(
    split: str, train: str, test: str | None = None, context: int = 128, dtype: str = "uint16"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The data factory: the token file of ``split`` (``train``, or ``test``) cut into windows of ``context``."""
    if split == "test" and test is None:
        raise ValueError("data.split asks for the test split but data.kwargs gives no test token file")
    return windows(train if split == "train" else test, context, dtype)


def loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int, torch.Tensor]:
    """The loss factory: (Σ next-token cross-entropy over the batch's tokens in float64, tokens, correct tokens).

    The logits are taken to float32 before the softmax whatever the model's dtype, as llmpi's own losses do.
    """
    inputs, targets = batch
    logits = net(input_ids=inputs.long(), use_cache=False).logits.float()
    targets = targets.long()
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    correct = (logits.argmax(dim=-1) == targets).sum()
    return per_token.double().sum(), targets.numel(), correct
