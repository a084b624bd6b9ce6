"""A run's summary as a Markdown table, and the promises a run must keep."""

from __future__ import annotations

from typing import Any

from tests.chaos import faults

WRITE_ROUTES = ("POST /batches", "PATCH /batches/<ref>", "POST /allocate", "POST /deallocate")


def _parity(parity: dict[str, dict[str, float]]) -> str:
    return "; ".join(
        f"{route} {p['percent']}% ({p['agree']:,} of {p['agree'] + p['differ']:,})"
        if route != "unclassified"
        else f"unclassified transactions {p['differ']:,}"
        for route, p in parity.items()
    )


def _served(w: dict[str, Any], journey: list[dict[str, Any]]) -> str:
    """Writes answered per phase of the journey and by whom."""
    phases = ["legacy"] + [step["phase"] for step in journey]
    out = []
    for phase in phases:
        by = {
            key.split(": ", 1)[1]: n
            for key, n in w["served"].items()
            if key.split(": ", 1)[0] == phase
        }
        if by:
            out.append(f"{phase}: " + ", ".join(f"{b} {n:,}" for b, n in sorted(by.items())))
    return "; ".join(out)


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (for docs/reliability.md)."""
    v, w, x = summary["verdict"], summary["workload"], summary["writes"]
    ledger, journey = summary["ledger"], summary["journey"]
    position = x["backsync_position"]
    rows = [
        ("date", summary["date"]),
        ("machine", summary["machine"]),
        ("mode / seed", f"{summary['mode']} / {summary['seed']}"),
        ("duration", f"{summary['duration_s']} s"),
        (
            "HTTP requests (writes through the facade, reads to legacy)",
            f"{w['requests']:,}: " + ", ".join(f"{k} {n:,}" for k, n in w["by_kind"].items()),
        ),
        (
            "the write group's journey (move: at captured changes, the move took, active after)",
            "; ".join(
                f"{s['mode']}: {s['at_changes']:,}, {s['set_in_s']} s,"
                f" {s.get('settled_after_s', '?')} s"
                for s in journey
            ),
        ),
        ("writes answered, per phase and by whom", _served(w, journey)),
        (
            "writes answered 503 and sent again / outcome unknown (502, 504)",
            f"{w['retried_503']:,} / {w['unknown_outcome']:,}",
        ),
        ("cuts that made the owner reallocate", f"{w['reallocating_cuts']:,}"),
        (
            "changes captured (of them back-sync's own transactions)",
            f"{v['captured']:,} ({v['captured_own']:,}): "
            + ", ".join(f"{k} {n:,}" for k, n in v["captured_by_kind"].items()),
        ),
        (
            "changes published (distinct / deliveries)",
            f"{v['published']:,} / {v['deliveries_to_audit']:,}",
        ),
        ("changes applied", f"{v['applied']:,}"),
        (
            "domain events for legacy's changes expected / recorded",
            f"{v['effects_expected']:,} / {v['effects_recorded']:,}",
        ),
        (
            "decisions of the new system / written into legacy (lost, doubled)",
            f"{x['decisions']:,} / {x['decisions_in_legacy']:,}"
            f" ({x['decisions_lost']}, {x['decisions_doubled']}): "
            + ", ".join(f"{r} {n:,}" for r, n in x["decisions_by_route"].items()),
        ),
        (
            "moves with a fence / fences in legacy (missing, doubled)",
            f"{x['moves_fenced']} / {x['fences']} ({x['fences_missing']}, {x['fences_doubled']})",
        ),
        (
            "back-sync: position; a decision's lag from the new commit to published, to the"
            " legacy commit",
            f"{position.get('decisions', '?')} decisions, {position.get('fences', '?')} fences; "
            + ", ".join(f"{k} {val} s" for k, val in x["relay_lag_s"].items())
            + "; "
            + ", ".join(f"{k} {val} s" for k, val in x["backsync_lag_s"].items()),
        ),
        (
            "back-sync more than 1 s behind: for, writing / the new system deciding",
            (
                f"{x['backsync_behind']['seconds']} s, {x['backsync_behind']['written_per_s']}"
                f" / {x['backsync_behind']['taken_per_s']} decisions a second"
            )
            if x["backsync_behind"]
            else "never",
        ),
        (
            "back-sync: dead letters; left in its queue (ready / unacked)",
            f"{x['backsync_dead_letters']}; {x['backsync_queue_ready']}"
            f" / {x['backsync_queue_unacked']}",
        ),
        ("faults", ", ".join(f"{k} {n}" for k, n in summary["faults"].items())),
        ("process kills", str(summary["process_kills"])),
        (
            "poison injected / dead-lettered (of them again) / other dead letters",
            f"{v['poison_injected']} / {v['dead_lettered']} ({v['dead_letter_duplicates']})"
            f" / {v['dead_letters_unexpected']}",
        ),
        (
            "left in the consumer's queue (ready / unacked)",
            f"{v['queue_ready']} / {v['queue_unacked']}",
        ),
        (
            "facade: bad paths refused with JSON / sent; good requests answered / sent",
            f"{v['facade_bad_refused']} / {v['facade_bad_requests']};"
            f" {v['facade_good_answered']} / {v['facade_good_requests']}",
        ),
        (
            "facade: shadow results matching / recorded (unexpected, missing)",
            f"{v['facade_shadow_matching']} / {v['facade_shadow_recorded']}"
            f" ({v['facade_shadow_unexpected']}, {v['facade_shadow_missing']})",
        ),
        (
            "accepted writes: allocations / out of stock / deallocations / batches",
            f"{ledger['allocations_accepted']:,} / {ledger['allocations_out_of_stock']:,}"
            f" / {ledger['deallocations_accepted']:,} / {ledger['batches_created']:,}",
        ),
        (
            "ledger held against legacy / new (orders as told; wrong, twice, stray, batches"
            " wrong, over-allocated)",
            " / ".join(
                f"{c['ok']:,} ({c['wrong']}, {c['held_twice']}, {c['stray']},"
                f" {c['batches_wrong'] + c['batches_stray']}, {c['over_allocated']})"
                for c in (x["ledger"]["legacy"], x["ledger"]["new"])
            ),
        ),
        (
            "ownership violations / echo anomalies",
            f"{x['ownership_violations']} / {x['echo_anomalies']}",
        ),
        ("`strangler verify --databases`", f"exit {x['databases_exit']}: {x['databases_line']}"),
        ("**lost**", f"**{v['lost'] + x['decisions_lost']}**"),
        ("**double-applied**", f"**{v['double_applied'] + x['decisions_doubled']}**"),
        (
            "**parity**",
            f"**{v['parity']}%** ({v['orders_matching']:,} of {v['orders_checked']:,} orders);"
            f" databases {'equal' if x['databases_exit'] == 0 else 'differ'}",
        ),
        ("decision parity in shadow (agree of judged)", _parity(summary["decision_parity_shadow"])),
        ("decision parity, whole run", _parity(summary["decision_parity"])),
    ]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {val} |" for k, val in rows]
    return "\n".join(lines)


def _journey_kept(summary: dict[str, Any]) -> bool:
    """Every planned move made and settled; the owner served every write of each
    settled phase (legacy before and after the hand-back, new on new), and both in
    canary."""
    planned = [phase for _, _, phase in summary["config"]["moves"]]
    journey = summary["journey"]
    if [s["phase"] for s in journey] != planned or not all("settled_after_s" in s for s in journey):
        return False
    served = summary["workload"]["served"]
    owners = {"legacy": "legacy"} | {s["phase"]: s["mode"] for s in journey}
    for phase, mode in owners.items():
        by = {k.split(": ", 1)[1]: n for k, n in served.items() if k.split(": ", 1)[0] == phase}
        expected = (
            {"new", "legacy"}
            if mode.startswith("canary")
            else {"new" if mode == "new" else "legacy"}
        )
        if set(by) - {"facade"} != expected:
            return False
    return True


def assert_clean(summary: dict[str, Any]) -> None:
    """The run's promises: nothing lost, nothing applied twice, full parity, only the
    poison dead-lettered, nothing left in the queues, every planned fault injected, the
    write group's journey made, every accepted write in both databases as told."""
    v, x, config = summary["verdict"], summary["writes"], summary["config"]
    planned = {k: config[k] for k in faults.KINDS if config[k]}
    shadow = summary["decision_parity_shadow"]
    judged_in_shadow = {r: p for r, p in shadow.items() if r != "unclassified"}
    promises = {
        "nothing lost": v["lost"] == 0,
        "nothing applied twice": v["double_applied"] == 0,
        "nothing published that was not captured": v["phantom_published"] == 0,
        "every order matches legacy": v["verify_exit"] == 0 and v["parity"] == 100.0,
        "the workload's size": v["captured"] >= config["changes"],
        "captured = published = applied": v["applied"] == v["captured"] == v["published"],
        "one domain event per effect": v["effects_recorded"] == v["effects_expected"],
        "the poison, and only it, dead-lettered": v["poison_injected"] > 0
        and v["dead_letters_unexpected"] == 0
        and v["poison_missing"] == 0,
        "nothing left in the queues": (v["queue_ready"], v["queue_unacked"], v["unrouted"])
        == (0, 0, 0),
        "every planned fault injected": summary["faults"] == planned,
        "the facade refused every bad path with a JSON error and answered every good one": 0
        < v["facade_bad_refused"]
        == v["facade_bad_requests"]
        and 0 < v["facade_good_answered"] == v["facade_good_requests"],
        "the facade's shadow results: one per good request, all matching, none for a bad one": v[
            "facade_shadow_matching"
        ]
        == v["facade_shadow_recorded"]
        == v["facade_good_requests"]
        and (v["facade_shadow_unexpected"], v["facade_shadow_missing"]) == (0, 0),
        "the facade's log: no traceback, no raw NUL or escape, one line per refused path": v[
            "facade_log_problems"
        ]
        == 0,
        # the write path
        "the write group's journey: every move settled, each phase served by its owner": (
            _journey_kept(summary)
        ),
        "every decision of the new system in legacy, once": x["decisions"] > 0
        and x["decisions_in_legacy"] == x["decisions"]
        and (x["decisions_lost"], x["decisions_doubled"], x["decisions_unapplied"]) == (0, 0, 0)
        and x["decisions_incomplete"] == 0,
        "every moved group's fence in legacy, once": x["moves_fenced"] > 0
        and (x["fences_missing"], x["fences_doubled"]) == (0, 0),
        "back-sync: no dead letter, nothing left in its queue": (
            x["backsync_dead_letters"],
            x["backsync_queue_ready"],
            x["backsync_queue_unacked"],
        )
        == (0, 0, 0),
        "no ownership violation, no echo anomaly": (
            x["ownership_violations"],
            x["echo_anomalies"],
        )
        == (0, 0),
        "every accepted write in both databases as told, no batch over-allocated": x[
            "ledger_broken"
        ]
        == 0
        and x["ledger_orders"] > 0,
        "strangler verify --databases: equal": x["databases_exit"] == 0,
        "decision parity 100% in shadow": sum(p["agree"] for p in judged_in_shadow.values()) > 0
        and all(p["differ"] == 0 for p in judged_in_shadow.values()),
        "every write route's legacy decisions judged": all(
            summary["decision_parity"].get(route, {}).get("agree", 0)
            + summary["decision_parity"].get(route, {}).get("differ", 0)
            > 0
            for route in WRITE_ROUTES
        ),
    }
    broken = [promise for promise, kept in promises.items() if not kept]
    assert not broken, (
        f"seed {summary['seed']}: broken: {', '.join(broken)}; faults {summary['faults']};"
        f" verdict {v}; writes {x}"
    )
