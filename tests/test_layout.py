"""The package's import structure, read from its own source with ``ast``: no import circle inside
``lightweight``, and no module left where the layout moved it from."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightweight"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports (at any depth of its code, lazily or not).
    Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``: those count too."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            for k in range(1, len(parts) + 1):
                prefix = ".".join(parts[:k])
                if prefix in known and prefix != name:
                    found.add(prefix)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_imports_are_resolved():
    graph = import_graph()
    assert "lightweight.bench.core" in graph["lightweight.bench.baseline"]
    assert "lightweight.quantize" in graph["lightweight.llm.lowbit"]
    assert "lightweight.quantize" in graph["lightweight.course.checks.ch07"]  # three dots
    # importing lightweight.bench.core also runs lightweight/bench/__init__.py: a circle through a
    # package's __init__ (as the old registry had) is seen
    assert "lightweight.bench" in graph["lightweight.bench.baseline"]


@pytest.mark.parametrize("old", ["llm.py", "llm_eval.py", "lowbit.py", "fast.py", "gguf_export.py", "roofline.py",
                                 "reference.py", "bench.py", "grade.py", "labs.py", "checks"])
def test_old_module_paths_are_gone(old):
    assert not (PACKAGE / old).exists(), f"lightweight/{old} moved in the package layout; no alias stays behind"
