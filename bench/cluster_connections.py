#!/usr/bin/env python3
"""Hold more connections than one process can, across several Herald nodes sharing one broker.

Usage: bench/cluster_connections.py [--nodes 4] [--per-node 13000] [--broker redis]
(build first: cargo build --release -p herald-server -p herald-bench).

One process may hold about 20,000 open files on the development machine, so N Herald nodes
(ports 6001.., admin 9601..) each take `per-node` connections from their own herald-bench
`idle` run, all at once. While every connection is held, the script reads each node's
/status and the cluster-wide channel list from one node's API (whose subscriber counts sum
every node's). Each idle run then publishes one message per channel through its own node;
every run's connections share the same channel names, so they receive their own node's
publications and, through the broker, those of the other runs still connected (so
messages_received exceeds messages_expected, which counts only the run's own). Raw results go
to bench/results/.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import wait_ready  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "herald-bench")
HERALD = os.path.join(ROOT, "target", "release", "herald")
SECRET = "herald-dev-secret"


def get_json(url, token=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--per-node", type=int, default=13000)
    p.add_argument("--broker", default="redis")
    p.add_argument("--hold-secs", type=float, default=30.0)
    a = p.parse_args()
    env = dict(os.environ)
    env.update({
        "HERALD_LIMITS__MAX_CONNECTIONS_PER_IP": "0",
        "HERALD_LIMITS__MAX_CONNECTIONS": "200000",
        "HERALD_REDIS__PREFIX": f"bench-conn-{os.getpid()}-{time.time_ns()}",
    })
    nodes = []
    try:
        for i in range(a.nodes):
            port, admin = 6001 + i, 9601 + i
            proc = subprocess.Popen(
                [HERALD, "serve", "--config", f"bench/herald-{a.broker}.toml",
                 "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                 "--log-level", "warn"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            nodes.append((proc, port, admin))
        for _, _, admin in nodes:
            if not wait_ready(admin, timeout=30.0):
                raise RuntimeError(f"node with admin port {admin} not ready")
        print(f"{a.nodes} nodes ready on {a.broker}", file=sys.stderr)
        benches = []
        for proc, port, _ in nodes:
            args = [BENCH, "idle", "--connections", str(a.per_node), "--channels", "100",
                    "--workers", "1", "--source-ips", "1", "--inflight", "512",
                    "--settle-secs", str(a.hold_secs), "--addr", f"127.0.0.1:{port}",
                    "--server-pid", str(proc.pid), "--label", f"node-{port}", "--json"]
            benches.append(subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, text=True))
        # Sample while every run holds its connections (they connect in the first seconds
        # of the hold, and publish only after it).
        best = None
        deadline = time.time() + a.hold_secs
        while time.time() < deadline:
            time.sleep(2)
            try:
                per_node = [get_json(f"http://127.0.0.1:{admin}/status")["connections"]
                            for _, _, admin in nodes]
                listed = get_json("http://127.0.0.1:6001/api/herald-dev/channels", SECRET)
            except OSError:
                continue
            cluster = sum(c["subscribers"] for c in listed["channels"])
            sample = {"at_secs": round(a.hold_secs - (deadline - time.time()), 1),
                      "per_node": per_node, "total": sum(per_node),
                      "cluster_api_subscribers": cluster,
                      "cluster_api_channels": len(listed["channels"])}
            print(json.dumps(sample), file=sys.stderr)
            key = (sample["total"], sample["cluster_api_subscribers"])
            if best is None or key > (best["total"], best["cluster_api_subscribers"]):
                best = sample
        runs = []
        for b in benches:
            out, _ = b.communicate(timeout=600)
            runs.append(json.loads(out) if out.strip() else None)
    finally:
        for proc, _, _ in nodes:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
    summary = {
        "broker": a.broker, "nodes": a.nodes, "per_node": a.per_node,
        "held_at_once": best,
        "runs": [{k: r.get(k) for k in ("label", "connected", "failed", "connect_rate_per_sec",
                                        "server_bytes_per_connection", "messages_expected",
                                        "messages_received", "open_at_end")} if r else None
                 for r in runs],
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = os.path.join(ROOT, "bench", "results", f"{stamp}-cluster-connections.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"summary": summary, "raw": runs}, f, indent=1)
    print(json.dumps(summary, indent=1))
    print(f"raw: {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
