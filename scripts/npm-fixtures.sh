#!/usr/bin/env bash
# Installs the npm packages the tests run against, once, under target/npm/ (tests/mcp_everything.rs
# finds them there): the reference MCP server @modelcontextprotocol/server-everything, at a
# pinned version. Skips what is already installed at that version. Needs node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."

# Bump deliberately: its tools (names, arguments, long-running behaviour) are what the test uses.
EVERYTHING_VERSION="2026.1.26"

prefix="target/npm"
installed="$prefix/node_modules/@modelcontextprotocol/server-everything/package.json"
if [ -f "$installed" ] && grep -q "\"version\": \"$EVERYTHING_VERSION\"" "$installed"; then
    exit 0
fi
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
