#!/usr/bin/env bash
# Fill benchmarks/gpu/wheels/ with what the GPU machine needs to run benchmarks/bench_gpu.py.
#
# Run HERE (a machine that reaches PyPI). The GPU machine has no network but has torch and
# torchvision; it gets dask-batchapi and the Dask stack as wheels, installed offline by
# benchmarks/gpu/run_on_device.sh (`pip install --no-index --find-links wheels ...`).
#
#   bash benchmarks/gpu/make_wheels.sh            # cp310..cp313, manylinux x86_64
#   PYVERS="3.12" bash benchmarks/gpu/make_wheels.sh
#
# Only what `import dask_batchapi` and a job on a LocalCluster need travels: dask[distributed],
# pyyaml, click, pathspec, python-dotenv, python-json-logger, tqdm, psutil (and their own
# dependencies). The package's other runtime dependencies (dask-kubernetes and kubernetes,
# s3fs/aiobotocore/botocore, boto3, ipywidgets/ipython) are imported lazily by the package,
# are not used by a local job, and weigh ~60 MB per Python version: the package itself is
# therefore installed with --no-deps. torch, torchvision and nvidia-* are never downloaded.
# The wheel dir must stay well under the 64 MiB that a device call may carry; this prints
# its size and fails above LIMIT_MB (default 60).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DEST="${DEST:-$HERE/wheels}"
PYVERS="${PYVERS:-3.10 3.11 3.12 3.13}"
LIMIT_MB="${LIMIT_MB:-60}"
PYTHON="${PYTHON:-python3}"

# Same lower bounds as pyproject.toml's [project] dependencies.
REQS=(
    "dask[distributed]>=2024.1"
    "pyyaml>=6"
    "click>=8"
    "pathspec>=0.11"
    "python-dotenv>=1.0"
    "python-json-logger>=3.1"
    "tqdm>=4.60"
    "psutil"
)

rm -rf "$DEST"
mkdir -p "$DEST"
printf '%s\n' "${REQS[@]}" >"$DEST/requirements.txt"

# 1. the package itself, pure Python: py3-none-any. Built from a copy of its sources, so that
# the build leaves no build/ or *.egg-info behind in the repo.
echo "make_wheels: building dask-batchapi from $REPO" >&2
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/dask_batchapi" "$REPO/cortex_internal" "$SRC/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$DEST" "$SRC" >&2

# 2. its dependencies, binary wheels for each target Python (pure-Python ones are shared)
for v in $PYVERS; do
    abi="cp${v/./}"
    echo "make_wheels: dependencies for CPython $v ($abi, manylinux x86_64)" >&2
    "$PYTHON" -m pip download --quiet --disable-pip-version-check \
        --only-binary=:all: --implementation cp --python-version "$v" --abi "$abi" \
        --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
        --platform manylinux1_x86_64 --platform any \
        -d "$DEST" -r "$DEST/requirements.txt" >&2
done

# Nothing of torch's may have slipped in (it would also blow the size budget).
if ls "$DEST" | grep -Ei '^(torch|torchvision|nvidia_|triton)' >&2; then
    echo "make_wheels: torch/nvidia wheels must not be downloaded; see above" >&2
    exit 1
fi

size_mb=$(du -sm "$DEST" | cut -f1)
count=$(ls "$DEST"/*.whl | wc -l)
echo "make_wheels: $count wheels, ${size_mb} MB in $DEST" >&2
du -sh "$DEST"
if [ "$size_mb" -gt "$LIMIT_MB" ]; then
    echo "make_wheels: $DEST is over ${LIMIT_MB} MB: a device call carries at most 64 MiB" >&2
    exit 1
fi
