"""Kubernetes, offline: every manifest against the real schemas, and the pods' commands run here.

No Kubernetes runs on these machines. What is checked instead:

* every object in ``k8s/`` and every object the code builds (the job's ``DaskCluster`` and
  ``DaskAutoscaler``, the driver ``Job``) validates against the CRDs shipped inside the
  installed dask-kubernetes (its Helm chart's resolved ``crds/``) with ``jsonschema`` — strict,
  like ``kubectl``'s field validation: unknown fields are errors — and core objects against
  ``kubernetes-validate``'s strict schemas;
* the templates in ``k8s/`` are exactly what the code builds;
* the containers' commands parse with the real CLIs, and the DaskJob example's scheduler,
  workers and driver script run as local processes against a real S3 server and finish the job;
* ``KubernetesBackend`` up to the API call: with a stand-in for ``KubeCluster`` that honours the
  spec, and with no credentials (a fast one-line error, no hang).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dask.config
import dask_kubernetes
import jsonschema
import kubernetes_validate.utils
import pytest
import referencing
import yaml
from conftest import ROOT, write_project
from dask_kubernetes.constants import VALID_CLUSTER_NAME
from distributed import LocalCluster

import dask_batchapi as batchapi
from dask_batchapi.cluster import kubernetes as k8s
from dask_batchapi.cluster.backends import missing_resources, parse_resources, task_resources
from dask_batchapi.errors import ClusterError
from dask_batchapi.spec.api_spec import load_api_specs

pytestmark = pytest.mark.timeout(90)

K8S = ROOT / "k8s"
CRDS = (
    Path(dask_kubernetes.__file__).parent / "operator/deployment/helm/dask-kubernetes-operator/crds"
)
KUBE_VERSION = kubernetes_validate.utils.latest_version()
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"  # noqa: E501
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
IMAGE = "registry.example.com/dask-batchapi:0.1.0"
HANDLER = "class Handler:\n    def handle_batch(self, payload):\n        return payload\n"
EXAMPLE_CONFIG = {
    "batchapi.kubernetes.image": IMAGE,
    "batchapi.kubernetes.secret": "dask-batchapi-s3",
}


# -- the validators -----------------------------------------------------------------------------
def _strict(schema: dict) -> dict:
    """A CRD's OpenAPI v3 schema as JSON Schema, with kubectl's strict field validation."""
    out: dict = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _strict(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_strict(sub) for sub in value]
        else:
            out[key] = value
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False  # the API server prunes it; kubectl says error
    return out


@functools.cache
def _registry() -> referencing.Registry:
    from importlib.resources import files

    path = files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{KUBE_VERSION}-local-strict/_definitions.json"
    )
    return referencing.Resource.from_contents(json.loads(path.read_text())) @ referencing.Registry()


@functools.cache
def crd_validators() -> dict[str, jsonschema.Draft202012Validator]:
    """kind -> validator, from the resolved CRDs inside the installed dask-kubernetes."""
    validators = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
        kind = crd["spec"]["names"]["kind"]
        schema = _strict(version["schema"]["openAPIV3Schema"])
        schema["properties"] = {
            **schema["properties"],
            "apiVersion": {"const": f"{crd['spec']['group']}/{version['name']}"},
            "kind": {"const": kind},
            "metadata": {"$ref": OBJECT_META},
        }
        schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
        validators[kind] = jsonschema.Draft202012Validator(schema, registry=_registry())
    return validators


def validate(obj: dict) -> None:
    """Raise unless ``obj`` would be accepted (CRD objects and core objects alike)."""
    name = obj.get("metadata", {}).get("name", "")
    assert DNS_SUBDOMAIN.match(name), f"invalid metadata.name {name!r}"
    if obj["apiVersion"].startswith("kubernetes.dask.org/"):
        if obj["kind"] in ("DaskCluster", "DaskJob"):  # the scheduler service gets -scheduler
            assert VALID_CLUSTER_NAME.match(name), f"too long for a Dask cluster: {name!r}"
        crd_validators()[obj["kind"]].validate(obj)
    else:
        kubernetes_validate.utils.validate(obj, KUBE_VERSION, strict=True)


def manifests() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


@pytest.fixture
def example_config():
    with dask.config.set(EXAMPLE_CONFIG):
        yield


# -- the validator itself ------------------------------------------------------------------------
def test_the_crds_are_the_resolved_ones_of_all_four_kinds():
    assert set(crd_validators()) == {"DaskCluster", "DaskJob", "DaskWorkerGroup", "DaskAutoscaler"}
    schema = crd_validators()["DaskCluster"].schema
    worker = schema["properties"]["spec"]["properties"]["worker"]["properties"]["spec"]
    assert "containers" in worker["properties"]  # a real PodSpec, not a template placeholder


def test_the_validators_reject_what_kubectl_would(example_config):
    good = k8s.cluster_spec("batchapi-x", 2, {"gpu": 1})
    validate(good)
    bad = copy.deepcopy(good)
    bad["spec"]["worker"]["spec"]["containers"][0]["resourcez"] = {}  # unknown field
    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        validate(bad)
    bad = copy.deepcopy(good)
    bad["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1
    with pytest.raises(jsonschema.ValidationError, match="not of type 'string'"):
        validate(bad)  # quantities in this CRD are strings
    bad = copy.deepcopy(good)
    bad["metadata"]["labelz"] = {}
    with pytest.raises(jsonschema.ValidationError, match="labelz"):
        validate(bad)
    bad = copy.deepcopy(good)
    del bad["spec"]["scheduler"]
    with pytest.raises(jsonschema.ValidationError, match="scheduler"):
        validate(bad)
    job = k8s.driver_job("s3://b/p", "api", "0123456789abcdef")
    job["spec"]["template"]["spec"]["containers"][0]["commandz"] = []
    with pytest.raises(jsonschema.ValidationError, match="commandz"):
        validate(job)


# -- k8s/ ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, obj", manifests(), ids=[m[0] for m in manifests()])
def test_every_manifest_in_k8s_is_valid(name, obj):
    validate(obj)


def test_k8s_holds_what_the_issue_asks_for():
    kinds = {(name.split(":")[0], obj["kind"]) for name, obj in manifests()}
    assert {("rbac.yaml", k) for k in ("ServiceAccount", "Role", "RoleBinding")} <= kinds
    assert ("daskcluster.yaml", "DaskCluster") in kinds
    assert ("daskjob.yaml", "DaskJob") in kinds
    assert (K8S / "Dockerfile").exists() and (K8S / "README.md").exists()


def test_the_daskcluster_template_is_what_a_gpu_job_creates(example_config):
    (template,) = yaml.safe_load_all((K8S / "daskcluster.yaml").read_text())
    job = {"api_name": "my-gpu-api", "job_id": "0123456789abcdef"}
    compute = {"cpu": 1.0, "gpu": 1, "mem": 4 * 2**30}
    assert template == k8s.cluster_spec(template["metadata"]["name"], 2, compute, job)


def test_the_daskjob_example_runs_the_word_count_cluster_the_code_builds(example_config):
    daskjob = _daskjob()
    compute = load_api_specs(ROOT / "examples/word-count")[0].to_dict()["compute"]
    expected = k8s.cluster_spec(daskjob["metadata"]["name"], 2, compute)
    assert daskjob["spec"]["cluster"]["spec"] == expected["spec"]


def test_rbac_lets_the_driver_do_what_kubecluster_does():
    docs = {(o["kind"], o["metadata"]["name"]): o for _, o in manifests()}
    sa = dask.config.get("batchapi.kubernetes.driver.service-account")
    assert ("ServiceAccount", sa) in docs
    binding = docs[("RoleBinding", sa)]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa}]
    role = docs[("Role", binding["roleRef"]["name"])]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    dask_org = "kubernetes.dask.org"
    needed = {  # what KubeCluster (create, wait, adapt, close) and _autoscale call through kr8s
        *(
            (dask_org, "daskclusters", v)
            for v in ("get", "list", "watch", "create", "patch", "delete")
        ),
        *((dask_org, "daskworkergroups", v) for v in ("get", "list", "patch")),
        *((dask_org, "daskautoscalers", v) for v in ("get", "create", "patch", "delete")),
        *(("", r, v) for r in ("pods", "services") for v in ("get", "list", "watch")),
        ("", "pods/log", "get"),
    }
    assert needed <= granted, needed - granted
    assert not any("*" in item for item in granted), "no wildcards"


def test_the_dockerfile_copies_what_exists_and_installs_the_package():
    lines = [line.split() for line in (K8S / "Dockerfile").read_text().splitlines()]
    copies = [words[1:-1] for words in lines if words and words[0] == "COPY"]
    assert copies, "nothing copied"
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert any(words[:3] == ["RUN", "pip", "install"] and "." in words for words in lines)


# -- what the code builds -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "compute",
    [None, {"cpu": 0.5}, {"cpu": 1.0, "gpu": 2, "mem": 2**31}, {"gpu": 1, "inf": 0, "mem": None}],
)
def test_generated_cluster_specs_are_valid(compute, example_config):
    spec = k8s.cluster_spec("batchapi-0123456789abcdef-1a2b", 3, compute, {"job_id": "x"})
    validate(spec)
    worker = spec["spec"]["worker"]
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    assert worker["replicas"] == 3
    args = worker["spec"]["containers"][0]["args"]
    assert args[:4] == ["dask", "worker", "--nthreads", "1"]
    limits = worker["spec"]["containers"][0]["resources"].get("limits", {})
    gpu = (compute or {}).get("gpu", 0)
    if gpu:
        assert limits["nvidia.com/gpu"] == str(gpu)
        assert args[args.index("--resources") + 1] == f"GPU={gpu}"
    else:
        assert "nvidia.com/gpu" not in limits and "--resources" not in args
    assert "nvidia.com/gpu" not in json.dumps(scheduler)  # the scheduler never takes a GPU
    assert scheduler["args"] == ["dask", "scheduler", "--host", "0.0.0.0"]


def test_adaptive_cluster_and_config_extras_are_valid(example_config):
    extras = {
        "batchapi.kubernetes.adapt.minimum": 0,
        "batchapi.kubernetes.adapt.maximum": 10,
        "batchapi.kubernetes.image-pull-policy": "IfNotPresent",
        "batchapi.kubernetes.env": {"OMP_NUM_THREADS": 1},
        "batchapi.kubernetes.worker-resources": {"limits": {"cpu": 2}},
        "batchapi.kubernetes.scheduler-resources": {"requests": {"cpu": 1, "memory": "1Gi"}},
        "batchapi.kubernetes.pod-spec": {"imagePullSecrets": [{"name": "registry"}]},
        "batchapi.kubernetes.worker-pod-spec": {
            "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    }
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "batchapi-x-driver", "uid": "0-1-2"}
    with dask.config.set(extras):
        spec = k8s.cluster_spec("batchapi-x", 4, {"gpu": 1}, {"job_id": "x"}, owner=owner)
        scaler = k8s.autoscaler_spec(spec, 4, owner_uid="3-4-5")
    validate(spec)
    validate(scaler)
    assert spec["spec"]["worker"]["replicas"] == 0
    assert spec["metadata"]["ownerReferences"] == [owner]
    assert scaler["spec"] == {"cluster": "batchapi-x", "minimum": 0, "maximum": 4}  # <= workers
    assert scaler["metadata"]["ownerReferences"][0]["kind"] == "DaskCluster"
    worker = spec["spec"]["worker"]["spec"]
    assert worker["tolerations"] and worker["imagePullSecrets"]
    assert worker["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1", "cpu": "2"}
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in worker["containers"][0]["env"]


def test_the_driver_job_is_valid_and_runs_the_runner(example_config, monkeypatch):
    options = {"key": "AKIA-SECRET", "client_kwargs": {"endpoint_url": "http://s3:9000"}}
    with dask.config.set({"batchapi.storage-options": options}):
        job = k8s.driver_job("s3://bucket/store", "word-count", "0123456789abcdef")
    validate(job)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == "dask-batchapi-driver" and pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0
    assert container["envFrom"] == [{"secretRef": {"name": "dask-batchapi-s3"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env[k8s.POD_UID_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
    inherited = dask.config.deserialize(env["DASK_INTERNAL_INHERIT_CONFIG"]["value"])["batchapi"]
    assert inherited["kubernetes"]["image"] == IMAGE
    assert inherited["storage-options"] == {"client_kwargs": {"endpoint_url": "http://s3:9000"}}
    assert "AKIA-SECRET" not in json.dumps(job)  # credentials never travel in a manifest
    # a process with the pod's env sees the submitter's settings (dask reads the variable)
    values = {name: e["value"] for name, e in env.items() if "value" in e}
    code = "from dask_batchapi import config; print(config.get('kubernetes.image'))"
    seen = subprocess.run([sys.executable, "-c", code], env={**os.environ, **values},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert seen.stdout.strip() == IMAGE, seen.stderr[-2000:]
    # the command is the runner's own command line
    from dask_batchapi.driver import runner

    calls = []
    monkeypatch.setattr(runner, "run_job", lambda *a: calls.append(a) or runner.JobStatus.SUCCEEDED)
    monkeypatch.setattr(runner.signal, "signal", lambda *a: None)
    assert container["command"][:3] == ["python", "-m", "dask_batchapi.driver"]
    assert runner.main(container["command"][3:]) == 0
    store, api_name, job_id, cluster = calls[0]
    assert (store.url, api_name, job_id, cluster) == (
        "s3://bucket/store",
        "word-count",
        "0123456789abcdef",
        "kubernetes",
    )


def test_every_container_command_parses_with_the_real_clis(example_config):
    from distributed.cli.dask_scheduler import main as scheduler_cli
    from distributed.cli.dask_worker import main as worker_cli

    from dask_batchapi.api.cli import main as batchapi_cli

    specs = [k8s.cluster_spec("batchapi-x", 1, {"gpu": 1}), _daskjob()["spec"]["cluster"]]
    specs += [o for _, o in manifests() if o["kind"] == "DaskCluster"]
    for spec in specs:
        worker = spec["spec"]["worker"]["spec"]["containers"][0]["args"]
        scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]["args"]
        assert worker[:2] == ["dask", "worker"] and scheduler[:2] == ["dask", "scheduler"]
        worker_cli.make_context("dask worker", list(worker[2:]))
        scheduler_cli.make_context("dask scheduler", list(scheduler[2:]))
    submit = shlex.split(_driver_script(_daskjob()).splitlines()[-1])
    assert submit[:3] == ["exec", "dask-batchapi", "submit"]
    context = batchapi_cli.commands["submit"].make_context("submit", submit[3:])
    assert context.params["wait"] and context.params["cluster"] == "$DASK_SCHEDULER_ADDRESS"


def test_check_shared_wants_an_image_and_a_shared_store(example_config):
    k8s.check_shared("s3://bucket/store", ["s3://bucket/out"])
    with pytest.raises(ClusterError, match="needs the store where every pod can reach it"):
        k8s.check_shared("/home/me/.dask-batchapi/store")
    with pytest.raises(ClusterError, match="cannot read or write the local path"):
        k8s.check_shared("s3://bucket/store", ["./word-count-output"])
    for local in ("file:///tmp/store", "memory://store"):
        assert k8s.is_local(local)
    with dask.config.set({"batchapi.kubernetes.image": None}):
        with pytest.raises(ClusterError, match="batchapi.kubernetes.image"):
            k8s.check_shared("s3://bucket/store")


# -- KubernetesBackend up to the API call --------------------------------------------------------
class StandInKubeCluster(LocalCluster):
    """Does what the operator would with a DaskCluster spec, on this machine."""

    created: list[dict] = []

    def __init__(self, *, custom_cluster_spec, namespace, resource_timeout, shutdown_on_close,
                 quiet):  # fmt: skip
        spec = custom_cluster_spec
        self.created.append({"spec": spec, "namespace": namespace, "shutdown": shutdown_on_close})
        args = spec["spec"]["worker"]["spec"]["containers"][0]["args"]
        resources = args[args.index("--resources") + 1] if "--resources" in args else None
        super().__init__(
            name=spec["metadata"]["name"],
            n_workers=spec["spec"]["worker"]["replicas"],
            threads_per_worker=int(args[args.index("--nthreads") + 1]),
            resources=parse_resources(resources) or None,
            processes=False,
            dashboard_address=":0",
        )

    def close(self, timeout=None):
        self.created[-1]["closed_with_timeout"] = timeout
        return super().close()


def test_kubernetes_backend_with_a_stand_in_operator(example_config, monkeypatch):
    import dask_kubernetes.operator

    monkeypatch.setattr(dask_kubernetes.operator, "KubeCluster", StandInKubeCluster)
    monkeypatch.setenv(k8s.POD_NAME_ENV, "batchapi-0123456789abcdef-1a2b-xyz12")
    monkeypatch.setenv(k8s.POD_UID_ENV, "11111111-2222-3333-4444-555555555555")
    StandInKubeCluster.created.clear()
    job = {"api_name": "gpu-api", "job_id": "0123456789abcdef"}
    with dask.config.set({"batchapi.kubernetes.namespace": "batch"}):
        with k8s.KubernetesBackend(2, {"gpu": 1, "cpu": 1.0}, job) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert len(workers) == 2
            assert missing_resources(client, task_resources({"gpu": 1})) is None
    (created,) = StandInKubeCluster.created
    validate(created["spec"])
    assert created["namespace"] == "batch" and created["shutdown"] is True
    assert created["closed_with_timeout"] == 120
    assert created["spec"]["metadata"]["name"].startswith("batchapi-0123456789abcdef-")
    assert created["spec"]["metadata"]["labels"]["dask-batchapi/job-id"] == "0123456789abcdef"
    (owner,) = created["spec"]["metadata"]["ownerReferences"]
    assert owner["uid"] == "11111111-2222-3333-4444-555555555555"


def test_no_credentials_fail_fast_in_one_line(tmp_path):
    """The real KubeCluster and kr8s, with nowhere to go: a one-line error, no hang."""
    if Path("/var/run/secrets/kubernetes.io/serviceaccount").exists():
        pytest.skip("running inside a Kubernetes pod: this would reach a real API server")
    code = """
