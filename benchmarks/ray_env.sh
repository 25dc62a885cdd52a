#!/usr/bin/env bash
# Create (or reuse) the Ray Data benchmark environment at benchmarks/.env-ray.
#
# Ray is only a benchmark baseline, never a dependency of dask-batchapi: it lives in its own
# virtual environment, separate from the project's .venv. Idempotent: a venv that already has
# the pinned ray[data] is left as it is.
#
#   bash benchmarks/ray_env.sh
#   benchmarks/.env-ray/bin/python benchmarks/bench_ray.py --quick
set -euo pipefail

RAY_VERSION="${RAY_VERSION:-2.60.0}"
PYTHON="${PYTHON:-python3.11}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.env-ray"

if [ -x "$VENV/bin/python" ] \
    && "$VENV/bin/python" -c "import ray, ray.data, sys; sys.exit(ray.__version__ != '$RAY_VERSION')" \
        2>/dev/null; then
    echo "ray_env: $VENV already has ray[data]==$RAY_VERSION" >&2
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "ray_env: creating $VENV with $PYTHON" >&2
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet "ray[data]==$RAY_VERSION" >&2
"$VENV/bin/python" -c "import ray, ray.data; print('ray_env: ray', ray.__version__, 'in $VENV')" >&2
