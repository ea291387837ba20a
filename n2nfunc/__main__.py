"""``python -m n2nfunc ...``: the same command line as ``n2nfunc ...``."""

import sys

from .cli import entry

sys.exit(entry())
