"""The package's shape: no import cycles, layers that only look down, no training or test code in
what the library imports at run time."""

from __future__ import annotations

import ast
from pathlib import Path

import multidiffusion

PACKAGE = Path(multidiffusion.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every package module ``path`` imports, at module level or inside functions (a lazy import is
    still a dependency), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    names: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return names


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycles():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check itself works: two modules importing each other are found."""
    (tmp_path / "a.py").write_text("from multidiffusion.b import x\n")
    assert "multidiffusion.b" in imports_of_at(tmp_path / "a.py")


def imports_of_at(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


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


def test_lower_layers_never_import_the_shells_or_the_public_class():
    edges = graph()
    shells = ("multidiffusion.cli", "multidiffusion.app", "multidiffusion.pipeline", "multidiffusion.generation")
    for module, targets in edges.items():
        if module.startswith(("multidiffusion.cli", "multidiffusion.app")):
            continue
        wrong = [t for t in targets if t.startswith(shells) and not module.startswith("multidiffusion.pipeline")]
        if module in ("multidiffusion", "multidiffusion.__main__", "multidiffusion.generation"):
            continue
        assert not wrong, f"{module} imports {wrong}"
    for module, targets in edges.items():
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
