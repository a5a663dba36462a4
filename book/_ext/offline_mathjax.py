"""Serve MathJax from the built book itself, so formulas render without a network.

MathJax 3 comes from the PyPI package ``django-static-mathjax`` (the JavaScript files only; it
needs no Django). Its ``es5`` tree is copied to ``_static/mathjax`` and ``mathjax_path`` points
there. The speech-rule engine (``sre``, only used by the optional accessibility explorer) is left out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config

TARGET = "_static/mathjax"


def _source() -> Path:
    import mathjax  # the django-static-mathjax package

    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise FileNotFoundError(f"MathJax's tex-mml-chtml.js is missing under {es5}; reinstall django-static-mathjax")
    return es5


def _configure(app: Sphinx, config: Config) -> None:
    _source()
    config.mathjax_path = f"{TARGET.split('/', 1)[1]}/tex-mml-chtml.js"


def _copy(app: Sphinx, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        shutil.copytree(_source(), Path(app.outdir) / TARGET, ignore=shutil.ignore_patterns("sre"), dirs_exist_ok=True)


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("config-inited", _configure)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
