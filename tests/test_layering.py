"""The repository's layering, read from the source with `ast`: imports at module level and inside functions alike.

- no import cycle between the project's modules (a function-level import that only dodges a cycle is still one, and
  so is one through an import under `if TYPE_CHECKING:`);
- `avatar/` is the pure core: it never imports Ray, HTTP frameworks, `service`, `deployments`, `graph` or `training`;
- `training/` and `batch/` never import the Serve shell (`service`, `deployments`, `graph`);
- `service/` is the HTTP layer: it never imports `deployments` (it holds handles to them, nothing more);
- Serve deployments (`@serve.deployment`, `@serve.ingress`) are declared only under `deployments/`;
- `graph.py` only wires: the project modules it imports are deployments and the stage names (`avatar.flow.names`).
"""

from __future__ import annotations

import ast
import graphlib
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("avatar", "batch", "deployments", "service", "training")
TOP_MODULES = ("cli", "graph")
CORE_FORBIDDEN = ("ray", "service", "training", "fastapi", "starlette", "deployments", "graph")
SHELL = ("service", "deployments", "graph")
GRAPH_MAY_IMPORT = ("deployments", "avatar.flow.names")
SERVE_DECLARATIONS = ("deployment", "ingress")   # `serve.<name>` that declares a deployment


@dataclass(frozen=True)
class Import:
    source: str      # importing module
    target: str      # imported module, resolved to the deepest module of the project (or the name as written)
    line: int
    type_only: bool = False   # under `if TYPE_CHECKING:`: never runs, but still ties the two modules together


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


def _import_nodes(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement at any depth, each with whether it sits under `if TYPE_CHECKING:` (never runs)."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, type_only))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for body in child.body:
                    visit(body, True)
                for orelse in child.orelse:
                    visit(orelse, type_only)
                continue
            visit(child, type_only)

    visit(tree, False)
    return found


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node, type_only in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        found.extend(Import(module, _resolve(name, modules), node.lineno, type_only) for name in names)
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


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def forbidden(every: list[Import]) -> list[str]:
    """Imports that break a layer's rule (type-only imports never run and are not counted here)."""
    bad = []
    for imp in every:
        source, target = _top(imp.source), _top(imp.target)
        if imp.type_only:
            continue
        if ((source == "avatar" and target in CORE_FORBIDDEN)
                or (source in ("training", "batch") and target in SHELL)
                or (source == "service" and target == "deployments")):
            bad.append(f"{imp.source}:{imp.line} imports {imp.target}")
    return bad


def graph_imports(every: list[Import], modules: dict[str, Path]) -> list[str]:
    """The project modules `graph` imports beyond deployments and the stage names."""
    return [f"graph:{imp.line} imports {imp.target}" for imp in every
            if imp.source == "graph" and imp.target in modules and not _within(imp.target, GRAPH_MAY_IMPORT)]


def serve_declarations(root: Path) -> list[str]:
    """Where a Serve deployment is declared (`serve.deployment`, `serve.ingress`, or those names imported from
    `ray.serve`) outside `deployments/`."""
    found = []
    for module, path in discover(root).items():
        if _top(module) == "deployments":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Attribute) and node.attr in SERVE_DECLARATIONS
                    and isinstance(node.value, ast.Name) and node.value.id == "serve"):
                found.append(f"{module}:{node.lineno} uses serve.{node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module == "ray.serve":
                found.extend(f"{module}:{node.lineno} imports ray.serve.{a.name}" for a in node.names
                             if a.name in SERVE_DECLARATIONS)
    return found


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


def test_deployments_are_declared_only_under_deployments() -> None:
    assert "deployments.ingress" in discover(ROOT) and "graph" in discover(ROOT)
    bad = serve_declarations(ROOT)
    assert not bad, "Serve deployments outside deployments/:\n" + "\n".join(bad)


def test_graph_only_wires_deployments() -> None:
    _, every = import_graph(ROOT)
    assert any(imp.source == "graph" and _top(imp.target) == "deployments" for imp in every)
    bad = graph_imports(every, discover(ROOT))
    assert not bad, "graph.py imports more than deployments and the stage names:\n" + "\n".join(bad)


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


def test_checker_sees_a_cycle_through_a_type_only_import(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "avatar/store/database.py": "from avatar.store.migrations import apply\n",
        "avatar/store/migrations.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from avatar.store.database import Database
            def apply(db: "Database") -> None: ...
            """,
    })
    graph, every = import_graph(root)
    assert [sorted(set(c)) for c in cycles(graph)] == [["avatar.store.database", "avatar.store.migrations"]]
    assert forbidden(every) == []


def test_checker_flags_the_shell_rules(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "avatar/flow/names.py": "",
        "avatar/core.py": "import deployments.stage\nfrom graph import build_app\n",
        "batch/run.py": "from service.launcher import deploy\n",
        "service/launcher.py": "def later():\n    from deployments.stage import Replica\n",
        "deployments/stage.py": "import service.launcher\n",
        "graph.py": "from avatar.flow.names import Stage\nfrom deployments.stage import Replica\n"
                    "import service.launcher\nimport ray.serve\n",
    })
    _, every = import_graph(root)
    assert sorted(forbidden(every)) == ["avatar.core:1 imports deployments.stage", "avatar.core:2 imports graph",
                                        "batch.run:1 imports service.launcher",
                                        "service.launcher:2 imports deployments.stage"]
    assert graph_imports(every, discover(root)) == ["graph:3 imports service.launcher"]


def test_checker_finds_deployments_declared_outside_deployments(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "service/shell.py": """
            from ray import serve
            from ray.serve import deployment, get_replica_context
            @serve.deployment(num_replicas=1)
            class Shell: ...
            Front = serve.ingress(object)(Shell)
            """,
        "deployments/stage.py": "from ray import serve\n@serve.deployment\nclass Stage: ...\n",
    })
    assert sorted(serve_declarations(root)) == ["service.shell:3 imports ray.serve.deployment",
                                                "service.shell:4 uses serve.deployment",
                                                "service.shell:6 uses serve.ingress"]


def test_job_records_are_a_leaf_of_training() -> None:
    graph, _ = import_graph(ROOT)
    assert "training.records" in graph, "training/records.py is missing"
    assert sorted(m for m in graph["training.records"] if _top(m) in ("training", "service")) == []
