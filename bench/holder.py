"""``python -m bench.holder URL``: hold idle keep-alive and slowloris connections open.

A process of the data plane's benchmark, run beside the load tool:

- ``--idle N`` connections each send one ``GET PATH``, read the whole answer (it must
  be 2xx), then stay open and silent, as a browser's or a pool's idle keep-alive
  connection does; one the server closes is opened again (counted);
- ``--slow N`` connections send a request's line and headers one byte every
  ``--byte-interval`` seconds and never finish it (slowloris); one the server answers
  (408 from the data plane's request timeout) or closes is opened again (counted, with
  the answer's status).

When every idle connection had its answer and every slow one is open, the holder prints
``HOLDER_READY {...}``; on SIGTERM or SIGINT it prints ``HOLDER_JSON {...}`` (the counts,
and the fewest connections held at once since it was ready) and exits 0. A
failure to set up prints one line and exits 1. The open files limit is raised to what
the connections need (up to the hard limit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

READY = "HOLDER_READY "
DONE = "HOLDER_JSON "
SLOW_HEADER = b"X-Slow-Client: " + b"a" * 4000 + b"\r\n"
"""What a slow connection trickles after its request line: a header that never ends
(4,000 bytes: hours at one byte a second, far beyond any request timeout)."""
OPEN_AT_ONCE = 50
"""Idle connections set up concurrently (so the setup does not flood the server)."""
SAMPLE_EVERY = 0.2


class HolderFailed(Exception):
    """The holder could not set up its connections."""


def slow_bytes(path: str, host: str) -> Iterator[bytes]:
    """The bytes a slow connection sends, one at a time: a request line and headers,
    never the blank line that ends them."""
    data = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode() + SLOW_HEADER
    return (data[i : i + 1] for i in range(len(data)))


def answer_status(chunks: list[bytes]) -> tuple[int, bool]:
    """Feed an HTTP/1.1 answer's bytes to h11: ``(status, complete)``; ``status`` 0
    while the head has not arrived. Raises ``h11.RemoteProtocolError`` on a bad answer."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    for chunk in chunks:
        conn.receive_data(chunk)
    status = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return status, False
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            return status, True
        elif isinstance(event, h11.ConnectionClosed):
            return status, False


@dataclass
class Counts:
    """What the holder did. ``idle_min``, ``slow_min``, ``held_max``: the fewest idle and
    slow connections open at once, and the most of both together, sampled every
    ``SAMPLE_EVERY`` s since ready (-1 before)."""

    idle_open: int = 0
    slow_open: int = 0
    idle_reopened: int = 0
    slow_reopened: int = 0
    slow_answers: Counter[int] = field(default_factory=Counter)
    slow_bytes_sent: int = 0
    idle_min: int = -1
    slow_min: int = -1
    held_max: int = -1
    held_at_stop: int = -1
    idle_closed_after_s: list[float] = field(default_factory=list)
    """How long each idle connection the server closed had been idle."""

    def sample(self) -> None:
        """Note the connections open now (since ready)."""
        first = self.idle_min < 0
        self.idle_min = self.idle_open if first else min(self.idle_min, self.idle_open)
        self.slow_min = self.slow_open if first else min(self.slow_min, self.slow_open)
        self.held_max = max(self.held_max, self.idle_open + self.slow_open)

    def as_dict(self) -> dict[str, object]:
        return {
            "idle_open": self.idle_open,
            "slow_open": self.slow_open,
            "idle_reopened": self.idle_reopened,
            "slow_reopened": self.slow_reopened,
            "slow_answers": {str(k): v for k, v in sorted(self.slow_answers.items())},
            "slow_bytes_sent": self.slow_bytes_sent,
            "idle_min": self.idle_min,
            "slow_min": self.slow_min,
            "held_max": self.held_max,
            "held_at_stop": self.held_at_stop,
            "idle_closed_after_s": _spread(self.idle_closed_after_s),
        }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 2), "max": round(max(values), 2)}


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to ``wanted`` (at most the hard limit); the
    limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        return f"{self.host}:{self.port}"


