#!/usr/bin/env bash
# Runs the benchmark table of issues 7 and 13 against Sparky, the floor (examples/floor.rs) and
# the seed's stack (bench/fastapi_app.py: FastAPI under uvicorn, one worker), and writes
# target/bench/results.jsonl (one JSON line per run), target/bench/table.md and
# target/bench/chart.svg.
#
#   bash scripts/bench.sh            # the whole table, about two and a half minutes on 2 cores
#   ROUNDS=5 bash scripts/bench.sh   # more alternating rounds of turns/connect
#
# Every server is started fresh on 127.0.0.1:0; the port comes from its `listening on` line.
# `turns` and `connect` run against Sparky, the floor and FastAPI in turn, ROUNDS times (the
# order reverses every round), and the table shows medians and the median of the per-round
# ratios. When Sparky has `--in-memory`, a second Sparky without persistence (label
# `sparky-mem`) joins the rotation, so the table shows turns with and without persistence.
# `turns` also reports each server's CPU time per turn (from /proc, until it settles after the
# run) and the spread of the clients' completion times. FastAPI is installed from PyPI into a
# virtualenv under target/ on the first run (bench/requirements.txt); NO_FASTAPI=1 leaves it
# out. `idle`, `cancel` and `resume` run
# against the default Sparky; `idle` runs against the floor too, for scale.
#
# `stream` (issue 26): STREAM_CLIENTS conversations at once, each streaming one answer of
# STREAM_TOKENS tokens at STREAM_RATE tokens/s from a fake OpenAI-compatible model server that
# the load generator runs; the load generator starts the server itself, pointed at that model
# (Sparky with `--model openai --model-url` and the SQLite store; the floor with `--model-url`,
# a bare thread-per-connection relay over ureq, no store: the least CPU per delta such a
# server needs on this machine; FastAPI with `--model-url`, relaying with httpx),
# STREAM_ROUNDS times each, alternating. It reports the delay each chunk adds between the
# model's write and the client's read, the server's CPU per delta and per chunk (and Sparky's
# over the floor's and FastAPI's) and peak RSS. `SCENARIOS=stream` runs it alone (see below).
#
# Holding 10,000 connections needs more open files than the usual 1024: the script raises the
# limit (`ulimit -n`) for itself and so for both servers and the load generator. Where the
# hard limit is lower than 65536 (containers), it goes as high as the hard limit allows.
# Extra flags for Sparky can be passed in SPARKY_ARGS, e.g. SPARKY_ARGS="--log-level warn";
# SPARKY_BIN=path runs that build of Sparky instead of target/release/sparky;
# SPARKY_BEFORE_BIN=path adds that build (an earlier commit's) to the same rotation, labelled
# `sparky-before` (and `sparky-mem-before`), so that before and after are measured in one run
# and the table gains a "Before and after" section of per-round ratios;
# BENCH_OUT moves the output directory; the counts at the top can be overridden the same way.
# SCENARIOS picks a subset (a space-separated list of connect, turns1, turns50, turns500, idle,
# cancel, resume, stream; all by default), e.g. SCENARIOS="turns1 turns50" NO_FASTAPI=1 for the turns
# alone; NO_BUILD=1 runs the release binaries as they are. `turns` also counts the server's
# context switches per turn (its threads' voluntary and involuntary ones, from
# /proc/PID/task/*/status, read before the clients close their sockets).

