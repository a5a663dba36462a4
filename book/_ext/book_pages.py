"""How the book's pages read: numbering per chapter, arXiv ids as links, each script once.

- Exercises, figures and tables are numbered within their chapter: on ``book/04_*.md`` they
  are "Bài tập 4.1", "Hình 4.2"; on any other page they count from 1 on that page. The chapter
  number is the two digits that start a chapter file's name (``book/NN_name.md``).
- ``arXiv:2412.19437`` in running text becomes a link to the arXiv abstract (never inside code,
  math, titles or an existing link).
- A script that a page would load twice with the same content is loaded once (sphinx-thebe's
  configuration script is registered twice, and its second copy throws
  "Identifier 'THEBE_JS_URL' has already been declared").
- The site's root ``index.html`` (the book starts at ``book/intro``) is a redirect page that
  names the book and its icon, so a browser opening the root never asks for ``/favicon.ico``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

CHAPTER_DOC = re.compile(r"^book/(\d{2})_")
ARXIV = re.compile(r"arXiv:(\d{4}\.\d{4,5})")
NO_LINKS_INSIDE = (nodes.literal, nodes.literal_block, nodes.reference, nodes.math, nodes.math_block,
                   nodes.raw, nodes.title, nodes.comment, nodes.target)


def chapter_number(docname: str) -> int | None:
    """``4`` for ``book/04_quantization``; None for a page that is not a chapter."""
    match = CHAPTER_DOC.match(docname)
    return int(match.group(1)) if match else None


def _number_per_chapter(app: Sphinx, env: BuildEnvironment) -> list[str]:
    """Replace Sphinx's book-wide figure numbers by numbers that restart on every page."""
    changed = []
    for docname, by_type in env.toc_fignumbers.items():
        prefix = chapter_number(docname)
        for figtype, numbers in by_type.items():
            ordered = sorted(numbers, key=lambda ident: numbers[ident])
            new = {ident: ((prefix, i) if prefix is not None else (i,)) for i, ident in enumerate(ordered, start=1)}
            if new != numbers:
                by_type[figtype] = new
                changed.append(docname)
    return sorted(set(changed))


def _link_arxiv_ids(app: Sphinx, doctree: nodes.document) -> None:
    for text in list(doctree.findall(nodes.Text)):
        parent = text.parent
        if parent is None or not ARXIV.search(text) or _inside(parent, NO_LINKS_INSIDE):
            continue
        pieces: list[nodes.Node] = []
        last = 0
        for match in ARXIV.finditer(text):
            pieces.append(nodes.Text(text[last:match.start()]))
            url = f"https://arxiv.org/abs/{match.group(1)}"
            pieces.append(nodes.reference(match.group(0), match.group(0), refuri=url, classes=["arxiv"]))
            last = match.end()
        pieces.append(nodes.Text(text[last:]))
        parent.replace(text, [p for p in pieces if not (isinstance(p, nodes.Text) and not p)])


def _inside(node: nodes.Node, kinds: tuple[type, ...]) -> bool:
    while node is not None:
        if isinstance(node, kinds):
            return True
        node = node.parent
    return False


def _scripts_once(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: object) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # an inline script is registered with the file name None or "": the same script either way
        key = (getattr(script, "filename", script) or None,
               tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def _root_redirect(app: Sphinx, exception: Exception | None) -> None:
    """Write ``index.html`` at the site's root: a redirect to the first page, with title and icon."""
    if exception is not None or app.builder.format != "html" or app.config.master_doc == "index":
        return
    target = f"{app.config.master_doc}.html"
    icon = Path(app.config.html_favicon or "").name
    icon_link = f'<link rel="icon" href="_static/{icon}">\n' if icon else ""
    title = html.escape(app.config.html_title or app.config.project)
    Path(app.outdir, "index.html").write_text(
        f'<!DOCTYPE html>\n<html lang="{app.config.language}">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n{icon_link}"
        f'<meta http-equiv="Refresh" content="0; url={target}">\n</head>\n'
        f'<body><p><a href="{target}">{title}</a></p></body>\n</html>\n', encoding="utf8")


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("env-get-updated", _number_per_chapter, priority=900)  # after Sphinx assigns book-wide numbers
    app.connect("doctree-read", _link_arxiv_ids)
    app.connect("html-page-context", _scripts_once, priority=900)
    app.connect("build-finished", _root_redirect, priority=400)  # before sphinx-external-toc's bare redirect
    return {"parallel_read_safe": True, "parallel_write_safe": True}
