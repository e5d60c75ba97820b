"""The package layout follows the data: each stage lives in its own package, and imports only flow down the chain.

core < ingest < embed < dedup < label < annotate < release < uniemox < pipeline < cli: a stage may use an earlier
stage's code, never a later one's (lazy imports inside functions count too; ``if TYPE_CHECKING:`` blocks do not,
they are annotations only). A later stage reads what an earlier one recorded instead of calling back into it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ("core", "ingest", "embed", "dedup", "label", "annotate", "release", "uniemox", "pipeline", "cli")


def _layer(module: str) -> int | None:
    """Rank of a dotted module name in :data:`CHAIN` (None: outside the chain, e.g. the ``emo8`` root)."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return CHAIN.index("cli")
    if parts[0] == "uniemox":
        return CHAIN.index("cli") if parts[1:2] in (["cli"], ["cli_downstream"]) else CHAIN.index("uniemox")
    if parts[0] != "emo8" or len(parts) < 2:
        return None
    return CHAIN.index(parts[1]) if parts[1] in CHAIN else None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import outside ``if TYPE_CHECKING:`` blocks."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _sources() -> list[Path]:
    return sorted(p for package in ("emo8", "uniemox") for p in (ROOT / package).rglob("*.py"))


def upward_imports(modules: list[tuple[str, str]]) -> list[str]:
    """Every import from a module (dotted name, source text) to a later layer of the chain: ``a:line -> b``."""
    problems = []
    for source, text in modules:
        rank = _layer(source)
        if rank is None:
            continue
        for line, target in _runtime_imports(ast.parse(text)):
            target_rank = _layer(target)
            if target_rank is not None and target_rank > rank:
                problems.append(f"{source}:{line} -> {target}")
    return problems


def test_no_stage_imports_a_later_stage() -> None:
    assert upward_imports([(_module_name(p), p.read_text()) for p in _sources()]) == []


def test_every_emo8_module_has_a_room() -> None:
    """No flat modules left at the top of ``emo8/`` besides the package entry points."""
    top = sorted(p.name for p in (ROOT / "emo8").glob("*.py"))
    assert top == ["__init__.py", "__main__.py"]
    rooms = sorted(p.name for p in (ROOT / "emo8").iterdir() if (p / "__init__.py").exists())
    assert set(rooms) <= set(CHAIN), f"packages outside the chain: {set(rooms) - set(CHAIN)}"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("from emo8.release.publish import release\n", 1),  # core -> release: flagged
        ("def f():\n    from emo8.label import people\n", 1),  # lazy imports count
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from emo8.cli import app\n", 0),
        ("from emo8.core.catalog import Catalog\n", 0),  # same layer
    ],
)
def test_the_check_catches_upward_imports(code: str, expected: int) -> None:
    """The checker itself: it must flag an upward import (else the test above could never fail)."""
    assert len(upward_imports([("emo8.core.probe", code)])) == expected
