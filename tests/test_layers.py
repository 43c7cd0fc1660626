"""The floors hold: sandboxes know nothing above them, and no module imports the project
inside a function (an import there hides a dependency on the wrong floor) except in an
``AppConfig.ready`` or under ``TYPE_CHECKING``;
sessions know nothing of agents or transcripts (those apps register their runners and
renderers with it), and projects nothing of sessions (the sessions app lists a project's
sessions with a template tag of its own).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "agentide"
ABOVE_SANDBOXES = ("agentide.sessions", "agentide.quotas", "agentide.agents",
                   "agentide.transcripts")


# Every module parsed once, while the tests are collected: CPython 3.11 keeps the recursion
# depth of its AST conversion in one process-wide global, which threads that earlier tests
# run can leave off balance; any ast.parse after that fails with "AST constructor recursion
# depth mismatch" (seen after tests/sessions/test_consumers.py).
TREES = {path: ast.parse(path.read_text()) for path in sorted(ROOT.rglob("*.py"))}


def _modules(app: str) -> list[Path]:
    return [path for path in TREES if path.is_relative_to(ROOT / app)]


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node, node.module))
            found += [(node, f"{node.module}.{alias.name}") for alias in node.names]
    return found


@pytest.mark.parametrize("path", _modules("sandboxes"), ids=lambda p: str(p.relative_to(ROOT)))
def test_sandboxes_import_nothing_from_the_apps_above(path: Path) -> None:
    tree = TREES[path]
    upward = [name for _, name in _imports(tree) if name.startswith(ABOVE_SANDBOXES)]
    assert upward == []


@pytest.mark.parametrize("path", [*_modules("sandboxes"), *_modules("quotas")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_sandboxes_and_quotas_import_at_module_level_only(path: Path) -> None:
    tree = TREES[path]
    top = {id(node) for node in tree.body}
    nested = [f"{name} (line {node.lineno})" for node, name in _imports(tree)
              if id(node) not in top and name.startswith("agentide")]
    assert nested == []


# The apps above the foundation (lib, accounts, projects), bottom-up: each may import only
# the ones before it (README, "What is here").
FLOORS = ["sandboxes", "events", "quotas", "sessions", "agents", "transcripts", "api"]
FOUNDATION = {"lib", "accounts", "projects"}


@pytest.mark.parametrize("app", FLOORS)
def test_each_app_imports_only_the_apps_below_it(app: str) -> None:
    below = FOUNDATION | set(FLOORS[: FLOORS.index(app)]) | {app}
    upward = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in _modules(app) if "migrations" not in path.parts
        for _, name in _imports(TREES[path])
        if name.startswith("agentide.") and name.split(".")[1] in FLOORS
        and name.split(".")[1] not in below
    )
    assert upward == []


def _allowed_nested(tree: ast.Module) -> set[int]:
    """Imports that may sit below the module level: in an ``AppConfig.ready`` (where an app
    registers with a lower layer once every app is loaded) and under ``if TYPE_CHECKING``."""
    allowed: set[int] = set()
    for node in ast.walk(tree):
        ready = isinstance(node, ast.FunctionDef) and node.name == "ready"
        typing_only = isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        if ready or typing_only:
            allowed |= {id(n) for n in ast.walk(node)
                        if isinstance(n, ast.Import | ast.ImportFrom)}
    return allowed


@pytest.mark.parametrize("path", list(TREES), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_the_project_inside_a_function(path: Path) -> None:
    """Dependencies point down and show at the top of each module: none hides in a function."""
    tree = TREES[path]
    top = {id(node) for node in tree.body}
    allowed = _allowed_nested(tree)
    nested = [f"{name} (line {node.lineno})" for node, name in _imports(tree)
              if id(node) not in top and id(node) not in allowed and name.startswith("agentide")]
    assert nested == []


def test_quotas_never_import_the_session_services() -> None:
    for path in _modules("quotas"):
        names = {name for _, name in _imports(TREES[path])}
        assert "agentide.sessions.services" not in names, path


def test_quota_services_import_nothing_from_the_apps_above() -> None:
    names = [name for _, name in _imports(TREES[ROOT / "quotas/services.py"])]
    assert [n for n in names if n.startswith(("agentide.sessions", "agentide.agents"))] == []


@pytest.mark.parametrize("path", _modules("sessions"), ids=lambda p: str(p.relative_to(ROOT)))
def test_sessions_import_nothing_from_agents_or_transcripts(path: Path) -> None:
    tree = TREES[path]
    upward = [name for _, name in _imports(tree)
              if name.startswith(("agentide.agents", "agentide.transcripts"))]
    assert upward == []


@pytest.mark.parametrize("path", _modules("projects"), ids=lambda p: str(p.relative_to(ROOT)))
def test_projects_import_nothing_from_sessions(path: Path) -> None:
    tree = TREES[path]
    upward = [name for _, name in _imports(tree) if name.startswith(ABOVE_SANDBOXES)]
    assert upward == []


def _module_path(module: str) -> Path | None:
    base = ROOT.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _private_names_used_across_modules(path: Path) -> list[str]:
    tree = TREES[path]
    modules: set[str] = set()  # local names bound to agentide modules
    used: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agentide"):
            for alias in node.names:
                if _module_path(f"{node.module}.{alias.name}") is not None:
                    modules.add(alias.asname or alias.name)
                elif alias.name.startswith("_"):
                    used.append(f"{node.module}.{alias.name} (line {node.lineno})")
        elif isinstance(node, ast.Import):
            modules.update(a.asname for a in node.names
                           if a.asname and a.name.startswith("agentide"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            used.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
    return used


@pytest.mark.parametrize("path", list(TREES), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_uses_another_modules_private_names(path: Path) -> None:
    assert _private_names_used_across_modules(path) == []
