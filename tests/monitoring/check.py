#!/usr/bin/env python3
"""The monitoring artefacts, checked against a real Herald and a real Prometheus.

dist/grafana/herald.json (the Grafana dashboard) and dist/prometheus/herald-rules.yml (the
alerting rules) are only worth something while every query in them still means something.
This check:

1. reads both files and checks them without running anything: every alert expression is one
   top-level comparison (the convention the rules file states), every runbook link names a
   heading of the document it points at, every Grafana variable in a query is one we know;
2. starts one Herald (HERALD_BIN, or target/debug/herald) with a TLS listener on a
   self-signed certificate made with openssl, and keeps a little traffic going: WebSocket
   subscribers on /ws/{key} and publishes through the HTTP API;
3. starts a real Prometheus scraping Herald's admin listener every second, with the rules
   file loaded, and waits for about 15 seconds of samples;
4. evaluates every PromQL expression of the dashboard (panel targets and variable queries)
   and of the rules through Prometheus's HTTP API: each must succeed and return at least one
   series. Alert expressions get `bool` after their comparison, so a healthy node still
   returns a series (0) instead of nothing. Prometheus must also report the rule group
   evaluated without error;
5. checks that every metric name the dashboard and the rules use appears in Herald's
   /metrics (`up` excepted: Prometheus makes it), so a metric that disappears or is renamed
   fails here rather than on an operator's dashboard.

Everything it starts is stopped on the way out, also on failure. Exits 1 with the reasons on
failure. Without prometheus, promtool or openssl it prints SKIPPED and exits 0, except under
CI=true, where that is a failure. Needs PyYAML (scripts/test-monitoring provides it).
"""

import base64
import ctypes
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dist" / "grafana" / "herald.json"
RULES = ROOT / "dist" / "prometheus" / "herald-rules.yml"

# Values for the Grafana variables the dashboard uses. Prometheus scrapes every second
# here, so one-minute rate windows hold plenty of samples once ~15 s have been scraped.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1m",
    "job": "herald",
    "instance": ".*",
}

# Seconds of samples to collect before evaluating: enough for every rate window to hold
# several points.
SAMPLE_SECONDS = 15

# Metric names Prometheus makes itself rather than reading from /metrics.
SYNTHETIC_METRICS = {"up"}

# The app Herald is configured with.
APP_ID = "monitoring"
APP_KEY = "monitoring-key"
APP_SECRET = "monitoring-secret"

SUBSCRIBERS = 3
PUBLISH_INTERVAL = 0.1


class Failure(Exception):
    """A check that did not pass; the message says which and why."""


class Skip(Exception):
    """A tool the check needs is not installed (a failure under CI=true)."""


def log(message):
    print(f"check-monitoring: {message}", flush=True)


# --- PromQL, as much of it as these checks need -----------------------------------------

COMPARISON = re.compile(r"==|!=|>=|<=|<|>")
SET_OPERATOR = re.compile(r"\b(and|or|unless)\b")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}


def without_strings(expr):
    """`expr` with the contents of every string literal removed (quotes kept)."""
    return re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)


def top_level(expr):
    """`expr` with everything inside brackets and strings blanked out, same length.

    What is left is the outermost level: there, an operator is the expression's own, not
    one of a sub-expression or a label matcher.
    """
    out = []
    depth = 0
    quote = None
    escaped = False
    for c in expr:
        if quote:
            out.append(" ")
            if escaped:
                escaped = False
            elif c == "\\" and quote != "`":
                escaped = True
            elif c == quote:
                quote = None
            continue
        if c in "\"'`":
            quote = c
            out.append(" ")
        elif c in "([{":
            depth += 1
            out.append(" ")
        elif c in ")]}":
            depth -= 1
            out.append(" ")
        else:
            out.append(c if depth == 0 else " ")
    return "".join(out)


def with_bool(expr):
    """The alert expression with `bool` after its one top-level comparison operator.

    Raises Failure when the expression breaks the rules file's convention: exactly one
    top-level comparison, no `bool` already, no top-level `and`/`or`/`unless`.
    """
    outer = top_level(expr)
    operators = list(COMPARISON.finditer(outer))
    if len(operators) != 1:
        raise Failure(f"has {len(operators)} top-level comparisons, not 1: {expr}")
    if re.search(r"\bbool\b", outer):
        raise Failure(f"already uses bool: {expr}")
    if SET_OPERATOR.search(outer):
        raise Failure(f"has a top-level and/or/unless: {expr}")
    end = operators[0].end()
    return f"{expr[:end]} bool{expr[end:]}"


