"""Running out of device memory: recognised in one place, and answered in one way -- halve and retry, or say what
to set.

    result = retry_halving(lambda: step(batch), shrink, device, advice=lambda: "set data.batch_size smaller")
    rate = fits(lambda: probe(batch), device)          # None when it does not fit (a probe, not a failure)

``retry_halving`` runs a step; when the device runs out of memory it frees the allocator's cache and asks
``shrink`` to halve whatever the step's size is (a batch, points per pass); ``shrink`` says what it changed, and
the step runs again, with a RuntimeWarning naming the change. When ``shrink`` cannot (the size is already 1, or
the size is the user's own choice) the error is a MemoryError that says what ran out and what to set. Used by
the evaluator's passes, the Hessian's products and the batch-size probe of ``autotune``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def is_out_of_memory(error: BaseException) -> bool:
    """A device allocation failure: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


def release(device: torch.device) -> None:
    """Give the cached blocks of a failed allocation back, so the smaller retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def retry_halving(
    step: Callable[[], T],
    shrink: Callable[[], str | None],
    device: torch.device,
    advice: Callable[[], str],
    warn: bool = True,
) -> T:
    """``step()``, run again after ``shrink()`` each time the device runs out of memory.

    ``shrink`` halves the step's size and returns what changed, e.g. "with batch 64 x 1 point(s); retrying with
    32 x 1", or None when nothing may be halved: then a MemoryError is raised, its text what ran out followed by
    ``advice()`` (called then, so it can name the sizes that failed). Every other error propagates as it is.
    ``warn``: a RuntimeWarning "out of memory on <device> <change>" for each retry (off for silent probing).
    """
    while True:
        try:
            return step()
        except Exception as e:  # only allocation failures are handled; everything else propagates as it is
            if not is_out_of_memory(e):
                raise
            release(device)
            change = shrink()
            if change is None:
                raise MemoryError(f"out of memory on {device} ({str(e).splitlines()[0]}): {advice()}") from None
            if warn:
                warnings.warn(f"out of memory on {device} {change}", RuntimeWarning, stacklevel=3)


def fits(step: Callable[[], T], device: torch.device) -> T | None:
    """``step()``, or None when it runs out of device memory (a candidate too large to try, not a failure)."""
    try:
        return step()
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        release(device)
        return None
