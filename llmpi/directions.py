"""Write the directions of a recipe file out in full, for scripts that want the tensors themselves.

    python -m llmpi.directions materialise surfaces/llama.h5 -o surfaces/llama_full.h5 [--device cuda]

A surface file made with ``directions.store: recipe`` holds how to make its directions, not the directions. This
command makes them exactly as the sweep's ranks did -- from the recipe, the job's checkpoint (checked against the
file's fingerprint) and the network -- entry by entry and slice by slice, and writes a copy of the file that holds
them as ``directions/x/<entry>``, ``directions/y/<entry>`` (float32, like a full file) besides everything else,
recipe included, so the copy still resumes with the same job. No direction is ever held whole in memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml

from .job import exits
from .job.errors import JobError

SLICE_ELEMENTS = 1 << 22  # elements made and written at a time (whole slices along dim 0, at least one)


def materialise(path: str | Path, out: str | Path, device: str = "cpu") -> Path:
    """Write ``out``: a copy of the recipe file ``path`` that holds its directions in full (see the module doc)."""
    from .file import store
    from .job import config
    from .space import checkpoint, plan
    from .space.directions import perturbed_entries
    from .space.recipe import Recipe, spans

    path = Path(path)
    store.check_materialise_target(path, out)  # before loading a network that may take minutes
    surface = store.read_surface(path)
    if surface.direction_store != "recipe":
        raise JobError(f"{path} stores its directions in full already: read them with llmpi.file.store.read_directions")
    job = config.from_dict(config.Job, yaml.safe_load(surface.attrs["job"]))
    fields = json.loads(surface.attrs["fingerprint_fields"])
    recipe = Recipe.from_arrays(surface.recipe)
    for key in ("checkpoint", *recipe.sources):  # the directions depend on θ* (and on the other checkpoints)
        given, digest = getattr(job.model, key), checkpoint.sha256_file(getattr(job.model, key))
        recorded = str(fields.get(f"{key}_sha256"))
        if digest != recorded:
            raise JobError(
                f"model.{key} {given} is not the checkpoint {path} was made from (SHA-256 {digest[:12]}..., the "
                f"file's {recorded[:12]}...): the directions depend on it; put the original back at that path"
            )
    model = checkpoint.load_job_model(job.model)
    entries = {k: v.detach() for k, v in perturbed_entries(model, recipe.type).items()}
    recipe.others = dict(plan.recipe_sources(job))
    try:
        recipe.check_entries(entries)
        recipe.verify(device, entries)
    except ValueError as e:
        raise JobError(f"{path}: {e}") from None
    maker = recipe.on(device)
    index = {e.name: k for k, e in enumerate(recipe.entries)}

    def pieces(axis: int, name: str) -> Iterator[tuple[int, np.ndarray]]:
        e = recipe.entries[index[name]]
        flat = entries[name].reshape(-1).to(device)
        if len(e.shape) == 0:
            yield 0, maker.chunk(axis, index[name], 0, 1, flat).cpu().numpy()
            return
        width = max(1, e.numel // e.shape[0])  # one slice along dim 0 (a filter's row for filter entries)
        for start, stop in spans(e.numel, width, max(SLICE_ELEMENTS, width)):
            values = maker.chunk(axis, index[name], start, stop, flat[start:stop])
            yield start // width, values.cpu().numpy().reshape(-1, *e.shape[1:])

    with torch.no_grad():
        return store.materialise(path, out, [(e.name, e.shape) for e in recipe.entries], recipe.axes, pieces)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmpi.directions", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("materialise", help="write a copy of a recipe file holding its directions in full")
    m.add_argument("file", help="a surface file made with directions.store: recipe")
    m.add_argument("-o", "--output", required=True, help="the copy to write (HDF5), e.g. surfaces/x_full.h5")
    m.add_argument("--device", default="cpu", help="where to make the directions: cpu (default) or cuda")
    m.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    return exits.run(lambda: print(materialise(args.file, args.output, args.device)), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