def metric_names(expr):
    """The metric names an expression selects (identifiers that are not functions, keywords
    or label names)."""
    text = without_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = GROUPING.sub(" ", text)  # by (...), on (...), group_left (...)
    return {m for m in IDENTIFIER.findall(text) if m not in KEYWORDS}


# --- Grafana variables ------------------------------------------------------------------

VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


def substitute(expr):
    """`expr` with every Grafana variable replaced by GRAFANA_VARIABLES; Failure on one we
    do not know (a new variable needs a value here)."""

    def value(match):
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in GRAFANA_VARIABLES:
            raise Failure(f"unknown Grafana variable ${name} in: {expr}")
        return GRAFANA_VARIABLES[name]

    return VARIABLE.sub(value, expr)


# --- Reading the artefacts --------------------------------------------------------------


def dashboard_queries(dashboard):
    """[(where, expr)] for every PromQL `expr` in the dashboard: panel targets (also inside
    collapsed rows) and annotations."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            title = node.get("title") or node.get("name")
            here = f"{where} / {title}" if title and "type" in node else where
            if isinstance(node.get("expr"), str):
                found.append((f"{here} [{node.get('refId', '?')}]", node["expr"]))
            for key, child in node.items():
                if key != "templating":
                    walk(child, here)
        elif isinstance(node, list):
            for child in node:
                walk(child, where)

    walk(dashboard, "dashboard")
    return found


def variable_queries(dashboard):
    """[(name, query)] for the dashboard's Prometheus query variables."""
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if not isinstance(query, str) or not query.strip():
            raise Failure(f"variable ${variable.get('name')} has no query")
        found.append((variable["name"], query))
    return found


def markdown_anchors(path):
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    for line in path.read_text().splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def load_rules(yaml):
    """[(alert, expr)] from the rules file, after checking its shape and runbook links."""
    data = yaml.safe_load(RULES.read_text())
    groups = data.get("groups") or []
    if [g.get("name") for g in groups] != ["herald"]:
        raise Failure(f"{RULES.relative_to(ROOT)}: expected one group `herald`")
    rules = []
    problems = []
    for rule in groups[0].get("rules") or []:
        name = rule.get("alert")
        if not name:
            problems.append(f"a rule without `alert`: {rule}")
            continue
        if rule.get("labels", {}).get("severity") not in ("page", "ticket"):
            problems.append(f"{name}: severity must be page or ticket")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            if not annotations.get(key):
                problems.append(f"{name}: no `{key}` annotation")
        runbook = annotations.get("runbook", "")
        document, _, anchor = runbook.partition("#")
        if not (ROOT / document).is_file() or anchor not in markdown_anchors(ROOT / document):
            problems.append(f"{name}: runbook {runbook} names no heading of {document}")
        try:
            with_bool(rule["expr"])
        except Failure as e:
            problems.append(f"{name}: expr {e}")
        rules.append((name, rule["expr"]))
    if problems:
        raise Failure(f"{RULES.relative_to(ROOT)}:\n  " + "\n  ".join(problems))
    return rules


# --- Processes --------------------------------------------------------------------------


