'use strict';

// A minimal realtime server on the `ws` package: JSON subscribe over WebSocket, HTTP POST
// publish, serialise each publication once and send the same buffer to every subscriber.
// It speaks the subset of Herald's native protocol that the benchmark tool uses, so the
// same tool can drive both. See README.md.

const crypto = require('node:crypto');
const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

const PORT = Number(process.env.PORT || 6201);
const HOST = process.env.HOST || '127.0.0.1';
const APP_SECRET = process.env.APP_SECRET || 'app-secret-1234';
const MAX_BODY_BYTES = 1024 * 1024;
const ACTIVITY_TIMEOUT = 120;
const PING_INTERVAL = 120;

/** @type {Map<string, Set<WebSocket>>} channel name -> subscribed sockets */
const channels = new Map();
let nextSocket = 0;
let nextMessage = 0;
const socketPrefix = `${process.pid}.`;

const newId = () => String(++nextMessage);

/** One server message in Herald's envelope shape; `ref` only when the request had one. */
function envelope(type, channel, event, data, ref) {
  const msg = {
    id: newId(),
    type,
    channel: channel ?? null,
    event: event ?? null,
    data: data ?? null,
    timestamp: Date.now(),
  };
  if (ref !== undefined) msg.ref = ref;
  return JSON.stringify(msg);
}

function send(ws, text) {
  if (ws.readyState === WebSocket.OPEN) ws.send(text);
}

function sendError(ws, message, ref) {
  send(ws, envelope('error', null, 'invalid_json', { code: 101, message }, ref));
}

function subscribe(ws, channel) {
  let subscribers = channels.get(channel);
  if (subscribers === undefined) {
    subscribers = new Set();
    channels.set(channel, subscribers);
  }
  subscribers.add(ws);
  ws.channels.add(channel);
}

function unsubscribe(ws, channel) {
  const subscribers = channels.get(channel);
  if (subscribers !== undefined) {
    subscribers.delete(ws);
    if (subscribers.size === 0) channels.delete(channel);
  }
  ws.channels.delete(channel);
}

function onMessage(ws, raw) {
  let msg;
  try {
    msg = JSON.parse(raw.toString());
  } catch (err) {
    sendError(ws, `invalid JSON: ${err.message}`);
    return;
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
    sendError(ws, 'message must be a JSON object');
    return;
  }
  const { type, channel, ref } = msg;
  switch (type) {
    case 'subscribe':
    case 'unsubscribe':
      if (typeof channel !== 'string' || channel === '') {
        sendError(ws, 'channel is required', ref);
        return;
      }
      if (type === 'subscribe') {
        subscribe(ws, channel);
        send(ws, envelope('subscribe', channel, 'subscribed', {}, ref));
      } else {
        unsubscribe(ws, channel);
        send(ws, envelope('unsubscribe', channel, 'unsubscribed', {}, ref));
      }
      return;
    case 'ping':
      send(ws, envelope('pong', null, null, null, ref));
      return;
    case 'pong':
      return;
    default:
      sendError(ws, `unknown message type ${JSON.stringify(type)}`, ref);
  }
}

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

wss.on('connection', (ws) => {
  ws.socketId = socketPrefix + ++nextSocket;
  ws.channels = new Set();
  ws.on('message', (data) => onMessage(ws, data));
  ws.on('close', () => {
    for (const channel of ws.channels) unsubscribe(ws, channel);
  });
  ws.on('error', () => {}); // 'close' follows; nothing else to clean up
  send(
    ws,
    envelope('connected', null, null, {
      socket_id: ws.socketId,
      activity_timeout: ACTIVITY_TIMEOUT,
      ping_interval: PING_INTERVAL,
    }),
  );
});

// ---- HTTP API ----------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, code, name, message) {
    super(message);
    this.status = status;
    this.code = code;
    this.name = name;
  }
}

const invalid = (message) => new HttpError(400, 104, 'invalid_request', message);

function reply(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function replyError(res, err, headers) {
  reply(res, err.status, { error: { code: err.code, name: err.name, message: err.message } }, headers);
}

const expectedAuth = Buffer.from(`Bearer ${APP_SECRET}`);

function authorised(req) {
  const given = Buffer.from(req.headers.authorization || '');
  return given.length === expectedAuth.length && crypto.timingSafeEqual(given, expectedAuth);
}

/** Read the whole body (at most MAX_BODY_BYTES), then call done(err, buffer). */
function readBody(req, done) {
  const chunks = [];
  let size = 0;
  let tooLarge = false;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      tooLarge = true;
      chunks.length = 0; // keep draining so the connection stays usable, but drop the data
    } else {
      chunks.push(chunk);
    }
  });
  req.on('end', () => {
    if (tooLarge) done(tooLargeError());
    else done(null, Buffer.concat(chunks, size));
  });
  req.on('error', () => {}); // client went away; no reply possible
}

