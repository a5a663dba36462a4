import json
from pathlib import Path

import nbformat
import pytest

from lightweight.course.labs import BEGIN, END, make_lab, out_of_sync, strip_solution

ROOT = Path(__file__).resolve().parent.parent


def test_strip_solution_keeps_indentation():
    src = f"def f(x):\n    {BEGIN}\n    return 2 * x\n    {END}\n\nprint(f)"
    assert strip_solution(src, "code") == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\nprint(f)"
    assert strip_solution(f"Answer:\n{BEGIN}\nsecret\n{END}", "markdown") == "Answer:\nYOUR ANSWER HERE"


@pytest.mark.parametrize("src", [f"{BEGIN}\nx", f"x\n{END}", f"{BEGIN}\n{BEGIN}\n{END}\n{END}"])
def test_bad_markers_are_refused(src):
    with pytest.raises(ValueError):
        strip_solution(src, "code")


def test_make_lab_renames_the_title_only():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Chương 9 (lời giải)\nxem (lời giải) cũ")])
    lab = make_lab(json.loads(nbformat.writes(nb)))
    assert lab["cells"][0]["source"] == "# Chương 9 (bài thực hành)\nxem (lời giải) cũ"


def test_make_lab_clears_outputs_and_keeps_metadata():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = 1\n{BEGIN}\ny = 2\n{END}")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="hi")]
    nb.cells[0].execution_count = 3
    nb.cells[0].metadata["exercise"] = {"id": "ex1", "points": 2}
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    lab = make_lab(json.loads(nbformat.writes(nb)))
    cell = lab["cells"][0]
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert cell["metadata"] == {"exercise": {"id": "ex1", "points": 2}}
    assert "widgets" not in lab["metadata"]
    assert "y = 2" not in cell["source"] and "raise NotImplementedError()" in cell["source"]
    with pytest.raises(ValueError, match="nbformat 4"):
        make_lab({"cells": []})


def test_labs_are_in_sync_with_solutions():
    assert out_of_sync() == [], "run `python -m lightweight.course.labs` (or `python course.py labs`) and commit labs/"


def test_every_solution_has_exercises_and_labs_hide_them():
    solutions = sorted((ROOT / "solutions").glob("*.ipynb"))
    assert solutions
    for path in solutions:
        sol = path.read_text(encoding="utf-8")
        lab = (ROOT / "labs" / path.name).read_text(encoding="utf-8")
        assert sol.count(BEGIN) >= 3, f"{path.name}: a chapter needs at least 3 exercises"
        assert BEGIN not in lab and END not in lab
        assert lab.count("raise NotImplementedError()") == sol.count(BEGIN)
