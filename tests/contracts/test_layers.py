"""The import graph: no circles, and no module imports a layer above its own.

Layers, bottom to top (docs/architecture.md draws them):

0. contracts: configuration, record schemas, the feature spec, the lake layout, context
   features, errors, logging, shared statistics;
1. libraries: the building blocks jobs and serving share (ranking, model files, MLflow, Feast store,
   Spark session, offline metrics, readiness probes, spec-generated feature tables, the
   experiment's arm assignment);
2. components: the batch and streaming jobs (``jobs``), the online scorer (``serving``), the
   simulator and the experiment analysis;
3. entry points: CLIs, benchmarks, the demo, service control and the Airflow DAGs.

Every import counts, lazy ones inside functions too. Read with the standard ``ast`` module;
nothing is imported.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from feedrank.config import PROJECT_ROOT

pytestmark = pytest.mark.unit

PACKAGES = ("feedrank", "jobs", "serving", "dags")
LAYERS = ("contracts", "libraries", "components", "entry points")
# The feedrank package's own __init__ (it sets an OpenMP variable only); a new module under
# feedrank/ must be placed below, or the first test fails.
EXACT_LAYER = {"feedrank": "contracts"}
# Module name (or package prefix) → layer; the longest matching prefix wins. Entry points are
# recognised by name first (see ENTRY_POINT_PARTS).
LAYER_OF_PREFIX: dict[str, str] = {
    "feedrank.config": "contracts",
    "feedrank.context": "contracts",
    "feedrank.errors": "contracts",
    "feedrank.feature_spec": "contracts",
    "feedrank.lake": "contracts",
    "feedrank.logs": "contracts",
    "feedrank.publish": "contracts",
    "feedrank.schemas": "contracts",
    "feedrank.stats": "contracts",
    "feedrank.exporter": "libraries",
    "feedrank.featurestore": "libraries",
    "feedrank.offline_metrics": "libraries",
    "feedrank.ranking": "libraries",
    "feedrank.readiness": "libraries",
    "feedrank.model": "libraries",
    "feedrank.model_files": "libraries",
    "feedrank.tracking": "libraries",
    "feedrank.spark": "libraries",
    "feedrank.synthetic_features": "libraries",
    "feedrank.experiment_analysis": "components",
    "feedrank.experiment_design": "libraries",
    "feedrank.simulator": "components",
    "jobs": "components",
    "jobs.spark_entry": "entry points",  # spark-submit's entry: runs the feedrank CLI
    "serving": "components",
    "dags": "entry points",
    "feedrank.cli": "entry points",
    "feedrank.cli_runner": "entry points",
    "feedrank.airflow_pools": "entry points",
    "feedrank.prometheus": "entry points",
    "feedrank.demo": "entry points",
    "feedrank.demo_report": "entry points",
    "feedrank.services": "entry points",
}
# A module whose name has one of these parts (or ends a part in ``_cli`` / ``_bench``) is an
# entry point wherever it lives: ``serving.cli``, ``jobs.training_cli``, ``serving.latency_bench``.
ENTRY_POINT_PARTS = {"cli", "bench"}


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere in its body (``from p import m`` → ``p.m``)."""
    found: set[str] = set()
    own_package = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = own_package.split(".")[: len(own_package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            # The deepest project module the name reaches (a function's module, not the function).
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → project modules it imports (itself and its own package excluded)."""
    files = module_files()
    names = set(files)
    return {
        module: {
            other
            for other in imported_modules(path, names)
            if other != module and not module.startswith(other + ".")
        }
        for module, path in files.items()
    }


def layer_of(module: str) -> str:
    """The layer of ``module`` (module docstring); KeyError when no rule covers it."""
    if module in EXACT_LAYER:
        return EXACT_LAYER[module]
    parts = module.split(".")
    if any(p in ENTRY_POINT_PARTS or p.endswith(("_cli", "_bench")) for p in parts):
        return "entry points"
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYER_OF_PREFIX:
            return LAYER_OF_PREFIX[prefix]
    raise KeyError(module)


def circles(graph: dict[str, set[str]]) -> list[str]:
    """Every import circle as ``a -> b -> a`` (empty when the graph is acyclic)."""
    found = []
    remaining = {module: set(deps) for module, deps in graph.items()}
    while True:
        try:
            graphlib.TopologicalSorter(remaining).prepare()
            return found
        except graphlib.CycleError as exc:
            cycle = exc.args[1]
            found.append(" -> ".join(cycle))
            remaining[cycle[-2]].discard(cycle[-1])  # cut one edge, look for the next circle


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a (layer) imports b (higher layer)`` for every import that points up."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    return sorted(
        f"{module} ({layer_of(module)}) imports {other} ({layer_of(other)})"
        for module, deps in graph.items()
        for other in deps
        if rank[layer_of(other)] > rank[layer_of(module)]
    )


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for module in module_files():
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert unplaced == []


def test_the_import_graph_has_no_circle() -> None:
    assert circles(import_graph()) == []


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward_imports(import_graph()) == []


def test_the_checks_see_lazy_imports_circles_and_upward_imports() -> None:
    """The checks themselves: a made-up graph with one circle and one upward import."""
    graph = {
        "feedrank.config": {"serving.scorer"},  # contracts → components: upward
        "serving.scorer": {"serving.consumer"},
        "serving.consumer": {"serving.scorer"},  # a circle
    }
    assert upward_imports(graph) == [
        "feedrank.config (contracts) imports serving.scorer (components)"
    ]
    assert len(circles(graph)) == 1
    # A lazy import inside a function body is an import like any other.
    lazy = imported_modules(PROJECT_ROOT / "feedrank" / "featurestore_cli.py", set(module_files()))
    assert "jobs.stream_features" in lazy


def test_no_module_is_over_400_lines_without_a_reason_at_its_top() -> None:
    """A long module says why in its docstring, on a line starting ``Long because:``."""
    long_unexplained = []
    for module, path in module_files().items():
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > 400 and "Long because:" not in docstring:
            long_unexplained.append(f"{module} ({text.count(chr(10))} lines)")
    assert long_unexplained == []
