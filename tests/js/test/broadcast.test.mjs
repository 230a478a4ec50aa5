// Broadcast with realtime-js (newest) in vsn 2.0.0 (default) and 1.0.0 modes.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { API_JWT_SECRET, startEnv, tenantJwt, subscribed, collect, track, sleep, uid, dumpFrames, rawSocket } from '../harness.mjs';

/** Time allowed for something that must NOT arrive (no way to poll for absence). */
const QUIET_MS = 400;

let env;
let tenant;
let token;
let policiesCreated = false;

/** RLS policies letting role `authenticated` read and write every private topic. */
function allowAuthenticated() {
  if (policiesCreated) return true;
  const exists = env.pg.sql(`select to_regclass('realtime.messages') is not null`).trim() === 't';
  if (!exists) return false;
  env.pg.sql(`
    grant usage on schema realtime to authenticated;
    grant select, insert on realtime.messages to authenticated;
    create policy "js tests read" on realtime.messages for select to authenticated using (true);
    create policy "js tests write" on realtime.messages for insert to authenticated with check (true);
  `);
  policiesCreated = true;
  return true;
}

before(async () => {
  env = await startEnv();
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

for (const vsn of ['2.0.0', '1.0.0']) {
  describe(`realtime-js vsn ${vsn}`, () => {
    it('subscribe reaches SUBSCRIBED and the join reply is ok', async () => {
      const sockets = [];
      const c = client(vsn, { sockets });
      const ch = c.channel(uid('room-'));
      await subscribed(ch);
      assert.equal(c.isConnected(), true);
      const reply = sockets[0].frames.find((f) => f.event === 'phx_reply' && f.topic === ch.topic);
      assert.ok(reply, `no join reply recorded:\n${dumpFrames(sockets)}`);
      assert.equal(reply.payload.status, 'ok');
      assert.deepEqual(reply.payload.response.postgres_changes, []);
      assert.equal(reply.vsn, vsn === '2.0.0' ? 2 : 1, 'frames use the requested serializer');
    });

    it('join reply echoes postgres_changes entries in order with non-zero integer ids and the channel stays SUBSCRIBED', async () => {
      const sockets = [];
      const c = client(vsn, { sockets });
      const ch = c.channel(uid('room-'));
      const bindings = [
        { event: '*', schema: 'public', table: 'todos' },
        { event: 'INSERT', schema: 'public', table: 'messages', filter: 'id=eq.1' },
      ];
      for (const b of bindings) ch.on('postgres_changes', b, () => {});
      const t = await subscribed(ch);
      const reply = sockets[0].frames.find((f) => f.event === 'phx_reply' && f.topic === ch.topic);
      const echoed = reply.payload.response.postgres_changes;
      assert.equal(echoed.length, 2);
      bindings.forEach((b, i) => {
        for (const [k, v] of Object.entries(b)) assert.equal(echoed[i][k], v, `entry ${i} key ${k}`);
        assert.ok(Number.isInteger(echoed[i].id) && echoed[i].id !== 0, `entry ${i} id ${echoed[i].id}`);
      });
      await sleep(QUIET_MS);
      assert.deepEqual(t.statuses, ['SUBSCRIBED'], 'no CLOSED/CHANNEL_ERROR after the echo');
    });

    it('broadcast with self:false reaches the other client but not the sender', async () => {
      const room = uid('room-');
      const a = client(vsn).channel(room, { config: { broadcast: { self: false } } });
      const b = client(vsn).channel(room, { config: { broadcast: { self: false } } });
      const gotA = collect(a);
      const gotB = collect(b, 'broadcast', { event: 'cursor' });
      await subscribed(a);
      await subscribed(b);
      assert.equal(await a.send({ type: 'broadcast', event: 'cursor', payload: { x: 1, who: 'a' } }), 'ok');
      const msg = await gotB.waitFor((m) => m.payload?.who === 'a');
      assert.equal(msg.type, 'broadcast');
      assert.equal(msg.event, 'cursor');
      assert.deepEqual(msg.payload, { x: 1, who: 'a' });
      await sleep(QUIET_MS);
      assert.deepEqual(gotA.items, [], 'sender must not get its own broadcast with self:false');
    });

    it('broadcast with self:true reaches the sender too', async () => {
      const room = uid('room-');
      const a = client(vsn).channel(room, { config: { broadcast: { self: true } } });
      const b = client(vsn).channel(room);
      const gotA = collect(a);
      const gotB = collect(b);
      await subscribed(a);
      await subscribed(b);
      await a.send({ type: 'broadcast', event: 'note', payload: { n: 7 } });
      assert.deepEqual((await gotA.waitFor()).payload, { n: 7 });
      assert.deepEqual((await gotB.waitFor()).payload, { n: 7 });
      await sleep(QUIET_MS);
      assert.equal(gotA.items.length, 1, 'delivered exactly once to the sender');
      assert.equal(gotB.items.length, 1, 'delivered exactly once to the other client');
    });

    it('ack:true makes send() resolve ok from the server reply', async () => {
      const sockets = [];
      const room = uid('room-');
      const a = client(vsn, { sockets }).channel(room, { config: { broadcast: { ack: true } } });
      const b = client(vsn).channel(room);
      const gotB = collect(b);
      await subscribed(a);
      await subscribed(b);
      const res = await a.send({ type: 'broadcast', event: 'acked', payload: { v: 1 } });
      assert.equal(res, 'ok');
      // the 'ok' came from a server phx_reply (with ack:false realtime-js resolves without one)
      const replies = sockets[0].frames.filter((f) => f.event === 'phx_reply' && f.topic === a.topic);
      assert.ok(replies.length >= 2, `expected a join reply and an ack reply:\n${dumpFrames(sockets)}`);
      assert.deepEqual(replies.at(-1).payload, { status: 'ok', response: {} });
      assert.deepEqual((await gotB.waitFor()).payload, { v: 1 });
    });

    it('listeners are matched by event name case-insensitively and by *', async () => {
      const room = uid('room-');
      const a = client(vsn).channel(room);
      const b = client(vsn).channel(room);
      const exact = collect(b, 'broadcast', { event: 'Shout' });
      const star = collect(b, 'broadcast', { event: '*' });
      const other = collect(b, 'broadcast', { event: 'other' });
      await subscribed(a);
      await subscribed(b);
      await a.send({ type: 'broadcast', event: 'shout', payload: { s: 1 } });
      await exact.waitFor();
      await star.waitFor();
      await sleep(QUIET_MS);
      assert.equal(other.items.length, 0);
    });

    it('private join without a read policy is refused with Unauthorized and gets no public traffic', async () => {
      const room = uid('room-');
      const pubSender = client(vsn).channel(room);
      const privClient = client(vsn);
      const priv = privClient.channel(room, { config: { private: true } });
      const gotPriv = collect(priv);
      await subscribed(pubSender);
      const first = await track(priv).first(5000);
      assert.equal(first.status, 'CHANNEL_ERROR', 'anon has no read policy on realtime.messages');
      assert.equal(first.error.message, `Unauthorized: You do not have permissions to read from this Channel topic: ${room}`);
      await pubSender.send({ type: 'broadcast', event: 'leak', payload: { p: 1 } });
      await sleep(QUIET_MS);
      assert.deepEqual(gotPriv.items, []);
    });

    it('public and private rooms of the same name are separate (private room readable by policy)', async (t) => {
      if (!allowAuthenticated()) {
        t.skip('until "private channels" lands: the tenant migrations did not create realtime.messages');
        return;
      }
      const room = uid('room-');
      const authToken = tenantJwt(tenant.jwtSecret, { role: 'authenticated', sub: crypto.randomUUID() });
      const pubA = client(vsn).channel(room);
      const pubB = client(vsn).channel(room);
      const privA = env.client({ tenant: tenant.externalId, token: authToken, vsn }).channel(room, { config: { private: true } });
      const privB = env.client({ tenant: tenant.externalId, token: authToken, vsn }).channel(room, { config: { private: true } });
      const gotPubB = collect(pubB);
      const gotPrivB = collect(privB);
      await Promise.all([subscribed(pubA), subscribed(pubB)]);
      const first = await track(privA).first(5000);
      if (first.status === 'CHANNEL_ERROR' && /^Unauthorized/.test(first.error.message)) {
        t.skip(`until "private channels" lands: private join refused despite a read policy (${first.error.message})`);
        return;
      }
      assert.equal(first.status, 'SUBSCRIBED', first.error?.message);
      await subscribed(privB);
      await pubA.send({ type: 'broadcast', event: 'from-public', payload: { p: 1 } });
      await privA.send({ type: 'broadcast', event: 'from-private', payload: { p: 2 } });
      await gotPubB.waitFor((m) => m.event === 'from-public');
      await gotPrivB.waitFor((m) => m.event === 'from-private');
      await sleep(QUIET_MS);
      assert.deepEqual(gotPubB.items.map((m) => m.event), ['from-public']);
      assert.deepEqual(gotPrivB.items.map((m) => m.event), ['from-private']);
    });
  });
}

describe('mixed serializers', () => {
  it('a v1 and a v2 client on one topic both receive a JSON broadcast', async () => {
    const room = uid('room-');
    const sender = client('2.0.0').channel(room);
    const v1 = client('1.0.0').channel(room);
    const v2 = client('2.0.0').channel(room);
    const got1 = collect(v1);
    const got2 = collect(v2);
    await Promise.all([subscribed(sender), subscribed(v1), subscribed(v2)]);
    await sender.send({ type: 'broadcast', event: 'mix', payload: { hello: 'world' } });
    assert.deepEqual((await got1.waitFor()).payload, { hello: 'world' });
    assert.deepEqual((await got2.waitFor()).payload, { hello: 'world' });

    // and the other way round: a v1 sender (JSON text push) reaches a v2 client
    const v1sender = client('1.0.0').channel(room);
    await subscribed(v1sender);
    await v1sender.send({ type: 'broadcast', event: 'mix2', payload: { from: 'v1' } });
    assert.deepEqual((await got2.waitFor((m) => m.event === 'mix2')).payload, { from: 'v1' });
  });

  it('binary (ArrayBuffer) payload round-trips between v2 clients and is not delivered to v1', async () => {
    const room = uid('room-');
    const sockets = [];
    const sender = client('2.0.0').channel(room);
    const v2 = client('2.0.0', { sockets }).channel(room);
    const v1 = client('1.0.0').channel(room);
    const got2 = collect(v2);
    const got1 = collect(v1);
    await Promise.all([subscribed(sender), subscribed(v2), subscribed(v1)]);
    const bytes = new Uint8Array([0, 1, 2, 3, 250, 255, 0, 42]);
    await sender.send({ type: 'broadcast', event: 'bin', payload: bytes.buffer });
    const msg = await got2.waitFor();
    assert.equal(msg.event, 'bin');
    assert.ok(msg.payload instanceof ArrayBuffer, `payload should be an ArrayBuffer, got ${Object.prototype.toString.call(msg.payload)}`);
    assert.deepEqual([...new Uint8Array(msg.payload)], [...bytes]);
    const frame = sockets[0].frames.find((f) => f.kind === 4);
    assert.ok(frame, 'delivered as a kind-4 binary frame');
    assert.equal(frame.encoding, 0);
    assert.equal(frame.topic, v2.topic);
    // a JSON message afterwards proves the v1 socket is alive and in order
    await sender.send({ type: 'broadcast', event: 'after', payload: { ok: true } });
    await got1.waitFor((m) => m.event === 'after');
    assert.deepEqual(got1.items.map((m) => m.event), ['after'], 'binary broadcast must not reach the v1 client');
  });

  it('JSON broadcasts reach v2 clients as kind-4 frames or JSON arrays, never another binary kind', async () => {
    const room = uid('room-');
    const sockets = [];
    const sender = client('2.0.0').channel(room);
    const rx = client('2.0.0', { sockets }).channel(room);
    const got = collect(rx);
    await Promise.all([subscribed(sender), subscribed(rx)]);
    await sender.send({ type: 'broadcast', event: 'k', payload: { a: [1, 2] } });
    await got.waitFor();
    for (const f of sockets[0].frames) {
      if (f.kind !== undefined) assert.equal(f.kind, 4, 'only binary kind 4 may be sent to realtime-js');
      else assert.equal(f.vsn, 2, `text frames must be v2 arrays: ${JSON.stringify(f)}`);
      if (f.event === 'broadcast' && f.kind === undefined) assert.equal(f.join_ref, null);
    }
  });
});

describe('endpoints and tenants', () => {
  it('the /socket/websocket path (gateway-rewritten form) works too', async () => {
    const c = env.client({ tenant: tenant.externalId, token, endpoint: env.wsEndpoint('/socket') });
    await subscribed(c.channel(uid('room-')));
  });

  it('the seeded self-host tenant is reachable as realtime-dev.localhost', async () => {
    const c = env.client({ tenant: 'realtime-dev', token: tenantJwt(API_JWT_SECRET) });
    await subscribed(c.channel(uid('room-')));
  });

  it('plain localhost falls back to the seeded tenant (SEED_SELF_HOST)', async () => {
    const c = env.client({ host: `localhost:${env.port}`, token: tenantJwt(API_JWT_SECRET) });
    await subscribed(c.channel(uid('room-')));
  });

  it('the fallback serves only Hosts that cannot name a tenant; a multi-label Host naming none gets 404', async () => {
    // README "Tenant routing": IP literals and single labels (a compose service name) fall back
    // to the seeded tenant; `no-such-tenant.localhost` names a tenant that does not exist.
    for (const host of [`realtime:${env.port}`, `127.0.0.1:${env.port}`]) {
      const c = env.client({ host, token: tenantJwt(API_JWT_SECRET) });
      await subscribed(c.channel(uid('room-')));
    }
    const r = await rawSocket(`ws://127.0.0.1:${env.port}/realtime/v1/websocket?apikey=${tenantJwt(API_JWT_SECRET)}&vsn=2.0.0`, { host: env.host('no-such-tenant') });
    if (r.status === 101) r.ws.close();
    assert.equal(r.status, 404);
    assert.deepEqual(r.json, { error: 'Tenant not found' });
  });

  it('a client of one tenant does not receive broadcasts of another tenant on the same topic', async () => {
    const other = await env.createTenant();
    const room = uid('room-');
    const a = client('2.0.0').channel(room);
    const b = env.client({ tenant: other.externalId, token: tenantJwt(other.jwtSecret) }).channel(room);
    const a2 = client('2.0.0').channel(room);
    const gotB = collect(b);
    const gotA2 = collect(a2);
    await Promise.all([subscribed(a), subscribed(b), subscribed(a2)]);
    await a.send({ type: 'broadcast', event: 'x', payload: { t: 1 } });
    await gotA2.waitFor();
    await sleep(QUIET_MS);
    assert.deepEqual(gotB.items, []);
  });
});
