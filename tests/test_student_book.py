"""The student edition of the book: same chapters and labs, no solution notebook, no {solution} block."""

import html
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_student_toc_is_the_book_toc_without_solutions():
    toc = [line for line in (ROOT / "_toc.yml").read_text(encoding="utf-8").splitlines() if "solutions/" not in line]
    student = [line for line in (ROOT / "_toc_student.yml").read_text(encoding="utf-8").splitlines()
               if not line.startswith("#")]
    assert student == toc


def solution_snippets() -> list[str]:
    """Lines that only a solution contains: code inside solution markers and {solution} blocks of the prose."""
    snippets = []
    for nb_path in (ROOT / "solutions").glob("*.ipynb"):
        for cell in json.loads(nb_path.read_text(encoding="utf-8"))["cells"]:
            src = "".join(cell["source"])
            for region in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", src, flags=re.S):
                snippets += [ln.strip() for ln in region.splitlines() if len(ln.strip()) > 25]
    for md in (ROOT / "book").glob("*.md"):
        for block in re.findall(r"`{3,4}\{solution\}[^\n]*\n(.*?)\n`{3,4}", md.read_text(encoding="utf-8"), flags=re.S):
            lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith(":")]
            snippets += [lines[0][:40]] if lines else []
    return snippets


def test_student_book_builds_without_warnings_and_without_solutions(tmp_path):
    out = tmp_path / "student"
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(ROOT), "--config", str(ROOT / "_config_student.yml"),
           "--toc", str(ROOT / "_toc_student.yml"), "--path-output", str(out), "--warningiserror", "--keep-going"]
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    site = out / "_build" / "html"
    pages = {p: html.unescape(p.read_text(encoding="utf-8")) for p in site.rglob("*.html")}
    assert (site / "labs" / "04_quantization.html").exists()
    assert not (site / "solutions").exists()
    snippets = solution_snippets()
    assert len(snippets) > 20
    leaks = [(s, p.name) for s in snippets for p, text in pages.items() if s in text]
    assert not leaks, leaks[:5]
