#!/usr/bin/env bash
# Run benchmarks/bench_gpu.py on the lent GPU machine (no network; torch and torchvision there).
#
# From the repo root on that machine, after benchmarks/gpu/make_wheels.sh ran here:
#
#   bash benchmarks/gpu/run_on_device.sh [bench_gpu.py arguments...]
#
# 1. a venv that sees the interpreter's packages (torch, torchvision): --system-site-packages,
#    plus a .pth file naming the interpreter's own site-packages, because the machine's
#    python3 is itself a venv (/opt/torch/.venv) whose packages --system-site-packages alone
#    would not show;
# 2. dask-batchapi (--no-deps) and the Dask stack installed offline from benchmarks/gpu/wheels;
# 3. the working tree's dask_batchapi is what runs (PYTHONPATH=repo root), so the code measured
#    is the code checked out, even if the wheel is older; USE_WHEEL=1 measures the wheel;
# 4. bench_gpu.py, its table, JSON and log written to $OUT (if set) or benchmarks/gpu/out/.
#
# Environment: PYTHON (default python3), VENV (default /tmp/batchapi-gpu-venv; an existing one
# is reused, as is done here to check the install path on CPU), OUT, USE_WHEEL.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WHEELS="$HERE/wheels"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-/tmp/batchapi-gpu-venv}"
RESULTS="${OUT:-$HERE/out}"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { echo "[run_on_device $(date +%H:%M:%S)] $*" >&2; }

[ -d "$WHEELS" ] || { say "no $WHEELS: run benchmarks/gpu/make_wheels.sh first (and carry it)"; exit 2; }
say "host: $(nproc) cores; $("$PYTHON" -V 2>&1) at $(command -v "$PYTHON")"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    # Debian/Ubuntu pythons without their -venv package have no ensurepip: then a venv without
    # pip, which the interpreter's own pip fills (pip --python)
    if [ "${VENV_WITHOUT_PIP:-0}" = 1 ] || ! "$PYTHON" -m venv --system-site-packages "$VENV" >&2; then
        rm -rf "$VENV"
        "$PYTHON" -m venv --without-pip --system-site-packages "$VENV"
    fi
    # the interpreter's own site-packages (where torch lives when python3 is itself a venv),
    # added after the venv's own (site.addsitedir also reads the .pth files found there)
    venv_site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$PYTHON" -c 'import site; print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in site.getsitepackages()))' \
        >"$venv_site/_interpreter_site.pth"
    cat "$venv_site/_interpreter_site.pth" >&2
fi
PY="$VENV/bin/python"
if "$PY" -m pip --version >/dev/null 2>&1; then
    PIP=("$PY" -m pip)
else
    PIP=("$PYTHON" -m pip --python "$PY")
fi
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available())' >&2

say "installing from $WHEELS (offline)"
"${PIP[@]}" install --quiet --no-index --find-links "$WHEELS" --no-deps --force-reinstall \
    "$WHEELS"/dask_batchapi-*.whl
"${PIP[@]}" install --quiet --no-index --find-links "$WHEELS" -r "$WHEELS/requirements.txt"
# expected from pip: dask-batchapi's dask-kubernetes, s3fs and ipywidgets are "not installed"
# (a local job never imports them)
"${PIP[@]}" check >&2 || say "pip check reported problems (above); going on"

if [ "${USE_WHEEL:-0}" != 1 ]; then
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
(cd / && "$PY" -c 'import dask_batchapi, dask; print("dask_batchapi from", dask_batchapi.__file__, "| dask", dask.__version__)') >&2

say "running bench_gpu.py $*"
set -o pipefail
"$PY" "$REPO/benchmarks/bench_gpu.py" --json "$RESULTS/gpu.json" --md "$RESULTS/gpu.md" "$@" \
    2>&1 | tee "$RESULTS/gpu-log.txt"
say "done: $RESULTS/gpu.md, gpu.json, gpu-log.txt"
