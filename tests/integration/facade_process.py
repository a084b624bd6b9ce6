"""Helpers for attacking a real facade: ``strangler serve`` (gunicorn) on PostgreSQL.

``RecordingLegacy`` is a raw-socket legacy system that keeps every byte it receives;
``TcpRelay`` sits between the facade and a database and can be frozen (it keeps accepting
and reading, and answers nothing), as a hung database does; ``serve`` starts the facade.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.e2e.processes import free_port, wait_for


class RecordingLegacy:
    """Answers every request ``200 {"legacy": true}`` and records what each connection sent.

    A request is its head up to the blank line, plus ``Content-Length`` bytes; anything else
    a connection sends is read as the start of its next request, as a server that ignores
    bodies on GET would.
    """

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._lock = threading.Lock()
        self.connections: list[bytearray] = []
        self.requests: list[bytes] = []
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c) for c in self.connections)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        record = bytearray()
        with self._lock:
            self.connections.append(record)
        buffer = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    record.extend(data)
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value.strip())
                        if name.strip().lower() == b"transfer-encoding":
                            end = rest.find(b"0\r\n\r\n")  # good enough for these tests
                            length = len(rest) + 1 if end < 0 else end + 5
                    if len(rest) < length:
                        break
                    buffer = rest[length:]
                    with self._lock:
                        self.requests.append(head + b"\r\n\r\n" + rest[:length])
                    body = b'{"legacy":true}\n'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )

    def close(self) -> None:
        self._stopped = True
        self._server.close()


class TcpRelay:
    """Relays TCP connections to ``target``; ``freeze()`` makes it a hung server: it keeps
    accepting and reading, and neither forwards nor answers anything."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._frozen = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            if self._frozen.is_set():
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            self._sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self._frozen.is_set():
                    continue  # swallowed: the other side waits forever
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._server.close()
        for s in self._sockets:
            with suppress(OSError):
                s.close()


class Blackhole:
    """A listening socket that accepts connections and never answers (a hung database)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._accepted.append(conn)

    def close(self) -> None:
        self._server.close()
        for conn in self._accepted:
            conn.close()


@dataclass
class Facade:
    url: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="backslashreplace")


@contextmanager
def serve(
    legacy_url: str, new_db_url: str, workdir: Path, *args: str, **env: str
) -> Iterator[Facade]:
    """``strangler serve`` on a free port; waits until it answers, stops it after."""
    port = free_port()
    log_path = workdir / f"serve-{port}.log"
    log = log_path.open("wb")
    # the facade's own server (gunicorn) faces these requests; the proxy that can stand in
    # front of it is tested in test_dataplane.py
    environment = {
        **os.environ,
        "LEGACY_URL": legacy_url,
        "NEW_DB_URL": new_db_url,
        "STRANGLER_DATA_PLANE": "none",
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from skeleton_app.commands import serve; serve()",
            "--port",
            str(port),
            "--workers",
            "2",
            "--threads",
            "4",
            *args,
        ],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: requests.get(f"{url}/_strangler/health", timeout=2).ok,
            30,
            "the facade to start",
        )
        yield Facade(url, port, log_path, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes
    (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False
