"""What a surface shows: the loss functions, and BatchNorm recalibration. Pure torch numerics, no MPI.

    per_sample("mse", logits, targets)              # float32 (B,): one value per sample
    total, n, correct = factory_result(spec, fn(model, (x, y)))
    recalibrate_bn(model, train_inputs, batch_size=128)

Built-in losses (``loss.name``), for classifiers returning logits (samples, classes) and class-index targets:

* ``crossentropy``: the mean over samples of -log softmax(logits)[target] (the paper's loss);
* ``mse``: the paper's code's convention, ``nn.MSELoss()(softmax(logits), one_hot(target))``: the squared
  difference between the softmax output and the one-hot target, averaged over classes and over samples. Per
  sample that is mean_c (softmax_c - onehot_c)^2, so the surface is the mean of these per-sample values.

Both give accuracy as top-1 percent. A ``loss.factory`` (``package.module:function``) serves everything else
(language models, regression, ...): ``function(model, batch)`` with ``batch = (inputs, targets)`` (one batch of
the data set, on the device) returns ``(summed loss, number of samples, number correct or None)``; the surface is
Σ summed loss / Σ number of samples over all batches, and accuracy 100 · Σ correct / Σ samples. A factory that
returns None for the count has no accuracy: the file then holds no ``<split>_acc`` dataset at all (absent, not
NaN, so nothing reads a fake value as "not computed yet").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..job.errors import JobError

if TYPE_CHECKING:
    from ..job.config import LossSpec

BUILTIN = ("crossentropy", "mse")
FACTORY_KEY = "loss.factory"

LossFactory = Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], Any]


def per_sample(name: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The float32 loss of every sample: ``logits`` (..., classes), ``targets`` class indices (...)."""
    logits = logits.float()
    if name == "crossentropy":
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view(
            targets.shape
        )
    if name == "mse":
        probabilities = torch.softmax(logits, dim=-1)
        one_hot = F.one_hot(targets, logits.shape[-1]).to(probabilities.dtype)
        return (probabilities - one_hot).square().mean(dim=-1)
    raise ValueError(f"unknown loss {name!r}; built-in: {', '.join(BUILTIN)}")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _scalar(value: Any) -> Any:
    """A one-element tensor as a Python number; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def factory_result(spec: str, result: Any) -> tuple[float, int, int | None]:
    """Check what a loss factory returned for one batch: (summed loss, n, correct or None).

    n is in the factory's own unit (an image, a token, a pixel), so it is not checked against the batch length.
    """
    expected = "(summed loss, number of samples, number correct or None)"
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise JobError(f"{FACTORY_KEY}: {spec!r} returned {_describe(result)}, not {expected}")
    total, count, correct = (_scalar(v) for v in result)
    if not isinstance(total, Real) or isinstance(total, bool):
        raise JobError(f"{FACTORY_KEY}: {spec!r} returned {_describe(result[0])} as the summed loss, not a number")
    if not isinstance(count, Integral) or isinstance(count, bool) or count < 0:
        raise JobError(
            f"{FACTORY_KEY}: {spec!r} returned {count!r} as the number of samples, not a non-negative integer"
        )
    if correct is not None and (
        not isinstance(correct, Integral) or isinstance(correct, bool) or not 0 <= correct <= count
    ):
        raise JobError(
            f"{FACTORY_KEY}: {spec!r} returned {correct!r} as the number correct: give an integer between 0 and the "
            f"number of samples ({count}), or None when the task has no accuracy"
        )
    return float(total), int(count), None if correct is None else int(correct)


class FactoryLoss:
    """The user's ``loss.factory``: called on one batch, its result checked (:func:`factory_result`)."""

    def __init__(self, spec: str, function: LossFactory | None = None) -> None:
        from ..job.factories import resolve

        self.spec = spec
        self.function = function if function is not None else resolve(spec, FACTORY_KEY)

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, int, int | None]:
        from ..job.factories import invoke

        return factory_result(self.spec, invoke(self.function, self.spec, FACTORY_KEY, model, batch))


