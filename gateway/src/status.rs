//! The admin listener's live status page: `/status` (HTML), `/status.js`, `/status.css` and
//! `/status.json` (what the page shows, from the tunnel registry; the page also reads
//! `/metrics`). Self-contained, no external resource, under a strict Content-Security-Policy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::route::RouteTable;
use crate::tunnel::Registry;

/// What the status page shows of one route: requests answered, how many were 5xx, and the
/// total time to their response heads. Relaxed atomics: one add each per request, and the
/// page computes rates from two readings.
#[derive(Debug, Default)]
pub struct RouteStats {
    requests: AtomicU64,
    errors: AtomicU64,
    head_micros: AtomicU64,
}

impl RouteStats {
    /// Count one answered request.
    pub fn record(&self, status: u16, head: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(head.as_micros()).unwrap_or(u64::MAX);
        self.head_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "head_micros": self.head_micros.load(Ordering::Relaxed),
        })
    }
}

/// The page's Content-Security-Policy: its own script, style and data, nothing else.
pub const STATUS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page.
pub const STATUS_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>netwall status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/status.css"></head>
<body>
<header><h1>netwall <span id="gateway"></span></h1><p id="summary">loading…</p></header>
<section><h2>Tunnels</h2><table id="tunnels"><thead><tr><th>tunnel</th><th>connector</th><th>transport</th><th>remote</th><th>age</th><th>in flight</th><th>state</th></tr></thead><tbody></tbody></table></section>
<section><h2>Routes</h2><table id="routes"><thead><tr><th>route</th><th>tunnel</th><th>requests/s</th><th>5xx/s</th><th>mean time to head</th><th>requests</th></tr></thead><tbody></tbody></table></section>
<section><h2>Responses</h2><table id="responses"><tbody></tbody></table></section>
<section><h2>Refusals at the edge</h2><table id="rejections"><tbody></tbody></table></section>
<section><h2>Open WebSockets per route</h2><table id="websockets"><tbody></tbody></table></section>
<section><h2>Open TCP sessions per route</h2><table id="tcp"><tbody></tbody></table></section>
<section><h2>Recent security events</h2><table id="events"><thead><tr><th>when</th><th>event</th><th>details</th></tr></thead><tbody></tbody></table></section>
<noscript>This page renders with JavaScript; /status.json and /metrics hold the same figures.</noscript>
<script src="/status.js"></script>
</body></html>
"#;

