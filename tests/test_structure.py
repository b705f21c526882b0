"""The library's shape: small functions and an import graph without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.lint

SRC = Path(__file__).resolve().parents[1] / "src" / "cdssl"
MAX_FUNCTION_LINES = 80


def _imports(path: Path) -> set[str]:
    """The cdssl modules ``path`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cdssl."):
            out.add(node.module.split(".")[1])
    return out


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in SRC.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules, or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_library_has_no_import_cycle():
    graph = import_graph()
    assert {"pretrain", "references", "pretext", "structures"} <= set(graph)
    assert cycle(graph) == [], " -> ".join(cycle(graph))
    # the checker sees a cycle when there is one
    assert cycle({**graph, "structures": graph["structures"] | {"pretrain"}})


def test_no_function_of_the_library_is_longer_than_a_screen():
    long = []
    for path in sorted(SRC.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], f"split these (at most {MAX_FUNCTION_LINES} lines each): {long}"


# the analysis modules: what each one may import (the document and the tables judge a
# pretraining from two floats; they never need the training stack)
LIGHT = (
    "runs",
    "intervals",
    "statistics",
    "verdicts",
    "markdown",
    "reference_rows",
    "budget",
    "comparison",
    "document",
    "lookups",
)
HEAVY = ("references", "pretrain", "finetune", "training", "models", "graphs", "probes")
# a model named by a string and parsed back: what the results table replaced
NAME_PARSING = ('f"mean_{', 'f"learned_{', 'f"counted_{', 'removeprefix("mean_', 'startswith("ssl_', "ssl_parts(")


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_analysis_modules_stay_small_and_never_import_the_training_stack():
    graph = import_graph()
    for name in LIGHT:
        assert not reaches(graph, name) & set(HEAVY), (name, reaches(graph, name) & set(HEAVY))
    # the checker sees such an import when there is one
    assert reaches({**graph, "document": graph["document"] | {"references"}}, "document") & set(HEAVY)
    for name in ("statistics", "verdicts", "runs", "markdown"):
        assert len((SRC / f"{name}.py").read_text().splitlines()) < 250, name


def test_no_analysis_code_builds_a_model_name_to_parse_it_back():
    found = [
        f"{path.name}: {pattern}"
        for path in sorted(SRC.glob("*.py"))
        for pattern in NAME_PARSING
        if pattern in path.read_text()
    ]
    assert found == [], found
