"""A job on an existing TLS-only Dask cluster, and clients without the certificates refused.

A CA and certificates are generated here (``cryptography``); a real ``dask scheduler``
(``--protocol tls``, ``require-encryption``) and two ``dask worker`` processes run on
127.0.0.1. The client side is the real CLI, configured the dask way: the
``DASK_DISTRIBUTED__COMM__TLS__*`` environment, which the detached driver inherits.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, write_json, write_project
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed import Client
from distributed.security import Security

import dask_batchapi as batchapi

pytestmark = pytest.mark.timeout(90)

WHERE_HANDLER = """
    from distributed import get_worker

    class Handler:
        def handle_batch(self, payload):
            return {"items": payload, "worker": get_worker().address}
"""


# -- certificates -------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _usage(**on: bool) -> x509.KeyUsage:
    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
    return x509.KeyUsage(**{flag: on.get(flag, False) for flag in flags})


def _certificate(subject: str, issuer=None):
    """A CA (``issuer`` None) or a leaf signed by ``issuer`` = (key, cert); both for 1 day."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sign_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, _name(subject))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(
            _usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
    else:
        builder = (
            builder.add_extension(_usage(digital_signature=True, key_agreement=True), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()),
                critical=False,
            )
        )
    return key, builder.sign(sign_key, hashes.SHA256())


def _write(directory: Path, name: str, key, cert) -> tuple[str, str]:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


def make_pki(directory: Path) -> dict[str, str]:
    """Our CA with a cluster certificate and a client one; a foreign CA with its own client."""
    directory.mkdir()
    ca = _certificate("batchapi-test-ca")
    foreign = _certificate("someone-elses-ca")
    paths = {"ca": _write(directory, "ca", *ca)[1]}
    paths["cluster_key"], paths["cluster_cert"] = _write(
        directory, "cluster", *_certificate("dask-cluster", ca)
    )
    paths["client_key"], paths["client_cert"] = _write(
        directory, "client", *_certificate("batchapi-client", ca)
    )
    paths["foreign_key"], paths["foreign_cert"] = _write(
        directory, "foreign", *_certificate("intruder", foreign)
    )
    return paths


def client_tls_env(pki: dict) -> dict[str, str]:
    """dask's client TLS settings, the environment way."""
    return {
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": pki["ca"],
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": pki["client_cert"],
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": pki["client_key"],
    }


# -- the TLS cluster ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """``dask scheduler --protocol tls`` and two TLS workers; yields (address, pki)."""
    tmp = tmp_path_factory.mktemp("tls")
    pki = make_pki(tmp / "pki")
    tls_args = ["--tls-ca-file", pki["ca"], "--tls-cert", pki["cluster_cert"],
                "--tls-key", pki["cluster_key"]]  # fmt: skip
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
    scheduler_file = tmp / "scheduler.json"
    procs, logs = [], []

    def start(name: str, module: str, *args: str) -> None:
        log = tmp / f"{name}.log"
        logs.append(log)
        cmd = [sys.executable, "-m", f"distributed.cli.{module}", *args, *tls_args]
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))

    try:
        start("scheduler", "dask_scheduler", "--protocol", "tls", "--host", "127.0.0.1",
              "--port", "0", "--dashboard-address", "127.0.0.1:0",
              "--scheduler-file", str(scheduler_file))  # fmt: skip
        _wait_for(lambda: scheduler_file.exists(), procs, logs, "scheduler file")
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        for n in (1, 2):
            start(f"worker{n}", "dask_worker", "--scheduler-file", str(scheduler_file),
                  "--protocol", "tls", "--host", "127.0.0.1", "--nthreads", "1",
                  "--no-dashboard", "--local-directory", str(tmp / f"w{n}"))  # fmt: skip
        with Client(address, security=_security(pki), timeout="20s") as client:
            _wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, procs, logs, "workers")
        yield address, pki
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


def _security(pki: dict, who: str = "client") -> Security:
    return Security(
        tls_ca_file=pki["ca"],
        tls_client_cert=pki[f"{who}_cert"],
        tls_client_key=pki[f"{who}_key"],
        require_encryption=True,
    )


def _wait_for(ready, procs, logs, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        tails = "\n".join(log.read_text(errors="replace")[-1500:] for log in logs)
        assert all(p.poll() is None for p in procs), f"a dask process exited:\n{tails}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{tails}"
        time.sleep(0.1)


# -- tests --------------------------------------------------------------------------------------
def test_job_runs_on_a_tls_cluster_through_the_cli(tls_cluster, tmp_path, store_dir):
    address, pki = tls_cluster
    batchapi.client(store=str(store_dir)).deploy(
        write_project(tmp_path / "proj", WHERE_HANDLER, name="where")
    )
    out = tmp_path / "out"
    submission = write_json(
        tmp_path / "submission.json",
        {"workers": 2, "item_list": {"items": list(range(8)), "batch_size": 2}, "output": str(out)},
    )
    started = time.monotonic()
    result = run_cli("submit", "where", str(submission), "--cluster", address, "--wait",
                     "-o", "json", env=client_tls_env(pki), timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads(result.stdout)["job_status"]
    print(f"TLS job of 4 batches: {time.monotonic() - started:.1f} s")
    assert status["status"] == "succeeded"
    assert status["batch_metrics"]["succeeded"] == 4
    values = [json.loads(p.read_text()) for p in sorted((out / status["job_id"]).iterdir())]
    assert sorted(x for v in values for x in v["items"]) == list(range(8))
    with Client(address, security=_security(pki), timeout="10s") as client:
        workers = set(client.scheduler_info()["workers"])
    assert {v["worker"] for v in values} <= workers  # the TLS workers ran every batch
    assert all(w.startswith("tls://") for w in workers)


def test_a_client_without_the_certificates_is_refused(tls_cluster):
    address, pki = tls_cluster
    # no TLS settings at all: distributed cannot even open a TLS comm
    with pytest.raises(Exception) as plain:  # noqa: B017 - TypeError today, any refusal counts
        Client(address, timeout="3s")
    print("plain client:", type(plain.value).__name__, plain.value)
    # a certificate from another CA: the TLS handshake fails
    with pytest.raises(OSError, match="(?i)certificate|unknown ca|TLS"):
        Client(address, security=_security(pki, "foreign"), timeout="3s")


def test_submit_without_the_certificates_fails_at_submit_in_one_line(
    tls_cluster, tmp_path, store_dir
):
    address, pki = tls_cluster
    batchapi.client(store=str(store_dir)).deploy(
        write_project(tmp_path / "proj", WHERE_HANDLER, name="where")
    )
    submission = write_json(
        tmp_path / "submission.json", {"item_list": {"items": [1], "batch_size": 1}}
    )
    no_tls = {k: "" for k in client_tls_env(pki)}  # in case the caller's environment has them
    result = run_cli("submit", "where", str(submission), "--cluster", address, env=no_tls)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "distributed.comm.tls.ca-file" in lines[0]
    assert result.stdout == ""  # no job id: nothing was submitted
    assert batchapi.client(store=str(store_dir)).list_jobs("where") == []

    # a certificate of someone else's CA: refused by the scheduler, also at submit
    foreign = {**client_tls_env(pki),
               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": pki["foreign_cert"],
               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": pki["foreign_key"]}  # fmt: skip
    result = run_cli("submit", "where", str(submission), "--cluster", address, env=foreign)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: cannot reach the scheduler at {address}"
    )
    assert batchapi.client(store=str(store_dir)).list_jobs("where") == []
