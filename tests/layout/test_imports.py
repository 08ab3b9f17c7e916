"""The shape of the house: no import circle, and each process imports only its own rooms.

Read from the source with `ast` (nothing is imported): every import counts, also one
inside a function or under ``if TYPE_CHECKING:``, since each ties the modules together.

Rooms and who may enter them:
    wire/      messages and framing: imported by every process; imports no other room
    tree/      supervisor processes (they fork workers, so they may import runtime/)
    runtime/   worker processes
    client/, pool/, aio/, app   the caller's process: never tree/, runtime/ or service/
    observe/   top, events, the HTTP server: talks to a tree as a client does (same rule)
    service/   the control socket and the service root (a supervisor process)
    strategies/  pure policy: imports nothing of supervisor/
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("supervisor", "strategies", "workers")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES
                       else module for alias in node.names]
        else:
            continue
        for target in targets:
            # the nearest module the name lives in (a.b.C -> a.b)
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _circles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(GRAPH[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _in(name: str, *rooms: str) -> bool:
    return any(name == room or name.startswith(room + ".") for room in rooms)


def test_no_import_circle() -> None:
    assert _circles() == []


CALLER_SIDE = [name for name in MODULES
               if _in(name, "supervisor.app", "supervisor.client", "supervisor.pool",
                      "supervisor.observe", "supervisor.aio")]
OTHER_PROCESSES = ("supervisor.tree", "supervisor.runtime", "supervisor.service")


@pytest.mark.parametrize("module", CALLER_SIDE)
def test_the_callers_process_never_imports_supervisor_or_worker_code(module: str) -> None:
    assert sorted(m for m in _reachable(module) if _in(m, *OTHER_PROCESSES)) == []


@pytest.mark.parametrize("module", [m for m in MODULES if _in(m, "supervisor.wire")])
def test_the_wire_imports_no_process_code(module: str) -> None:
    assert sorted(m for m in _reachable(module)
                  if _in(m, *OTHER_PROCESSES, "supervisor.client", "supervisor.pool",
                         "supervisor.app")) == []


@pytest.mark.parametrize("module", [m for m in MODULES if _in(m, "strategies")])
def test_strategies_import_nothing_of_the_runtime(module: str) -> None:
    assert sorted(m for m in _reachable(module) if _in(m, "supervisor", "workers")) == []


def test_the_checks_see_the_package() -> None:
    # Guards against a vacuous pass (a wrong ROOT would find no module and no circle).
    assert "supervisor.app" in MODULES and "supervisor.wire.messages" in MODULES
    assert "supervisor.wire.messages" in GRAPH["supervisor.app"]
