"""Generate student labs from solution notebooks (nbgrader-style markers).

    python -m lightweight.course.labs           # write labs/NN_name.ipynb from solutions/NN_name.ipynb
    python -m lightweight.course.labs --check   # exit 1 if labs/ is not what the generator produces

In a code cell, the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` become
``# YOUR CODE HERE`` / ``raise NotImplementedError()`` at the marker's indentation; in a markdown
cell they become ``YOUR ANSWER HERE``. Outputs and execution counts are cleared; cell metadata
(exercise ids, points) is kept; execution timestamps and saved widget state are dropped. A title ``# ... (lời giải)`` becomes ``# ... (bài thực hành)``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from ..console import safe_console

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
SOLUTION_TITLE, LAB_TITLE = "(lời giải)", "(bài thực hành)"
ROOT = Path(__file__).resolve().parents[2]


def strip_solution(source: str, cell_type: str) -> str:
    """Replace every marked solution region of one cell's source; raise ``ValueError`` on bad markers."""
    out: list[str] = []
    inside = False
    for line in source.split("\n"):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"nested {BEGIN!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if cell_type == "code":
                out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError()"]
            else:
                out.append("YOUR ANSWER HERE")
        elif stripped == END:
            if not inside:
                raise ValueError(f"{END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without {END!r}")
    return "\n".join(out)


def make_lab(notebook: dict) -> dict:
    """The lab version of a solution notebook (a dict in nbformat 4 JSON)."""
    if notebook.get("nbformat") != 4 or "cells" not in notebook:
        raise ValueError("expected an nbformat 4 notebook")
    lab = copy.deepcopy(notebook)
    lab.get("metadata", {}).pop("widgets", None)
    for cell in lab["cells"]:
        cell.get("metadata", {}).pop("execution", None)
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        if BEGIN in src or END in src:
            src = strip_solution(src, cell["cell_type"])
        if cell["cell_type"] == "markdown" and src.startswith("# "):
            title, _, rest = src.partition("\n")
            src = title.replace(SOLUTION_TITLE, LAB_TITLE) + ("\n" + rest if rest else "")
        cell["source"] = src
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return lab


def dumps(notebook: dict) -> str:
    """Serialise exactly as Jupyter saves a notebook (nbformat's writer)."""
    import nbformat

    return nbformat.writes(nbformat.from_dict(notebook))


def expected_labs(solutions: Path = ROOT / "solutions") -> dict[str, str]:
    """Lab file name -> expected JSON text, for every solution notebook."""
    result = {}
    for path in sorted(solutions.glob("*.ipynb")):
        result[path.name] = dumps(make_lab(json.loads(path.read_text(encoding="utf-8"))))
    return result


def out_of_sync(solutions: Path = ROOT / "solutions", labs: Path = ROOT / "labs") -> list[str]:
    """Names of labs that are missing, stale or have no solution."""
    want = expected_labs(solutions)
    have = {p.name for p in labs.glob("*.ipynb")}
    bad = [n for n, text in want.items() if not (labs / n).exists() or (labs / n).read_text(encoding="utf-8") != text]
    return sorted(bad + sorted(have - set(want)))


def write_labs(solutions: Path = ROOT / "solutions", labs: Path = ROOT / "labs") -> list[Path]:
    """(Re)write every lab; remove labs whose solution is gone. Returns the written paths."""
    labs.mkdir(exist_ok=True)
    want = expected_labs(solutions)
    for stale in set(p.name for p in labs.glob("*.ipynb")) - set(want):
        (labs / stale).unlink()
    written = []
    for name, text in want.items():
        (labs / name).write_text(text, encoding="utf-8")
        written.append(labs / name)
    return written


def main(argv: list[str] | None = None) -> int:
    safe_console()
    parser = argparse.ArgumentParser(description="Generate labs/ from solutions/.")
    parser.add_argument("--check", action="store_true", help="only report labs that are out of sync")
    args = parser.parse_args(argv)
    if args.check:
        bad = out_of_sync()
        for name in bad:
            print(f"labs/{name} is out of sync; run `python -m lightweight.course.labs`")
        return 1 if bad else 0
    for path in write_labs():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
