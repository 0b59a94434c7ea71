#!/usr/bin/env python3
"""Turns the JSON lines of scripts/bench.sh into a markdown table and an SVG chart.

    python3 scripts/chart.py target/bench/results.jsonl \
        --table target/bench/table.md --svg target/bench/chart.svg

Each line of the input is one run of examples/loadgen.rs, labelled with the server (`sparky`,
`sparky-mem`, `fastapi` or `floor`) and the round. For `turns` and `connect` the table shows,
per number of clients, the median over rounds of each figure, and the median over rounds of
the ratios Sparky/floor and Sparky/FastAPI taken within the same round (the servers ran back to
back, so the ratio is steadier than either figure), with the targets of issue 13. The chart
plots turns throughput and p99 latency against the number of clients, every server side by
side: each round as a dot, the medians as a line. Standard library only.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
from collections import defaultdict
from datetime import datetime, timezone

SPARKY = "sparky"
SPARKY_MEM = "sparky-mem"
FLOOR = "floor"
FASTAPI = "fastapi"
COLORS = {SPARKY: "#d9480f", SPARKY_MEM: "#f59f00", FLOOR: "#1c7ed6", FASTAPI: "#2b8a3e"}
NAMES = {
    SPARKY: "Sparky",
    SPARKY_MEM: "Sparky --in-memory",
    FLOOR: "floor",
    FASTAPI: "FastAPI/uvicorn",
}
SERVER_ORDER = (SPARKY, SPARKY_MEM, FASTAPI, FLOOR)
# The suffix of an earlier build's labels (`SPARKY_BEFORE_BIN` in scripts/bench.sh).
BEFORE = "-before"

# The targets of issue 13 (medians of alternating runs, ratios from the same run).
TURNS_1_OVER_FASTAPI = 1.5
TURNS_1_P50_OVER_FLOOR = 1.2
TURNS_50_OVER_FLOOR = {SPARKY_MEM: 0.6, SPARKY: 0.5}
TURNS_50_OVER_FASTAPI = 2.5
TURNS_500_P99_MS = 30.0
CONNECT_P99_OVER_FLOOR = 1.5
CPU_US_PER_TURN = {SPARKY_MEM: 15.0, SPARKY: 20.0}
IDLE_RSS_KIB_PER_SESSION = 24
IDLE_CPU_PERCENT = 1.0
CANCEL_P99_MS = 5.0
RESUME_P99_MS = 10.0
# The targets of issue 26 for streamed answers.
STREAM_DELAY_P99_MS = 5.0
STREAM_CPU_US_PER_DELTA = 5.0
STREAM_CPU_OVER_FASTAPI = 0.5


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.jsonl written by scripts/bench.sh")
    parser.add_argument("--table", required=True, help="markdown file to write")
    parser.add_argument("--svg", required=True, help="SVG file to write")
    args = parser.parse_args()

    with open(args.results, encoding="utf-8") as results:
        runs = [json.loads(line) for line in results if line.strip()]
    with open(args.table, "w", encoding="utf-8") as table:
        table.write(render_table(runs))
    with open(args.svg, "w", encoding="utf-8") as svg:
        svg.write(render_chart(runs))


# ----------------------------------------------------------------------------------------------
# Grouping.
# ----------------------------------------------------------------------------------------------


def by_key(runs, scenario):
    """{clients: {label: {round: run}}} for one scenario."""
    grouped = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        if run["scenario"] == scenario:
            grouped[run["clients"]][run["label"]][run["round"]] = run
    return grouped


def median_of(rounds, field):
    values = [run[field] for run in rounds.values() if field in run]
    return statistics.median(values) if values else None


def ratio_of(sparky_rounds, floor_rounds, field):
    """The median over rounds of sparky/other, each ratio taken within one round."""
    ratios = []
    for round_number, sparky in sparky_rounds.items():
        floor = floor_rounds.get(round_number)
        if floor and floor.get(field) and sparky.get(field) is not None:
            ratios.append(sparky[field] / floor[field])
    return statistics.median(ratios) if ratios else None


def single(runs, scenario, label):
    for run in runs:
        if run["scenario"] == scenario and run["label"] == label:
            return run
    return None


# ----------------------------------------------------------------------------------------------
# The table.
# ----------------------------------------------------------------------------------------------


def fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def verdict(ok):
    if ok is None:
        return "–"
    return "met" if ok else "**missed**"


def machine_line():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            kib = int(meminfo.readline().split()[1])
            memory = f", {kib / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}"


def git_line():
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


def target_of(scenario, clients, variant, rounds, floor, fastapi):
    """The issue 13 target of one Sparky row, and whether it is met."""
    over_floor = ratio_of(rounds, floor, "throughput_per_s")
    over_fastapi = ratio_of(rounds, fastapi, "throughput_per_s")
    p50_over_floor = ratio_of(rounds, floor, "p50_ms")
    p99_over_floor = ratio_of(rounds, floor, "p99_ms")
    checks = []
    if scenario == "connect":
        checks.append((f"/s ≥ floor's", over_floor is not None and over_floor >= 1.0))
        checks.append(
            (
                f"p99 ≤ {CONNECT_P99_OVER_FLOOR}× floor's",
                p99_over_floor is not None and p99_over_floor <= CONNECT_P99_OVER_FLOOR,
            )
        )
    elif clients == 1:
        checks.append(
            (
                f"≥ {TURNS_1_OVER_FASTAPI}× FastAPI",
                over_fastapi is not None and over_fastapi >= TURNS_1_OVER_FASTAPI,
            )
        )
        checks.append(
            (
                f"p50 ≤ {TURNS_1_P50_OVER_FLOOR}× floor's",
                p50_over_floor is not None and p50_over_floor <= TURNS_1_P50_OVER_FLOOR,
            )
        )
    elif clients == 50:
        least = TURNS_50_OVER_FLOOR[variant]
        checks.append((f"≥ {least}× floor", over_floor is not None and over_floor >= least))
        checks.append(
            (
                f"≥ {TURNS_50_OVER_FASTAPI}× FastAPI",
                over_fastapi is not None and over_fastapi >= TURNS_50_OVER_FASTAPI,
            )
        )
        cpu = median_of(rounds, "server_cpu_us_per_turn")
        limit = CPU_US_PER_TURN[variant]
        checks.append((f"CPU ≤ {limit:.0f} µs/turn", cpu is not None and cpu <= limit))
    elif clients == 500:
        p99 = median_of(rounds, "p99_ms")
        spread = median_of(rounds, "client_finish_spread")
        floor_spread = median_of(floor, "client_finish_spread")
        checks.append((f"p99 < {TURNS_500_P99_MS:.0f} ms", p99 is not None and p99 < TURNS_500_P99_MS))
        checks.append(
            (
                "spread ≤ floor's",
                spread is not None and floor_spread is not None and spread <= floor_spread,
            )
        )
    if not checks:
        return "", None
    text = ", ".join(
        f"{what} ({'met' if ok else '**missed**'})" for what, ok in checks
    )
    return text, all(ok for _, ok in checks)


def comparison_row(scenario, clients, variant, grouped):
    """One row: a server's medians, and for Sparky its ratios to the floor and FastAPI."""
    rounds = grouped[clients].get(variant, {})
    floor = grouped[clients].get(FLOOR, {})
    fastapi = grouped[clients].get(FASTAPI, {})
    sparky = variant in (SPARKY, SPARKY_MEM)
    target, ok = ("", None)
    if sparky:
        target, ok = target_of(scenario, clients, variant, rounds, floor, fastapi)
    cells = [
        scenario,
        fmt(clients),
        NAMES[variant],
        fmt(median_of(rounds, "throughput_per_s")),
        fmt(ratio_of(rounds, floor, "throughput_per_s")) if variant != FLOOR else "1",
        fmt(ratio_of(rounds, fastapi, "throughput_per_s")) if fastapi and variant != FASTAPI else "–",
        fmt(median_of(rounds, "p50_ms")),
        fmt(median_of(rounds, "p99_ms")),
        fmt(ratio_of(rounds, floor, "p99_ms")) if variant != FLOOR else "1",
        fmt(median_of(rounds, "max_ms")),
        fmt(median_of(rounds, "server_cpu_us_per_turn"), 1),
        fmt(median_of(rounds, "server_context_switches_per_turn"), 1),
        fmt(median_of(rounds, "client_finish_spread")),
        fmt(sum(run["errors"] for run in rounds.values())),
        target,
        verdict(ok) if target else "",
    ]
    return "| " + " | ".join(cells) + " |"


