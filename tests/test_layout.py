"""The shape of the code: one room per concern. No source file over 600 lines, no class over 250,
and no import cycle among the package's modules, imports made only for type checking included."""

import ast
from pathlib import Path

from tests.server_process import REPO

MAX_FILE_LINES = 600
MAX_CLASS_LINES = 250


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package ``root/superchat`` by its dotted name."""
    found = {}
    for path in (root / "superchat").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in it (functions and
    TYPE_CHECKING blocks too)."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(resolve(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                # "from . import x" imports a module when x is one.
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else resolve(base))
    return {module for module in found if module is not None and module != name}


def cycles(root: Path) -> list[str]:
    known = modules(root)
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                found.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def test_no_file_and_no_class_is_too_long():
    too_long = []
    for path in modules(REPO).values():
        text = path.read_text()
        where = path.relative_to(REPO)
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{where}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{where}: class {node.name}, {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def test_no_import_cycle():
    assert cycles(REPO) == []


def test_an_import_made_for_type_checking_alone_still_closes_a_cycle(tmp_path):
    package = tmp_path / "superchat"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .b import B\n")
    (package / "b.py").write_text("from . import a\n")
    assert cycles(tmp_path) == ["superchat.a -> superchat.b -> superchat.a"]
