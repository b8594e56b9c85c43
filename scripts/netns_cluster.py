#!/usr/bin/env python3
"""A real multi-host Ray cluster on one machine: each host a network namespace with its own address.

    sudo .venv/bin/python scripts/netns_cluster.py --hosts 3 [--cloud-mbit 200] [--fault KIND:HOST[:after=K][:for=S]]
                                                   [--summary S.json] -- encode SRC DST [encode options]

builds the hosts, starts Ray on each through ``scripts/ray-start-node.sh`` with token authentication (one
token, made for this run, mode 0600, given to every host by ``RAY_AUTH_TOKEN_PATH``), runs that
``montage-ray`` command on host ``h1`` (a worker, not the head), tears everything down and exits with the
command's exit code. ``--report`` in the encode options works as usual: each segment's node is named by
its host's address.

The hosts (root only: namespaces, veth pairs and ``tc`` need it):

- ``h0`` 198.18.0.1: the Ray head (GCS on 6379, the dashboard on its address), ``--head-cpus`` CPU slots.
- ``h1`` 198.18.0.2: a worker with CPU slots; the driver runs here.
- ``h2`` 198.18.0.3 (with ``--hosts`` >= 3): the "cloud" node, ``nvenc`` served by CPU stand-ins, started
  with ``MONTAGE_RAY_REMOTE=1``; its link is shaped with ``tc tbf`` to ``--cloud-mbit`` in both directions.
- ``h3``...: more workers with CPU slots.

Every host hangs on one bridge in the root namespace (198.18.0.0/24, the range reserved for benchmarks;
the root namespace gets no address on it), each host by a veth pair. Names carry a per-run tag
(``mr-<pid><letter>-hN`` for namespaces, ``mr<pid><letter>hN`` and ``...br`` for links) so that runs never
meet; a run that was killed outright leaves names whose pid is gone, and the next run removes them.
Everything started on a host lives in its namespace, so teardown ends exactly those processes
(``ip netns pids``), then deletes the namespaces and the bridge: on success, on error, on SIGINT, SIGTERM
and SIGHUP alike.

Faults during the job (``--fault``, repeatable; ``after=K``: once K segments are done, 0 = when encoding
starts; ``for=S`` seconds):

- ``partition:h2:after=1:for=30``  the host's link down (its processes alive, unreachable), then up again
- ``kill:h2:after=1``              every process of the host killed (SIGKILL)
- ``flap:h0:after=1:for=2``        the link down briefly, then up again (the head's, typically)

The summary (``--summary``, JSON) holds what the closing figures need: per-host bytes moved over each
link during the job, per-host segments (from the report), the link rate measured against the rate set,
each fault's times, the job's wall time and exit code. As a library (the tests use it)::

    with NetnsCluster(hosts=3, cloud_mbit=200) as cluster:
        run = cluster.run(["encode", src, dst, "--report", report])
        run.exit_code, run.wall, run.bytes_by_host
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
START_NODE = ROOT / "scripts" / "ray-start-node.sh"
BIN = Path(sys.executable).parent

SUBNET = "198.18.0"          # hosts are SUBNET.1, SUBNET.2, ...: a range reserved for benchmarks (RFC 2544)
GCS_PORT = 6379
DASHBOARD_PORT = 8265
OBJECT_STORE = 150 * 2**20   # per host: the object store holds a few segments at a time
#: The cloud host's stand-in label and sessions.
CLOUD_LABEL, CLOUD_SESSIONS = "nvenc", 2

#: Namespace and link names of a run: the tag is the creating process's pid and a letter.
NS_RE = re.compile(r"^mr-(\d+)([a-z])-h(\d+)$")
LINK_RE = re.compile(r"^mr(\d+)([a-z])(br|h\d+)$")

_runs_made = 0
_tag_lock = threading.Lock()


class NetnsError(RuntimeError):
    """Building or running the namespace cluster failed (one line, said before teardown)."""


# --- small helpers around `ip`, `tc` and processes -------------------------------------------------------

def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"tc {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def netns_names() -> list[str]:
    done = _ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def link_names() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def netns_pids(netns: str) -> list[int]:
    done = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_netns_processes(netns: str, timeout: float = 10.0) -> int:
    """SIGKILL every process in ``netns`` until none is left; how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in netns_pids(netns) if p != os.getpid()]
        if not pids:
            return len(killed)
        if time.monotonic() > deadline:
            raise NetnsError(f"processes {pids} in {netns} would not die")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.2)


