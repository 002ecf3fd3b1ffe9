#!/usr/bin/env python3
"""Run one herald-bench scenario against Herald and the baselines, alternating, and print
medians, min-max and Herald's ratio to each.

Usage: bench/compare.sh SCENARIO [--runs N] [--servers herald,floor,node-ws,soketi]
(compare.sh builds the binaries and installs the baselines, then calls this script).
`--servers herald,herald-prev` compares a change with the build before it (see HERALD_PREV).

Every server is started fresh for every run, bound to 127.0.0.1 only, and stopped after it.
Runs alternate between servers (run 1: all servers, then run 2: all servers, ...) so slow
drifts of the machine affect every server alike. Raw results go to bench/results/.
"""

import argparse
import json
import os
import tempfile
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "herald-bench")
HERALD = os.path.join(ROOT, "target", "release", "herald")
# The previous build, for same-run comparisons of a change (`--servers herald,herald-prev`):
# build it from the commit before into this path, or point HERALD_PREV_BIN at it.
HERALD_PREV = os.environ.get("HERALD_PREV_BIN", os.path.join(ROOT, "target", "prev", "herald"))

# Each server: how to start it, where it listens, and how herald-bench talks to it.
SERVERS = {
    "herald": {
        "cmd": [HERALD, "serve", "--config", "bench/herald.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000"},
        "cwd": ROOT,
        "port": 6001,
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native"],
    },
    # Herald again, its clients on the HTTP fallbacks (for the fanout-transports scenario).
    "herald-sse": {
        "cmd": [HERALD, "serve", "--config", "bench/herald.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000"},
        "cwd": ROOT,
        "port": 6001,
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native", "--transport", "sse"],
    },
    "herald-long-poll": {
        "cmd": [HERALD, "serve", "--config", "bench/herald.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000"},
        "cwd": ROOT,
        "port": 6001,
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native", "--transport", "long-poll"],
    },
    # Herald with history on every channel: the cost of offsets and storage (not a baseline).
    "herald-history": {
        "cmd": [HERALD, "serve", "--config", "bench/herald-history.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000"},
        "cwd": ROOT,
        "port": 6001,
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native"],
    },
    # Herald with history on disk (history.store = "disk"), fsync on every commit and not.
    "herald-disk": {
        "cmd": [HERALD, "serve", "--config", "bench/herald-disk.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000",
                "HERALD_HISTORY__PATH": "fresh"},
        "cwd": ROOT,
        "port": 6001,
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native"],
    },
    "herald-disk-nofsync": {
        "cmd": [HERALD, "serve", "--config", "bench/herald-disk.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000",
                "HERALD_HISTORY__PATH": "fresh", "HERALD_HISTORY__FSYNC": "off"},
        "cwd": ROOT,
        "port": 6001,
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native"],
    },
    # One node on Redis with history on every channel (the restart scenario's cluster case).
    "herald-redis-history": {
        "cmd": [HERALD, "serve", "--config", "bench/herald-redis-history.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000"},
        "cwd": ROOT,
        "port": 6001,
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native"],
    },
    # Cluster nodes: subscribers on the first node (6001), publishes through the second
    # (6002), so every delivery crosses the broker between two processes.
    "herald-redis-2nodes": {
        "cmd": [HERALD, "serve", "--config", "bench/herald-redis.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "extra": [[HERALD, "serve", "--config", "bench/herald-redis.toml", "--listen", "127.0.0.1:6002",
                   "--admin-listen", "127.0.0.1:9602", "--log-level", "warn"]],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000"},
        "cwd": ROOT,
        "port": 6001,
        "ready": [9601, 9602],
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native"],
        "publish_args": ["--publish-addr", "127.0.0.1:6002"],
    },
    "herald-nats-2nodes": {
        "cmd": [HERALD, "serve", "--config", "bench/herald-nats.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "extra": [[HERALD, "serve", "--config", "bench/herald-nats.toml", "--listen", "127.0.0.1:6002",
                   "--admin-listen", "127.0.0.1:9602", "--log-level", "warn"]],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000"},
        "cwd": ROOT,
        "port": 6001,
        "ready": [9601, 9602],
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native"],
        "publish_args": ["--publish-addr", "127.0.0.1:6002"],
    },
    "herald-rabbitmq-2nodes": {
        "cmd": [HERALD, "serve", "--config", "bench/herald-rabbitmq.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "extra": [[HERALD, "serve", "--config", "bench/herald-rabbitmq.toml", "--listen", "127.0.0.1:6002",
                   "--admin-listen", "127.0.0.1:9602", "--log-level", "warn"]],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000"},
        "cwd": ROOT,
        "port": 6001,
        "ready": [9601, 9602],
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native"],
        "publish_args": ["--publish-addr", "127.0.0.1:6002"],
    },
    "herald-postgres-2nodes": {
        "cmd": [HERALD, "serve", "--config", "bench/herald-postgres.toml", "--listen", "127.0.0.1:6001",
                "--admin-listen", "127.0.0.1:9601", "--log-level", "warn"],
        "extra": [[HERALD, "serve", "--config", "bench/herald-postgres.toml", "--listen", "127.0.0.1:6002",
                   "--admin-listen", "127.0.0.1:9602", "--log-level", "warn"]],
        "env": {"HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0", "HERALD_LIMITS__MAX_CONNECTIONS": "200000"},
        "cwd": ROOT,
        "port": 6001,
        "ready": [9601, 9602],
        "args": ["--addr", "127.0.0.1:6001", "--protocol", "native"],
        "publish_args": ["--publish-addr", "127.0.0.1:6002"],
    },
    "floor": {
        "cmd": [BENCH, "floor", "--listen", "127.0.0.1:6401"],
        "env": {},
        "cwd": ROOT,
        "port": 6401,
        "args": ["--addr", "127.0.0.1:6401", "--protocol", "native"],
    },
    "node-ws": {
        "cmd": ["node", "server.js"],
        "env": {"PORT": "6201", "HOST": "127.0.0.1", "APP_SECRET": "app-secret-1234"},
        "cwd": os.path.join(ROOT, "bench", "baselines", "node-ws"),
        "port": 6201,
        "args": ["--addr", "127.0.0.1:6201", "--protocol", "native", "--app-id", "app", "--secret", "app-secret-1234"],
    },
    "soketi": {
        "cmd": ["bash", "start.sh"],
        "env": {"PORT": "6301"},
        "cwd": os.path.join(ROOT, "bench", "baselines", "soketi"),
        "port": 6301,
        "args": ["--addr", "127.0.0.1:6301", "--protocol", "pusher", "--app-id", "app", "--app-key", "app-key", "--secret", "app-secret-1234"],
    },
}

