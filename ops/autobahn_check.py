#!/usr/bin/env python3
"""Judge an Autobahn fuzzing-client report: print a summary, exit 1 on any FAILED case or any
close that is not clean and expected.

Usage: ops/autobahn_check.py target/autobahn/report/index.json
"""
import collections
import json
import sys

# Close outcomes that are fine: the expected code, or a case Autobahn only informs about.
GOOD_CLOSE = {"OK", "INFORMATIONAL", "UNIMPLEMENTED"}
# Case outcomes that are fine (NON-STRICT: allowed by the RFC, though not its strictest reading).
GOOD_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}


def case_key(case_id):
    return [int(p) for p in case_id.split(".")]


def main(path):
    with open(path) as f:
        index = json.load(f)
    bad = []
    summary = collections.Counter()
    for agent, cases in index.items():
        for case_id in sorted(cases, key=case_key):
            r = cases[case_id]
            summary[r["behavior"]] += 1
            if r["behaviorClose"] not in GOOD_CLOSE:
                summary["unclean or unexpected close"] += 1
            if r["behavior"] not in GOOD_BEHAVIOR or r["behaviorClose"] not in GOOD_CLOSE:
                bad.append((agent, case_id, r["behavior"], r["behaviorClose"], r.get("remoteCloseCode")))
    total = sum(v for k, v in summary.items() if k != "unclean or unexpected close")
    print("autobahn: %d cases: %s" % (total, ", ".join("%s %d" % kv for kv in sorted(summary.items()))))
    for agent, case_id, behavior, close, code in bad:
        print("  %s %s: behavior %s, close %s (remote code %s)" % (agent, case_id, behavior, close, code))
    if bad:
        print("autobahn: %d case(s) failed" % len(bad))
        return 1
    print("autobahn: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
