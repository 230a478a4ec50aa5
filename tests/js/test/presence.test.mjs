// Presence with the official realtime-js client: three clients see each other's joins, updates
// and leaves through presenceState() and the sync/join/leave events; a re-track replaces the old
// meta (never duplicates it); a socket that dies or goes silent without leaving takes every
// presence it had with it.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startEnv, tenantJwt, subscribed, uid, waitUntil, rawSocket, sleep } from '../harness.mjs';

// A silent socket is closed after this long without an inbound frame; the realtime-js clients
// below heartbeat well within it.
const IDLE_MS = 1500;

let env;
let tenant;
let token;

before(async () => {
  env = await startEnv({ serverEnv: { WS_IDLE_TIMEOUT_MS: String(IDLE_MS) } });
  tenant = await env.createTenant();
  token = tenantJwt(tenant.jwtSecret);
});
after(async () => {
  await env?.stop();
});
afterEach(async () => {
  await env.closeClients();
});

/** A realtime-js client that heartbeats fast enough for IDLE_MS. */
function client(vsn) {
  return env.client({ tenant: tenant.externalId, token, heartbeatIntervalMs: 300, ...(vsn ? { vsn } : {}) });
}

/**
 * A presence channel on `room` with `key`, recording events. Returns the channel and its log:
 * `syncs` (presenceState() at each sync), `joins`, `leaves`.
 */
function presenceChannel(c, room, key) {
  const ch = c.channel(room, { config: { presence: { key } } });
  const log = { syncs: [], joins: [], leaves: [] };
  ch.on('presence', { event: 'sync' }, () => log.syncs.push(structuredClone(ch.presenceState())));
  ch.on('presence', { event: 'join' }, (e) => log.joins.push(e));
  ch.on('presence', { event: 'leave' }, (e) => log.leaves.push(e));
  return { ch, log };
}

/** presenceState() reduced to `{key: [meta without presence_ref, ...]}`, keys sorted. */
function plain(ch) {
  const state = ch.presenceState();
  return Object.fromEntries(
    Object.keys(state)
      .sort()
      .map((k) => [k, state[k].map(({ presence_ref, ...meta }) => meta)]),
  );
}

/** JSON text with object keys sorted, so that key order does not matter. */
function canonical(v) {
  return JSON.stringify(v, (_k, x) =>
    x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : x,
  );
}

async function waitState(ch, expected, label) {
  await waitUntil(() => canonical(plain(ch)) === canonical(expected), {
    timeout: 5000,
    label: `${label}: expected ${JSON.stringify(expected)}, have ${JSON.stringify(plain(ch))}`,
  });
}

for (const vsn of ['2.0.0', '1.0.0']) {
  describe(`presence (vsn ${vsn})`, () => {
    it('three clients see joins, an update in place, an untrack and a leave', async () => {
      const room = uid('room-');
      const names = ['alice', 'bob', 'carol'];
      const peers = names.map((name) => ({ name, ...presenceChannel(client(vsn), room, name) }));
      for (const p of peers) await subscribed(p.ch);
      for (const p of peers) assert.equal(await p.ch.track({ user: p.name }), 'ok');
      const all = { alice: [{ user: 'alice' }], bob: [{ user: 'bob' }], carol: [{ user: 'carol' }] };
      for (const p of peers) await waitState(p.ch, all, `${p.name} sees everyone`);
      for (const p of peers) {
        const joinedKeys = new Set(p.log.joins.map((j) => j.key));
        assert.deepEqual([...joinedKeys].sort(), names, `${p.name} got a join event per key`);
        assert.ok(p.log.syncs.length > 0, 'sync events fire');
      }
      const refBefore = peers[1].ch.presenceState().alice[0].presence_ref;

      // Re-track: replaced, never duplicated, on every client, at every sync.
      const syncsBefore = peers.map((p) => p.log.syncs.length);
      assert.equal(await peers[0].ch.track({ user: 'alice', status: 'away' }), 'ok');
      const updated = { ...all, alice: [{ user: 'alice', status: 'away' }] };
      for (const p of peers) await waitState(p.ch, updated, `${p.name} sees alice's new meta`);
      peers.forEach((p, i) => {
        for (const s of p.log.syncs.slice(syncsBefore[i])) {
          assert.ok((s.alice ?? []).length <= 1, `${p.name} never saw two metas for alice: ${JSON.stringify(s.alice)}`);
        }
      });
      assert.notEqual(peers[1].ch.presenceState().alice[0].presence_ref, refBefore, 'a new ref per update');

      // Untrack: bob disappears everywhere, with a leave event carrying his meta.
      assert.equal(await peers[1].ch.untrack(), 'ok');
      const noBob = { alice: updated.alice, carol: updated.carol };
      for (const p of peers) await waitState(p.ch, noBob, `${p.name} sees bob gone`);
      const bobLeft = peers[2].log.leaves.find((l) => l.key === 'bob');
      assert.deepEqual(
        bobLeft.leftPresences.map(({ presence_ref, ...m }) => m),
        [{ user: 'bob' }],
      );

      // Leaving the channel takes carol's presence along.
      await peers[2].ch.unsubscribe();
      const aliceOnly = { alice: updated.alice };
      await waitState(peers[0].ch, aliceOnly, 'alice sees carol gone');
      await waitState(peers[1].ch, aliceOnly, 'bob sees carol gone');
    });
  });
}

