"""STYLE.md's shape rules, checked on every run: short files and no import cycles between pipeline modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 350
SOURCES = sorted(p for folder in ("pipeline", "dags", "benchmarks") for p in (ROOT / folder).rglob("*.py"))


def test_no_source_file_is_longer_than_the_limit():
    assert SOURCES, "no sources found"
    too_long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines (split them by responsibility): {too_long}"


def module_imports(path: Path) -> set[str]:
    """The pipeline modules this one imports at module level (imports inside functions are deliberate deferrals)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            if node.module == "pipeline":
                found |= {f"pipeline.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline.")}
    return found


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


def test_pipeline_modules_import_no_cycle():
    graph = {f"pipeline.{p.relative_to(ROOT / 'pipeline').with_suffix('').as_posix().replace('/', '.')}":
             module_imports(p) for p in (ROOT / "pipeline").rglob("*.py")}
    assert len(graph) > 20
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
