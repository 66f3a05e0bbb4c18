"""docs/architecture.md's layer table is the real import order of the package.

Each module of ``midvary/`` sits in one row of the table; a module imports (at run time: not
under ``TYPE_CHECKING``, not inside a function) only modules of its own row or rows below.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import midvary

PACKAGE = Path(midvary.__file__).resolve().parent
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    """``midvary._store._redis`` for ``midvary/_store/_redis.py``; a package: its folder."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def runtime_imports(name: str) -> set[str]:
    """The package's modules that ``name`` imports when it is imported."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    visit(block)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                subs = {f"{module}.{alias.name}" for alias in node.names} & MODULES.keys()
                found.update(subs or {module})
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return {module for module in found if module in MODULES and module != name}


def layers() -> list[tuple[str, list[str]]]:
    """The table's rows, top first: ``(layer, its modules as dotted prefixes)``."""
    rows = []
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if len(cells) == 3 and cells[0] not in ("layer", "---"):
            names = re.findall(r"`([^`]+)`", cells[1])
            modules = [
                "midvary"
                if name == "__init__.py"
                else "midvary." + name.removesuffix(".py").rstrip("/").replace("/", ".")
                for name in names
            ]
            rows.append((cells[0], modules))
    return rows


def row_of(module: str, rows: list[tuple[str, list[str]]]) -> int:
    """The row whose module (or package) ``module`` is; the package itself is the façade."""
    for index, (_layer, names) in enumerate(rows):
        for name in names:
            if module == name or (name != "midvary" and module.startswith(name + ".")):
                return index
    raise AssertionError(f"{module} is in no row of docs/architecture.md's table")


def test_every_module_imports_only_its_row_or_below() -> None:
    rows = layers()
    assert len(rows) > 10, "the table was not found"
    upward = []
    for module in sorted(MODULES):
        if module == "midvary.__main__":
            continue
        mine = row_of(module, rows)
        for imported in sorted(runtime_imports(module)):
            theirs = row_of(imported, rows)
            if theirs < mine:
                upward.append(f"{module} ({rows[mine][0]}) imports {imported} ({rows[theirs][0]})")
    assert not upward, "\n".join(upward)
