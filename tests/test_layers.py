"""The layers are a contract: worker code knows no steering or site, steering knows no settings, sites or services,
reports know no steering, the store knows only itself, and no modules import each other in a circle.

Every import in the tree counts, including those inside functions (a lazy import is still a dependency); the
cycle check follows module-level imports, which are the ones that run when a module is first imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("campaigns", "configs", "methods", "reporting", "store", "thinkers")

FORBIDDEN = {
    "methods": ("thinkers", "campaigns", "configs", "store", "reporting", "run"),
    "thinkers": ("configs", "campaigns", "reporting", "run"),
    "store": ("thinkers", "campaigns", "configs", "reporting", "run"),
    "reporting": ("thinkers", "campaigns", "configs", "run"),
    "configs": ("thinkers", "campaigns", "reporting", "run"),
    "campaigns": ("run",),
}
"""Package → the top-level packages (and ``run.py``) it must never import."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    modules["run"] = ROOT / "run.py"
    return modules


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules ``path`` imports (absolute names), at module level or anywhere."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module level includes `if TYPE_CHECKING:`-free blocks such as try/except at top
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name refers to (``a.b.c`` may be module ``a.b`` with attribute ``c``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def test_the_tree_has_the_packages_the_contract_names():
    modules = project_modules()
    for package in PACKAGES:
        assert package in modules, f"{package}/ is missing its __init__.py"
    assert len(modules) > 40


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_a_layer_it_must_not_know(package):
    modules = project_modules()
    bad = []
    for name, path in modules.items():
        if name.split(".")[0] != package:
            continue
        for imported in imports(path):
            target = resolve(imported, modules)
            if target is not None and target.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{name} imports {target}")
    assert not bad, "layer violations:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycles():
    modules = project_modules()
    graph = {name: {t for i in imports(path, top_level_only=True)
                    if (t := resolve(i, modules)) is not None and t != name}
             for name, path in modules.items()}
    # A package's __init__ is imported on the way to any of its modules: an edge to a.b.c implies one to a.b, a.
    for name in graph:
        extra = set()
        for target in graph[name]:
            parts = target.split(".")
            extra.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules)
        graph[name] |= {e for e in extra if e != name and not name.startswith(e + ".")}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_violation(tmp_path):
    """The rules can fail: a worker module that imports steering is reported."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from thinkers.design import DesignThinker\n")
    modules = project_modules()
    assert resolve("thinkers.design.DesignThinker", modules) == "thinkers.design"
    assert "thinkers.design.DesignThinker" in imports(path)
    assert "thinkers.design.DesignThinker" not in imports(path, top_level_only=True)


def test_no_module_is_much_over_700_lines():
    long = {name: n for name, path in project_modules().items() if (n := len(path.read_text().splitlines())) > 750}
    assert not long, long


def test_run_py_is_wiring_of_at_most_250_lines():
    assert len((ROOT / "run.py").read_text().splitlines()) <= 250
