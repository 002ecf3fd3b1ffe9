// What the compression tests share (tests/pusher/compression.test.mjs and
// clients/js/test/compression.test.mjs): the fixed answer to an accepted offer, a realistic
// 1.5 KB event, and the checks made on every tapped connection.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';

export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
/** The accepted offer's answer: the same for every client (docs/configuration.md). */
export const ACCEPTED = 'permessage-deflate; server_no_context_takeover; client_no_context_takeover';

/** Skip, or under CI fail, when Chromium is missing. */
export function requireChromium(t) {
  if (existsSync(CHROMIUM)) return true;
  if (process.env.CI === 'true') assert.fail(`${CHROMIUM} is missing: install Debian's chromium package`);
  t.skip(`${CHROMIUM} is not installed (apt-get install chromium)`);
  return false;
}

/**
 * A realistic publication of about 1.5 KB: a device's status with twelve sensor readings, as a
 * fleet dashboard receives it. (One non-ASCII unit, so UTF-8 goes through deflate too.)
 */
export function deviceStatus(n = 42) {
  const kinds = [
    ['temperature', '°C', 21.4], ['humidity', '%', 48.2], ['co2', 'ppm', 612], ['pm2_5', 'ug/m3', 7.9],
    ['pressure', 'hPa', 1013.2], ['noise', 'dBA', 41.5], ['voc', 'ppb', 128], ['lux', 'lx', 320],
  ];
  return {
    id: `dev-7f3a-${String(n).padStart(4, '0')}`,
    site: { name: 'Lyon Gerland, building C', floor: 3, room: 'C3-14' },
    model: 'EnviroSense ES-400',
    firmware: '4.12.3+build.8812',
    battery: { level: 0.87, voltage: 3.91, charging: false },
    online: true,
    updated_at: '2025-12-04T03:47:12.512Z',
    sensors: Array.from({ length: 12 }, (_, i) => {
      const [kind, unit, value] = kinds[i % kinds.length];
      return {
        id: `${kind}-${String(i + 1).padStart(2, '0')}`, kind, unit, value: value + i / 10, status: i === 7 ? 'warning' : 'ok',
      };
    }),
  };
}

/** A technician's note, to bring a client event (data sent as an object) to ~1.5 KB. */
export const NOTE = 'Recalibrated the CO2 sensor after the filter change; the humidity reading drifts by about 2 % '
  + 'in the afternoon sun, so the unit was moved 40 cm away from the window.';

/** The tap's one WebSocket connection to a path starting with `prefix`, opened since `since`. */
export function tapped(tap, since, prefix) {
  assert.ok(prefix, 'the path prefix of the connection to find');
  const conns = tap.connections.slice(since).filter((c) => c.request?.startsWith(`GET ${prefix}`));
  assert.equal(conns.length, 1, `one WebSocket connection through the tap, got ${JSON.stringify(conns.map((c) => c.request))}`);
  return conns[0];
}

/**
 * On every connection: frames well formed as RFC 7692 §6.1 has them. RSV1 only on the first
 * frame of a data message, never RSV2/RSV3, server frames unmasked, client frames masked.
 */
export function assertWellFormed(wire) {
  assert.deepEqual(wire.errors, []);
  for (const [side, frames, masked] of [['server', wire.frames, false], ['client', wire.clientFrames, true]]) {
    for (const f of frames) {
      assert.ok(!f.rsv2 && !f.rsv3, `${side}: no RSV2/RSV3 ${JSON.stringify(f)}`);
      assert.ok(!f.rsv1 || f.opcode === 1 || f.opcode === 2, `${side}: RSV1 only on a message's first frame ${JSON.stringify(f)}`);
      assert.equal(f.masked, masked, `${side} frames ${masked ? '' : 'un'}masked`);
    }
  }
}

