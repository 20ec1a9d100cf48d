"""The layers import one way (docs/ARCHITECTURE.md): the plain functions and tasks in
``deepmir_tasks`` import neither ``workflows`` nor ``pipelines``, and ``workflows`` does not import
``pipelines``. Imports inside function bodies count too (they are read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"deepmir_tasks": ("workflows", "pipelines"), "workflows": ("pipelines",)}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file's import statements name, wherever they stand."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_imported_modules_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    from workflows.preprocess import x\n    import pipelines.cli\n")
    assert imported_modules(f) == {"os", "workflows.preprocess", "pipelines.cli"}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_import(layer):
    upward = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN[layer]:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not upward, "\n".join(upward)
