"""The book's Sphinx extensions (book/_ext) on small projects, and the shape of every chapter page."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
EXT = ROOT / "book" / "_ext"
# 1×1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")


def make_project(tmp_path: Path, chapter_rst: str) -> Path:
    """A Sphinx project with the book's extensions, a notebook with cells 'plot', 'text' and 'two',
    and ``book/03_x.rst`` holding ``chapter_rst``."""
    src = tmp_path / "src"
    (src / "book").mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    png = {"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"}
    nb.cells = [nbformat.v4.new_code_cell("plot()", id="plot", outputs=[nbformat.v4.new_output("display_data", data=png)]),
                nbformat.v4.new_code_cell("print(1)", id="text",
                                          outputs=[nbformat.v4.new_output("stream", name="stdout", text="1.25 printed\n")]),
                nbformat.v4.new_code_cell("plot(); plot()", id="two",
                                          outputs=[nbformat.v4.new_output("display_data", data=png)] * 2)]
    nbformat.write(nb, src / "nb.ipynb")
    (src / "alt.yml").write_text("nb.ipynb:\n  plot: Một chấm đen\n", encoding="utf-8")
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(EXT)!r})\n"
        "extensions = ['notebook_figures', 'book_pages']\n"
        "notebook_figures_alt = 'alt.yml'\nnumfig = True\nnumfig_format = {'figure': 'Hình %s'}\n"
        "exclude_patterns = ['_build']\n", encoding="utf-8")
    (src / "index.rst").write_text("Sách\n====\n\n.. toctree::\n\n   book/03_x\n", encoding="utf-8")
    (src / "book" / "03_x.rst").write_text("Chương 3\n========\n\n" + chapter_rst, encoding="utf-8")
    return src


def build(src: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(src),
                           str(src / "_build" / "html")],
                          capture_output=True, text=True, encoding="utf-8", errors="replace")


def test_notebook_figure_and_output_on_a_chapter_page(tmp_path):
    src = make_project(tmp_path, """
.. notebook-figure:: ../nb.ipynb
   :cell: plot
   :name: fig-a

   Chú thích thứ nhất.

.. notebook-figure:: ../nb.ipynb
   :cell: two
   :index: 1
   :alt: Chấm thứ hai

   Chú thích thứ hai, xem arXiv:2412.19437.

.. notebook-output:: ../nb.ipynb
   :cell: text

   Những gì ô đã in.
""")
    done = build(src)
    assert done.returncode == 0, done.stderr
    html = (src / "_build" / "html" / "book" / "03_x.html").read_text(encoding="utf-8")
    assert re.search(r'<img alt="Một chấm đen" src="\.\./_images/[0-9a-f]{64}\.png"', html)
    assert 'alt="Chấm thứ hai"' in html
    assert "Hình 3.1" in html and "Hình 3.2" in html and "Chú thích thứ nhất." in html
    assert "1.25 printed" in html and "Những gì ô đã in." in html
    assert 'href="https://arxiv.org/abs/2412.19437"' in html
    assert len(list((src / "_build" / "html" / "_images").glob("*.png"))) == 1  # the same PNG once


WRONG = [  # (directive, the error it must give)
    (".. notebook-figure:: ../nb.ipynb\n   :cell: nope\n\n   Chú thích.\n", "no cell with id 'nope' in nb.ipynb"),
    (".. notebook-figure:: ../nb.ipynb\n   :cell: text\n\n   Chú thích.\n", "cell 'text' of nb.ipynb has no image/png output"),
    (".. notebook-figure:: ../nb.ipynb\n   :cell: two\n   :alt: x\n\n   Chú thích.\n", "has 2 images; choose one with :index:"),
    (".. notebook-figure:: ../nb.ipynb\n   :cell: two\n   :index: 0\n\n   Chú thích.\n", "no alt text for cell 'two'"),
    (".. notebook-figure:: ../missing.ipynb\n   :cell: plot\n\n   Chú thích.\n", "notebook not found"),
    (".. notebook-figure:: ../nb.ipynb\n   :cell: plot\n", "a caption (the directive's content) is required"),
    (".. notebook-output:: ../nb.ipynb\n   :cell: plot\n\n   Chú thích.\n", "cell 'plot' of nb.ipynb printed nothing"),
]


def test_a_wrong_reference_to_a_notebook_fails_the_build(tmp_path):
    done = build(make_project(tmp_path, "\n".join(directive for directive, _ in WRONG)))
    assert done.returncode != 0
    for _, message in WRONG:
        assert message in done.stderr, done.stderr


def test_vietnamese_labels_disambiguate_and_sort_without_braces():
    sys.path.insert(0, str(EXT))
    try:
        import vi_bibtex
    finally:
        sys.path.remove(str(EXT))
    from pybtex.database import parse_string

    bib = parse_string("""
@misc{b, author = {Han, Song and Pool, Jeff and Tran, John}, title = {Learning}, year = {2015}}
@misc{a, author = {Han, Song and Mao, Huizi and Dally, William}, title = {Deep}, year = {2015}}
@misc{d, author = {{DeepSeek-AI}}, title = {V3}, year = {2024}}
@misc{f, author = {Frantar, Elias and Alistarh, Dan}, title = {Sparse}, year = {2023}}
@misc{g, author = {Grattafiori, Aaron and others}, title = {Llama}, year = {2024}}
""", "bibtex")
    entries = vi_bibtex.AuthorYearTitleSortingPlain().sort(bib.entries.values())
    labels = list(vi_bibtex.AuthorYearLabels().format_labels(entries))
    assert labels == ["DeepSeek-AI, 2024", "Frantar và Alistarh, 2023", "Grattafiori và cộng sự, 2024",
                      "Han và cộng sự, 2015a", "Han và cộng sự, 2015b"]
    assert [e.key for e in entries][-2:] == ["a", "b"]


def test_every_chapter_opens_with_its_learning_objectives():
    chapters = sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))
    assert len(chapters) >= 6
    for path in chapters:
        text = path.read_text(encoding="utf-8")
        match = re.match(r"# [^\n]+\n\n```\{admonition\} Mục tiêu học tập\n:class: learning-objectives\n(.*?)\n```\n", text, re.S)
        assert match, f"{path.name}: the page must open with a 'Mục tiêu học tập' box (class learning-objectives)"
        items = [line for line in match.group(1).splitlines() if line.startswith("- ")]
        assert 3 <= len(items) <= 6, f"{path.name}: {len(items)} objectives (3 to 6 expected)"


def test_no_page_holds_a_control_character():
    """Pages and notebooks hold no control character. A backslash lost in an edit turns ``\\varepsilon`` into a
    vertical tab plus ``arepsilon``: MathJax then fails in the reader's browser, long after the build passed.
    Tabs, newlines and carriage returns are allowed."""
    pages = sorted((ROOT / "book").glob("*.md")) + [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    bad = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
    texts = {p.name: p.read_text(encoding="utf-8") for p in pages}
    for nb in sorted((ROOT / "solutions").glob("*.ipynb")):
        texts[nb.name] = "\n".join(cell.source for cell in nbformat.read(nb, as_version=4).cells)
    found = [f"{name}:{n}: {line.strip()[:60]!r}" for name, text in texts.items()
             for n, line in enumerate(text.split("\n"), 1) if bad.search(line)]
    assert not found, "control characters in the book's sources:\n" + "\n".join(found)
