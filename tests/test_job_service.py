"""The job service over real HTTP: ``dask-batchapi serve`` in a subprocess on 127.0.0.1,
requests as the client, real jobs on the embedded cluster (drivers detached, as from the CLI)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

import pytest
import requests
from conftest import run_cli, write_json
from service_fixtures import *  # noqa: F401,F403 - the services and sleepy_api fixtures
from service_fixtures import items

TRACEBACK = "Traceback (most recent call last)"


# -- Cortex's routes ------------------------------------------------------------------------------
def test_submit_returns_cortex_job_object_and_status_has_endpoint(services, sleepy_api):
    service = services()
    response = service.post("/sleepy", json=items(3))
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["api_name"] == "sleepy" and job["kind"] == "BatchAPI"
    assert job["workers"] == 1 and job["config"] == {"sleep": 0.0} and job["timeout"] is None
    assert job["total_batch_count"] == 3 and job["start_time"] == job["created_time"]
    doc = service.wait_status("sleepy", job["job_id"], {"succeeded"})
    assert doc["endpoint"] == f"{service.url}/sleepy"
    assert doc["job_status"]["batch_metrics"]["succeeded"] == 3
    assert doc["api_spec"]["name"] == "sleepy"


def test_cortex_submit_py_pattern_works_unchanged(services, sleepy_api):
    """Cortex's examples: requests.post(endpoint, json=...), then poll GET endpoint?jobID=."""
    service = services()
    endpoint = f"{service.url}/sleepy"
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {service.token}"
    job_spec = session.post(endpoint, json=items(2)).json()
    while True:
        status = session.get(f"{endpoint}?jobID={job_spec['job_id']}").json()["job_status"]
        if status["status"] not in ("pending", "enqueuing", "running"):
            break
        time.sleep(0.2)
    assert status["status"] == "succeeded"


def test_list_jobs_newest_first(services, sleepy_api):
    service = services()
    first = service.post("/sleepy", json=items(1)).json()["job_id"]
    second = service.post("/sleepy", json=items(1)).json()["job_id"]
    listed = service.get("/sleepy").json()
    assert [j["job_id"] for j in listed[:2]] == [second, first]
    assert [j["job_id"] for j in service.get("/sleepy", params={"limit": 1}).json()] == [second]
    for job_id in (first, second):
        service.wait_status("sleepy", job_id, {"succeeded"})


