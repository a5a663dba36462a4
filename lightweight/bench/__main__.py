"""``python -m lightweight.bench``: see :mod:`lightweight.bench.cli`."""

import sys

from .cli import main

sys.exit(main())
