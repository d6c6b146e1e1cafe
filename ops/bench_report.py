#!/usr/bin/env python3
"""Turn ops/bench's raw measurements into report.md, report.json and report.png.

Each measurement may have been repeated; the median is reported. Ratios compare netwall with the
direct path and with rathole from the same run, so a noisy machine still gives honest ratios.
"""
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
from glob import glob



def challenge_report(path):
    """The proof-of-work challenge's table (ops/bench --challenge), as Markdown."""
    with open(path) as f:
        r = json.load(f)
    g = r["gateway"]
    b = r["browser"]
    lines = [
        "# netwall proof-of-work challenge",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; Chromium sees "
        f"{b['chromium_cores']} cores and solves in {b['workers']}.",
        "",
        "## The gateway's cost (in process, per operation)",
        "",
        "| operation | µs |",
        "|---|---:|",
        f"| issue a challenge (sign a seed, render the page) | {g['issue_us']:.1f} |",
        f"| verify a solution (seed HMAC, SHA-256, once-only set, sign a pass) | {g['verify_us']:.1f} |",
        f"| check a pass (every request on a challenged route) | {g['pass_check_us']:.2f} |",
        "",
        "## Headless Chromium, navigation to landing on the content",
        "",
        "Includes loading the page, solving, the verify and cookie-check requests and the reload;"
        " `page` is the mean solve time the page itself reported.",
        "",
        "| bits | samples | median s | p95 s | min s | max s | page mean s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in b["rows"]:
        lines.append(
            f"| {row['bits']} | {row['samples']} | {row['median_s']:.2f} | {row['p95_s']:.2f} | "
            f"{row['min_s']:.2f} | {row['max_s']:.2f} | {row['page_reported_mean_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def shared_report(path):
    """Many gateways sharing Redis (ops/bench --shared), as Markdown."""
    with open(path) as f:
        r = json.load(f)
    rl, fan, ps = r["rate_limit"], r["fanout"], r["redis_pubsub"]
    lat = fan["latency"]
    lines = [
        "# netwall shared state: cost of a rate limit by driver, fan-out latency",
        "",
        f"Rate limits: one process (gateway, connector, clients, sample service), the median of "
        f"{rl.get('rounds', 1)} interleaved passes each; fan-out: three gateway processes, a "
        "connector, the sample service and the clients in processes of their own; one "
        "redis-server; 2 cores shared by all.",
        "",
        "| rate limit on the route | req/s | added µs per request |",
        "|---|---:|---:|",
        f"| none (memory-driver gateway) | {rl['none_rps']:,.0f} | |",
        f"| memory driver | {rl['memory_rps']:,.0f} | {rl['memory_added_us']:+.1f} |",
        f"| none (Redis-driver gateway) | {rl['none_on_redis_gateway_rps']:,.0f} | |",
        f"| Redis driver (GCRA script, one round trip) | {rl['redis_rps']:,.0f} | {rl['redis_added_us']:+.1f} |",
        "",
        f"Fan-out: {fan['clients']:,} WebSocket clients over three gateways, {fan['messages']} messages "
        f"published through the connector 100 ms apart, {fan['received']:,} of {fan['expected']:,} "
        f"received. Each message is {fan['clients']:,} TLS frames to write and read on the same two "
        "cores, so the latency is mostly the time to reach the last client.",
        "",
        "| publish to receipt | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
        f"| netwall fan-out (connector, tunnel, gateway, Redis, every gateway, client) | {lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['max_ms']:.2f} |",
        f"| Redis pub/sub alone (one subscriber) | {ps['p50_ms']:.3f} | {ps['p99_ms']:.3f} | {ps['max_ms']:.3f} |",
        "",
    ]
    return "\n".join(lines)


if len(sys.argv) == 3 and sys.argv[1] == "--shared":
    sys.stdout.write(shared_report(sys.argv[2]))
    sys.exit(0)
if len(sys.argv) == 3 and sys.argv[1] == "--challenge":
    sys.stdout.write(challenge_report(sys.argv[2]))
    sys.exit(0)

out, mode, repeats, duration, concurrency, fixed_rate, bulk_mib, redis_requests, redis_pipeline, workers = sys.argv[1:11]
raw = os.path.join(out, "raw")
PATHS = ["direct", "nginx", "rathole", "netwall", "netwall_tls", "netwall_unix", "netwall_wg"]
# netwall's tunnel transports: "netwall" is the default, QUIC.
NETWALL = ["netwall", "netwall_tls", "netwall_unix", "netwall_wg"]


def passes(pattern):
    """The JSON outputs of every pass matching `pattern` in raw/, in pass order; unreadable or
    missing ones are left out."""
    for f in sorted(glob(os.path.join(raw, pattern))):
        try:
            with open(f) as fh:
                yield json.load(fh)
        except (OSError, ValueError):
            continue


def oha(scenario, path):
    """Median figures of the oha runs of one scenario and path, or None."""
    runs = []
    for d in passes(f"{scenario}.{path}.*.json"):
        s, p = d.get("summary", {}), d.get("latencyPercentiles", {})
        codes = d.get("statusCodeDistribution", {})
        ok = sum(v for k, v in codes.items() if k.startswith("2"))
        # oha cancels the requests in flight when its time is up; those are not failures.
        errors = {k: v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
        total = sum(codes.values()) + sum(errors.values())
        runs.append({
            "rps": s.get("requestsPerSec") or 0.0,
            "p50_ms": (p.get("p50") or 0.0) * 1e3,
            "p99_ms": (p.get("p99") or 0.0) * 1e3,
            "p999_ms": (p.get("p99.9") or 0.0) * 1e3,
            "success": ok / total if total else 0.0,
            "failures": {**errors, **{k: v for k, v in codes.items() if not k.startswith("2")}},
        })
    if not runs:
        return None
    failures = {}
    for r in runs:
        for k, v in r.pop("failures").items():
            failures[k] = failures.get(k, 0) + v
    return {**{k: statistics.median(r[k] for r in runs) for k in runs[0]}, "failures": failures}


def speed(kind, path):
    vals = []
    for f in glob(os.path.join(raw, f"{kind}.{path}.*.txt")):
        try:
            with open(f) as fh:
                vals.append(float(fh.read().strip()) / (1024 * 1024))
        except (OSError, ValueError):
            pass
    return statistics.median(vals) if vals else None


def ws(path):
    """Median figures of the WebSocket runs of one path, or None."""
    runs = []
    for d in passes(f"ws.{path}.*.json"):
        mem = d["idle"]["memory"]
        runs.append({
            "open": d["idle"]["open"],
            "active": d["active"]["connections"],
            "open_errors": d["idle"]["open_errors"],
            "bytes_per_conn": sum(m["bytes_per_item"] for m in mem.values()),
            "gateway_bytes_per_conn": mem.get("gateway", {}).get("bytes_per_item"),
            "connector_bytes_per_conn": mem.get("connector", {}).get("bytes_per_item"),
            "rtt_p50_ms": d["active"]["p50_ms"],
            "rtt_p99_ms": d["active"]["p99_ms"],
            "rtt_p999_ms": d["active"]["p999_ms"],
            "sent": d["active"]["sent"],
            "answered": d["active"]["answered"],
            "lost": d["active"]["connections_lost"],
        })
    if not runs:
        return None
    med = {k: (statistics.median(r[k] for r in runs) if runs[0][k] is not None else None) for k in runs[0]}
    # Memory is taken from the first pass: later passes reuse memory the allocator kept from the
    # connections of earlier ones, so their growth understates what a connection costs.
    for k in ["bytes_per_conn", "gateway_bytes_per_conn", "connector_bytes_per_conn"]:
        med[k] = runs[0][k]
    return med


results = {}
results["ws"] = {p: ws(p) for p in PATHS}
try:
    with open(os.path.join(raw, "tunnels.json")) as fh:
        tunnels = json.load(fh)
except (OSError, ValueError):
    tunnels = None
for scenario in ["small_h1", "small_h2", "fixed_rate", "handshakes", "handshakes_fresh"]:
    results[scenario] = {p: oha(scenario, p) for p in PATHS}
for kind in ["bulk_down", "bulk_up"]:
    results[kind] = {p: speed(kind, p) for p in PATHS}
with open(os.path.join(raw, "memory.json")) as fh:
    memory = json.load(fh)


def mux(kind):
    """Median figures of the multiplexer runs of one kind, or None."""
    runs = list(passes(f"mux.{kind}.*.json"))
    if not runs:
        return None
    return {k: statistics.median(r[k] for r in runs) for k in ["rps", "p50_ms", "p99_ms", "bulk_mib_per_s"]}


results["mux"] = {k: mux(k) for k in ["yamux", "h2"]}

# Raw TCP services: the paths that carry them, netwall_mtls being the QUIC gateway's route that
# requires a client certificate.
TCP_PATHS = ["direct", "rathole", "netwall", "netwall_tls", "netwall_unix", "netwall_wg", "netwall_mtls"]


def redis(kind, path):
    """Median requests per second of SET and GET in the redis-benchmark runs, or None each."""
    by_test = {}
    for f in sorted(glob(os.path.join(raw, f"{kind}.{path}.*.csv"))):
        try:
            with open(f) as fh:
                for row in csv.DictReader(fh):
                    by_test.setdefault(row["test"], []).append(float(row["rps"]))
        except (OSError, ValueError, KeyError):
            continue
    return {t: (statistics.median(by_test[t]) if by_test.get(t) else None) for t in ["SET", "GET"]}


def tcp_copy(direction, path):
    vals = [d["mib_per_s"] for d in passes(f"tcp_{direction}.{path}.*.json")]
    return statistics.median(vals) if vals else None


results["tcp"] = {
    p: {
        "redis": redis("redis", p),
        "redis_pipelined": redis("redis_pipelined", p),
        "copy_down_mib_per_s": tcp_copy("down", p),
        "copy_up_mib_per_s": tcp_copy("up", p),
    }
    for p in TCP_PATHS
}


ROLES = ["edge", "inner", "backend"]


def cpu_seconds(name):
    """CPU seconds (user + system) each role on the path spent during one measurement (raw/name.cpu,
    written by ops/bench: `hz N`, then `role ticks_before ticks_after` per process), or None."""
    try:
        with open(os.path.join(raw, f"{name}.cpu")) as fh:
            lines = [l.split() for l in fh if l.strip()]
    except OSError:
        return None
    hz = next((float(l[1]) for l in lines if l[0] == "hz"), 100.0)
    used = {}
    for l in lines:
        if l[0] != "hz" and len(l) == 3:
            used[l[0]] = used.get(l[0], 0.0) + (float(l[2]) - float(l[1])) / hz
    return used or None


def oha_count(name):
    """Requests answered in one oha measurement, or None."""
    try:
        with open(os.path.join(raw, f"{name}.json")) as fh:
            d = json.load(fh)
    except (OSError, ValueError):
        return None
    return sum(d.get("statusCodeDistribution", {}).values()) or None


def cpu_per_unit(prefix, paths, units, scale):
    """For each path, the median over passes of each role's CPU time per unit of work (units(name)
    gives the units one measurement did), times scale (1e6: µs; 1e9: ns), with a total."""
    table = {}
    for p in paths:
        per_pass = []
        for f in sorted(glob(os.path.join(raw, f"{prefix}.{p}.*.cpu"))):
            name = os.path.basename(f)[:-4]
            used, n = cpu_seconds(name), units(name)
            if used and n:
                row = {r: used[r] * scale / n for r in used}
                row["total"] = sum(used.values()) * scale / n
                per_pass.append(row)
        table[p] = ({k: statistics.median(r.get(k, 0.0) for r in per_pass) for k in per_pass[0]}
                    if per_pass else None)
    return table


bulk_bytes = int(bulk_mib) * 1024 * 1024
CPU_ROWS = [  # (key, label, unit, paths, units, scale)
    ("small_h1", f"small responses, h1, {concurrency} conns", "µs/req", PATHS, oha_count, 1e6),
    ("small_h2", "small responses, h2, 8x8 streams", "µs/req", PATHS, oha_count, 1e6),
    ("fixed_rate", f"fixed {fixed_rate} req/s", "µs/req", PATHS, oha_count, 1e6),
    ("handshakes", "new connections (TLS handshake + request)", "µs/conn", PATHS, oha_count, 1e6),
    ("handshakes_fresh", "new clients, X25519, full handshakes", "µs/conn", PATHS, oha_count, 1e6),
    ("bulk_down", f"bulk download {bulk_mib} MiB", "ns/byte", PATHS, lambda _n: bulk_bytes, 1e9),
    ("bulk_up", f"bulk upload {bulk_mib} MiB", "ns/byte", PATHS, lambda _n: bulk_bytes, 1e9),
]
TCP_COPY_PATHS = [p for p in TCP_PATHS if p != "netwall_mtls"]
CPU_ROWS += [
    ("redis", "redis-benchmark SET and GET", "µs/req", TCP_PATHS, lambda _n: 2 * int(redis_requests), 1e6),
    ("redis_pipelined", f"redis-benchmark, pipeline {redis_pipeline}", "µs/req", TCP_PATHS,
     lambda _n: 20 * int(redis_requests), 1e6),
    # The client-certificate route carries no bulk copy.
    ("tcp_down", f"TCP copy {bulk_mib} MiB, service to client", "ns/byte", TCP_COPY_PATHS, lambda _n: bulk_bytes, 1e9),
    ("tcp_up", f"TCP copy {bulk_mib} MiB, client to service", "ns/byte", TCP_COPY_PATHS, lambda _n: bulk_bytes, 1e9),
]
results["cpu"] = {key: {"unit": unit, "paths": cpu_per_unit(key, paths, units, scale)}
                  for key, _label, unit, paths, units, scale in CPU_ROWS}


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


machine = {
    "cpus": os.cpu_count(),
    "cpu": cpu_model(),
    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "kernel": platform.release(),
    "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
    "pinning": "none: every process shares all cores (a 2-core machine cannot spare one per process)",
    "backend": "netwall-sample (hyper HTTP/1.1) on loopback",
    "rathole": "plain TCP forwarding, no TLS on either leg",
    "nginx": "TLS 1.3, HTTP/1.1 and HTTP/2, keep-alive upstream",
    "netwall": "TLS 1.3 at the gateway, QUIC tunnel, connector, pooled HTTP/1.1 to the backend",
    "netwall_tls": "the same over a TLS 1.3/TCP tunnel to the gateway's HTTPS port (HTTP/2 streams)",
    "netwall_unix": "the same over a Unix-socket tunnel (HTTP/2 streams, no TLS on the tunnel)",
    "netwall_wg": "the same over WireGuard (boringtun, ChaCha20-Poly1305 per packet; MTU 8,920 on loopback, 1,420 behind a 1,500-byte link) with a userspace "
                  "TCP/IP stack (smoltcp) on both ends and HTTP/2 streams inside",
}

rows = []  # (scenario, metric, unit, higher_is_better, values by path)
def add(label, scenario, key, unit, higher):
    vals = {p: (results[scenario][p] or {}).get(key) if results[scenario][p] else None for p in PATHS}
    rows.append((label, unit, higher, vals))

add(f"small responses, h1, {concurrency} conns: throughput", "small_h1", "rps", "req/s", True)
add("small responses, h1: p50", "small_h1", "p50_ms", "ms", False)
add("small responses, h1: p99", "small_h1", "p99_ms", "ms", False)
add("small responses, h2, 8x8 streams: throughput", "small_h2", "rps", "req/s", True)
add("small responses, h2: p99", "small_h2", "p99_ms", "ms", False)
add(f"fixed {fixed_rate} req/s: p50", "fixed_rate", "p50_ms", "ms", False)
add(f"fixed {fixed_rate} req/s: p99", "fixed_rate", "p99_ms", "ms", False)
add(f"fixed {fixed_rate} req/s: p99.9", "fixed_rate", "p999_ms", "ms", False)
add("new connections (TLS handshake + request)", "handshakes", "rps", "conn/s", True)
add("new clients, X25519, full handshakes (see note)", "handshakes_fresh", "rps", "conn/s", True)
rows.append((f"bulk download {bulk_mib} MiB", "MiB/s", True, results["bulk_down"]))
rows.append((f"bulk upload {bulk_mib} MiB", "MiB/s", True, results["bulk_up"]))
ws_any = next((r for r in results["ws"].values() if r), None)
if ws_any:
    add("idle WebSockets held open", "ws", "open", "conns", True)
    add("idle WebSocket: resident memory per connection (see note)", "ws", "bytes_per_conn", "bytes", False)
    add(f"WebSocket round trip, {ws_any['active']:,.0f} active at 2 msg/s each: p50", "ws", "rtt_p50_ms", "ms", False)
    add("WebSocket round trip: p99", "ws", "rtt_p99_ms", "ms", False)
    add("WebSocket round trip: p99.9", "ws", "rtt_p999_ms", "ms", False)
if tunnels:
    per = tunnels["memory"]["gateway"]["bytes_per_item"]
    rows.append((f"{tunnels['tunnels']} connectors on one gateway: gateway memory per tunnel", "bytes", False,
                 {p: (per if p == "netwall" else None) for p in PATHS}))


def fmt(v):
    if v is None:
        return "n/a"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "n/a"


lines = [
    f"| scenario | unit | {' | '.join(PATHS)} | netwall/direct | netwall/rathole | tls/quic | unix/quic | wg/quic |",
    "| --- | --- | " + " | ".join("---:" for _ in PATHS) + " | ---: | ---: | ---: | ---: | ---: |",
]
for label, unit, _higher, vals in rows:
    lines.append(f"| {label} | {unit} | " + " | ".join(fmt(vals[p]) for p in PATHS)
                 + f" | {ratio(vals['netwall'], vals['direct'])} | {ratio(vals['netwall'], vals['rathole'])}"
                 + f" | {ratio(vals['netwall_tls'], vals['netwall'])} | {ratio(vals['netwall_unix'], vals['netwall'])}"
                 + f" | {ratio(vals['netwall_wg'], vals['netwall'])} |")
fixed = results["fixed_rate"]
added = {}
if fixed["netwall"] and fixed["direct"]:
    for k in ["p50_ms", "p99_ms", "p999_ms"]:
        added[k] = fixed["netwall"][k] - fixed["direct"][k]
summary = [
    f"Mode: {mode}, {repeats} pass(es), medians; {duration} per load measurement. Machine: {machine['cpus']} CPUs ({machine['cpu']}), "
    f"{machine['memory_gib']} GiB, {machine['rustc']}. No CPU pinning. netwall gateways and connectors run "
    f"`workers = {workers}`.",
    f"Paths: direct = {machine['backend']}; nginx = {machine['nginx']}; rathole = {machine['rathole']}; netwall = {machine['netwall']}; "
    f"netwall_tls = {machine['netwall_tls']}; netwall_unix = {machine['netwall_unix']}; "
    f"netwall_wg = {machine['netwall_wg']}.",
    f"Latency added by netwall over direct at {fixed_rate} req/s: "
    + (", ".join(f"{k[:-3].replace('p999', 'p99.9')} {v:+.2f} ms" for k, v in added.items()) if added else "n/a") + ".",
    f"Peak resident memory during the run: gateway {int(memory['gateway_peak_kib']) // 1024} MiB, connector {int(memory['connector_peak_kib']) // 1024} MiB.",
    "Fixed-rate percentiles include each path's 64 connection setups (the TLS paths pay handshakes); in quick mode they "
    "weigh on p99, in a full run only on p99.9.",
    "New connections: oha (rustls) offers the X25519MLKEM768 post-quantum hybrid first, which netwall's gateway "
    "accepts and nginx (OpenSSL 3.0) does not know, so netwall's handshakes do that extra key exchange (about 15 µs "
    "per side, ops/crypto-ab) and nginx's are X25519 only; and its 16 connections share one ticket cache of eight "
    "tickets, so how many resume depends on how they bunch up. New clients (netwall-loadgen handshakes --sessions "
    "fresh) compare like for like: X25519 offered alone, no resumption, a full handshake with certificate every time.",
    "Idle WebSocket memory (first pass) is the resident memory gained per open connection by the processes on the path: "
    "direct = the backend itself; nginx = its workers; rathole = server + client; netwall = gateway + connector"
    + (f" (gateway {results['ws']['netwall']['gateway_bytes_per_conn']:,.0f} + connector "
       f"{results['ws']['netwall']['connector_bytes_per_conn']:,.0f} bytes)" if results["ws"].get("netwall") else "")
    + ". Plain-TCP paths (direct, rathole) carry no TLS state; nginx and netwall terminate TLS.",
]
if tunnels:
    summary.append(f"Many tunnels: {tunnels['tunnels']} connectors (one tunnel each) connected in {tunnels['connect_seconds']:.1f} s; "
                   f"{tunnels['answered']} of them answered a request through the gateway"
                   + (f"; failures: {'; '.join(tunnels['failures'])}" if tunnels["failures"] else "") + ".")
mux_lines = []
if any(results["mux"].values()):
    mux_lines = [
        "| multiplexer (TLS 1.3 loopback, one process, accepting side opens) | small req/s | p50 ms | p99 ms | bulk MiB/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for k, r in results["mux"].items():
        r = r or {}
        mux_lines.append(f"| {k} | {fmt(r.get('rps'))} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p99_ms'))} | {fmt(r.get('bulk_mib_per_s'))} |")
tcp_rows = []  # (label, unit, values by path)
for kind, what in [("redis", f"{int(redis_requests):,} requests, 50 conns"),
                   ("redis_pipelined", f"{10 * int(redis_requests):,} requests, 50 conns, pipeline {redis_pipeline}")]:
    for t in ["SET", "GET"]:
        tcp_rows.append((f"redis-benchmark {t} ({what})", "req/s", {p: results["tcp"][p][kind][t] for p in TCP_PATHS}))
tcp_rows.append((f"TCP copy {bulk_mib} MiB, service to client", "MiB/s", {p: results["tcp"][p]["copy_down_mib_per_s"] for p in TCP_PATHS}))
tcp_rows.append((f"TCP copy {bulk_mib} MiB, client to service", "MiB/s", {p: results["tcp"][p]["copy_up_mib_per_s"] for p in TCP_PATHS}))
tcp_lines = [
    f"| TCP service | unit | {' | '.join(TCP_PATHS)} | netwall/direct | netwall/rathole | tls/quic | unix/quic | wg/quic | mtls/quic |",
    "| --- | --- | " + " | ".join("---:" for _ in TCP_PATHS) + " | ---: | ---: | ---: | ---: | ---: | ---: |",
]
for label, unit, vals in tcp_rows:
    tcp_lines.append(f"| {label} | {unit} | " + " | ".join(fmt(vals[p]) for p in TCP_PATHS)
                     + f" | {ratio(vals['netwall'], vals['direct'])} | {ratio(vals['netwall'], vals['rathole'])}"
                     + f" | {ratio(vals['netwall_tls'], vals['netwall'])} | {ratio(vals['netwall_unix'], vals['netwall'])}"
                     + f" | {ratio(vals['netwall_wg'], vals['netwall'])} | {ratio(vals['netwall_mtls'], vals['netwall'])} |")
tcp_note = ("TCP services: Redis 7 (redis-benchmark, `-t set,get`) and a bulk copy against netwall-loadgen's TCP sink. "
            "direct = the server on loopback; rathole = plain TCP forwarding; netwall = a `[[tcp_route]]` admitting "
            "127.0.0.1 by address (no TLS from the client) over each tunnel transport; netwall_mtls = the QUIC "
            "gateway's route that requires a client certificate (TLS 1.3 from the client to the edge; no bulk copy).")
CPU_PATHS = PATHS + ["netwall_mtls"]


def cpu_cell(r):
    if not r:
        return "n/a"
    return " / ".join(f"{r[k]:.1f}" if k in r else "–" for k in ROLES) + f" = {r['total']:.1f}"


cpu_lines = [
    "CPU time per unit of work of each process on the path, as edge / inner / backend = total "
    "(edge: nginx's workers, rathole's server, netwall's gateway; inner: rathole's client, netwall's "
    "connector; backend: the service). From /proc/<pid>/stat (user + system, every thread) before "
    "and after each measurement; the load generator is not counted.",
    "",
    f"| scenario | unit | {' | '.join(CPU_PATHS)} |",
    "| --- | --- | " + " | ".join("---:" for _ in CPU_PATHS) + " |",
]
for key, label, unit, paths, _units, _scale in CPU_ROWS:
    table = results["cpu"][key]["paths"]
    cpu_lines.append(f"| {label} | {unit} | " + " | ".join(cpu_cell(table.get(p)) if p in paths else "" for p in CPU_PATHS) + " |")
report_md = ("\n".join(lines) + "\n\n" + "\n\n".join(summary) + "\n"
             + "\n" + "\n".join(cpu_lines) + "\n"
             + "\n" + "\n".join(tcp_lines) + "\n\n" + tcp_note + "\n"
             + ("\n" + "\n".join(mux_lines) + "\n" if mux_lines else ""))
with open(os.path.join(out, "report.md"), "w") as fh:
    fh.write(report_md)
with open(os.path.join(out, "report.json"), "w") as fh:
    json.dump({"machine": machine, "mode": mode, "repeats": int(repeats), "workers": int(workers), "results": results,
               "memory": memory, "latency_added_over_direct_ms": added, "tunnels": tunnels}, fh, indent=1)

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    charts = [("small_h1", "rps", "h1 small responses (req/s)"), ("fixed_rate", "p99_ms", f"p99 at {fixed_rate} req/s (ms)"),
              ("bulk_down", None, "bulk download (MiB/s)"), ("bulk_up", None, "bulk upload (MiB/s)")]
    fig, axes = plt.subplots(1, len(charts), figsize=(16, 4))
    for ax, (scenario, key, title) in zip(axes, charts):
        vals = [((results[scenario][p] or {}).get(key) if key else results[scenario][p]) or 0 for p in PATHS]
        ax.bar(PATHS, vals, color=["#888", "#4a7", "#c84", "#37c", "#5ae", "#8cf"])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "report.png"), dpi=100)
except ImportError:
    print("bench: matplotlib missing; no chart", file=sys.stderr)

print(report_md)
print(f"bench: report in {out}/report.md, report.json, report.png")
