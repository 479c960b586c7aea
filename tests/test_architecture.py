"""The shape of the package: no import cycle, the device never loads the central tools, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "gate"
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every `gate.*` module and the `gate.*` modules it imports, wherever in the file the import stands."""
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps - {"gate"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], dict.fromkeys(graph, 0), []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state[m] == 1:
                found.append([*stack[stack.index(m) :], m])
            elif state[m] == 0:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if state[n] == 0:
            visit(n)
    return found


def test_there_is_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert "gate.sync.worker" in graph and "gate.lane.loop" not in graph["gate.sync.worker"]
    assert cycles(graph) == []


def test_the_cycle_check_would_see_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_device_module_imports_the_central_tools() -> None:
    graph = import_graph()
    device = [m for m in graph if not m.startswith("gate.central") and m != "gate.cli"]
    offenders = {m: sorted(d for d in graph[m] if d.startswith("gate.central")) for m in device}
    assert {m: d for m, d in offenders.items() if d} == {}
    code = (
        "import sys, gate.cli, gate.lane.daemon, gate.lane.wiring; "
        "print(sorted(m for m in sys.modules if 'central' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_module_stays_small() -> None:
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}
