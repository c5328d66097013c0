"""The repository's layering, read from the source with `ast`: imports at module level and inside functions alike.

- no import cycle between the project's modules (a function-level import that only dodges a cycle is still one);
- `avatar/` is the pure core: it never imports Ray, HTTP frameworks, `service` or `training`;
- `training/` never imports `service`.
"""

from __future__ import annotations

import ast
import graphlib
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("avatar", "service", "training")
TOP_MODULES = ("cli",)
CORE_FORBIDDEN = ("ray", "service", "training", "fastapi", "starlette")


@dataclass(frozen=True)
class Import:
    source: str      # importing module
    target: str      # imported module, resolved to the deepest module of the project (or the name as written)
    line: int


def discover(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for the packages and top-level modules of `root`."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for name in TOP_MODULES:
        if (root / f"{name}.py").is_file():
            modules[name] = root / f"{name}.py"
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The deepest project module `name` lies in (`a.b.C` -> `a.b`); names outside the project stay as written."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return name


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under `if TYPE_CHECKING:` (they never run)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            visit(child)

    visit(tree)
    return found


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        found.extend(Import(module, _resolve(name, modules), node.lineno) for name in names)
    return found


Graph = dict[str, set[str]]   # module -> the project modules it imports


def import_graph(root: Path) -> tuple[Graph, list[Import]]:
    modules = discover(root)
    graph: Graph = {m: set() for m in modules}
    every: list[Import] = []
    for module, path in modules.items():
        for imp in imports_of(module, path, modules):
            every.append(imp)
            if imp.target in modules and imp.target != module:
                graph[module].add(imp.target)
    return graph, every


def cycles(graph: Graph) -> list[list[str]]:
    """Import cycles, each as [a, b, ..., a]: graphlib names one per try; an edge of it is dropped and it tries again,
    so every cycle's strongly connected part is reported at least once."""
    graph = {m: set(deps) for m, deps in graph.items()}
    found: list[list[str]] = []
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return found
        except graphlib.CycleError as exc:
            cycle = list(reversed(exc.args[1]))          # graphlib lists it against the import direction
            found.append(cycle)
            graph[cycle[0]].discard(cycle[1])


def _top(name: str) -> str:
    return name.split(".")[0]


def forbidden(every: list[Import]) -> list[str]:
    bad = []
    for imp in every:
        if _top(imp.source) == "avatar" and _top(imp.target) in CORE_FORBIDDEN:
            bad.append(f"{imp.source}:{imp.line} imports {imp.target}")
        if _top(imp.source) == "training" and _top(imp.target) == "service":
            bad.append(f"{imp.source}:{imp.line} imports {imp.target}")
    return bad


# ---------------------------------------------------------------- the repository
def test_no_import_cycles() -> None:
    graph, _ = import_graph(ROOT)
    assert len(graph) > 50, "module discovery found too few modules"
    assert sum(map(len, graph.values())) > 100, "import parsing found too few imports"
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_core_and_training_layers() -> None:
    _, every = import_graph(ROOT)
    bad = forbidden(every)
    assert not bad, "layering violations:\n" + "\n".join(bad)


# ---------------------------------------------------------------- the checker itself, on a made-up tree
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


def test_checker_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "training/a.py": "from training.b import thing\n",
        "training/b.py": "def thing():\n    from training import a\n    return a\n",
    })
    graph, _ = import_graph(root)
    assert [sorted(c) for c in cycles(graph)] in ([["training.a", "training.a", "training.b"]],
                                                  [["training.a", "training.b", "training.b"]])


def test_checker_resolves_relative_and_package_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "avatar/engines/__init__.py": "from .x import X\n",
        "avatar/engines/x.py": "X = 1\n",
        "avatar/engines/y.py": "from . import x\nfrom .. import engines\nfrom avatar.engines.x import X\n",
    })
    graph, _ = import_graph(root)
    assert graph["avatar.engines.y"] == {"avatar.engines.x", "avatar.engines"}
    assert graph["avatar.engines"] == {"avatar.engines.x"}
    assert cycles(graph) == []


def test_checker_flags_forbidden_imports_and_ignores_type_checking(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "avatar/core.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                import ray
            def later():
                import starlette.responses
            """,
        "training/job.py": "import service.auth\n",
        "service/auth.py": "",
        "service/shell.py": "import ray\nimport training.job\n",
    })
    _, every = import_graph(root)
    assert sorted(forbidden(every)) == ["avatar.core:6 imports starlette.responses",
                                        "training.job:1 imports service.auth"]


def test_job_records_are_a_leaf_of_training() -> None:
    graph, _ = import_graph(ROOT)
    assert "training.records" in graph, "training/records.py is missing"
    assert sorted(m for m in graph["training.records"] if _top(m) in ("training", "service")) == []
