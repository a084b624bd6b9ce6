"""deploy/grafana: the dashboard queries only metrics the kit exports, and docker-compose.yml
runs Prometheus (scraping the kit) and Grafana with the dashboard provisioned.

The exported names come from the real metric registries: the facade's ``FacadeMetrics``
and the module-level metrics of the consumer (new domain), the relay (bridge) and
back-sync, expanded to the series names Prometheus stores (``_total`` for counters,
``_bucket``/``_sum``/``_count`` for histograms)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

import backsync.metrics
import legacy_bridge.metrics
import new_domain.metrics
from skeleton_app.metrics import FacadeMetrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "strangler-kit.json"
SERIES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
MODULES = (new_domain.metrics, legacy_bridge.metrics, backsync.metrics)
METRIC = re.compile(r"\bstrangler_[a-z0-9_]+\b")


def series_of(registry: CollectorRegistry, prefix: str = "strangler_") -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        if family.name.startswith(prefix):
            names |= {family.name + suffix for suffix in SERIES[family.type]}
    return names


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Series names by the part of the kit that exports them."""
    facade = FacadeMetrics(multiprocess_mode=False).registry
    assert facade is not None
    by_module = {
        module.__name__: {
            name
            for metric in vars(module).values()
            if hasattr(metric, "_name") and hasattr(metric, "_type")
            for name in (
                metric._name + suffix
                for suffix in SERIES["gauge" if metric._type == "gauge" else metric._type]
            )
        }
        for module in MODULES
    }
    everything = series_of(REGISTRY)  # the modules' metrics live in the default registry
    for module, names in by_module.items():
        assert names and names <= everything, module
    return {"facade": series_of(facade), **by_module}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> list[tuple[str, str]]:
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def test_every_metric_the_dashboard_queries_is_one_the_kit_exports(
    exported: dict[str, set[str]],
) -> None:
    known = set().union(*exported.values())
    queried = {name for _, expr in queries() for name in METRIC.findall(expr)}

    unknown = sorted(queried - known)

    assert queried, "the dashboard queries nothing"
    assert unknown == []


def test_the_dashboard_covers_every_part_and_the_issues_an_operator_watches(
    exported: dict[str, set[str]],
) -> None:
    queried = {name for _, expr in queries() for name in METRIC.findall(expr)}
    for part, names in exported.items():
        assert queried & names, f"nothing of {part} on the dashboard"
    titles = " | ".join(panel["title"].lower() for panel in dashboard()["panels"])
    for topic in (
        "lag",
        "throughput",
        "shadow parity per route",
        "fallbacks",
        "dead letters",
        "anomalies",
        "decision parity",
        "write answers",
    ):
        assert topic in titles, topic


def test_a_query_with_a_misspelt_metric_would_be_caught(exported: dict[str, set[str]]) -> None:
    known = set().union(*exported.values())
    assert "strangler_facade_lag_seconds" in known
    assert "strangler_facade_lag_seconds_total" not in known  # a gauge has no _total
    assert "strangler_consumer_dead_letters_total" in known
    assert "strangler_consumer_dead_letters" not in known  # Prometheus stores it with _total


def test_panels_are_wired_to_the_provisioned_data_source() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    [prometheus] = [d for d in datasources if d["type"] == "prometheus"]
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == prometheus["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_compose_runs_prometheus_on_the_kit_and_grafana_with_the_dashboard() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    grafana, prometheus = services["grafana"], services["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "strangler-kit.yml").read_text()
    )["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    [config] = [v.split(":")[0] for v in prometheus["volumes"]]
    scrape = yaml.safe_load((ROOT / config).read_text())["scrape_configs"]
    targets = {t for job in scrape for c in job["static_configs"] for t in c["targets"]}
    # every scraped process serves metrics on the port scraped
    assert "facade:8000" in targets
    for name, port in (("consumer", "9101"), ("bridge", "9102")):
        assert f"{name}:{port}" in targets
        command = services[name]["command"]
        assert command[command.index("--metrics-port") + 1] == port
