#!/usr/bin/env bash
# Start Soketi 1.6.1 as a single local process for benchmarking: one app (app / app-key /
# app-secret-1234), no limits, the in-process `local` adapter, everything on 127.0.0.1.
# Every variable below can be overridden from the caller's environment. See README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# WebSocket + HTTP API listener.
export SOKETI_HOST="${SOKETI_HOST:-127.0.0.1}"
export SOKETI_PORT="${SOKETI_PORT:-${PORT:-6301}}"

# The single app, with no connection or rate limits (these are also Soketi's defaults).
export SOKETI_DEFAULT_APP_ID="${SOKETI_DEFAULT_APP_ID:-app}"
export SOKETI_DEFAULT_APP_KEY="${SOKETI_DEFAULT_APP_KEY:-app-key}"
export SOKETI_DEFAULT_APP_SECRET="${SOKETI_DEFAULT_APP_SECRET:-app-secret-1234}"
export SOKETI_DEFAULT_APP_MAX_CONNS="${SOKETI_DEFAULT_APP_MAX_CONNS:--1}"
export SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC="${SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC:--1}"
export SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC="${SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC:--1}"
export SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC="${SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC:--1}"

# The second uWS listener (/, /ready, /usage; /metrics only when enabled) always starts.
export SOKETI_METRICS_ENABLED="${SOKETI_METRICS_ENABLED:-false}"
export SOKETI_METRICS_HOST="${SOKETI_METRICS_HOST:-127.0.0.1}"
export SOKETI_METRICS_SERVER_PORT="${SOKETI_METRICS_SERVER_PORT:-${METRICS_PORT:-9611}}"

# Single process: the in-memory adapter. node-discover still starts unconditionally; point
# its hello packets at loopback (unicast) instead of 255.255.255.255. Its UDP socket's bind
# address is not settable from the environment: soketi.json sets cluster.address.
export SOKETI_ADAPTER_DRIVER="${SOKETI_ADAPTER_DRIVER:-local}"
export SOKETI_CLUSTER_HOST="${SOKETI_CLUSTER_HOST:-127.0.0.1}"
export SOKETI_CLUSTER_UNICAST_ADDRESSES="${SOKETI_CLUSTER_UNICAST_ADDRESSES:-127.0.0.1}"
export SOKETI_CLUSTER_BROADCAST_ADDRESS="${SOKETI_CLUSTER_BROADCAST_ADDRESS:-127.0.0.1}"
export SOKETI_CLUSTER_PORT="${SOKETI_CLUSTER_PORT:-11002}"

export SOKETI_MODE="${SOKETI_MODE:-full}"
# On SIGTERM/SIGINT Soketi closes every socket and then waits this long (default 3000 ms)
# before exiting; a benchmark harness wants it gone at once.
export SOKETI_SHUTDOWN_GRACE_PERIOD="${SOKETI_SHUTDOWN_GRACE_PERIOD:-0}"

exec node node_modules/@soketi/soketi/bin/server.js start --config=soketi.json
