#!/usr/bin/env python3
"""Medians of the runs in a bench/run.sh results folder, as a Markdown table.

    bench/summarize.py bench/results/<time>      # the table
    bench/summarize.py --line FILE.json          # one run, one line
"""
import glob
import json
import os
import statistics
import sys

FIELDS = [
    ("deliveries/s", lambda r: r.get("deliveries_per_s"), "{:,.0f}"),
    ("lost", lambda r: r.get("lost"), "{:,.0f}"),
    ("CPU µs/delivery", lambda r: r.get("cpu_us_per_delivery"), "{:.3f}"),
    ("p50 ms", lambda r: lat(r, "p50_us"), "{:.2f}"),
    ("p99 ms", lambda r: lat(r, "p99_us"), "{:.2f}"),
    ("p99.9 ms", lambda r: lat(r, "p999_us"), "{:.2f}"),
    ("max ms", lambda r: lat(r, "max_us"), "{:.2f}"),
    ("RSS MiB", lambda r: (r.get("server_rss_kib") or 0) / 1024 or None, "{:.1f}"),
    ("KiB/conn", lambda r: r.get("rss_per_connection_kib"), "{:.2f}"),
    ("idle CPU %", lambda r: r.get("idle_cpu_pct"), "{:.1f}"),
    ("connects/s", lambda r: r.get("connects_per_s"), "{:,.0f}"),
    ("CPU µs/connect", lambda r: r.get("cpu_us_per_connect"), "{:.0f}"),
    ("handshake p99 ms", lambda r: hs(r, "p99_us"), "{:.2f}"),
    ("conn errors", lambda r: r.get("connect_errors"), "{:,.0f}"),
    ("disconnects", lambda r: r.get("disconnects"), "{:,.0f}"),
    ("generator %", lambda r: r.get("generator_cpu_pct"), "{:.0f}"),
]


def lat(r, key):
    l = r.get("latency")
    return l[key] / 1000 if l and l.get("count") else None


def hs(r, key):
    l = r.get("handshake")
    return l[key] / 1000 if l and l.get("count") else None


def load(path):
    """A run's report; None while it is still being written."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def line(path):
    with open(path) as f:
        r = json.load(f)
    if r.get("failed"):
        print(f"{os.path.basename(path)}: FAILED")
        return
    parts = [os.path.basename(path)]
    for name, get, fmt in FIELDS:
        v = get(r)
        if v is not None:
            parts.append(f"{name} {fmt.format(v)}")
    print(" | ".join(parts))


def table(folder):
    groups = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        name, server, _run, _ = os.path.basename(path).split(".")
        r = load(path)
        if r is None:
            continue
        groups.setdefault((name, server), []).append(r)
    used = [
        (n, g, fmt)
        for n, g, fmt in FIELDS
        if any(g(r) is not None for rs in groups.values() for r in rs if not r.get("failed"))
    ]
    print("| case | server | runs | " + " | ".join(n for n, _, _ in used) + " |")
    print("|---|---|---|" + "---|" * len(used))
    for (name, server), runs in groups.items():
        ok = [r for r in runs if not r.get("failed")]
        cells = []
        for _, get, fmt in used:
            m = median([get(r) for r in ok])
            cells.append("" if m is None else fmt.format(m))
        failed = len(runs) - len(ok)
        count = f"{len(ok)}" + (f" ({failed} failed)" if failed else "")
        print(f"| {name} | {server} | {count} | " + " | ".join(cells) + " |")


# (column, value, True when higher is better)
RATIOS = [
    ("deliveries/s Tidings/peer", lambda r: r.get("deliveries_per_s"), True),
    ("CPU µs/delivery Tidings/peer", lambda r: r.get("cpu_us_per_delivery"), False),
    ("p99 Tidings/peer", lambda r: lat(r, "p99_us"), False),
    ("KiB/conn Tidings/peer", lambda r: r.get("rss_per_connection_kib"), False),
    ("connects/s Tidings/peer", lambda r: r.get("connects_per_s"), True),
    ("CPU µs/connect Tidings/peer", lambda r: r.get("cpu_us_per_connect"), False),
]

# The floor servers of bench/peers/floor; "floor (best)" in the ratio table is,
# run by run and measure by measure, the best of them.
FLOOR_PREFIX = "floor-"
BEST_FLOOR = "floor (best)"


def ratios(folder):
    """Tidings against each peer, run by run (same run = same machine weather),
    then the median of those ratios."""
    runs = {}
    for path in glob.glob(os.path.join(folder, "*.json")):
        name, server, run, _ = os.path.basename(path).split(".")
        r = load(path)
        if r is not None and not r.get("failed"):
            runs.setdefault(name, {}).setdefault(server, {})[run] = r
    print()
    print("| case | peer | " + " | ".join(n for n, _, _ in RATIOS) + " |")
    print("|---|---|" + "---|" * len(RATIOS))
    for name, servers in sorted(runs.items()):
        ours = servers.get("tidings")
        if not ours:
            continue
        # Tidings-only variants of a case (fanout-client: Tidings publishing
        # through a client, as the peers do) against the peers of the case.
        base = name.rsplit("-", 1)[0]
        if len(servers) == 1 and base != name and base in runs:
            servers = {**runs[base], "tidings": ours}
        floors = [s for s in servers if s.startswith(FLOOR_PREFIX)]
        peers = sorted(s for s in servers if s != "tidings")
        if floors:
            peers.append(BEST_FLOOR)
        for peer in peers:
            cells = []
            for _, get, higher in RATIOS:
                rs = []
                for k in ours:
                    if peer == BEST_FLOOR:
                        vs = [get(servers[f][k]) for f in floors if k in servers[f]]
                        vs = [v for v in vs if v]
                        theirs = (max if higher else min)(vs) if vs else None
                    else:
                        theirs = get(servers[peer][k]) if k in servers[peer] else None
                    if get(ours[k]) and theirs:
                        rs.append(get(ours[k]) / theirs)
                cells.append(f"{statistics.median(rs):.2f}" if rs else "")
            print(f"| {name} | {peer} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--line":
        line(sys.argv[2])
    elif len(sys.argv) == 2:
        table(sys.argv[1])
        ratios(sys.argv[1])
    else:
        sys.exit(__doc__)
