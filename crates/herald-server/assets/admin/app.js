// Herald's admin UI: one ES module, no build step, no framework. It talks only to /ui/api/*
// on the admin listener it was served from; the browser sends the admin credential (HTTP
// Basic) by itself, and this code never sees or stores it.
//
// Security: every value that comes from the server (channel names, user ids, user info,
// payloads, error messages) reaches the page through textContent or a form value, never as
// markup. There is no innerHTML here, no eval, and links are only "#/…" fragments built with
// URLSearchParams.

const POLL_MS = 1000; // overview (the charts) every second
const VIEW_REFRESH_MS = 3000; // channel list, channel page, connection counts
const CHART_POINTS = 300; // five minutes at one point a second
const TAIL_MAX = 500;
const HISTORY_SHOWN = 50;

// ---------------------------------------------------------------------------------------------
// DOM helpers

const $ = (id) => {
  const e = document.getElementById(id);
  if (!e) throw new Error(`missing element #${id}`);
  return e;
};

/**
 * Create an element. `props`: `class`, `text` (textContent), `dataset` (object), `title`,
 * `href` (fragments only), `on<event>` (listeners); anything else is set as an attribute.
 * Children: nodes, or strings (added as text nodes), null/undefined skipped.
 */
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = String(v);
    else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = String(dv);
    else if (k === 'href') {
      if (!String(v).startsWith('#')) throw new Error('only fragment links');
      e.setAttribute('href', v);
    } else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'style' || k.startsWith('on')) throw new Error(`refusing attribute ${k}`);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const td = (text, props = {}) => el('td', { ...props, text });
const setText = (id, text) => { $(id).textContent = String(text); };

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

/** A table row spanning every column, for "nothing here" and errors. */
function emptyRow(tbody, cols, text) {
  clear(tbody);
  tbody.append(el('tr', { class: 'empty' }, el('td', { colspan: cols, text })));
}

// ---------------------------------------------------------------------------------------------
// Formatting

const nf = new Intl.NumberFormat();
const fmtInt = (n) => (typeof n === 'number' && Number.isFinite(n) ? nf.format(Math.round(n)) : '–');

function fmtRate(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '–';
  if (n === 0) return '0';
  if (n < 10) return n.toFixed(1);
  return nf.format(Math.round(n));
}

function fmtBytes(b) {
  if (typeof b !== 'number' || !Number.isFinite(b)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i += 1; }
  return `${i === 0 ? b : b.toFixed(1)} ${units[i]}`;
}

