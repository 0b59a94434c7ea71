#!/usr/bin/env bash
# Several instances on one PostgreSQL database (README, "Running several instances"):
#
# - turns at 50 clients on one instance, against two instances with the clients spread over
#   both (each setup on a fresh database, alternating, the order reversing every round);
# - an event's way from a connection on the instance running the turn to a connection on the
#   other (examples/clusterbench.rs `delivery`);
# - a `cancel` sent through the other instance, until its `status cancelled` arrives there
#   (`cancel`);
# - `kill -9` of the instance running a turn, until the other closes that turn (`takeover`).
#
#   bash scripts/cluster-bench.sh            # about two minutes on 2 cores
#   ROUNDS=5 bash scripts/cluster-bench.sh
#
# The database is a throwaway cluster (scripts/pg-cluster.sh) with synchronous_commit = off, the
# setting the README suggests for Sparky (its default, on, makes every batch wait for the disk,
# which then dominates; scripts/bench-store.sh measures both). Writes
# target/cluster-bench/results.jsonl and prints a table.

set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-50}
TURNS=${TURNS:-400}
DELIVERY_ROUNDS=${DELIVERY_ROUNDS:-300}
CANCEL_ROUNDS=${CANCEL_ROUNDS:-200}
TAKEOVERS=${TAKEOVERS:-3}
MAX_SECONDS=${MAX_SECONDS:-120}
OUT=${BENCH_OUT:-target/cluster-bench}
RESULTS=$OUT/results.jsonl
SPARKY=target/release/sparky
LOADGEN=target/release/examples/loadgen
CLUSTERBENCH=target/release/examples/clusterbench

started_at=$(date +%s)
log() { printf '[cluster-bench %3ss] %s\n' "$(($(date +%s) - started_at))" "$*" >&2; }

log "building (release)"
cargo build --release --quiet --bin sparky --example loadgen --example clusterbench

# shellcheck source=scripts/pg-cluster.sh
. scripts/pg-cluster.sh
PIDS=()
stop_servers() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap 'stop_servers; pg_cluster_stop' EXIT
trap 'exit 130' INT TERM
pg_cluster_start synchronous_commit=off
log "postgres at $PG_CLUSTER_URL ($("$pg_cluster_bin/postgres" --version))"

mkdir -p "$OUT/logs"
: >"$RESULTS"
COUNT=0

# new_database: a fresh database; sets DB_URL.
new_database() {
    COUNT=$((COUNT + 1))
    psql -q "$PG_CLUSTER_URL" -c "CREATE DATABASE bench_$COUNT"
    DB_URL="${PG_CLUSTER_URL%/postgres}/bench_$COUNT"
}

# start_server NAME: an instance on DB_URL; appends to PIDS and sets SERVER_ADDR.
start_server() {
    local name=$1
    local stdout="$OUT/logs/$COUNT-$name.out" stderr="$OUT/logs/$COUNT-$name.err"
    "$SPARKY" --addr 127.0.0.1:0 --rate-limit off --log-level warn --store "$DB_URL" \
        >"$stdout" 2>"$stderr" &
    local pid=$!
    PIDS+=("$pid")
    local line=""
    for _ in $(seq 100); do
        line=$(head -n 1 "$stdout" 2>/dev/null || true)
        [[ $line == "listening on http://"* ]] && break
        kill -0 "$pid" 2>/dev/null || { log "$name exited at start; see $stderr"; exit 1; }
        sleep 0.1
    done
    [[ $line == "listening on http://"* ]] || { log "$name did not start; see $stderr"; exit 1; }
    SERVER_ADDR=${line#listening on http://}
    SERVER_PID=$pid
}

summary='import json,sys; r=json.loads(sys.argv[1]); print(", ".join(f"{k} {v}" for k, v in r.items() if k in ("count","errors","throughput_per_s","p50_ms","p99_ms","max_ms","code")))'

for round in $(seq "$ROUNDS"); do
    order=(one two)
    if ((round % 2 == 0)); then
        order=(two one)
    fi
    for setup in "${order[@]}"; do
        new_database
        start_server "$setup-a"
        urls="ws://$SERVER_ADDR/ws"
        if [[ $setup == two ]]; then
            start_server "$setup-b"
            urls="$urls,ws://$SERVER_ADDR/ws"
        fi
        line=$("$LOADGEN" --url "$urls" --label "$setup" --round "$round" \
            --max-seconds "$MAX_SECONDS" turns --clients "$CLIENTS" --turns "$TURNS")
        echo "$line" >>"$RESULTS"
        log "$setup instance(s), round $round: $(python3 -c "$summary" "$line")"
        stop_servers
    done
done

new_database
start_server a
A=$SERVER_ADDR
start_server b
B=$SERVER_ADDR
for measure in delivery cancel; do
    rounds_var="${measure^^}_ROUNDS"
    line=$("$CLUSTERBENCH" --a "ws://$A/ws" --b "ws://$B/ws" "$measure" --rounds "${!rounds_var}")
    echo "$line" >>"$RESULTS"
    log "$measure: $(python3 -c "$summary" "$line")"
done
stop_servers

for take in $(seq "$TAKEOVERS"); do
    new_database
    start_server a
    A=$SERVER_ADDR
    A_PID=$SERVER_PID
    start_server b
    line=$("$CLUSTERBENCH" --a "ws://$A/ws" --b "ws://$SERVER_ADDR/ws" takeover --pid "$A_PID")
    echo "$line" >>"$RESULTS"
    log "takeover $take: $(python3 -c "$summary" "$line")"
    stop_servers
done

python3 - "$RESULTS" <<'EOF_PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
turns = {}
for r in runs:
    if r.get("scenario") == "turns":
        turns.setdefault(r["label"], {})[r["round"]] = r
one, two = turns["one"], turns["two"]
print("| setup (50 clients) | turns/s | ratio to one | p50 ms | p99 ms | errors |")
print("|---|--:|--:|--:|--:|--:|")
for label, name in (("one", "one instance"), ("two", "two instances, clients spread")):
    rounds = turns[label]
    tput = statistics.median(r["throughput_per_s"] for r in rounds.values())
    ratio = statistics.median(rounds[k]["throughput_per_s"] / one[k]["throughput_per_s"] for k in rounds)
    p50 = statistics.median(r["p50_ms"] for r in rounds.values())
    p99 = statistics.median(r["p99_ms"] for r in rounds.values())
    errors = sum(r["errors"] for r in rounds.values())
    print(f"| {name} | {tput:,.0f} | {ratio:.2f} | {p50:.2f} | {p99:.2f} | {errors} |")
print()
print("| across instances | count | p50 ms | p99 ms | max ms |")
print("|---|--:|--:|--:|--:|")
names = {"delivery": "an event, from the turn's instance to the other's client",
         "cancel": "a cancel through the other instance, until its status arrives",
         "takeover": "kill -9 of the turn's instance, until the other closes the turn"}
for measure in ("delivery", "cancel", "takeover"):
    rows = [r for r in runs if r.get("measure") == measure]
    if not rows:
        continue
    if measure == "takeover":
        figures = sorted(r["max_ms"] for r in rows)
        p50, p99, top = statistics.median(figures), figures[-1], figures[-1]
        count = len(figures)
    else:
        r = rows[0]
        count, p50, p99, top = r["count"], r["p50_ms"], r["p99_ms"], r["max_ms"]
    print(f"| {names[measure]} | {count} | {p50:.2f} | {p99:.2f} | {top:.2f} |")
EOF_PY
log "done: $RESULTS"