def leftovers(tag: str | None = None) -> dict[str, list]:
    """Namespaces, links and processes of run ``tag`` (every run's when None) that still exist."""
    def ours(match: re.Match | None) -> bool:
        return bool(match) and (tag is None or f"{match.group(1)}{match.group(2)}" == tag)

    spaces = [n for n in netns_names() if ours(NS_RE.match(n))]
    links = [n for n in link_names() if ours(LINK_RE.match(n))]
    procs = sorted({p for n in spaces for p in netns_pids(n)})
    return {"namespaces": spaces, "links": links, "processes": procs}


def sweep_dead_runs() -> list[str]:
    """Remove the namespaces and links of earlier runs whose process is gone (a run killed outright)."""
    removed = []
    for name in netns_names():
        match = NS_RE.match(name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(NetnsError):
                kill_netns_processes(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for name in link_names():
        match = LINK_RE.match(name)
        if match and not _alive(int(match.group(1))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _new_tag() -> str:
    global _runs_made
    with _tag_lock:
        letter = "abcdefghijklmnopqrstuvwxyz"[_runs_made % 26]
        _runs_made += 1
    return f"{os.getpid()}{letter}"


def _rate_args(mbit: float) -> list[str]:
    """tbf settings for ``mbit``: a bucket of about 10 ms at that rate (at least 64 KiB, so that a GSO
    packet fits) and a queue of about half a second, as an uplink's buffer is (a short queue drops Ray's
    bursts of object chunks and the retransmission timeouts, not the rate, then set the pace)."""
    rate_bytes = mbit * 1e6 / 8
    burst = max(int(rate_bytes / 100), 64 * 1024)
    limit = max(int(rate_bytes / 2), 4 * burst)
    return ["rate", f"{mbit:g}mbit", "burst", str(burst), "limit", str(limit)]


# --- the hosts -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Host:
    """One test host: a namespace, its address, its veth (root end) and what its Ray node offers."""

    index: int
    netns: str
    address: str
    veth: str                      # the root namespace's end; the host's end is eth0 in its namespace
    role: str                      # "head", "worker" or "cloud"
    cpus: int
    standins: dict[str, int] = dataclasses.field(default_factory=dict)
    remote: bool = False
    mbit: float | None = None      # the rate its link is shaped to (None: unshaped)

    @property
    def name(self) -> str:
        return f"h{self.index}"


@dataclasses.dataclass
class Fault:
    """A fault to apply during a job: ``kind`` on ``host`` once ``after`` segments are done, for ``seconds``."""

    kind: str                      # "partition", "kill" or "flap"
    host: str                      # "h0", "h2", ...
    after: int = 1
    seconds: float = 0.0
    applied_at: float | None = None    # seconds after the job started
    healed_at: float | None = None

    KINDS = ("partition", "kill", "flap")

    @classmethod
    def parse(cls, text: str) -> "Fault":
        parts = text.split(":")
        if len(parts) < 2 or parts[0] not in cls.KINDS or not re.fullmatch(r"h\d+", parts[1]):
            raise ValueError(f"--fault {text!r}: expected KIND:HOST[:after=K][:for=S] with KIND one of "
                             f"{', '.join(cls.KINDS)} and HOST such as h2")
        fault = cls(parts[0], parts[1], seconds={"partition": 30.0, "flap": 2.0, "kill": 0.0}[parts[0]])
        for part in parts[2:]:
            key, _, value = part.partition("=")
            try:
                if key == "after":
                    fault.after = int(value)
                elif key == "for":
                    fault.seconds = float(value)
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(f"--fault {text!r}: {part!r} is not after=K or for=SECONDS") from None
        return fault


@dataclasses.dataclass
class JobRun:
    """What one command run on the cluster did."""

    argv: list[str]
    exit_code: int
    wall: float
    stdout: str
    stderr: str
    bytes_by_host: dict[str, dict[str, int]]     # host name -> {"to_host": n, "from_host": n} during the run
    faults: list[Fault]
    report: dict | None = None

    def segments_by_host(self, cluster: "NetnsCluster") -> dict[str, int]:
        """Segments each host encoded, from the report (host name -> count)."""
        counts: dict[str, int] = {}
        for seg in (self.report or {}).get("segments", []):
            host = cluster.host_of_node(seg.get("node", "")) or cluster.host_of_node(seg.get("actor", ""))
            counts[host or "?"] = counts.get(host or "?", 0) + 1
        return counts


class NetnsCluster:
    """Hosts in network namespaces on one bridge, a Ray node on each; a context manager that tears down.

    ``hosts``: how many (>= 2). ``cloud_mbit``: the cloud host's link rate (h2, with >= 3 hosts; None leaves
    it unshaped). ``node_timeout``: seconds after which the head declares an unreachable node dead.
    """

    def __init__(self, hosts: int = 3, *, cloud_mbit: float | None = 200.0, head_cpus: int = 1,
                 worker_cpus: int = 1, node_timeout: float = 10.0, log: Callable[[str], None] | None = None,
                 cloud_readrate: float = 8.0, cpu_readrate: float = 2.0) -> None:
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root")
        if hosts < 2:
            raise NetnsError("--hosts must be at least 2 (a head and the driver's worker)")
        if hosts > 200:
            raise NetnsError("--hosts must be at most 200")
        self.tag = _new_tag()
        self.node_timeout = node_timeout
        self.cloud_readrate, self.cpu_readrate = cloud_readrate, cpu_readrate
        self.log = log or (lambda line: print(f"netns_cluster: {line}", file=sys.stderr, flush=True))
        self.bridge = f"mr{self.tag}br"
        self.hosts: list[Host] = []
        for i in range(hosts):
            role = "head" if i == 0 else "cloud" if i == 2 else "worker"
            self.hosts.append(Host(
                index=i, netns=f"mr-{self.tag}-h{i}", address=f"{SUBNET}.{i + 1}", veth=f"mr{self.tag}h{i}",
                role=role, cpus=head_cpus if i == 0 else 0 if role == "cloud" else worker_cpus,
                standins={CLOUD_LABEL: CLOUD_SESSIONS} if role == "cloud" else {}, remote=role == "cloud",
                mbit=cloud_mbit if role == "cloud" else None))
        self.dir = Path(tempfile.mkdtemp(prefix=f"mr{self.tag}-"))  # short: Ray's socket paths have a limit
        self.token_file = self.dir / "token"
        self.config_file = self.dir / "encoders.yaml"
        self._torn_down = False
        self._lock = threading.Lock()

    # -- names ----------------------------------------------------------------------------------------
    @property
    def head(self) -> Host:
        return self.hosts[0]

    @property
    def driver_host(self) -> Host:
        return self.hosts[1]

    @property
    def cloud(self) -> Host | None:
        return next((h for h in self.hosts if h.role == "cloud"), None)

    @property
    def address(self) -> str:
        return f"{self.head.address}:{GCS_PORT}"

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise NetnsError(f"no host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")

    def host_of_node(self, text: str) -> str | None:
        """The host whose address ``text`` (a report's node or actor name) names."""
        for h in self.hosts:
            if re.search(rf"(^|[^0-9.]){re.escape(h.address)}([^0-9.]|$)", text or ""):
                return h.name
        return None

    # -- building ------------------------------------------------------------------------------------
    def __enter__(self) -> "NetnsCluster":
        try:
            self.build()
            self.start_ray()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.teardown()

    def build(self) -> None:
        """The bridge, one namespace per host with its veth pair and address, the token and the config."""
        removed = sweep_dead_runs()
        if removed:
            self.log(f"removed what killed runs left: {', '.join(removed)}")
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for h in self.hosts:
            _ip("netns", "add", h.netns)
            peer = f"{h.veth}p"
            _ip("link", "add", h.veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", h.netns)
            _ip("-n", h.netns, "link", "set", peer, "name", "eth0")
            _ip("-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "eth0")
            _ip("-n", h.netns, "link", "set", "eth0", "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")
            _ip("link", "set", h.veth, "master", self.bridge)
            _ip("link", "set", h.veth, "up")
            if h.mbit:
                self.shape(h, h.mbit)
        self.token_file.write_text(secrets.token_hex(32), encoding="utf-8")
        self.token_file.chmod(0o600)
        (self.dir / "home").mkdir()
        self.write_config(self.config_file)
        self.log(f"hosts {', '.join(f'{h.name}={h.address} ({h.role})' for h in self.hosts)} on {self.bridge}")

    def write_config(self, path: Path) -> None:
        """The encoders config of the stand-ins: nvenc (the cloud host) and the CPU slots, each throttled."""
        # expected_fps is a speed at 1080p that routing scales to the job's frame size; the stand-ins run at
        # readrate x realtime whatever the size, so this is their speed on 30 fps clips of 320x240 or less
        # (which routing counts as 1/20 of 1080p)
        labels: dict[str, dict] = {"cpu": {"preset": "ultrafast", "readrate": self.cpu_readrate,
                                           "expected_fps": self.cpu_readrate * 30 / 20}}
        if self.cloud:
            labels[CLOUD_LABEL] = {"backend": "cpu", "standin": True, "preset": "ultrafast",
                                   "readrate": self.cloud_readrate, "remote": True,
                                   "expected_fps": self.cloud_readrate * 30 / 20}
        path.write_text(json.dumps({"labels": labels}, indent=2), encoding="utf-8")  # JSON is YAML

    def shape(self, host: Host, mbit: float | None) -> None:
        """Shape ``host``'s link to ``mbit`` in both directions (tbf on both ends of its veth); None: unshaped."""
        for prefix in ([], ["-n", host.netns]):
            dev = host.veth if not prefix else "eth0"
            if mbit:
                _tc(*prefix, "qdisc", "replace", "dev", dev, "root", "tbf", *_rate_args(mbit))
            else:
                _tc(*prefix, "qdisc", "del", "dev", dev, "root", check=False)
        host.mbit = mbit

    def env(self, host: Host | None = None, **extra: str) -> dict[str, str]:
        """The environment of anything run on a host: this venv first on PATH, this run's token, Ray's files
        under the host's own temp dir, nothing Ray-related inherited."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RAY_") and k not in ("PYTHONPATH", "MONTAGE_RAY_REMOTE", "MONTAGE_RAY_BLOCK",
                                                          "MONTAGE_RAY_BANDWIDTH_MBPS", "MONTAGE_RAY_STANDINS")}
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(self.dir / "home"),
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file), RAY_USAGE_STATS_ENABLED="0")
        if host is not None:
            env["RAY_TMPDIR"] = str(self.temp_dir(host))
        env.update(extra)
        return env

    def temp_dir(self, host: Host) -> Path:
        path = self.dir / host.name
        path.mkdir(exist_ok=True)
        return path

    def start_ray(self) -> None:
        """Ray on every host through ray-start-node.sh: the head first, then the workers side by side."""
        self.start_node(self.head)
        threads, errors = [], []
        for h in self.hosts[1:]:
            def start(h: Host = h) -> None:
                try:
                    self.start_node(h)
                except Exception as err:  # noqa: BLE001 - said below, after every start ended
                    errors.append(err)
            threads.append(threading.Thread(target=start, daemon=True))
            threads[-1].start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        self.wait_for_nodes(len(self.hosts))

    def start_node(self, host: Host) -> None:
        """`ray start` on ``host`` through ray-start-node.sh, exactly as a real node starts (token auth on)."""
        ray_args = ["--node-ip-address", host.address, "--temp-dir", str(self.temp_dir(host)),
                    "--num-cpus", str(host.cpus), "--object-store-memory", str(OBJECT_STORE),
                    "--disable-usage-stats"]
        if host.role == "head":
            # the head declares a node dead after about node_timeout seconds without an answer
            period = 1000
            threshold = max(2, int(round(self.node_timeout * 1000 / period)))
            system = {"health_check_period_ms": period, "health_check_timeout_ms": period,
                      "health_check_failure_threshold": threshold}
            args = ["--head", "--dashboard-host", host.address, "--", "--port", str(GCS_PORT),
                    "--dashboard-port", str(DASHBOARD_PORT), "--system-config", json.dumps(system), *ray_args]
        else:
            args = ["--address", self.address, "--", *ray_args]
        extra = {"MONTAGE_RAY_BLOCK": "0"}
        if host.remote:
            extra["MONTAGE_RAY_REMOTE"] = "1"
        if host.standins:
            extra["MONTAGE_RAY_STANDINS"] = json.dumps(host.standins)
        log = self.dir / f"{host.name}.log"
        with open(log, "a", encoding="utf-8") as out:
            done = subprocess.run(["ip", "netns", "exec", host.netns, "bash", str(START_NODE), *args],
                                  env=self.env(host, **extra), cwd=self.dir, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=300)
        if done.returncode != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise NetnsError(f"Ray did not start on {host.name} ({host.address}): " + " | ".join(tail))

    def python_on(self, host: Host, code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a fixed Python program on ``host`` (``args`` become its sys.argv[1:])."""
        return subprocess.run(["ip", "netns", "exec", host.netns, sys.executable, "-c", code, *args],
                              env=self.env(host), cwd=self.dir, capture_output=True, text=True, timeout=timeout)

    def alive_nodes(self, host: Host | None = None, timeout: float = 60) -> list[str]:
        """Addresses of the alive Ray nodes, as a driver on ``host`` (default: the driver's) sees them."""
        done = self.python_on(host or self.driver_host, _ALIVE_NODES, self.address, timeout=timeout)
        if done.returncode != 0:
            raise NetnsError("cannot list the Ray nodes: " + (done.stderr.strip().splitlines() or ["?"])[-1])
        return json.loads(done.stdout.strip().splitlines()[-1])

    def wait_for_nodes(self, count: int, timeout: float = 120) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive_nodes()
            if len(alive) >= count:
                return alive
            if time.monotonic() > deadline:
                raise NetnsError(f"only {len(alive)} of {count} Ray nodes came up: {alive}")
            time.sleep(1)

    def restore(self, host: Host) -> None:
        """Bring ``host`` back after a fault: its link up, its processes ended, Ray started again on it."""
        _ip("link", "set", host.veth, "up")
        kill_netns_processes(host.netns)
        shutil.rmtree(self.temp_dir(host), ignore_errors=True)
        self.start_node(host)
        self.wait_for_nodes(len(self.hosts))

    # -- measuring ------------------------------------------------------------------------------------
    def link_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes through each host's link so far: to the host (the bridge end sends) and from it."""
        out = {}
        for h in self.hosts:
            stats = Path("/sys/class/net") / h.veth / "statistics"
            out[h.name] = {"to_host": int((stats / "tx_bytes").read_text()),
                           "from_host": int((stats / "rx_bytes").read_text())}
        return out

    def measure_tcp(self, src: Host, dst: Host, seconds: float = 3.0) -> float:
        """Mbit/s of one TCP stream from ``src`` to ``dst`` over ``seconds`` (what the link really carries)."""
        server = subprocess.Popen(["ip", "netns", "exec", dst.netns, sys.executable, "-c", _TCP_SINK,
                                   dst.address, "5201"], env=self.env(dst), stdout=subprocess.PIPE, text=True)
        try:
            ready = server.stdout.readline()  # type: ignore[union-attr]
            if ready.strip() != "ready":
                raise NetnsError(f"the TCP sink on {dst.name} did not start")
            done = self.python_on(src, _TCP_SOURCE, dst.address, "5201", str(seconds), timeout=seconds + 60)
            if done.returncode != 0:
                raise NetnsError("TCP measurement failed: " + done.stderr.strip()[-300:])
            return float(done.stdout.split()[-1])
        finally:
            server.kill()
            server.wait()

    # -- faults ---------------------------------------------------------------------------------------
    def link_down(self, host: Host) -> None:
        _ip("link", "set", host.veth, "down")

    def link_up(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    def apply(self, fault: Fault, started: float) -> None:
        """Apply ``fault`` now (and heal it after its seconds, for partition and flap)."""
        host = self.host(fault.host)
        fault.applied_at = time.monotonic() - started
        if fault.kind == "kill":
            n = kill_netns_processes(host.netns)
            self.log(f"fault: killed {n} processes on {host.name} at {fault.applied_at:.1f} s")
            return
        self.link_down(host)
        self.log(f"fault: {host.name}'s link down ({fault.kind}) at {fault.applied_at:.1f} s for {fault.seconds:g} s")
        time.sleep(fault.seconds)
        self.link_up(host)
        fault.healed_at = time.monotonic() - started
        self.log(f"fault: {host.name}'s link up again at {fault.healed_at:.1f} s")

    # -- running a command ----------------------------------------------------------------------------
    def run(self, argv: list[str], *, faults: Iterable[Fault] = (), timeout: float = 900,
            echo: bool = False) -> JobRun:
        """Run ``montage-ray ARGV`` on the driver's host against this cluster, applying ``faults`` as the job
        goes; ``encode`` gets ``--address`` and this cluster's encoders config unless ARGV names its own."""
        argv = list(argv)
        faults = list(faults)
        for f in faults:
            host = self.host(f.host)
            if host is self.driver_host and f.kind != "flap":
                raise NetnsError(f"--fault {f.kind}:{f.host}: the driver runs on {f.host}; pick another host")
        report_path = None
        if argv and argv[0] == "encode":
            if "--address" not in argv:
                argv += ["--address", self.address]
            if "--encoders-config" not in argv:
                argv += ["--encoders-config", str(self.config_file)]
            if "--report" in argv:
                report_path = Path(argv[argv.index("--report") + 1])
            else:
                report_path = self.dir / f"report-{time.monotonic_ns()}.json"
                argv += ["--report", str(report_path)]
        before = self.link_bytes()
        started = time.monotonic()
        proc = subprocess.Popen(["ip", "netns", "exec", self.driver_host.netns, str(BIN / "montage-ray"), *argv],
                                env=self.env(self.driver_host), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, bufsize=1)
        err_lines: list[str] = []
        reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        out_lines: list[str] = []
        pending = sorted(faults, key=lambda f: f.after)
        appliers: list[threading.Thread] = []
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        done_segments = -1

        def due(segments_done: int) -> None:
            while pending and pending[0].after <= segments_done:
                fault = pending.pop(0)
                appliers.append(threading.Thread(target=self.apply, args=(fault, started), daemon=True))
                appliers[-1].start()

        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                out_lines.append(line)
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                if line.startswith("encoding ") and done_segments < 0:
                    done_segments = 0
                elif re.match(r"segment \d+ done", line):   # "segment K done (n/N): ..."
                    done_segments = max(done_segments, 0) + 1
                if done_segments >= 0:
                    due(done_segments)
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.monotonic() - started
        reader.join(timeout=10)
        for t in appliers:
            t.join()  # a link left down would spoil the next run
        after = self.link_bytes()
        moved = {name: {k: after[name][k] - before[name][k] for k in after[name]} for name in after}
        report = None
        if report_path and report_path.exists():
            with contextlib.suppress(ValueError):
                report = json.loads(report_path.read_text(encoding="utf-8"))
        if echo:
            sys.stderr.write("".join(err_lines))
        return JobRun(argv, proc.returncode, wall, "".join(out_lines), "".join(err_lines), moved, faults, report)

    # -- teardown ---------------------------------------------------------------------------------------
    def teardown(self) -> None:
        """End every process in the hosts' namespaces, delete the namespaces and the bridge, remove the files."""
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        problems = []
        for h in self.hosts:
            if h.netns in netns_names():
                try:
                    kill_netns_processes(h.netns)
                except NetnsError as err:
                    problems.append(str(err))
                _ip("netns", "del", h.netns, check=False)
            if os.path.exists(f"/sys/class/net/{h.veth}"):
                _ip("link", "del", h.veth, check=False)
        if os.path.exists(f"/sys/class/net/{self.bridge}"):
            _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        left = leftovers(self.tag)
        if any(left.values()) or problems:
            self.log(f"teardown left {left} {' '.join(problems)}")


# Fixed programs run inside the namespaces (their inputs come as argv, never spliced into the code).
_ALIVE_NODES = """
import json, logging, sys, ray
ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
print(json.dumps(sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])))
"""

_TCP_SINK = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
while c.recv(1 << 20):
    pass
c.sendall(b"done")
c.close()
"""

_TCP_SOURCE = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
block = b"x" * (1 << 16)
sent, start, end = 0, time.monotonic(), time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    c.sendall(block)
    sent += len(block)
c.shutdown(socket.SHUT_WR)
c.recv(16)  # the sink has read everything
print(sent * 8 / (time.monotonic() - start) / 1e6)
"""


# --- the command line ----------------------------------------------------------------------------------

def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: teardown runs


def summary(cluster: NetnsCluster, run: JobRun, measured: float | None) -> dict:
    return {
        "hosts": [{"name": h.name, "address": h.address, "role": h.role, "netns": h.netns, "mbit": h.mbit}
                  for h in cluster.hosts],
        "exit_code": run.exit_code, "wall_seconds": round(run.wall, 2),
        "bytes_by_host": run.bytes_by_host, "segments_by_host": run.segments_by_host(cluster),
        "cloud_link": {"set_mbit": cluster.cloud.mbit, "measured_mbit": measured} if cluster.cloud else None,
        "faults": [dataclasses.asdict(f) for f in run.faults],
        "route": (run.report or {}).get("route", []),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    ours = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 usage="%(prog)s --hosts N [options] -- encode SRC DST [encode options]")
    ap.add_argument("--hosts", type=int, default=3, help="test hosts (>= 2; default 3)")
    ap.add_argument("--cloud-mbit", type=float, default=200.0,
                    help="the cloud host's (h2) link rate in Mbit/s, both ways (0: unshaped; default 200)")
    ap.add_argument("--head-cpus", type=int, default=1, help="CPU encoder slots on the head (default 1)")
    ap.add_argument("--worker-cpus", type=int, default=1, help="CPU encoder slots per worker (default 1)")
    ap.add_argument("--node-timeout", type=float, default=10.0,
                    help="seconds after which the head declares an unreachable node dead (default 10)")
    ap.add_argument("--fault", action="append", default=[], metavar="KIND:HOST[:after=K][:for=S]",
                    help="partition, kill or flap a host during the job (repeatable; see above)")
    ap.add_argument("--measure-link", action="store_true",
                    help="measure the cloud link with a TCP stream (h1 -> h2) before the job")
    ap.add_argument("--summary", metavar="S.json", default=None, help="write the run's figures here (JSON)")
    args = ap.parse_args(ours)
    if not command:
        ap.error("name the montage-ray command after --, e.g. -- encode SRC DST")
    try:
        faults = [Fault.parse(text) for text in args.fault]
    except ValueError as err:
        ap.error(str(err))
    if os.geteuid() != 0:
        print("netns_cluster: network namespaces need root (run as root)", file=sys.stderr)
        return 2
    if shutil.which("ip") is None or shutil.which("tc") is None:
        print("netns_cluster: needs `ip` and `tc` (iproute2)", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        with NetnsCluster(args.hosts, cloud_mbit=args.cloud_mbit or None, head_cpus=args.head_cpus,
                          worker_cpus=args.worker_cpus, node_timeout=args.node_timeout) as cluster:
            for f in faults:
                cluster.host(f.host)
            measured = None
            if args.measure_link and cluster.cloud:
                measured = cluster.measure_tcp(cluster.driver_host, cluster.cloud)
                cluster.log(f"cloud link: set {cluster.cloud.mbit} Mbit/s, measured {measured:.1f} Mbit/s")
            run = cluster.run(command, faults=faults, echo=True)
            for name, moved in run.bytes_by_host.items():
                segs = run.segments_by_host(cluster).get(name, 0)
                cluster.log(f"{name} {cluster.host(name).address}: {segs} segments, "
                            f"{moved['to_host'] / 1e6:.2f} MB to it, {moved['from_host'] / 1e6:.2f} MB from it")
            cluster.log(f"exit {run.exit_code} after {run.wall:.1f} s")
            if args.summary:
                Path(args.summary).write_text(json.dumps(summary(cluster, run, measured), indent=2),
                                              encoding="utf-8")
            return run.exit_code
    except NetnsError as err:
        print(f"netns_cluster: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
