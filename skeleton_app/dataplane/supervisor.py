"""Running the facade behind HAProxy: two processes, supervised as one.

The supervisor (the ``strangler serve`` process) binds the facade's private socket on
127.0.0.1 (an unused port), forks the facade (gunicorn, listening on that socket through
``fd://``) and starts HAProxy on the public address. Connections HAProxy makes before
gunicorn's workers are up wait in the socket's backlog, so there is nothing to wait for.

- Either child exits: the other is stopped and the supervisor fails with one line.
- SIGTERM or SIGINT: HAProxy stops listening and finishes the requests in flight (soft
  stop, bounded by ``hard-stop-after``), then gunicorn stops gracefully; exit status 0.
  A second signal stops both at once.
- The supervisor dies (SIGKILL): both children get SIGTERM from the kernel
  (``PR_SET_PDEATHSIG``), so no HAProxy keeps the public port.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skeleton_app.dataplane.haproxy_config import Backend, Limits, Timeouts, render
from skeleton_app.dataplane.routing import (
    DataPlaneRouting,
    LegacyUpstream,
    Router,
    RuntimeAPI,
    initial_lines,
    map_text,
)

log = logging.getLogger("strangler.dataplane")

METRICS_SOCKET_ENV = "STRANGLER_DATA_PLANE_METRICS"
"""Set in the facade's environment: the socket of HAProxy's Prometheus exporter."""

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class DataPlaneError(Exception):
    """The data plane could not start or one of its processes died."""


@dataclass(frozen=True)
class HAProxyPlane:
    """What ``strangler serve --data-plane haproxy`` runs: the binary and its settings."""

    binary: str
    request_timeout: float = 10.0
    limits: Limits = Limits()
    max_connections: int = 4096


def facade_options(limits: Limits) -> dict[str, Any]:
    """gunicorn settings behind the proxy: its limits are the proxy's, never tighter, so
    every refusal is the proxy's JSON one; idle proxy connections are kept a long time."""
    return {
        "limit_request_line": 0,  # unlimited: the proxy allows at most limits.request_line
        "limit_request_field_size": 0,  # the proxy bounds all fields together
        "limit_request_fields": max(limits.header_fields * 2, 200),  # + proxy's headers
        "keepalive": 300,
    }


