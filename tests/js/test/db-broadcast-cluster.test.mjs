// Broadcast from the database in a cluster of three nodes (PROTOCOL.md 9.2): the tenant's
// owner streams realtime.messages, and a row sent on the database reaches the subscribers on
// every node exactly once, public and private.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, tenantJwt, subscribed, collect, sleep, uid, waitUntil } from '../harness.mjs';

const SLOT = 'supabase_realtime_messages_replication_slot_';
const QUIET_MS = 1000;

let env;
let tenant;

before(async () => {
  env = await startCluster(3, { serverEnv: { REPLICATION_IDLE_TIMEOUT_MS: '60000' } });
  tenant = await env.createTenant();
});
after(async () => {
  await env?.stop();
});
afterEach(async () => {
  await env.closeClients();
});

const token = () => tenantJwt(tenant.jwtSecret, { role: 'authenticated', sub: 'u1' });
const quote = (s) => `'${s.replace(/'/g, "''")}'`;

async function joinEverywhere(topic, priv) {
  const subs = [];
  for (let i = 0; i < 3; i++) {
    const c = env.client(i, { tenant: tenant.externalId, token: token() });
    const ch = c.channel(topic, { config: { private: priv } });
    const got = collect(ch);
    await subscribed(ch, 20_000);
    subs.push(got);
  }
  return subs;
}

/** Sends probe rows until every node's subscriber got one (the stream is up and every node's
 * interest reached the owner), then returns. */
async function untilEveryNodeHears(topic, subs, priv) {
  // The owner's stream set-up opens the tenant's pool, which runs the tenant migrations.
  await waitUntil(() => env.pg.sql(`select to_regclass('realtime.messages') is not null`).trim() === 't', {
    timeout: 20_000,
    label: 'tenant migrations',
  });
  let n = 0;
  await waitUntil(
    () => {
      n += 1;
      env.pg.sql(`select realtime.send('{"probe": ${n}}'::jsonb, 'probe', ${quote(topic)}, ${priv})`);
      return subs.every((s) => s.items.some((m) => m.event === 'probe'));
    },
    { timeout: 30_000, interval: 300, label: 'probes on every node' },
  );
}

describe('database broadcast across nodes', () => {
  it('a public row reaches the subscribers of all three nodes once', async () => {
    const topic = uid('room-');
    const subs = await joinEverywhere(topic, false);
    await untilEveryNodeHears(topic, subs, false);
    // Exactly one node streams the tenant's messages.
    const active = env.pg.sql(`select count(*) from pg_stat_replication where application_name = 'realtime_replication'`).trim();
    env.pg.sql(`select realtime.send('{"x": 1}'::jsonb, 'once', ${quote(topic)}, false)`);
    for (const s of subs) await s.waitFor((m) => m.event === 'once', { timeout: 10_000 });
    await sleep(QUIET_MS);
    const counts = subs.map((s) => s.items.filter((m) => m.event === 'once').length);
    assert.deepEqual(counts, [1, 1, 1]);
    const ids = new Set(subs.map((s) => s.items.find((m) => m.event === 'once').meta.id));
    assert.equal(ids.size, 1, 'the same row everywhere');
    assert.equal(active, '1', 'one replication connection for the messages stream');
    const streamers = env.nodes.filter((s) => s.logTail(100_000).includes('database broadcast stream starting'));
    assert.equal(streamers.length, 1, 'exactly one node (the ring owner) started the stream');
  });

  it('a private row reaches the private subscribers of every node once', async () => {
    env.pg.sql(`drop policy if exists rt_read on realtime.messages;
      create policy rt_read on realtime.messages for select to authenticated using (true);`);
    const topic = uid('priv-');
    const subs = await joinEverywhere(topic, true);
    await untilEveryNodeHears(topic, subs, true);
    env.pg.sql(`select realtime.send('{"x": 2}'::jsonb, 'once', ${quote(topic)})`);
    for (const s of subs) await s.waitFor((m) => m.event === 'once', { timeout: 10_000 });
    await sleep(QUIET_MS);
    assert.deepEqual(subs.map((s) => s.items.filter((m) => m.event === 'once').length), [1, 1, 1]);
  });
});
