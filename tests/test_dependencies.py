"""handler.dependencies as Cortex installed them, on a real cluster, offline.

A project ships a tiny wheel (built here by hand: a zip with METADATA, WHEEL, RECORD and a
module) under ``wheels/`` with ``--find-links ./wheels`` in its ``requirements.txt``; the
workers install it with pip into the private cache, the handler imports it, the worker's own
environment never sees it, and the next job reuses the cache without installing.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import stat
import sys
import zipfile
from pathlib import Path

import dask.config
import pytest
from conftest import run_cli, write_project
from distributed import Client, LocalCluster

import dask_batchapi as batchapi
from dask_batchapi.errors import SpecError
from dask_batchapi.spec.api_spec import load_api_specs

HANDLER = """
    import tinypkg

    class Handler:
        def __init__(self, config):
            with open("from_shell.txt") as f:  # written by dependencies.sh, before __init__
                self.shell = f.read().strip()

        def handle_batch(self, payload):
            return {"version": tinypkg.VERSION, "file": tinypkg.__file__, "shell": self.shell}
    """

PLAIN_HANDLER = """
    class Handler:
        def handle_batch(self, payload):
            import tinypkg  # a lazy import, inside the batch
            return {"version": tinypkg.VERSION, "file": tinypkg.__file__}
    """


def build_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel of one module, ``name.VERSION == version``, built by hand."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def wheel_project(root: Path, name: str, pin: str, handler: str = HANDLER, shell: bool = True):
    files = {"requirements.txt": f"--find-links ./wheels\ntinypkg=={pin}\n"}
    if shell:
        files["dependencies.sh"] = (
            'echo "shell ran in $(pwd)"\necho "$(basename $(pwd))" > from_shell.txt\n'
        )
    project = write_project(root, handler, name=name, files=files)
    for version in ("1.0", "2.0"):
        build_wheel(project / "wheels", "tinypkg", version)
    return project


@pytest.fixture(scope="module")
def deps_cluster(tmp_path_factory):
    """One worker (so jobs run one after the other on the same process), its own cache."""
    cache = tmp_path_factory.mktemp("deps") / "cache"
    with dask.config.set({"batchapi.dependencies.cache-dir": str(cache)}):
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
            with Client(cluster) as client:
                yield client, cache


def _run(client, api, out: Path) -> tuple[dict, list[dict]]:
    job = api.submit(
        {"workers": 1, "item_list": {"items": [1, 2], "batch_size": 1}, "output": str(out)}
    )
    job.wait(timeout=120)
    parts = sorted((out / job.job_id).iterdir()) if (out / job.job_id).exists() else []
    return job.status, [json.loads(p.read_text()) for p in parts]


def _messages(client, api_name: str, job_id: str) -> list[str]:
    return [line.get("message", "") for line in client.logs(api_name, job_id)]


def _worker_sees_tinypkg(dask_worker=None) -> dict:
    return {
        "importable": importlib.util.find_spec("tinypkg") is not None,
        "imported": "tinypkg" in sys.modules,
        "on_path": [p for p in sys.path if "pip-" in p],
        "pythonpath": os.environ.get("PYTHONPATH"),
    }


def test_wheel_installed_for_the_job_only_and_cache_reused(deps_cluster, tmp_path):
    dask_client, cache = deps_cluster
    client = batchapi.client(store=str(tmp_path / "store"), cluster=dask_client)
    worker_env = dask_client.run(_worker_sees_tinypkg)
    api = client.deploy(wheel_project(tmp_path / "proj", "wheel-api", "1.0"))
    status, parts = _run(client, api, tmp_path / "out")
    job_id = status["job_status"]["job_id"]
    assert status["job_status"]["status"] == "succeeded", status["job_status"]["error"]
    assert {p["version"] for p in parts} == {"1.0"}
    assert all(p["file"].startswith(str(cache) + os.sep) for p in parts)  # from the cache
    assert {p["shell"] for p in parts} == {job_id}  # bash ran in the job's project dir
    messages = _messages(client, api.name, job_id)
    assert any("Successfully installed tinypkg-1.0" in m for m in messages)  # pip's output
    assert any(m.startswith("shell ran in ") for m in messages)  # the script's output
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    [folder] = [p for p in cache.iterdir() if p.is_dir()]
    marker = folder / ".complete"
    installed_at = (marker.read_text(), marker.stat().st_mtime_ns, folder.stat().st_mtime_ns)

    # the worker's own environment never saw the package, before or after the job
    assert dask_client.run(_worker_sees_tinypkg) == worker_env
    for seen in worker_env.values():
        assert (seen["importable"], seen["imported"], seen["on_path"]) == (False, False, [])
    assert importlib.util.find_spec("tinypkg") is None

    # a second job: same requirements, the cache is reused without installing
    status2, parts2 = _run(client, api, tmp_path / "out")
    assert status2["job_status"]["status"] == "succeeded"
    assert {p["version"] for p in parts2} == {"1.0"}
    messages2 = _messages(client, api.name, status2["job_status"]["job_id"])
    assert any("reusing the installed cache" in m for m in messages2)
    assert not any("Successfully installed" in m or "Processing" in m for m in messages2)
    assert (
        marker.read_text(),
        marker.stat().st_mtime_ns,
        folder.stat().st_mtime_ns,
    ) == installed_at


def test_conflicting_pins_run_one_after_the_other_on_one_worker(deps_cluster, tmp_path):
    dask_client, _ = deps_cluster
    client = batchapi.client(store=str(tmp_path / "store"), cluster=dask_client)
    apis = {
        pin: client.deploy(
            wheel_project(tmp_path / pin, f"pin-{pin[0]}", pin, PLAIN_HANDLER, shell=False)
        )
        for pin in ("1.0", "2.0")
    }
    seen = []
    for pin in ("1.0", "2.0", "1.0"):
        status, parts = _run(client, apis[pin], tmp_path / "out")
        assert status["job_status"]["status"] == "succeeded", status["job_status"]["error"]
        seen.append({p["version"] for p in parts})
    assert seen == [{"1.0"}, {"2.0"}, {"1.0"}]
    for after in dask_client.run(_worker_sees_tinypkg).values():
        assert not after["imported"] and not after["importable"]


def test_failing_requirement_ends_the_job_worker_error_with_pips_message(deps_cluster, tmp_path):
    dask_client, cache = deps_cluster
    client = batchapi.client(store=str(tmp_path / "store"), cluster=dask_client)
    project = write_project(
        tmp_path / "bad",
        PLAIN_HANDLER,
        name="bad-reqs",
        files={"requirements.txt": "--no-index\n--find-links ./wheels\nnopkg-xyz==9.9\n"},
    )
    (project / "wheels").mkdir()
    api = client.deploy(project)
    before = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    status, parts = _run(client, api, tmp_path / "out")
    job = status["job_status"]
    assert job["status"] == "worker_error" and parts == []
    assert job["error"]["reason"] == "dependencies"
    assert job["error"]["message"].startswith("pip install -r requirements.txt failed (exit 1): ")
    assert "No matching distribution found for nopkg-xyz==9.9" in job["error"]["message"]
    messages = _messages(client, api.name, job["job_id"])
    assert any(m.startswith("installing dependencies failed: ") for m in messages)
    assert any("Could not find a version that satisfies" in m for m in messages)  # pip's lines
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [  # nothing half-installed
        n for n in before if (cache / n).is_dir()
    ]


# -- deploy-time checks (no cluster) -----------------------------------------------------------


def _deps_project(tmp_path, files: dict, spec: str | None = None):
    return write_project(
        tmp_path / "p", "class Handler:\n    def handle_batch(self): pass\n", spec, files=files
    )


@pytest.mark.parametrize(
    "requirements, message",
    [
        ("numpy>=1.0\nfoo==\n", "requirements.txt:2: invalid requirement 'foo==': "),
        ("--frobnicate\n", "requirements.txt:1: unknown pip option '--frobnicate' "),
        ("-r more.txt\n", "requirements.txt:1: -r more.txt: no such file next to requirements.txt"),
    ],
)
def test_requirement_lines_must_parse_at_deploy(tmp_path, requirements, message):
    project = _deps_project(tmp_path, {"requirements.txt": requirements})
    with pytest.raises(SpecError) as info:
        load_api_specs(project)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_valid_requirement_files_pass(tmp_path):
    text = (
        "# comment\n--find-links ./wheels\n-i https://example.org/simple\nnumpy>=1.20 ; python_version > '3'\n"
        "requests[socks]==2.* \\\n  --hash=sha256:abc\n./wheels/x-1.0-py3-none-any.whl\n"
        "pkg @ https://example.org/pkg.whl\n-r more.txt\n"
    )
    project = _deps_project(tmp_path, {"requirements.txt": text, "more.txt": "scipy\n"})
    assert load_api_specs(project)[0].name == "test-api"


def test_conda_without_conda_is_a_deploy_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no conda, mamba or micromamba there
    project = _deps_project(tmp_path, {"conda-packages.txt": "conda-forge::rdkit\n"})
    with pytest.raises(SpecError) as info:
        load_api_specs(project)
    assert str(info.value) == (
        "batchapi.yaml: handler.dependencies.conda: conda-packages.txt needs conda or mamba,"
        " and neither is on PATH; install one on the workers, or list the packages in"
        " requirements.txt instead"
    )


def test_explicit_dependency_file_must_exist(tmp_path):
    spec = "name: x\nhandler:\n  path: handler.py\n  dependencies: {pip: requirements-gpu.txt}\n"
    project = _deps_project(tmp_path, {}, spec)
    with pytest.raises(SpecError) as info:
        load_api_specs(project)
    assert str(info.value) == (
        f"batchapi.yaml: handler.dependencies.pip 'requirements-gpu.txt' not found in {project.resolve()}"
    )


def test_deploy_needs_no_local_install_of_the_requirements(tmp_path, store_dir):
    """Cortex never imported the handler at deploy: `import torch` only on the workers."""
    handler = (
        "import torch_not_here_xyz\n\nclass Handler:\n"
        "    def __init__(self, config, metrics_client): pass\n"
        "    def handle_batch(self, payload, batch_id): pass\n"
    )
    project = write_project(
        tmp_path / "t", handler, files={"requirements.txt": "torch_not_here_xyz\n"}
    )
    result = run_cli("deploy", str(project))
    assert result.returncode == 0, result.stderr
    assert "its signatures were read from its source" in result.stderr
    (project / "handler.py").write_text(handler.replace("payload, batch_id", "data"))
    result = run_cli("deploy", str(project))  # read from the source, still checked
    assert result.returncode != 0
    assert (
        "Handler.handle_batch: unknown argument 'data' (allowed: payload, batch_id)"
        in result.stderr
    )
    (project / "handler.py").write_text(handler)
    (project / "requirements.txt").unlink()  # without dependency files: still an error
    result = run_cli("deploy", str(project))
    assert result.returncode != 0 and "No module named 'torch_not_here_xyz'" in result.stderr


def test_two_workers_of_one_host_install_once(tmp_path):
    """The lock: the workers of a host take turns, one installs and the other reuses."""
    cache = tmp_path / "cache"
    with dask.config.set({"batchapi.dependencies.cache-dir": str(cache)}):
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
            with Client(cluster) as dask_client:
                client = batchapi.client(store=str(tmp_path / "store"), cluster=dask_client)
                project = wheel_project(
                    tmp_path / "p", "two-workers", "2.0", PLAIN_HANDLER, shell=False
                )
                (project / "handler.py").write_text(
                    "import os, time\nimport tinypkg\n\nclass Handler:\n"
                    "    def handle_batch(self, payload):\n        time.sleep(0.1)\n"
                    "        return {'pid': os.getpid(), 'version': tinypkg.VERSION}\n"
                )
                api = client.deploy(project)
                out = tmp_path / "out"
                job = api.submit(
                    {
                        "workers": 2,
                        "item_list": {"items": list(range(12)), "batch_size": 1},
                        "output": str(out),
                    }
                )
                assert job.wait(timeout=120) == "succeeded"
                parts = [json.loads(p.read_text()) for p in (out / job.job_id).iterdir()]
                messages = _messages(client, api.name, job.job_id)
    assert len({p["pid"] for p in parts}) == 2 and {p["version"] for p in parts} == {"2.0"}
    assert sum("Successfully installed tinypkg-2.0" in m for m in messages) == 1
    assert sum("reusing the installed cache" in m for m in messages) == 1


def test_cli_deploys_a_spec_file_and_the_embedded_cluster_installs(tmp_path, store_dir):
    """The user's path: `deploy cortex_cpu.yaml`, `submit --wait`; the cache from dask config
    (an environment variable) reaches the detached runner's workers."""
    project = wheel_project(tmp_path / "proj", "cli-wheel", "2.0", PLAIN_HANDLER, shell=False)
    (project / "batchapi.yaml").rename(project / "cortex_cpu.yaml")
    cache, out = tmp_path / "cache", tmp_path / "out"
    env = {"DASK_BATCHAPI__DEPENDENCIES__CACHE_DIR": str(cache)}
    assert run_cli("deploy", str(project / "cortex_cpu.yaml"), env=env).returncode == 0
    submission = {"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "output": str(out)}
    (tmp_path / "job.json").write_text(json.dumps(submission))
    result = run_cli(
        "submit", "cli-wheel", str(tmp_path / "job.json"), "--wait", "-o", "json", env=env
    )
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["job_status"]["job_id"]
    [part] = [json.loads(p.read_text()) for p in (out / job_id).iterdir()]
    assert part["version"] == "2.0" and part["file"].startswith(str(cache) + os.sep)


FAKE_CONDA = """#!/bin/bash
# A stand-in for conda (none on this machine): `conda create --yes --quiet --prefix P --file F`
# makes a prefix with a Python package and a command, as conda would.
while [ $# -gt 0 ]; do
  case "$1" in --prefix) prefix="$2"; shift;; --file) file="$2"; shift;; esac; shift
done
site="$prefix/lib/python{version}/site-packages/condapkg"
mkdir -p "$site" "$prefix/bin"
echo "PACKAGES = $(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read().split()))' "$file")" > "$site/__init__.py"
printf '#!/bin/bash\\necho from-conda-bin\\n' > "$prefix/bin/condatool"
chmod +x "$prefix/bin/condatool"
echo "created $prefix"
"""

CONDA_HANDLER = """
    import subprocess
    import condapkg

    class Handler:
        def handle_batch(self, payload):
            tool = subprocess.run(["condatool"], capture_output=True, text=True).stdout.strip()
            return {"packages": condapkg.PACKAGES, "tool": tool}
    """


def test_conda_packages_install_into_a_prefix_on_the_handlers_paths(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    (bin_dir / "conda").write_text(FAKE_CONDA.replace("{version}", version))
    (bin_dir / "conda").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cache = tmp_path / "cache"
    project = write_project(
        tmp_path / "p",
        CONDA_HANDLER,
        name="conda-api",
        files={"conda-packages.txt": "conda-forge::rdkit\n"},
    )
    with dask.config.set({"batchapi.dependencies.cache-dir": str(cache)}):
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
            with Client(cluster) as dask_client:
                client = batchapi.client(store=str(tmp_path / "store"), cluster=dask_client)
                api = client.deploy(project)
                status, parts = _run(client, api, tmp_path / "out")
                after = dask_client.run(lambda: os.environ["PATH"])
    assert status["job_status"]["status"] == "succeeded", status["job_status"]["error"]
    assert parts[0] == {"packages": ["conda-forge::rdkit"], "tool": "from-conda-bin"}
    assert all(str(cache) not in path for path in after.values())  # PATH restored at teardown
    assert [p.name.split("-")[0] for p in cache.iterdir() if p.is_dir()] == ["conda"]
