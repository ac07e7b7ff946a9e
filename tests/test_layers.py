"""tether's modules form layers, each importing only its own layer and those below, and no two
files import each other, directly or round a loop. Read from the source (ast), so an import
inside a function counts as much as one at the top.

The layers, lowest first (what each may import is its row and the rows above it):

    errors, config   one-line errors; the generic YAML/override loader of every typed config
    ops              pure tensor math (imports torch only, and other ops)
    utils            device, precision, seeding, distributed, checkpoint I/O: no model knowledge
    data, types      datasets, chat templates, batch layout; the typed rollout/batch records
    models           loading, forward passes, scalar heads
    rollout          sampling engines, prompts, scoring
    diagnostics      the run doctor: reads metrics, names failure modes
    reporting        metric sinks, plots and the run report (which shows the doctor's findings)
    train, labeling  the training loops; the preference-collection app
    commands         tether, tether.api, tether.cli and every cli.py / *_cli.py / __main__.py,
                     demo and rounds: the entry points that put the rest together
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "tether"

LAYERS = [
    {"errors", "config"},
    {"ops"},
    {"utils"},
    {"data", "types"},
    {"models"},
    {"rollout"},
    {"diagnostics"},
    {"reporting"},
    {"train", "labeling"},
    {"commands", "api", "cli", "demo", "rounds"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The tether modules ``name`` imports: ``from pkg import sub`` names the submodule ``sub``
    when there is one, else the package."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in MODULES:
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs or {node.module}
            if len(subs) < len(node.names):  # names defined in the module (or package) itself
                found.add(node.module)
    return found - {name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer_of(name: str) -> int:
    stem = MODULES[name].stem
    part = name.split(".")[1] if "." in name else "commands"
    if stem == "cli" or stem.endswith("_cli") or stem == "__main__":
        part = "commands"
    for index, members in enumerate(LAYERS):
        if part in members:
            return index
    raise AssertionError(f"{name}: tether/{part} is in no layer; place it in LAYERS (tests/test_layers.py)")


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_module_imports_from_a_higher_layer():
    upward = sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                    for a, targets in GRAPH.items() for b in targets if layer_of(b) > layer_of(a))
    assert upward == []


def test_ops_import_torch_and_each_other_only():
    outside = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() if a.startswith("tether.ops")
                     for b in targets if not b.startswith("tether.ops"))
    assert outside == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that reach each other (a cycle has 2 or more)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_two_files_import_each_other():
    assert [group for group in strongly_connected(GRAPH) if len(group) > 1] == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    # the same functions on a made-up graph: a <-> b is a cycle; c alone is not
    groups = strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    assert sorted(g for g in groups if len(g) > 1) == [["a", "b"]]
    # and on this tree: the data layer sits below models, the loops above rollout
    assert layer_of("tether.data.batching") < layer_of("tether.models.forward") < layer_of("tether.rollout.engine")
    assert layer_of("tether.rollout.engine") < layer_of("tether.train.ppo") < layer_of("tether.train.ppo_cli")
