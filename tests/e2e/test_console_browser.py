"""The operator console in a real browser (headless Chromium driven by Selenium) against
the kit's real processes on PostgreSQL and RabbitMQ: log in, watch a route's parity change
as shadow traffic arrives, move it through the gate (refused, then accepted), roll it
back, replay dead letters, and check what the page shows against the admin API.

A screenshot of the page at the end is written to the test's folder; with
``CONSOLE_SCREENSHOT=path`` also there (how ``docs/images/console.png`` is made).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from broker import Message, QueueSpec, connect
from examples.legacy_shop import TABLES
from tests.e2e.processes import free_port, port_open, processes, run_cli, wait_for
from tests.services import unique_name

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.rabbitmq]

ROUTE = "/allocations/<orderid>"
KEY = f"GET {ROUTE}"
TOKEN = "console-e2e-token-with-entropy"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1400,2200",
]


def _chromium() -> tuple[str, str]:
    """The browser and its driver; skipped when missing (a failure under CI=true)."""
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if Path(browser).exists() and Path(driver).exists():
        return browser, driver
    message = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    binary, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The console as a user sees it (element ids of skeleton_app/static/console.html)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        from selenium.webdriver.common.by import By

        self.by = By

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        try:
            return str(self.find(css).text)
        except Exception:  # noqa: BLE001 - not there (yet)
            return ""

    def click(self, css: str) -> None:
        """Click what ``css`` selects at this moment (the page re-renders as data changes)."""
        clicked = self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;",
            css,
        )
        assert clicked, f"nothing to click at {css}"

    def type(self, css: str, text: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def route_row(self) -> Any:
        for row in self.driver.find_elements(self.by.CSS_SELECTOR, "#routes tbody tr"):
            if row.get_attribute("data-route") == KEY:
                return row
        return None

    def route_cells(self) -> list[str]:
        row = self.route_row()
        if row is None:
            return []
        return [cell.text for cell in row.find_elements(self.by.TAG_NAME, "td")]

    def set_mode(self, mode: str, reason: str) -> str:
        from selenium.webdriver.support.ui import Select

        Select(self.find("#mode")).select_by_value(mode)
        self.type("#reason", reason)
        before = self.text("#action-result")
        self.click("#apply")
        return wait_for(
            lambda: (t := self.text("#action-result")) not in ("", "…", before) and t,
            15,
            f"the answer to setting {mode}",
        )

    def dead_letter_ids(self) -> list[str]:
        rows = self.driver.find_elements(self.by.CSS_SELECTOR, "#dead-letters tbody tr")
        return [
            r.get_attribute("data-message-id") for r in rows if r.get_attribute("data-message-id")
        ]


def api(facade: str, path: str) -> Any:
    response = requests.get(f"{facade}/_strangler/{path}", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def api_route(facade: str) -> dict[str, Any]:
    return next(r for r in api(facade, "routes")["routes"] if r["pattern"] == ROUTE)


HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


def _record_mismatch(new_db: str, diff: str) -> None:
    """A shadow mismatch of the route, written as the facade's shadow worker would."""
    from sqlalchemy import create_engine

    from skeleton_app import ShadowResults
    from skeleton_app.shadow_results import ShadowResult

    engine = create_engine(new_db)
    try:
        ShadowResults(engine).write(
            [
                ShadowResult(
                    at=datetime.now(UTC),
                    method="GET",
                    pattern=ROUTE,
                    kind="shadow",
                    outcome="mismatch",
                    path="/allocations/o-1",
                    legacy_status=200,
                    legacy_ms=1.0,
                    new_status=200,
                    new_ms=1.0,
                    diff=diff,
                )
            ]
        )
    finally:
        engine.dispose()


def _capture_one_change(amqp_url: str, queue: str) -> Message:
    """The first ``stock_lot`` change the bridge published (from a queue of our own)."""
    tap = connect(amqp_url)
    try:
        got = wait_for(lambda: tap.get_batch(queue, 1, 0.5), 30, "a change on legacy.cdc")
        return got[0].message
    finally:
        tap.close()


