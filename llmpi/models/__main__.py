"""List the architectures with their parameter counts.

python -m llmpi.models
"""

from __future__ import annotations

import sys

from . import ALIASES, names, parameter_count


def main() -> int:
    aliases = {target: alias for alias, target in ALIASES.items()}
    width = max(map(len, names()))
    print(f"{'arch':<{width}}  {'parameters':>12}")
    for name in names():
        also = f"  (also: {aliases[name]})" if name in aliases else ""
        print(f"{name:<{width}}  {parameter_count(name):>12,}{also}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
