"""``python -m n2nfunc.cli ...`` (as torchrun runs a data-parallel worker): the same command
line as ``n2nfunc ...``."""

import sys

from . import entry

sys.exit(entry())
