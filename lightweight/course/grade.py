"""Grade submitted labs in one command.

    python -m lightweight.course.grade STUDENT.ipynb ... [--out results.csv] [--cell-timeout SECONDS]

Each notebook runs in a fresh kernel, one cell after another (progress bars off). Every exercise
check appends its result to a log file the moment it runs (``checks.LOG_ENV``), so a cell that
later hangs, crashes or kills the kernel never erases what was already earned. A cell that runs
past the limit is interrupted and the following cells still run; a kernel that the interrupt does
not stop (a cell that ignores SIGINT; on Windows, ``time.sleep`` or any blocking call) is restarted
and the cells that had succeeded run again first, so the later cells keep their points. An exercise
whose check recorded no result is reported with the cell that prevented it — its number, its first
line and what happened (a SyntaxError and its line, an exception, a timeout, a dead kernel) — and
only that exercise loses its points. Exercises and points come from the ``exercise`` metadata of
the matching solution notebook, so a deleted cell cannot hide an exercise.

The default limit per cell depends on the notebook: ``TIMEOUT_MARGIN`` times the slowest cell of
the matching solution (from the execution times saved in it), at least ``MIN_CELL_TIMEOUT``
seconds; ``FALLBACK_CELL_TIMEOUT`` when the solution has no saved times. Wildcards in the notebook
names are expanded by the grader itself. Writes a CSV (one row per student and exercise, UTF-8
with a BOM so that Excel shows Vietnamese) and a JSON file next to it, and prints each student's
total. The kernel's own console output is discarded, so the grader's console shows only the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import csv
import glob
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import nbformat

from ..console import safe_console

ROOT = Path(__file__).resolve().parents[2]
MIN_CELL_TIMEOUT = 600  # s
TIMEOUT_MARGIN = 30  # × the slowest solution cell
FALLBACK_CELL_TIMEOUT = 1800  # s
RECOVERY_TIMEOUT = 60  # s a kernel may take to stop after an interrupt
SYNTAX_ERRORS = ("SyntaxError", "IndentationError", "TabError")
LOG_ENV = "LIGHTWEIGHT_CHECK_LOG"  # the file lightweight.course.checks appends each result to (checks.LOG_ENV)


@dataclass
class Grade:
    student: str
    exercise: str
    status: str  # pass / fail / not attempted / error / missing
    points: float
    max_points: float
    message: str


@dataclass
class CellRun:
    """What happened to one code cell: ``ok``, ``error``, ``timeout``, ``dead`` (kernel died) or ``not run``."""

    status: str
    detail: str = ""  # "ename: evalue", or why the cell did not run
    ename: str = ""


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


def cell_seconds(notebook: dict) -> list[float]:
    """Execution time of each code cell that has saved timing metadata (``iopub.status.busy`` → ``idle``)."""
    times = []
    for cell in notebook.get("cells", []):
        ex = cell.get("metadata", {}).get("execution", {})
        try:
            start = datetime.fromisoformat(ex["iopub.status.busy"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(ex["iopub.status.idle"].replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError):
            continue
        times.append((end - start).total_seconds())
    return times


def default_cell_timeout(solution: dict) -> int:
    """Seconds one cell may run: a wide margin over the slowest cell of the solution."""
    times = cell_seconds(solution)
    if not times:
        return FALLBACK_CELL_TIMEOUT
    return max(MIN_CELL_TIMEOUT, math.ceil(TIMEOUT_MARGIN * max(times)))


# ----------------------------------------------------------------------------- running a notebook
def _quiet_logger() -> logging.Logger:
    log = logging.getLogger("lightweight.course.grade.nbclient")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def _execute(nb: nbformat.NotebookNode, workdir: Path, cell_timeout: int, log_path: Path) -> tuple[dict[int, CellRun], str]:
    """Run the code cells of ``nb`` in order; return what happened to each, and a problem that stopped everything."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbclient.util import run_sync

    env = {**os.environ, "TQDM_DISABLE": "1", LOG_ENV: str(log_path)}
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(workdir)}}, log=_quiet_logger())
    replies: dict[int, dict] = {}
    client.on_cell_executed = lambda cell, cell_index, execute_reply: replies.__setitem__(cell_index, execute_reply or {})
    runs: dict[int, CellRun] = {}
    stopped = ""
    client.reset_execution_trackers()
    try:
        with client.setup_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                if stopped:
                    runs[index] = CellRun("not run", stopped)
                    continue
                try:
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                except CellTimeoutError:
                    runs[index] = CellRun("timeout", f"chạy quá {cell_timeout} giây nên bị ngắt")
                    if not _recover(client, run_sync, CellTimeoutError, DeadKernelError, index):
                        ok = [i for i in sorted(runs) if runs[i].status == "ok"]
                        if not _restart_and_replay(client, run_sync, nb, ok, CellTimeoutError, DeadKernelError):
                            stopped = (f"{cell_label(nb, index)} chạy quá {cell_timeout} giây, kernel không dừng được "
                                       "khi bị ngắt và không khởi động lại được")
                    continue
                except DeadKernelError:
                    runs[index] = CellRun("dead", "kernel chết khi chạy ô này (hết bộ nhớ hoặc lỗi nghiêm trọng)")
                    stopped = f"kernel chết khi chạy {cell_label(nb, index)}"
                    continue
                content = replies.get(index, {}).get("content", {})
                if content.get("status") == "error":
                    ename, evalue = content.get("ename", "Error"), content.get("evalue", "")
                    runs[index] = CellRun("error", f"{ename}: {evalue}".strip().rstrip(":"), ename)
                else:
                    runs[index] = CellRun("ok")
    except Exception as e:  # the kernel could not start, or the client failed: never crash the grader
        return runs, f"không chạy được notebook: {type(e).__name__}: {e}"
    return runs, ""


