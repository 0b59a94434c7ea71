#!/usr/bin/env bash
# Makes the upgrade fixtures in tests/fixtures/: for each store schema this project shipped, the
# store that the last build with that schema wrote. Each build comes from git (exported, not
# checked out), is built under target/fixtures/, runs on an empty SQLite directory and an empty
# PostgreSQL database with two tokens, and `examples/fixture_writer.rs` holds the same
# conversations with it. What it leaves is kept as tests/fixtures/sqlite-vN.db and
# tests/fixtures/postgres-vN.sql (pg_dump as INSERTs); tests/upgrades.rs checks that today's
# build upgrades each with nothing lost.
#
# Run it once when a release changes a schema: add a line to VERSIONS for the last commit with
# the old schemas (its fixtures exist already and are not remade unless --force) and one for
# HEAD. tests/fixtures/v1.db (SQLite schema 1) was written by hand-driven version 1.
#
# Needs PostgreSQL: SPARKY_TEST_POSTGRES=postgres://USER@HOST:PORT/postgres (a role that may
# create databases), pg_dump and psql of the same major version, and sqlite3.
set -euo pipefail
cd "$(dirname "$0")/.."

# commit, SQLite schema, PostgreSQL schema, fixture_writer's extra flags
VERSIONS=(
    "96b02f9 2 1"
    "9f65ad1 3 2"
    "b322b07 4 3 --branches"
    "95354b3 5 4 --branches"
    "fc9be25 8 7 --branches"
)
TOKEN=fixture-token-one
OTHER=fixture-token-two
force=${1:-}
server=${SPARKY_TEST_POSTGRES:?set SPARKY_TEST_POSTGRES to a PostgreSQL server URL}
out=tests/fixtures
# Where the old builds are made (SPARKY_FIXTURE_TARGET to share one with another tree).
target=${SPARKY_FIXTURE_TARGET:-$PWD/target/fixtures}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --quiet --example fixture_writer
writer=target/debug/examples/fixture_writer

# Runs `binary` with the store flags given, drives it, and stops it gracefully.
drive() {
    local binary=$1 extra=$2
    shift 2
    "$binary" --addr 127.0.0.1:0 --auth-token "$TOKEN" --auth-token "$OTHER" \
        --log-level warn "$@" >"$work/stdout" 2>"$work/stderr" &
    local pid=$!
    local addr=""
    for _ in $(seq 600); do
        addr=$(sed -n 's|^listening on http://||p' "$work/stdout")
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$work/stderr" >&2; return 1; }
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "fixtures.sh: $binary did not start" >&2; return 1; }
    # shellcheck disable=SC2086 # $extra is zero or more flags.
    "$writer" "$addr" "$TOKEN" "$OTHER" $extra
    kill -TERM "$pid"
    wait "$pid"
}

for line in "${VERSIONS[@]}"; do
    read -r commit sqlite postgres extra <<<"$line"
    db=$out/sqlite-v$sqlite.db
    sql=$out/postgres-v$postgres.sql
    if [ -z "$force" ] && [ -f "$db" ] && [ -f "$sql" ]; then
        continue
    fi
    echo "fixtures.sh: $commit (SQLite $sqlite, PostgreSQL $postgres)" >&2
    if [ "$commit" = HEAD ]; then
        cargo build --quiet --bin sparky
        binary=target/debug/sparky
    else
        src=$work/src-$commit
        mkdir -p "$src"
        git archive "$commit" | tar -x -C "$src"
        CARGO_TARGET_DIR=$target cargo build --quiet --bin sparky --manifest-path "$src/Cargo.toml"
        binary=$target/debug/sparky
    fi

    data=$work/data-$sqlite
    drive "$binary" "${extra:-}" --data-dir "$data"
    # One file, with what the write-ahead log holds.
    rm -f "$db"
    sqlite3 "$data/sparky.db" ".backup '$db'"

    name=sparky_fixture_v$postgres
    psql -q "$server" -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name"
    url="${server%/*}/$name"
    drive "$binary" "${extra:-}" --data-dir "$work/unused-$postgres" --store "$url"
    # psql's own commands (\restrict, since PostgreSQL 15.14) are left out: tests load the
    # script through a client, not psql.
    pg_dump --no-owner --no-privileges --no-comments --inserts "$url" | grep -v '^\\' >"$sql"
    psql -q "$server" -c "DROP DATABASE $name"
done
ls -l "$out"
