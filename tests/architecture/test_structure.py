"""The package's shape: no import cycle, small functions, choices made only in registries.

Static checks over the source (``ast``), so they hold for code paths no test executes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "dpfedlora"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {
        _module_name(p): (p, ast.parse(p.read_text(encoding="utf-8")))
        for p in sorted(PKG.rglob("*.py"))
    }


def _imports(name: str, path: Path, tree: ast.Module, known: set[str]) -> set[str]:
    """Every dpfedlora module ``name`` imports, at any depth (function-level imports count)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    graph = {n: _imports(n, p, t, known) for n, (p, t) in sources.items()}
    # importing a.b.c runs a/__init__ and a/b/__init__ first: edges too, except to the
    # importer's own packages (they are already being initialised when it runs)
    for n, deps in graph.items():
        own = {".".join(n.split(".")[:i]) for i in range(1, n.count(".") + 2)}
        for d in list(deps):
            parts = d.split(".")
            deps.update(p for i in range(1, len(parts)) if (p := ".".join(parts[:i])) in graph)
        deps -= own
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_graph_walker_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = _graph()
    assert len(graph) > 40  # the walker sees the package
    assert "dpfedlora.methods.base" in graph["dpfedlora.methods.fedsb"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_config_never_imports_methods_torch_or_training_code():
    for name, (path, tree) in _sources().items():
        if not name.startswith("dpfedlora.config"):
            continue
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, name
        deps = _imports(name, path, tree, set(_sources()))
        assert all(d.startswith(("dpfedlora.config", "dpfedlora.errors")) for d in deps), deps


def _functions():
    for name, (_path, tree) in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name, node


def test_no_function_is_longer_than_80_lines_and_the_server_loop_fits_a_screen():
    long = [
        f"{name}.{f.name}: {f.end_lineno - f.lineno + 1}"
        for name, f in _functions()
        if f.end_lineno - f.lineno + 1 > 80
    ]
    assert not long, long
    loop = next(
        f
        for name, f in _functions()
        if name == "dpfedlora.federation.server" and f.name == "run" and f.col_offset > 0
    )
    assert loop.end_lineno - loop.lineno + 1 <= 60


# (pattern, the registry module that may hold it)
BRANCHES = [
    (re.compile(r"\btask\s*[!=]=|[!=]=\s*[\"'](classification|causal_lm)[\"']"), "dpfedlora.tasks"),
    (
        re.compile(r"grad_sample_mode\s*[!=]=|[!=]=\s*[\"'](hooks|ghost)[\"']"),
        "dpfedlora.client.grad_sample",
    ),
]


@pytest.mark.parametrize("pattern, home", BRANCHES, ids=["task", "grad_sample_mode"])
def test_option_choices_are_made_only_in_their_registry(pattern, home):
    hits = [
        f"{name}:{i}"
        for name, (path, _) in _sources().items()
        if name != home
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits


def test_method_specific_config_keys_are_read_only_by_the_methods():
    from dataclasses import fields

    from dpfedlora.config import METHOD_CONFIGS, MethodConfig

    shared = {f.name for f in fields(MethodConfig)}
    own = {f.name for cls in METHOD_CONFIGS.values() for f in fields(cls)} - shared
    assert {"init", "local_optimizer", "ranks", "galore_rank"} <= own
    pattern = re.compile(r"\.method\.(" + "|".join(sorted(own)) + r")\b|getattr\([^)]*method")
    hits = [
        f"{name}:{i}: {line.strip()}"
        for name, (path, _) in _sources().items()
        if not name.startswith(("dpfedlora.methods", "dpfedlora.config"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits


def test_every_registry_holds_exactly_the_choices_the_config_validates():
    from dpfedlora.client.grad_sample import GRAD_SAMPLE_MODES
    from dpfedlora.config import schema
    from dpfedlora.data.partition import PARTITIONERS
    from dpfedlora.methods.optimizers import OPTIMIZERS
    from dpfedlora.tasks import TASKS

    assert sorted(TASKS) == sorted(schema.TASK_NAMES)
    assert sorted(GRAD_SAMPLE_MODES) == sorted(schema.GRAD_SAMPLE_MODES)
    assert sorted(PARTITIONERS) == sorted(schema.PARTITION_KINDS)
    assert sorted(OPTIMIZERS) == sorted(schema.OPTIMIZERS)
