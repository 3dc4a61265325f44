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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED_PROJECT))
def test_package_imports_only_what_it_may(package):
    assert (ROOT / package).is_dir(), f"package {package} is missing"
    files = sorted((ROOT / package).rglob("*.py"))
    for path in files:
        imported = _imports(path)
        forbidden = (imported & PROJECT) - ALLOWED_PROJECT[package]
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"
        if package == "bandit":
            third_party = imported - PROJECT - set(sys.stdlib_module_names) - {"__future__"}
            assert third_party <= BANDIT_THIRD_PARTY, f"{path.relative_to(ROOT)} imports {sorted(third_party)}"


def test_the_rule_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import simulator.world\nfrom pandas import DataFrame\n")
    assert _imports(bad) == {"simulator", "pandas"}