/// The page's style.
pub const STATUS_CSS: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em;margin:0}h2{font-size:1.05em;margin:1.4em 0 .4em}\
table{border-collapse:collapse;min-width:24em}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.down{color:#b00}.ok{color:#070}\n";

/// The page's script: every 2 s, `/status.json` and `/metrics`, rendered as tables; the
/// title says how many tunnel connections are live.
pub const STATUS_JS: &str = r##""use strict";
const REFRESH_MS = 2000;
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; }
function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  if (rows.length === 0) { cell(body.insertRow(), "none"); return; }
  for (const r of rows) { const tr = body.insertRow(); r.forEach((v, i) => cell(tr, String(v), i > 0 && typeof v === "number" ? "n" : "")); }
}
function age(s) { return s < 120 ? s + " s" : s < 7200 ? Math.floor(s / 60) + " min" : Math.floor(s / 3600) + " h"; }
function samples(text, name) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{") && !line.startsWith(name + " ")) continue;
    const m = line.match(/^[a-z_]+(?:\{(.*)\})? ([0-9.eE+-]+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[1] || "").matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push([labels, Number(m[2])]);
  }
  return out;
}
let previous = null;
function routeRows(routes, now) {
  const before = previous ? new Map(previous.routes.map((r) => [r.name, r])) : new Map();
  const dt = previous ? (now - previous.at) / 1000 : 0;
  const rows = routes.map((r) => {
    const b = before.get(r.name);
    // A counter that went backwards was reset (the route changed): no rate this round.
    const ok = b && dt > 0 && r.requests >= b.requests;
    const reqs = ok ? r.requests - b.requests : 0;
    const rate = ok ? (reqs / dt).toFixed(1) : "…";
    const errs = ok ? ((r.errors - b.errors) / dt).toFixed(1) : "…";
    const head = ok && reqs > 0 ? ((r.head_micros - b.head_micros) / reqs / 1000).toFixed(2) + " ms" : "";
    return [r.name, r.tunnel, rate, errs, head, r.requests];
  });
  previous = { at: now, routes };
  return rows;
}
function eventRows(events) {
  return events.slice().reverse().map((e) => {
    const details = Object.entries(e).filter(([k]) => k !== "at" && k !== "event" && k !== "message" && k !== "suppressed")
      .map(([k, v]) => k + "=" + v).join(" ");
    return [new Date(e.at * 1000).toISOString().slice(11, 19), e.event || e.message || "", details];
  });
}
async function refresh() {
  try {
    const [status, metrics] = await Promise.all([
      fetch("/status.json", { cache: "no-store" }).then((r) => r.json()),
      fetch("/metrics", { cache: "no-store" }).then((r) => r.text()),
    ]);
    document.getElementById("gateway").textContent = status.gateway_id;
    const live = status.tunnels.reduce((n, t) => n + t.connections.length, 0);
    document.getElementById("summary").textContent =
      `up ${age(status.uptime_seconds)}, ${live} live tunnel connections` + (status.draining ? ", draining" : "");
    document.title = `netwall ${status.gateway_id}: ${live} live tunnel connections`;
    const rows = [];
    for (const t of status.tunnels) {
      if (t.connections.length === 0) rows.push([t.name, "no connector", "", "", "", 0, "down"]);
      for (const c of t.connections) rows.push([t.name, c.connector, c.transport, c.remote, age(c.age_seconds), c.in_flight, c.draining ? "draining" : "up"]);
    }
    fill("tunnels", rows);
    fill("routes", routeRows(status.routes, Date.now()));
    fill("events", eventRows(status.security_events));
    fill("responses", samples(metrics, "netwall_http_responses_total").map(([l, v]) => [l.class, v]));
    fill("rejections", samples(metrics, "netwall_rejections_total").map(([l, v]) => [l.reason, v]));
    fill("websockets", samples(metrics, "netwall_websocket_connections").map(([l, v]) => [l.route, v]));
    fill("tcp", samples(metrics, "netwall_tcp_open_connections").map(([l, v]) => [l.route, v]));
  } catch (e) {
    document.getElementById("summary").textContent = "gateway not answering: " + e;
    document.title = "netwall: not answering";
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
"##;

/// What `/status.json` holds: the gateway, its uptime, every tunnel's live connections, every
/// route's figures and the recent security events.
pub fn snapshot(
    registry: &Registry,
    routes: &RouteTable,
    gateway_id: &str,
    started: Instant,
    draining: bool,
) -> serde_json::Value {
    let mut route_list: Vec<serde_json::Value> = routes
        .routes()
        .map(|r| {
            let mut v = r.stats.json();
            v["name"] = json!(r.name);
            v["tunnel"] = json!(r.tunnel);
            v
        })
        .collect();
    route_list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let tunnels: Vec<serde_json::Value> = registry
        .all()
        .iter()
        .map(|t| {
            let connections: Vec<serde_json::Value> = t
                .live()
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "connector": c.connector_id,
                        "transport": c.transport.kind().as_str(),
                        "remote": c.remote.to_string(),
                        "version": c.version,
                        "age_seconds": c.since.elapsed().as_secs(),
                        "in_flight": c.in_flight(),
                        "draining": c.is_draining(),
                    })
                })
                .collect();
            json!({ "name": t.name, "connections": connections })
        })
        .collect();
    json!({
        "gateway_id": gateway_id,
        "uptime_seconds": started.elapsed().as_secs(),
        "draining": draining,
        "tunnels": tunnels,
        "routes": route_list,
        "security_events": crate::security_log::recent(),
    })
}
