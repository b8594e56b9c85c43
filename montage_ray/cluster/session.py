"""Connecting to Ray, or starting a private one, for the jobs of this process.

:func:`ray_session` yields a :class:`RaySession`: the real address of the Ray in use and where its jobs get
encoder actors: on a shared Ray (the caller's, or an address) the cluster's encoder service
(:class:`~montage_ray.cluster.service.Service`, shared by every driver; ``$MONTAGE_RAY_SERVICE=0`` turns it
off), on a private one a :class:`~montage_ray.cluster.workers.WorkerRegistry` of this process. Three cases:

- this process already called ``ray.init()``: that Ray is used and left running; its registry lives as long
  as that connection, so the next job reuses the same actors;
- an address (``--address``, or ``$RAY_ADDRESS``): it must answer within ``connect_timeout`` seconds, else
  one line (:class:`~montage_ray.errors.ClusterError`, exit 6); a refused token says so and how to pass one;
- neither: a **private** local Ray (``address="local"``), bound to 127.0.0.1 and stopped after the job. A
  ``ray_current_cluster`` file left by ``ray start`` is never followed (a dead one would hang the job)::

    from montage_ray.cluster.session import ray_session

    with ray_session(None) as session:        # a private Ray on 127.0.0.1
        session.address                       # '127.0.0.1:62144'
        workers = session.registry.start(...)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from montage_ray.util import workdirs
from montage_ray.util.reaper import Reaper
from montage_ray.cluster.service import Service, enabled
from montage_ray.cluster.workers import WorkerRegistry
from montage_ray.errors import ClusterError, InputError, Terminated, first_line

#: The montage_ray package folder, shipped to a cluster as a py_module.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Seconds an address gets to answer before the job fails (``$MONTAGE_RAY_CONNECT_TIMEOUT`` overrides it).
CONNECT_TIMEOUT = 10.0

#: How to pass a token, for the line a refused connection prints.
TOKEN_HELP = ("pass the cluster's token: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN_PATH=<token file> (or "
              "RAY_AUTH_TOKEN), as written by `ray get-auth-token` on the head")


@dataclass
class RaySession:
    """The Ray a job runs on: its address, whether this process started it, and its encoder actors."""

    address: str
    started_here: bool
    registry: WorkerRegistry = field(default_factory=WorkerRegistry)
    job_id: str = ""           # Ray's id of this driver's connection
    service: Service | None = None  # the cluster's encoder service (a shared Ray), else None
    private: bool = False      # a private Ray of this process (this machine is its head)


class CallerConnection:
    """The session of a Ray that the caller connected (``ray.init()`` before ``encode()``): its registry
    outlives one job, so it is kept with that connection's id and made again when the connection changes.
    Ray's connection belongs to the process, so there is one of these per process (:data:`CALLER`)."""

    def __init__(self) -> None:
        self._session: RaySession | None = None

    def session(self, ray: Any) -> RaySession:
        """The session of the connection ``ray`` has now (the same one while its id is the same)."""
        job_id = ray.get_runtime_context().get_job_id()
        if self._session is None or self._session.job_id != job_id:
            self._session = RaySession(ray.get_runtime_context().gcs_address, False, job_id=job_id,
                                       service=Service() if enabled() else None)
        return self._session

    def join_drains(self, timeout: float = 5.0) -> None:
        """Wait for the collection of cancelled tasks of its jobs (call before shutting that Ray down)."""
        if self._session is not None:
            self._session.registry.join_drains(timeout)


#: This process's connection made by the caller.
CALLER = CallerConnection()


def connected() -> RaySession:
    """The session of the Ray this process connected itself (``ray.init()``): the registry that its jobs
    share. Code that starts encoder actors of its own in that Ray uses this registry, so that one actor
    holds each slot (two registries would each wait for the other's CPUs)."""
    import ray

    if not ray.is_initialized():
        raise ClusterError("not connected to Ray (call ray.init() first)")
    return CALLER.session(ray)


def join_drains(timeout: float = 5.0) -> None:
    """Wait for the collection of cancelled tasks of the connected Ray's jobs (call before shutting it down)."""
    CALLER.join_drains(timeout)


