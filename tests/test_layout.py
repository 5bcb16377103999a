"""The house rules of DESIGN.md "Layout", read from the code's imports (every import, also inside functions):
no import cycle between our modules, and dependencies that point one way (engine imports nothing of ours
outside engine; train imports no realtime; realtime imports train only for enrollment)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "realtime", "train", "tools")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_imports() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and t.split(".")[0] in PACKAGES:
                    graph[name].add(t)
    return graph


def test_no_import_cycles():
    graph = our_imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # a package's __init__ importing its own submodules is not a cycle of files
    cycles = [c for c in cycles if not all(x == c[0] or x.startswith(c[0] + ".") or c[0].startswith(x + ".")
                                           for x in c)]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_dependencies_point_one_way():
    bad = []
    for m, deps in our_imports().items():
        top = m.split(".")[0]
        for d in deps:
            dtop = d.split(".")[0]
            if (top == "engine" and dtop != "engine") or (top == "train" and dtop in ("realtime", "tools")) or \
                    (top == "realtime" and dtop == "tools") or \
                    (top == "realtime" and dtop == "train" and m != "realtime.enroll"):
                bad.append(f"{m} -> {d}")
    assert not bad, "imports against DESIGN.md's direction: " + ", ".join(sorted(bad))
