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
# numba: the compiled sampling kernel (bandit/sampling_kernel.py), imported only when first used
BANDIT_THIRD_PARTY = {"numpy", "vowpalwabbit", "pylibvw", "numba"}
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


# -- the rooms of service/ ---------------------------------------------------------------------
# A room is a sub-package of service/; the modules at service/'s top (layout, settings, serving,
# supervisor, errors, logs, local, commands) are the foundations and the composition around them.
# Each room may import the rooms listed (and the foundations); imports under TYPE_CHECKING only
# name types and are not counted. Read: the event log knows no other room, the join reads the
# event log, the HTTP edge sits on top and nothing imports it.
ROOMS = {
    "eventlog": set(),
    "join": {"eventlog"},
    "models": set(),
    "experiments": {"eventlog", "join", "models"},
    "training": {"experiments", "join", "models"},
    "ops": {"eventlog", "join", "models", "training"},
    "http": {"eventlog", "experiments", "models", "ops"},
}
FOUNDATIONS_MAY_NOT_IMPORT = {"layout": set(ROOMS), "errors": set(ROOMS), "logs": set(ROOMS), "supervisor": set(ROOMS)}
WEB_FRAMEWORKS = {"fastapi", "starlette", "uvicorn"}


def _runtime_imports(path: Path) -> set[str]:
    """Dotted modules a file imports at run time (not those under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for stmt in node.body
        for child in ast.walk(stmt)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "service" and parts[1] in ROOMS else None


def test_every_sub_package_of_service_is_a_room_with_rules():
    found = {p.name for p in (ROOT / "service").iterdir() if (p / "__init__.py").exists()}
    assert found == set(ROOMS), f"rooms without rules or rules without rooms: {sorted(found ^ set(ROOMS))}"


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_room_imports_only_the_rooms_it_may(room):
    for path in sorted((ROOT / "service" / room).rglob("*.py")):
        imported = _runtime_imports(path)
        rooms = {_room_of(name) for name in imported} - {None, room}
        assert rooms <= ROOMS[room], f"{path.relative_to(ROOT)} imports the rooms {sorted(rooms - ROOMS[room])}"
        if room != "http":
            web = {name.split(".")[0] for name in imported} & (WEB_FRAMEWORKS | {"pydantic"})
            assert not web, f"{path.relative_to(ROOT)} imports {sorted(web)}: only service/http/ speaks HTTP"


@pytest.mark.parametrize("module", sorted(FOUNDATIONS_MAY_NOT_IMPORT))
def test_foundation_imports_no_room(module):
    imported = _runtime_imports(ROOT / "service" / f"{module}.py")
    rooms = {_room_of(name) for name in imported} - {None}
    assert not rooms & FOUNDATIONS_MAY_NOT_IMPORT[module], f"service/{module}.py imports the rooms {sorted(rooms)}"


def test_only_the_http_room_and_the_settings_use_a_web_framework_or_pydantic():
    for path in sorted((ROOT / "service").glob("*.py")):
        used = {name.split(".")[0] for name in _runtime_imports(path)}
        allowed = {"pydantic"} if path.name == "settings.py" else set()
        if path.name in ("commands.py", "workers.py"):
            allowed = {"uvicorn"}  # `shelfbandit serve` starts the server, or its worker processes do
        assert used & (WEB_FRAMEWORKS | {"pydantic"}) <= allowed, path.relative_to(ROOT)


def test_the_room_rules_see_a_violation_and_ignore_typing_only_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom service.join.reader import JoinedLog\n"
        "if TYPE_CHECKING:\n    from service.ops.metrics import ServiceMetrics\n"
    )
    assert {_room_of(name) for name in _runtime_imports(source)} - {None} == {"join"}
