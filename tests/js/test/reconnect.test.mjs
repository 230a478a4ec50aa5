// Reconnect: the server dies and comes back on the same port; realtime-js reconnects and rejoins
// on its own.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startEnv, tenantJwt, subscribed, collect, track, uid, waitUntil } from '../harness.mjs';

let env;
let tenant;
let token;

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

// Default client backoff (1 s, 2 s, 5 s, …): each case takes a few seconds, so two cases only.
for (const [how, signal, vsn] of [['killed (SIGKILL)', 'SIGKILL', '2.0.0'], ['stopped gracefully (SIGTERM)', 'SIGTERM', '1.0.0']]) {
  {
    it(`vsn ${vsn}: server ${how} and restarted → client rejoins (SUBSCRIBED again) and broadcasts flow`, async () => {
      const room = uid('room-');
      const sockets = [];
      const a = env.client({ tenant: tenant.externalId, token, vsn, sockets });
      const b = env.client({ tenant: tenant.externalId, token, vsn });
      const cha = a.channel(room);
      const chb = b.channel(room);
      const got = collect(chb);
      const ta = track(cha);
      const tb = track(chb);
      await ta.waitFor('SUBSCRIBED');
      await tb.waitFor('SUBSCRIBED');
      await cha.send({ type: 'broadcast', event: 'before', payload: {} });
      await got.waitFor((m) => m.event === 'before');

      await env.server.stop({ signal });
      await waitUntil(() => ta.statuses.includes('CHANNEL_ERROR') && tb.statuses.includes('CHANNEL_ERROR'), {
        label: 'both channels errored after the server went away',
      });
      await env.server.start();

      const subscribedAgain = (t) => t.statuses.lastIndexOf('SUBSCRIBED') > t.statuses.indexOf('CHANNEL_ERROR');
      await waitUntil(() => subscribedAgain(ta) && subscribedAgain(tb), {
        timeout: 25_000,
        label: `both channels SUBSCRIBED again (a: ${ta.statuses}; b: ${tb.statuses})`,
      });
      assert.ok(sockets.length >= 2, 'realtime-js opened a new socket');
      await cha.send({ type: 'broadcast', event: 'after', payload: { n: 1 } });
      const m = await got.waitFor((x) => x.event === 'after');
      assert.deepEqual(m.payload, { n: 1 });
    });
  }
}

it('a graceful stop (SIGTERM) closes client sockets with a close frame, not an abnormal 1006', async () => {
  const sockets = [];
  const c = env.client({ tenant: tenant.externalId, token, sockets });
  await track(c.channel(uid('room-'))).waitFor('SUBSCRIBED');
  await env.server.stop({ signal: 'SIGTERM' });
  await waitUntil(() => sockets[0].closeCode !== null, { label: 'socket closed' });
  await env.server.start();
  assert.notEqual(sockets[0].closeCode, 1006, 'the server exited without sending a close frame (graceful drain expected)');
});

describe('heartbeat', () => {
  it('heartbeats are answered (a short interval keeps the socket up across several beats)', async () => {
    const beats = [];
    const c = env.client({ tenant: tenant.externalId, token, heartbeatIntervalMs: 200 });
    c.onHeartbeat((status) => beats.push(status));
    const ch = c.channel(uid('room-'));
    const t = track(ch);
    await t.waitFor('SUBSCRIBED');
    await waitUntil(() => beats.filter((s) => s === 'ok').length >= 3, { timeout: 5000, label: `3 heartbeat oks (got ${beats})` });
    assert.ok(!beats.includes('timeout'), `heartbeat statuses: ${beats}`);
    assert.deepEqual(t.statuses, ['SUBSCRIBED']);
  });
});
