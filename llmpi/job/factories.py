"""Users' own code, named in a job by import path: ``model.factory: mypkg.nets:build``.

    build = resolve("mypkg.nets:build", "model.factory")
    identity("mypkg.nets:build")   # {'path': ..., 'source_sha256': ...}: part of a sweep's fingerprint

A factory is any callable reachable as ``module.path:attribute.path``. The module is imported from the usual
``sys.path`` (plus the directory the sweep runs in, so a ``mypkg/`` next to the job works without installing it).
Every way this can go wrong -- a malformed path, a missing module or attribute, something that is not callable,
a factory that raises or returns the wrong thing -- is a JobError naming the key and the path.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .errors import JobError


def _split(spec: str, key: str) -> tuple[str, str]:
    module, sep, attr = spec.partition(":")
    if (
        not sep
        or not module
        or not attr
        or any(not part.isidentifier() for part in (*module.split("."), *attr.split(".")))
    ):
        raise JobError(f"{key}: {spec!r} is not an import path; write it as package.module:function")
    return module, attr


def _import(module: str, key: str, spec: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise JobError(
                f"{key}: cannot import module {module!r} of {spec!r} (no module named {e.name!r}); "
                f"install it or run from the directory that holds it"
            ) from None
        raise JobError(f"{key}: importing {module!r} for {spec!r} failed: {e}") from None
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise JobError(
            f"{key}: importing {module!r} for {spec!r} raised {type(e).__name__}: {e} ({where.filename}:{where.lineno})"
        ) from None


def resolve(spec: str, key: str) -> Callable[..., Any]:
    """The callable ``spec`` names, or a JobError that says which part of it is wrong."""
    module_name, attr = _split(spec, key)
    obj = _import(module_name, key, spec)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise JobError(f"{key}: {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise JobError(f"{key}: {spec!r} is a {type(obj).__name__}, not something that can be called")
    return obj


def call(spec: str, key: str, *args: Any, **kwargs: Any) -> Any:
    """Call the factory ``spec``; its exceptions become a JobError that names it and where it failed."""
    return invoke(resolve(spec, key), spec, key, *args, **kwargs)


def invoke(fn: Callable[..., Any], spec: str, key: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``, already resolved from ``spec``, as ``call`` does: for a function called many times."""
    try:
        return fn(*args, **kwargs)
    except JobError:
        raise
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise JobError(
            f"{key}: {spec!r} raised {type(e).__name__}: {e} ({where.filename}:{where.lineno}); "
            f"run with --debug for the traceback"
        ) from e


def identity(spec: str) -> dict[str, str]:
    """What a sweep's fingerprint records of a factory: its import path and a hash of its module's source file."""
    module_name, _ = _split(spec, "factory")
    module = _import(module_name, "factory", spec)
    try:
        source = inspect.getsourcefile(module)
        with open(source, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except (TypeError, OSError):  # a built-in or compiled module: the path alone identifies it
        digest = "no source"
    return {"path": spec, "source_sha256": digest}
