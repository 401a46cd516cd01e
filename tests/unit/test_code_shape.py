"""The shape rules of docs/style.md, checked on every run: short files, imports that run one way (down the layers of
docs/layout.md, counting imports inside functions), no cycles, and a test file named after every module."""

from __future__ import annotations

import ast
from pathlib import Path

from paths import REPO

ROOT = REPO
MAX_LINES = 350
PACKAGES = ("pipeline", "ops")
SOURCES = sorted(p for folder in (*PACKAGES, "dags", "benchmarks") for p in (ROOT / folder).rglob("*.py"))
# Who may import whom: a module imports only from its own group or a lower layer. The stages sit above every helper
# (no helper imports a stage), `cli` above the stages, and ops above all of pipeline (pipeline never imports ops).
LAYERS = [
    {"config", "process"},
    {"storage"},
    {"model"},  # a base model may live on S3 (model/remote.py)
    {"data", "tracking"},
    {"training", "evaluation"},
    {"promotion", "serving"},
    {"ingest", "validate", "train", "evaluate", "promote"},
    {"cli"},
    {"__main__"},
    {"ops"},
]
RANK = {group: rank for rank, groups in enumerate(LAYERS) for group in groups}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def module_imports(path: Path) -> set[str]:
    """Every pipeline / ops module this one imports, at module level or inside functions (a deferred import is still
    a dependency), including `importlib.import_module("pipeline.x")` with a constant name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:  # `from pipeline.data import table` imports the module pipeline.data.table
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _is_module(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] in PACKAGES):
            found.add(node.args[0].value)
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def group(module: str) -> str:
    """pipeline.data.sources -> data; pipeline.train -> train; ops.stack -> ops."""
    parts = module.split(".")
    return "ops" if parts[0] == "ops" else (parts[1] if len(parts) > 1 else "pipeline")


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): module_imports(p) for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":  # open modules are the ones on the current path
                return path[path.index(imported):] + [imported]
            if imported not in state and (cycle := visit(imported, [*path, imported])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a group on the same layer (other than its own) or above: they run back up."""
    wrong = []
    for module, imported in sorted(graph.items()):
        mine = group(module)
        for other in sorted(imported):
            theirs = group(other)
            if theirs == "pipeline" or mine == "pipeline":
                continue  # the package's own __init__: a docstring, imports nothing
            if theirs != mine and RANK[theirs] >= RANK[mine]:
                wrong.append(f"{module} ({mine}, layer {RANK[mine]}) imports {other} ({theirs}, layer {RANK[theirs]})")
    return wrong


def test_no_source_file_is_longer_than_the_limit():
    assert SOURCES, "no sources found"
    too_long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines (split them by responsibility): {too_long}"


def test_every_group_has_a_layer():
    groups = {group(module) for module in import_graph()} - {"pipeline"}
    assert groups <= set(RANK), f"packages or stages missing from LAYERS: {groups - set(RANK)}"


def test_imports_run_down_the_layers_and_make_no_cycle():
    graph = import_graph()
    assert len(graph) > 40
    assert not upward_imports(graph), "imports that run back up:\n" + "\n".join(upward_imports(graph))
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_checks_find_an_import_inside_a_function_and_an_upward_one(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from pipeline.tracking import runs\n    import importlib\n"
                      "    importlib.import_module('pipeline.promote')\n")
    assert module_imports(source) == {"pipeline.tracking.runs", "pipeline.promote"}
    assert upward_imports({"pipeline.tracking.ui": {"pipeline.tracking.runs"}, "pipeline.data.x": {"pipeline.train"},
                           "pipeline.model.y": {"ops.stack"}}) == [
        "pipeline.data.x (data, layer 3) imports pipeline.train (train, layer 6)",
        "pipeline.model.y (model, layer 2) imports ops.stack (ops, layer 9)"]


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_module_has_a_test_file_named_after_it_where_a_newcomer_looks():
    """pipeline/data/sources.py -> tests/unit/data/test_sources.py; ops/stack.py -> tests/unit/ops/test_stack.py;
    or, for the few whose tests need more than the unit tier, the file TESTED_IN names (which must exist)."""
    missing = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            source = path.relative_to(ROOT).as_posix()
            relative = path.relative_to(ROOT / "pipeline") if package == "pipeline" else path.relative_to(ROOT)
            expected = ROOT / (TESTED_IN.get(source) or f"tests/unit/{relative.parent.as_posix()}/test_{path.name}")
            if not expected.is_file():
                missing.append(f"{source} -> {expected.relative_to(ROOT)}")
    assert not missing, "modules without a test file of their own:\n" + "\n".join(sorted(missing))


# Modules whose tests need a tier above unit (a whole stack, a server, a real run), and where those tests are.
TESTED_IN = {
    "pipeline/data/locations.py": "tests/unit/data/test_sources.py",  # local and S3 locations, read as sources
    "ops/stack.py": "tests/stack/test_stack.py",  # the services brought up, a scheduled run, brought down
    "ops/backfill.py": "tests/dagruns/test_backfill.py",  # a real Airflow backfill over two dates
    "ops/nights.py": "tests/nights/test_nights_driver.py",  # three nights through the real DAG
    "ops/chat.py": "tests/integration/test_openai_serving.py",  # the REPL against the served champion
    "pipeline/serving/server.py": "tests/integration/test_openai_serving.py",  # the server over HTTP, openai client
    "pipeline/serving/openai_api.py": "tests/integration/test_openai_serving.py",
    "pipeline/serving/engine.py": "tests/integration/test_openai_serving.py",  # transformers' serving, for real
    "pipeline/serving/model_code.py": "tests/integration/test_serving.py",  # what MLflow runs to build the model
    "pipeline/data/table.py": "tests/unit/test_ingest.py",  # names only: ingest writes them, validate checks them
}


def test_test_file_names_are_unique_across_the_tiers():
    """The test folders are not packages, so pytest imports each file by its base name: two tiers' test_x.py clash
    the moment one command collects both (make test collects every tier, then deselects by marker)."""
    seen: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        seen.setdefault(path.name, []).append(path.relative_to(ROOT).as_posix())
    assert not {name: paths for name, paths in seen.items() if len(paths) > 1}
