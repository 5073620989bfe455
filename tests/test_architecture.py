"""The package's shape: no import cycles (between modules and between packages, imports under
``TYPE_CHECKING`` included), an engine that only looks down, no module over 400 lines, no training
or test code in what the library imports at run time. No exceptions lists: a rule that needs one
is a rule to change, in this file, with the reason."""

from __future__ import annotations

import ast
from pathlib import Path

import multidiffusion

PACKAGE = Path(multidiffusion.__file__).parent
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every package module ``path`` imports: at module level, inside functions (a lazy import is
    still a dependency) and under ``if TYPE_CHECKING:`` (a type-only cycle is still a cycle)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return names


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def package_of(module: str) -> str:
    """``multidiffusion.engine.views`` -> ``multidiffusion.engine``; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    """Imports between the packages (and top-level modules) of ``multidiffusion``. The root
    ``multidiffusion/__init__.py`` (the public exports) and ``__main__`` sit above everything."""
    edges: dict[str, set[str]] = {}
    for module, targets in graph().items():
        if module in ("multidiffusion", "multidiffusion.__main__"):
            continue
        source = package_of(module)
        edges.setdefault(source, set())
        edges[source].update(package_of(t) for t in targets if package_of(t) not in (source, "multidiffusion"))
    return edges


def cycles_in(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_modules():
    assert not cycles_in(graph()), f"import cycles: {cycles_in(graph())}"


def test_no_import_cycles_between_packages():
    assert not cycles_in(package_graph()), f"package cycles: {cycles_in(package_graph())}"


def test_the_checks_find_what_they_look_for(tmp_path, monkeypatch):
    """The checks themselves work: a cycle is found, an import under TYPE_CHECKING counts."""
    assert cycles_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not cycles_in({"a": {"b"}, "b": set()})
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from multidiffusion.tasks import x\n"
    path = PACKAGE / "engine" / "m.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    assert "multidiffusion.tasks" in imports_of(path)


ENGINE_NEVER_IMPORTS = (
    "options", "output", "metadata", "regions", "tasks", "conditionings", "models", "vae", "version",
    "preprocessors", "images", "pipeline", "cli", "app", "jobs",
)  # fmt: skip
"""The engine (views, Eq. 5 fusion, the guided model, the sampler, sharding) works over any
``denoise(crops, t, jobs)`` callable and receives everything else as plain values."""


def test_the_engine_only_looks_down():
    for module, targets in graph().items():
        if module.startswith("multidiffusion.engine"):
            above = sorted(t for t in targets if t.split(".")[1] in ENGINE_NEVER_IMPORTS)
            assert not above, f"{module} imports {above}"


def test_only_the_shells_import_the_shells():
    shells = ("multidiffusion.cli", "multidiffusion.app")
    for module, targets in graph().items():
        if module.startswith(shells) or module in ("multidiffusion", "multidiffusion.__main__"):
            continue
        wrong = sorted(t for t in targets if t.startswith(shells))
        assert not wrong, f"{module} imports {wrong}"


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


LAYERS = {
    # a layer may import only the layers below it (and the standard library / third parties)
    "multidiffusion.io": {"multidiffusion.io.image_loader"},  # trust levels, budgets, bounded readers: the bottom
    # the engine: over any denoiser, no vae, options, output, metadata, regions, tasks or conditionings
    "multidiffusion.engine": {"multidiffusion.geometry"},
    "multidiffusion.conditionings": {"multidiffusion.engine", "multidiffusion.io", "multidiffusion.io.image_loader",
                                     "multidiffusion.preprocessors", "multidiffusion.vae", "multidiffusion.models"},
    "multidiffusion.vae": {"multidiffusion.geometry"},  # window geometry, a leaf module
    "multidiffusion.models": {"multidiffusion.engine", "multidiffusion.vae", "multidiffusion.io"},
    "multidiffusion.regions": {"multidiffusion.engine", "multidiffusion.vae", "multidiffusion.conditionings",
                               "multidiffusion.io.image_loader", "multidiffusion.io"},
    # the options check values with io's checks; upscaler files are checked with models.files
    "multidiffusion.options": {"multidiffusion.engine", "multidiffusion.conditionings", "multidiffusion.regions",
                               "multidiffusion.io", "multidiffusion.models.files"},
    # the settings reader, PNG metadata and saving: one floor above the options it builds
    "multidiffusion.files": {"multidiffusion.io", "multidiffusion.options", "multidiffusion.regions",
                             "multidiffusion.conditionings", "multidiffusion.models"},
}  # fmt: skip


def test_lower_layers_import_only_what_their_layer_allows():
    for module, targets in graph().items():
        for layer, allowed in LAYERS.items():
            if module == layer or module.startswith(layer + "."):
                outside = {
                    t
                    for t in targets
                    if not t.startswith(layer) and t != "multidiffusion" and not any(t.startswith(a) for a in allowed)
                }
                assert not outside, f"{module} ({layer}) imports {sorted(outside)}"


def test_no_training_or_test_code_in_the_package():
    for path in PACKAGE.rglob("*.py"):
        assert not [m for m in imports_of(path) if m.split(".")[0] in ("devtools", "tests", "benchmarks")], path
    assert not (PACKAGE / "testing.py").exists() and not (PACKAGE / "demo" / "train.py").exists()


BENCHMARKS = PACKAGE.parent / "benchmarks"


def benchmark_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from <benchmark module> import name`` in ``path``, relative or
    absolute, at module level or inside functions; ``import benchmarks.x`` gives (x, "")."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # benchmarks' modules are one folder: `.` is the folder
                base = node.module or ""
            elif node.level == 0 and (node.module or "").split(".")[0] == "benchmarks":
                base = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:
                if base:
                    found.append((base, alias.name))
                else:  # `from . import suites`
                    found.append((alias.name, ""))
        elif isinstance(node, ast.Import):
            found += [(a.name.partition(".")[2], "") for a in node.names if a.name.startswith("benchmarks.")]
    return found


def test_benchmarks_share_a_common_module_without_cycles_or_private_imports():
    """Benchmark modules import what they share from public names (benchmarks/common.py), never a
    sibling's ``_private`` helper, and import each other without cycles."""
    modules = {p.stem: p for p in BENCHMARKS.glob("*.py")}
    assert "common" in modules
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, imported in benchmark_imports(path):
            target = target.split(".")[0]
            if target not in modules or target == name:
                continue
            assert not imported.startswith("_"), f"benchmarks/{name}.py imports {imported} from benchmarks/{target}.py"
            edges[name].add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(edges[v]):
            assert state.get(w) != 1, f"import cycle in benchmarks/: {' -> '.join([*path, v, w])}"
            if w not in state:
                visit(w, [*path, v])
        state[v] = 2

    for v in sorted(edges):
        if v not in state:
            visit(v, [])
