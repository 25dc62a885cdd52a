"""Our ``cortex`` module next to the real Cortex CLI package, which is named ``cortex`` too.

dask-batchapi ships a top-level ``cortex`` package (``cortex.client()`` for handlers, see
``docs/cortex-client.md``). Cortex's own Python package (``pip install cortex``: the CLI and its
client) installs a top-level ``cortex`` as well. In one environment, whichever comes first on
``sys.path`` hides the other (and pip may even mix their files). That is said once per process
with a :class:`~dask_batchapi.errors.CortexPackageWarning` when a client is made.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import warnings
from pathlib import Path

from dask_batchapi.errors import CortexPackageWarning

logger = logging.getLogger(__name__)

OURS = Path(__file__).resolve().parents[2] / "cortex" / "__init__.py"
_checked: list[bool] = []  # once per process


def cortex_package_problem() -> str | None:
    """What is wrong with ``import cortex`` in this environment, in one line (None: nothing)."""
    try:
        dist = importlib.metadata.distribution("cortex")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    try:
        spec = importlib.util.find_spec("cortex")
    except (ImportError, ValueError):
        spec = None
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if origin is not None and origin != OURS:
        return (
            f"`import cortex` gives {origin}, not dask-batchapi's compatibility module: "
            "handlers that call cortex.client() will not reach dask-batchapi; uninstall the "
            "Cortex CLI package here (pip uninstall cortex) or keep it in another environment"
        )
    if dist is not None:
        where = dist.locate_file("")
        return (
            f"the Cortex CLI package cortex {dist.version} is installed in this environment "
            f"({where}); its `cortex` module and dask-batchapi's share the name, so one hides "
            "the other: keep the Cortex CLI in another environment (pip uninstall cortex here)"
        )
    return None


def warn_if_cortex_package(stacklevel: int = 3) -> None:
    """Warn once per process when the real Cortex package shares ``cortex`` with ours."""
    if _checked:
        return
    _checked.append(True)
    problem = cortex_package_problem()
    if problem is not None:
        warnings.warn(problem, CortexPackageWarning, stacklevel=stacklevel)
