"""The code's layout: imports run one way and never in a circle, functions stay short.

Every import statement counts, at module level or inside a function: a deferred import still
makes one module depend on the other.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("unet_diffusion", "pipelines", "train")
RANK = {"unet_diffusion": 0, "pipelines": 1, "train": 2}  # a package imports only packages of lower or equal rank


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules that ``path`` imports (``from .x import y`` resolved; ``from pkg import mod`` counts ``pkg.mod``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known}


def import_graph() -> dict[str, set[str]]:
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    known = {module_name(path) for path in files}
    return {module_name(path): imported_modules(path, known) - {module_name(path)} for path in files}


def test_imports_run_one_way_between_packages():
    backwards = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if RANK[target.split(".")[0]] > RANK[module.split(".")[0]]
    ]
    assert not backwards


def test_no_import_cycle():
    graph = import_graph()
    # A package's __init__ only names its modules lazily (lazy.py); it is not a dependency of them.
    graph = {m: {t for t in targets if t not in PACKAGES} for m, targets in graph.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def functions(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


@pytest.mark.parametrize("package", [*PACKAGES, "bench"])
def test_no_function_longer_than_80_lines(package):
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in functions(package) if node.end_lineno - node.lineno + 1 > 80]
    assert not long


def test_unet_constructor_reads_in_one_screen():
    """The signature has one line per configuration field (with its meaning); the body: plan, embeddings, the U, head."""
    init = next(node for path, node in functions("unet_diffusion") if path.name == "unet.py" and node.name == "__init__")
    assert init.end_lineno - init.lineno + 1 <= 60