def connect_timeout() -> float:
    raw = os.environ.get("MONTAGE_RAY_CONNECT_TIMEOUT", "")
    try:
        return float(raw) if raw else CONNECT_TIMEOUT
    except ValueError:
        raise ClusterError(f"MONTAGE_RAY_CONNECT_TIMEOUT={raw!r} is not a number of seconds") from None


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for forms Ray resolves itself."""
    text = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


#: What an address may look like, for the line that refuses any other.
ADDRESS_FORMS = "HOST:PORT (the head's GCS port, 6379 unless `ray start --port` said otherwise), ray://HOST:10001 or auto"


def check_address(address: str, source: str) -> None:
    """InputError in one line unless ``address`` (from ``source``: ``--address`` or ``RAY_ADDRESS``) is a form
    a job can connect to: ``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``."""
    if address in ("auto", "local"):
        return
    shown = f"{source}={address}" if source == "RAY_ADDRESS" else f"{source} {address}"
    if address.startswith(("http://", "https://")):
        raise InputError(f"{shown} is the address of Ray's job API (the dashboard), not of the cluster: `ray job "
                         "submit` reads that one from RAY_API_SERVER_ADDRESS; montage-ray needs the head's GCS "
                         "address, HOST:6379 (or unset RAY_ADDRESS for a private local Ray)")
    scheme = address.split("://", 1)[0] + "://" if "://" in address else ""
    if scheme not in ("", "ray://"):
        raise InputError(f"{shown}: montage-ray does not know the scheme {scheme!r}; give {ADDRESS_FORMS}")
    if _host_port(address) is None:
        raise InputError(f"{shown} has no port: give {ADDRESS_FORMS}")


def check_reachable(address: str, timeout: float) -> None:
    """ClusterError in one line unless something listens at ``address`` within ``timeout`` seconds."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            return
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
    raise ClusterError(f"cannot reach Ray at {address!r} within {timeout:g} s: {reason} (is the head running? "
                       "leave out --address and unset RAY_ADDRESS for a private local Ray)")


def own_node_address(address: str) -> str | None:
    """This host's address toward the head at ``address`` when a Ray node of this machine runs on it, else
    None (Ray's own choice stands).

    Ray attaches a driver to a node of its machine, the head's where there are several: right with one node
    per machine, wrong where hosts share one machine's process table (hosts in network namespaces, as
    scripts/netns_cluster.py makes them): there the head's node is another host, its sockets are out of this
    host's reach, and every actor waits on a driver it cannot call back."""
    target = _host_port(address)
    if target is None or not target[0]:
        return None
    try:
        with socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(target)  # no packet is sent: the kernel only picks the route and source address
            own = probe.getsockname()[0]
        from ray._private.services import _find_address_from_flag

        nodes = _find_address_from_flag("--node_ip_address")
    except (OSError, ImportError):
        return None
    # a loopback address is Ray's own single-machine case, which it resolves itself
    return own if own in nodes and not own.startswith("127.") and own != "::1" else None


def _resolve(address: str) -> str:
    """``auto`` as Ray would read it (the address ``ray start`` wrote), so that it can be checked first."""
    if address != "auto":
        return address
    from ray._private.utils import read_ray_address

    found = read_ray_address()
    if not found:
        raise ClusterError("--address auto: no Ray was started on this machine (run `ray start --head`, or leave "
                           "out --address for a private local Ray)")
    return found


def running_address(timeout: float = 2.0) -> str | None:
    """The address of the Ray that ``ray start`` left running on this machine, or None when none answers."""
    try:
        address = _resolve("auto")
        check_reachable(address, timeout)
    except ClusterError:
        return None
    return address


def ray_log_level() -> int:
    """Ray's own log level: its warnings (the token notice on every start) only when montage_ray itself logs
    at INFO (``--verbose``); ERROR otherwise, so that ``--quiet`` is quiet."""
    return logging.WARNING if logging.getLogger("montage_ray").isEnabledFor(logging.INFO) else logging.ERROR


#: Ray's switch for its C++ failure-signal handler in a process (see :func:`_init`).
NO_FAILURE_HANDLER = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"


