"""The package boundaries hold (README, code map): only sources/ imports libvirt, only
server/ imports uvicorn, relay/ imports neither of them nor access/ (tokens, passes) nor
kinds/ and the model (it moves bytes alike for every kind)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BROKER = Path(__file__).resolve().parents[2] / "broker"


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, absolute, as dotted names (relative ones resolved)."""
    package = path.relative_to(BROKER.parent).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def modules(*, inside: str | None = None, outside: str | None = None) -> list[Path]:
    every = [p for p in BROKER.rglob("*.py")]
    if inside:
        every = [p for p in every if p.is_relative_to(BROKER / inside)]
    if outside:
        every = [p for p in every if not p.is_relative_to(BROKER / outside)]
    return sorted(every)


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(BROKER.parent)} imports {name}"
        for p in paths
        for name in sorted(imports_of(p))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize(
    ("rule", "paths", "forbidden"),
    [
        ("only sources/ imports libvirt", modules(outside="sources"), ("libvirt", "libvirtaio")),
        ("only server/ imports uvicorn", modules(outside="server"), ("uvicorn",)),
        ("relay/ imports no uvicorn, libvirt, access/ or kinds/", modules(inside="relay"),
         ("uvicorn", "libvirt", "broker.access", "broker.kinds", "broker.model")),
    ],
    ids=["libvirt", "uvicorn", "relay"],
)  # fmt: skip
def test_import_rule(rule: str, paths: list[Path], forbidden: tuple[str, ...]) -> None:
    assert paths, rule
    assert offending(paths, forbidden) == [], rule


def test_the_rules_see_an_import() -> None:
    """The checker itself: it finds what it is looking for."""
    assert "libvirt" in imports_of(BROKER / "sources" / "consoles.py")
    assert "broker.model" in imports_of(BROKER / "sources" / "consoles.py")
    assert "broker.relay.pump" in imports_of(BROKER / "kinds" / "rules.py")
