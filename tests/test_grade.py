"""The grader: full marks on a solution, zero on a blank lab, clear reports on broken submissions."""

from pathlib import Path

import nbformat
import pytest

from lightweight.grade import exercises_of, grade_notebook, main, solution_for

ROOT = Path(__file__).resolve().parent.parent

MEMORY = '''BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}


def memory_gb(n_params, fmt):
    return n_params * BITS[fmt] / 8 / 1e9'''


def small_lab(tmp_path: Path, name: str, exercise_src: str, extra: list[str] = (), keep_check: bool = True) -> Path:
    """A chapter-0-like submission with one graded exercise (ch00.memory_gb)."""
    cells = [nbformat.v4.new_code_cell("from lightweight.checks import ch00 as check")]
    cells += [nbformat.v4.new_code_cell(src) for src in extra]
    ex = nbformat.v4.new_code_cell(exercise_src)
    ex.metadata["exercise"] = {"id": "ch00.memory_gb", "points": 1}
    cells.append(ex)
    if keep_check:
        cells.append(nbformat.v4.new_code_cell("check.memory_gb(memory_gb)"))
    path = tmp_path / f"{name}_00_measure.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


def by_exercise(grades):
    return {g.exercise: g for g in grades}


CHAPTERS = sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))


def test_solution_gets_full_marks_and_blank_lab_gets_zero():
    """Executed end to end on chapter 0 (the grader does not depend on the chapter; nbval already runs
    every solution and compares each check's ✅ line)."""
    name = "00_measure.ipynb"
    sol = grade_notebook(ROOT / "solutions" / name)
    assert len(sol) >= 4 and all(g.status == "pass" and g.points == g.max_points == 1 for g in sol), sol
    lab = grade_notebook(ROOT / "labs" / name)
    assert len(lab) == len(sol)
    assert {g.status for g in lab} == {"not attempted"} and sum(g.points for g in lab) == 0, lab


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_lab_has_its_solutions_exercises_blank_and_checked(name):
    sol = nbformat.read(ROOT / "solutions" / name, as_version=4)
    lab = nbformat.read(ROOT / "labs" / name, as_version=4)
    ids = exercises_of(sol)
    assert len(ids) >= 5 or name == "00_measure.ipynb"
    assert exercises_of(lab) == ids
    assert solution_for(ROOT / "labs" / name, lab, ROOT / "solutions").name == name
    for nb, blank in ((sol, False), (lab, True)):
        cells = nb.cells
        for i, cell in enumerate(cells):
            ex = cell.metadata.get("exercise")
            if not ex:
                continue
            assert ("raise NotImplementedError()" in cell.source) == blank, (name, ex["id"])
            short = ex["id"].split(".", 1)[1]
            after = "\n".join(c.source for c in cells[i + 1:i + 3] if c.cell_type == "code")
            assert f"check.{short}(" in after, f"{name}: no check right after {ex['id']}"


def test_wrong_and_crashing_answers_are_reported(tmp_path):
    wrong = small_lab(tmp_path, "an", MEMORY.replace("/ 1e9", "/ 2**30"))
    g = by_exercise(grade_notebook(wrong))["ch00.memory_gb"]
    assert g.status == "fail" and g.points == 0 and "GiB" in g.message
    crash = small_lab(tmp_path, "binh", "def memory_gb(n_params, fmt):\n    return 1 / 0")
    g = by_exercise(grade_notebook(crash))["ch00.memory_gb"]
    assert g.status == "error" and "ZeroDivisionError" in g.message


def test_deleted_cells_and_unrelated_errors(tmp_path):
    deleted = small_lab(tmp_path, "chi", MEMORY, keep_check=False)
    grades = by_exercise(grade_notebook(deleted))
    assert grades["ch00.memory_gb"].status == "missing"
    assert set(grades) == {"ch00.memory_gb", "ch00.fits", "ch00.gpt_params", "ch00.bits_per_char"}
    noisy = small_lab(tmp_path, "dung", MEMORY, extra=["raise RuntimeError('oops')"])
    assert by_exercise(grade_notebook(noisy))["ch00.memory_gb"].status == "pass"  # one broken cell is not fatal


def test_infinite_loop_and_unreadable_file(tmp_path):
    loop = small_lab(tmp_path, "em", MEMORY, extra=["while True:\n    pass"])
    grades = grade_notebook(loop, cell_timeout=5)
    assert all(g.status == "error" and "quá 5 giây" in g.message for g in grades)
    junk = tmp_path / "giang_00_measure.ipynb"
    junk.write_text("{not json", encoding="utf-8")
    (g,) = grade_notebook(junk)
    assert g.status == "error" and "không đọc được" in g.message


def test_command_writes_csv_and_json(tmp_path, capsys):
    path = small_lab(tmp_path, "hoa", MEMORY)
    out = tmp_path / "ketqua.csv"
    assert main([str(path), "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "student,exercise,status,points,max_points,message" and len(lines) == 5
    assert (tmp_path / "ketqua.json").exists()
    assert "hoa_00_measure: 1 / 4 điểm" in capsys.readouterr().out


def test_unknown_notebook(tmp_path):
    path = tmp_path / "random.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
    (g,) = grade_notebook(path)
    assert g.status == "error" and "chương nào" in g.message