def _init(ray: Any, **kwargs: Any) -> None:
    """``ray.init(**kwargs)``, keeping the caller's SIGTERM handler (ray.init installs one that exits without a
    word; the CLI's unwinds like Ctrl-C and exits 143), then the token file made private to its owner. A
    SIGTERM while Ray starts (Ray's handler, then, ends the start with ``sys.exit(15)``) stops what started
    and raises :class:`~montage_ray.errors.Terminated`, as a SIGTERM at any other time does."""
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    # Ray's C++ failure-signal handler, once installed in a process, is uninstalled by ray.shutdown(), which
    # leaves SIGTERM at its default action underneath Python for the second the shutdown takes: a SIGTERM
    # then would kill the job without its clean-up or its line. This driver keeps its own handlers instead
    # (Ray reads the switch when it connects the driver; the processes of a private Ray keep their handler).
    from ray._private import ray_constants

    saved = getattr(ray_constants, NO_FAILURE_HANDLER, False)
    setattr(ray_constants, NO_FAILURE_HANDLER, True)
    try:
        ray.init(logging_level=ray_log_level(), log_to_driver=False, **kwargs)
    except SystemExit as err:
        if not main or err.code != signal.SIGTERM:
            raise
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise Terminated() from None
    finally:
        setattr(ray_constants, NO_FAILURE_HANDLER, saved)
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    # a new local Ray writes its token world-readable (0644); montage-ray keeps it to its owner
    workdirs.make_private(os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token"))


def _start_private(ray: Any) -> None:
    """A local Ray for this process only, every part of it listening on 127.0.0.1."""
    from ray._private import ray_constants

    # Ray turns 127.0.0.1 into this machine's outward address unless it is told the cluster is local-only.
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        _init(ray, address="local", _node_ip_address="127.0.0.1", include_dashboard=False)
    except Exception as err:  # Ray raises a bare Exception when its node does not come up in time
        with contextlib.suppress(Exception):
            ray.shutdown()
        why = " ".join(str(err).split()) or type(err).__name__
        hint = "the machine may be too busy: try again" if "timed out" in why.lower() else "fix what it names"
        raise ClusterError(f"a local Ray could not start: {why} ({hint}, or give --address of a running Ray)") \
            from None
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _token_source() -> str:
    """Where Ray reads this client's token from (its own order), for the line that names it."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"] + " ($RAY_AUTH_TOKEN_PATH)"
    return "~/.ray/auth_token"


def _client_token() -> str | None:
    """The token this client has, read where Ray reads it and in its order (``$RAY_AUTH_TOKEN``, the file
    ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), whitespace around it dropped; None without one.

    Read here rather than through Ray's token loader: that loader is process-wide, and filling it before
    ``ray.init`` left a driver whose objects another node's workers could not fetch ("owner has exited")."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _token_metadata() -> tuple[list[tuple[str, str]], str]:
    """The gRPC metadata Ray itself would send to a cluster (its token, only with ``RAY_AUTH_MODE=token``), and
    this client's token situation in a word: sent, unsent (it has one but would not send it), missing (it
    would send one but has none), none."""
    token = _client_token()
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return [], "unsent" if token else "none"
    if token is None:
        return [], "missing"
    return [("authorization", f"Bearer {token}")], "sent"


def check_token(address: str, timeout: float) -> None:
    """ClusterError in one line, within ``timeout`` seconds, when the Ray head at ``address`` (``HOST:PORT``, its
    GCS) refuses this client: no token sent, the wrong token, or no Ray head there at all.

    One gRPC call, the very first one ``ray.init`` makes (``GetClusterId``), with the metadata Ray would send:
    ``ray.init`` itself retries a refused token for about 20 s, printing a C++ warning a second."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata, token = _token_metadata()
    where = _token_source()
    if token == "missing":
        raise ClusterError(f"RAY_AUTH_MODE=token but this client has no token ({where} is missing or empty): copy "
                           "the head's ~/.ray/auth_token here, or point RAY_AUTH_TOKEN_PATH at a copy")
    target = "{}:{}".format(*_host_port(address))  # type: ignore[str-format]
    channel = grpc.insecure_channel(target)
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout, metadata=metadata)
        return
    except grpc.RpcError as err:
        code = err.code()
    finally:
        channel.close()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if token == "sent":
            raise ClusterError(f"Ray at {address} refused this client's token (from {where}): it is not the "
                               "cluster's; copy the head's ~/.ray/auth_token here, or point RAY_AUTH_TOKEN_PATH "
                               "at a copy")
        if token == "unsent":
            raise ClusterError(f"Ray at {address} requires a token and this client sends none: export "
                               f"RAY_AUTH_MODE=token (the token in {where} is sent only then)")
        raise ClusterError(f"Ray at {address} requires a token and this client has none: export RAY_AUTH_MODE=token "
                           "and copy the head's ~/.ray/auth_token here (or point RAY_AUTH_TOKEN_PATH at a copy)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise ClusterError(f"Ray at {address} did not answer within {timeout:g} s (MONTAGE_RAY_CONNECT_TIMEOUT): is "
                           "the head overloaded, or is this not its GCS port (6379 unless `ray start --port` said "
                           "otherwise)?")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL,
                grpc.StatusCode.UNKNOWN):
        raise ClusterError(f"something listens at {address}, but not a Ray head's GCS ({code.name.lower()}): give "
                           "the head's GCS port (6379 unless `ray start --port` said otherwise), not the dashboard's "
                           "(8265) or the Ray Client's (ray://HOST:10001)")


def _connect(ray: Any, address: str, *, ship: bool) -> None:
    kwargs: dict[str, Any] = {"address": address}
    # A cluster gets this package shipped to it (not this machine's own ``ray start``: ``ship`` False), unless
    # this driver already runs as a Ray job (whose runtime_env brought the package, and which Ray would
    # refuse to merge with another).
    if ship and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        kwargs["runtime_env"] = {"py_modules": [PACKAGE_DIR]}
    timeout = connect_timeout()
    check_reachable(address, timeout)
    if not address.startswith("ray://"):
        check_token(address, timeout)
    own = own_node_address(address)
    if own:
        kwargs["_node_ip_address"] = own
    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # pragma: no cover - Ray before token authentication
        AuthenticationError = PermissionError  # type: ignore[misc,assignment]
    try:
        _init(ray, **kwargs)
    except Exception as err:  # noqa: BLE001 - Ray raises many kinds here; each becomes one line
        text = first_line(err)
        if isinstance(err, AuthenticationError) or "auth" in str(err).lower() or "token" in str(err).lower():
            raise ClusterError(f"authentication failed at Ray {address!r}: {text}; {TOKEN_HELP}") from None
        raise ClusterError(f"cannot connect to Ray at {address!r}: {text} (is the head running? `ray status` "
                           "on it says; or leave out --address for a private local Ray)") from None


def starts_private(address: str | None = None, *, default: str | None = None) -> bool:
    """Whether :func:`ray_session` with these arguments would start a private local Ray (seconds)."""
    import ray

    return not ray.is_initialized() and (address or os.environ.get("RAY_ADDRESS") or default) in (None, "local")


@contextlib.contextmanager
def ray_session(address: str | None = None, *, default: str | None = None) -> Iterator[RaySession]:
    """Use the Ray this process is connected to; else connect to ``address`` (or ``$RAY_ADDRESS``, else
    ``default``), else start a private local Ray. A Ray started or connected here is shut down on exit."""
    import ray

    if ray.is_initialized():
        yield CALLER.session(ray)
        return
    target = address or os.environ.get("RAY_ADDRESS") or default or None
    if target is not None:  # a form that cannot work says so in one line, before anything starts
        check_address(target, "--address" if address else "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS")
                      else "address")
    private = target in (None, "local")
    service = None if private or not enabled() else Service()  # (checks its settings before connecting)
    reaper = None
    if private:
        _start_private(ray)
        reaper = _watchdog(ray)
    else:
        _connect(ray, _resolve(target), ship=target != "auto")
    session = RaySession(ray.get_runtime_context().gcs_address, True,
                         job_id=ray.get_runtime_context().get_job_id(), service=service, private=private)
    try:
        yield session
    finally:
        session.registry.join_drains()  # no thread may still be talking to Ray while it shuts down
        ray.shutdown()
        _keep_signal_handlers()
        if reaper is not None:
            reaper.close()


def _watchdog(ray: Any) -> Reaper | None:
    """The watchdog that ends a private Ray's processes at once should this process die without shutting it
    down (:mod:`montage_ray.util.reaper`); None where it cannot start (the job goes on without it)."""
    try:
        return Reaper.start(ray.get_runtime_context().get_node_id())
    except (OSError, ValueError) as err:
        logging.getLogger(__name__).info("no watchdog for the private Ray: %s", err)
        return None


def _keep_signal_handlers() -> None:
    """Install this process's SIGTERM and SIGINT handlers again after Ray's shutdown: where Ray's failure-signal
    handler was installed in this process (see :func:`_init`), its removal leaves the signals at their default
    action underneath Python (whose ``getsignal`` still names the old handler), and a SIGTERM during the join
    or the verification would kill the job without its clean-up and its one line."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if handler is not None:
            signal.signal(signum, handler)