def free_ports(count):
    """`count` distinct free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def die_with_parent():
    """In the child, before exec: ask Linux to send SIGTERM when this check dies, so a
    killed check leaves no server behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Process:
    """A child process with its output in a log file, stopped by stop()."""

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        self.popen = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )

    def check_running(self):
        if self.popen.poll() is not None:
            raise Failure(f"{self.name} exited with status {self.popen.returncode}")

    def stop(self, grace=15):
        """SIGTERM, then SIGKILL after `grace` seconds (Herald drains before exiting)."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log_file.close()

    def tail(self, lines=30):
        """The last lines of the log, indented; empty when it is."""
        try:
            text = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  | {line}" for line in text[-lines:])


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


def wait_for(what, check, seconds, process=None):
    """Call `check` until it returns a true value, for at most `seconds`; Failure after."""
    deadline = time.monotonic() + seconds
    last_error = None
    while time.monotonic() < deadline:
        if process:
            process.check_running()
        try:
            result = check()
            if result:
                return result
        except (OSError, http.client.HTTPException, ValueError) as e:
            last_error = e
        time.sleep(0.25)
    reason = f" ({last_error})" if last_error else ""
    raise Failure(f"timed out after {seconds} s waiting for {what}{reason}")


# --- Traffic ----------------------------------------------------------------------------


class WebSocket:
    """A minimal RFC 6455 client: enough to subscribe and read what Herald sends.

    No extensions are offered, so frames arrive uncompressed. Pings (WebSocket and Herald's
    JSON heartbeat) are answered, so the connection is never closed for silence.
    """

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, port, path):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.write_lock = threading.Lock()
        self.events = 0
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Failure(f"WebSocket {path}: connection closed during the handshake")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        lines = head.decode(errors="replace").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise Failure(f"WebSocket {path}: handshake answered {lines[0]!r}")
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        if not any(line.lower() == f"sec-websocket-accept: {accept}".lower() for line in lines):
            raise Failure(f"WebSocket {path}: wrong Sec-WebSocket-Accept")
        self.sock.settimeout(None)
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()

    def send_json(self, message):
        self._send(0x1, json.dumps(message).encode())

    def _send(self, opcode, payload):
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self.write_lock:
            self.sock.sendall(header + mask + masked)

    def _read_exact(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _read_frame(self):
        """(fin, opcode, payload) of the next frame (server frames are not masked)."""
        first, second = self._read_exact(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
        return bool(first & 0x80), first & 0x0F, self._read_exact(length)

    def _read_loop(self):
        message = b""
        try:
            while True:
                fin, opcode, payload = self._read_frame()
                if opcode == 0x8:  # close
                    return
                if opcode == 0x9:  # ping
                    self._send(0xA, payload)
                    continue
                if opcode in (0x1, 0x2, 0x0):
                    message += payload
                    if fin:
                        self._handle(message)
                        message = b""
        except (OSError, EOFError, ValueError):
            return

    def _handle(self, raw):
        message = json.loads(raw)
        if message.get("type") == "ping":
            self.send_json({"type": "pong"})
        elif message.get("type") == "event":
            self.events += 1

    def close(self):
        try:
            with self.write_lock:
                self.sock.sendall(bytes([0x88, 0x80]) + os.urandom(4))
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.reader.join(5)


class Traffic:
    """WebSocket subscribers on channel `c` and a publisher POSTing to it, until stop()."""

    def __init__(self, port):
        self.port = port
        self.sockets = []
        self.stopping = threading.Event()
        self.published = 0
        self.publish_errors = []
        for _ in range(SUBSCRIBERS):
            ws = WebSocket(port, f"/ws/{APP_KEY}")
            ws.send_json({"type": "subscribe", "channel": "c"})
            self.sockets.append(ws)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        n = 0
        while not self.stopping.wait(PUBLISH_INTERVAL):
            n += 1
            body = json.dumps({"channel": "c", "event": "e", "data": {"n": n}})
            try:
                connection.request("POST", f"/api/{APP_ID}/publish", body=body, headers={
                    "Authorization": f"Bearer {APP_SECRET}", "Content-Type": "application/json",
                })
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    self.published += 1
                else:
                    self.publish_errors.append(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException) as e:
                self.publish_errors.append(str(e))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            # Client messages too, so herald_messages_received_total moves.
            if n % 10 == 0:
                for ws in self.sockets:
                    try:
                        ws.send_json({"type": "ping"})
                    except OSError:
                        pass
        connection.close()

    def delivered(self):
        return sum(ws.events for ws in self.sockets)

    def stop(self):
        self.stopping.set()
        self.thread.join(10)
        for ws in self.sockets:
            ws.close()


# --- Prometheus's HTTP API --------------------------------------------------------------


class PrometheusApi:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path, params=None):
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as e:
            # Bad queries answer 400/422 with the error in the JSON body.
            body = json.load(e)
        if body.get("status") != "success":
            raise Failure(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr):
        """The result list of an instant query; Failure on a query error."""
        data = self.get("/api/v1/query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def rules(self):
        return self.get("/api/v1/rules")["groups"]


# --- The check --------------------------------------------------------------------------


def require_tools():
    """Paths of openssl, prometheus and promtool; Skip when one is missing."""
    paths = {}
    for tool in ("openssl", "prometheus", "promtool"):
        paths[tool] = shutil.which(tool)
        if not paths[tool]:
            raise Skip(f"{tool} is not installed")
    return paths


def herald_binary():
    path = Path(os.environ.get("HERALD_BIN") or ROOT / "target" / "debug" / "herald")
    if not path.is_absolute():
        path = ROOT / path
    if not os.access(path, os.X_OK):
        raise Failure(f"{path} not found; build it: cargo build -p herald-server --bin herald")
    return path


def make_certificate(openssl, work):
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return cert, key


def start_herald(processes, binary, work, cert, key, listen, tls, admin):
    """Herald with a TLS listener and one app keeping history, once /health answers."""
    config = work / "herald.toml"
    config.write_text(
        f'[server.tls]\nlisten = "127.0.0.1:{tls}"\ncert_file = "{cert}"\nkey_file = "{key}"\n\n'
        f'[[apps]]\nid = "{APP_ID}"\nkey = "{APP_KEY}"\nsecret = "{APP_SECRET}"\n\n'
        '[[apps.history]]\npattern = "*"\n'
    )
    # Herald reads HERALD_* variables as configuration (HERALD_BIN would be an unknown key):
    # none of ours reach it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    herald = Process("herald", [
        str(binary), "serve", "--config", str(config), "--listen", f"127.0.0.1:{listen}",
        "--admin-listen", f"127.0.0.1:{admin}", "--log-level", "warn",
    ], work / "herald.log", env)
    processes.append(herald)
    health = f"http://127.0.0.1:{admin}/health"
    wait_for("Herald's /health", lambda: http_get(health)[0] == 200, 20, herald)
    return herald


def start_prometheus(processes, tools, work, admin, port):
    """Prometheus scraping Herald every second with the rules loaded, once ready."""
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {json.dumps(str(RULES))}\n"
        "scrape_configs:\n  - job_name: herald\n    static_configs:\n"
        f"      - targets: [\"127.0.0.1:{admin}\"]\n"
    )
    checked = subprocess.run([tools["promtool"], "check", "config", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if checked.returncode != 0:
        raise Failure(f"promtool check config:\n{checked.stdout}")
    prometheus = Process("prometheus", [
        tools["prometheus"], f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ], work / "prometheus.log")
    processes.append(prometheus)
    ready = f"http://127.0.0.1:{port}/-/ready"
    wait_for("Prometheus to be ready", lambda: http_get(ready)[0] == 200, 30, prometheus)
    return prometheus


def rule_group_healthy(api, alerts):
    """The `herald` group once Prometheus has evaluated every rule in it without error."""
    group = next((g for g in api.rules() if g["name"] == "herald"), None)
    if not group:
        return None
    names = {r["name"] for r in group["rules"]}
    if names != {name for name, _ in alerts}:
        expected = sorted(name for name, _ in alerts)
        raise Failure(f"Prometheus loaded rules {sorted(names)}, the file has {expected}")
    for rule in group["rules"]:
        if rule.get("health") == "err":
            error = rule.get("lastError")
            raise Failure(f"Prometheus evaluates {rule['name']} with an error: {error}")
        if rule.get("health") != "ok":
            return None
    return group


def evaluate(api, queries):
    """Evaluate each (where, expr); the problems found, one per line."""
    problems = []
    for where, expr in queries:
        try:
            if not api.query(expr):
                problems.append(f"{where}: no series: {expr}")
        except Failure as e:
            problems.append(f"{where}: {e}: {expr}")
    return problems


def parse_variable(name, query):
    """(expr, label) of a variable query: `label_values(expr, label)` (expr None for the
    form without one) or `query_result(expr)` (label None)."""
    query = substitute(query).strip()
    match = re.fullmatch(r"label_values\((?:(.*),)?\s*(\w+)\s*\)", query, re.S)
    if match:
        return match.group(1), match.group(2)
    match = re.fullmatch(r"query_result\((.*)\)", query, re.S)
    if match:
        return match.group(1), None
    raise Failure(f"variable ${name}: a query this check cannot evaluate: {query}")


def evaluate_variable(api, name, expr, label):
    """Problems with one variable query: it must have values, and the value this check
    substitutes for the variable (the dashboard's default) must be one of them."""
    try:
        if label is None:
            values = {json.dumps(s["metric"]) for s in api.query(expr)}
        elif expr is None:
            values = set(api.get(f"/api/v1/label/{label}/values"))
        else:
            values = {s["metric"][label] for s in api.query(expr) if label in s["metric"]}
    except Failure as e:
        return [f"variable ${name}: {e}: {expr}"]
    if not values:
        return [f"variable ${name}: no values: {expr}"]
    default = GRAFANA_VARIABLES.get(name)
    if label is not None and default not in values and default != ".*":
        return [f"variable ${name}: {default!r} is not among its values {sorted(values)}"]
    return []


def read_artefacts(yaml):
    """Everything the check evaluates, read and checked statically: a dict with the
    dashboard's panel queries and variable queries, the alerts, the alert expressions with
    `bool`, and the metric names they all use."""
    dashboard = json.loads(DASHBOARD.read_text())
    panel_queries = [(where, substitute(expr)) for where, expr in dashboard_queries(dashboard)]
    if not panel_queries:
        raise Failure(f"{DASHBOARD.relative_to(ROOT)} has no queries")
    variables = [
        (name, *parse_variable(name, query)) for name, query in variable_queries(dashboard)
    ]
    alerts = load_rules(yaml)
    rule_queries = [(f"rule {name}", with_bool(expr)) for name, expr in alerts]
    used_metrics = set()
    for expr in [e for _, e in panel_queries + rule_queries] + [e for _, e, _ in variables if e]:
        used_metrics |= metric_names(expr)
    return {
        "panel_queries": panel_queries, "variables": variables, "alerts": alerts,
        "rule_queries": rule_queries, "used_metrics": used_metrics,
    }


def run(tools, artefacts):
    """Herald, traffic and Prometheus up; every query evaluated; everything stopped after."""
    panel_queries, variables = artefacts["panel_queries"], artefacts["variables"]
    alerts, rule_queries = artefacts["alerts"], artefacts["rule_queries"]
    used_metrics = artefacts["used_metrics"]
    binary = herald_binary()
    work = Path(tempfile.mkdtemp(prefix="herald-monitoring."))
    processes = []
    traffic = None
    try:
        cert, key = make_certificate(tools["openssl"], work)
        listen, tls, admin, prometheus_port = free_ports(4)
        herald = start_herald(processes, binary, work, cert, key, listen, tls, admin)
        traffic = Traffic(listen)
        prometheus = start_prometheus(processes, tools, work, admin, prometheus_port)
        api = PrometheusApi(prometheus_port)

        log(f"collecting {SAMPLE_SECONDS} s of samples")

        def enough_samples():
            herald.check_running()
            result = api.query(f'count_over_time(up{{job="herald"}}[1m]) >= {SAMPLE_SECONDS}')
            return result and api.query('up{job="herald"} == 1')

        wait_for(f"{SAMPLE_SECONDS} s of samples from Herald", enough_samples,
                 SAMPLE_SECONDS + 45, prometheus)
        wait_for("Prometheus to evaluate the herald rule group",
                 lambda: rule_group_healthy(api, alerts), 30, prometheus)
        if traffic.publish_errors:
            raise Failure(f"publishes failed: {traffic.publish_errors[:5]}")
        if traffic.delivered() == 0:
            raise Failure(f"{traffic.published} publications, but the subscribers received none")

        problems = evaluate(api, panel_queries) + evaluate(api, rule_queries)
        for name, expr, label in variables:
            problems += evaluate_variable(api, name, expr, label)

        _, exposition = http_get(f"http://127.0.0.1:{admin}/metrics")
        exposed = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", exposition, re.M))
        for missing in sorted(used_metrics - exposed - SYNTHETIC_METRICS):
            problems.append(f"metric {missing} is used but not in Herald's /metrics")

        if problems:
            raise Failure("\n  ".join([f"{len(problems)} problem(s):"] + problems))
        log(f"OK: {len(panel_queries)} dashboard queries, {len(variables)} variable queries and "
            f"{len(rule_queries)} alert rules evaluated against Herald "
            f"({traffic.published} publications, {traffic.delivered()} deliveries); "
            f"{len(used_metrics)} metric names present in /metrics")
    except Failure:
        for process in processes:
            if process.tail():
                log(f"{process.name} log (last lines):\n{process.tail()}")
        raise
    finally:
        if traffic:
            traffic.stop()
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)


def main():
    # SIGTERM (a CI timeout, say) unwinds like an error, so `finally` stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        import yaml
    except ImportError:
        log("FAIL: PyYAML is not installed (scripts/test-monitoring provides it in a venv)")
        return 1
    try:
        # The static checks need no tool, so they run even where the rest is skipped.
        artefacts = read_artefacts(yaml)
        try:
            tools = require_tools()
        except Skip as e:
            if os.environ.get("CI") == "true":
                raise Failure(f"{e}; it is required under CI")
            log(f"SKIPPED: {e} (the dashboard and rules passed the static checks)")
            return 0
        run(tools, artefacts)
    except Failure as e:
        log(f"FAIL: {e}")
        return 1
    except subprocess.CalledProcessError as e:
        stderr = (e.stderr or b"").decode(errors="replace")
        log(f"FAIL: {' '.join(map(str, e.cmd))} exited {e.returncode}: {stderr}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
