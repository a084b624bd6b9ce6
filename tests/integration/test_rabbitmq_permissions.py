"""Least-privilege RabbitMQ users (``deploy/rabbitmq/users.sh``) on the real broker.

The whole pipeline runs with them (bridge relay, consumer with its dead letters, outbox
relay), and what they must not do is refused by RabbitMQ itself: the consumer's user
cannot publish a change to ``legacy.cdc``, the bridge's user cannot read the
consumer's queue.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import broker
import legacy_bridge
import new_domain
from broker import BrokerError, Message
from examples import legacy_shop
from new_domain.adapters.database import create_engine
from new_domain.entrypoints.outbox_relay import OutboxRelay
from tests.services import unique_name

pytestmark = [pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "rabbitmq" / "users.sh"
SHOP_TABLES = ["prod_catalog", "stock_lot", "cust_order_line", "lot_allocation"]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def users(amqp_url: str) -> Iterator[dict[str, str]]:
    if shutil.which("rabbitmqctl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("rabbitmqctl is not installed (CI=true: a missing service is a failure)")
        pytest.skip("rabbitmqctl is not installed")
    vhost, prefix = unique_name("perm_vhost"), unique_name("perm") + "-"
    names = {
        "VHOST": vhost,
        "USER_PREFIX": prefix,
        "CDC_EXCHANGE": unique_name("perm.cdc"),
        "CONSUMER_QUEUE": unique_name("perm.q"),
        "EVENTS_EXCHANGE": unique_name("perm.events"),
        "BRIDGE_PASSWORD": uuid.uuid4().hex,
        "CONSUMER_PASSWORD": uuid.uuid4().hex,
    }
    rabbitmqctl("add_vhost", vhost)
    try:
        done = subprocess.run(
            [str(SCRIPT)], env={**os.environ, **names}, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert "least-privilege permissions" in done.stdout
        assert names["BRIDGE_PASSWORD"] not in done.stdout + done.stderr
        base = f"127.0.0.1:5672/{quote(vhost, safe='')}"
        names["bridge_url"] = f"amqp://{prefix}bridge:{names['BRIDGE_PASSWORD']}@{base}"
        names["consumer_url"] = f"amqp://{prefix}consumer:{names['CONSUMER_PASSWORD']}@{base}"
        yield names
    finally:
        rabbitmqctl("delete_vhost", vhost)
        for role in ("bridge", "consumer"):
            subprocess.run(["rabbitmqctl", "-q", "delete_user", f"{prefix}{role}"], timeout=60)


def test_the_pipeline_runs_with_least_privilege_users_and_nothing_more_is_allowed(
    users: dict[str, str], tmp_path: Path
) -> None:
    legacy_db, new_db = f"sqlite:///{tmp_path / 'legacy.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    shop = legacy_shop.create_app(legacy_db).test_client()
    legacy_bridge.install(legacy_db, tables=SHOP_TABLES)
    new_domain.upgrade_database(new_db)
    bus = new_domain.bootstrap(new_db)
    consumer = new_domain.Consumer(
        bus,
        lambda: broker.connect(users["consumer_url"]),
        users["CONSUMER_QUEUE"],
        exchange=users["CDC_EXCHANGE"],
        batch_timeout=0.05,
        retry_backoff=0.001,
    )
    relay = legacy_bridge.Relay(
        legacy_db,
        broker_factory=lambda: broker.connect(users["bridge_url"]),
        exchange=users["CDC_EXCHANGE"],
    )
    outbox = OutboxRelay(
        create_engine(new_db, for_writes=True),
        lambda: broker.connect(users["consumer_url"]),
        exchange=users["EVENTS_EXCHANGE"],
    )
    bridge_side = broker.connect(users["bridge_url"])
    consumer_side = broker.connect(users["consumer_url"])
    try:
        consumer.connect()  # the consumer's declarations are all allowed
        shop.post("/batches", json={"ref": "b1", "sku": "LAMP", "qty": 10, "eta": None})
        shop.post("/allocate", json={"orderid": "o1", "sku": "LAMP", "qty": 2})
        published = relay.run_once()
        assert published > 0
        garbage = Message("stock_lot.c", b"{not json", "garbage-1")
        bridge_side.publish(users["CDC_EXCHANGE"], [garbage])  # the bridge may publish
        taken = 0
        while taken < published + 1:
            taken += consumer.run_once()
        with new_domain.open_read_model(new_db) as read_model:
            assert [a.batchref for a in read_model.allocations_for("o1")] == ["b1"]
        assert consumer_side.queue_depth(f"{users['CONSUMER_QUEUE']}.dlq") == 1
        assert outbox.drain() >= 1  # domain events published with the consumer's user

        forged = Message("audit_log.c", b"{}", "forged-1")
        with pytest.raises(BrokerError, match="ACCESS_REFUSED"):
            consumer_side.publish(users["CDC_EXCHANGE"], [forged])
        with pytest.raises(BrokerError, match="ACCESS_REFUSED"):
            broker.connect(users["bridge_url"]).get_batch(users["CONSUMER_QUEUE"], 1, 0.1)
    finally:
        for closing in (relay.close, consumer.close, outbox.close, bridge_side.close):
            closing()
        with contextlib.suppress(BrokerError):
            consumer_side.close()
        outbox.engine.dispose()
        bus.uow.close()
