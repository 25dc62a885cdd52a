"""``--cluster kubernetes``: the job's driver and its Dask cluster run in Kubernetes.

Two objects, both built here as plain manifests (so the tests validate exactly what is sent):

* the **driver**: a ``batch/v1`` Job (:func:`driver_job`) that ``submit`` creates
  (:func:`launch_driver`); its pod runs ``python -m dask_batchapi.driver --cluster kubernetes``,
  so the job lives on when the submitter goes away. The store must be shared (S3):
  :func:`check_shared` says so at submit.
* the **cluster**: inside that pod, :class:`KubernetesBackend` creates a ``KubeCluster`` of the
  dask-kubernetes operator from :func:`cluster_spec` — the operator's own ``make_cluster_spec``
  plus what a job needs: ``workers`` workers of one thread, pod resources from ``compute``
  (``nvidia.com/gpu`` included), the ``GPU`` Dask resource on GPU workers, no GPU on the
  scheduler, and an owner reference to the driver pod, so Kubernetes deletes the cluster if
  the driver pod goes without closing it. Adaptive workers are a ``DaskAutoscaler``
  (:func:`autoscaler_spec`) owned by the cluster.

Everything is configured under ``batchapi.kubernetes.*`` (see ``batchapi.yaml``).
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any

import dask.config
from distributed import Client

from dask_batchapi import config
from dask_batchapi.cluster.backends import (
    ClusterBackend,
    driver_client,
    error_line,
    format_resources,
    task_resources,
)
from dask_batchapi.errors import ClusterError

logger = logging.getLogger(__name__)

API_VERSION = "kubernetes.dask.org/v1"
POD_NAME_ENV, POD_UID_ENV = "DASK_BATCHAPI_POD_NAME", "DASK_BATCHAPI_POD_UID"
# the embedded cluster's scheduler settings (see LocalBackend), for the job's own scheduler
SCHEDULER_ENV = {
    "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
    "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "inf",
}
# storage-options keys that hold credentials: never written into a manifest
_SECRET_KEYS = {"key", "secret", "token", "password", "aws_access_key_id",
                "aws_secret_access_key", "aws_session_token"}  # fmt: skip


def settings() -> dict:
    """``batchapi.kubernetes.*``; ClusterError when the image is not set."""
    s = dict(config.get("kubernetes") or {})
    if not s.get("image"):
        raise ClusterError(
            "--cluster kubernetes needs an image with dask-batchapi installed: build "
            "k8s/Dockerfile and set batchapi.kubernetes.image (env DASK_BATCHAPI__KUBERNETES__IMAGE)"
        )
    return s


def labels(job: dict | None, component: str) -> dict:
    job = job or {}
    found = {"dask-batchapi/api": job.get("api_name"), "dask-batchapi/job-id": job.get("job_id")}
    return {
        "app.kubernetes.io/name": "dask-batchapi",
        "app.kubernetes.io/component": component,
        **{k: v for k, v in found.items() if v},
    }


def unique_name(job: dict | None) -> str:
    """``batchapi-<job_id>-<4 hex>``: a resumed run never meets a leftover of an earlier one."""
    stem = (job or {}).get("job_id") or secrets.token_hex(4)
    return f"batchapi-{stem}-{secrets.token_hex(2)}"


# -- the cluster ----------------------------------------------------------------------------
def pod_resources(compute: dict | None, s: dict) -> dict:
    """``compute`` as pod resources: cpu -> requests.cpu, mem -> requests and limits.memory,
    gpu -> limits.<gpu-resource>; ``worker-resources`` from config merged over them."""
    compute = compute or {}
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if compute.get("cpu"):
        requests["cpu"] = f"{round(float(compute['cpu']) * 1000)}m"
    if compute.get("mem"):
        requests["memory"] = limits["memory"] = str(int(compute["mem"]))
    if int(compute.get("gpu") or 0) > 0:
        limits[s.get("gpu-resource") or "nvidia.com/gpu"] = str(int(compute["gpu"]))
    extra = quantities(s.get("worker-resources"))
    requests.update(extra.get("requests", {}))
    limits.update(extra.get("limits", {}))
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def quantities(resources: dict | None) -> dict:
    """``{requests: {cpu: 1}}`` -> ``{requests: {cpu: "1"}}``: the CRDs take strings only."""
    return {kind: {k: str(v) for k, v in (values or {}).items()}
            for kind, values in (resources or {}).items()}  # fmt: skip


def worker_command(compute: dict | None) -> list[str]:
    """One thread per worker (the handler's cwd lock), plus the job's Dask resources."""
    command = ["dask", "worker", "--nthreads", "1"]
    resources = task_resources(compute)
    return command + ["--resources", format_resources(resources)] if resources else command


def cluster_spec(
    name: str,
    workers: int,
    compute: dict | None = None,
    job: dict | None = None,
    owner: dict | None = None,
) -> dict:
    """The ``DaskCluster`` a job's ``KubeCluster`` creates (``custom_cluster_spec``)."""
    from dask_kubernetes.operator import make_cluster_spec

    s = settings()
    env = [{"name": k, "value": str(v)} for k, v in (s.get("env") or {}).items()]
    spec = make_cluster_spec(
        name=name,
        image=s["image"],
        n_workers=int(s["adapt"]["minimum"]) if adaptive(s) else workers,
        resources=pod_resources(compute, s),
        env=env,
        worker_command=worker_command(compute),
    )
    spec["metadata"]["labels"] = labels(job, "cluster")
    if owner:
        spec["metadata"]["ownerReferences"] = [owner]
    worker, scheduler = spec["spec"]["worker"]["spec"], spec["spec"]["scheduler"]["spec"]
    # recent distributed installs only `dask` (no `dask-scheduler`), the operator's default
    scheduler["containers"][0]["args"] = ["dask", "scheduler", "--host", "0.0.0.0"]
    scheduler["containers"][0]["env"] = env + [
        {"name": k, "value": v} for k, v in SCHEDULER_ENV.items()
    ]
    scheduler["containers"][0]["resources"] = quantities(s.get("scheduler-resources"))
    for pod, extra in ((worker, s.get("worker-pod-spec")), (scheduler, None)):
        _dress(pod, s, extra)
    return spec


def adaptive(s: dict) -> bool:
    return (s.get("adapt") or {}).get("minimum") is not None


def autoscaler_spec(cluster: dict, workers: int, owner_uid: str | None = None) -> dict:
    """The ``DaskAutoscaler`` of an adaptive job cluster, owned by the ``DaskCluster``."""
    s = settings()
    name = cluster["metadata"]["name"]
    maximum = min(workers, s["adapt"].get("maximum") or workers)  # a job uses <= workers
    metadata: dict[str, Any] = {"name": name, "labels": cluster["metadata"]["labels"]}
    if owner_uid:
        metadata["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": "DaskCluster", "name": name, "uid": owner_uid}
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskAutoscaler",
        "metadata": metadata,
        "spec": {"cluster": name, "minimum": int(s["adapt"]["minimum"]), "maximum": maximum},
    }


