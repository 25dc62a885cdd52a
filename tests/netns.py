"""Multi-host test topologies from Linux network namespaces (root, ``ip`` from iproute2).

A :class:`Topology` is one *hub* namespace holding a Linux bridge ``br0``, plus one namespace
per host, each joined to the bridge by a veth pair: ``eth0`` inside the host (``lo`` up, one
address on the test subnet) and ``v-<host>`` on the bridge inside the hub. Nothing is created
in, or routed to, the machine's own network namespace: the hosts reach each other and nothing
else, while the filesystem stays shared. Namespace names carry the pid of the test session, so
parallel sessions never collide (each has its own bridge, so they may reuse the subnet).

>>> with Topology({"sched": "10.231.0.1", "w1": "10.231.0.11"}) as net:  # doctest: +SKIP
...     proc = net.popen("w1", ["python", "-c", "print('hello from w1')"])
...     net.cut("w1")  # w1's cable is pulled: silent loss, no error on either side
...     net.restore("w1")
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

PREFIX_LEN = 24
_sequence = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _session_name(label: str) -> str:
    return f"dbapi{os.getpid()}-{next(_sequence)}-{label}"


@functools.cache
def netns_available() -> tuple[bool, str]:
    """(True, "") when namespaces, a bridge and a veth pair can really be created here."""
    if shutil.which("ip") is None:
        return False, "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return False, "network namespaces need root (run the tests as root)"
    name = _session_name("probe")
    try:
        _ip("netns", "add", name)
        _ip("-n", name, "link", "add", "br0", "type", "bridge")
        _ip("-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot create a network namespace with a bridge and a veth pair: {exc}"
    finally:
        _ip("netns", "del", name, check=False)
    return True, ""


class Topology:
    """A hub namespace with a bridge and one namespace per host; see the module docstring.

    Parameters
    ----------
    hosts : dict
        ``{host: address}``, addresses on one /24 test subnet (e.g. ``10.231.0.11``).
    log_dir : path, optional
        Where :meth:`popen` writes each process's output (``<host>-<n>.log``).
    """

    def __init__(self, hosts: dict[str, str], log_dir: str | os.PathLike | None = None):
        self.addresses = dict(hosts)
        self.hub = _session_name("hub")
        self.names = {host: _session_name(host) for host in hosts}
        self.log_dir = Path(log_dir) if log_dir else None
        self.procs: list[subprocess.Popen] = []
        self._files: list = []
        self.logs: dict[str, list[Path]] = {host: [] for host in hosts}

    def __enter__(self) -> Topology:
        try:
            self.create()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # -- building -----------------------------------------------------------------------------
    def create(self) -> None:
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for host in self.addresses:
            self._attach(host)

    def _attach(self, host: str) -> None:
        ns, port = self.names[host], self._port(host)
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            "-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns
        )
        _ip("-n", self.hub, "link", "set", port, "master", "br0")
        _ip("-n", self.hub, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", f"{self.addresses[host]}/{PREFIX_LEN}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")

    def _port(self, host: str) -> str:
        index = list(self.addresses).index(host)
        return f"v{index}-{host}"[:15]  # interface names are at most 15 bytes

    # -- using --------------------------------------------------------------------------------
    def popen(self, host: str, cmd: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        """Start ``cmd`` inside ``host``'s namespace (``ip netns exec``); output to a log file."""
        if self.log_dir is not None and "stdout" not in kw:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"{host}-{len(self.logs[host])}.log"
            self.logs[host].append(log)
            self._files.append(log.open("wb"))
            kw.update(stdout=self._files[-1], stderr=subprocess.STDOUT)
        proc = subprocess.Popen(  # noqa: S603 - test helper, fixed command prefix
            ["ip", "netns", "exec", self.names[host], *cmd],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,
        )
        self.procs.append(proc)
        return proc

    def cut(self, host: str) -> None:
        """Pull ``host``'s cable: its bridge port goes down, packets vanish silently."""
        _ip("-n", self.hub, "link", "set", self._port(host), "down")

    def restore(self, host: str) -> None:
        """Plug ``host``'s cable back in (and forget neighbours that failed meanwhile)."""
        _ip("-n", self.hub, "link", "set", self._port(host), "up")
        for ns in self.names.values():
            _ip("-n", ns, "neigh", "flush", "dev", "eth0", check=False)

    def inode(self, host: str) -> int:
        """The namespace's inode, as ``/proc/<pid>/ns/net`` of its processes shows it."""
        return os.stat(f"/var/run/netns/{self.names[host]}").st_ino

    def pids(self, host: str) -> list[int]:
        """Every process inside ``host``'s namespace (children and detached ones too)."""
        return self._ns_pids(self.names[host])

    def tail(self, lines: int = 30) -> str:
        """The last lines of every log, for a failing test's report."""
        parts = []
        for log in (p for logs in self.logs.values() for p in logs):
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- teardown -----------------------------------------------------------------------------
    def teardown(self, grace: float = 3.0) -> None:
        """Kill every process in the namespaces (SIGTERM, then SIGKILL), delete them all."""
        namespaces = [*self.names.values(), self.hub]
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(map(self._ns_pids, namespaces)):
            time.sleep(0.1)
        for _ in range(3):
            if not self._signal_all(signal.SIGKILL):
                break
            time.sleep(0.2)
        for proc in self.procs:
            _reap(proc)
        for file in self._files:
            file.close()
        for ns in namespaces:
            _ip("netns", "del", ns, check=False)

    def _signal_all(self, sig: int) -> int:
        pids = [pid for ns in [*self.names.values(), self.hub] for pid in self._ns_pids(ns)]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        for proc in self.procs:  # `ip netns exec` itself, if it has not exec'd yet
            if proc.poll() is None:
                proc.send_signal(sig)
        return len(pids)

    @staticmethod
    def _ns_pids(ns: str) -> list[int]:
        if not Path(f"/var/run/netns/{ns}").exists():
            return []
        out = _ip("netns", "pids", ns, check=False).stdout
        return [int(pid) for pid in out.split()]


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
