"""The house by layer: the import contracts hold (and a wrong import breaks them), no module imports itself round
a circle, the front door holds only the commands, and the map of the code names every module.

The contracts live in pyproject.toml ([tool.importlinter]) and are checked with import-linter's own command, the
one ``make lint`` runs; the circles are found here independently, on grimp's graph of direct imports.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mpilaunch import REPO

LLMPI = REPO / "llmpi"
COMMANDS = {"sweep", "spectrum", "status", "train", "slurm", "directions", "jobschema", "plot"}
ROOMS = {"ranks", "report", "compute", "space", "file", "job", "models"}


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's command on the package under ``root`` (its pyproject.toml), found first on the path."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=root,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_contracts_hold():
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    kept = re.findall(r"^(.+) KEPT$", out.stdout, re.M)
    assert len(kept) == 5, out.stdout  # layers, no MPI in the numerics, no torch in the protocol, h5py, cycles


# A wrong import planted in a copy of the package, and the contract it must break.
WRONG = [
    ("compute/evaluate.py", "from ..ranks import protocol", "layers"),  # upward: numerics into the ranks
    ("file/store.py", "from ..space import theta", "layers"),  # upward: the file into the space
    ("sweep.py", "from . import status", "layers"),  # a command into another command
    ("space/recipe.py", "import mpi4py", "never import MPI"),
    ("ranks/protocol.py", "import torch", "never import torch"),
    ("report/summary.py", "import h5py", "only llmpi.file imports h5py"),
    ("compute/fold.py", "from . import forward", "no import cycles"),  # forward imports fold
]


@pytest.mark.parametrize("module, line, contract", WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_import_breaks_its_contract(tmp_path, module, line, contract):
    shutil.copytree(LLMPI, tmp_path / "llmpi", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / "llmpi" / module
    target.write_text(target.read_text() + f"\n{line}  # planted by tests/test_layers.py\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0, out.stdout
    broken = re.findall(r"^(.+) BROKEN$", out.stdout, re.M)
    assert any(contract in b for b in broken), out.stdout  # an upward import closes a circle of rooms too


def test_no_module_imports_itself_round_a_circle():
    """Strongly connected components of the graph of direct imports (Tarjan): every one a single module."""
    import grimp

    graph = grimp.build_graph("llmpi", cache_dir=None)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert circles == []


def test_the_front_door_holds_the_commands_and_the_rooms():
    modules = {p.stem for p in LLMPI.glob("*.py")} - {"__init__"}
    packages = {p.name for p in LLMPI.iterdir() if (p / "__init__.py").exists()}
    assert modules == COMMANDS
    assert packages == ROOMS
    assert len(packages) <= 8


def _modules(package: Path) -> list[tuple[str, str]]:
    """(folder, module) for every module of the package: folder '' for the front door."""
    out = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if path.stem in ("__init__", "__main__"):
            continue
        out.append(("/".join(rel.parts[:-1]), path.stem))
    return out


def _entry(text: str, start: str, ends: list[str]) -> str:
    """The part of ``text`` from ``start`` to the first of ``ends`` after it."""
    a = text.index(start)
    b = min((i for e in ends if (i := text.find(e, a + len(start))) >= 0), default=len(text))
    return text[a:b]


def unmapped(package: Path, readme: str) -> list[str]:
    """The modules of ``package`` that its __init__ docstring's map or README's "Where the code is" table does not
    name in their folder's entry."""
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    table = _entry(readme, "## Where the code is", ["\n## "])
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines() if line.startswith("| `llmpi")}
    rooms = [f"* ``{r}/``" for r in ROOMS]
    missing = []
    for folder, module in _modules(package):
        word = re.compile(rf"(?<![\w.]){re.escape(module)}(?![\w])")
        if folder == "":
            in_doc = _entry(doc, "the commands:", ["Behind it"])
            row = rows.get("llmpi/", "")
        else:
            start = f"* ``{folder}/``"
            in_doc = _entry(doc, start, [r for r in rooms if r != start] + ["``schemas/``"])
            row = rows.get(f"llmpi/{folder}/", "")
        if not word.search(in_doc):
            missing.append(f"llmpi/__init__.py: {folder or 'llmpi'}/{module}")
        if not word.search(row):
            missing.append(f"README: {folder or 'llmpi'}/{module}")
    return missing


def test_the_map_names_every_module():
    """llmpi/__init__.py's docstring and README's "Where the code is" name every module in its folder's entry."""
    assert unmapped(LLMPI, (REPO / "README.md").read_text()) == []


def test_a_module_the_map_does_not_name_is_found(tmp_path):
    shutil.copytree(LLMPI, tmp_path / "llmpi", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "llmpi" / "space" / "hyperplane.py").write_text('"""Not on the map."""\n')
    missing = unmapped(tmp_path / "llmpi", (REPO / "README.md").read_text())
    assert missing == ["llmpi/__init__.py: space/hyperplane", "README: space/hyperplane"]