const tooLargeError = () =>
  new HttpError(413, 302, 'payload_too_large', `request body exceeds ${MAX_BODY_BYTES} bytes`);

function parseJson(buf) {
  try {
    return JSON.parse(buf);
  } catch (err) {
    throw new HttpError(400, 101, 'invalid_json', `invalid request body: ${err.message}`);
  }
}

/** Validate one publish body; returns { channels, event, data, exclude }. */
function publication(body) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw invalid('publish body must be a JSON object');
  }
  const { channel, channels: list, event, data, exclude_socket: exclude } = body;
  let names;
  if (channel !== undefined && list !== undefined) {
    throw invalid('give either channel or channels, not both');
  } else if (channel !== undefined) {
    names = [channel];
  } else if (list !== undefined) {
    if (!Array.isArray(list) || list.length === 0) throw invalid('channels must be a non-empty array');
    names = list;
  } else {
    throw invalid('channel or channels is required');
  }
  if (!names.every((n) => typeof n === 'string' && n !== '')) {
    throw invalid('channel names must be non-empty strings');
  }
  if (typeof event !== 'string' || event === '') throw invalid('event is required');
  if (exclude !== undefined && exclude !== null && typeof exclude !== 'string') {
    throw invalid('exclude_socket must be a string');
  }
  return { channels: names, event, data: data === undefined ? null : data, exclude };
}

/** Serialise once per channel and send the same buffer to every subscriber. */
function publish({ channels: names, event, data, exclude }) {
  const id = newId();
  const timestamp = Date.now();
  for (const channel of names) {
    const subscribers = channels.get(channel);
    if (subscribers === undefined) continue;
    const buf = Buffer.from(JSON.stringify({ id, type: 'event', channel, event, data, timestamp }));
    for (const ws of subscribers) {
      if (ws.socketId !== exclude && ws.readyState === WebSocket.OPEN) {
        ws.send(buf, { binary: false });
      }
    }
  }
  return { id, channels: names };
}

const routes = {
  publish: (body) => publish(publication(body)),
  batch: (body) => {
    if (body === null || typeof body !== 'object' || !Array.isArray(body.events)) {
      throw invalid('events must be an array');
    }
    if (body.events.length === 0) throw invalid('events must not be empty');
    const all = body.events.map(publication); // validate every event before publishing any
    return { results: all.map(publish) };
  },
};

const server = http.createServer((req, res) => {
  const path = req.url.split('?', 1)[0];

  if (path === '/status') {
    if (req.method !== 'GET') {
      replyError(res, new HttpError(405, 110, 'method_not_allowed', 'use GET'));
      return;
    }
    reply(res, 200, { connections: wss.clients.size, memory_rss_bytes: process.memoryUsage().rss });
    return;
  }

  const match = /^\/api\/[^/]+\/(publish|batch)$/.exec(path);
  if (match === null) {
    replyError(res, new HttpError(404, 109, 'not_found', 'no such route'));
    return;
  }
  if (req.method !== 'POST') {
    replyError(res, new HttpError(405, 110, 'method_not_allowed', 'use POST'));
    return;
  }
  if (!authorised(req)) {
    replyError(res, new HttpError(401, 200, 'unauthorized', 'missing or wrong bearer token'));
    return;
  }
  if (Number(req.headers['content-length']) > MAX_BODY_BYTES) {
    // Refuse without reading the body; the connection cannot be reused after that.
    replyError(res, tooLargeError(), { connection: 'close' });
    return;
  }

  readBody(req, (err, buf) => {
    try {
      if (err) throw err;
      reply(res, 200, routes[match[1]](parseJson(buf)));
    } catch (e) {
      if (e instanceof HttpError) replyError(res, e);
      else {
        console.error(e);
        replyError(res, new HttpError(500, 100, 'internal', 'internal error'));
      }
    }
  });
});

server.keepAliveTimeout = 65000;

server.on('upgrade', (req, socket, head) => {
  if (!req.url.startsWith('/ws/')) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

server.listen(PORT, HOST, () => {
  console.log(`node-ws baseline listening on http://${HOST}:${PORT} (ws://${HOST}:${PORT}/ws/<key>)`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