function fmtDuration(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '–';
  let s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

/** Seconds (latency) to a short human string. */
function fmtSeconds(s) {
  if (typeof s !== 'number' || !Number.isFinite(s)) return '–';
  const p3 = (x) => String(Number(x.toPrecision(3)));
  if (s === 0) return '0';
  if (s < 1e-3) return `${p3(s * 1e6)} µs`;
  if (s < 1) return `${p3(s * 1e3)} ms`;
  return `${p3(s)} s`;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

function fmtTime(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '';
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** Seconds since the epoch as local HH:MM:SS (chart axes). */
function fmtClock(s) {
  const d = new Date(s * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtJson(v) {
  try {
    return JSON.stringify(v, null, 2) ?? 'undefined';
  } catch {
    return String(v);
  }
}

// ---------------------------------------------------------------------------------------------
// Status line: the errors of each source (overview poll, a view, an action), else the last
// information message.

const statusErrors = new Map();
let statusInfo = 'Loading…';

function renderStatus() {
  const s = $('status');
  if (statusErrors.size) {
    s.dataset.state = 'error';
    s.textContent = [...statusErrors.values()].join(' · ');
  } else {
    s.dataset.state = 'ok';
    s.textContent = statusInfo;
  }
}
function reportError(source, err) {
  statusErrors.set(source, `${source}: ${err instanceof Error ? err.message : String(err)}`);
  renderStatus();
}
function clearError(source) {
  if (statusErrors.delete(source)) renderStatus();
}
function info(text) {
  statusInfo = text;
  renderStatus();
}

// ---------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, body) {
    const e = body && typeof body === 'object' && body.error && typeof body.error === 'object' ? body.error : null;
    let message;
    if (status === 401) message = 'not authorised: reload the page to log in again';
    else if (e) message = `${e.name ?? 'error'} (${e.code ?? status}): ${e.message ?? ''}`;
    else message = `HTTP ${status}`;
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** A query string, percent-encoded (%20 for a space, which every decoder reads). */
function query(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

async function api(path, params = {}, options = {}) {
  const url = `/ui/api/${path}${query(params)}`;
  let res;
  try {
    res = await fetch(url, { credentials: 'same-origin', cache: 'no-store', ...options });
  } catch (e) {
    throw new Error(`cannot reach the server (${e.message})`, { cause: e });
  }
  const text = await res.text();
  let body = null;
  if (text) {
    try { body = JSON.parse(text); } catch { body = null; }
  }
  if (!res.ok) throw new ApiError(res.status, body);
  if (body === null) throw new Error(`${path}: the answer is not JSON`);
  return body;
}

const post = (path, payload) => api(path, {}, {
  method: 'POST',
  headers: { 'Content-Type': 'application/json', 'X-Herald-Admin': '1' },
  body: JSON.stringify(payload),
});

// ---------------------------------------------------------------------------------------------
// Routing: #/overview, #/channels?app=&prefix=, #/channel?app=&channel=, #/connections?app=,
// #/tail?app=&channel=

const VIEWS = ['overview', 'channels', 'channel', 'connections', 'tail'];

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, '');
  const q = raw.indexOf('?');
  const name = (q < 0 ? raw : raw.slice(0, q)) || 'overview';
  const params = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
  return { name: VIEWS.includes(name) ? name : 'overview', params };
}

function routeHref(name, params = {}) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') qs.set(k, v);
  return `#/${name}${qs.size ? `?${qs}` : ''}`;
}

/** Record a view's parameters in the address without navigating. */
function replaceRoute(name, params) {
  history.replaceState(null, '', routeHref(name, params));
}

let current = null; // the view shown
let viewTimer = null;

function show() {
  const { name, params } = parseRoute();
  const tab = name === 'channel' ? 'channels' : name;
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
  for (const a of document.querySelectorAll('.tabs a')) {
    if (a.dataset.tab === tab) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.body.dataset.view = name;
  if (viewTimer) { clearInterval(viewTimer); viewTimer = null; }
  current = name;
  // Errors of a view left behind no longer matter.
  for (const k of [...statusErrors.keys()]) if (k !== 'overview') statusErrors.delete(k);
  renderStatus();
  VIEW_HANDLERS[name](params);
}

/** Run `refresh` now and every VIEW_REFRESH_MS while view `name` is shown. */
function keepFresh(name, refresh) {
  if (current !== name) return; // left while the view was loading
  if (viewTimer) clearInterval(viewTimer);
  refresh();
  viewTimer = setInterval(() => {
    if (current === name && document.visibilityState === 'visible') refresh();
  }, VIEW_REFRESH_MS);
}

// ---------------------------------------------------------------------------------------------
// Apps: the selectors of every view, filled from the overview's `apps`

let apps = [];
let appsReady;
const appsLoaded = new Promise((r) => { appsReady = r; });

function fillAppSelect(select, wanted) {
  const value = wanted ?? select.value;
  const have = [...select.options].map((o) => o.value);
  const list = value && !apps.includes(value) ? [...apps, value] : apps;
  if (have.join('\n') !== list.join('\n')) {
    clear(select);
    for (const a of list) select.append(el('option', { value: a, text: a }));
  }
  if (value && list.includes(value)) select.value = value;
  else if (list.length) select.value = list[0];
}

function setApps(list) {
  const next = Array.isArray(list) ? list.map(String) : [];
  const changed = next.join('\n') !== apps.join('\n');
  apps = next;
  if (changed) for (const id of ['channels-app', 'connections-app', 'tail-app']) fillAppSelect($(id));
  appsReady();
}

/** The app a view should show: the address's, else the selector's, else the first. */
async function chooseApp(selectId, params) {
  await appsLoaded;
  const select = $(selectId);
  fillAppSelect(select, params.get('app') || select.value || undefined);
  return select.value;
}

// ---------------------------------------------------------------------------------------------
// Overview: polled every second, always (the charts keep their five minutes of history while
// other tabs are shown).

const COLORS = ['#2f7de1', '#e8590c', '#2b8a3e', '#c2255c', '#7048e8', '#0c8599', '#e67700', '#5c940d', '#862e9c', '#495057'];

const rates = new Map(); // node id → {t, counters, rate: {in, out, dropped}}
const series = {
  x: [],
  in: [],
  out: [],
  dropped: [],
  perNode: new Map(), // node id → connections, aligned with x (null where absent)
};
let lastOverview = null;

/** Per-second rates of a node's counters from its previous report (negative deltas: 0). */
function nodeRates(node, nowMs) {
  const t = typeof node.reported_at_ms === 'number' ? node.reported_at_ms : nowMs;
  const c = node.counters ?? {};
  const prev = rates.get(node.id);
  if (!prev) {
    const entry = { t, counters: c, rate: null };
    rates.set(node.id, entry);
    return entry.rate;
  }
  if (t > prev.t) {
    const dt = (t - prev.t) / 1000;
    const r = (k) => Math.max(0, (Number(c[k]) || 0) - (Number(prev.counters[k]) || 0)) / dt;
    prev.rate = { in: r('messages_in'), out: r('messages_out'), dropped: r('messages_dropped') };
    prev.t = t;
    prev.counters = c;
  }
  return prev.rate;
}

function pushPoint(arr, v) {
  arr.push(v);
  if (arr.length > CHART_POINTS) arr.splice(0, arr.length - CHART_POINTS);
}

function recordSeries(ov, nodeRateList) {
  const x = (typeof ov.time_ms === 'number' ? ov.time_ms : Date.now()) / 1000;
  if (series.x.length && x <= series.x[series.x.length - 1]) return false; // same instant
  const sum = (k) => {
    const known = nodeRateList.filter((r) => r);
    return known.length ? known.reduce((a, r) => a + r[k], 0) : null;
  };
  const len = series.x.length;
  pushPoint(series.x, x);
  pushPoint(series.in, sum('in'));
  pushPoint(series.out, sum('out'));
  pushPoint(series.dropped, sum('dropped'));
  const seen = new Set();
  for (const n of ov.nodes ?? []) {
    seen.add(n.id);
    let arr = series.perNode.get(n.id);
    if (!arr) {
      arr = new Array(len).fill(null);
      series.perNode.set(n.id, arr);
    }
    pushPoint(arr, typeof n.connections === 'number' ? n.connections : null);
  }
  for (const [id, arr] of series.perNode) {
    if (!seen.has(id)) pushPoint(arr, null);
    if (arr.every((v) => v === null)) series.perNode.delete(id);
  }
  return true;
}

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

/** A uPlot chart in `container`, rebuilt when its series change; sized to the container. */
class Chart {
  constructor(container, { yLabel, valueFormat }) {
    this.container = container;
    this.yLabel = yLabel;
    this.valueFormat = valueFormat;
    this.plot = null;
    this.key = '';
    this.updates = 0;
    this.pending = null;
    new ResizeObserver(() => this.resize()).observe(container);
  }

  size() {
    const w = Math.floor(this.container.clientWidth);
    return { width: w, height: Math.max(180, Math.min(260, Math.round(w * 0.45))) };
  }

  resize() {
    const { width, height } = this.size();
    if (width <= 0) return;
    if (!this.plot && this.pending) this.update(...this.pending);
    else if (this.plot) this.plot.setSize({ width, height });
  }

  /** `names`: series labels; `data`: [x, ...ys]. */
  update(names, data) {
    this.pending = [names, data];
    this.container.dataset.points = String(data[0].length);
    this.container.dataset.series = String(names.length);
    if (data[0].length) this.container.dataset.lastX = String(data[0][data[0].length - 1]);
    const { width, height } = this.size();
    if (width <= 0 || typeof window.uPlot !== 'function') return; // hidden; drawn when shown
    const key = names.join('\n');
    if (!this.plot || key !== this.key) {
      this.plot?.destroy();
      clear(this.container);
      this.key = key;
      const axis = cssVar('--muted', '#888');
      const grid = cssVar('--grid', 'rgba(128,128,128,0.2)');
      const fmt = this.valueFormat;
      this.plot = new window.uPlot({
        width,
        height,
        legend: { show: true, live: true },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Number.isFinite(max) && max > 0 ? max * 1.1 : 1] } },
        axes: [
          {
            stroke: axis,
            grid: { stroke: grid },
            ticks: { stroke: grid },
            space: 70,
            incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600],
            values: (_u, vals) => vals.map(fmtClock),
          },
          { stroke: axis, grid: { stroke: grid }, ticks: { stroke: grid }, label: this.yLabel, size: 60, values: (_u, vals) => vals.map((v) => fmt(v)) },
        ],
        series: [
          { label: 'time', value: (_u, v) => (v === null || v === undefined ? '–' : fmtClock(v)) },
          ...names.map((n, i) => ({
            label: n,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            spanGaps: false,
            points: { show: false },
            value: (_u, v) => (v === null || v === undefined ? '–' : fmt(v)),
          })),
        ],
      }, data, this.container);
    } else {
      this.plot.setData(data);
    }
    this.updates += 1;
    this.container.dataset.updates = String(this.updates);
  }
}

