"""Package boundaries of DESIGN.md, checked on the source with `ast`."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"bandit", "offline_eval", "simulator", "service", "shelfbandit", "tests"}
ALLOWED_PROJECT = {
    "bandit": {"bandit"},
    "offline_eval": {"offline_eval", "bandit"},
    "simulator": {"simulator", "bandit", "offline_eval"},
    "service": {"service", "bandit", "offline_eval"},
}
BANDIT_THIRD_PARTY = {"numpy", "vowpalwabbit", "pylibvw"}
# modules of another package that a package may import, beside the packages above: the
# simulator's HTTP driver uses the client of the decision API, and nothing else of shelfbandit
ALLOWED_MODULES = {"simulator": {"shelfbandit.client"}}
# single modules with a rule of their own: the client is importable by the simulator, so it
# depends on nothing of the project but `bandit`
MODULE_RULES = {"shelfbandit/client.py": {"bandit"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _project_modules(path: Path) -> set[str]:
    """The dotted project modules a file imports (`from shelfbandit import client` -> shelfbandit.client)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PROJECT}


def _allowed_module(name: str, allowed: set[str]) -> bool:
    return any(name == module or name.startswith(module + ".") for module in allowed)


@pytest.mark.parametrize("package", sorted(ALLOWED_PROJECT))
def test_package_imports_only_what_it_may(package):
    assert (ROOT / package).is_dir(), f"package {package} is missing"
    files = sorted((ROOT / package).rglob("*.py"))
    for path in files:
        imported = _imports(path)
        modules = ALLOWED_MODULES.get(package, set())
        forbidden = {
            name for name in _project_modules(path)
            if name.split(".")[0] not in ALLOWED_PROJECT[package] and not _allowed_module(name, modules)
        }
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"
        if package == "bandit":
            third_party = imported - PROJECT - set(sys.stdlib_module_names) - {"__future__"}
            assert third_party <= BANDIT_THIRD_PARTY, f"{path.relative_to(ROOT)} imports {sorted(third_party)}"


@pytest.mark.parametrize("module", sorted(MODULE_RULES))
def test_module_imports_only_what_it_may(module):
    path = ROOT / module
    assert path.is_file(), f"{module} is missing"
    forbidden = (_imports(path) & PROJECT) - MODULE_RULES[module]
    assert not forbidden, f"{module} imports {sorted(forbidden)}"


def test_the_rule_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import simulator.world\nfrom pandas import DataFrame\n")
    assert _imports(bad) == {"simulator", "pandas"}


def test_the_simulator_may_import_the_client_and_nothing_else_of_shelfbandit(tmp_path):
    allowed = ALLOWED_MODULES["simulator"]
    for line, ok in [
        ("from shelfbandit.client import AsyncDecisionClient", True),
        ("from shelfbandit import client", True),
        ("import shelfbandit.client", True),
        ("from shelfbandit import demo", False),
        ("from shelfbandit.cli import cli", False),
        ("import shelfbandit", False),
    ]:
        source = tmp_path / "m.py"
        source.write_text(line + "\n")
        assert all(_allowed_module(name, allowed) for name in _project_modules(source)) is ok, line
