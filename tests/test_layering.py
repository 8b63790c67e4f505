"""The package's layering, read statically from every ``infinity_jax/**/*.py`` with ``ast``.

A module may import from its own layer or the layers below it, never from a layer above, and the
modules' imports form no cycle. Every ``infinity_jax`` import counts for both rules: top-level,
in-function and relative ones alike; there are no exceptions.
"""
from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "infinity_jax"

# lowest first; a module's layer is that of its longest listed name under infinity_jax/ (a folder, a
# file, or a module inside a folder: tools/ holds commands and two helper tables that import nothing)
LAYERS = [
    ("foundations", {"__init__", "config_files", "schedules", "sharding", "state_dict", "tools.tpu",
                     "tools.hlo_stats"}),
    ("models", {"tokenizer", "text", "transformer"}),
    ("data and bundles", {"data", "bundle"}),
    ("loops", {"sampling", "training", "eval"}),
    ("commands", {"generate", "train", "train_tokenizer", "convert", "demo", "demo_report", "scaling", "tools"}),
]


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")[1:] or ["__init__"]
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        for i, (_, names) in enumerate(LAYERS):
            if name in names:
                return i
    raise AssertionError(f"{module}: infinity_jax.{parts[0]} is in no layer; add it to LAYERS in {__file__}")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(sources: dict[str, tuple[str, bool]]) -> list[tuple[str, str, int, bool]]:
    """``(importer, imported, line, top_level)`` for every ``infinity_jax`` import; ``sources`` maps a
    module name to ``(source text, is_package)``. ``from pkg import sub`` names the submodule."""
    out = []
    for module, (text, is_package) in sources.items():
        tree = ast.parse(text)
        nested = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                nested.update(id(n) for n in ast.walk(fn) if n is not fn)
        for node in ast.walk(tree):
            top = id(node) not in nested
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in sources else base for a in node.names]
            else:
                continue
            for t in dict.fromkeys(targets):
                if t == "infinity_jax" or t.startswith("infinity_jax."):
                    out.append((module, t, node.lineno, top))
    return out


def upward_imports(sources) -> list[str]:
    bad = []
    for importer, imported, line, _ in imports(sources):
        a, b = layer_of(importer), layer_of(imported)
        if b > a:
            bad.append(f"{importer} (line {line}, layer '{LAYERS[a][0]}') imports {imported} "
                       f"(layer '{LAYERS[b][0]}', above it)")
    return bad


def import_cycles(sources) -> list[str]:
    """Every import cycle, in-function imports included, as ``a (line n) -> b (line m, in a function)
    -> ... -> a`` (Tarjan's strongly connected components; one cycle shown per component)."""
    graph: dict[str, dict[str, str]] = {m: {} for m in sources}
    for importer, imported, line, top in imports(sources):
        if imported in graph and imported != importer:
            graph[importer].setdefault(imported, f"line {line}" + ("" if top else ", in a function"))
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:  # the shortest way from the component's first module back to itself
        start = min(comp)
        prev, frontier = {}, [start]
        while start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in comp and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path, v = [start], prev[start]
        while v != start:
            path.insert(1, v)
            v = prev[v]
        steps = [f"{a} ({graph[a][b]})" for a, b in zip(path, path[1:] + [start])]
        cycles.append(" -> ".join(steps) + f" -> {start}")
    return cycles


def package_sources(root: pathlib.Path = PACKAGE) -> dict[str, tuple[str, bool]]:
    return {module_name(p, root): (p.read_text(encoding="utf-8"), p.name == "__init__.py")
            for p in sorted(root.rglob("*.py"))}


def test_every_module_has_a_layer():
    for module in package_sources():
        layer_of(module)


def test_no_module_imports_from_a_layer_above():
    bad = upward_imports(package_sources())
    assert not bad, "imports from a higher layer:\n  " + "\n  ".join(bad)


def test_no_import_cycles():
    cycles = import_cycles(package_sources())
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_checks_catch_a_bad_import():
    """The checks themselves: upward imports (one in a function) and two-module cycles (one closed
    by an in-function import) are reported by name."""
    src = {
        "infinity_jax": ("", True),
        "infinity_jax.schedules": ("from infinity_jax.sampling import sampler\n", False),
        "infinity_jax.sampling": ("", True),
        "infinity_jax.sampling.sampler": ("from . import pipeline\n", False),
        "infinity_jax.sampling.pipeline": ("def f():\n    from infinity_jax.generate import main\n"
                                           "from infinity_jax.sampling.sampler import x\n", False),
        "infinity_jax.generate": ("", False),
    }
    bad = upward_imports(src)
    assert len(bad) == 2
    assert bad[0].startswith("infinity_jax.schedules (line 1, layer 'foundations') imports "
                             "infinity_jax.sampling.sampler")
    assert bad[1].startswith("infinity_jax.sampling.pipeline (line 2, layer 'loops') imports infinity_jax.generate")
    cycles = import_cycles(src)
    assert cycles == ["infinity_jax.sampling.pipeline (line 3) -> infinity_jax.sampling.sampler (line 1) "
                      "-> infinity_jax.sampling.pipeline"]
    deferred = {
        "infinity_jax": ("", True),
        "infinity_jax.tokenizer": ("", True),
        "infinity_jax.tokenizer.convert": ("from infinity_jax.tokenizer.vae import BSQVAE\n", False),
        "infinity_jax.tokenizer.vae": ("import os\n\n\ndef load(path):\n"
                                       "    from infinity_jax.tokenizer import convert\n", False),
    }
    assert not upward_imports(deferred)
    assert import_cycles(deferred) == [
        "infinity_jax.tokenizer.convert (line 1) -> infinity_jax.tokenizer.vae (line 5, in a function) "
        "-> infinity_jax.tokenizer.convert"]
