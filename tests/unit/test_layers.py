"""The packages keep to the layers ARCHITECTURE.md names: no upward import, no import
between two packages of one layer, no import circle between modules."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "streamd"


def _layers() -> dict[str, int]:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    match = re.search(r"```layers\n(.*?)```", text, re.S)
    assert match, "ARCHITECTURE.md has no ```layers block"
    lines = [line.split() for line in match.group(1).strip().splitlines()]
    return {name: len(lines) - i for i, names in enumerate(lines) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except those under ``if TYPE_CHECKING:`` (annotations only: they
    never run, so they are no dependency)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the streamd modules it imports (anywhere in it, functions included; a
    package's own ``__init__`` is not counted as a dependency of its submodules)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                found = [s for s in subs if s in modules]
                targets = found if len(found) == len(subs) else [node.module, *found]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "streamd"


def test_every_package_has_a_layer() -> None:
    layers = _layers()
    packages = {_package(m) for m in _modules()}
    assert packages <= set(layers), f"not in ARCHITECTURE.md's layers: {packages - set(layers)}"


def _upward(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        source = _package(module)
        for target in targets:
            dest = _package(target)
            if dest != source and layers[dest] >= layers[source]:
                wrong.append(f"{module} imports {target} ({source} -> {dest})")
    return sorted(wrong)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
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
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_upward_or_sideways_import() -> None:
    wrong = _upward(_imports(_modules()), _layers())
    assert not wrong, "\n".join(wrong)


def test_no_import_circle() -> None:
    circles = _circles(_imports(_modules()))
    assert not circles, f"import circles: {circles}"


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    # Two made-up modules: drain.a imports service.b (upward), which imports drain.a
    # (a circle), one of them inside a function. The checks must report both.
    (tmp_path / "a.py").write_text("from streamd.service.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    import streamd.drain.a\n")
    made_up = {"streamd.drain.a": tmp_path / "a.py", "streamd.service.b": tmp_path / "b.py"}
    graph = _imports(made_up)
    assert _circles(graph) == [["streamd.drain.a", "streamd.service.b"]]
    assert _upward(graph, _layers()) == [
        "streamd.drain.a imports streamd.service.b (drain -> service)"
    ]


def test_command_line_parsers_live_in_the_front_door() -> None:
    # argparse parsers are built in streamd/cli only. The child processes' own entry
    # points (the ingest worker, the kafka sink's producer process) parse the few
    # arguments their parent passes them.
    allowed = {"streamd.service.worker", "streamd.service.kafka_producer"}
    builders = []
    for name, path in _modules().items():
        if name.startswith("streamd.cli") or name in allowed:
            continue
        if "ArgumentParser(" in path.read_text() or "add_parser(" in path.read_text():
            builders.append(name)
    assert not builders, f"argparse parsers outside streamd/cli: {builders}"


def test_the_front_door_and_the_composition_root_read_in_short_functions() -> None:
    # Issue 14: no function over ~60 lines in the daemon's composition root and the CLI.
    roots = [*sorted((PACKAGE / "cli").glob("*.py"))] + [
        PACKAGE / "service" / f"{name}.py"
        for name in ("run", "startup", "listeners", "reload", "systemd")
    ]
    long = []
    for path in roots:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}")
    assert not long, "\n".join(long)


def test_no_package_imports_another_ones_private_names() -> None:
    # Issue 14: admin/journal.py imported inspect.reader's private _pages.
    wrong = []
    for name, path in _modules().items():
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if not node.module.startswith("streamd") or _package(node.module) == _package(name):
                    continue
                wrong += [f"{name} imports {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.endswith("__")]  # fmt: skip
    assert not wrong, "\n".join(wrong)
