#!/usr/bin/env python3
"""Check that an `ops/bench` run produced a well-formed report: every scenario has a row, every
row a figure for each netwall transport, and every netwall path carried its load without errors.

    ops/bench_smoke.py target/bench
"""
import json
import os
import sys

if len(sys.argv) == 3 and sys.argv[1] == "--shared":
    # ops/bench --shared: every pass ran and every pushed message reached every client.
    with open(sys.argv[2]) as fh:
        shared = json.load(fh)
    rl, fan = shared["rate_limit"], shared["fanout"]
    bad = [k for k in ["none_rps", "memory_rps", "none_on_redis_gateway_rps", "redis_rps"] if not rl[k] > 0]
    if fan["received"] != fan["expected"]:
        bad.append(f"fan-out delivered {fan['received']} of {fan['expected']}")
    if not shared["redis_pubsub"]["samples"] > 0:
        bad.append("no Redis pub/sub sample")
    if bad:
        sys.exit("bench smoke (shared): " + "; ".join(bad))
    print("bench smoke (shared): every pass ran, every message arrived")
    sys.exit(0)

out = sys.argv[1]
with open(os.path.join(out, "report.json")) as fh:
    report = json.load(fh)
with open(os.path.join(out, "report.md")) as fh:
    # The main table: the first block of table lines (the multiplexer table comes later).
    table = []
    for line in fh.read().splitlines():
        if line.startswith("| "):
            table.append(line)
        elif table:
            break
for name in ["report.png"]:
    if not os.path.getsize(os.path.join(out, name)):
        sys.exit(f"bench smoke: {name} is empty")

problems = []
results = report["results"]
for path in ["netwall", "netwall_tls", "netwall_unix", "netwall_wg"]:
    for scenario in ["small_h1", "small_h2", "fixed_rate", "handshakes", "handshakes_fresh"]:
        r = results[scenario][path]
        if not r or not r["rps"] > 0:
            problems.append(f"{scenario}: no {path} throughput")
        elif r["success"] < 1.0:
            problems.append(
                f"{scenario}: {100 * (1 - r['success']):.2f}% of {path} requests failed: {r.get('failures')}"
            )
    for kind in ["bulk_down", "bulk_up"]:
        if not (results[kind][path] or 0) > 0:
            problems.append(f"{kind}: no {path} figure")
    ws = results["ws"][path]
    if not ws or ws["open_errors"] or ws["lost"] or ws["answered"] < 0.99 * ws["sent"]:
        problems.append(f"WebSockets through {path}: {ws}")
tunnels = report.get("tunnels")
if not tunnels or tunnels["answered"] != tunnels["tunnels"]:
    problems.append(f"many tunnels: {tunnels}")
for kind in ["yamux", "h2"]:
    m = results.get("mux", {}).get(kind)
    if not m or not m["rps"] > 0 or not m["bulk_mib_per_s"] > 0:
        problems.append(f"multiplexer {kind}: {m}")
for path in ["netwall", "netwall_tls", "netwall_unix", "netwall_wg", "netwall_mtls"]:
    t = results["tcp"][path]
    for kind in ["redis", "redis_pipelined"]:
        for test in ["SET", "GET"]:
            if not (t[kind][test] or 0) > 0:
                problems.append(f"TCP: no {kind} {test} figure through {path}")
    if path != "netwall_mtls":
        for k in ["copy_down_mib_per_s", "copy_up_mib_per_s"]:
            if not (t[k] or 0) > 0:
                problems.append(f"TCP: no {k} through {path}")
# CPU per unit of work: every netwall path's gateway and connector measured in every scenario.
for key, row in results["cpu"].items():
    for path, r in row["paths"].items():
        if path.startswith("netwall") and not (r and r.get("edge", 0) > 0 and r.get("inner", 0) > 0):
            problems.append(f"CPU {key}: no gateway and connector figures through {path}: {r}")
header, rows = table[0], table[2:]
columns = [c.strip() for c in header.strip("|").split("|")]
netwall = columns.index("netwall")
transports = [columns.index(c) for c in ["netwall_tls", "netwall_unix", "netwall_wg"]]
for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    if len(cells) != len(columns):
        problems.append(f"malformed row: {row}")
    elif cells[netwall] == "n/a":
        problems.append(f"no netwall figure: {row}")
    elif "connectors on one gateway" not in row and any(cells[i] == "n/a" for i in transports):
        problems.append(f"no figure for every transport: {row}")
if len(rows) < 17:
    problems.append(f"{len(rows)} rows in the table, expected 17")
if problems:
    sys.exit("bench smoke: " + "\n  ".join(problems))
print(f"bench smoke: ok ({len(rows)} scenarios, every one measured through netwall)")