let messagesChart = null;
let connectionsChart = null;

function drawCharts() {
  messagesChart ??= new Chart($('chart-messages'), { yLabel: 'messages/s', valueFormat: fmtRate });
  connectionsChart ??= new Chart($('chart-connections'), { yLabel: 'connections', valueFormat: fmtInt });
  messagesChart.update(['in', 'out', 'dropped'], [series.x, series.in, series.out, series.dropped]);
  const ids = [...series.perNode.keys()].sort();
  connectionsChart.update(ids, [series.x, ...ids.map((id) => series.perNode.get(id))]);
}

/** Quantile `q` of a cumulative histogram (Prometheus histogram_quantile), or null. */
export function quantile(q, buckets) {
  const bs = (buckets ?? [])
    .map((b) => ({ le: b.le === '+Inf' || b.le === 'Inf' ? Infinity : Number(b.le), count: Number(b.count) || 0 }))
    .filter((b) => !Number.isNaN(b.le))
    .sort((a, b) => a.le - b.le);
  if (!bs.length) return null;
  const total = bs[bs.length - 1].count;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const b of bs) {
    if (b.count >= rank) {
      if (b.le === Infinity) return { value: prevLe, above: true };
      const inBucket = b.count - prevCount;
      const frac = inBucket > 0 ? (rank - prevCount) / inBucket : 1;
      return { value: prevLe + (b.le - prevLe) * frac, above: false };
    }
    prevLe = b.le === Infinity ? prevLe : b.le;
    prevCount = b.count;
  }
  return { value: prevLe, above: true };
}