def prepare(
    spec: LossSpec,
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    function: LossFactory | None = None,
    label: str | None = None,
) -> tuple[str | FactoryLoss, bool]:
    """The loss a job's ``loss`` section names, tried once at θ* on a few samples, so that a loss that does not
    fit the model or the data is a clear error before the sweep starts; (loss, whether it has an accuracy).
    ``function``: the loss factory's function, given in memory (``spec.factory`` is then its label); ``label``:
    how messages name the network."""
    model.eval()
    with torch.no_grad():
        if spec.factory is not None:
            loss = FactoryLoss(spec.factory, function)
            _, _, correct = loss(model, (inputs, targets))
            return loss, correct is not None
        try:
            outputs = model(inputs)
        except Exception as e:  # the network refuses these inputs: the data does not fit it
            raise JobError(
                f"the network{f' {label}' if label else ''} cannot take the data: on {len(inputs)} samples of "
                f"{_describe(inputs)} ({inputs.dtype}) it raised {type(e).__name__}: {e}. Give data whose inputs "
                f"the network's forward takes (data.factory, or the data passed to llmpi.surface)"
            ) from e
    classes = outputs.shape[-1] if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 else 0
    if (
        not classes
        or targets.shape != (len(inputs),)
        or targets.is_floating_point()
        or targets.is_complex()
        or targets.dtype == torch.bool
        or int(targets.min()) < 0
        or int(targets.max()) >= classes
    ):
        got = f"a tensor of shape {tuple(outputs.shape)}" if isinstance(outputs, torch.Tensor) else _describe(outputs)
        raise JobError(
            f"loss.name: {spec.name} needs a classifier: (samples, classes) logits and class-index targets (samples,) "
            f"below the number of classes; for {len(inputs)} samples the network returned {got} and the targets are "
            f"{targets.dtype} of shape {tuple(targets.shape)}. For other tasks write a loss.factory"
        )
    return spec.name, True


class FactoryTally:
    """Sums a loss factory's per-batch results exactly: the mean does not depend on the order of the batches.

    The per-batch sums are float64 values; ``math.fsum`` returns their correctly rounded sum, whatever the order.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.sums: list[float] = []
        self.count = 0
        self.correct: int | None = 0
        self.has_accuracy: bool | None = None

    def add(self, total: float, count: int, correct: int | None) -> None:
        if self.has_accuracy is None:
            self.has_accuracy = correct is not None
        elif self.has_accuracy != (correct is not None):
            raise JobError(
                f"{FACTORY_KEY}: {self.spec!r} returned None as the number correct for some batches and a number "
                f"for others; return None always (no accuracy) or a count always"
            )
        self.sums.append(total)
        self.count += count
        if correct is not None:
            self.correct += correct

    def result(self) -> tuple[float, float | None]:
        """(mean loss, accuracy in percent or None)."""
        if self.count == 0:
            raise JobError(f"{FACTORY_KEY}: {self.spec!r} counted 0 samples over the whole data set")
        mean = math.fsum(self.sums) / self.count
        return mean, (100.0 * self.correct / self.count if self.has_accuracy else None)


# ----------------------------------------------------------------------------------------------------------------
# BatchNorm


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics (the only ones recalibration can change)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    inputs: torch.Tensor,
    batch_size: int,
    forward: Callable[[torch.Tensor], Any] | None = None,
    between_batches: Callable[[], None] | None = None,
) -> None:
    """Replace every BatchNorm's running statistics by those of ``inputs`` at the network's current weights.

    The statistics are reset, then accumulated with ``momentum=None`` (PyTorch's cumulative average: every batch
    of ``batch_size`` counts equally, the mean of the batch means and of the unbiased batch variances), in a fixed
    order, with only the BatchNorm layers in training mode: dropout and everything else stays in eval mode, so the
    result is deterministic. ``forward`` runs the network (default: ``model`` itself, e.g. a compiled one).
    The model is left in eval mode with the original momenta.
    """
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    model.eval()
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        run = forward or model
        for start in range(0, len(inputs), batch_size):
            if between_batches is not None:
                between_batches()
            run(inputs[start : start + batch_size])
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
            m.eval()


def check_recalibration(model: nn.Module, kind: str, label: str) -> None:
    """``evaluation.bn: recalibrate`` needs BatchNorm layers with statistics, and weights-only directions."""
    if not batchnorm_layers(model):
        raise JobError(
            f"evaluation.bn is recalibrate but {label} has no BatchNorm layer with running statistics: there is "
            f"nothing to recalibrate; use evaluation.bn: eval"
        )
    if kind == "states":
        raise JobError(
            "evaluation.bn: recalibrate recomputes the BatchNorm running statistics that directions.type: states "
            "perturbs; use directions.type: weights with recalibrate, or evaluation.bn: eval with states"
        )
