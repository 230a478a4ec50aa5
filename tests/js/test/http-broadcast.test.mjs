// HTTP broadcast: POST /api/broadcast (batch) and POST /api/broadcast/:topic/events/:event
// (realtime-js httpSend), reaching WebSocket subscribers.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startEnv, tenantJwt, subscribed, collect, uid, httpRequest, dumpFrames } from '../harness.mjs';

let env;
let tenant;
let token;

before(async () => {
  // Strict Host routing, so unknown tenants are refused as PROTOCOL.md documents (the server's
  // FALLBACK_TENANT would otherwise route them to the seeded tenant).
  env = await startEnv({ serverEnv: { FALLBACK_TENANT: 'none' } });
  tenant = await env.createTenant();
  token = tenantJwt(tenant.jwtSecret);
});
after(async () => {
  await env?.stop();
});
afterEach(async () => {
  await env.closeClients();
});

const client = (vsn, extra = {}) => env.client({ tenant: tenant.externalId, token, vsn, ...extra });
const post = (path, body, headers = { authorization: `Bearer ${token}` }) =>
  httpRequest(env.port, { method: 'POST', path, host: tenant.host, headers, body });

describe('POST /api/broadcast (batch)', () => {
  for (const prefix of ['', '/realtime/v1']) {
    it(`${prefix}/api/broadcast answers 202 and reaches v2 and v1 subscribers`, async () => {
      const room = uid('room-');
      const v2 = client('2.0.0').channel(room);
      const v1 = client('1.0.0').channel(room);
      const got2 = collect(v2);
      const got1 = collect(v1);
      await Promise.all([subscribed(v2), subscribed(v1)]);
      const r = await post(`${prefix}/api/broadcast`, {
        messages: [{ topic: room, event: 'batch', payload: { n: 1 } }, { topic: room, event: 'batch', payload: { n: 2 } }],
      });
      assert.equal(r.status, 202, r.text);
      assert.equal(r.text, '');
      for (const got of [got2, got1]) {
        await got.waitFor((m) => m.payload?.n === 2);
        assert.deepEqual(
          got.items.map((m) => [m.type, m.event, m.payload]),
          [
            ['broadcast', 'batch', { n: 1 }],
            ['broadcast', 'batch', { n: 2 }],
          ],
        );
      }
    });
  }

  it('an id becomes meta.id in the delivered payload', async () => {
    const room = uid('room-');
    const ch = client('2.0.0').channel(room);
    const got = collect(ch);
    await subscribed(ch);
    const id = crypto.randomUUID();
    const r = await post('/api/broadcast', { messages: [{ topic: room, event: 'withid', payload: { a: 1 }, id }] });
    assert.equal(r.status, 202, r.text);
    const m = await got.waitFor();
    assert.deepEqual(m.meta, { id });
    assert.deepEqual(m.payload, { a: 1 });
  });

  it('the apikey header is accepted when there is no Authorization header', async () => {
    const room = uid('room-');
    const ch = client('2.0.0').channel(room);
    const got = collect(ch);
    await subscribed(ch);
    const r = await post('/api/broadcast', { messages: [{ topic: room, event: 'k', payload: {} }] }, { apikey: token });
    assert.equal(r.status, 202, r.text);
    await got.waitFor();
  });

  it('realtime-js send() on a channel that is not joined falls back to the batch endpoint', async () => {
    const room = uid('room-');
    const rx = client('2.0.0').channel(room);
    const got = collect(rx);
    await subscribed(rx);
    for (const withBearer of [false, true]) {
      const c = client('2.0.0');
      if (withBearer) await c.setAuth(token); // then realtime-js adds Authorization: Bearer
      const unjoined = c.channel(room);
      const warn = console.warn;
      console.warn = () => {}; // realtime-js warns about the deprecated fallback
      let res;
      try {
        res = await unjoined.send({ type: 'broadcast', event: 'fallback', payload: { bearer: withBearer } });
      } finally {
        console.warn = warn;
      }
      assert.equal(res, 'ok');
      await got.waitFor((m) => m.payload?.bearer === withBearer);
    }
  });

  it('refuses a bad token (401 Unauthorized), an unknown tenant (401) and an empty batch (422)', async () => {
    const bad = await post('/api/broadcast', { messages: [{ topic: 'r', event: 'e', payload: {} }] }, { authorization: `Bearer ${tenantJwt('not-the-secret-of-this-tenant-xxxxxxxx')}` });
    assert.equal(bad.status, 401);
    assert.deepEqual(bad.json, { message: 'Unauthorized' });
    const none = await post('/api/broadcast', { messages: [{ topic: 'r', event: 'e', payload: {} }] }, {});
    assert.equal(none.status, 401);
    assert.deepEqual(none.json, { message: 'Unauthorized' });
    const unknown = await httpRequest(env.port, {
      method: 'POST',
      path: '/api/broadcast',
      host: env.host('no-such-tenant'),
      headers: { authorization: `Bearer ${token}` },
      body: { messages: [{ topic: 'r', event: 'e', payload: {} }] },
    });
    assert.equal(unknown.status, 401);
    assert.deepEqual(unknown.json, { message: 'Tenant not found in database' });
    const empty = await post('/api/broadcast', { messages: [] });
    assert.equal(empty.status, 422, empty.text);
  });
});

