// Tenant limits (PROTOCOL.md 12.2), each tripped with a tenant that has a tiny limit. Assertions are
// on the documented replies, not on timings: the counters' windows may differ from the original.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startEnv, tenantJwt, subscribed, collect, track, uid, rawSocket, waitUntil, awaitFrame, dumpFrames, sleep, httpRequest,
} from '../harness.mjs';

let env;

before(async () => {
  env = await startEnv();
});
after(async () => {
  await env?.stop();
});
afterEach(async () => {
  await env.closeClients();
});

async function tenantWith(limits) {
  const t = await env.createTenant(limits);
  return { ...t, token: tenantJwt(t.jwtSecret) };
}

const wsUrl = (apikey, vsn = '2.0.0') => `ws://127.0.0.1:${env.port}/realtime/v1/websocket?apikey=${apikey}&vsn=${vsn}`;

/** Joins channels until the first non-SUBSCRIBED status; returns `{ index, status, error, channels }`. */
async function joinUntilRefused(c, max, { prefix = 'room-', remove = false, deadlineMs = 30_000 } = {}) {
  const deadline = Date.now() + deadlineMs;
  const channels = [];
  for (let i = 0; i < max && Date.now() < deadline; i++) {
    const ch = c.channel(uid(prefix));
    channels.push(ch);
    const first = await track(ch).first(10_000);
    if (first.status !== 'SUBSCRIBED') return { index: i, ...first, channels };
    if (remove) await c.removeChannel(ch);
  }
  return { index: -1, channels };
}

describe('max_concurrent_users', () => {
  it('join on an already open socket → ConnectionRateLimitReached; new handshake → 429', async () => {
    const t = await tenantWith({ max_concurrent_users: 1 });
    const a = env.client({ tenant: t.externalId, token: t.token });
    const b = env.client({ tenant: t.externalId, token: t.token });
    b.connect();
    await waitUntil(() => b.isConnected(), { label: 'second socket open before the first user joins' });
    await subscribed(a.channel(uid('room-')));
    const ch = b.channel(uid('room-'));
    const first = await track(ch).first(8000);
    assert.equal(first.status, 'CHANNEL_ERROR');
    assert.equal(first.error.message, 'ConnectionRateLimitReached: Too many connected users');
    await b.removeChannel(ch);

    const r = await rawSocket(wsUrl(t.token), { host: t.host });
    assert.equal(r.status, 429, r.body);
    assert.deepEqual(r.json, { error: 'Too many connected users' });
  });

  it('a second channel on the already counted socket is not refused', async () => {
    const t = await tenantWith({ max_concurrent_users: 1 });
    const a = env.client({ tenant: t.externalId, token: t.token });
    await subscribed(a.channel(uid('room-')));
    await subscribed(a.channel(uid('room-')));
  });
});

describe('max_joins_per_second', () => {
  it('fast joins trip ClientJoinRateLimitReached and the socket is closed (1001)', async () => {
    const t = await tenantWith({ max_joins_per_second: 1, max_channels_per_client: 1000 });
    const sockets = [];
    const c = env.client({ tenant: t.externalId, token: t.token, sockets });
    const res = await joinUntilRefused(c, 500, { remove: true });
    assert.notEqual(res.index, -1, 'the join rate limit never tripped');
    assert.equal(res.status, 'CHANNEL_ERROR');
    assert.equal(res.error.message, 'ClientJoinRateLimitReached: Too many joins per second');
    await waitUntil(() => sockets[0].closeCode !== null, { label: 'socket closed after ClientJoinRateLimitReached' });
    assert.equal(sockets[0].closeCode, 1001);
    await c.removeAllChannels();

    // while the counter is tripped, new handshakes are refused too (documented 429)
    const r = await rawSocket(wsUrl(t.token), { host: t.host });
    if (r.status !== 101) {
      assert.equal(r.status, 429, r.body);
      assert.deepEqual(r.json, { error: 'Too many joins per second' });
    } else {
      r.ws.close(); // the counter may already have cleared; the join-time refusal above is the assertion
    }
  });
});

describe('max_channels_per_client', () => {
  it('joins beyond the limit → ChannelRateLimitReached: Too many channels', async () => {
    const limit = 3;
    const t = await tenantWith({ max_channels_per_client: limit });
    const c = env.client({ tenant: t.externalId, token: t.token });
    const res = await joinUntilRefused(c, limit + 2);
    assert.notEqual(res.index, -1, `all ${limit + 2} joins succeeded`);
    assert.ok(res.index >= limit - 1, `refused too early, at join #${res.index + 1} of limit ${limit}`);
    assert.ok(res.index <= limit, `refused too late, at join #${res.index + 1} of limit ${limit}`);
    assert.equal(res.status, 'CHANNEL_ERROR');
    assert.equal(res.error.message, 'ChannelRateLimitReached: Too many channels');
    await c.removeChannel(res.channels.at(-1));
    // leaving a channel frees a slot
    await c.removeChannel(res.channels[0]);
    await subscribed(c.channel(uid('room-')));
  });
});

