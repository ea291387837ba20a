"""Misspelt names of n2nfunc's, which ``mypy --strict`` must call errors (the package's
``__getattr__``, which loads ``n2nfunc.distributed`` on first use, had made every name Any)."""

import n2nfunc as nf

layer = nf.conv2D(3, 3)
blocks = nf.Sequentail
