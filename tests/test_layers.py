"""The shape of the house: the top-level packages form layers that only point down, and no
product module grows past 400 lines (a module that long holds two concepts).

    foundation ← routing ← oauth ← channels, ai ← gateway (the composition root)
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS: dict[str, int] = {"foundation": 0, "routing": 1, "oauth": 2, "channels": 3, "ai": 3, "gateway": 4}
MAX_LINES = 400


def imported_packages(path: Path) -> set[str]:
    """The top-level product packages a module imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & LAYERS.keys()


def modules() -> list[Path]:
    return sorted(p for package in LAYERS for p in (ROOT / package).rglob("*.py"))


def test_every_import_between_packages_points_down():
    upward = []
    for path in modules():
        package = path.relative_to(ROOT).parts[0]
        for target in imported_packages(path):
            if target != package and LAYERS[target] >= LAYERS[package]:
                upward.append(f"{path.relative_to(ROOT)} imports {target}")
    assert upward == []


def test_the_package_graph_has_no_cycle():
    edges: dict[str, set[str]] = {package: set() for package in LAYERS}
    for path in modules():
        package = path.relative_to(ROOT).parts[0]
        edges[package] |= imported_packages(path) - {package}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(package: str) -> None:
        assert package not in visiting, " → ".join([*visiting[visiting.index(package) :], package])
        if package in done:
            return
        visiting.append(package)
        for target in sorted(edges[package]):
            visit(target)
        visiting.pop()
        done.add(package)

    for package in LAYERS:
        visit(package)


def test_no_product_module_exceeds_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_see_every_package_and_would_catch_an_upward_import(tmp_path: Path):
    assert {p.relative_to(ROOT).parts[0] for p in modules()} == LAYERS.keys()
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom gateway.app import create_app\n\ndef f():\n    import routing.handoff\n")
    assert imported_packages(module) == {"gateway", "routing"}


def test_no_module_imports_helpers_from_a_test_module_or_a_conftest():
    """Shared test helpers live in tests/support/ (and tests/hostile/'s own helper modules)."""
    borrowed = []
    for path in sorted(p for d in ("tests", "bench", "examples") for p in (ROOT / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests."):
                leaf = node.module.rsplit(".", 1)[-1]
                if leaf == "conftest" or leaf.startswith("test_"):
                    borrowed.append(f"{path.relative_to(ROOT)} imports {node.module}")
    assert borrowed == []