def _drop_output_listener() -> None:
    """Cancel the listener nbclient leaves waiting for a timed-out cell's outputs (else asyncio prints its traceback)."""
    from jupyter_core.utils import ensure_event_loop

    loop = ensure_event_loop()
    waiting = [t for t in asyncio.all_tasks(loop) if not t.done() and t.get_coro().__name__ == "_async_poll_output_msg"]
    for task in waiting:
        task.cancel()
    if waiting:
        loop.run_until_complete(asyncio.gather(*waiting, return_exceptions=True))


def _recover(client, run_sync, timeout_error: type, dead_error: type, index: int) -> bool:
    """Interrupt a timed-out cell; True when the kernel answers again within ``RECOVERY_TIMEOUT``."""
    _drop_output_listener()
    try:
        run_sync(client.km.interrupt_kernel)()
        probe = nbformat.v4.new_code_cell("pass")
        limit, client.timeout = client.timeout, RECOVERY_TIMEOUT
        timed_out = client.nb.cells[index]
        try:
            client.execute_cell(probe, index, store_history=False)
        finally:  # nbclient stores the executed cell at that index: put the student's cell back
            client.timeout, client.nb.cells[index] = limit, timed_out
        return True
    except (timeout_error, dead_error):
        return False
    except Exception:  # the interrupt itself failed: treat the kernel as stuck
        return False


def _restart_and_replay(client, run_sync, nb: nbformat.NotebookNode, ok: list[int], timeout_error: type,
                        dead_error: type) -> bool:
    """A kernel that an interrupt did not stop (a cell that ignores SIGINT; on Windows, ``time.sleep``
    or a blocking call): restart it and run again the cells that had succeeded, so that the cells after
    the stuck one find the state they expect. True when the kernel is back."""
    _drop_output_listener()
    try:
        run_sync(client.km.restart_kernel)(now=True)
        run_sync(client.kc.wait_for_ready)(timeout=RECOVERY_TIMEOUT)
        for index in ok:
            saved = copy.deepcopy(nb.cells[index])  # the replay must not change what the first run recorded
            try:
                client.execute_cell(nb.cells[index], index, store_history=False)
            finally:
                nb.cells[index] = saved
        return True
    except (timeout_error, dead_error):
        return False
    except Exception:  # the restart itself failed
        return False


# ----------------------------------------------------------------------------- reports
def cell_label(nb: dict, index: int) -> str:
    """``ô 12 («def magnitude_mask(weight, …»)``: the 1-based position among all cells and the first line."""
    first = next((line.strip() for line in nb["cells"][index]["source"].splitlines() if line.strip()), "")
    first = first if len(first) <= 50 else first[:49] + "…"
    return f"ô {index + 1} («{first}»)"