class Holder:
    def __init__(self, target: Target, idle: int, slow: int, byte_interval: float) -> None:
        self.target = target
        self.idle = idle
        self.slow = slow
        self.byte_interval = byte_interval
        self.counts = Counts()
        self._gate = asyncio.Semaphore(OPEN_AT_ONCE)
        self._idle_ready = 0
        self._failed: asyncio.Future[str] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self._failed = asyncio.get_running_loop().create_future()
        tasks = [asyncio.create_task(self._hold_idle()) for _ in range(self.idle)]
        tasks += [asyncio.create_task(self._hold_slow()) for _ in range(self.slow)]
        try:
            await self._until_ready()
            print(READY + json.dumps(self.counts.as_dict()), flush=True)
            while not stop.is_set():
                self.counts.sample()
                if self._failed.done():
                    raise HolderFailed(self._failed.result())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
            self.counts.held_at_stop = self.counts.idle_open + self.counts.slow_open
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _until_ready(self) -> None:
        assert self._failed is not None
        while self._idle_ready < self.idle or self.counts.slow_open < self.slow:
            if self._failed.done():
                raise HolderFailed(self._failed.result())
            await asyncio.sleep(0.05)

    def _fail(self, reason: str) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(reason)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.target.host, self.target.port)

    async def _hold_idle(self) -> None:
        first = True
        while True:
            async with self._gate:
                try:
                    reader, writer = await self._connect()
                    status = await self._one_request(reader, writer)
                except (OSError, h11.RemoteProtocolError) as exc:
                    self._fail(f"an idle connection could not be set up: {exc}")
                    return
            if not 200 <= status < 300:
                self._fail(f"an idle connection's request was answered {status}")
                return
            self.counts.idle_open += 1
            if first:
                self._idle_ready += 1
                first = False
            idle_since = time.monotonic()
            try:
                await reader.read()  # b"" once the server closes it; nothing before
            except OSError:
                pass
            finally:
                self.counts.idle_open -= 1
                writer.close()
            self.counts.idle_closed_after_s.append(time.monotonic() - idle_since)
            self.counts.idle_reopened += 1

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        t = self.target
        writer.write(f"GET {t.path} HTTP/1.1\r\nHost: {t.host_header}\r\n\r\n".encode())
        chunks: list[bytes] = []
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                raise OSError("the server closed the connection before its answer")
            chunks.append(chunk)
            status, complete = answer_status(chunks)
            if complete:
                return status

    async def _hold_slow(self) -> None:
        while True:
            try:
                reader, writer = await self._connect()
            except OSError as exc:
                self._fail(f"a slow connection could not be opened: {exc}")
                return
            self.counts.slow_open += 1
            try:
                status = await self._trickle(reader, writer)
            finally:
                self.counts.slow_open -= 1
                writer.close()
            self.counts.slow_answers[status] += 1
            self.counts.slow_reopened += 1

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        """Send a byte every interval until the server answers or closes: its status
        (0: closed without an answer)."""
        read = asyncio.ensure_future(reader.read(65536))
        try:
            for byte in slow_bytes(self.target.path, self.target.host_header):
                try:
                    writer.write(byte)
                    await writer.drain()
                except OSError:
                    break
                self.counts.slow_bytes_sent += 1
                done, _ = await asyncio.wait({read}, timeout=self.byte_interval)
                if done:
                    break
            data = await read
        except OSError:
            return 0
        finally:
            read.cancel()
        try:
            status, _ = answer_status([data]) if data else (0, False)
        except h11.RemoteProtocolError:
            status = 0
        return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.holder", description=__doc__)
    parser.add_argument("url", help="http://host:port/path the connections use")
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--byte-interval", type=float, default=1.0)
    return parser


async def _main(target: Target, args: argparse.Namespace) -> Counts:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    holder = Holder(target, args.idle, args.slow, args.byte_interval)
    await holder.run(stop)
    return holder.counts


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    parts = urlsplit(args.url)
    if parts.scheme != "http" or not parts.hostname or args.idle < 0 or args.slow < 0:
        print(f"holder: error: need an http:// URL and counts >= 0, got {args.url!r}",
              file=sys.stderr)  # fmt: skip
        return 2
    target = Target(parts.hostname, parts.port or 80, parts.path or "/")
    needed = args.idle + args.slow + 64
    limit = raise_open_files_limit(needed)
    if limit < needed:
        print(f"holder: error: the open files limit ({limit}) is below the {needed} needed",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        counts = asyncio.run(_main(target, args))
    except HolderFailed as exc:
        print(f"holder: error: {exc}", file=sys.stderr)
        return 1
    print(DONE + json.dumps(counts.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
