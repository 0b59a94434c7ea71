#!/usr/bin/env bash
# Installs the npm packages the tests run against, once, under target/npm/ (tests/mcp_everything.rs
# finds them there): the reference MCP server @modelcontextprotocol/server-everything, at a
# pinned version, the MCP TypeScript SDK it is built on (pinned too: the tests run its example
# servers elicitationFormExample, and simpleStreamableHttp --oauth with its demo authorization
# server for tests/mcp_oauth.rs), oidc-provider (the authorization server with rotating refresh
# tokens that tests/fixtures/mcp-oauth-refresh.mjs runs), and the Node that runs them (the
# `node` package: Node's own binary, from the npm registry), also pinned: the server needs
# Node 20 or newer (it uses the global `crypto`), and Debian 12's is 18. Skips what is already
# installed at those versions. Needs npm.
set -euo pipefail
cd "$(dirname "$0")/.."

# Bump deliberately: its tools (names, arguments, long-running behaviour) are what the test uses.
EVERYTHING_VERSION="2026.1.26"
# Its examples (servers and the demo authorization server) are what tests/mcp_oauth.rs runs.
SDK_VERSION="1.32.2"
NODE_VERSION="20.20.2"
# A certified OpenID provider that issues rotating refresh tokens, for the refresh tests in
# tests/mcp_oauth.rs (tests/fixtures/mcp-oauth-refresh.mjs runs it; the SDK's demo
# authorization server issues none).
OIDC_PROVIDER_VERSION="9.13.3"

prefix="target/npm"
installed="$prefix/node_modules/@modelcontextprotocol/server-everything/package.json"
sdk="$prefix/node_modules/@modelcontextprotocol/sdk/package.json"
node="$prefix/node_modules/.bin/node"
oidc="$prefix/node_modules/oidc-provider/package.json"
if [ -f "$installed" ] && grep -q "\"version\": \"$EVERYTHING_VERSION\"" "$installed" &&
    [ -f "$sdk" ] && grep -q "\"version\": \"$SDK_VERSION\"" "$sdk" &&
    [ -f "$oidc" ] && grep -q "\"version\": \"$OIDC_PROVIDER_VERSION\"" "$oidc" &&
    [ -x "$node" ] && [ "$("$node" --version)" = "v$NODE_VERSION" ]; then
    exit 0
fi
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION" \
    "@modelcontextprotocol/sdk@$SDK_VERSION" "node@$NODE_VERSION" \
    "oidc-provider@$OIDC_PROVIDER_VERSION"
