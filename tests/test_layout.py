"""The layout is a contract (docs/architecture.md): `make lint` checks the layer map with
import-linter; these check what it does not: no import cycles at all (also within a layer), no
module past 400 lines, and tests laid out like the package."""

from __future__ import annotations

from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400
# Test folders that are not a package's: shared fixtures, and whole-product runs across layers.
CROSS_CUTTING = {"support", "e2e"}


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("mirror")
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                cycles.append(" -> ".join([module, *(chain or ())]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_is_longer_than_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "mirror").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by noun: {long}"


def test_tests_are_laid_out_like_the_package() -> None:
    packages = {p.name for p in (ROOT / "mirror").iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in (ROOT / "tests").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders - CROSS_CUTTING <= packages, folders - CROSS_CUTTING - packages
    loose = sorted(p.name for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name)
    assert not loose, f"tests outside a package folder: {loose}"