describe('HTTP details for browsers and clients', () => {
  it('CORS: the preflight realtime-js triggers is answered and POST responses allow any origin', async () => {
    for (const path of ['/realtime/v1/api/broadcast', '/realtime/v1/api/broadcast/room/events/e']) {
      const pre = await httpRequest(env.port, {
        method: 'OPTIONS',
        path,
        host: tenant.host,
        headers: {
          origin: 'http://app.example',
          'access-control-request-method': 'POST',
          'access-control-request-headers': 'apikey,authorization,content-type',
        },
      });
      assert.ok(pre.status >= 200 && pre.status < 300, `${path} preflight → ${pre.status}`);
      assert.ok(['*', 'http://app.example'].includes(pre.headers['access-control-allow-origin']), JSON.stringify(pre.headers));
      // Named, not `*`: the Fetch standard never lets `*` cover Authorization.
      const allowed = String(pre.headers['access-control-allow-headers'] ?? '').toLowerCase().split(',').map((h) => h.trim());
      assert.ok(!allowed.includes('*'), `allow-headers ${allowed} answers *`);
      for (const h of ['apikey', 'authorization', 'content-type']) {
        assert.ok(allowed.includes(h), `allow-headers ${allowed} lacks ${h}`);
      }
    }
    const r = await post('/api/broadcast', { messages: [{ topic: 'r', event: 'e', payload: {} }] }, { authorization: `Bearer ${token}`, origin: 'http://app.example' });
    assert.equal(r.status, 202);
    assert.ok(['*', 'http://app.example'].includes(r.headers['access-control-allow-origin']), JSON.stringify(r.headers));
  });

  it('rate headers x-rate-rolling, x-rate-limit, x-rate-limit-remaining are on the response', async () => {
    const r = await post('/api/broadcast', { messages: [{ topic: 'r', event: 'e', payload: {} }] });
    assert.equal(r.status, 202);
    for (const h of ['x-rate-rolling', 'x-rate-limit', 'x-rate-limit-remaining']) assert.ok(h in r.headers, `missing ${h}: ${JSON.stringify(r.headers)}`);
  });
});

describe('channel.httpSend() (POST /api/broadcast/:topic/events/:event)', () => {
  it('JSON payload: resolves {success:true} and reaches v2 and v1 subscribers', async () => {
    const room = uid('room-');
    const v2 = client('2.0.0').channel(room);
    const v1 = client('1.0.0').channel(room);
    const got2 = collect(v2);
    const got1 = collect(v1);
    await Promise.all([subscribed(v2), subscribed(v1)]);
    const sender = client('2.0.0', { }).channel(room);
    await sender.httpSend('single', { x: 1, s: 'hé' }).then((r) => assert.deepEqual(r, { success: true }));
    for (const got of [got2, got1]) {
      const m = await got.waitFor();
      assert.equal(m.event, 'single');
      assert.deepEqual(m.payload, { x: 1, s: 'hé' });
    }
  });

  it('works with a Bearer token from setAuth and a topic containing "/" (percent-encoded path segment)', async () => {
    const room = `${uid('room-')}/sub`;
    const rx = client('2.0.0').channel(room);
    const got = collect(rx);
    await subscribed(rx);
    const c = client('2.0.0');
    await c.setAuth(token);
    assert.deepEqual(await c.channel(room).httpSend('slash', { ok: 1 }), { success: true });
    assert.deepEqual((await got.waitFor()).payload, { ok: 1 });
  });

  it('binary payload (ArrayBuffer) is sent as octet-stream and reaches v2 as binary, not v1', async () => {
    const room = uid('room-');
    const sockets = [];
    const v2 = client('2.0.0', { sockets }).channel(room);
    const v1 = client('1.0.0').channel(room);
    const got2 = collect(v2);
    const got1 = collect(v1);
    await Promise.all([subscribed(v2), subscribed(v1)]);
    const bytes = new Uint8Array([9, 8, 7, 0, 255]);
    assert.deepEqual(await client('2.0.0').channel(room).httpSend('blob', bytes.buffer), { success: true });
    const m = await got2.waitFor();
    assert.ok(m.payload instanceof ArrayBuffer, `got ${Object.prototype.toString.call(m.payload)}\n${dumpFrames(sockets)}`);
    assert.deepEqual([...new Uint8Array(m.payload)], [...bytes]);
    await client('2.0.0').channel(room).httpSend('json-after', { z: 1 });
    await got1.waitFor((x) => x.event === 'json-after');
    assert.deepEqual(got1.items.map((x) => x.event), ['json-after'], 'binary must not reach v1');
  });

  it('a bad token makes httpSend reject with the server message', async () => {
    const c = env.client({ tenant: tenant.externalId, token: tenantJwt('wrong-secret-wrong-secret-wrong-secret') });
    await assert.rejects(c.channel(uid('room-')).httpSend('e', { a: 1 }), /Unauthorized/);
  });

  it('an unsupported content type is refused with 415', async () => {
    const r = await httpRequest(env.port, {
      method: 'POST',
      path: '/api/broadcast/room/events/e',
      host: tenant.host,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'text/plain' },
      body: 'hello',
    });
    assert.equal(r.status, 415);
    assert.deepEqual(r.json, { error: 'Unsupported Media Type. Use application/json or application/octet-stream' });
  });
});

