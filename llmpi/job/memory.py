"""Inputs given in memory (``llmpi.surface(model, data, ...)``): how a job names them, and the objects beside it.

    given = Given(model=net, data=(x, y))                       # every rank holds its own
    raw["model"] = {"factory": label(net), "checkpoint": label(net, "θ*")}
    given.network("model.checkpoint", job.model.checkpoint)    # the nn.Module whose weights are θ*

A job whose network, data or loss the caller holds in memory is the same dataclass tree as a job file
(``llmpi.job.config.Job``), checked by the same rules: each part given in memory fills the job keys that would name
its file or factory with a label that starts ``in memory:`` (``model.factory`` and ``model.checkpoint`` for the
network and θ*, ``model.checkpoint2`` and ``checkpoint3`` for the other models of an interpolation or a plane,
``data.factory``, ``loss.factory``), and the object itself travels beside the job, in a :class:`Given`. So the
job stays plain data: the file's ``job`` attribute shows the labels, the fingerprint holds the parts' hashes
(``llmpi.ranks.fingerprint``), every rank of an SPMD program holds its own objects (nothing is pickled), and a job
with a label cannot be written out as a job file (:func:`refuse_labels`): the message says how to get that part
from files instead. A label without its object (a job copied from such a file) is refused the same way.

``interpolate``, ``plane`` and ``pca`` make the ``directions=`` argument of ``llmpi.surface``: the section's keys
with the models they need, in memory or as checkpoint files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import JobError

MEMORY = "in memory: "

# What to do instead of a part given in memory, for a job file (the cluster's sbatch takes one).
HOW = {
    "model.factory": "save θ* with torch.save({'state_dict': model.state_dict()}, 'theta.pt') and name the function "
    "that builds the network: model.factory: package.module:function (or model.arch, a name from llmpi.models), "
    "with model.checkpoint: theta.pt",
    "model.checkpoint2": "save the second model too (torch.save({'state_dict': model2.state_dict()}, 'theta2.pt')) "
    "and set model.checkpoint2: theta2.pt",
    "model.checkpoint3": "save the third model too (torch.save({'state_dict': model3.state_dict()}, 'theta3.pt')) "
    "and set model.checkpoint3: theta3.pt",
    "data.factory": "name a function that returns the data: data.factory: package.module:function(split, "
    "**data.kwargs) -> a Dataset or (inputs, targets)",
    "loss.factory": "put the loss in a module and name it: loss.factory: package.module:function(model, batch) -> "
    "(summed loss, number of samples, number correct or None)",
}
HOW["model.checkpoint"] = HOW["model.factory"]
LABELLED = tuple(HOW)  # the job keys a part given in memory fills with its label


def is_memory(value: object) -> bool:
    """Whether a job value is the label of a part given in memory."""
    return isinstance(value, str) and value.startswith(MEMORY)


def label(obj: object, what: str = "") -> str:
    """``in memory: MLP`` (``what`` added: ``in memory: MLP θ*``): how the job, its file and messages name a part
    given in memory -- by its class (a function by its name, a pair of tensors as such, a DataLoader by its
    dataset's class)."""
    if isinstance(obj, (tuple, list)):
        name = "tensors"
    elif callable(obj) and not hasattr(obj, "state_dict") and hasattr(obj, "__qualname__"):
        name = obj.__qualname__
    elif hasattr(obj, "dataset") and not hasattr(obj, "__getitem__"):
        name = f"{type(obj).__name__} of {label(obj.dataset).removeprefix(MEMORY)}"
    else:
        name = type(obj).__name__
    return MEMORY + name.replace("/", "_") + (f" {what}" if what else "")


def labelled(raw: Mapping[str, Any]) -> list[str]:
    """The keys of a raw job mapping (``config.to_dict``) that hold a label, in ``LABELLED`` order."""
    out = []
    for key in LABELLED:
        section, name = key.split(".")
        if is_memory((raw.get(section) or {}).get(name)):
            out.append(key)
    return out


def refuse_labels(raw: Mapping[str, Any], doing: str) -> None:
    """A JobError for a job with parts given in memory, where only files and factories will do (``doing``: e.g.
    "write it as a job file"); it says, for each part, what to do instead."""
    keys = labelled(raw)
    if not keys:
        return
    parts = [k for k in keys if k != "model.checkpoint" or "model.factory" not in keys]
    todo = "; ".join(f"for {k}, {HOW[k]}" for k in parts)
    named = " and ".join(", ".join(parts).rsplit(", ", 1))
    raise JobError(
        f"this job's {named} {'was' if len(parts) == 1 else 'were'} given in memory; {doing} needs files: {todo}"
    )


@dataclass
class Given:
    """The parts of a job held in memory, on this rank: the network whose current weights are θ*, the data (one
    data set for the split the job evaluates, or ``{"train": ..., "test": ...}``; each a pair of tensors or a
    ``Dataset``), the loss (a function like ``loss.factory``'s), and the other models of an interpolation or a
    plane (``{"model.checkpoint2": module, ...}``). Nothing here is ever changed: the sweep works on copies."""

    model: Any = None
    data: Any = None
    loss: Callable[..., Any] | None = None
    others: dict[str, Any] = field(default_factory=dict)

    def network(self, key: str, value: str) -> Any:
        """The module the job key ``key`` (``model.checkpoint``, ``model.checkpoint2`` ...) labels."""
        found = self.model if key in ("model.factory", "model.checkpoint") else self.others.get(key)
        if found is None:
            raise orphan(key, value)
        return found

    def split(self, split: str, value: str) -> Any:
        """The data of ``split`` (``value``: the job's ``data.factory`` label)."""
        if self.data is None:
            raise orphan("data.factory", value)
        if isinstance(self.data, Mapping):
            if split not in self.data:
                raise JobError(
                    f"data: the job evaluates the {split} split, but the data given in memory has only "
                    f"{', '.join(map(repr, self.data))}; pass data={{'{split}': ...}} too, or set data.split"
                )
            return self.data[split]
        return self.data

    def loss_function(self, value: str) -> Callable[..., Any]:
        if self.loss is None:
            raise orphan("loss.factory", value)
        return self.loss


def orphan(key: str, value: str) -> JobError:
    """The error for a label whose object is not there (a job copied from a surface file's ``job`` attribute)."""
    return JobError(f"{key}: {value!r} names a part given to llmpi.surface in memory, not a file; {HOW[key]}")


def check(given: Given | None, raw: Mapping[str, Any]) -> None:
    """Every label of the job (``raw``: ``config.to_dict``) has its object in ``given``, or the error for the first
    that has none (a job copied from a surface file's attribute), in the order of ``LABELLED``."""
    held = {
        "model.factory": given and given.model,
        "model.checkpoint": given and given.model,
        "model.checkpoint2": given and given.others.get("model.checkpoint2"),
        "model.checkpoint3": given and given.others.get("model.checkpoint3"),
        "data.factory": given and given.data,
        "loss.factory": given and given.loss,
    }
    for key in labelled(raw):
        if held[key] is None:
            section, name = key.split(".")
            raise orphan(key, raw[section][name])


def given_part(given: Given | None, key: str, value: object) -> Given | None:
    """``given`` when ``value`` (the job's ``key``) is a label; None for a file or factory; the error for a label
    without its object."""
    if not is_memory(value):
        return None
    if given is None:
        raise orphan(key, str(value))
    return given


# ----------------------------------------------------------------------------------------------------------------
# directions=: a kind, its keys and the models it needs


@dataclass(frozen=True)
class Along:
    """What ``directions=`` of ``llmpi.surface`` takes besides a mapping of the section's keys: the keys and the
    models a kind needs (``{"model.checkpoint2": module or checkpoint path, ...}``)."""

    keys: dict[str, Any]
    models: dict[str, Any] = field(default_factory=dict)


def _model(value: Any, key: str) -> Any:
    if isinstance(value, (str, Path)):
        return str(value)  # a checkpoint file, as in a job file
    if not hasattr(value, "state_dict"):
        raise TypeError(f"{key} must be a torch.nn.Module or a checkpoint path, not a {type(value).__name__}")
    return value


def interpolate(other: Any, **keys: Any) -> Along:
    """The line from the swept model (α = 0) to ``other`` (α = 1): an ``nn.Module`` of the same architecture, or a
    checkpoint path (``model.checkpoint2``). ``keys``: more of the ``directions`` section (``type="states"`` moves
    the BatchNorm statistics too). The grid is 1D: ``grid=(-0.5, 1.5, 41)``."""
    return Along({**keys, "kind": "interpolate"}, {"model.checkpoint2": _model(other, "interpolate: other")})


def plane(second: Any, third: Any, **keys: Any) -> Along:
    """The plane through the swept model (0, 0), ``second`` (1, 0) and ``third`` (0, 1): modules or checkpoint
    paths (``model.checkpoint2``, ``model.checkpoint3``)."""
    models = {"model.checkpoint2": _model(second, "plane: second"), "model.checkpoint3": _model(third, "plane: third")}
    return Along({**keys, "kind": "plane"}, models)


def pca(trajectory: str | Path, **keys: Any) -> Along:
    """The top two principal components of a training trajectory: the folder of snapshots ``python -m llmpi.train``
    writes with ``train.save_every`` (``directions.trajectory``); the swept model is the trajectory's end."""
    return Along({**keys, "kind": "pca", "trajectory": str(trajectory)})
