"""The README's code map names every module of broker/, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_code_map_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Code map", 1)[1].split("\n## ", 1)[0]
    mapped = set(re.findall(r"^\| `(broker/[a-z_/]+\.py)` \|", section, re.MULTILINE))
    modules = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "broker").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert mapped == modules, (
        f"missing from the map: {sorted(modules - mapped)}; not in the tree: {sorted(mapped - modules)}"
    )
