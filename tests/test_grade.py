"""The grader: full marks on a solution even when a cell hangs, zero on a blank lab, precise reports on broken submissions."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lightweight.course import checks, grade
from lightweight.course.grade import (MIN_CELL_TIMEOUT, TIMEOUT_MARGIN, default_cell_timeout, exercises_of, grade_notebook,
                                      solution_for)
from consoles import CHILD_ENCODING, as_shown

ROOT = Path(__file__).resolve().parent.parent

MEMORY = '''BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}


def memory_gb(n_params, fmt):
    return n_params * BITS[fmt] / 8 / 1e9'''
FITS = "def fits(n_params, fmt, ram_gb):\n    return memory_gb(n_params, fmt) <= USABLE * ram_gb"


def lab(tmp_path: Path, name: str, cells: list) -> Path:
    """A chapter-0-like submission: each item is a source, or (exercise id, source) for a graded exercise cell."""
    nb_cells = [nbformat.v4.new_code_cell("from lightweight.course.checks import ch00 as check")]
    for item in cells:
        if isinstance(item, tuple):
            cell = nbformat.v4.new_code_cell(item[1])
            cell.metadata["exercise"] = {"id": item[0], "points": 1}
        else:
            cell = nbformat.v4.new_code_cell(item)
        nb_cells.append(cell)
    path = tmp_path / f"{name}_00_measure.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=nb_cells), path)
    return path


def by_exercise(grades):
    return {g.exercise: g for g in grades}


CHAPTERS = sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))


def test_a_cell_past_the_limit_keeps_the_points_earned_and_a_blank_lab_gets_zero(tmp_path):
    """Chapter 0's solution with a cell that never ends, between two checks: every exercise still gets its points in
    the CSV, the cells after the hung one still run, and the console (the command run as a user runs it) shows only
    the totals, no traceback."""
    sol = nbformat.read(ROOT / "solutions" / "00_measure.ipynb", as_version=4)
    fits_check = next(i for i, c in enumerate(sol.cells) if c.cell_type == "code" and "check.fits(" in c.source)
    sol.cells.insert(fits_check + 1, nbformat.v4.new_code_cell("import time\ntime.sleep(10**6)"))
    hung = tmp_path / "an_00_measure.ipynb"
    nbformat.write(sol, hung)
    out = tmp_path / "ketqua.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "lightweight.course.grade", str(hung), str(ROOT / "labs" / "00_measure.ipynb"),
                           "--out", str(out), "--cell-timeout", "30"], capture_output=True, text=True, env=env, timeout=3600,
                          encoding=CHILD_ENCODING, errors="replace")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(b"\xef\xbb\xbf"), "the CSV starts with a UTF-8 BOM, so Excel reads it as UTF-8"
    rows = list(csv.DictReader(out.open(encoding="utf-8-sig")))
    mine = [r for r in rows if r["student"] == "an_00_measure"]
    assert len(mine) == 4 and all(r["status"] == "pass" and float(r["points"]) == 1.0 for r in mine), mine
    blank = [r for r in rows if r["student"] == "00_measure"]
    assert len(blank) == 4 and {r["status"] for r in blank} == {"not attempted"} and sum(float(r["points"]) for r in blank) == 0
    assert json.loads((tmp_path / "ketqua.json").read_text(encoding="utf-8")) == [
        {**r, "points": float(r["points"]), "max_points": float(r["max_points"])} for r in rows]
    console = proc.stdout + proc.stderr
    assert not any(word in console for word in ("Traceback", "Task exception", "ZMQ", "Error")), console
    assert proc.stdout.splitlines() == [as_shown("an_00_measure: 4 / 4 điểm"), as_shown("00_measure: 0 / 4 điểm")], console


def test_a_cell_that_ignores_the_interrupt_keeps_the_later_points(tmp_path, monkeypatch):
    """A cell that an interrupt cannot stop (here it ignores SIGINT; on Windows an interrupt does not wake
    ``time.sleep``): the kernel is restarted, the cells that had succeeded run again, and the exercises after
    the stuck cell keep their points."""
    monkeypatch.setattr(grade, "RECOVERY_TIMEOUT", 10)
    stuck = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)"
    path = lab(tmp_path, "lan", [("ch00.memory_gb", MEMORY), "check.memory_gb(memory_gb)", "USABLE = 0.7", stuck,
                                 ("ch00.fits", FITS), "check.fits(fits)"])
    grades = by_exercise(grade_notebook(path, cell_timeout=10))
    assert grades["ch00.memory_gb"].status == "pass" and grades["ch00.memory_gb"].points == 1
    assert grades["ch00.fits"].status == "pass" and grades["ch00.fits"].points == 1, grades["ch00.fits"].message


def test_the_grader_expands_its_own_wildcards(tmp_path):
    for name in ("b_00_measure.ipynb", "a_00_measure.ipynb", "notes.txt"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    assert grade.expand([tmp_path / "*.ipynb"]) == [tmp_path / "a_00_measure.ipynb", tmp_path / "b_00_measure.ipynb"]
    assert grade.expand([tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]
    with pytest.raises(FileNotFoundError, match="no notebook matches"):
        grade.expand([tmp_path / "missing" / "*.ipynb"])


def test_a_hung_cell_is_reported_only_for_the_exercise_it_prevented(tmp_path):
    path = lab(tmp_path, "binh", [("ch00.memory_gb", MEMORY), "check.memory_gb(memory_gb)",
                                  "while True:\n    pass\nUSABLE = 0.7", ("ch00.fits", FITS), "check.fits(fits)"])
    grades = by_exercise(grade_notebook(path, cell_timeout=25))
    assert grades["ch00.memory_gb"].status == "pass" and grades["ch00.memory_gb"].points == 1
    fits = grades["ch00.fits"]
    assert fits.status == "error" and "NameError" in fits.message and "USABLE" in fits.message, fits.message
    assert "ô 4 («while True:»)" in fits.message and "chạy quá 25 giây" in fits.message, fits.message
    assert grades["ch00.gpt_params"].status == "missing" and "giây" not in grades["ch00.gpt_params"].message


def test_a_hung_check_and_a_dead_kernel_name_their_cell(tmp_path):
    path = lab(tmp_path, "chi", [("ch00.memory_gb", MEMORY), "check.memory_gb(memory_gb)",
                                 ("ch00.fits", "def fits(n, fmt, ram):\n    while True:\n        pass"), "check.fits(fits)",
                                 "import os\nos._exit(1)", ("ch00.bits_per_char", "def bits_per_char(x):\n    return x / 0.6931471805599453"),
                                 "check.bits_per_char(bits_per_char)"])
    grades = by_exercise(grade_notebook(path, cell_timeout=25))
    assert grades["ch00.memory_gb"].status == "pass"
    assert grades["ch00.fits"].status == "error" and "ô 5 («check.fits(fits)»)" in grades["ch00.fits"].message
    assert "chạy quá 25 giây" in grades["ch00.fits"].message
    dead = grades["ch00.bits_per_char"]
    assert dead.status == "error" and "không được chạy" in dead.message and "kernel chết khi chạy ô 6" in dead.message, dead.message


def test_a_syntax_error_is_reported_with_its_line(tmp_path):
    path = lab(tmp_path, "dung", [("ch00.memory_gb", "def memory_gb(n, fmt):\n    return n * (BITS[fmt] / 8"),
                                  "check.memory_gb(memory_gb)"])
    g = by_exercise(grade_notebook(path, cell_timeout=60))["ch00.memory_gb"]
    assert g.status == "error" and "SyntaxError" in g.message and "dòng 2" in g.message, g.message
    assert "xóa" not in g.message


def test_wrong_and_crashing_answers_are_reported(tmp_path):
    wrong = lab(tmp_path, "em", [("ch00.memory_gb", MEMORY.replace("/ 1e9", "/ 2**30")), "check.memory_gb(memory_gb)"])
    g = by_exercise(grade_notebook(wrong, cell_timeout=60))["ch00.memory_gb"]
    assert g.status == "fail" and g.points == 0 and "GiB" in g.message
    crash = lab(tmp_path, "giang", [("ch00.memory_gb", "def memory_gb(n_params, fmt):\n    return 1 / 0"), "check.memory_gb(memory_gb)"])
    g = by_exercise(grade_notebook(crash, cell_timeout=60))["ch00.memory_gb"]
    assert g.status == "error" and "ZeroDivisionError" in g.message and "ở dòng 2 của `memory_gb`" in g.message, g.message


def test_deleted_cells_and_unrelated_errors(tmp_path):
    deleted = lab(tmp_path, "hoa", [("ch00.memory_gb", MEMORY)])
    grades = by_exercise(grade_notebook(deleted, cell_timeout=60))
    assert grades["ch00.memory_gb"].status == "missing" and "xóa" in grades["ch00.memory_gb"].message
    assert set(grades) == {"ch00.memory_gb", "ch00.fits", "ch00.gpt_params", "ch00.bits_per_char"}
    noisy = lab(tmp_path, "khanh", ["raise RuntimeError('oops')", ("ch00.memory_gb", MEMORY), "check.memory_gb(memory_gb)"])
    assert by_exercise(grade_notebook(noisy, cell_timeout=60))["ch00.memory_gb"].status == "pass"  # one broken cell is not fatal


def test_unreadable_and_unknown_notebooks(tmp_path):
    junk = tmp_path / "long_00_measure.ipynb"
    junk.write_text("{not json", encoding="utf-8")
    (g,) = grade_notebook(junk)
    assert g.status == "error" and "không đọc được" in g.message
    path = tmp_path / "random.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
    (g,) = grade_notebook(path)
    assert g.status == "error" and "chương nào" in g.message


def test_default_limit_comes_from_the_solutions_timings():
    def nb(seconds):
        cells = []
        for s in seconds:
            c = nbformat.v4.new_code_cell("pass")
            c.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00.000000Z",
                                       "iopub.status.idle": f"2026-01-01T00:{int(s // 60):02d}:{s % 60:09.6f}Z"}
            cells.append(c)
        return nbformat.v4.new_notebook(cells=cells)

    assert grade.cell_seconds(nb([1.5, 40.0])) == [1.5, 40.0]
    assert default_cell_timeout(nb([1.5, 40.0])) == TIMEOUT_MARGIN * 40
    assert default_cell_timeout(nb([1.0])) == MIN_CELL_TIMEOUT
    assert default_cell_timeout(nbformat.v4.new_notebook()) == grade.FALLBACK_CELL_TIMEOUT
    for name in CHAPTERS:  # every solution keeps its timings, so its limit is measured, not the fallback
        sol = nbformat.read(ROOT / "solutions" / name, as_version=4)
        assert grade.cell_seconds(sol) and default_cell_timeout(sol) >= TIMEOUT_MARGIN * max(grade.cell_seconds(sol))


def test_the_grader_and_the_checks_agree_on_the_log():
    assert grade.LOG_ENV == checks.LOG_ENV


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_lab_has_its_solutions_exercises_blank_and_checked(name):
    sol = nbformat.read(ROOT / "solutions" / name, as_version=4)
    lab_nb = nbformat.read(ROOT / "labs" / name, as_version=4)
    ids = exercises_of(sol)
    assert len(ids) >= 5 or name == "00_measure.ipynb"
    assert exercises_of(lab_nb) == ids
    assert solution_for(ROOT / "labs" / name, lab_nb, ROOT / "solutions").name == name
    for nb, blank in ((sol, False), (lab_nb, True)):
        cells = nb.cells
        for i, cell in enumerate(cells):
            ex = cell.metadata.get("exercise")
            if not ex:
                continue
            assert ("raise NotImplementedError()" in cell.source) == blank, (name, ex["id"])
            short = ex["id"].split(".", 1)[1]
            after = "\n".join(c.source for c in cells[i + 1:i + 3] if c.cell_type == "code")
            assert f"check.{short}(" in after, f"{name}: no check right after {ex['id']}"