set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
TURNS_1=${TURNS_1:-5000}          # turns of the single client
TURNS_50=${TURNS_50:-400}         # turns per client at 50 clients
TURNS_500=${TURNS_500:-40}        # turns per client at 500 clients
CONNECT_CLIENTS=${CONNECT_CLIENTS:-200}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
IDLE_SECONDS=${IDLE_SECONDS:-10}
# A connect takes milliseconds; a shorter bound keeps a refused one from stalling the run.
IDLE_TIMEOUT_MS=${IDLE_TIMEOUT_MS:-3000}
CANCEL_CLIENTS=${CANCEL_CLIENTS:-20}
CANCEL_TURNS=${CANCEL_TURNS:-25}
RESUME_CLIENTS=${RESUME_CLIENTS:-20}
RESUME_EVENTS=${RESUME_EVENTS:-100}
RESUME_REPEAT=${RESUME_REPEAT:-10}
# Bound on each loadgen run, on top of its per-read timeouts.
MAX_SECONDS=${MAX_SECONDS:-60}
STREAM_CLIENTS=${STREAM_CLIENTS:-500}
STREAM_TOKENS=${STREAM_TOKENS:-300}
STREAM_RATE=${STREAM_RATE:-30}
STREAM_ROUNDS=${STREAM_ROUNDS:-$ROUNDS}
SCENARIOS=" ${SCENARIOS:-connect turns1 turns50 turns500 idle cancel resume stream} "

# wanted SCENARIO: true when SCENARIOS names it.
wanted() { [[ $SCENARIOS == *" $1 "* ]]; }

OUT=${BENCH_OUT:-target/bench}
RESULTS=$OUT/results.jsonl
# SPARKY_BIN runs another build of Sparky (an earlier commit's, for a before-and-after).
# Cargo's output goes where CARGO_TARGET_DIR says, when it is set.
BUILT=${CARGO_TARGET_DIR:-target}/release
SPARKY=${SPARKY_BIN:-$BUILT/sparky}
SPARKY_BEFORE=${SPARKY_BEFORE_BIN:-}
FLOOR=$BUILT/examples/floor
LOADGEN=$BUILT/examples/loadgen

started_at=$(date +%s)
log() { printf '[bench %3ss] %s\n' "$(($(date +%s) - started_at))" "$*" >&2; }

# The limit applies to this shell and is inherited by every process it starts.
if ! ulimit -n 65536 2>/dev/null; then
    ulimit -n "$(ulimit -Hn)"
fi
log "open-file limit: $(ulimit -n)"
# Sparky uses one descriptor per WebSocket (its socket).
if (($(ulimit -n) < IDLE_CLIENTS + 100)); then
    log "warning: $(ulimit -n) open files may be too few for Sparky to hold $IDLE_CLIENTS connections"
fi

if [[ -z ${NO_BUILD:-} ]]; then
    log "building (release)"
    cargo build --release --quiet --bin sparky --example loadgen --example floor
fi

VENV=target/bench-venv
FASTAPI_PYTHON=$VENV/bin/python
if [[ -z ${NO_FASTAPI:-} ]]; then
    if ! "$FASTAPI_PYTHON" -c "import fastapi, uvicorn, httpx" 2>/dev/null; then
        log "installing FastAPI and uvicorn into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet -r bench/requirements.txt
    fi
fi

# Old logs go: a server's address is read from a log file of the same name.
rm -rf "$OUT/logs" "$OUT/data"
mkdir -p "$OUT/logs"
: >"$RESULTS"
# The machine is shared: what else ran is part of every figure.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before the rounds: $load_before"

sparky_flags=(--max-connections 20000)
# Not `--help | grep -q`: with pipefail, grep quitting early can fail the pipeline.
sparky_help=$("$SPARKY" --help)
if [[ $sparky_help == *--rate-limit* ]]; then
    sparky_flags+=(--rate-limit off)
fi
# One load generator is one principal making thousands of conversations and turns: lift the
# per-principal bounds that are there to stop exactly that.
if [[ $sparky_help == *--new-conversation-rate* ]]; then
    sparky_flags+=(--new-conversation-rate off --max-running-turns-per-principal 100000
        --max-running-turns 100000)
fi
# shellcheck disable=SC2206 # Word splitting of SPARKY_ARGS is the point.
sparky_flags+=(${SPARKY_ARGS:-})
log "sparky flags: ${sparky_flags[*]}"
servers=(sparky floor)
if [[ $sparky_help == *--in-memory* ]]; then
    servers=(sparky sparky-mem floor)
fi
if [[ -n $SPARKY_BEFORE ]]; then
    # The earlier build gets the same flags: bench.sh only lifts limits both builds know.
    servers+=(sparky-before)
    [[ $sparky_help == *--in-memory* ]] && servers+=(sparky-mem-before)
