#!/usr/bin/env bash
# Turns at 50 clients on one instance, with each store: SQLite (the default), PostgreSQL as it
# ships (synchronous_commit = on: each commit waits for its WAL to reach the disk), and
# PostgreSQL with synchronous_commit = off (the guarantee SQLite's WAL with synchronous =
# NORMAL gives: a crash of the database server may lose the last moments of commits, a crash of
# Sparky loses nothing). Writes target/bench-store/results.jsonl and prints a table of medians
# and ratios to SQLite.
#
#   bash scripts/bench-store.sh                    # 3 rounds of 50 clients x 400 turns, ~1 minute
#   ROUNDS=5 CLIENTS=50 TURNS=400 bash scripts/bench-store.sh
#
# Every server is started fresh (a new data directory, or a new database on one throwaway
# cluster started by scripts/pg-cluster.sh with PostgreSQL's default settings), and the three
# alternate, the order reversing every round, so that a slow phase of a shared machine does not
# land on one of them only.

set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-50}
TURNS=${TURNS:-400}
MAX_SECONDS=${MAX_SECONDS:-120}
OUT=${BENCH_OUT:-target/bench-store}
RESULTS=$OUT/results.jsonl
SPARKY=target/release/sparky
LOADGEN=target/release/examples/loadgen

started_at=$(date +%s)
log() { printf '[bench-store %3ss] %s\n' "$(($(date +%s) - started_at))" "$*" >&2; }

log "building (release)"
cargo build --release --quiet --bin sparky --example loadgen

# shellcheck source=scripts/pg-cluster.sh
. scripts/pg-cluster.sh
SERVER_PID=""
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap 'stop_server; pg_cluster_stop' EXIT
trap 'exit 130' INT TERM
pg_cluster_start
log "postgres at $PG_CLUSTER_URL ($("$pg_cluster_bin/postgres" --version))"

mkdir -p "$OUT/logs"
rm -rf "$OUT/data"
: >"$RESULTS"
COUNT=0

# start_server sqlite|postgres|postgres-async: a fresh server; sets SERVER_PID and SERVER_ADDR.
start_server() {
    local name=$1
    COUNT=$((COUNT + 1))
    local stdout="$OUT/logs/$COUNT-$name.out" stderr="$OUT/logs/$COUNT-$name.err"
    local store=(--data-dir "$OUT/data/$COUNT")
    if [[ $name == postgres* ]]; then
        local db="bench_$COUNT"
        local setting="on"
        [[ $name == postgres-async ]] && setting="off"
        psql -q "$PG_CLUSTER_URL" -c "CREATE DATABASE $db" \
            -c "ALTER DATABASE $db SET synchronous_commit = $setting"
        store=(--store "${PG_CLUSTER_URL%/postgres}/$db")
    fi
    "$SPARKY" --addr 127.0.0.1:0 --rate-limit off --log-level warn "${store[@]}" \
        >"$stdout" 2>"$stderr" &
    SERVER_PID=$!
    local line=""
    for _ in $(seq 100); do
        line=$(head -n 1 "$stdout" 2>/dev/null || true)
        [[ $line == "listening on http://"* ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { log "$name exited at start; see $stderr"; exit 1; }
        sleep 0.1
    done
    [[ $line == "listening on http://"* ]] || { log "$name did not start; see $stderr"; exit 1; }
    SERVER_ADDR=${line#listening on http://}
}

servers=(sqlite postgres postgres-async)
for round in $(seq "$ROUNDS"); do
    order=("${servers[@]}")
    if ((round % 2 == 0)); then
        order=(postgres-async postgres sqlite)
    fi
    for name in "${order[@]}"; do
        start_server "$name"
        line=$("$LOADGEN" --url "ws://$SERVER_ADDR/ws" --label "$name" --round "$round" \
            --max-seconds "$MAX_SECONDS" turns --clients "$CLIENTS" --turns "$TURNS")
        echo "$line" >>"$RESULTS"
        log "$name round $round: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("{count}/{expected} ok, {errors} errors, {throughput_per_s:.0f}/s, p50 {p50_ms} ms, p99 {p99_ms} ms".format(**r))' "$line")"
        stop_server
    done
done
rm -rf "$OUT/data"

python3 - "$RESULTS" <<'EOF_PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
by = {}
for r in runs:
    by.setdefault(r["label"], {})[r["round"]] = r
base = by["sqlite"]
names = {"sqlite": "SQLite (WAL, synchronous = NORMAL)",
         "postgres": "PostgreSQL, synchronous_commit = on (default)",
         "postgres-async": "PostgreSQL, synchronous_commit = off"}
print("| store | turns/s | ratio to SQLite | p50 ms | p99 ms | p99 ratio | errors |")
print("|---|--:|--:|--:|--:|--:|--:|")
for label in ["sqlite", "postgres", "postgres-async"]:
    rounds = by[label]
    tput = statistics.median(r["throughput_per_s"] for r in rounds.values())
    ratio = statistics.median(rounds[k]["throughput_per_s"] / base[k]["throughput_per_s"] for k in rounds)
    p50 = statistics.median(r["p50_ms"] for r in rounds.values())
    p99 = statistics.median(r["p99_ms"] for r in rounds.values())
    p99r = statistics.median(rounds[k]["p99_ms"] / base[k]["p99_ms"] for k in rounds)
    errors = sum(r["errors"] for r in rounds.values())
    print(f"| {names[label]} | {tput:,.0f} | {ratio:.2f} | {p50:.2f} | {p99:.2f} | {p99r:.2f} | {errors} |")
EOF_PY
log "done: $RESULTS"