def _dress(pod: dict, s: dict, extra: dict | None) -> None:
    """Pull policy, the credentials Secret, and extra pod spec fields from config."""
    for container in pod["containers"]:
        if s.get("image-pull-policy"):
            container["imagePullPolicy"] = s["image-pull-policy"]
        if s.get("secret"):
            container["envFrom"] = [{"secretRef": {"name": s["secret"]}}]
    pod.update(s.get("pod-spec") or {})
    pod.update(extra or {})


def _owner_pod() -> dict | None:
    """The driver pod (downward API env of :func:`driver_job`) as an owner reference."""
    name, uid = os.environ.get(POD_NAME_ENV), os.environ.get(POD_UID_ENV)
    if not (name and uid):
        return None
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}


class KubernetesBackend(ClusterBackend):
    """A ``KubeCluster`` (dask-kubernetes operator) of the job's own, deleted at the end."""

    description = "a Dask cluster in Kubernetes"
    cluster: Any = None

    def _connect(self) -> Client:
        from dask_kubernetes.operator import KubeCluster

        s = settings()
        spec = cluster_spec(
            unique_name(self.job), self.workers, self.compute, self.job, _owner_pod()
        )
        name = spec["metadata"]["name"]
        try:
            self.cluster = KubeCluster(
                custom_cluster_spec=spec,
                namespace=s.get("namespace"),
                resource_timeout=s.get("resource-timeout"),
                shutdown_on_close=True,
                quiet=True,
            )
            if adaptive(s):
                self.cluster.sync(_autoscale, self.cluster, spec, self.workers)
        except Exception as exc:  # noqa: BLE001 - kr8s/httpx/operator errors: one line
            _forget(name)
            self.close()
            raise ClusterError(
                f"cannot create the Dask cluster {name} in Kubernetes: {error_line(exc)}"
            ) from None
        return driver_client(self.cluster)

    def close(self) -> None:
        super().close()
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=120)
            except Exception as exc:  # noqa: BLE001 - its owner reference still collects it
                logger.warning("deleting DaskCluster %s failed: %s", self.cluster.name, exc)
            self.cluster = None