fi
if [[ -z ${NO_FASTAPI:-} ]]; then
    servers+=(fastapi)
fi

SERVER_PID=""
SERVER_ADDR=""
SERVER_COUNT=0

stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# start_server sparky|sparky-mem|floor|fastapi: starts a fresh server and sets SERVER_PID and
# SERVER_ADDR.
start_server() {
    local name=$1
    SERVER_COUNT=$((SERVER_COUNT + 1))
    local stdout="$OUT/logs/$SERVER_COUNT-$name.out"
    local stderr="$OUT/logs/$SERVER_COUNT-$name.err"
    # Emptied here, not only by the redirection below: that happens in the started process,
    # which the loop that reads the address may overtake.
    : >"$stdout"
    if [[ $name == sparky* ]]; then
        local data="$OUT/data/$SERVER_COUNT"
        local flags=("${sparky_flags[@]}")
        [[ $name == sparky-mem* ]] && flags+=(--in-memory)
        local binary=$SPARKY
        [[ $name == *-before ]] && binary=$SPARKY_BEFORE
        mkdir -p "$data"
        "$binary" --addr 127.0.0.1:0 --data-dir "$data" "${flags[@]}" >"$stdout" 2>"$stderr" &
    elif [[ $name == fastapi ]]; then
        "$FASTAPI_PYTHON" bench/fastapi_app.py --addr 127.0.0.1:0 >"$stdout" 2>"$stderr" &
    else
        "$FLOOR" --addr 127.0.0.1:0 >"$stdout" 2>"$stderr" &
    fi
    SERVER_PID=$!
    local line=""
    for _ in $(seq 100); do
        line=$(head -n 1 "$stdout" 2>/dev/null || true)
        [[ $line == "listening on http://"* ]] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$name exited at start; see $stderr"
            exit 1
        fi
        sleep 0.1
    done
    if [[ $line != "listening on http://"* ]]; then
        log "$name did not print its address within 10 s; see $stdout"
        exit 1
    fi
    SERVER_ADDR=${line#listening on http://}
    log "$name (pid $SERVER_PID) on $SERVER_ADDR"
}

# load LABEL ROUND SCENARIO [OPTIONS]: runs the load generator against the current server
# and appends its JSON line to the results.
load() {
    local label=$1 round=$2
    shift 2
    local line
    line=$("$LOADGEN" --url "ws://$SERVER_ADDR/ws" --label "$label" --round "$round" \
        --max-seconds "$MAX_SECONDS" "$@")
    echo "$line" >>"$RESULTS"
    log "$label round $round: $* -> $(summary "$line")"
}

summary() {
    python3 - "$1" <<'EOF_PY'
import json, sys
r = json.loads(sys.argv[1])
print("{count}/{expected} ok, {errors} errors, {throughput_per_s:.0f}/s, "
      "p50 {p50_ms} ms, p99 {p99_ms} ms, max {max_ms} ms".format(**r))
EOF_PY
}

compare_round() {
    local name=$1 round=$2
    start_server "$name"
    if wanted connect; then
        load "$name" "$round" connect --clients "$CONNECT_CLIENTS"
    fi
    if wanted turns1; then
        load "$name" "$round" turns --clients 1 --turns "$TURNS_1" --pid "$SERVER_PID"
    fi
    if wanted turns50; then
        load "$name" "$round" turns --clients 50 --turns "$TURNS_50" --pid "$SERVER_PID"
    fi
    if wanted turns500; then
        load "$name" "$round" turns --clients 500 --turns "$TURNS_500" --pid "$SERVER_PID"
    fi
    stop_server
}

# stream_round NAME ROUND: the `stream` scenario; the load generator starts the server itself.
stream_round() {
    local name=$1 round=$2 command line
    SERVER_COUNT=$((SERVER_COUNT + 1))
    if [[ $name == fastapi ]]; then
        command=("$FASTAPI_PYTHON" bench/fastapi_app.py --addr 127.0.0.1:0 --model-url '{model_url}')
    elif [[ $name == floor ]]; then
        command=("$FLOOR" --addr 127.0.0.1:0 --model-url '{model_url}' --model-name fake)
    else
        local data="$OUT/data/$SERVER_COUNT" binary=$SPARKY
        [[ $name == sparky-before ]] && binary=$SPARKY_BEFORE
        mkdir -p "$data"
        command=("$binary" --addr 127.0.0.1:0 --data-dir "$data" "${sparky_flags[@]}"
            --model openai --model-url '{model_url}' --model-name fake)
    fi
    line=$("$LOADGEN" --label "$name" --round "$round" --max-seconds "$MAX_SECONDS" stream \
        --clients "$STREAM_CLIENTS" --tokens "$STREAM_TOKENS" --tokens-per-s "$STREAM_RATE" \
        -- "${command[@]}" 2>"$OUT/logs/$SERVER_COUNT-$name-stream.err")
    echo "$line" >>"$RESULTS"
    log "$name round $round: stream -> $(stream_summary "$line")"
}

stream_summary() {
    python3 - "$1" <<'EOF_PY'
import json, sys
r = json.loads(sys.argv[1])
print("{count}/{expected} chunks, {errors} errors, delay p50 {p50_ms} p99 {p99_ms} ms, "
      "{deltas_received} deltas, CPU {server_cpu_us_per_delta} us/delta "
      "{server_cpu_us_per_chunk} us/chunk, peak RSS {server_rss_peak_kib} KiB".format(**r))
EOF_PY
}

if wanted stream; then
    stream_servers=(sparky floor)
    [[ -n $SPARKY_BEFORE ]] && stream_servers+=(sparky-before)
    [[ -z ${NO_FASTAPI:-} ]] && stream_servers+=(fastapi)
    log "stream: load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for round in $(seq "$STREAM_ROUNDS"); do
        order=("${stream_servers[@]}")
        if ((round % 2 == 0)); then
            order=()
            for ((i = ${#stream_servers[@]} - 1; i >= 0; i--)); do order+=("${stream_servers[i]}"); done
        fi
        for name in "${order[@]}"; do
            stream_round "$name" "$round"
        done
    done
    echo "{\"scenario\":\"stream-machine\",\"label\":\"\",\"round\":0,\"load_average\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >>"$RESULTS"
fi
# The servers alternate, and the order reverses every round, so that a slow phase of the
# shared machine does not land on one of them only.
for round in $(seq "$ROUNDS"); do
    wanted connect || wanted turns1 || wanted turns50 || wanted turns500 || break
    order=("${servers[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#servers[@]} - 1; i >= 0; i--)); do order+=("${servers[i]}"); done
    fi
    for name in "${order[@]}"; do
        compare_round "$name" "$round"
    done
done

load_average=$(cut -d' ' -f1-3 /proc/loadavg)
echo "{\"scenario\":\"machine\",\"load_before\":\"$load_before\",\"load_average\":\"$load_average\"}" >>"$RESULTS"
log "load average after the rounds: $load_average"

if wanted idle; then
    for name in sparky floor; do
        start_server "$name"
        load "$name" 1 idle --clients "$IDLE_CLIENTS" --seconds "$IDLE_SECONDS" \
            --pid "$SERVER_PID" --timeout-ms "$IDLE_TIMEOUT_MS"
        stop_server
    done
fi

if wanted cancel || wanted resume; then
    start_server sparky
    if wanted cancel; then
        load sparky 1 cancel --clients "$CANCEL_CLIENTS" --turns "$CANCEL_TURNS"
    fi
    if wanted resume; then
        load sparky 1 resume --clients "$RESUME_CLIENTS" --events "$RESUME_EVENTS" \
            --repeat "$RESUME_REPEAT"
    fi
    stop_server
fi

# The servers' data directories only matter while they run.
rm -rf "$OUT/data"
python3 scripts/chart.py "$RESULTS" --table "$OUT/table.md" --svg "$OUT/chart.svg"
cat "$OUT/table.md"
log "done: $RESULTS, $OUT/table.md, $OUT/chart.svg"