function renderLatency(latency) {
  const buckets = latency?.buckets ?? [];
  for (const [id, q] of [['latency-p50', 0.5], ['latency-p90', 0.9], ['latency-p99', 0.99]]) {
    const r = quantile(q, buckets);
    const e = $(id);
    e.textContent = r ? `${r.above ? '> ' : ''}${fmtSeconds(r.value)}` : '–';
    e.dataset.value = r ? String(r.value) : '';
  }
  const count = Number(latency?.count) || 0;
  setText('latency-mean', count ? fmtSeconds(Number(latency.sum_seconds) / count) : '–');
  setText('latency-count', fmtInt(count));

  // Per-bucket (not cumulative) counts as horizontal bars.
  const box = $('latency-histogram');
  clear(box);
  const sorted = buckets
    .map((b) => ({ le: b.le === '+Inf' || b.le === 'Inf' ? Infinity : Number(b.le), count: Number(b.count) || 0 }))
    .sort((a, b) => a.le - b.le);
  let prev = 0;
  let lastFinite = 0;
  const rows = sorted.map((b) => {
    const n = Math.max(0, b.count - prev);
    prev = b.count;
    const row = { le: b.le, above: lastFinite, n };
    if (b.le !== Infinity) lastFinite = b.le;
    return row;
  });
  const max = Math.max(1, ...rows.map((r) => r.n));
  if (!rows.length) box.append(el('p', { class: 'muted small', text: 'No latency samples yet.' }));
  for (const r of rows) {
    const bar = el('span', { class: 'bar' });
    bar.style.width = `${(100 * r.n) / max}%`; // CSSOM, allowed by the CSP
    box.append(el('div', { class: 'hrow', dataset: { testid: 'latency-bucket', le: String(r.le) } },
      el('span', { class: 'hlabel', text: r.le === Infinity ? `> ${fmtSeconds(r.above)}` : `≤ ${fmtSeconds(r.le)}` }),
      el('span', { class: 'htrack' }, bar),
      el('span', { class: 'hcount', text: fmtInt(r.n) })));
  }
}