# Clients that offer permessage-deflate, as browsers do (the deflate scenarios).
for _name, _base in [("herald-deflate", "herald"), ("soketi-deflate", "soketi")]:
    SERVERS[_name] = dict(SERVERS[_base], args=SERVERS[_base]["args"] + ["--deflate"])
# Herald's Pusher protocol, to compare with Soketi on the same protocol.
# The disk store with a 1 s drain window instead of 5 s (the restart scenario's trade-off).
SERVERS["herald-disk-window1s"] = dict(SERVERS["herald-disk"], env=dict(SERVERS["herald-disk"]["env"], HERALD_SERVER__DRAIN_WINDOW="1s"))
SERVERS["herald-pusher"] = dict(SERVERS["herald"], args=["--addr", "127.0.0.1:6001", "--protocol", "pusher"])
SERVERS["herald-pusher-deflate"] = dict(SERVERS["herald-pusher"], args=SERVERS["herald-pusher"]["args"] + ["--deflate"])

# Every Herald server again, as "<name>-prev", running the previous build.
for _name in [n for n in SERVERS if n.startswith("herald")]:
    _prev = {k: v for k, v in SERVERS[_name].items()}
    _prev["cmd"] = [HERALD_PREV if c == HERALD else c for c in SERVERS[_name]["cmd"]]
    _prev["extra"] = [[HERALD_PREV if c == HERALD else c for c in cmd] for cmd in SERVERS[_name].get("extra", [])]
    SERVERS[_name.replace("herald", "herald-prev", 1)] = _prev