def serve_behind_haproxy(
    plane: HAProxyPlane,
    run_facade: Callable[[Mapping[str, Any]], None],
    *,
    host: str,
    port: int,
    concurrency: int,
    upstream_timeout: float,
    new_timeout: float,
    routing: DataPlaneRouting | None = None,
) -> None:
    """Run HAProxy on ``host:port`` in front of ``run_facade`` (gunicorn, run in a child
    process with extra options: its bind and limits, and ``METRICS_SOCKET_ENV`` in its
    environment); returns when both stopped cleanly, raises :class:`DataPlaneError` when
    either failed. With ``routing``, what the route table leaves to legacy goes straight
    to legacy (kept up to date by a thread of this process, see
    :mod:`skeleton_app.dataplane.routing`)."""
    _raise_fd_limit(plane.max_connections)
    workdir = Path(tempfile.mkdtemp(prefix="strangler-dataplane-"))
    private = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        private.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        private.bind(("127.0.0.1", 0))
        private.listen(1024)
        private.set_inheritable(True)
        timeouts = Timeouts.for_facade(plane.request_timeout, upstream_timeout, new_timeout)
        config = workdir / "haproxy.cfg"
        runtime_socket = workdir / "runtime.sock"
        routes_map = workdir / "routes.map"
        metrics_socket = workdir / "metrics.sock"
        router = None
        routed: dict[str, Any] = {}
        if routing is not None:
            try:
                legacy = LegacyUpstream.from_url(routing.legacy_url)
            except ValueError as exc:
                raise DataPlaneError(str(exc)) from None
            lines = initial_lines(routing)  # its engine is closed before forking
            routes_map.write_text(map_text(lines))
            router = Router(routing, routes_map, RuntimeAPI(str(runtime_socket)), lines)
            routed = {
                "legacy": legacy,
                "routes_map": str(routes_map),
                "legacy_timeout": upstream_timeout,
                "metrics_path": routing.metrics_path,
            }
        config.write_text(
            render(
                _address(host, port),
                Backend("127.0.0.1", private.getsockname()[1], concurrency),
                limits=plane.limits,
                timeouts=timeouts,
                max_connections=plane.max_connections,
                runtime_socket=str(runtime_socket),
                metrics_socket=str(metrics_socket),
                **routed,
            )
        )
        _check_config(plane.binary, config)

        def facade() -> None:  # in the child process
            os.environ[METRICS_SOCKET_ENV] = str(metrics_socket)
            run_facade({"bind": f"fd://{private.fileno()}", **facade_options(plane.limits)})

        _Supervisor(plane.binary, config, timeouts, router).run(facade, private)
    finally:
        private.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_config(binary: str, config: Path) -> None:
    checked = subprocess.run(
        [binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if checked.returncode != 0:
        lines = [line for line in (checked.stderr + checked.stdout).splitlines() if line]
        alert = next((line for line in lines if "ALERT" in line), lines[0] if lines else "")
        raise DataPlaneError(f"HAProxy refused its configuration: {alert.strip()}")


def _raise_fd_limit(max_connections: int) -> None:
    """HAProxy needs about two descriptors per connection; raise the soft limit it
    inherits up to the hard one, and say so when even that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * max_connections + 64
    if hard != resource.RLIM_INFINITY and hard < wanted:
        log.warning(
            "the open files limit (%d) is too low for %d connections; HAProxy will accept fewer",
            hard,
            max_connections,
        )
        wanted = hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's finally still stops it
        pass


class _Supervisor:
    def __init__(
        self, binary: str, config: Path, timeouts: Timeouts, router: Router | None = None
    ) -> None:
        self._router = router
        self._binary = binary
        self._config = config
        self._grace = timeouts.stop + 10
        self._pending: list[int] = []
        self._haproxy: subprocess.Popen[bytes] | None = None
        self._facade: int | None = None
        self._status: dict[str, int] = {}

    def run(self, facade: Callable[[], None], private: socket.socket) -> None:
        previous = {sig: signal.signal(sig, self._remember) for sig in _STOP_SIGNALS}
        try:
            self._facade = self._fork(facade)
            private.close()  # the facade holds it now; it closes when the facade dies
            self._haproxy = subprocess.Popen(
                [self._binary, "-db", "-f", str(self._config)], preexec_fn=_die_with_parent
            )
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS | {signal.SIGCHLD})
            try:
                if self._router is not None:  # after the fork; the signals stay blocked in it
                    self._router.start()
                self._supervise()
            finally:
                if self._router is not None:
                    self._router.stop()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS | {signal.SIGCHLD})
        finally:
            self._kill_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _remember(self, signum: int, frame: object) -> None:
        self._pending.append(signum)

    @staticmethod
    def _fork(facade: Callable[[], None]) -> int:
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:  # the child: gunicorn's arbiter, which installs its own signal handlers
            _die_with_parent()
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            facade()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            logging.getLogger("strangler").exception("the facade failed")
        finally:
            os._exit(code)

    def _supervise(self) -> None:
        if self._pending:  # a signal came while the children were starting
            self._stop()
            return
        while True:
            self._reap()
            if self._status:
                self._fail()
            info = signal.sigwaitinfo(_STOP_SIGNALS | {signal.SIGCHLD})
            if info.si_signo in _STOP_SIGNALS:
                self._stop()
                return

    def _reap(self) -> None:
        if self._facade is not None and "facade" not in self._status:
            pid, status = os.waitpid(self._facade, os.WNOHANG)
            if pid:
                self._status["facade"] = os.waitstatus_to_exitcode(status)
        if self._haproxy is not None and "haproxy" not in self._status:
            code = self._haproxy.poll()
            if code is not None:
                self._status["haproxy"] = code

    def _wait_for(self, name: str, deadline: float) -> bool:
        """Wait until child ``name`` exited; False when the deadline passed. A stop
        signal meanwhile makes the deadline now."""
        while True:
            self._reap()
            if name in self._status:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            info = signal.sigtimedwait(_STOP_SIGNALS | {signal.SIGCHLD}, left)
            if info is not None and info.si_signo in _STOP_SIGNALS:
                deadline = time.monotonic()

    def _signal(self, name: str, sig: int) -> None:
        if name in self._status:
            return
        pid = self._facade if name == "facade" else self._haproxy and self._haproxy.pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _stop(self) -> None:
        """Graceful: HAProxy first (it stops accepting, finishes what is in flight), then
        the facade; a child that overstays is killed."""
        self._signal("haproxy", signal.SIGUSR1)
        if not self._wait_for("haproxy", time.monotonic() + self._grace):
            self._signal("haproxy", signal.SIGKILL)
            self._wait_for("haproxy", time.monotonic() + 5)
        self._signal("facade", signal.SIGTERM)
        if not self._wait_for("facade", time.monotonic() + self._grace):
            self._signal("facade", signal.SIGKILL)
            self._wait_for("facade", time.monotonic() + 5)
        failed = {name: code for name, code in self._status.items() if code != 0}
        if failed:
            raise DataPlaneError(
                "stopped, but "
                + ", ".join(
                    f"{_NAMES[name]} exited with status {code}" for name, code in failed.items()
                )
            )

    def _fail(self) -> None:
        name, code = next(iter(self._status.items()))
        other = "haproxy" if name == "facade" else "facade"
        self._signal(other, signal.SIGTERM)
        if not self._wait_for(other, time.monotonic() + self._grace):
            self._signal(other, signal.SIGKILL)
            self._wait_for(other, time.monotonic() + 5)
        raise DataPlaneError(
            f"{_NAMES[name]} exited with status {code} (its log is above); stopped {_NAMES[other]}"
        )

    def _kill_all(self) -> None:
        for name in ("haproxy", "facade"):
            self._reap()
            if name not in self._status and (name != "haproxy" or self._haproxy is not None):
                self._signal(name, signal.SIGKILL)
        if self._haproxy is not None and self._haproxy.poll() is None:
            self._haproxy.wait()
        if self._facade is not None and "facade" not in self._status:
            os.waitpid(self._facade, 0)


_NAMES = {"haproxy": "the data plane (haproxy)", "facade": "the facade (gunicorn)"}