function renderOverview(ov, nodeRateList) {
  const nodes = Array.isArray(ov.nodes) ? ov.nodes : [];
  const self = nodes.find((n) => n.self) ?? nodes.find((n) => n.id === ov.node_id);
  setText('self-node', ov.node_id ?? '?');
  document.title = `Herald admin · ${ov.node_id ?? ''}`;

  // Cards.
  const totalConnections = nodes.reduce((a, n) => a + (Number(n.connections) || 0), 0);
  setText('stat-nodes', fmtInt(nodes.length));
  setText('stat-connections', fmtInt(totalConnections));
  const last = (arr) => (arr.length ? arr[arr.length - 1] : null);
  setText('stat-rate-in', fmtRate(last(series.in)));
  setText('stat-rate-out', fmtRate(last(series.out)));
  setText('stat-rate-dropped', fmtRate(last(series.dropped)));
  const slow = nodes.reduce((a, n) => a + (Number(n.counters?.slow_consumer_disconnects) || 0), 0);
  setText('stat-slow-consumers', fmtInt(slow));
  const h = ov.history;
  if (h && typeof h === 'object' && !h.error) {
    setText('stat-history', fmtBytes(Number(h.bytes)));
    setText('stat-history-sub', `${fmtInt(Number(h.streams))} streams · ${fmtInt(Number(h.publications))} publications`);
  } else {
    setText('stat-history', '–');
    setText('stat-history-sub', h?.error ? String(h.error) : 'no history kept');
  }
  const w = ov.webhooks;
  if (w && typeof w === 'object') {
    setText('stat-webhooks', fmtInt(Number(w.queued)));
    setText('stat-webhooks-sub', `sent ${fmtInt(Number(w.sent))} · failed ${fmtInt(Number(w.failed))} · dropped ${fmtInt(Number(w.dropped))}`);
  } else {
    setText('stat-webhooks', '–');
    setText('stat-webhooks-sub', '');
  }

  // Nodes table: this node first, then by id.
  const body = $('nodes-body');
  clear(body);
  const ordered = [...nodes].sort((a, b) => (b.self === true) - (a.self === true) || String(a.id).localeCompare(String(b.id)));
  for (const n of ordered) {
    const i = nodes.indexOf(n);
    const r = nodeRateList[i];
    const broker = n.broker ?? {};
    const brokerCell = el('td', { dataset: { testid: 'node-broker', healthy: String(broker.healthy === true) } },
      el('span', { class: `dot ${broker.healthy ? 'ok' : 'bad'}`, 'aria-hidden': 'true' }),
      `${broker.name ?? '?'} ${broker.healthy ? 'healthy' : `degraded${broker.reason ? `: ${broker.reason}` : ''}`}`);
    const readyCell = el('td', { dataset: { testid: 'node-ready', ready: String(n.ready === true) } },
      el('span', { class: `dot ${n.ready ? 'ok' : 'bad'}`, 'aria-hidden': 'true' }),
      n.ready ? 'ready' : `not ready${n.reason ? `: ${n.reason}` : ''}`);
    const age = typeof n.reported_at_ms === 'number' && typeof ov.time_ms === 'number' ? Math.max(0, ov.time_ms - n.reported_at_ms) / 1000 : null;
    body.append(el('tr', { dataset: { testid: 'node-row', nodeId: n.id, self: String(n.self === true) }, class: n.self ? 'self' : '' },
      el('td', { dataset: { testid: 'node-id' } }, el('code', { text: n.id }), n.self ? el('span', { class: 'badge', dataset: { testid: 'node-self' }, text: 'this node' }) : null),
      td(n.version ?? '?', { dataset: { testid: 'node-version' } }),
      el('td', { dataset: { testid: 'node-uptime' }, title: n.pid ? `pid ${n.pid}` : null, text: fmtDuration(Number(n.uptime_seconds)) }),
      readyCell,
      brokerCell,
      td(fmtInt(Number(n.connections)), { class: 'num', dataset: { testid: 'node-connections', value: Number(n.connections) || 0 } }),
      td(r ? fmtRate(r.in) : '–', { class: 'num', dataset: { testid: 'node-rate-in' } }),
      td(r ? fmtRate(r.out) : '–', { class: 'num', dataset: { testid: 'node-rate-out' } }),
      td(age === null ? '–' : `${age.toFixed(1)} s`, { class: `num${age !== null && age > 15 ? ' warn' : ''}`, dataset: { testid: 'node-report-age' } })));
  }
  if (!nodes.length) emptyRow(body, 9, 'No nodes reported.');
  $('nodes-table').dataset.nodes = String(nodes.length);

  // Connections by app, protocol and transport, summed over the nodes.
  const sums = new Map();
  for (const n of nodes) {
    for (const b of n.by_app ?? []) {
      const k = JSON.stringify([b.app, b.protocol, b.transport]);
      sums.set(k, (sums.get(k) ?? 0) + (Number(b.connections) || 0));
    }
  }
  const byApp = $('by-app-body');
  clear(byApp);
  const entries = [...sums.entries()].map(([k, v]) => [JSON.parse(k), v])
    .sort((a, b) => String(a[0][0]).localeCompare(String(b[0][0])) || b[1] - a[1]);
  for (const [[app, protocol, transport], count] of entries) {
    byApp.append(el('tr', { dataset: { testid: 'by-app-row', app, protocol, transport } },
      td(app), td(protocol), td(transport), td(fmtInt(count), { class: 'num', dataset: { testid: 'by-app-connections', value: count } })));
  }
  if (!entries.length) emptyRow(byApp, 4, 'No connections.');

  renderLatency(ov.latency);
  if (self) $('self-node').title = `version ${self.version ?? '?'}`;
}

let overviewTimer = null;
async function pollOverview() {
  try {
    const ov = await api('overview');
    lastOverview = ov;
    setApps(ov.apps);
    const nodes = Array.isArray(ov.nodes) ? ov.nodes : [];
    const now = typeof ov.time_ms === 'number' ? ov.time_ms : Date.now();
    const nodeRateList = nodes.map((n) => nodeRates(n, now));
    for (const id of [...rates.keys()]) if (!nodes.some((n) => n.id === id)) rates.delete(id);
    if (recordSeries(ov, nodeRateList)) drawCharts();
    renderOverview(ov, nodeRateList);
    clearError('overview');
    if (statusInfo === 'Loading…') info(`Connected to node ${ov.node_id}.`);
  } catch (e) {
    reportError('overview', e);
  } finally {
    overviewTimer = setTimeout(pollOverview, POLL_MS);
  }
}

// ---------------------------------------------------------------------------------------------
// Channels

let prefixDebounce = null;

async function loadChannels() {
  const app = $('channels-app').value;
  if (!app) return;
  const prefix = $('channels-prefix').value;
  const tbody = $('channels-list');
  try {
    const r = await api('channels', { app, prefix });
    if (current !== 'channels' || $('channels-app').value !== app || $('channels-prefix').value !== prefix) return; // stale
    clear(tbody);
    const list = Array.isArray(r.channels) ? r.channels : [];
    for (const c of list) {
      const name = String(c.name);
      tbody.append(el('tr', { dataset: { testid: 'channel-row', channel: name } },
        el('td', {}, el('a', { href: routeHref('channel', { app, channel: name }), class: 'mono', dataset: { testid: 'channel-link' }, text: name })),
        td(fmtInt(Number(c.subscribers)), { class: 'num', dataset: { testid: 'channel-subscriber-count', value: Number(c.subscribers) || 0 } })));
    }
    if (!list.length) emptyRow(tbody, 2, prefix ? 'No channel with subscribers has this prefix.' : 'No channel has subscribers.');
    tbody.dataset.count = String(list.length);
    setText('channels-summary', `${fmtInt(list.length)} channel${list.length === 1 ? '' : 's'} with subscribers${r.truncated ? ' (truncated: narrow the prefix to see the rest)' : ''}, cluster-wide.`);
    clearError('channels');
  } catch (e) {
    reportError('channels', e);
  }
}