# Per scenario: the herald-bench arguments, which servers make sense, and the headline
# metrics (path in the JSON result, whether higher is better, unit).
SCENARIOS = {
    "idle": {
        "args": ["idle", "--connections", "15000", "--channels", "100", "--workers", "2", "--source-ips", "4", "--inflight", "1024"],
        "servers": ["herald", "node-ws", "soketi"],
        "metrics": [
            ("server_bytes_per_connection", False, "bytes/conn"),
            ("connect_rate_per_sec", True, "conn/s"),
        ],
    },
    # The same, reading memory after 15 s instead of 3: what the connections hold, once the
    # allocator has returned what the connects used for a moment (jemalloc's decay is 10 s).
    "idle-settled": {
        "args": ["idle", "--connections", "15000", "--channels", "100", "--workers", "2", "--source-ips", "4", "--inflight", "1024",
                 "--settle-secs", "15"],
        "servers": ["herald", "node-ws", "soketi"],
        "metrics": [
            ("server_bytes_per_connection", False, "bytes/conn"),
        ],
    },
    "fanout": {
        "args": ["fanout", "--subscribers", "10000", "--messages", "20", "--rate", "4", "--workers", "2", "--source-ips", "2"],
        "servers": ["herald", "floor", "node-ws", "soketi"],
        "metrics": [
            ("publish_to_last_delivery_ms.median", False, "ms"),
            ("delivery_latency.p99_ms", False, "ms"),
            ("publish_reply.p50_ms", False, "ms"),
        ],
    },
    # The same fan-out with clients on WebSocket, SSE and long-polling.
    "fanout-transports": {
        "args": ["fanout", "--subscribers", "5000", "--messages", "20", "--rate", "4", "--workers", "2"],
        "servers": ["herald", "herald-sse", "herald-long-poll"],
        "metrics": [
            ("publish_to_last_delivery_ms.median", False, "ms"),
            ("delivery_latency.p50_ms", False, "ms"),
            ("delivery_latency.p99_ms", False, "ms"),
        ],
    },
    # The cost of history: the same fan-out with every channel keeping history.
    "fanout-history": {
        "args": ["fanout", "--subscribers", "10000", "--messages", "20", "--rate", "4", "--workers", "2", "--source-ips", "2"],
        "servers": ["herald", "herald-history"],
        "metrics": [
            ("publish_to_last_delivery_ms.median", False, "ms"),
            ("delivery_latency.p99_ms", False, "ms"),
            ("publish_reply.p50_ms", False, "ms"),
        ],
    },
    # Disk history against memory history in one run: fan-out latency, then publish
    # throughput (every channel keeps history in each).
    "fanout-history-disk": {
        "args": ["fanout", "--subscribers", "10000", "--messages", "20", "--rate", "4", "--workers", "2", "--source-ips", "2"],
        "servers": ["herald-history", "herald-disk", "herald-disk-nofsync"],
        "baseline": "herald-history",
        "metrics": [
            ("publish_to_last_delivery_ms.median", False, "ms"),
            ("delivery_latency.p99_ms", False, "ms"),
            ("publish_reply.p50_ms", False, "ms"),
        ],
    },
    "publish-api-history-disk": {
        "args": ["publish-api", "--concurrency", "64", "--secs", "10", "--subscribers", "2", "--workers", "2"],
        "servers": ["herald-history", "herald-disk", "herald-disk-nofsync"],
        "baseline": "herald-history",
        "metrics": [
            ("publishes_per_sec", True, "pub/s"),
            ("publish_reply.p99_ms", False, "ms"),
        ],
    },
    # A zero-downtime restart (SIGUSR2) under load: 10,000 subscribers on 100 history
    # channels, 200 publishes a second (each on a new connection), 100 new connections a
    # second. The baseline is the same run's steady state before the restart; the disk
    # history and the Redis node are reported side by side.
    "restart": {
        "args": ["restart", "--subscribers", "10000", "--channels", "100", "--rate", "200",
                 "--connect-rate", "100", "--status-url", "http://127.0.0.1:9601/status"],
        "servers": ["herald-disk", "herald-disk-window1s", "herald-redis-history"],
        "baseline": "herald-disk",
        "metrics": [
            ("refused_attempts", False, "attempts"),
            ("lost", False, "publications"),
            ("duplicated", False, "publications"),
            ("handover_ms", False, "ms"),
            ("delivery_latency_before.p99_ms", False, "ms"),
            ("delivery_latency_during.p50_ms", False, "ms"),
            ("delivery_latency_during.p99_ms", False, "ms"),
            ("during_p99_over_before_p99", False, "x"),
        ],
    },
    # Fan-out across nodes: subscribers on one node, publishes through another, each broker,
    # against the single node in the same run.
    "fanout-cluster": {
        "args": ["fanout", "--subscribers", "10000", "--messages", "20", "--rate", "4", "--workers", "2", "--source-ips", "2"],
        "servers": ["herald", "herald-redis-2nodes", "herald-nats-2nodes", "herald-rabbitmq-2nodes", "herald-postgres-2nodes"],
        "metrics": [
            ("publish_to_last_delivery_ms.median", False, "ms"),
            ("delivery_latency.p50_ms", False, "ms"),
            ("delivery_latency.p99_ms", False, "ms"),
            ("publish_reply.p50_ms", False, "ms"),
        ],
    },
    # Publish throughput through each broker (publishes through the second node, 2 subscribers
    # on the first read everything).
    "publish-api-cluster": {
        "args": ["publish-api", "--concurrency", "64", "--secs", "10", "--subscribers", "2", "--workers", "2"],
        "servers": ["herald", "herald-redis-2nodes", "herald-nats-2nodes", "herald-rabbitmq-2nodes", "herald-postgres-2nodes"],
        "metrics": [
            ("publishes_per_sec", True, "pub/s"),
            ("publish_reply.p99_ms", False, "ms"),
        ],
    },
    "throughput": {
        "args": ["throughput", "--connections", "1000", "--channels", "10", "--per-connection", "10",
                 "--start-rate", "50", "--step-factor", "1.3", "--step-secs", "5", "--max-steps", "18", "--workers", "2"],
        "servers": ["herald", "floor", "node-ws", "soketi"],
        "metrics": [
            ("sustained.delivered_per_sec", True, "msg/s"),
            ("sustained.p99_ms", False, "ms"),
        ],
    },
    # permessage-deflate: the same fan-out of a 1.5 KB device status, with clients that offer
    # compression (as browsers do) and without; Soketi declines the offer (it does not enable
    # uWebSockets' compressor). Ratios are against herald-deflate.
    "fanout-deflate": {
        "args": ["fanout", "--subscribers", "10000", "--messages", "20", "--rate", "4", "--workers", "2", "--source-ips", "2",
                 "--payload-kind", "device"],
        "servers": ["herald-deflate", "herald", "herald-pusher-deflate", "herald-pusher", "soketi-deflate"],
        "baseline": "herald-deflate",
        "metrics": [
            ("wire_bytes_per_delivery", False, "bytes"),
            ("publish_to_last_delivery_ms.median", False, "ms"),
            ("delivery_latency.p50_ms", False, "ms"),
            ("delivery_latency.p99_ms", False, "ms"),
        ],
    },
    # The same with a 1.3 KB chat message (English text compresses less than telemetry).
    "fanout-deflate-chat": {
        "args": ["fanout", "--subscribers", "10000", "--messages", "20", "--rate", "4", "--workers", "2", "--source-ips", "2",
                 "--payload-kind", "chat"],
        "servers": ["herald-deflate", "herald", "herald-pusher-deflate", "soketi-deflate"],
        "baseline": "herald-deflate",
        "metrics": [
            ("wire_bytes_per_delivery", False, "bytes"),
            ("publish_to_last_delivery_ms.median", False, "ms"),
            ("delivery_latency.p99_ms", False, "ms"),
        ],
    },
    "throughput-deflate": {
        "args": ["throughput", "--connections", "1000", "--channels", "10", "--per-connection", "10",
                 "--start-rate", "50", "--step-factor", "1.3", "--step-secs", "5", "--max-steps", "18", "--workers", "2",
                 "--payload-kind", "device"],
        "servers": ["herald-deflate", "herald", "soketi-deflate"],
        "baseline": "herald-deflate",
        # At 10^5-10^6 deliveries a second, inflating each one would measure the load tool
        # (it shares the server's two cores): it reads the markers of one in 16 and counts
        # the rest. Browsers inflate on their own CPUs.
        "deflate_args": ["--inflate-every", "16"],
        "metrics": [
            ("sustained.delivered_per_sec", True, "msg/s"),
            ("sustained.p99_ms", False, "ms"),
            ("sustained.wire_bytes_per_delivery", False, "bytes"),
        ],
    },
    # Idle connections that negotiated compression hold nothing more than those that did not.
    "idle-deflate": {
        "args": ["idle", "--connections", "15000", "--channels", "100", "--workers", "2", "--source-ips", "4", "--inflight", "1024",
                 "--settle-secs", "15"],
        "servers": ["herald-deflate", "herald", "soketi-deflate"],
        "baseline": "herald-deflate",
        "metrics": [
            ("server_bytes_per_connection", False, "bytes/conn"),
        ],
    },
    "publish-api": {
        # One worker process per subscriber: a single worker cannot read 2 x 60k+ msg/s, and
        # Herald then (rightly) disconnects it as a slow consumer.
        "args": ["publish-api", "--concurrency", "64", "--secs", "10", "--subscribers", "2", "--workers", "2"],
        "servers": ["herald", "node-ws", "soketi"],
        "metrics": [
            ("publishes_per_sec", True, "pub/s"),
            ("publish_reply.p99_ms", False, "ms"),
        ],
    },
    "churn": {
        "args": ["churn", "--cycles", "200000", "--concurrency", "64", "--workers", "2"],
        "servers": ["herald", "node-ws", "soketi"],
        "metrics": [
            ("cycles_per_sec", True, "cycles/s"),
            ("rss_growth_after_reference_percent", False, "%"),
        ],
    },
}


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def wait_ready(port, timeout=20.0):
    """Wait for a Herald admin port's /ready to answer 200 (cluster nodes need their broker)."""
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