describe('max_events_per_second', () => {
  it('a broadcast flood shuts the channel down with system "Too many messages per second" then CLOSED', async () => {
    const t = await tenantWith({ max_events_per_second: 5 });
    const room = uid('room-');
    const sender = env.client({ tenant: t.externalId, token: t.token });
    const rx = env.client({ tenant: t.externalId, token: t.token });
    const sch = sender.channel(room, { config: { broadcast: { self: true } } });
    const rch = rx.channel(room);
    const sysS = collect(sch, 'system', {});
    const sysR = collect(rch, 'system', {});
    const ts = await subscribed(sch);
    const tr = await subscribed(rch);
    const deadline = Date.now() + 30_000;
    let i = 0;
    const tripped = () => [...sysS.items, ...sysR.items].some((m) => m.status === 'error');
    while (!tripped() && Date.now() < deadline && sch.state === 'joined') {
      await sch.send({ type: 'broadcast', event: 'flood', payload: { i: i++ } });
      if (i % 20 === 0) await sleep(10);
    }
    const m = await waitUntil(() => [...sysS.items, ...sysR.items].find((x) => x.status === 'error'), { timeout: 5000, label: `system error after ${i} sends` });
    assert.equal(m.message, 'Too many messages per second');
    assert.equal(m.extension, 'system');
    const which = sysS.items.includes(m) ? ts : tr;
    await which.waitFor('CLOSED', 5000);
  });

  it('HTTP broadcast over the limit is refused with 429', async () => {
    const t = await tenantWith({ max_events_per_second: 1 });
    const deadline = Date.now() + 30_000;
    let last;
    while (Date.now() < deadline) {
      last = await httpRequest(env.port, {
        method: 'POST',
        path: '/api/broadcast',
        host: t.host,
        headers: { authorization: `Bearer ${t.token}` },
        body: { messages: Array.from({ length: 5 }, (_, i) => ({ topic: 'r', event: 'e', payload: { i } })) },
      });
      if (last.status !== 202) break;
    }
    assert.equal(last.status, 429, last.text);
    assert.ok(
      ['You have exceeded your rate limit', 'Too many messages to broadcast, please reduce the batch size', 'Too many requests'].includes(last.json?.message),
      `unexpected 429 body ${last.text}`,
    );
  });
});

describe('max_payload_size_in_kb', () => {
  it('with ack: a too large broadcast resolves send() with error, a small one with ok', async () => {
    const t = await tenantWith({ max_payload_size_in_kb: 1 });
    const room = uid('room-');
    const sockets = [];
    const c = env.client({ tenant: t.externalId, token: t.token, sockets });
    const ch = c.channel(room, { config: { broadcast: { ack: true } } });
    const rxch = env.client({ tenant: t.externalId, token: t.token }).channel(room);
    const got = collect(rxch);
    await subscribed(ch);
    await subscribed(rxch);
    assert.equal(await ch.send({ type: 'broadcast', event: 'big', payload: { blob: 'x'.repeat(5000) } }), 'error');
    const errReply = sockets[0].frames.find((f) => f.event === 'phx_reply' && f.payload?.status === 'error');
    assert.deepEqual(errReply?.payload, { status: 'error', response: 'payload_size_exceeded' }, dumpFrames(sockets));
    assert.equal(await ch.send({ type: 'broadcast', event: 'small', payload: { blob: 'x' } }), 'ok');
    await got.waitFor((m) => m.event === 'small');
    assert.deepEqual(got.items.map((m) => m.event), ['small'], 'the oversized message was not delivered');
  });

  it('a raw v2 JSON broadcast push over the limit gets {"status":"error","response":"payload_size_exceeded"}', async () => {
    const t = await tenantWith({ max_payload_size_in_kb: 1 });
    const s = await rawSocket(wsUrl(t.token), { host: t.host });
    assert.equal(s.status, 101);
    s.ws.send(JSON.stringify(['1', '1', 'realtime:big', 'phx_join', { config: { broadcast: { ack: true } } }]));
    await awaitFrame(s, (f) => f[1] === '1' && f[3] === 'phx_reply', { label: 'join reply' });
    s.ws.send(JSON.stringify(['1', '2', 'realtime:big', 'broadcast', { type: 'broadcast', event: 'e', payload: { blob: 'y'.repeat(5000) } }]));
    const r = await awaitFrame(s, (f) => Array.isArray(f) && f[1] === '2', { label: 'broadcast reply' });
    assert.deepEqual(r, ['1', '2', 'realtime:big', 'phx_reply', { status: 'error', response: 'payload_size_exceeded' }]);
    s.ws.close();
  });

  it('HTTP broadcast over the limit → 422', async () => {
    const t = await tenantWith({ max_payload_size_in_kb: 1 });
    const r = await httpRequest(env.port, {
      method: 'POST',
      path: '/api/broadcast',
      host: t.host,
      headers: { authorization: `Bearer ${t.token}` },
      body: { messages: [{ topic: 'r', event: 'e', payload: { blob: 'z'.repeat(5000) } }] },
    });
    assert.equal(r.status, 422, r.text);
    assert.match(r.text, /Payload size exceeds tenant limit/);
  });
});