import dask.config
from dask_batchapi.cluster import kubernetes as k8s
from dask_batchapi.errors import ClusterError
with dask.config.set({"batchapi.kubernetes.image": "img"}):
    for start in (lambda: k8s.KubernetesBackend(1, {}).start(),
                  lambda: k8s.launch_driver("s3://b/p", "api", "0123456789abcdef")):
        try:
            start()
        except ClusterError as exc:
            print("ClusterError:", exc)
"""
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-kubeconfig")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60)  # fmt: skip
    print(f"{time.monotonic() - started:.1f} s", result.stdout, result.stderr[-2000:])
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stderr[-2000:]
    assert lines[0].startswith("ClusterError: cannot create the Dask cluster batchapi-")
    assert lines[1].startswith("ClusterError: cannot start the driver of job 0123456789abcdef")
    assert all("credentials" in line for line in lines)
    assert "Traceback" not in result.stderr  # nothing left for atexit hooks to trip over


# -- the DaskJob example, its pods as local processes --------------------------------------------
def _daskjob() -> dict:
    (daskjob,) = [o for _, o in manifests() if o["kind"] == "DaskJob"]
    return daskjob


def _driver_script(daskjob: dict) -> str:
    container = daskjob["spec"]["job"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c"]
    return container["args"][0].strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_daskjob_example_runs_as_local_processes(s3_bucket, tmp_path):  # noqa: F811
    """The operator's part done by hand: the DaskJob's scheduler and workers with their exact
    args and env, then its driver script, against a real S3 server; the job succeeds."""
    bin_dir = str(Path(sys.executable).parent)
    base = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    daskjob = _daskjob()
    (configmap,) = [o for _, o in manifests() if o["kind"] == "ConfigMap"]
    mine = lambda text: text.replace("my-bucket", s3_bucket)  # noqa: E731
    driver = daskjob["spec"]["job"]["spec"]["containers"][0]
    env = {e["name"]: mine(e["value"]) for e in driver["env"]}
    store = env["DASK_BATCHAPI_STORE"]
    batchapi.client(store=store).deploy(ROOT / "examples/word-count")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/submission.json").write_text(mine(configmap["data"]["submission.json"]))

    cluster = daskjob["spec"]["cluster"]["spec"]
    port, dashboard = _free_port(), _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = []

    def start(container: dict, extra: dict, args: list[str]) -> None:
        env = {**base, **{e["name"]: e["value"] for e in container.get("env", [])}, **extra}
        log = open(tmp_path / f"{len(procs)}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))

    try:
        scheduler = cluster["scheduler"]["spec"]["containers"][0]
        start(scheduler, {}, [*scheduler["args"], "--port", str(port),
                              "--dashboard-address", f"127.0.0.1:{dashboard}"])  # fmt: skip
        probe = scheduler["readinessProbe"]["httpGet"]["path"]
        _until(lambda: _http_ok(f"http://127.0.0.1:{dashboard}{probe}"), procs, "readiness")
        worker = cluster["worker"]["spec"]["containers"][0]
        for n in range(cluster["worker"]["replicas"]):
            args = [a.replace("$(DASK_WORKER_NAME)", f"w{n}") for a in worker["args"]]
            args[args.index("--dashboard-address") + 1] = "127.0.0.1:0"
            start(worker, {"DASK_SCHEDULER_ADDRESS": address, "DASK_WORKER_NAME": f"w{n}"}, args)
        script = _driver_script(daskjob).replace("/etc/batchapi/", f"{tmp_path}/etc/")
        started = time.monotonic()
        run = subprocess.run(["sh", "-c", script], env={**base, **env, "DASK_SCHEDULER_ADDRESS": address},
                             capture_output=True, text=True, timeout=75)  # fmt: skip
        print(f"driver script: {time.monotonic() - started:.1f} s")
        assert run.returncode == 0, run.stderr[-3000:] + _tails(tmp_path)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    (status,) = batchapi.client(store=store).list_jobs("word-count")
    assert status["status"] == "succeeded" and status["batch_metrics"]["succeeded"] == 4
    import fsspec

    parts = fsspec.filesystem("s3").ls(f"{s3_bucket}/word-count-output/{status['job_id']}")
    assert len(parts) == 4


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _until(ready, procs, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert all(p.poll() is None for p in procs), f"a process exited before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.2)


def _tails(tmp_path: Path) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                   for p in sorted(tmp_path.glob("*.log")))  # fmt: skip


def test_submit_to_kubernetes_with_a_local_store_fails_at_submit(tmp_path, store_dir):
    """`dask-batchapi submit --cluster kubernetes` with the default (local) store: one line,
    exit 1, no job written."""
    from conftest import run_cli, write_json

    client = batchapi.client(store=str(store_dir))
    client.deploy(write_project(tmp_path / "proj", HANDLER))
    submission = write_json(tmp_path / "s.json", {"item_list": {"items": [1], "batch_size": 1}})
    env = {"DASK_BATCHAPI__KUBERNETES__IMAGE": IMAGE}
    result = run_cli("submit", "test-api", str(submission), "--cluster", "kubernetes", env=env)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --cluster kubernetes needs the store where every pod")
    assert client.list_jobs("test-api") == []