it('a late joiner gets the whole state at once; tabs sharing a key show one meta each', async () => {
  const room = uid('room-');
  const tab1 = presenceChannel(client(), room, 'dave');
  const tab2 = presenceChannel(client(), room, 'dave');
  await subscribed(tab1.ch);
  await subscribed(tab2.ch);
  await tab1.ch.track({ tab: 1 });
  await tab2.ch.track({ tab: 2 });
  const late = presenceChannel(client(), room, 'erin');
  await subscribed(late.ch);
  await waitUntil(() => late.log.syncs.length > 0, { label: 'first sync of the late joiner' });
  const first = late.log.syncs[0];
  assert.deepEqual(
    first.dave.map((m) => m.tab).sort(),
    [1, 2],
    'the first sync already holds both tabs (presence_state)',
  );
  await tab1.ch.untrack();
  await waitState(late.ch, { dave: [{ tab: 2 }] }, 'one tab left');
});

it('a killed socket (destroyed without leaving) takes all its presences with it', async () => {
  const roomA = uid('room-');
  const roomB = uid('room-');
  const watchA = presenceChannel(client(), roomA, 'watch-a');
  const watchB = presenceChannel(client(), roomB, 'watch-b');
  await subscribed(watchA.ch);
  await subscribed(watchB.ch);

  // The victim speaks the protocol by hand so that nothing reconnects after the kill.
  const sock = await rawSocket(`${env.wsEndpoint()}/websocket?apikey=${token}&vsn=2.0.0`, { host: tenant.host });
  assert.equal(sock.status, 101);
  let ref = 0;
  const push = (joinRef, topic, event, payload) =>
    sock.ws.send(JSON.stringify([joinRef, String(++ref), topic, event, payload]));
  for (const [joinRef, room] of [['1', roomA], ['2', roomB]]) {
    push(joinRef, `realtime:${room}`, 'phx_join', { config: { presence: { key: 'victim', enabled: true } } });
    push(joinRef, `realtime:${room}`, 'presence', { type: 'presence', event: 'track', payload: { room } });
  }
  await waitState(watchA.ch, { victim: [{ room: roomA }] }, 'victim on room A');
  await waitState(watchB.ch, { victim: [{ room: roomB }] }, 'victim on room B');

  const killedAt = Date.now();
  sock.ws._socket.destroy();
  await waitState(watchA.ch, {}, 'victim gone from room A');
  await waitState(watchB.ch, {}, 'victim gone from room B');
  assert.ok(Date.now() - killedAt < IDLE_MS + 1000, 'gone within the idle timeout');
});

it('a silent socket (no heartbeat, never closed) disappears after the idle timeout', async () => {
  const room = uid('room-');
  const watch = presenceChannel(client(), room, 'watch');
  await subscribed(watch.ch);
  const sock = await rawSocket(`${env.wsEndpoint()}/websocket?apikey=${token}&vsn=2.0.0`, { host: tenant.host });
  const topic = `realtime:${room}`;
  sock.ws.send(JSON.stringify(['1', '1', topic, 'phx_join', { config: { presence: { key: 'ghost' } } }]));
  sock.ws.send(JSON.stringify(['1', '2', topic, 'presence', { type: 'presence', event: 'track', payload: { boo: true } }]));
  await waitState(watch.ch, { ghost: [{ boo: true }] }, 'ghost tracked');
  const quietSince = Date.now();
  await waitState(watch.ch, {}, 'ghost gone');
  const took = Date.now() - quietSince;
  assert.ok(took >= IDLE_MS - 300, `not before the idle timeout (${took} ms)`);
  assert.ok(took < IDLE_MS + 2000, `soon after the idle timeout (${took} ms)`);
  const { code } = await Promise.race([sock.closed, sleep(2000).then(() => ({ code: null }))]);
  assert.equal(code, 4000, 'closed with the idle close code');
});
