// The strangler console: every figure comes from the facade's admin API.
// The admin token lives in this tab's sessionStorage and is sent as a bearer token;
// every value is written with textContent (no HTML is ever parsed from data), so it renders inert.
"use strict";

(function () {
  const API = "/_strangler/";
  const TOKEN_KEY = "strangler.adminToken";
  const REFRESH_MS = 2000;
  let selected = null; // {method, pattern}
  let chart = null;
  let timer = null;
  let busy = false;
  let routesByKey = new Map(); // "METHOD pattern" -> the route as last listed

  const $ = (id) => document.getElementById(id);

  function token() {
    return window.sessionStorage.getItem(TOKEN_KEY);
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && (body.detail || body.error)) || "HTTP " + status);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, options) {
    const init = Object.assign({ headers: {} }, options || {});
    init.headers = Object.assign({}, init.headers, { Authorization: "Bearer " + token() });
    if (init.json !== undefined) {
      init.body = JSON.stringify(init.json);
      init.headers["Content-Type"] = "application/json";
      delete init.json;
    }
    init.cache = "no-store";
    init.credentials = "omit";
    const response = await fetch(API + path, init);
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (response.status === 401) {
      logout("The token was refused.");
      throw new ApiError(401, body);
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // -- DOM helpers (text only) ----------------------------------------------------------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      if (cell instanceof Node) {
        const td = document.createElement("td");
        td.appendChild(cell);
        tr.appendChild(td);
      } else if (cell && typeof cell === "object") {
        tr.appendChild(el("td", cell.text, cell.className));
      } else {
        tr.appendChild(el("td", cell === null || cell === undefined ? "-" : cell));
      }
    }
    return tr;
  }

  const shown = new WeakMap(); // tbody -> signature of the rows it shows

  function signature(rows) {
    return JSON.stringify(rows.map((r) => [
      r.className,
      Object.assign({}, r.dataset),
      Array.from(r.cells).map((c) => [c.className, c.textContent]),
    ]));
  }

  function fill(tbody, rows, empty, columns) {
    if (!rows.length) {
      const tr = row([empty]);
      tr.firstChild.colSpan = columns;
      tr.firstChild.className = "muted";
      rows = [tr];
    }
    // rows that did not change stay in place (no flicker, a click is not lost)
    const sig = signature(rows);
    if (shown.get(tbody) === sig) return;
    shown.set(tbody, sig);
    tbody.replaceChildren(...rows);
  }

  function definitions(dl, pairs) {
    dl.replaceChildren();
    for (const [term, value, className] of pairs) {
      dl.appendChild(el("dt", term));
      const dd = el("dd", value === null || value === undefined ? "-" : value, className);
      dd.dataset.term = term;
      dl.appendChild(dd);
    }
  }

  function parityText(p) {
    if (!p || !p.samples) return "no samples";
    return p.percent.toFixed(2) + "% of " + p.samples;
  }

  function seconds(value) {
    return value === null || value === undefined ? "-" : Number(value).toFixed(1) + " s";
  }

  function when(iso) {
    if (!iso) return "-";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 19) + "Z";
  }

  // -- routes ---------------------------------------------------------------------------

  function renderRoutes(data, status) {
    routesByKey = new Map(data.routes.map((r) => [r.method + " " + r.pattern, r]));
    const tbody = $("routes").tBodies[0];
    const rows = data.routes.map((r) => {
      const key = r.method + " " + r.pattern;
      const gate = r.gate
        ? { text: (r.gate.passed ? "passes: " : "refuses: ") + r.gate.summary,
            className: r.gate.passed ? "passed" : "refused" }
        : "no gate";
      const tr = row([
        key,
        { text: r.mode, className: "mode" },
        r.percent === null ? "-" : r.percent + "%",
        { text: parityText(r.parity), className: "num parity" },
        { text: parityText(r.noise), className: "num noise" },
        gate,
        when(r.updated_at) + (r.updated_by ? " by " + r.updated_by : ""),
      ]);
      tr.dataset.route = key;
      tr.dataset.mode = r.mode;
      tr.dataset.samples = String(r.parity.samples);
      if (selected && selected.method === r.method && selected.pattern === r.pattern) {
        tr.classList.add("selected");
      }
      tr.addEventListener("click", () => select(r.method, r.pattern));
      return tr;
    });
    fill(tbody, rows, "no routes", 7);

    const g = status.gate;
    $("gate-thresholds").textContent =
      "Cutover gate: at least " + g.min_parity + "% parity over at least " + g.min_samples +
      " samples (window " + g.window_seconds + " s, newest " + g.window_samples + ").";

    const groups = Object.entries(data.groups || {}).map(([name, group]) => {
      const o = group.ownership;
      return row([
        name,
        o ? o.rule : "-",
        o ? o.epoch : "-",
        o ? o.state : "unreadable",
        o && o.changed_at ? when(o.changed_at) + " by " + (o.changed_by || "-") : "never moved",
      ]);
    });
    fill($("groups").tBodies[0], groups, "no write groups", 5);

    const decisions = Object.entries(data.decision_parity || {}).map(([route, c]) =>
      row([route, { text: c.agree, className: "num" }, { text: c.differ, className: "num" },
           { text: c.samples ? c.percent.toFixed(2) + "% of " + c.samples : "no decisions",
             className: "num" }]));
    fill($("decisions").tBodies[0], decisions, "no decisions judged yet", 4);
  }

  function select(method, pattern) {
    selected = { method: method, pattern: pattern };
    $("route-detail").hidden = false;
    $("detail-route").textContent = method + " " + pattern;
    $("action-result").textContent = "";
    syncForm();
    refresh();
  }

  // the form starts from the route's current mode (never from the previous choice)
  function syncForm() {
    const route = selected && routesByKey.get(selected.method + " " + selected.pattern);
    if (!route) return;
    $("mode").value = route.mode;
    $("percent").value = route.percent === null ? "" : String(route.percent);
    $("force").checked = false;
  }

  async function renderMismatches() {
    const box = $("mismatches");
    if (!selected) return;
    const query = new URLSearchParams({ method: selected.method, pattern: selected.pattern,
                                        limit: "5" });
    const found = await api("routes/mismatches?" + query.toString());
    box.replaceChildren();
    if (!found.mismatches.length) {
      box.appendChild(el("p", "No mismatches in the window (" + parityText(found.parity) + ").",
                         "muted"));
      return;
    }
    for (const m of found.mismatches) {
      box.appendChild(el("p", when(m.at) + "  " + m.path + "  legacy " + m.legacy_status +
                              ", new " + (m.new_status === null ? "-" : m.new_status) +
                              " (" + m.outcome + ")"));
      box.appendChild(el("pre", m.diff || "(no diff)", "diff"));
    }
  }

  async function setMode(event) {
    event.preventDefault();
    if (!selected) return;
    const result = $("action-result");
    const mode = $("mode").value;
    const body = {
      method: selected.method,
      pattern: selected.pattern,
      mode: mode,
      reason: $("reason").value,
      force: $("force").checked,
    };
    if (mode === "canary") body.percent = Number($("percent").value || "0");
    result.className = "";
    result.textContent = "…";
    try {
      const changed = await api("routes", { method: "PUT", json: body });
      result.className = "ok";
      result.textContent = "Set " + changed.route.method + " " + changed.route.pattern +
        " to " + changed.route.setting + (changed.audit.gate ? " (" + changed.audit.gate + ")" : "");
      $("force").checked = false;
    } catch (error) {
      result.className = "refused";
      result.textContent = (error.status === 409 ? "Refused by the gate: " : "Refused: ") +
        error.message;
    }
    refresh();
  }

  async function rollback() {
    if (!selected) return;
    const result = $("action-result");
    const reason = $("reason").value.trim();
    if (!reason) {
      result.className = "refused";
      result.textContent = "A rollback needs a reason.";
      $("reason").focus();
      return;
    }
    try {
      const done = await api("routes/rollback", {
        method: "POST",
        json: { method: selected.method, pattern: selected.pattern, reason: reason },
      });
      result.className = "ok";
      result.textContent = done.rolled_back.length
        ? "Rolled back " + done.rolled_back.map((r) => r.method + " " + r.pattern).join(", ")
        : "Already served by legacy.";
      $("mode").value = "legacy";
      $("percent").value = "";
    } catch (error) {
      result.className = "refused";
      result.textContent = "Rollback failed: " + error.message;
    }
    refresh();
  }

  // -- pipeline -------------------------------------------------------------------------

  function renderPipeline(p) {
    const lag = p.lag;
    const queue = p.queue;
    const consumer = p.consumer;
    definitions($("pipeline-summary"), [
      ["End-to-end lag", seconds(lag.lag_seconds), lag.tripped ? "refused" : ""],
      ["Lag guard", !lag.enabled ? "off" : lag.tripped
        ? "tripped: new and canary routes serve from legacy (max " + lag.max_lag_seconds + " s)"
        : "ok (max " + lag.max_lag_seconds + " s)"],
      ["Consumer queue", queue ? queue.name + ": " + queue.depth + " waiting" : null],
      ["Dead letters", queue ? queue.dead_letters + " in " + queue.dead_letter_queue : null],
      ["Outbox", consumer ? consumer.outbox_backlog + " event(s) not published" : null],
      ["Anomalies", p.anomalies ? Object.values(p.anomalies).reduce((a, b) => a + b, 0) : null],
    ]);
    const b = p.bridge;
    definitions($("bridge"), b ? [
      ["Database", b.connector + " " + b.database + " (" + b.server_name + ")"],
      ["Confirmed position", b.last_confirmed_pos + " at " + when(b.last_confirmed_at)],
      ["Pending changes", b.pending + (b.oldest_pending_age_s === null ? ""
        : " (oldest " + seconds(b.oldest_pending_age_s) + ")")],
      ["Throughput", b.throughput_per_s + " /s over the last minute"],
      ["Snapshots", b.snapshots.length ? b.snapshots.map((s) => s.table + " " + s.rows_read +
        (s.done ? " done" : " running")).join(", ") : "none"],
    ] : [["Bridge", "unknown"]]);
    const sources = consumer ? consumer.sources.map((s) => row([
      s.source, when(s.current_as_of), { text: seconds(s.heartbeat_age_seconds), className: "num" },
      when(s.applied_at), { text: seconds(s.lag_seconds), className: "num" }])) : [];
    fill($("sources").tBodies[0], sources, consumer ? "nothing applied yet" : "unknown", 5);
    drawLag(p.history);
    return Object.entries(p.errors || {}).map(([part, text]) => part + ": " + text);
  }

  function drawLag(history) {
    const box = $("lag-chart");
    const xs = [];
    const ys = [];
    for (const s of history.samples) {
      xs.push(Date.parse(s.at) / 1000);
      ys.push(s.lag_seconds);
    }
    box.dataset.samples = String(xs.length);
    if (typeof window.uPlot !== "function") {
      box.textContent = xs.length + " samples (chart library not loaded)";
      return;
    }
    const data = [xs, ys];
    const width = Math.max(300, Math.min(900, box.clientWidth || 900));
    if (!chart) {
      chart = new window.uPlot({
        width: width,
        height: 220,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.2)] } },
        axes: [{}, { label: "seconds" }],
        series: [{}, { label: "lag (s)", stroke: "#1f5fbf", width: 2, spanGaps: false }],
      }, data, box);
    } else {
      chart.setData(data);
    }
  }

  // -- dead letters, anomalies, audit ---------------------------------------------------

  function renderDeadLetters(found) {
    const summary = $("dead-letters-summary");
    if (found.unavailable) {
      summary.textContent = "Unavailable: " + found.unavailable;
      fill($("dead-letters").tBodies[0], [], "unknown", 7);
      return;
    }
    summary.textContent = found.depth + " dead letter(s) in " + found.queue;
    const rows = found.dead_letters.map((d) => {
      const button = el("button", "Replay");
      button.type = "button";
      button.dataset.messageId = d.message_id || "";
      button.addEventListener("click", () => replay(d.message_id));
      const tr = row([d.message_id, d.routing_key, d.seq, d.attempts, d.first_failed_at,
                      (d.error_type || "?") + ": " + (d.error || "?"), button]);
      tr.dataset.messageId = d.message_id || "";
      return tr;
    });
    fill($("dead-letters").tBodies[0], rows, "no dead letters", 7);
  }

  async function replay(messageId) {
    const result = $("replay-result");
    const reason = $("replay-reason").value.trim();
    if (!reason) {
      result.className = "refused";
      result.textContent = "A replay needs a reason.";
      $("replay-reason").focus();
      return;
    }
    try {
      const report = await api("dead-letters/replay", {
        method: "POST", json: { ids: [messageId], reason: reason } });
      const parts = [];
      if (report.applied.length) parts.push("applied: " + report.applied.join(", "));
      if (report.already_applied.length) {
        parts.push("applied before: " + report.already_applied.join(", "));
      }
      for (const f of report.failed) parts.push("failed again: " + f.message_id + ": " + f.reason);
      if (report.not_found.length) parts.push("not found: " + report.not_found.join(", "));
      result.className = report.failed.length || report.not_found.length ? "refused" : "ok";
      result.textContent = "Replay of " + messageId + " — " + parts.join("; ");
    } catch (error) {
      result.className = "refused";
      result.textContent = "Replay failed: " + error.message;
    }
    refresh();
  }

  function renderAnomalies(found) {
    if (found.unavailable) {
      $("anomaly-counts").textContent = "Unavailable: " + found.unavailable;
      fill($("anomalies").tBodies[0], [], "unknown", 5);
      return;
    }
    const counts = Object.entries(found.counts).map(([k, n]) => k + " " + n).join(", ");
    $("anomaly-counts").textContent = found.total + " anomal" + (found.total === 1 ? "y" : "ies") +
      (counts ? ": " + counts : "");
    fill($("anomalies").tBodies[0], found.anomalies.map((a) =>
      row([when(a.recorded_at), a.kind, a.sku, a.detail, a.message_id])), "none", 5);
  }

  function renderAudit(found) {
    const entries = found.entries.slice(-50).reverse();
    fill($("audit").tBodies[0], entries.map((e) => row([
      when(e.at), e.method + " " + e.pattern, e.from_mode, e.to_mode, e.by, e.reason,
      (e.forced ? "forced; " : "") + (e.gate || "-")])), "no changes yet", 7);
  }

  async function optional(path) {
    try {
      return await api(path);
    } catch (error) {
      if (error.status === 503) return { unavailable: error.message };
      throw error;
    }
  }

  // -- refresh loop ---------------------------------------------------------------------

  async function refresh() {
    if (!token() || busy) return;
    busy = true;
    const problems = [];
    try {
      const [routes, status, pipeline, dead, anomalies, audit] = await Promise.all([
        api("routes"), api("status"), api("pipeline"), optional("dead-letters"),
        optional("anomalies"), api("routes/history"),
      ]);
      renderRoutes(routes, status);
      problems.push(...renderPipeline(pipeline));
      renderDeadLetters(dead);
      renderAnomalies(anomalies);
      renderAudit(audit);
      if (selected) await renderMismatches();
      $("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (error.status !== 401) problems.push(error.message);
    } finally {
      busy = false;
    }
    $("problems").textContent = problems.join(" · ");
  }

  function showConsole() {
    $("login").hidden = true;
    $("console").hidden = false;
    $("logout").hidden = false;
    refresh();
    if (!timer) timer = window.setInterval(refresh, REFRESH_MS);
  }

  function logout(message) {
    window.sessionStorage.removeItem(TOKEN_KEY);
    if (timer) window.clearInterval(timer);
    timer = null;
    $("console").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
  }

  async function login(event) {
    event.preventDefault();
    const given = $("token").value.trim();
    if (!given) return;
    window.sessionStorage.setItem(TOKEN_KEY, given);
    $("token").value = "";
    try {
      await api("status");
    } catch (error) {
      if (error.status !== 401) {
        $("login-error").textContent = "The admin API did not answer: " + error.message;
      }
      return;
    }
    $("login-error").textContent = "";
    showConsole();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => logout(""));
    $("route-form").addEventListener("submit", setMode);
    $("rollback").addEventListener("click", rollback);
    if (token()) showConsole();
    else logout("");
  });
})();