async def _autoscale(cluster: Any, spec: dict, workers: int) -> None:
    from dask_kubernetes.operator._objects import DaskAutoscaler, DaskCluster

    owner = await DaskCluster.get(cluster.name, namespace=cluster.namespace)
    scaler = autoscaler_spec(spec, workers, owner.metadata.uid)
    await (await DaskAutoscaler(scaler, namespace=cluster.namespace)).create()


def _forget(name: str) -> None:
    """A KubeCluster that failed to start: keep dask-kubernetes' atexit hook off it."""
    from dask_kubernetes.operator import KubeCluster

    for instance in list(KubeCluster._instances):
        if instance.name == name:
            KubeCluster._instances.discard(instance)


# -- the driver ------------------------------------------------------------------------------
def driver_job(store_url: str, api_name: str, job_id: str) -> dict:
    """The ``batch/v1`` Job whose pod drives the job (``runner --cluster kubernetes``)."""
    s = settings()
    driver = s.get("driver") or {}
    job = {"api_name": api_name, "job_id": job_id}
    metadata: dict[str, Any] = {"name": unique_name(job), "labels": labels(job, "driver")}
    if s.get("namespace"):
        metadata["namespace"] = s["namespace"]
    env = [
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": POD_UID_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "DASK_INTERNAL_INHERIT_CONFIG", "value": _inherited_config()},
        *({"name": k, "value": str(v)} for k, v in (s.get("env") or {}).items()),
    ]
    container = {
        "name": "driver",
        "image": s["image"],
        "command": [
            "python",
            "-m",
            "dask_batchapi.driver",
            "--store",
            store_url,
            "--cluster",
            "kubernetes",
            api_name,
            job_id,
        ],  # fmt: skip
        "env": env,
        "resources": quantities(driver.get("resources")),
    }
    pod = {
        "serviceAccountName": driver.get("service-account") or "dask-batchapi-driver",
        "restartPolicy": "Never",
        "containers": [container],
    }
    _dress(pod, s, None)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,  # a driver that died is resumed on purpose (`resume`), not blindly
            "ttlSecondsAfterFinished": int(driver.get("ttl-seconds-after-finished", 86400)),
            "template": {"metadata": {"labels": dict(metadata["labels"])}, "spec": pod},
        },
    }


def launch_driver(store_url: str, api_name: str, job_id: str) -> str:
    """Create the driver Job in Kubernetes; its name. ClusterError (one line) if refused."""
    manifest = driver_job(store_url, api_name, job_id)
    namespace = manifest["metadata"].get("namespace")
    try:
        from kr8s.objects import Job

        Job(manifest, api=_api(namespace), namespace=namespace).create()
    except Exception as exc:  # noqa: BLE001 - credentials, RBAC, network: one line
        raise ClusterError(
            f"cannot start the driver of job {job_id} in Kubernetes: {error_line(exc)}"
        ) from None
    return manifest["metadata"]["name"]


def check_submit(store_url: str, urls: list[str] | tuple[str, ...] = ()) -> None:
    """Everything ``submit --cluster kubernetes`` can check before it writes the job."""
    check_shared(store_url, urls)
    try:
        _api(settings().get("namespace"))
    except Exception as exc:  # noqa: BLE001 - no kubeconfig, bad context: one line
        raise ClusterError(f"cannot use Kubernetes: {error_line(exc)}") from None


def _api(namespace: str | None) -> Any:
    """kr8s' client for the kubeconfig (or the pod's service account): loads credentials."""
    import kr8s

    return kr8s.api(namespace=namespace) if namespace else kr8s.api()


def check_shared(store_url: str, urls: list[str] | tuple[str, ...] = ()) -> None:
    """Pods cannot see this machine's files: the store (and inputs, output) must be shared."""
    settings()
    for what, url in (("the store", store_url), *(("the job's data", u) for u in urls)):
        if is_local(url):
            raise ClusterError(
                f"--cluster kubernetes needs {what} where every pod can reach it (s3://bucket/"
                f"prefix), not {url!r}: set --store / DASK_BATCHAPI_STORE to an S3 URL"
                if what == "the store"
                else f"--cluster kubernetes cannot read or write the local path {url!r} from "
                "its pods: use an S3 URL"
            )


def is_local(url: str) -> bool:
    """A path of this machine (or of this process: ``memory://``)."""
    return "://" not in url or url.split("://", 1)[0] in ("file", "local", "memory")


def _inherited_config() -> str:
    """``batchapi.*`` for the driver pod, without the credentials in ``storage-options``."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in _SECRET_KEYS}
        return value

    settings = dict(dask.config.get("batchapi"))
    settings["storage-options"] = clean(settings.get("storage-options") or {})
    return dask.config.serialize({"batchapi": settings})
