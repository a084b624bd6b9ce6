"""A long-running ``strangler`` process tells where it is: SIGUSR1 prints every
thread's stack to its log and it goes on; SIGTERM still stops it cleanly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from new_domain import upgrade_database
from tests.e2e.processes import processes, wait_for
from tests.services import unique_name

pytestmark = pytest.mark.rabbitmq


def test_sigusr1_prints_every_threads_stack_and_the_consumer_goes_on(
    amqp_url: str, tmp_path: Path
) -> None:
    new_db = f"sqlite:///{tmp_path / 'new.db'}"
    upgrade_database(new_db)
    env = {"BROKER_URL": amqp_url, "NEW_DB_URL": new_db}
    queue = unique_name("signals_q")
    with processes(tmp_path, env) as procs:
        consumer = procs.start("consumer", "consume", "--queue", queue, "--exchange", queue)
        wait_for(lambda: "consuming" in procs.log("consumer"), 60, "the consumer to consume")

        os.kill(consumer.pid, signal.SIGUSR1)
        wait_for(
            lambda: "most recent call first" in procs.log("consumer"),
            30,
            "the stacks in the consumer's log",
        )
        log = procs.log("consumer")
        assert "Current thread" in log or "Thread 0x" in log
        assert "consume" in log  # a frame of the consumer's own loop
        procs.assert_running()  # it went on

        os.killpg(consumer.pid, signal.SIGTERM)
        assert consumer.wait(timeout=60) == 0
        assert "consumer stopped" in procs.log("consumer")
