"""Console output that survives any console: a Windows console or pipe in cp1252/cp1258 cannot
encode every Vietnamese letter, and a ``print`` would then stop a command after all its work."""

import sys


def safe_console() -> None:
    """Let ``sys.stdout`` and ``sys.stderr`` replace what their encoding cannot show (``?``) instead
    of raising ``UnicodeEncodeError``. Called first by every command of the package."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # io.TextIOWrapper; notebook and test captures have no need
            stream.reconfigure(errors="replace")
