"""``python -m dask_batchapi.driver ...``: the detached driver process (see :mod:`.runner`).

An entry module of its own, so that :mod:`dask_batchapi.driver.runner` is imported once (as
itself), never a second time as ``__main__``.
"""

import sys

from dask_batchapi.driver.runner import main

if __name__ == "__main__":
    sys.exit(main())
