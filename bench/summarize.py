"""Print the results table of bench/load.sh from its results.tsv and the raw wrk and oha output.

Each row of results.tsv is one measured series, tab-separated:
kind (closed|open), repeat, target (gateway|fake), mode, load (c16, q500, ...),
CPU ticks of the target process over the measured window, CPU ticks of all other processes
(neither the gateway, nginx nor the load generator), clock ticks per second, window length in
seconds, raw output file, warm-up output file (or -).

Figures are medians over repeats, with the range in brackets when there is more than one repeat.
Added latency is computed per repeat (gateway percentile minus the fake's at the same rate, in the
same repeat) and then summarized the same way.
"""

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict

# Targets this benchmark reports against.
TARGET_ADDED_P99_MS = {30: 1.0, 500: 2.0, 2000: 1.0}
TARGET_MESSAGES_PER_S = 5000
TARGET_CPU_MS_PER_MESSAGE = 0.3
TARGET_RSS_AFTER_LOAD_MB = 40

# Other processes using more than this share of one CPU during a window may have slowed it down.
OTHER_CPU_WARNING_SHARE = 0.10

WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk_duration_ms(text):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"invalid wrk duration `{text}`")
    return float(match.group(1)) * WRK_UNITS_MS[match.group(2)]


def parse_wrk(path):
    """Return requests, requests/s, p50 and p99 in ms, and failed requests of one wrk run."""
    with open(path, encoding="utf-8") as file:
        text = file.read()
    requests = re.search(r"^\s*(\d+) requests in", text, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not requests or not rate:
        raise ValueError(f"{path}: no wrk summary found")
    percentiles = {
        int(p): parse_wrk_duration_ms(v)
        for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    failed = int(non_2xx.group(1)) if non_2xx else 0
    if socket:
        failed += sum(int(n) for n in socket.groups())
    return {
        "requests": int(requests.group(1)),
        "rate": float(rate.group(1)),
        "p50": percentiles.get(50),
        "p99": percentiles.get(99),
        "failed": failed,
    }


def parse_oha(path):
    """Return requests, requests/s, p50 and p99 in ms, and failed requests of one oha run."""
    with open(path, encoding="utf-8") as file:
        result = json.load(file)
    statuses = {int(code): n for code, n in result["statusCodeDistribution"].items()}
    errors = sum(result["errorDistribution"].values())
    requests = sum(statuses.values())
    failed = errors + sum(n for code, n in statuses.items() if not 200 <= code < 300)
    latency = result["metrics"]["latency_ms"]
    return {
        "requests": requests,
        "rate": result["summary"]["requestsPerSec"],
        "p50": latency["p50"],
        "p99": latency["p99"],
        "failed": failed,
    }


def load_rows(path):
    rows = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            fields = line.rstrip("\n").split("\t")
            kind, repeat, target, mode, load = fields[:5]
            target_ticks, other_ticks, hz, window_s = (int(f) for f in fields[5:9])
            raw, warmup = fields[9:]
            result = parse_wrk(raw) if kind == "closed" else parse_oha(raw)
            if warmup != "-":
                result["failed"] += parse_wrk(warmup)["failed"]
            cpu_s = target_ticks / hz
            result["cpu_ms_per_request"] = (
                cpu_s * 1000 / result["requests"] if result["requests"] else None
            )
            result["other_cpu_share"] = other_ticks / hz / window_s
            result.update(
                kind=kind, repeat=int(repeat), target=target, mode=mode, load=load
            )
            rows.append(result)
    return rows


def summary(values, digits):
    """Format the median of `values`, with [min–max] when there are several."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    median = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1:
        return median
    return f"{median} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def print_table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def closed_loop_table(rows):
    groups = defaultdict(list)
    for row in rows:
        if row["kind"] == "closed":
            groups[(row["target"], row["mode"], row["load"])].append(row)
    table = []
    for (target, mode, load), runs in groups.items():
        table.append(
            [
                f"{target} ({mode})",
                load,
                summary([r["rate"] for r in runs], 0),
                summary([r["p50"] for r in runs], 2),
                summary([r["p99"] for r in runs], 2),
                str(sum(r["failed"] for r in runs)),
                summary([r["cpu_ms_per_request"] for r in runs], 3),
                summary([100 * r["other_cpu_share"] for r in runs], 0),
            ]
        )
    print("Closed loop (wrk -t2, --timeout 10s), per series:")
    print_table(
        [
            "target",
            "connections",
            "req/s",
            "p50 ms",
            "p99 ms",
            "failed",
            "target CPU ms/request",
            "other CPU %",
        ],
        table,
    )
    return groups


def open_loop_table(rows):
    by_key = {
        (r["target"], int(r["load"][1:]), r["repeat"]): r
        for r in rows
        if r["kind"] == "open"
    }
    rates = sorted({rate for _, rate, _ in by_key})
    repeats = sorted({repeat for _, _, repeat in by_key})
    added = {}
    table = []
    for rate in rates:
        pairs = [
            (by_key.get(("fake", rate, n)), by_key.get(("gateway", rate, n)))
            for n in repeats
        ]
        pairs = [(f, g) for f, g in pairs if f and g]
        fakes = [f for f, _ in pairs]
        gateways = [g for _, g in pairs]
        added_p50 = [g["p50"] - f["p50"] for f, g in pairs]
        added_p99 = [g["p99"] - f["p99"] for f, g in pairs]
        added[rate] = added_p99
        table.append(
            [
                str(rate),
                summary([g["rate"] for g in gateways], 0),
                summary([f["p50"] for f in fakes], 3),
                summary([f["p99"] for f in fakes], 3),
                summary([g["p50"] for g in gateways], 3),
                summary([g["p99"] for g in gateways], 3),
                summary(added_p50, 3),
                summary(added_p99, 3),
                str(sum(g["failed"] + f["failed"] for f, g in pairs)),
                summary([g["cpu_ms_per_request"] for g in gateways], 3),
                summary([100 * g["other_cpu_share"] for g in gateways], 0),
            ]
        )
    print("Open loop (oha --latency-correction -c 64), latency in ms:")
    print_table(
        [
            "rate/s",
            "gateway achieved/s",
            "fake p50",
            "fake p99",
            "gateway p50",
            "gateway p99",
            "added p50",
            "added p99",
            "failed",
            "gateway CPU ms/request",
            "other CPU %",
        ],
        table,
    )
    return added


def print_interference(rows):
    """Print the series during which other processes used a noticeable share of the CPU."""
    busy = [r for r in rows if r["other_cpu_share"] > OTHER_CPU_WARNING_SHARE]
    for r in busy:
        print(
            f"WARNING: other processes used {100 * r['other_cpu_share']:.0f}% of one CPU "
            f"during {r['kind']} {r['target']} {r['mode']} {r['load']} "
            f"(repeat {r['repeat']}); its numbers may be low"
        )
    if busy:
        print()


def verdict(ok):
    return "met" if ok else "MISSED"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.tsv written by bench/load.sh")
    parser.add_argument(
        "--rss-kib",
        nargs=4,
        type=int,
        metavar=("IDLE", "AFTER_ONE", "AFTER_LOAD", "PEAK"),
        required=True,
        help="gateway VmRSS idle, after one request, after load, and VmHWM, in KiB",
    )
    parser.add_argument(
        "--store-bytes",
        nargs=2,
        type=int,
        metavar=("DB", "WAL"),
        required=True,
        help="size of the SQLite database file and of its write-ahead log, in bytes",
    )
    args = parser.parse_args()

    rows = load_rows(args.results)
    if not rows:
        sys.exit(f"{args.results} contains no series")
    closed = closed_loop_table(rows)
    added_p99 = open_loop_table(rows)
    print_interference(rows)

    idle, after_one, after, peak = (kib / 1024 for kib in args.rss_kib)
    db_mb, wal_mb = (b / 1e6 for b in args.store_bytes)
    print(
        f"Gateway RSS: idle {idle:.1f} MB, after one request {after_one:.1f} MB, "
        f"after load {after:.1f} MB, peak {peak:.1f} MB (MiB of VmRSS and VmHWM)"
    )
    print(f"SQLite store after the run: database {db_mb:.1f} MB, WAL {wal_mb:.1f} MB")
    print()

    print("Targets:")
    for rate, limit in TARGET_ADDED_P99_MS.items():
        values = added_p99.get(rate)
        if values:
            median = statistics.median(values)
            print(
                f"  added p99 at {rate}/s under {limit} ms: "
                f"{verdict(median < limit)} ({median:.3f} ms)"
            )
    closed_rates = [
        statistics.median(r["rate"] for r in runs)
        for (target, mode, _), runs in closed.items()
        if target == "gateway" and mode == "unique"
    ]
    if closed_rates:
        best_rate = max(closed_rates)
        print(
            f"  closed loop at least {TARGET_MESSAGES_PER_S} messages/s: "
            f"{verdict(best_rate >= TARGET_MESSAGES_PER_S)} ({best_rate:.0f}/s)"
        )
        cpu = statistics.median(
            r["cpu_ms_per_request"]
            for r in rows
            if r["kind"] == "closed" and r["target"] == "gateway" and r["mode"] == "unique"
        )
        print(
            f"  CPU under {TARGET_CPU_MS_PER_MESSAGE} ms/message (closed loop): "
            f"{verdict(cpu < TARGET_CPU_MS_PER_MESSAGE)} ({cpu:.3f} ms)"
        )
    else:
        print("  closed loop and CPU per message: not measured (open loop only)")
    print(
        f"  RSS after load under {TARGET_RSS_AFTER_LOAD_MB} MB: "
        f"{verdict(after < TARGET_RSS_AFTER_LOAD_MB)} ({after:.1f} MB)"
    )
    failed = sum(r["failed"] for r in rows)
    print(f"  no failed request: {verdict(failed == 0)} ({failed} failed)")


if __name__ == "__main__":
    main()
