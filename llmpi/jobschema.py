"""Where the job files' JSON Schemas ship, and their regeneration from the job dataclasses.

    python -m llmpi.jobschema               # where the shipped JSON Schemas are (for your editor's settings)
    python -m llmpi.jobschema --write       # regenerate them from the dataclasses (make schema)

The schemas and ``--keys`` come from ``llmpi.job.schema``; this is its command line.
"""

from __future__ import annotations

import argparse
import sys

from .job.schema import job_classes, shipped, write


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmpi.jobschema", description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="regenerate the shipped schemas from the dataclasses")
    args = p.parse_args(argv)
    paths = write() if args.write else [shipped(stem) for stem in job_classes()]
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