EXTRA = {}


def start(name):
    s = SERVERS[name]
    env = dict(os.environ)
    env.update(s["env"])
    if env.get("HERALD_HISTORY__PATH") == "fresh":
        # A disk store starts empty in every run.
        env["HERALD_HISTORY__PATH"] = tempfile.mkdtemp(prefix="herald-bench-history-")
    env.update({"HERALD_REDIS__PREFIX": f"bench-{os.getpid()}-{time.time_ns()}"})
    proc = subprocess.Popen(s["cmd"], cwd=s["cwd"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    extras = [subprocess.Popen(cmd, cwd=s["cwd"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
              for cmd in s.get("extra", [])]
    EXTRA[proc.pid] = extras
    if not wait_port(s["port"]) or not all(wait_ready(p) for p in s.get("ready", [])):
        stop(proc)
        raise RuntimeError(f"{name} did not start listening on {s['port']}")
    time.sleep(0.5)
    return proc


def server_pid(proc):
    """The pid of the process that actually serves (a shell script may exec or spawn node)."""
    try:
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    except OSError:
        children = []
    return int(children[0]) if children else proc.pid


def stop(proc):
    for extra in EXTRA.pop(proc.pid, []):
        try:
            os.killpg(extra.pid, signal.SIGTERM)
            extra.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(1.0)


def get(result, path):
    v = result
    for part in path.split("."):
        if not isinstance(v, dict) or part not in v or v[part] is None:
            return None
        v = v[part]
    return v


def run_one(scenario, name, label):
    proc = start(name)
    try:
        publish = SERVERS[name].get("publish_args", []) if SCENARIOS[scenario]["args"][0] in ("fanout", "publish-api") else []
        # Options for clients that offer compression (the load tool's own cost of inflating).
        if "--deflate" in SERVERS[name]["args"]:
            publish = publish + SCENARIOS[scenario].get("deflate_args", [])
        args = [BENCH] + SCENARIOS[scenario]["args"] + SERVERS[name]["args"] + publish + [
            "--server-pid", str(server_pid(proc)), "--label", name, "--json"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            print(f"  {label}: herald-bench failed: {out.stderr.strip()[-400:]}", file=sys.stderr)
            return None
        return json.loads(out.stdout)
    finally:
        stop(proc)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--servers", default=None, help="comma-separated subset")
    a = p.parse_args()
    spec = SCENARIOS[a.scenario]
    servers = a.servers.split(",") if a.servers else spec["servers"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(ROOT, "bench", "results", f"{stamp}-{a.scenario}")
    os.makedirs(outdir, exist_ok=True)
    results = {s: [] for s in servers}
    for run in range(a.runs):
        order = servers[run % len(servers):] + servers[:run % len(servers)]
        for name in order:
            label = f"run {run + 1}/{a.runs} {name}"
            print(f"== {a.scenario}: {label}", file=sys.stderr, flush=True)
            r = run_one(a.scenario, name, label)
            if r is not None:
                results[name].append(r)
                with open(os.path.join(outdir, f"{name}-{run + 1}.json"), "w") as f:
                    json.dump(r, f, indent=1)
    summary = {"scenario": a.scenario, "runs": a.runs, "command": " ".join(spec["args"]), "servers": {}}
    print()
    print(f"scenario {a.scenario}, {a.runs} runs each: herald-bench {' '.join(spec['args'])}")
    base = spec.get("baseline", "herald")
    for path, higher, unit in spec["metrics"]:
        print(f"\n  {path} ({unit}, {'higher' if higher else 'lower'} is better)")
        herald_median = None
        rows = []
        for name in servers:
            values = [get(r, path) for r in results[name]]
            values = [v for v in values if isinstance(v, (int, float))]
            if not values:
                rows.append((name, None, None, None))
                continue
            med = statistics.median(values)
            rows.append((name, med, min(values), max(values)))
            if name == base:
                herald_median = med
            summary["servers"].setdefault(name, {})[path] = {"median": med, "min": min(values), "max": max(values), "values": values}
        for name, med, lo, hi in rows:
            if med is None:
                print(f"    {name:<16} no result")
                continue
            ratio = ""
            if herald_median and name != base and med:
                r = (herald_median / med) if higher else (med / herald_median)
                ratio = f"   {base} is {r:.2f}x {'better' if r >= 1 else 'worse'}"
            print(f"    {name:<16} median {med:>12.3f}   min-max {lo:.3f} - {hi:.3f}{ratio}")
    losses = {}
    for name in servers:
        for r in results[name]:
            exp, got = get(r, "messages_expected"), get(r, "messages_received")
            if exp is not None and got is not None and exp != got:
                losses.setdefault(name, []).append(f"{got}/{exp}")
    print("\n  loss: " + (", ".join(f"{k}: {v}" for k, v in losses.items()) if losses else "none (every expected message received)"))
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\n  raw results: {os.path.relpath(outdir, ROOT)}")


if __name__ == "__main__":
    main()