async function showChannels(params) {
  const app = await chooseApp('channels-app', params);
  if (current !== 'channels') return;
  if (params.has('prefix')) $('channels-prefix').value = params.get('prefix');
  replaceRoute('channels', { app, prefix: $('channels-prefix').value });
  keepFresh('channels', loadChannels);
}

function channelsParamsChanged() {
  replaceRoute('channels', { app: $('channels-app').value, prefix: $('channels-prefix').value });
  loadChannels();
}

// One channel

async function loadChannel(app, channel) {
  try {
    const r = await api('channel', { app, channel });
    const p = parseRoute();
    if (current !== 'channel' || p.params.get('app') !== app || p.params.get('channel') !== channel) return;
    const subs = Number(r.subscribers) || 0;
    setText('channel-subscribers', fmtInt(subs));
    $('channel-subscribers').dataset.value = String(subs);

    const presence = $('presence-list');
    clear(presence);
    if (Array.isArray(r.presence)) {
      setText('presence-note', `${fmtInt(r.presence.length)} member${r.presence.length === 1 ? '' : 's'}.`);
      for (const m of r.presence) {
        const uid = String(m.user_id);
        presence.append(el('tr', { dataset: { testid: 'presence-member', userId: uid } },
          el('td', { class: 'mono', dataset: { testid: 'presence-user-id' }, text: uid }),
          el('td', {}, el('pre', { class: 'json', dataset: { testid: 'presence-user-info' }, text: m.user_info === undefined || m.user_info === null ? 'null' : fmtJson(m.user_info) }))));
      }
      if (!r.presence.length) emptyRow(presence, 2, 'No members.');
    } else {
      setText('presence-note', 'Not a presence channel.');
    }

    const hist = $('history-list');
    clear(hist);
    if (r.history && typeof r.history === 'object') {
      const pubs = Array.isArray(r.history.publications) ? r.history.publications.slice(-HISTORY_SHOWN).reverse() : [];
      setText('history-note', `Epoch ${r.history.epoch ?? '?'}, latest offset ${r.history.offset ?? '?'}; ${pubs.length} shown.`);
      for (const pub of pubs) hist.append(eventItem(pub, 'history-item'));
      if (!pubs.length) hist.append(el('li', { class: 'muted', text: 'No publications kept.' }));
    } else {
      setText('history-note', 'This channel keeps no history (no [[apps.history]] rule covers it).');
    }
    clearError('channel');
  } catch (e) {
    reportError('channel', e);
  }
}

async function showChannel(params) {
  const app = params.get('app') ?? '';
  const channel = params.get('channel') ?? '';
  setText('channel-app', app ? `${app} /` : '');
  setText('channel-name', channel);
  setText('channel-subscribers', '–');
  setText('presence-note', '');
  setText('history-note', '');
  clear($('presence-list'));
  clear($('history-list'));
  $('channel-back').setAttribute('href', routeHref('channels', { app }));
  $('channel-tail-link').setAttribute('href', routeHref('tail', { app, channel }));
  document.title = `${channel} · Herald admin`;
  if (!app || !channel) {
    reportError('channel', 'no app or channel given');
    return;
  }
  keepFresh('channel', () => loadChannel(app, channel));
}

/** A publication as a list item: time, event, position, then its data. */
function eventItem(pub, testid) {
  const meta = el('div', { class: 'event-meta' },
    el('span', { class: 'time', text: fmtTime(Number(pub.timestamp)) }),
    pub.channel !== undefined && testid === 'tail-item' ? el('span', { class: 'mono chan', dataset: { testid: 'tail-item-channel' }, text: String(pub.channel) }) : null,
    el('strong', { class: 'mono', dataset: { testid: `${testid}-event` }, text: String(pub.event ?? '') }),
    pub.offset !== undefined && pub.offset !== null ? el('span', { class: 'muted small', text: `#${pub.offset}${pub.epoch ? ` · ${pub.epoch}` : ''}` }) : null);
  return el('li', { class: 'event', dataset: { testid, event: String(pub.event ?? ''), offset: pub.offset ?? '' } },
    meta, el('pre', { class: 'json', dataset: { testid: `${testid}-data` }, text: fmtJson(pub.data) }));
}

// ---------------------------------------------------------------------------------------------
// Connections

