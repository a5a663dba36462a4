"""The verification design of the solution notebooks (CONTRIBUTING.md, "How notebooks are verified").

nbval runs in lax mode: a cell's saved output is compared byte for byte only when the cell is
tagged ``nbval-check-output``, and only exact outputs may be tagged (check messages, counts,
shapes, settings). Every measured float is verified by an ``assert`` with a margin instead.
These tests keep the notebooks inside that design.
"""

import re
import tomllib
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
CHECKED = "nbval-check-output"
# Calls whose results depend on the machine's speed or on floating-point rounding in BLAS.
TIMING = re.compile(r"\b(latency|speed_ratio|perf_counter|time\.time|tokens_per_second)\b")
CHECK_CALL = re.compile(r"^check\.\w+\(", re.MULTILINE)


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_nbval_runs_in_lax_mode():
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]["addopts"]
    assert "--nbval-lax" in addopts.split()
    assert "--nbval" not in addopts.split(), "plain --nbval would compare every output digit by digit"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_the_machine_is_printed_first(path):
    first = code_cells(path)[0]
    assert "print_machine()" in first.source, f"{path.name}: the first code cell must call print_machine()"
    assert CHECKED not in first.metadata.get("tags", []), "the machine line differs on every machine"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_check_cells_are_compared_and_nothing_timed_is(path):
    for i, cell in enumerate(code_cells(path)):
        tags = cell.metadata.get("tags", [])
        assert "NBVAL_" not in cell.source, f"{path.name} cell {i}: use the {CHECKED} tag, not comment markers"
        if CHECK_CALL.search(cell.source):
            assert CHECKED in tags, f"{path.name} cell {i}: a check cell's message is exact: tag it {CHECKED}"
        if CHECKED in tags:
            assert not TIMING.search(cell.source), f"{path.name} cell {i}: timings must never be compared"
            assert cell.outputs, f"{path.name} cell {i}: a compared cell without saved output checks nothing"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_measured_claims_are_asserted(path):
    asserts = sum(len(re.findall(r"^\s*assert ", c.source, re.MULTILINE)) for c in code_cells(path))
    assert asserts >= 5, f"{path.name}: only {asserts} asserted claims"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_no_widget_state_is_saved(path):
    # saved ipywidgets state makes the book's page load the widget manager from a CDN: offline,
    # a reader's browser then logs errors and the page asks for hosts the book must never need
    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata, f"{path.name}: remove metadata.widgets (run with TQDM_DISABLE=1, as `python course.py solutions` does)"
