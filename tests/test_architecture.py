"""The shape of the package: a layer table of which package may import which (type-only imports included), no
import cycle, the device never loads the central tools, short functions and modules that import few others.
docs/architecture.md shows the same table."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "gate"
MAX_FUNCTION_LINES = 60  # a function, its docstring included (house style: aim for under 40)
MAX_FAN_OUT = 20  # gate modules one module imports
# Long for a reason: each is one flat table (argparse options, web routes) or has an issue to split it.
LONG_FUNCTIONS = {
    "gate.central.cli.add_arguments": "one flat table of argparse options",
    "gate.central.console.pages.routes": "one flat table of web routes",
    "gate.cli.build_parser": "one flat table of argparse options",
    "gate.central.collect.collect": "the collector's start-up; to be split into named steps",
    "gate.central.publish.main": "the publisher's command line; to be split into named steps",
}
# The composition roots: they import every part, which is what they are for.
WIDE_MODULES = {"gate.lane.wiring": "builds the gate", "gate.lane.loop": "the lane: every stage meets here"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every `gate.*` module and the `gate.*` modules it imports, wherever in the file the import stands (under
    `if TYPE_CHECKING:` too: an annotation that needs an upper layer is a dependency on it all the same)."""
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps - {"gate"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found = []
    state = dict.fromkeys(graph, 0)
    stack = []

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


def function_lengths() -> dict[str, int]:
    """`module.function` (methods by their own name) -> lines, from `def` to its last line."""
    out: dict[str, int] = {}
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                key = f"{module_name(path)}.{node.name}"
                out[key] = max(out.get(key, 0), node.end_lineno - node.lineno + 1)
    return out


def test_every_function_stays_short() -> None:
    lengths = function_lengths()
    long = {f: n for f, n in lengths.items() if n > MAX_FUNCTION_LINES and f not in LONG_FUNCTIONS}
    assert long == {}
    assert set(LONG_FUNCTIONS) <= set(lengths)  # an exemption names a function that exists


def test_every_module_imports_few_others() -> None:
    fan_out = {m: len(deps) for m, deps in import_graph().items() if m not in WIDE_MODULES}
    assert {m: n for m, n in fan_out.items() if n > MAX_FAN_OUT} == {}


# Which package may import which: each stage only what is below it. A stage's own modules import each other
# freely; `gate` (the version) and `contracts` (what stages pass each other) are open to all. Imports for type
# annotations only count too.
BELOW_DECIDE = {"core", "contracts", "config"}
LAYERS: dict[str, set[str]] = {
    "core": set(),
    "contracts": {"core", "config"},
    "config": {"core"},
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
    assert layer_breaches(import_graph()) == {}


def test_the_layer_check_would_see_a_stage_importing_upwards() -> None:
    graph = {"gate.decide.policy": {"gate.lane.loop"}, "gate.lane.loop": {"gate.decide.policy"}}
    assert layer_breaches(graph) == {"gate.decide.policy": ["gate.lane.loop"]}