def before_and_after(runs):
    """The "Before and after" rows, when an earlier build ran in the same rotation
    (`SPARKY_BEFORE_BIN`): each figure's medians, and the median of the per-round ratios."""
    pairs = [(SPARKY, SPARKY + BEFORE), (SPARKY_MEM, SPARKY_MEM + BEFORE)]
    if not any(run.get("label", "").endswith(BEFORE) for run in runs):
        return []
    out = [
        "",
        "## Before and after",
        "",
        "The earlier build (`SPARKY_BEFORE_BIN`) ran in the same rotation as this one, with the",
        "same flags. Ratios are after/before, medians of the per-round ratios.",
        "",
        "| scenario | clients | server | /s before | /s after | ×/s | p50 before | p50 after "
        "| p99 before | p99 after | ×p99 | CPU µs/turn before | after | ×CPU "
        "| switches/turn before | after |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for scenario in ("connect", "turns"):
        grouped = by_key(runs, scenario)
        for clients in sorted(grouped):
            for after, before in pairs:
                now, then = grouped[clients].get(after), grouped[clients].get(before)
                if not now or not then:
                    continue
                out.append(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                        scenario,
                        clients,
                        NAMES[after],
                        fmt(median_of(then, "throughput_per_s"), 0),
                        fmt(median_of(now, "throughput_per_s"), 0),
                        fmt(ratio_of(now, then, "throughput_per_s")),
                        fmt(median_of(then, "p50_ms")),
                        fmt(median_of(now, "p50_ms")),
                        fmt(median_of(then, "p99_ms")),
                        fmt(median_of(now, "p99_ms")),
                        fmt(ratio_of(now, then, "p99_ms")),
                        fmt(median_of(then, "server_cpu_us_per_turn"), 0),
                        fmt(median_of(now, "server_cpu_us_per_turn"), 0),
                        fmt(ratio_of(now, then, "server_cpu_us_per_turn")),
                        fmt(median_of(then, "server_context_switches_per_turn"), 1),
                        fmt(median_of(now, "server_context_switches_per_turn"), 1),
                    )
                )
    return out


