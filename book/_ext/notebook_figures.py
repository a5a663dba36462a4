"""Figures that a saved notebook drew, shown on a prose page, and alt text for notebook images.

A chapter page shows a plot from a solution notebook's saved outputs, found by the cell's
nbformat ``id``; the PNG is written into the build at build time, never copied by hand::

    ```{notebook-figure} ../solutions/03_lowrank.ipynb
    :cell: 53d8c944
    :name: fig-ch03-speed

    Caption in Vietnamese.
    ```

``{notebook-output}`` shows what a cell printed (its saved stream and plain-text outputs) as a
preformatted block under a caption, so that measured numbers on the page are the notebook's own.

Options of both: ``:cell:`` (required), ``:name:``, ``:class:``; of ``notebook-figure`` also
``:index:`` (which image of the cell, required when it has several), ``:alt:`` (default: the
entry in ``notebook_figures_alt``) and ``:width:``. With ``:class: notebook-figure-wide`` a
figure keeps its pixel width, scrolls inside its own box on a narrow screen and links to the
full image. A missing notebook, cell id, image, printed
text, caption or alt text is an error, so a build with ``-W`` fails.

The same alt texts (``book/notebook_alt.yml``: notebook path → cell id → text, or a list of
texts for a cell with several images) replace the file paths that myst-nb puts in the ``alt``
of every image on a notebook's own page; an image without an entry gets a sentence naming
its cell and section.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import nbformat
import yaml
from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

IMAGE_MIME = "image/png"
WIDE = "notebook-figure-wide"
_NOTEBOOKS: dict[Path, tuple[float, nbformat.NotebookNode]] = {}
_ALT: dict[Path, tuple[float, dict]] = {}


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path`` (cached until the file changes)."""
    mtime = path.stat().st_mtime
    cached = _NOTEBOOKS.get(path)
    if cached is None or cached[0] != mtime:
        cached = (mtime, nbformat.read(path, as_version=4))
        _NOTEBOOKS[path] = cached
    return cached[1]


def cell_images(cell: nbformat.NotebookNode) -> list[bytes]:
    """The PNG images among a code cell's saved outputs, in order."""
    return [base64.b64decode(out["data"][IMAGE_MIME]) for out in cell.get("outputs", [])
            if out.get("output_type") in ("display_data", "execute_result") and IMAGE_MIME in out.get("data", {})]


def png_width(data: bytes) -> int:
    """Width in pixels of a PNG (from its IHDR chunk)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    return int.from_bytes(data[16:20], "big")


def cell_text(cell: nbformat.NotebookNode) -> str:
    """What a code cell printed: its saved stream outputs and plain-text results, in order."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        elif out.get("output_type") == "execute_result" and "text/plain" in out.get("data", {}):
            parts.append(out["data"]["text/plain"] + "\n")
    return "".join(parts).rstrip("\n")