def _syntax_error(source: str) -> str:
    """``dòng L: message`` of the syntax error in a cell (IPython syntax allowed), or ``""``."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)
    except Exception:  # IPython missing or the transform itself fails: compile the raw source
        pass
    try:
        compile(source, "<cell>", "exec")
    except SyntaxError as e:
        return f"dòng {e.lineno}: {e.msg}" + (f" («{e.text.strip()}»)" if e.text and e.text.strip() else "")
    return ""


def _what(nb: dict, index: int, run: CellRun) -> str:
    if run.ename in SYNTAX_ERRORS:
        where = _syntax_error(nb["cells"][index]["source"])
        return f"có lỗi cú pháp ({run.ename}) ở {where}" if where else f"có lỗi cú pháp: {run.detail}"
    if run.status == "error":
        return f"gây lỗi {run.detail}"
    return run.detail


def _earlier_problems(nb: dict, runs: dict[int, CellRun], before: int) -> str:
    """The cells before ``before`` that timed out (the likely causes, up to 3) and the last 2 that raised."""
    stopped = [i for i in sorted(runs) if i < before and runs[i].status in ("timeout", "dead")]
    raised = [i for i in sorted(runs) if i < before and runs[i].status == "error"]
    shown = sorted(set(stopped[-3:] + raised[-2:]))
    if not shown:
        return ""
    return " Trước đó: " + "; ".join(f"{cell_label(nb, i)} {_what(nb, i, runs[i])}" for i in shown) + "."


def _cells_of(nb: dict, exercise: str) -> tuple[int | None, int | None]:
    """(exercise cell, check cell) of ``exercise`` in a submission; None when absent."""
    short = exercise.split(".", 1)[-1]
    ex_index = next((i for i, c in enumerate(nb["cells"]) if c.get("metadata", {}).get("exercise", {}).get("id") == exercise), None)
    calls = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and f"check.{short}(" in c["source"]]
    after = [i for i in calls if ex_index is None or i > ex_index]
    return ex_index, (after or calls or [None])[0]


def why_missing(nb: dict, runs: dict[int, CellRun], exercise: str) -> tuple[str, str]:
    """(status, message) for an exercise whose check recorded no result."""
    ex_index, check_index = _cells_of(nb, exercise)
    short = exercise.split(".", 1)[-1]
    ex_run = runs.get(ex_index) if ex_index is not None else None
    if ex_run is not None and ex_run.ename in SYNTAX_ERRORS:
        return "error", f"{cell_label(nb, ex_index)} (ô bài làm) {_what(nb, ex_index, ex_run)}, nên hàm không được định nghĩa và không chấm được."
    if check_index is None:
        return "missing", f"không tìm thấy ô kiểm tra `check.{short}(...)`: ô có thể đã bị xóa hoặc sửa."
    run = runs.get(check_index, CellRun("not run", "ô không được chạy"))
    label = cell_label(nb, check_index)
    if run.status == "ok":
        return "missing", f"{label} (ô kiểm tra) chạy xong nhưng không ghi kết quả cho bài này: lời gọi check có thể đã bị sửa."
    if run.status == "not run":
        return "error", f"{label} (ô kiểm tra) không được chạy: {run.detail}."
    return "error", f"{label} (ô kiểm tra) {_what(nb, check_index, run)}." + _earlier_problems(nb, runs, check_index)


def _read_log(path: Path) -> dict[str, dict]:
    """The last recorded result of each exercise."""
    by_id = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                by_id[str(r["exercise"])] = r
            except (ValueError, KeyError, TypeError):
                continue
    return by_id


def grade_notebook(path: Path, solutions: Path = ROOT / "solutions", cell_timeout: int | None = None) -> list[Grade]:
    """Grade one submission; always returns one :class:`Grade` per expected exercise (or one error row).

    ``cell_timeout`` None: :func:`default_cell_timeout` of the matching solution."""
    student = path.stem
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:
        return [Grade(student, "-", "error", 0.0, 0.0, f"không đọc được notebook: {type(e).__name__}: {e}")]
    sol = solution_for(path, nb, solutions)
    if sol is None:
        return [Grade(student, "-", "error", 0.0, 0.0, "không nhận ra bài này thuộc chương nào (tên tệp hay mã bài tập)")]
    solution = nbformat.read(sol, as_version=4)
    expected = exercises_of(solution)
    limit = cell_timeout or default_cell_timeout(solution)
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "checks.jsonl"
        runs, problem = _execute(nb, path.parent, limit, log_path)
        by_id = _read_log(log_path)
    grades = []
    for ex, pts in expected.items():
        if ex in by_id:
            r = by_id[ex]
            message = r["message"]
            if r["status"] == "error" and "NameError" in message:  # often the trace of an earlier failed cell
                _, check_index = _cells_of(nb, ex)
                message += _earlier_problems(nb, runs, check_index if check_index is not None else len(nb.cells))
            grades.append(Grade(student, ex, r["status"], pts if r["status"] == "pass" else 0.0, pts, message))
        elif problem:
            grades.append(Grade(student, ex, "error", 0.0, pts, problem))
        else:
            status, message = why_missing(nb, runs, ex)
            grades.append(Grade(student, ex, status, 0.0, pts, message))
    return grades


def expand(patterns: list[Path]) -> list[Path]:
    """The notebooks named, with wildcards expanded here (cmd and PowerShell pass ``bai_nop/*.ipynb``
    through unexpanded). ``FileNotFoundError`` for a pattern that matches nothing."""
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else ([text] if pattern.exists() else [])
        if not matches:
            raise FileNotFoundError(f"no notebook matches {text}")
        found += [Path(m) for m in matches]
    return found


def main(argv: list[str] | None = None) -> int:
    safe_console()
    parser = argparse.ArgumentParser(description="Grade submitted lab notebooks.")
    parser.add_argument("notebooks", nargs="+", type=Path, help="submitted notebooks; wildcards such as bai_nop/*.ipynb are expanded here")
    parser.add_argument("--out", type=Path, default=Path("results.csv"), help="CSV path; JSON is written next to it")
    parser.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help=f"seconds one cell may run (default: {TIMEOUT_MARGIN}× the slowest cell of the solution, "
                             f"at least {MIN_CELL_TIMEOUT})")
    args = parser.parse_args(argv)
    try:
        notebooks = expand(args.notebooks)
    except FileNotFoundError as e:
        parser.error(str(e))
    grades = [g for path in notebooks for g in grade_notebook(path, args.solutions, args.cell_timeout)]
    rows = [asdict(g) for g in grades]
    with args.out.open("w", newline="", encoding="utf-8-sig") as f:  # with a BOM, Excel reads it as UTF-8
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
