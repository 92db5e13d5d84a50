"""The package's import graph: no import cycle between modules, and no module importing from a layer above its
own, as the layer table of ARCHITECTURE.md defines the layers. Every import counts, also one inside a function
(a lazy import is still a dependency)."""

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "novalign"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """module -> the novalign modules it imports (``from novalign.a import b`` counts ``novalign.a.b`` when
    that is a module, else ``novalign.a``)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("novalign"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("novalign"))
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _layers() -> dict[str, int]:
    """The layer table of ARCHITECTURE.md: rows ``| n | `pkg`, `pkg` | ... |``."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    layers = {}
    for number, packages in re.findall(r"^\| (\d+) \| ([^|]+) \|", text, flags=re.M):
        for pkg in re.findall(r"`([a-z_]+)`", packages):
            layers[pkg] = int(number)
    assert layers, "ARCHITECTURE.md has no layer table"
    return layers


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "novalign"


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_point_down_the_layers():
    layers, graph = _layers(), _graph()
    unlisted = sorted({_top(m) for m in graph} - set(layers) - {"novalign"})
    assert not unlisted, f"packages missing from ARCHITECTURE.md's layer table: {unlisted}"
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                    if _top(m) != "novalign" and _top(d) != "novalign" and layers[_top(d)] > layers[_top(m)])
    assert not upward, "imports from a higher layer: " + ", ".join(upward)


def test_the_check_catches_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks themselves can fail: a fake package with a -> b -> a and models -> recipe."""
    import test_architecture as T

    pkg = tmp_path / "novalign"
    (pkg / "models").mkdir(parents=True)
    (pkg / "recipe").mkdir()
    for f in ("__init__.py", "models/__init__.py", "recipe/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "models" / "a.py").write_text("from novalign.models import b\n")
    (pkg / "models" / "b.py").write_text("def f():\n    from novalign.models import a\n    from novalign.recipe import x\n")
    (pkg / "recipe" / "x.py").write_text("")
    (tmp_path / "ARCHITECTURE.md").write_text("| 1 | `models` | m |\n| 2 | `recipe` | r |\n")
    monkeypatch.setattr(T, "ROOT", tmp_path)
    monkeypatch.setattr(T, "PACKAGE", pkg)
    import pytest

    with pytest.raises(AssertionError, match="novalign.models.a -> novalign.models.b -> novalign.models.a"):
        T.test_no_import_cycle()
    with pytest.raises(AssertionError, match="novalign.models.b -> novalign.recipe.x"):
        T.test_imports_point_down_the_layers()