def render_table(runs):
    rounds = sorted({run["round"] for run in runs if run["scenario"] in ("turns", "connect")})
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = [run for run in runs if run["scenario"] == "machine"]
    load = ""
    if machine:
        load = (
            f" Load average (1, 5, 15 min) before the rounds: "
            f"{machine[-1].get('load_before', '?')}; after them (our own load included): "
            f"{machine[-1].get('load_average', '?')}."
        )
    servers = [NAMES[label] for label in SERVER_ORDER if any(r.get("label") == label for r in runs)]
    out = [
        "# Benchmark results",
        "",
        f"{now}; {machine_line()}; {git_line()}; loopback, built-in offline model.{load}",
        f"`turns` and `connect`: {len(rounds)} rounds, the servers ({', '.join(servers)})",
        "alternating, the order reversed every other round; figures are medians over rounds,",
        "ratios are medians of the per-round ratios (both servers measured in the same round).",
        "Latencies in ms. Throughput is operations per second over the measuring window. CPU is",
        "the server's user and system time per turn, from /proc, until it settles after the run.",
        "Spread is the last client's completion time over the first one's (1 = perfectly fair).",
        "",
        "## Sparky against the floor and FastAPI",
        "",
        "`Sparky` is the default server (every event written to SQLite before it is sent); "
        "`Sparky --in-memory` keeps nothing on disk.",
        "",
        "| scenario | clients | server | /s | ×floor | ×FastAPI | p50 | p99 | p99 ×floor | max "
        "| CPU µs/turn | switches/turn | spread | errors | targets (issue 13) | all met? |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for scenario in ("connect", "turns"):
        grouped = by_key(runs, scenario)
        for clients in sorted(grouped):
            for variant in SERVER_ORDER:
                if grouped[clients].get(variant):
                    out.append(comparison_row(scenario, clients, variant, grouped))
    out += before_and_after(runs)
    out += [
        "",
        "## Capacity and session features",
        "",
        "| scenario | figure | Sparky | floor | target | met? |",
        "|---|---|--:|--:|---|---|",
    ]
    idle_sparky = single(runs, "idle", SPARKY)
    idle_floor = single(runs, "idle", FLOOR)
    if idle_sparky:
        clients = idle_sparky["clients"]

        def both(field, scale=None):
            values = []
            for run in (idle_sparky, idle_floor):
                value = run.get(field) if run else None
                if value is not None and scale:
                    value = value / scale
                values.append(fmt(value))
            return values

        held = idle_sparky.get("held", 0)
        rss_kib = idle_sparky.get("server_rss_kib")
        per_session = idle_sparky.get("rss_per_session_kib")
        cpu = idle_sparky.get("server_cpu_percent")
        rss_limit_mib = clients * IDLE_RSS_KIB_PER_SESSION / 1024
        rows = [
            ("sessions held", both("held"), f"{clients:,}", held == clients),
            (
                "server RSS, MiB",
                both("server_rss_kib", 1024),
                f"≤ {clients:,} × {IDLE_RSS_KIB_PER_SESSION} KiB = {rss_limit_mib:.1f} MiB",
                rss_kib is not None and rss_kib / 1024 <= rss_limit_mib,
            ),
            (
                "RSS per session, KiB",
                both("rss_per_session_kib"),
                f"≤ {IDLE_RSS_KIB_PER_SESSION} KiB",
                per_session is not None and per_session <= IDLE_RSS_KIB_PER_SESSION,
            ),
            ("server threads", both("server_threads"), "", None),
            (
                "server CPU while idle, % of a core",
                both("server_cpu_percent"),
                f"< {IDLE_CPU_PERCENT:.0f} %",
                cpu is not None and cpu < IDLE_CPU_PERCENT,
            ),
            ("time to open all, s", both("open_s"), "", None),
            ("connect p99 while opening, ms", both("p99_ms"), "", None),
            ("errors", both("errors"), "0", idle_sparky["errors"] == 0),
        ]
        for figure, (sparky_value, floor_value), target, ok in rows:
            out.append(
                f"| idle {clients:,} | {figure} | {sparky_value} | {floor_value} "
                f"| {target} | {verdict(ok) if target else ''} |"
            )
        if idle_sparky.get("first_error"):
            out.append(f"| idle {clients:,} | first error | {idle_sparky['first_error']} | | | |")
    for scenario, limit, what in (
        ("cancel", CANCEL_P99_MS, "new message after a cancelled `/wait`"),
        ("resume", RESUME_P99_MS, "replay"),
    ):
        run = single(runs, scenario, SPARKY)
        if not run:
            continue
        label = scenario
        if scenario == "resume":
            label = f"resume {run.get('missed_events', '?')} missed events"
        out.append(
            f"| {label} | p50 / p99 / max, ms ({what}; {run['count']:,} samples) "
            f"| {fmt(run['p50_ms'])} / {fmt(run['p99_ms'])} / {fmt(run['max_ms'])} | "
            f"| p99 < {limit:.0f} ms | {verdict(run['p99_ms'] < limit)} |"
        )
        out.append(
            f"| {label} | errors | {run['errors']} | | 0 | {verdict(run['errors'] == 0)} |"
        )
    out += stream_table(runs)
    out.append("")
    return "\n".join(out)


def stream_table(runs):
    """The `stream` scenario (issue 26): each server's medians over rounds, and Sparky's CPU
    per chunk over the floor's and over FastAPI's, taken within each round."""
    grouped = by_key(runs, "stream")
    if not grouped:
        return []
    loads = [run["load_average"] for run in runs if run["scenario"] == "stream-machine"]
    out = [
        "",
        "## Streamed answers (issue 26)",
        "",
        "Delay: from the fake model's write of a chunk to the client's read of the delta that "
        "carries it (every chunk; `newest`: the newest chunk of each delta frame). CPU: the "
        "server's user and system time over the run, per delta frame delivered and per chunk "
        "relayed. ×floor and ×FastAPI: CPU per chunk over that server's, the median of the "
        "per-round ratios; the floor (examples/floor.rs with `--model-url`) is a bare "
        "thread-per-connection relay (ureq, no store), the least CPU such a server needs here."
        + (f" Load average after the rounds: {loads[-1]}." if loads else ""),
        "",
        "| clients | server | rounds | chunks | errors | delay p50 | delay p99 | newest p50 "
        "| newest p99 | deltas | CPU µs/delta | CPU µs/chunk | ×floor | ×FastAPI "
        "| peak RSS MiB | targets (issue 26) |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for clients in sorted(grouped):
        fastapi = grouped[clients].get(FASTAPI, {})
        floor = grouped[clients].get(FLOOR, {})
        for label in SERVER_ORDER:
            rounds = grouped[clients].get(label)
            if not rounds:
                continue
            ratio = over_floor = None
            targets = ""
            if label not in (FASTAPI, FLOOR):
                ratio = ratio_of(rounds, fastapi, "server_cpu_us_per_chunk")
                over_floor = ratio_of(rounds, floor, "server_cpu_us_per_chunk")
                p99 = median_of(rounds, "p99_ms")
                per_delta = median_of(rounds, "server_cpu_us_per_delta")
                checks = [
                    (f"delay p99 ≤ {STREAM_DELAY_P99_MS:.0f} ms", p99, STREAM_DELAY_P99_MS),
                    (f"CPU ≤ {STREAM_CPU_US_PER_DELTA:.0f} µs/delta", per_delta,
                     STREAM_CPU_US_PER_DELTA),
                    (f"CPU ≤ {STREAM_CPU_OVER_FASTAPI}× FastAPI's", ratio,
                     STREAM_CPU_OVER_FASTAPI),
                ]
                targets = ", ".join(
                    f"{what} ({verdict(value <= limit) if value is not None else '–'})"
                    for what, value, limit in checks
                )
            rss = median_of(rounds, "server_rss_peak_kib")
            out.append(
                f"| {clients:,} | {NAMES[label]} | {len(rounds)} "
                f"| {fmt(median_of(rounds, 'count'))} | {fmt(median_of(rounds, 'errors'))} "
                f"| {fmt(median_of(rounds, 'p50_ms'))} | {fmt(median_of(rounds, 'p99_ms'))} "
                f"| {fmt(median_of(rounds, 'frame_delay_p50_ms'))} "
                f"| {fmt(median_of(rounds, 'frame_delay_p99_ms'))} "
                f"| {fmt(median_of(rounds, 'deltas_received'))} "
                f"| {fmt(median_of(rounds, 'server_cpu_us_per_delta'))} "
                f"| {fmt(median_of(rounds, 'server_cpu_us_per_chunk'))} | {fmt(over_floor)} "
                f"| {fmt(ratio)} "
                f"| {fmt(rss / 1024 if rss else None)} | {targets} |"
            )
    return out


# ----------------------------------------------------------------------------------------------
# The chart.
# ----------------------------------------------------------------------------------------------

PANEL_WIDTH = 420
PANEL_HEIGHT = 300
MARGIN_LEFT = 70
MARGIN_TOP = 50
MARGIN_BOTTOM = 50
GAP = 90


def escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_ticks_linear(top):
    """Round tick values from 0 to at least `top`."""
    if top <= 0:
        return [0, 1]
    step = 10 ** math.floor(math.log10(top / 4))
    for factor in (1, 2, 2.5, 5, 10):
        if top / (step * factor) <= 5:
            step *= factor
            break
    ticks = [0]
    while ticks[-1] < top:
        ticks.append(ticks[-1] + step)
    return ticks


def ticks_log(low, high):
    """Powers of ten (and 2, 5 between them) spanning low..high."""
    start = math.floor(math.log10(low))
    end = math.ceil(math.log10(high))
    ticks = []
    for exponent in range(start, end + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if 10**start <= value <= 10**end:
                ticks.append(value)
    return ticks


def tick_label(value):
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def panel(x0, title, y_label, series, log_y):
    """One plot: series is {label: {clients: [values per round]}}."""
    clients = sorted({c for points in series.values() for c in points})
    values = [v for points in series.values() for vs in points.values() for v in vs if v > 0]
    if not clients or not values:
        return [f'<text x="{x0}" y="{MARGIN_TOP}">no data for {escape(title)}</text>']
    if log_y:
        ticks = ticks_log(min(values), max(values))
        low, high = math.log10(ticks[0]), math.log10(ticks[-1])

        def y_of(value):
            value = max(value, ticks[0])
            return MARGIN_TOP + PANEL_HEIGHT * (1 - (math.log10(value) - low) / (high - low))

    else:
        ticks = nice_ticks_linear(max(values) * 1.05)

        def y_of(value):
            return MARGIN_TOP + PANEL_HEIGHT * (1 - value / ticks[-1])

    x_low = math.log10(min(clients))
    x_high = math.log10(max(clients))
    x_span = (x_high - x_low) or 1.0

    def x_of(count):
        return x0 + 30 + (PANEL_WIDTH - 60) * (math.log10(count) - x_low) / x_span

    parts = [
        f'<text x="{x0 + PANEL_WIDTH / 2}" y="{MARGIN_TOP - 20}" text-anchor="middle" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<rect x="{x0}" y="{MARGIN_TOP}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" '
        'fill="none" stroke="#adb5bd"/>',
    ]
    for tick in ticks:
        y = y_of(tick)
        parts.append(
            f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PANEL_WIDTH}" y2="{y:.1f}" stroke="#e9ecef"/>'
        )
        parts.append(
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{tick_label(tick)}</text>"
        )
    for count in clients:
        x = x_of(count)
        parts.append(
            f'<line x1="{x:.1f}" y1="{MARGIN_TOP}" x2="{x:.1f}" y2="{MARGIN_TOP + PANEL_HEIGHT}" '
            'stroke="#e9ecef"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{MARGIN_TOP + PANEL_HEIGHT + 16}" text-anchor="middle" '
            f'font-size="11">{count}</text>'
        )
    parts.append(
        f'<text x="{x0 + PANEL_WIDTH / 2}" y="{MARGIN_TOP + PANEL_HEIGHT + 36}" '
        'text-anchor="middle" font-size="12">clients (log scale)</text>'
    )
    y_mid = MARGIN_TOP + PANEL_HEIGHT / 2
    parts.append(
        f'<text x="{x0 - 52}" y="{y_mid}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 {x0 - 52} {y_mid})">{escape(y_label)}</text>'
    )
    for label, points in series.items():
        color = COLORS.get(label, "#495057")
        medians = []
        for count in sorted(points):
            for value in points[count]:
                parts.append(
                    f'<circle cx="{x_of(count):.1f}" cy="{y_of(value):.1f}" r="2.5" '
                    f'fill="{color}" fill-opacity="0.35"/>'
                )
            medians.append((x_of(count), y_of(statistics.median(points[count]))))
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in medians)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>'
        )
        for x, y in medians:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"/>')
    return parts