def test_dry_run_lists_matched_urls_then_validations_passed(services, sleepy_api, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.json", "b.json", "c.txt"):
        (data / name).write_text("[1]")
    service = services()
    sub = {
        "workers": 1,
        "file_path_lister": {"s3_paths": [str(data)], "includes": ["**.json"], "batch_size": 1},
    }
    response = service.post("/sleepy", params={"dryRun": "true"}, json=sub)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert lines[-1] == "validations passed" and len(lines) == 3
    assert all(line.endswith(".json") for line in lines[:-1])
    response = service.post("/sleepy", params={"dryRun": "true"}, json=items(2))
    assert response.text == "validations passed\n"
    assert service.get("/sleepy").json() == []  # nothing was submitted


# -- errors ---------------------------------------------------------------------------------------
def test_bad_submission_is_400_with_the_clis_message(services, sleepy_api, tmp_path):
    service = services()
    bad = {"workers": 1, "item_list": {"items": [1], "batch_size": 0}}
    response = service.post("/sleepy", json=bad)
    assert response.status_code == 400
    body = response.json()
    assert body["kind"] == "SubmissionError"
    cli = run_cli("submit", "sleepy", str(write_json(tmp_path / "bad.json", bad)))
    assert cli.stderr.strip() == f"error: {body['message']}"
    response = service.post("/sleepy", data=b'{"workers": 1,')
    assert response.status_code == 400
    assert response.json()["message"].startswith("request body: invalid JSON at line 1")
    assert service.post("/sleepy", params={"dryRun": "maybe"}, json=items(1)).status_code == 400
    assert service.get("/sleepy").json() == []


def test_unknown_api_and_job_are_404_and_wrong_method_405(services, sleepy_api):
    service = services()
    for response, kind in [
        (service.get("/nope"), "APINotFound"),
        (service.post("/nope", json=items(1)), "APINotFound"),
        (service.get("/sleepy", params={"jobID": "0123456789abcdef"}), "JobNotFound"),
        (service.delete("/sleepy", params={"jobID": "0123456789abcdef"}), "JobNotFound"),
        (service.get("/_/nothing/here"), "NotFound"),
    ]:
        assert response.status_code == 404, response.text
        assert response.json()["kind"] == kind
    for method in ("PUT", "PATCH"):
        response = requests.request(method, f"{service.url}/sleepy", headers=service.headers)
        assert response.status_code == 405
        assert response.json() == {
            "kind": "MethodNotAllowed",
            "message": f"{method} is not allowed on /sleepy",
        }
    assert service.delete("/sleepy").status_code == 400  # jobID is required
    assert service.post("/metrics").status_code == 405


def _raw_request(service, head: str, body_chunks) -> bytes:
    """Send a request by hand; what the server answered (it may answer before reading all)."""
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what we want to read
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_body_over_10_mib_is_413_before_it_is_read(services, sleepy_api):
    service = services()
    auth = f"Authorization: Bearer {service.token}\r\n"
    # declared: refused from the header, without waiting for a byte of the body
    head = f"POST /sleepy HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {11 << 20}\r\n\r\n"
    answer = _raw_request(service, head, [b"{"])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # chunked (no length): refused once 10 MiB have been read
    head = f"POST /sleepy HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"x" * (1 << 20)
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(12)] + [b"0\r\n\r\n"]
    answer = _raw_request(service, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    body = service.post("/sleepy", data=b" " * (10 << 20) + b"{}")
    assert body.status_code == 413 and body.json()["kind"] == "RequestTooLarge"
    assert service.get("/healthz").json() == {"status": "ok"}


def test_no_traceback_reaches_a_client(services, sleepy_api):
    service = services()
    responses = [
        service.post("/sleepy", data=b"\xff\xfe"),
        service.post("/sleepy", json=[1, 2]),
        service.get("/sleepy", params={"limit": "x"}),
        service.get("/sleepy", params={"jobID": "../../etc"}),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, response.text
        assert TRACEBACK not in response.text and set(response.json()) == {"kind", "message"}


def test_a_damaged_job_is_one_error_and_the_dashboard_and_metrics_go_on(
    services, sleepy_api, store_dir
):
    service = services()
    good = service.post("/sleepy", json=items(1)).json()["job_id"]
    service.wait_status("sleepy", good, {"succeeded"})
    damaged = "0000000000000000"  # sorts first: listed as the newest job
    (store_dir / "jobs" / "sleepy" / damaged).mkdir()
    (store_dir / "jobs" / "sleepy" / damaged / "job.json").write_text("[1]")
    response = service.get("/sleepy", params={"jobID": damaged})
    assert response.status_code == 503 and response.json()["kind"] == "StoreError"
    assert TRACEBACK not in response.text
    rows = service.get("/_/overview").json()["apis"][0]["jobs"]
    assert [r["job_id"] for r in rows] == [good]
    assert 'batchapi_jobs{api="sleepy",status="succeeded"} 1.0' in service.get("/metrics").text
    listed = service.get("/sleepy").json()  # the API's full list marks the damaged one
    assert [(j["job_id"], j["status"]) for j in listed] == [
        (damaged, "unreadable"),
        (good, "succeeded"),
    ]
    assert "job.json" in listed[0]["error"]["message"]


# -- auth -----------------------------------------------------------------------------------------
def test_every_route_needs_the_token(services, sleepy_api):
    service = services()
    for path in (
        "/healthz",
        "/metrics",
        "/sleepy",
        "/_/overview",
        "/openapi.json",
        "/_/static/common.js",
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            response = requests.get(service.url + path, headers=headers, timeout=10)
            assert response.status_code == 401, (path, headers)
            assert response.json()["kind"] == "Unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert requests.post(service.url + "/sleepy", json=items(1), timeout=10).status_code == 401
    assert service.get("/sleepy").json() == []
    page = requests.get(service.url + "/", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 401 and "<form" in page.text  # a browser gets a login page


def test_dashboard_token_once_then_httponly_cookie(services, sleepy_api):
    service = services()
    session = requests.Session()
    wrong = session.get(f"{service.url}/?token=wrong", allow_redirects=False)
    assert wrong.status_code == 401 and not session.cookies
    login = session.get(
        f"{service.url}/_/job?api=sleepy&job=x&token={service.token}", allow_redirects=False
    )
    assert login.status_code == 303
    assert login.headers["location"] == "/_/job?api=sleepy&job=x"  # the token leaves the URL
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and service.token not in cookie
    assert session.get(f"{service.url}/_/overview").status_code == 200
    assert "Content-Security-Policy" in session.get(f"{service.url}/").headers
    job_id = service.post("/sleepy", json=items(30, sleep=0.5)).json()["job_id"]
    # changing something with the cookie alone needs the page's header (no cross-site forgery)
    forged = session.delete(f"{service.url}/sleepy", params={"jobID": job_id})
    assert forged.status_code == 403
    stopped = session.delete(
        f"{service.url}/sleepy", params={"jobID": job_id}, headers={"X-BatchAPI-Request": "1"}
    )
    assert stopped.json() == {"message": f"stopped job {job_id}"}
    service.wait_status("sleepy", job_id, {"stopped"})


def test_generated_token_is_private_and_printed_once(services, sleepy_api, tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    service = services(token=None, env={"XDG_RUNTIME_DIR": str(runtime)})
    printed = service.log.read_text()
    token = printed.split("?token=")[1].split()[0]
    files = list(runtime.glob("dask-batchapi-*/service/token-*"))
    assert len(files) == 1 and files[0].read_text().strip() == token
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    assert printed.count(token) == 1
    ok = requests.get(
        service.url + "/healthz", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert ok.status_code == 200


def test_token_file(services, sleepy_api, tmp_path):
    path = tmp_path / "token"
    path.write_text("from-a-file-123\n")
    path.chmod(0o600)
    service = services(token=None, args=("--token-file", str(path)))
    service.token = "from-a-file-123"
    assert service.get("/healthz").status_code == 200
    path.chmod(0o644)
    result = run_cli("serve", "--port", "0", "--token-file", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: --token-file '{path}' is open to other users (mode 644); run: chmod 600 {path}"
    ]


def test_non_loopback_host_needs_tls_or_insecure():
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "0", env={"DASK_BATCHAPI_TOKEN": "t"})
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "not a loopback address" in result.stderr and "--insecure" in result.stderr
    result = run_cli("serve", "--certfile", "/nonexistent.pem", env={"DASK_BATCHAPI_TOKEN": "t"})
    assert result.returncode == 1 and "--certfile and --keyfile go together" in result.stderr


def test_tls(services, sleepy_api, tmp_path):
    from test_tls import make_pki

    pki = make_pki(tmp_path / "pki")
    service = services(args=("--certfile", pki["cluster_cert"], "--keyfile", pki["cluster_key"]))
    assert service.url.startswith("https://")
    assert service.get("/healthz", verify=pki["ca"]).json() == {"status": "ok"}
    with pytest.raises(requests.exceptions.SSLError):
        service.get("/healthz")  # not a CA the client trusts


# -- jobs across services -------------------------------------------------------------------------
def test_stop_a_job_over_http(services, sleepy_api):
    service = services()
    job_id = service.post("/sleepy", json=items(40, sleep=0.5)).json()["job_id"]
    service.wait_status("sleepy", job_id, {"running"})
    response = service.delete("/sleepy", params={"jobID": job_id})
    assert response.status_code == 200 and response.json() == {"message": f"stopped job {job_id}"}
    doc = service.wait_status("sleepy", job_id, {"stopped"}, timeout=60)
    assert doc["job_status"]["batch_metrics"]["succeeded"] < 40


def test_two_services_on_one_store_see_the_same_jobs(services, sleepy_api):
    one, two = services(), services()
    job_id = one.post("/sleepy", json=items(2)).json()["job_id"]
    assert [j["job_id"] for j in two.get("/sleepy").json()] == [job_id]
    doc = two.wait_status("sleepy", job_id, {"succeeded"})
    assert doc["endpoint"] == f"{two.url}/sleepy"
    for service in (one, two):
        rows = [
            a["jobs"] for a in service.get("/_/overview").json()["apis"] if a["name"] == "sleepy"
        ]
        assert [(r["job_id"], r["status"]) for r in rows[0]] == [(job_id, "succeeded")]
    # SIGTERM: uvicorn's graceful shutdown, in seconds; the other service goes on
    started = time.time()
    one.stop()
    assert time.time() - started < 10 and "Finished server process" in one.log.read_text()
    assert two.get("/sleepy", params={"jobID": job_id}).status_code == 200


def test_a_job_keeps_running_while_the_service_restarts(services, sleepy_api):
    first = services()
    job_id = first.post("/sleepy", json=items(8, sleep=0.5)).json()["job_id"]
    first.wait_status("sleepy", job_id, {"running"})
    first.process.kill()  # the harshest restart: nothing of the job may depend on the service
    first.process.wait()
    second = services()
    doc = second.get("/sleepy", params={"jobID": job_id}).json()
    assert doc["job_status"]["status"] == "running" and not doc["job_status"]["interrupted"]
    doc = second.wait_status("sleepy", job_id, {"succeeded"}, timeout=90)
    assert doc["job_status"]["batch_metrics"]["succeeded"] == 8


# -- metrics, health, schema ----------------------------------------------------------------------
def test_metrics_report_jobs_and_batches(services, sleepy_api):
    service = services()
    ok = service.post("/sleepy", json=items(4)).json()["job_id"]
    failed = service.post(
        "/sleepy", json={**items(2), "item_list": {"items": ["fail-a", "b"], "batch_size": 1}}
    ).json()
    service.wait_status("sleepy", ok, {"succeeded"})
    service.wait_status("sleepy", failed["job_id"], {"completed_with_failures"})
    text = service.get("/metrics").text
    assert 'batchapi_jobs{api="sleepy",status="succeeded"} 1.0' in text
    assert 'batchapi_jobs{api="sleepy",status="completed_with_failures"} 1.0' in text
    assert 'batchapi_batches_succeeded_total{api="sleepy"} 5.0' in text
    assert 'batchapi_batches_dead_lettered_total{api="sleepy"} 1.0' in text
    assert 'batchapi_batch_duration_seconds_bucket{api="sleepy",le="+Inf"}' in text
    assert 'batchapi_workers_held{api="sleepy"} 0.0' in text
    assert 'batchapi_batches_in_queue{api="sleepy"} 0.0' in text


def test_openapi_schema_is_valid_and_every_operation_answers_garbage_cleanly(services, sleepy_api):
    """A small schemathesis: each operation of the served schema, with hostile path and query
    values, answers without a server error, and every error is {"kind", "message"}."""
    validator = pytest.importorskip("openapi_spec_validator")
    service = services()
    schema = service.get("/openapi.json").json()
    validator.validate(schema)
    assert set(schema["paths"]["/{api_name}"]) == {"get", "post", "delete"}
    assert all(
        p.startswith(("/_/", "/{api_name}", "/metrics", "/healthz")) for p in schema["paths"]
    )
    hostile = ["x", "../..", "%2e%2e", "<script>", "0" * 300, "sleepy"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            for value in hostile:
                url = path.replace("{api_name}", value).replace("{job_id}", value)
                params = dict.fromkeys(names, value)
                response = requests.request(
                    method, service.url + url, params=params, headers=service.headers,
                    data=b"{}" if method == "post" else None, timeout=30,
                )  # fmt: skip
                assert response.status_code < 500, (method, url, params, response.text)
                if response.status_code >= 400:
                    assert set(response.json()) == {"kind", "message"}, response.text
                    assert TRACEBACK not in response.text


def test_api_names_of_service_routes_are_reserved(tmp_path, store_dir):
    from conftest import write_project

    project = write_project(
        tmp_path / "m", "class Handler:\n    def handle_batch(self): pass\n", name="metrics"
    )
    result = run_cli("deploy", str(project))
    assert result.returncode == 1
    assert "name 'metrics' is reserved for the job service's /metrics route" in result.stderr


def test_serve_help_lists_the_options():
    result = run_cli("serve", "--help")
    for option in (
        "--host",
        "--port",
        "--store",
        "--cluster",
        "--token-file",
        "--certfile",
        "--keyfile",
        "--insecure",
    ):
        assert option in result.stdout


# -- deployment -----------------------------------------------------------------------------------
def _serve_params(args: list[str]) -> dict:
    from dask_batchapi.api.cli import main

    assert args[:2] == ["dask-batchapi", "serve"]
    return main.commands["serve"].make_context("serve", list(args[2:])).params


def test_the_k8s_deployment_serves_with_tls_and_a_secret_token():
    from test_kubernetes import manifests

    objs = {obj["kind"]: obj for name, obj in manifests() if name.startswith("service.yaml:")}
    assert {"ServiceAccount", "RoleBinding", "Deployment", "Service"} <= set(objs)
    (container,) = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    params = _serve_params(container["args"])
    assert params["host"] == "0.0.0.0" and params["certfile"] and params["keyfile"]
    assert not params["insecure"]  # not loopback: TLS, as the service demands
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["DASK_BATCHAPI_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "dask-batchapi-service"
    )
    assert env["DASK_BATCHAPI_CLUSTER"]["value"] == "kubernetes"  # drivers outlive the pod


def test_the_systemd_unit_runs_serve_with_a_token_file():
    import shlex
    from pathlib import Path

    unit = (Path(__file__).parent.parent / "k8s" / "dask-batchapi-serve.service").read_text()
    lines = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    command = shlex.split(lines["ExecStart"])
    params = _serve_params(["dask-batchapi", *command[1:]])
    assert params["token_file"] and params["host"] == "127.0.0.1"
    assert lines["KillMode"] == "process"  # a restart leaves the detached job drivers alone


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_serve_plain_http(host):
    from dask_batchapi.api.service.server import Listener, check_listener

    check_listener(Listener(host, 0), insecure=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_other_hosts_need_tls_or_insecure(host, tmp_path):
    from dask_batchapi.api.service.server import Listener, check_listener
    from dask_batchapi.errors import ServiceError

    with pytest.raises(ServiceError, match="not a loopback address"):
        check_listener(Listener(host, 0), insecure=False)
    check_listener(Listener(host, 0), insecure=True)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    check_listener(Listener(host, 0, str(cert), str(key)), insecure=False)


def test_a_planted_token_directory_is_refused(tmp_path, store_dir):
    runtime, elsewhere = tmp_path / "runtime", tmp_path / "elsewhere"
    runtime.mkdir(mode=0o700)
    elsewhere.mkdir()
    (runtime / f"dask-batchapi-{os.getuid()}").symlink_to(elsewhere)
    env = {k: v for k, v in os.environ.items() if k != "DASK_BATCHAPI_TOKEN"}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    command = [sys.executable, "-m", "dask_batchapi", "serve", "--port", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {runtime}/dask-batchapi-{os.getuid()} is not a directory of this user; "
        "remove it and retry"
    ]
    assert not list(elsewhere.iterdir())
