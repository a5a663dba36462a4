"""What a child process's console output looks like to a test: the child writes in its own console
encoding (``PYTHONIOENCODING``, else the locale's, as on a cp1252 Windows console or pipe), and the
package's commands replace what that encoding cannot show."""

import locale
import os
import sys

CHILD_ENCODING = ((os.environ.get("PYTHONIOENCODING") or "").split(":")[0]
                  or ("utf-8" if sys.flags.utf8_mode else locale.getencoding()))


def as_shown(text: str) -> str:
    """``text`` as it reads after a round trip through the child's console encoding."""
    return text.encode(CHILD_ENCODING, errors="replace").decode(CHILD_ENCODING)