def test_the_console_shows_the_pipeline_and_moves_a_route_through_the_gate(
    pg_url_factory, amqp_url: str, tmp_path: Path, browser: Any
) -> None:
    legacy_db, new_db = pg_url_factory(), pg_url_factory()
    # an exchange of its own: no other test's bridge or consumer shares these messages
    exchange = unique_name("e2e_console_cdc")
    queue, tap_queue = unique_name("e2e_console"), unique_name("e2e_console_tap")
    legacy_port, facade_port = free_port(), free_port()
    legacy, facade = f"http://127.0.0.1:{legacy_port}", f"http://127.0.0.1:{facade_port}"
    env = {
        "LEGACY_DB_URL": legacy_db,
        "NEW_DB_URL": new_db,
        "BROKER_URL": amqp_url,
        "LEGACY_URL": legacy,
        "ADMIN_TOKEN": TOKEN,
    }
    rabbit = connect(amqp_url)
    try:
        with processes(tmp_path, env) as procs:
            procs.start("legacy", "legacy", "serve", "--port", str(legacy_port))
            wait_for(lambda: port_open(legacy_port), 30, "the legacy shop")
            run_cli("bridge", "install", "--tables", ",".join(TABLES), env=env)
            run_cli("db", "upgrade", env=env)
            procs.start("consumer", "consume", "--queue", queue, "--exchange", exchange)
            wait_for(lambda: rabbit.queue_depth(queue) >= 0, 30, "the consumer's queue")
            rabbit.declare_queue(QueueSpec(tap_queue, [(exchange, "stock_lot.*")]))
            procs.start(
                "bridge", "bridge", "run", "--exchange", exchange, "--heartbeat-interval", "1"
            )
            procs.start(
                "facade",
                "serve",
                "--port",
                str(facade_port),
                "--workers",
                "1",
                "--queue",
                queue,
                "--min-samples",
                "20",
                "--min-parity",
                "99",
                "--lag-sample-interval",
                "1",
            )
            wait_for(lambda: port_open(facade_port), 30, "the facade")

            http = requests.Session()
            assert (
                http.post(
                    f"{facade}/batches",
                    json={"ref": "b1", "sku": "RED-CHAIR", "qty": 50, "eta": None},
                    timeout=10,
                ).status_code
                == 201
            )
            orders = [f"o-{n}" for n in range(5)]
            for orderid in orders:
                answer = http.post(
                    f"{facade}/allocate",
                    json={"orderid": orderid, "sku": "RED-CHAIR", "qty": 2},
                    timeout=10,
                )
                assert answer.status_code == 201, answer.text
            # applied: the consumer's lag is known and the bridge has nothing pending
            wait_for(
                lambda: (
                    (p := api(facade, "pipeline"))["consumer"]["sources"]
                    and p["bridge"]["pending"] == 0
                ),
                30,
                "the pipeline to catch up",
            )

            # two dead letters: garbage the consumer refuses, and a copy of a change the
            # consumer applied, put into the dead-letter queue as if it had failed
            rabbit.publish(
                exchange,
                [Message("stock_lot.c", b"\xffnot json", "poison-1", headers={"x-legacy-seq": 0})],
            )
            applied = _capture_one_change(amqp_url, tap_queue)
            # the same message (its id names its stream and position) as a dead letter
            copy = Message(
                applied.routing_key,
                applied.body,
                applied.message_id,
                applied.type,
                applied.content_type,
                {**applied.headers, "x-error": "database restarted", "x-attempts": 1},
            )
            rabbit.publish(f"{queue}.dlx", [copy])
            wait_for(lambda: api(facade, "dead-letters")["depth"] == 2, 30, "the dead letters")

            page = Page(browser)
            browser.get(f"{facade}/_strangler/ui")
            assert browser.find_element(page.by.ID, "login").is_displayed()
            page.type("#token", TOKEN)
            page.click("#login-form button")
            wait_for(page.route_row, 15, "the route table")
            assert TOKEN not in browser.current_url
            assert (
                browser.execute_script(
                    "return window.sessionStorage.getItem('strangler.adminToken')"
                )
                == TOKEN
            )

            # the route starts on legacy, without samples; the gate refuses
            cells = page.route_cells()
            assert cells[1] == "legacy" and cells[3] == "no samples", cells
            page.click(f'#routes tbody tr[data-route="{KEY}"]')
            wait_for(lambda: page.text("#detail-route") == KEY, 10, "the route's detail")
            assert page.set_mode("shadow", HOSTILE + "compare before moving").startswith("Set ")
            wait_for(lambda: page.route_cells()[1] == "shadow", 10, "shadow on the page")
            refused = page.set_mode("new", "too early")
            assert refused.startswith("Refused by the gate:") and "no shadow samples" in refused
            assert api_route(facade)["mode"] == "shadow"
            assert "refuses" in page.route_cells()[5]

            # shadow traffic arrives: the page's parity follows the API's
            for n in range(25):
                http.get(f"{facade}/allocations/{orders[n % len(orders)]}", timeout=10)
            shown = wait_for(
                lambda: (c := page.route_cells())[3].endswith("of 25") and c,
                30,
                "the shadow parity on the page",
            )
            parity = api_route(facade)["parity"]
            assert parity["samples"] == 25
            assert shown[3] == f"{parity['percent']:.2f}% of 25"
            assert shown[3] == "100.00% of 25"
            wait_for(lambda: "passes" in page.route_cells()[5], 10, "the gate to pass")

            accepted = page.set_mode("new", "parity 100% over 25")
            assert accepted.startswith(f"Set {KEY} to new"), accepted
            assert api_route(facade)["mode"] == "new"
            served = wait_for(
                lambda: (
                    http.get(f"{facade}/allocations/o-1", timeout=10).headers["X-Served-By"]
                    == "new"
                ),
                10,
                "new to answer",
            )
            assert served

            # roll back (a reason is required)
            page.type("#reason", "rollback drill")
            page.click("#rollback")
            wait_for(lambda: page.text("#action-result").startswith("Rolled back"), 10, "rollback")
            assert api_route(facade)["mode"] == "legacy"
            wait_for(lambda: page.route_cells()[1] == "legacy", 10, "legacy on the page")
            history = api(facade, "routes/history")["entries"]
            assert [e["to_mode"] for e in history] == ["shadow", "new", "legacy"]
            assert history[-1]["reason"] == "rollback drill"
            wait_for(
                lambda: "rollback drill" in page.text("#audit tbody tr:first-child"),
                10,
                "the audit on the page",
            )

            # hostile text (a reason, a diff) is shown as text, never run
            _record_mismatch(new_db, HOSTILE + "legacy said b-1, new said b-2")
            wait_for(lambda: HOSTILE in page.text("#mismatches"), 15, "the hostile diff")
            assert HOSTILE + "compare before moving" in page.text("#audit")
            assert browser.execute_script("return window.pwned === undefined")
            assert not browser.find_elements(page.by.CSS_SELECTOR, "main img, main script")

            # dead letters: listed with their reasons, replayed with a reason
            wait_for(
                lambda: sorted(page.dead_letter_ids()) == sorted([copy.message_id, "poison-1"]),
                15,
                "the dead letters on the page",
            )
            assert "database restarted" in page.text("#dead-letters")
            page.type("#replay-reason", "re-delivered after the restart")
            page.click(f'#dead-letters button[data-message-id="{copy.message_id}"]')
            result = wait_for(
                lambda: (
                    (t := page.text("#replay-result")).startswith(f"Replay of {copy.message_id}")
                    and t
                ),
                30,
                "the replay",
            )
            # applied once already from the main queue: taken out, not applied again
            assert result.endswith(f"— applied before: {copy.message_id}"), result
            wait_for(lambda: page.dead_letter_ids() == ["poison-1"], 15, "the copy to leave")
            page.click('#dead-letters button[data-message-id="poison-1"]')
            result = wait_for(
                lambda: (t := page.text("#replay-result")).startswith("Replay of poison-1") and t,
                30,
                "the second replay",
            )
            assert "failed again: poison-1" in result
            dead = api(facade, "dead-letters")
            assert [d["message_id"] for d in dead["dead_letters"]] == ["poison-1"]
            assert dead["dead_letters"][0]["attempts"] >= 2

            # the pipeline's figures are the API's
            pipeline = api(facade, "pipeline")
            assert pipeline["errors"] == {}, pipeline["errors"]
            wait_for(
                lambda: page.text('#bridge dd[data-term="Pending changes"]').startswith("0"),
                10,
                "the bridge on the page",
            )
            # the page refreshes on its own: wait for a refresh after the replay put poison-1
            # back (one drawn while it was out of the queue said 0)
            wait_for(
                lambda: (
                    page.text('#pipeline-summary dd[data-term="Dead letters"]')
                    == f"1 in {queue}.dlq"
                ),
                15,
                "the dead letters' count on the page",
            )
            wait_for(
                lambda: int(page.find("#lag-chart").get_attribute("data-samples") or 0) >= 2,
                15,
                "lag samples in the chart",
            )
            assert browser.find_elements(page.by.CSS_SELECTOR, "#lag-chart canvas")
            assert page.text("#problems") == ""
            browser.execute_script("window.scrollTo(0, 0)")
            shot = tmp_path / "console.png"
            assert browser.save_screenshot(str(shot))
            if os.environ.get("CONSOLE_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["CONSOLE_SCREENSHOT"])
            procs.assert_running()
            logs = procs.log("facade")
            assert "dead letters replayed by shared token" in logs
            assert json.dumps(TOKEN)[1:-1] not in logs
    finally:
        for name in (queue, f"{queue}.dlq", tap_queue, f"{exchange}.unrouted"):
            rabbit.delete_queue(name)
        rabbit.close()
