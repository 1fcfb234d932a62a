"""The keys of job files, for people and for editors: ``--keys`` lists them, a JSON Schema describes them.

    python -m llmpi.sweep --keys            # every key of a sweep job: type, default and why
    python -m llmpi.train --keys            # the same for a training job
    python -m llmpi.jobschema               # where the shipped JSON Schemas are (for your editor's settings)
    python -m llmpi.jobschema --write       # regenerate them from the dataclasses (make schema)

Both come from the dataclass trees the loader builds (``llmpi.job.config.Job``, ``llmpi.train.TrainJob``): types from
the annotations, defaults and reasons from the fields' ``_why`` metadata, required keys from their explicit
marker (``_required``, and a section's ``requires``). They cannot say less than the loader accepts; the loader
checks more (ranges, keys that depend on each other), with messages that say what to do. A test keeps the shipped
files equal to the generated ones and validates every file in ``jobs/`` against them.

Nothing here imports torch or mpi4py: ``--keys`` answers at once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .config import _type_name

DRAFT = "http://json-schema.org/draft-07/schema#"  # the draft editors' YAML plugins support best


def job_classes() -> dict[str, tuple[type, str]]:
    """Schema file stem -> (root dataclass, what the file is)."""
    from .config import Job
    from .training import TrainJob

    return {
        "job": (Job, "llmpi sweep job (python -m llmpi.sweep JOB.yaml)"),
        "train-job": (TrainJob, "llmpi training job (python -m llmpi.train JOB.yaml)"),
    }


# -- keys as text -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One key of a job file as ``--keys`` shows it."""

    path: str
    type: str  # "section" for a mapping of keys
    default: str | None  # YAML text; None for sections and required keys
    why: str
    required: bool


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _given(tp: Any) -> Any:
    """The annotation of a required key: null is what it may not be (``str | None`` -> ``str``)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return functools.reduce(operator.or_, rest)
    return tp


def _yaml_text(value: Any) -> str:
    from .config import to_dict

    text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=1000).strip()
    return text.removesuffix("...").strip()


def keys(cls: type, prefix: str = "", required_here: typing.Mapping[str, str] | None = None) -> list[Key]:
    """Every key of the tree rooted at ``cls``, sections before their keys, in the order of the dataclasses."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        why = f.metadata.get("why", "")
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.append(Key(path, "section", None, why, False))
            out += keys(tp, f"{path}.", f.metadata.get("requires"))
            continue
        if f.metadata.get("required") or f.name in (required_here or {}):
            out.append(Key(path, _type_name(_given(tp)), None, why, True))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append(Key(path, _type_name(tp), _yaml_text(default), why, False))
    return out


def render_keys(cls: type, title: str) -> str:
    """``--keys``: one block per key -- ``path: type = default`` (or ``(required)``), the reason indented below."""
    lines = [f"Keys of an {title}; --set KEY=VALUE overrides any of them.", ""]
    for k in keys(cls):
        depth = k.path.count(".")
        indent = "  " * depth
        if k.type == "section":
            lines.append(f"{indent}{k.path}:  {k.why}" if k.why else f"{indent}{k.path}:")
            continue
        value = "(required)" if k.required else f"= {k.default}"
        lines.append(f"{indent}{k.path}: {k.type} {value}")
        if k.why:
            lines.append(f"{indent}    {k.why}")
    return "\n".join(lines)


def print_keys(stem: str) -> int:
    """What the ``--keys`` flag of a command does: print the keys of its kind of job ('job', 'train-job')."""
    print(render_keys(*job_classes()[stem]))
    return 0


# -- JSON Schema --------------------------------------------------------------------------------------------------


def _type_schema(tp: Any) -> dict:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _object_schema(tp)
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type_schema(a) for a in typing.get_args(tp)]}
    if origin is tuple:
        items = [_type_schema(a) for a in typing.get_args(tp)]
        return {"type": "array", "items": items, "minItems": len(items), "maxItems": len(items)}
    if origin is list:
        return {"type": "array", "items": _type_schema(typing.get_args(tp)[0])}
    if origin is dict:
        return {"type": "object"}
    simple = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    if tp is Any:
        return {}
    raise AssertionError(f"no JSON Schema for the annotation {tp!r}")


def _object_schema(cls: type, requires: typing.Mapping[str, str] | None = None) -> dict:
    from .config import to_dict

    hints = _hints(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            prop = _object_schema(tp, f.metadata.get("requires"))
        else:
            if f.metadata.get("required") or f.name in (requires or {}):
                prop = _type_schema(_given(tp))
                required.append(f.name)
            else:
                prop = _type_schema(tp)
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                prop["default"] = to_dict(default)
        why = f.metadata.get("why", "")
        if why:
            prop = {"description": why, **prop}
        properties[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def schema(cls: type, title: str) -> dict:
    """The JSON Schema (draft 7) of job files whose tree is ``cls``."""
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    body = _object_schema(cls)
    head = {"$schema": DRAFT, "title": title}
    if doc and not doc.startswith(f"{cls.__name__}("):  # dataclasses invent a docstring when there is none
        head["description"] = " ".join(doc.split())
    return head | body


def schema_text(stem: str) -> str:
    """The schema file's exact text: what ``--write`` writes and the test compares."""
    cls, title = job_classes()[stem]
    return json.dumps(schema(cls, title), indent=2, ensure_ascii=False) + "\n"


def shipped(stem: str) -> Path:
    """Where the schema ships inside the installed package (``llmpi/schemas/<stem>.schema.json``)."""
    return Path(str(resources.files("llmpi").joinpath("schemas", f"{stem}.schema.json")))


def write() -> list[Path]:
    written = []
    for stem in job_classes():
        path = shipped(stem)
        path.parent.mkdir(exist_ok=True)
        path.write_text(schema_text(stem), encoding="utf-8")
        written.append(path)
    return written
