"""The shape of the package: a layer table of which package may import which, no import cycle, the device never
loads the central tools, small modules. docs/architecture.md shows the same table."""

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


def type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`: annotations only, nothing loaded at run time."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def import_graph(runtime_only: bool = False) -> dict[str, set[str]]:
    """Every `gate.*` module and the `gate.*` modules it imports, wherever in the file the import stands
    (with `runtime_only`, leaving out imports for type annotations only)."""
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        tree = ast.parse(path.read_text())
        skip = type_only(tree) if runtime_only else set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
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
    graph = import_graph(runtime_only=True)  # a cycle of annotations only loads nothing
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


# Which package may import which: each stage only what is below it. A stage's own modules import each other
# freely; `gate` (the version) and `contracts` (what stages pass each other) are open to all. Type-only imports
# (under TYPE_CHECKING) are exempt: they load nothing.
BELOW_DECIDE = {"core", "contracts", "config"}
LAYERS: dict[str, set[str]] = {
    "core": set(),
    "contracts": {"core"},
    "config": {"core", "contracts"},
    "scan": BELOW_DECIDE,
    "decide": BELOW_DECIDE,
    "actuate": BELOW_DECIDE,
    "venue": BELOW_DECIDE | {"scan"},
    "deliver": BELOW_DECIDE | {"decide", "venue"},
    "sync": BELOW_DECIDE | {"decide", "deliver"},
    "ops": BELOW_DECIDE | {"scan", "decide", "actuate", "venue", "deliver", "sync"},
    "lane": BELOW_DECIDE | {"scan", "decide", "actuate", "venue", "deliver", "sync", "ops"},
    "demo": BELOW_DECIDE | {"scan", "decide", "actuate", "venue", "deliver", "sync", "ops", "lane", "testing"},
    "central": BELOW_DECIDE | {"decide", "deliver", "sync"},
    "testing": {"core", "scan"},
    "cli": {"core", "contracts", "config", "scan", "decide", "actuate", "deliver", "ops", "lane", "demo", "central"},
    "__main__": {"cli"},
}


# The design card's modules stand at the top of the package as the public face of their stage: each belongs to
# that stage's layer.
STAGE_FACES = {"scanner": "scan", "actuator": "actuate", "mqtt_link": "deliver"}


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "gate"
    return STAGE_FACES.get(parts[1], parts[1])


def layer_breaches(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for module, deps in graph.items():
        mine = package_of(module)
        allowed = LAYERS.get(mine, set()) | {mine, "gate", "contracts"}
        bad = sorted(d for d in deps if package_of(d) not in allowed)
        if bad:
            out[module] = bad
    return out


def test_every_package_is_in_the_layer_table() -> None:
    assert {package_of(m) for m in import_graph()} - {"gate"} == set(LAYERS)


def test_each_package_imports_only_what_is_below_it() -> None:
    assert layer_breaches(import_graph(runtime_only=True)) == {}


def test_the_layer_check_would_see_a_stage_importing_upwards() -> None:
    graph = {"gate.decide.policy": {"gate.lane.loop"}, "gate.lane.loop": {"gate.decide.policy"}}
    assert layer_breaches(graph) == {"gate.decide.policy": ["gate.lane.loop"]}