async function loadConnections() {
  const app = $('connections-app').value;
  if (!app) return;
  try {
    const r = await api('connections', { app });
    if (current !== 'connections' || $('connections-app').value !== app) return;
    setText('connections-node', r.node_id ?? '?');
    const tb = $('transport-body');
    clear(tb);
    const rows = Array.isArray(r.by_transport) ? r.by_transport : [];
    for (const t of rows) {
      tb.append(el('tr', { dataset: { testid: 'transport-row', protocol: t.protocol, transport: t.transport } },
        td(t.protocol), td(t.transport), td(fmtInt(Number(t.connections)), { class: 'num', dataset: { testid: 'transport-connections', value: Number(t.connections) || 0 } })));
    }
    if (!rows.length) emptyRow(tb, 3, 'No connections on this node.');
    const ib = $('top-ips-body');
    clear(ib);
    const ips = Array.isArray(r.top_ips) ? r.top_ips : [];
    for (const t of ips) {
      ib.append(el('tr', { dataset: { testid: 'top-ip-row', ip: t.ip } },
        td(t.ip, { class: 'mono' }), td(fmtInt(Number(t.connections)), { class: 'num', dataset: { testid: 'top-ip-connections', value: Number(t.connections) || 0 } })));
    }
    if (!ips.length) emptyRow(ib, 2, 'No connections on this node.');
    clearError('connections');
  } catch (e) {
    reportError('connections', e);
  }
}

let lookedUp = null; // {app, user}

async function lookupUser(app, user) {
  const box = $('user-result');
  try {
    const r = await api('user', { app, user });
    lookedUp = { app, user };
    box.hidden = false;
    setText('user-result-id', r.user ?? user);
    setText('user-result-node', r.node_id ?? '?');
    const list = Array.isArray(r.connections) ? r.connections : [];
    setText('user-result-count', fmtInt(list.length));
    $('user-result-count').dataset.value = String(list.length);
    const tb = $('user-connections');
    clear(tb);
    for (const c of list) {
      tb.append(el('tr', { dataset: { testid: 'user-connection-row', socketId: c.socket_id } },
        td(c.socket_id, { class: 'mono' }), td(c.protocol), td(c.transport), td(c.ip, { class: 'mono' }),
        td(fmtDuration(Number(c.connected_seconds)), { class: 'num' })));
    }
    if (!list.length) emptyRow(tb, 5, 'No connection of this user on this node (it may have some on other nodes).');
    clearError('user');
  } catch (e) {
    reportError('user', e);
  }
}

async function disconnectUser() {
  if (!lookedUp) return;
  const { app, user } = lookedUp;
  // confirm() shows its text as text.
  if (!window.confirm(`Disconnect every connection of user "${user}" in app "${app}", on every node?`)) return;
  const button = $('user-disconnect');
  button.disabled = true;
  try {
    await post('disconnect', { app, user });
    clearError('disconnect');
    info(`Disconnected user ${user} (app ${app}) on every node.`);
    $('user-result').dataset.disconnected = user;
    // Other nodes close theirs a moment later: look again, twice.
    for (const ms of [500, 2000]) setTimeout(() => { if (lookedUp && lookedUp.user === user) lookupUser(app, user); }, ms);
  } catch (e) {
    reportError('disconnect', e);
  } finally {
    button.disabled = false;
  }
}

async function showConnections(params) {
  const app = await chooseApp('connections-app', params);
  if (current !== 'connections') return;
  replaceRoute('connections', { app });
  keepFresh('connections', loadConnections);
}

// ---------------------------------------------------------------------------------------------
// Tail and publish

let tail = null; // {source, app, channel}
let tailCount = 0;

function setTailState(state, text = state) {
  const pill = $('tail-state');
  pill.dataset.state = state;
  pill.textContent = text;
  $('tail-start').disabled = state === 'live' || state === 'connecting';
  $('tail-stop').disabled = !tail;
}

function addTailEntry(item) {
  const list = $('tail-list');
  list.prepend(item);
  while (list.children.length > TAIL_MAX) list.lastElementChild.remove();
  tailCount = list.children.length;
  list.dataset.count = String(tailCount);
  setText('tail-count', fmtInt(tailCount));
}

function stopTail() {
  if (tail) {
    tail.source.close();
    tail = null;
  }
  setTailState('stopped');
}

/** After the stream was refused, ask again with fetch to read the error's body. */
async function explainTailFailure(url) {
  const ctl = new AbortController();
  try {
    const res = await fetch(url, { signal: ctl.signal, cache: 'no-store' });
    if (res.ok) {
      ctl.abort();
      return 'the stream ended';
    }
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    return new ApiError(res.status, body).message;
  } catch (e) {
    return `cannot reach the server (${e.message})`;
  }
}

