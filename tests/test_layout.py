"""The package's rooms: no import cycle, jobs meet only in the lakehouse, `deep/` never sees Spark.

Read from the source (every `import` of the package, at module level or inside a function),
so an import that runs only on an executor or in one branch counts too.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import sparkml_ext

# Not a job: `cli` runs the jobs in order (the orchestrator), so it may import them.
JOBS = {"ingest", "features", "train_mllib", "train_torch", "score", "report", "generate"}
PACKAGE = "sparkml_ext"


def _modules() -> dict[str, Path]:
    found = {PACKAGE: Path(sparkml_ext.__file__)}
    for info in pkgutil.walk_packages(sparkml_ext.__path__, f"{PACKAGE}."):
        found[info.name] = Path(importlib.util.find_spec(info.name).origin)
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports, absolute, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return named


def _graph() -> dict[str, set[str]]:
    """Package module -> the package modules it imports (a module's parents excluded)."""
    graph = {}
    for name, path in MODULES.items():
        targets = {t for t in _imports(name, path) if t in MODULES and t != name}
        graph[name] = {t for t in targets if not name.startswith(f"{t}.")}
    return graph


def test_every_module_imports():
    for name in MODULES:
        importlib.import_module(name)
    assert {f"{PACKAGE}.{job}" for job in JOBS} <= set(MODULES)


def test_no_import_cycle():
    graph, done, path = _graph(), set(), []

    def visit(node: str) -> None:
        if node in path:
            cycle = path[path.index(node):] + [node]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if node in done:
            return
        path.append(node)
        for target in sorted(graph[node]):
            visit(target)
        path.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)


def test_no_job_imports_another_job():
    jobs = {f"{PACKAGE}.{job}" for job in JOBS}
    crossing = {(job, target) for job in jobs for target in _graph()[job] & jobs}
    assert not crossing, f"jobs meet only in the lakehouse, yet: {sorted(crossing)}"


# What `sparkml-ext serve` runs: a process without Spark, like the torch side.
SERVING = {f"{PACKAGE}.online.{m}" for m in ("features", "scorer", "server", "store", "errors", "xgboost_model")}


def test_the_torch_side_and_serving_never_import_pyspark():
    """Neither `deep/` nor serving nor anything of the package they reach, however indirectly."""
    graph = _graph()
    for name in (m for m in MODULES if m.startswith(f"{PACKAGE}.deep") or m in SERVING):
        reached, todo = set(), [name]
        while todo:
            module = todo.pop()
            if module not in reached:
                reached.add(module)
                todo.extend(graph[module])
        for module in reached:
            spark = {t for t in _imports(module, MODULES[module]) if t.split(".")[0] == "pyspark"}
            assert not spark, f"{name} reaches {module}, which imports {sorted(spark)}"