def render_chart(runs):
    throughput = defaultdict(lambda: defaultdict(list))
    p99 = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run["scenario"] == "turns" and run["label"] in COLORS:
            throughput[run["label"]][run["clients"]].append(run["throughput_per_s"])
            p99[run["label"]][run["clients"]].append(run["p99_ms"])
    # Sparky first, so the legend and the drawing order are stable.
    order = [label for label in SERVER_ORDER if label in throughput]
    throughput = {label: throughput[label] for label in order}
    p99 = {label: p99[label] for label in order}

    width = MARGIN_LEFT + 2 * PANEL_WIDTH + GAP + 30
    height = MARGIN_TOP + PANEL_HEIGHT + MARGIN_BOTTOM + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    # Log scales on both axes: Sparky and the floor can be an order of magnitude apart.
    parts += panel(
        MARGIN_LEFT, "turns: throughput", "turns per second (log scale)", throughput, True
    )
    parts += panel(
        MARGIN_LEFT + PANEL_WIDTH + GAP, "turns: p99 latency", "p99, ms (log scale)", p99, True
    )
    legend_y = height - 14
    x = MARGIN_LEFT
    for label in order:
        color = COLORS[label]
        parts.append(
            f'<line x1="{x}" y1="{legend_y - 4}" x2="{x + 24}" y2="{legend_y - 4}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        parts.append(f'<circle cx="{x + 12}" cy="{legend_y - 4}" r="4" fill="{color}"/>')
        parts.append(f'<text x="{x + 30}" y="{legend_y}">{NAMES[label]}</text>')
        x += 40 + 8 * len(NAMES[label])
    parts.append(
        f'<text x="{x}" y="{legend_y}" font-size="11" fill="#495057">'
        "line: median over rounds; faint dots: single rounds</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
