"""Grade submitted labs in one command.

    python -m lightweight.grade STUDENT.ipynb ... [--out results.csv] [--cell-timeout 300]

Each notebook runs in a fresh kernel (progress bars off). A cell appended at the end reports
every exercise check that ran (``lightweight.checks.RESULTS``). Exercises and points come from
the ``exercise`` metadata of the matching solution notebook, so a deleted cell cannot hide an
exercise. A notebook that cannot be read, crashes its kernel or runs past the time limit gets a
report, never a crashed grader. Writes a CSV (one row per student and exercise) and a JSON file
next to it, and prints each student's total.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
REPORT_TAG = "__LIGHTWEIGHT_GRADER__"
REPORT_CELL = (
    "import dataclasses as _dc, json as _json\n"
    "from lightweight.checks import RESULTS as _RESULTS\n"
    f"print({REPORT_TAG!r} + _json.dumps([_dc.asdict(r) for r in _RESULTS], ensure_ascii=False))"
)


@dataclass
class Grade:
    student: str
    exercise: str
    status: str  # pass / fail / not attempted / error / missing
    points: float
    max_points: float
    message: str


def exercises_of(notebook: dict) -> dict[str, float]:
    """``{exercise id: points}`` from the cells' ``exercise`` metadata."""
    found = {}
    for cell in notebook.get("cells", []):
        meta = cell.get("metadata", {}).get("exercise")
        if isinstance(meta, dict) and "id" in meta:
            found[str(meta["id"])] = float(meta.get("points", 1))
    return found


def solution_for(path: Path, submitted: dict | None, solutions: Path) -> Path | None:
    """The solution notebook a submission belongs to: by file name, else by its exercise ids."""
    candidates = sorted(solutions.glob("*.ipynb"))
    for sol in candidates:
        if sol.stem in path.stem:
            return sol
    if submitted:
        ids = set(exercises_of(submitted))
        best = max(candidates, key=lambda s: len(ids & set(exercises_of(nbformat.read(s, as_version=4)))), default=None)
        if best is not None and ids & set(exercises_of(nbformat.read(best, as_version=4))):
            return best
    return None


def _run(nb: nbformat.NotebookNode, workdir: Path, cell_timeout: int) -> tuple[list[dict] | None, str]:
    """Execute ``nb`` with the report cell appended; return (check results or None, problem message)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))
    os.environ["TQDM_DISABLE"] = "1"
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except CellTimeoutError:
        return None, f"một ô chạy quá {cell_timeout} giây (vòng lặp vô hạn?) nên bài bị dừng"
    except DeadKernelError:
        return None, "kernel bị chết khi chạy bài (hết bộ nhớ hoặc lỗi nghiêm trọng)"
    except Exception as e:  # anything else the notebook does must not crash the grader
        return None, f"không chạy được notebook: {type(e).__name__}: {e}"
    for out in nb.cells[-1].get("outputs", []):
        text = "".join(out.get("text", ""))
        for line in text.splitlines():
            if line.startswith(REPORT_TAG):
                return json.loads(line[len(REPORT_TAG):]), ""
    return None, "ô báo cáo của trình chấm không chạy được (notebook có lỗi ở cấp kernel?)"


def grade_notebook(path: Path, solutions: Path = ROOT / "solutions", cell_timeout: int = 300) -> list[Grade]:
    """Grade one submission; always returns one :class:`Grade` per expected exercise (or one error row)."""
    student = path.stem
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:
        return [Grade(student, "-", "error", 0.0, 0.0, f"không đọc được notebook: {type(e).__name__}: {e}")]
    sol = solution_for(path, nb, solutions)
    if sol is None:
        return [Grade(student, "-", "error", 0.0, 0.0, "không nhận ra bài này thuộc chương nào (tên tệp hay mã bài tập)")]
    expected = exercises_of(nbformat.read(sol, as_version=4))
    results, problem = _run(nb, path.parent, cell_timeout)
    by_id = {r["exercise"]: r for r in results or []}  # the last run of each check wins
    grades = []
    for ex, pts in expected.items():
        if results is None:
            grades.append(Grade(student, ex, "error", 0.0, pts, problem))
        elif ex in by_id:
            r = by_id[ex]
            grades.append(Grade(student, ex, r["status"], pts if r["status"] == "pass" else 0.0, pts, r["message"]))
        else:
            grades.append(Grade(student, ex, "missing", 0.0, pts,
                                "ô kiểm tra của bài này không chạy: ô có thể đã bị xóa, hoặc notebook dừng trước đó"))
    return grades


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grade submitted lab notebooks.")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results.csv"), help="CSV path; JSON is written next to it")
    parser.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    parser.add_argument("--cell-timeout", type=int, default=300, help="seconds one cell may run")
    args = parser.parse_args(argv)
    grades = [g for path in args.notebooks for g in grade_notebook(path, args.solutions, args.cell_timeout)]
    rows = [asdict(g) for g in grades]
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    args.out.with_suffix(".json").write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    for student in dict.fromkeys(g.student for g in grades):
        mine = [g for g in grades if g.student == student]
        print(f"{student}: {sum(g.points for g in mine):g} / {sum(g.max_points for g in mine):g} điểm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
