"""A description of the machine and services a run measured."""

from __future__ import annotations

import os
import platform
import subprocess
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import psycopg

from bench.services import Services


def describe(services: Services) -> dict[str, Any]:
    """CPU count and model, memory, OS, Python, PostgreSQL and RabbitMQ versions, date."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": _postgres_version(services),
        "rabbitmq": _rabbitmq_version(services),
        "pika": pika.__version__,
        "code": code_version(),
    }


def code_version() -> str:
    """The kit's commit (``+dirty`` when tracked files changed), from ``BENCH_CODE_VERSION``
    or from git (read-only commands) in the folder the kit is imported from."""
    given = os.environ.get("BENCH_CODE_VERSION")
    if given:
        return given
    import legacy_bridge

    folder = Path(legacy_bridge.__file__).resolve().parent.parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, env=env, check=True,
        ).stdout.strip()  # fmt: skip
        changed = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, env=env, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if changed else commit


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    with suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _postgres_version(services: Services) -> str:
    try:
        with psycopg.connect(services.dsn()) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"
    except psycopg.Error as error:
        return f"unreachable ({str(error).splitlines()[0]})"


def _rabbitmq_version(services: Services) -> str:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(services.amqp_url))
    except pika.exceptions.AMQPError as error:
        return f"unreachable ({type(error).__name__})"
    try:
        properties = connection._impl.server_properties  # pika keeps them on the impl
        version = properties.get("version", b"unknown")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        connection.close()