function startTail(app, channel) {
  stopTail();
  if (!app || !channel) {
    reportError('tail', 'give an app and a channel');
    return;
  }
  const url = `/ui/api/tail${query({ app, channel })}`;
  const source = new EventSource(url);
  tail = { source, app, channel };
  setTailState('connecting', 'connecting…');
  source.addEventListener('open', () => {
    if (tail?.source !== source) return;
    setTailState('live', `live: ${channel}`);
    clearError('tail');
  });
  source.addEventListener('publication', (ev) => {
    if (tail?.source !== source) return;
    let pub;
    try {
      pub = JSON.parse(ev.data);
    } catch {
      pub = { channel, event: '(unparsable)', data: ev.data, timestamp: Date.now() };
    }
    addTailEntry(eventItem(pub, 'tail-item'));
  });
  // The server skipped publications because this stream did not keep up.
  source.addEventListener('missed', (ev) => {
    if (tail?.source !== source) return;
    const n = Number(ev.data) || 0;
    addTailEntry(el('li', { class: 'event notice', dataset: { testid: 'tail-missed', missed: n } },
      `${fmtTime(Date.now())}  ${fmtInt(n)} publication${n === 1 ? '' : 's'} skipped: the tail fell behind.`));
  });
  source.addEventListener('error', async () => {
    if (tail?.source !== source) return;
    if (source.readyState === EventSource.CLOSED) {
      tail = null;
      setTailState('stopped', 'failed');
      reportError('tail', await explainTailFailure(url));
    } else {
      setTailState('connecting', 'reconnecting…');
    }
  });
}

async function publish() {
  const app = $('tail-app').value;
  const channel = $('tail-channel').value.trim();
  const event = $('publish-event').value;
  const raw = $('publish-data').value;
  const out = $('publish-result');
  out.hidden = false;
  let data = null;
  if (raw.trim() !== '') {
    try {
      data = JSON.parse(raw);
    } catch (e) {
      out.dataset.state = 'error';
      out.textContent = `Data is not valid JSON: ${e.message}`;
      return;
    }
  }
  if (!app || !channel) {
    out.dataset.state = 'error';
    out.textContent = 'Give an app and a channel above.';
    return;
  }
  $('publish-submit').disabled = true;
  try {
    const r = await post('publish', { app, channel, event, data });
    out.dataset.state = 'ok';
    out.textContent = `Published:\n${fmtJson(r)}`;
  } catch (e) {
    out.dataset.state = 'error';
    out.textContent = `Failed: ${e.message}`;
  } finally {
    $('publish-submit').disabled = false;
  }
}

async function showTail(params) {
  const app = await chooseApp('tail-app', params);
  if (current !== 'tail') return;
  if (params.has('channel')) $('tail-channel').value = params.get('channel');
  replaceRoute('tail', { app, channel: $('tail-channel').value.trim() });
}

// ---------------------------------------------------------------------------------------------
// Wiring

const VIEW_HANDLERS = {
  overview: () => { drawCharts(); if (lastOverview) clearError('overview'); },
  channels: showChannels,
  channel: showChannel,
  connections: showConnections,
  tail: showTail,
};

function wire() {
  $('channels-form').addEventListener('submit', (e) => { e.preventDefault(); channelsParamsChanged(); });
  $('channels-app').addEventListener('change', channelsParamsChanged);
  $('channels-prefix').addEventListener('input', () => {
    clearTimeout(prefixDebounce);
    prefixDebounce = setTimeout(channelsParamsChanged, 250);
  });

  $('connections-form').addEventListener('submit', (e) => { e.preventDefault(); loadConnections(); });
  $('connections-app').addEventListener('change', () => {
    replaceRoute('connections', { app: $('connections-app').value });
    loadConnections();
  });
  $('user-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const user = $('user-id').value.trim();
    if (user) lookupUser($('connections-app').value, user);
  });
  $('user-disconnect').addEventListener('click', disconnectUser);

  $('tail-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const app = $('tail-app').value;
    const channel = $('tail-channel').value.trim();
    replaceRoute('tail', { app, channel });
    startTail(app, channel);
  });
  $('tail-stop').addEventListener('click', stopTail);
  $('tail-clear').addEventListener('click', () => {
    clear($('tail-list'));
    tailCount = 0;
    $('tail-list').dataset.count = '0';
    setText('tail-count', '0');
  });
  const tailParams = () => replaceRoute('tail', { app: $('tail-app').value, channel: $('tail-channel').value.trim() });
  $('tail-app').addEventListener('change', tailParams);
  $('tail-channel').addEventListener('change', tailParams);
  $('publish-form').addEventListener('submit', (e) => { e.preventDefault(); publish(); });

  window.addEventListener('hashchange', show);
  // Charts follow the colour scheme.
  window.matchMedia?.('(prefers-color-scheme: dark)').addEventListener?.('change', () => {
    for (const c of [messagesChart, connectionsChart]) if (c) { c.key = ''; }
    drawCharts();
  });
}

wire();
show();
pollOverview();
// Exposed for debugging from the console only; nothing reads it back.
window.heraldAdmin = { get overview() { return lastOverview; }, series, stop: () => clearTimeout(overviewTimer) };
