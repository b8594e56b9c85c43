"""The package's shape: each folder is one layer, and imports only run downward, without circles.

Read from the source with :mod:`ast` (nothing is imported): every ``import``/``from ... import`` of a
``montage_ray`` module anywhere in a module, including those inside functions, which hide a circle from
Python's import but not from a reader.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "montage_ray"

#: Each layer, lowest first. A module may import its own layer's modules (without circles) and any layer
#: below it; never one above. ``_moved`` (old import paths) and the package face ``montage_ray`` sit on top.
LAYERS = [
    ("errors", "util"),
    ("ffmpeg",),
    ("media",),
    ("encoders",),
    ("probe",),
    ("spending",),
    ("cluster",),
    ("job",),
    ("_cli", "__main__"),
    ("", "_moved"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The montage_ray modules that ``name`` imports (``from montage_ray.x import y`` counts as x.y when that
    is a module, else as x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "montage_ray")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "montage_ray":
                continue
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rank_of(module: str) -> int:
    return RANK[layer_of(module)]


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in edges.items() for b in deps
                  if b in edges and rank_of(b) > rank_of(a) and not b.startswith("montage_ray._moved"))


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_folder_is_a_known_layer():
    unknown = sorted({layer_of(m) for m in all_modules()} - set(RANK))
    assert not unknown, f"modules outside the layer table (add them to LAYERS in {__file__}): {unknown}"


def test_no_upward_imports():
    assert upward_imports(graph()) == []


def test_no_import_circles():
    # A package's face (__init__) imports its own modules; a module of it importing the face is the circle.
    assert circles(graph()) == []


def test_nothing_uses_the_old_module_paths():
    from montage_ray._moved import MOVED

    old = {f"montage_ray.{name}" for name in MOVED}
    here = pathlib.Path(__file__).resolve().parent.parent
    users = []
    for folder in ("montage_ray", "tests", "scripts"):
        for path in (here / folder).rglob("*.py"):
            if path.name in ("_moved.py", "test_layers.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                modules = [n for n in names if n in old]
                if isinstance(node, ast.ImportFrom) and node.module == "montage_ray":
                    modules += [f"montage_ray.{a.name}" for a in node.names if a.name in MOVED]
                users += [f"{path.relative_to(here)}:{node.lineno}: {m}" for m in modules]
    assert users == []


# The checker itself must be able to fail: a circle and an upward import it has to see.
def test_the_checks_see_a_circle_and_an_upward_import():
    edges = {"montage_ray.ffmpeg.caps": {"montage_ray.ffmpeg.commands"},
             "montage_ray.ffmpeg.commands": {"montage_ray.ffmpeg.caps", "montage_ray.job.run"},
             "montage_ray.job.run": set()}
    assert circles(edges) == [["montage_ray.ffmpeg.caps", "montage_ray.ffmpeg.commands"]]
    assert upward_imports(edges) == ["montage_ray.ffmpeg.commands -> montage_ray.job.run"]


def test_old_paths_still_work_with_a_warning():
    import importlib
    import sys

    sys.modules.pop("montage_ray.routing", None)
    with pytest.warns(DeprecationWarning, match="montage_ray.spending.routing"):
        old = importlib.import_module("montage_ray.routing")
    from montage_ray.spending import routing

    assert old is routing
    with pytest.warns(DeprecationWarning, match="montage_ray.media.info.VideoInfo"):
        from montage_ray.media import VideoInfo  # noqa: F401 - an old name of montage_ray.media, deprecated