def alt_texts(app: Sphinx) -> dict:
    """``{notebook path relative to the source folder: {cell id: text or [texts]}}``."""
    path = Path(app.srcdir) / app.config.notebook_figures_alt
    if not path.is_file():
        return {}
    mtime = path.stat().st_mtime
    cached = _ALT.get(path)
    if cached is None or cached[0] != mtime:
        cached = (mtime, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        _ALT[path] = cached
    return cached[1]


def alt_for(app: Sphinx, notebook: str, cell_id: str, index: int) -> str | None:
    entry = alt_texts(app).get(notebook, {}).get(cell_id)
    if isinstance(entry, list):
        return entry[index] if index < len(entry) else None
    return entry if index == 0 else None


class _NotebookCell(SphinxDirective):
    """Shared part of the directives: the notebook argument and the ``:cell:`` option."""

    required_arguments = 1
    has_content = True

    def find_cell(self) -> tuple[str, nbformat.NotebookNode]:
        """``(notebook path relative to the source folder, the cell)``; an error names what is missing."""
        name = self.name
        rel, abspath = self.env.relfn2path(self.arguments[0], self.env.docname)
        path = Path(abspath)
        if not path.is_file():
            raise self.error(f"{name}: notebook not found: {self.arguments[0]} ({path})")
        cell_id = self.options.get("cell")
        if not cell_id:
            raise self.error(f"{name}: the :cell: option (the nbformat cell id) is required")
        self.env.note_dependency(str(path))
        cells = [c for c in read_notebook(path).cells if c.get("id") == cell_id]
        if not cells:
            raise self.error(f"{name}: no cell with id {cell_id!r} in {rel}")
        return rel, cells[0]

    def caption(self) -> tuple[nodes.paragraph, list[nodes.Node]]:
        """The content parsed: its first paragraph (the caption) and whatever follows it."""
        if not self.content:
            raise self.error(f"{self.name}: a caption (the directive's content) is required")
        body = nodes.Element()
        self.state.nested_parse(self.content, self.content_offset, body)
        if not body.children or not isinstance(body.children[0], nodes.paragraph):
            raise self.error(f"{self.name}: the caption must start with a paragraph")
        return body.children[0], body.children[1:]


class NotebookFigure(_NotebookCell):
    """A figure from a saved image output of a notebook cell."""

    option_spec = {
        "cell": directives.unchanged_required,
        "index": directives.nonnegative_int,
        "alt": directives.unchanged_required,
        "name": directives.unchanged,
        "class": directives.class_option,
        "width": directives.length_or_percentage_or_unitless,
    }

    def run(self) -> list[nodes.Node]:
        rel, cell = self.find_cell()
        cell_id = cell.get("id")
        images = cell_images(cell)
        if not images:
            raise self.error(f"{self.name}: cell {cell_id!r} of {rel} has no {IMAGE_MIME} output")
        if "index" not in self.options and len(images) > 1:
            raise self.error(f"{self.name}: cell {cell_id!r} of {rel} has {len(images)} images; choose one with :index:")
        index = self.options.get("index", 0)
        if index >= len(images):
            raise self.error(f"{self.name}: cell {cell_id!r} of {rel} has {len(images)} image(s), no :index: {index}")
        alt = self.options.get("alt") or alt_for(self.env.app, rel, cell_id, index)
        if not alt:
            raise self.error(f"{self.name}: no alt text for cell {cell_id!r} of {rel}: give :alt: or an entry in "
                             f"{self.config.notebook_figures_alt}")
        first, rest = self.caption()

        data = images[index]
        folder = Path(self.env.app.outdir).parent / "notebook_figures"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{hashlib.sha256(data).hexdigest()}.png"
        if not target.exists():
            target.write_bytes(data)
        # "/" + a path relative to the source folder (it may climb out of it, as myst-nb's outputs do)
        image = nodes.image(uri="/" + Path(os.path.relpath(target, self.env.srcdir)).as_posix(), alt=alt)
        if "width" in self.options:
            image["width"] = self.options["width"]
        elif WIDE in self.options.get("class", []):
            image["width"] = f"{png_width(data)}px"  # its own size, in a box that scrolls; links to the PNG
        classes = self.options.get("class", [])
        # the theme gives "full-width" content the page's margin and folds its contents list away meanwhile
        figure = nodes.figure("", image, classes=["notebook-figure", *classes, *(["full-width"] if WIDE in classes else [])])
        self.set_source_info(figure)
        figure += nodes.caption(first.rawsource, "", *first.children)
        if rest:
            figure += nodes.legend("", *rest)
        self.add_name(figure)
        return [figure]


class NotebookOutput(_NotebookCell):
    """What a notebook cell printed, as saved in the notebook, under a caption."""

    option_spec = {"cell": directives.unchanged_required, "name": directives.unchanged,
                   "class": directives.class_option}

    def run(self) -> list[nodes.Node]:
        rel, cell = self.find_cell()
        text = cell_text(cell)
        if not text.strip():
            raise self.error(f"{self.name}: cell {cell.get('id')!r} of {rel} printed nothing")
        first, rest = self.caption()
        box = nodes.container("", classes=["notebook-output", *self.options.get("class", [])])
        self.set_source_info(box)
        box += nodes.paragraph(first.rawsource, "", *first.children, classes=["notebook-output-caption"])
        box += rest
        box += nodes.literal_block(text, text, language="text")
        self.add_name(box)
        return [box]


def _notebook_alt(app: Sphinx, doctree: nodes.document) -> None:
    """Give every image of a notebook page the alt text of its cell (not the file path myst-nb puts there)."""
    source = Path(app.env.doc2path(app.env.docname))
    if source.suffix != ".ipynb":
        return
    rel = source.relative_to(Path(app.srcdir)).as_posix()
    nb = read_notebook(source)
    title = app.env.titles[app.env.docname].astext() if app.env.docname in app.env.titles else rel
    for container in doctree.findall(nodes.container):
        if container.get("nb_element") != "cell_code":
            continue
        index = container["cell_index"]
        cell_id = nb.cells[index].get("id", "")
        for k, image in enumerate(container.findall(nodes.image)):
            image["alt"] = alt_for(app, rel, cell_id, k) or (
                f"Hình do ô mã thứ {index + 1} của notebook «{title}» vẽ, mục «{_section(nb, index)}»")


def _section(nb: nbformat.NotebookNode, index: int) -> str:
    """The last Markdown heading before cell ``index``."""
    for cell in reversed(nb.cells[:index]):
        if cell.cell_type == "markdown":
            for line in reversed(cell.source.splitlines()):
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return "đầu notebook"


def setup(app: Sphinx) -> dict[str, object]:
    app.add_config_value("notebook_figures_alt", "book/notebook_alt.yml", "env")
    app.add_directive("notebook-figure", NotebookFigure)
    app.add_directive("notebook-output", NotebookOutput)
    app.connect("doctree-read", _notebook_alt)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
