"""The intra-repo import graph: dependencies point one way, and each layer imports only what it may.

Every ``import`` counts, including those inside functions: a function-level import hides a cycle
from the interpreter at start-up, not from the design. Layers, lowest first: ``cxr_model`` (no Ray,
no web framework), ``training`` (Ray Train, never the service), ``serve`` and ``ui``, and ``scoring``
(Ray Data; writes records through ``serve.records``, never the web layer).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cxr_model", "training", "serve", "ui", "scoring", "gateway")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name imported anywhere in the file (``from x import y`` gives x and x.y)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The repo module a dotted name lands in (its longest module prefix), or None if external."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def build_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> repo modules it imports, module -> top-level external packages it imports)."""
    modules = _modules()
    internal, external = {}, {}
    for module, path in modules.items():
        names = _imported_names(path, module)
        internal[module] = {target for n in names if (target := _resolve(n, modules)) and target != module}
        external[module] = {n.split(".")[0] for n in names if n and _resolve(n, modules) is None}
    return internal, external


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


@pytest.fixture(scope="module")
def graph():
    return build_graph()


def _in(package: str, graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: targets for m, targets in graph.items() if m == package or m.startswith(package + ".")}


def _offending(edges: dict[str, set[str]], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    def hits(target: str) -> bool:
        return any(target == f or target.startswith(f + ".") for f in forbidden)

    found = {m: sorted(t for t in targets if hits(t)) for m, targets in edges.items()}
    return {m: targets for m, targets in found.items() if targets}


def test_the_graph_sees_function_level_imports():
    # training.cli imports training.pipeline only inside a function: it must still be an edge.
    internal, _ = build_graph()
    assert "training.pipeline" in internal["training.cli"]
    assert {"cxr_model", "training", "serve", "ui"} <= set(internal)


def test_find_cycles_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(graph, package):
    internal, _ = graph
    cycles = [c for c in find_cycles(internal) if any(m.split(".")[0] == package for m in c)]
    assert cycles == [], f"import cycles through {package}: {cycles}"


def test_cxr_model_imports_no_ray_web_or_higher_layer(graph):
    internal, external = graph
    assert _offending(_in("cxr_model", external), ("ray", "starlette", "fastapi")) == {}
    assert _offending(_in("cxr_model", internal), ("training", "serve", "ui")) == {}


def test_training_does_not_import_the_service(graph):
    internal, external = graph
    assert _offending(_in("training", internal), ("serve", "ui")) == {}
    assert _offending(_in("training", external), ("starlette", "fastapi")) == {}


def test_scoring_uses_the_model_and_records_but_not_the_web_layer(graph):
    internal, external = graph
    web = ("serve.app", "serve.ingress", "serve.api", "serve.pages", "serve.routes", "serve.classifier", "ui")
    assert _offending(_in("scoring", internal), web) == {}
    assert _offending(_in("scoring", external), ("starlette", "fastapi")) == {}
    # Nothing below it imports it: archive scoring is a leaf.
    others = {m: t for m, t in internal.items() if not m.startswith("scoring")}
    assert _offending(others, ("scoring",)) == {}


def test_the_gateway_speaks_dicom_and_http_only(graph):
    """Its own process and deployment: it reaches the service over HTTP, never through its code or Ray."""
    internal, external = graph
    assert _offending(_in("gateway", internal), ("serve", "training", "scoring", "ui")) == {}
    assert _offending(_in("gateway", external), ("ray", "starlette", "torch")) == {}
    others = {m: t for m, t in internal.items() if not m.startswith("gateway")}
    assert _offending(others, ("gateway",)) == {}


def test_ui_imports_neither_serve_nor_ray(graph):
    internal, external = graph
    assert _offending(_in("ui", internal), ("serve",)) == {}
    assert _offending(_in("ui", external), ("ray",)) == {}
