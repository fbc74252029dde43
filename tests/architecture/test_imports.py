"""The import rules of docs/ARCHITECTURE.md, read from the source with ``ast``:
natgrad never imports streamlit (nor the app's packages), course imports no torch
(nor natgrad), and views reach natgrad only through its public modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# What a page may import from natgrad: packages and modules meant for callers. The
# inside of an algorithm (natgrad.optim.kfac.layers, ...) and underscored names are not.
PUBLIC = ("natgrad", "natgrad.experiments", "natgrad.presets", "natgrad.viz", "natgrad.costs", "natgrad.sharding",
          "natgrad.snapshots", "natgrad.devices", "natgrad.distributed", "natgrad.curvature", "natgrad.tasks",
          "natgrad.optim", "natgrad.bench", "natgrad.labs", "natgrad.preconditioners", "natgrad.race")


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


def files(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py"))]


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_rule_checker_sees_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import streamlit as st\nfrom natgrad.optim.kfac.layers import find_layers\n"
                 "def f():\n    from torch import nn\n")
    assert [(m, n) for m, n, _ in imports(f)] == [("streamlit", []), ("natgrad.optim.kfac.layers", ["find_layers"]),
                                                  ("torch", ["nn"])]


@pytest.mark.parametrize("path", files("natgrad"), ids=lambda p: str(p.relative_to(ROOT)))
def test_natgrad_imports_no_streamlit_and_nothing_of_the_app(path):
    bad = [(m, line) for m, _, line in imports(path) if top(m) in ("streamlit", "course", "views", "app")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", files("course"), ids=lambda p: str(p.relative_to(ROOT)))
def test_course_imports_no_torch(path):
    bad = [(m, line) for m, _, line in imports(path) if top(m) in ("torch", "natgrad", "views")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", files("views") + [ROOT / "app.py"], ids=lambda p: str(p.relative_to(ROOT)))
def test_views_use_only_natgrads_public_modules(path):
    bad = []
    for module, names, line in imports(path):
        if top(module) != "natgrad":
            continue
        public = any(module == p or module.startswith(p + ".") for p in PUBLIC)
        inside_algorithm = module.startswith("natgrad.optim.") and module.count(".") > 2  # natgrad.optim.kfac.layers
        private = any(part.startswith("_") for part in module.split(".") + names)
        if not public or inside_algorithm or private:
            bad.append((module, names, line))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
