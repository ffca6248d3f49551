"""The package's layers import one way only, no modules import each other in a cycle, and
modules and functions stay under the sizes docs/architecture.md gives.

From the bottom: errors and files; tables, store and result; the engine; settings; pipeline
(and lazy); the pipelines; the CLI. A module may import its own layer or any below it, never
above: the engine knows no pipeline and the store knows no engine. The test reads the
sources (every ``import`` statement, also those inside functions), so it fails on a new
upward import before anything runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layer of each module (by name prefix; the longest prefix wins). Higher layers may import lower.
LAYERS = {
    "astroinfer.errors": 0, "astroinfer.files": 0,
    "astroinfer.tables": 1, "astroinfer.store": 1, "astroinfer.result": 1, "astroinfer.batch_store": 1,
    "astroinfer.kalman": 1, "astroinfer.plots": 1,
    "astroinfer.engine": 2,
    "astroinfer.settings": 3,
    "astroinfer.pipeline": 4, "astroinfer.lazy": 4,
    "astroinfer.pipelines": 5,
    "astroinfer.cli": 6, "astroinfer": 6,
}


def _module_files() -> dict[str, Path]:
    files = {}
    for base, package in ((ROOT / "astroinfer", "astroinfer"), (ROOT / "pipelines", "astroinfer.pipelines")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([package, *parts])] = path
    return files


MODULES = _module_files()


def _layer(module: str) -> int:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return LAYERS[best]


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree: ast.Module, top_level_only: bool):
    """Import statements of a module; ``if TYPE_CHECKING:`` blocks are skipped (never run)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif _is_type_checking(node):
            stack.extend(node.orelse)
        elif not top_level_only or isinstance(node, (ast.If, ast.Try)):
            # Top level counts module-level if/try blocks too: they run at import.
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
            for handler in getattr(node, "handlers", []):
                stack.extend(handler.body)


def _imports(module: str, path: Path, top_level_only: bool = False) -> set[str]:
    """The astroinfer modules ``module`` imports (``from x import y`` counts y when it is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _import_nodes(tree, top_level_only):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # ``from a import b`` imports module a.b when b is one, else a name from package a.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


def test_the_modules_are_found():
    assert {"astroinfer.engine.nuts", "astroinfer.pipelines.gaia_cluster.data", "astroinfer.cli"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(module):
    upward = sorted(name for name in _imports(module, MODULES[module]) if _layer(name) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports {upward} from above"


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "any-import"])
def test_no_import_cycles(top_level_only):
    """No cycles among the imports run at import time, nor among all imports (those inside
    functions too: a lazy import that closes a cycle is still an arrow pointing back)."""
    graph = {module: _imports(module, path, top_level_only=top_level_only) for module, path in MODULES.items()}
    # A package importing its own submodules (an __init__ that re-exports) is the usual shape,
    # and a submodule importing a sibling through the package is too; a cycle between two
    # modules that are not package and member is what breaks import order.
    cycles = []
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                cycle = stack[stack.index(name):] + [name]
                if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(cycle, cycle[1:])):
                    cycles.append(" -> ".join(cycle))
            elif name not in state:
                visit(name, stack + [name])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(cycles)


# The house's room sizes: a module that outgrows 600 lines, or a function 120, wants splitting.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 120


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module):
    text = MODULES[module].read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{module}: {text.count(chr(10))} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{module}: {', '.join(long)}"
