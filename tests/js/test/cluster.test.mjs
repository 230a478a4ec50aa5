// Three node processes form one cluster (gossip seeds, a shared secret), and the official
// realtime-js client on each node sees the others' broadcasts and presences as if they were on one
// server: a broadcast reaches every other node's subscribers once; presence state converges; a
// killed node's presences leave everywhere while the survivors keep talking; Postgres changes,
// streamed by the one node the ring names, reach subscribers on all three.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, tenantJwt, subscribed, collect, uid, waitUntil, sleep } from '../harness.mjs';

let env;
let tenant;
let token;

before(async () => {
  env = await startCluster(3);
  tenant = await env.createTenant();
  token = tenantJwt(tenant.jwtSecret);
});
after(async () => {
  if (process.exitCode && env) process.stderr.write(env.logTails());
  await env?.stop();
});
afterEach(async () => {
  await env.closeClients();
});

const client = (i) => env.client(i, { tenant: tenant.externalId, token, heartbeatIntervalMs: 500 });

/** A channel with presence on (realtime-js enables presence for channels that listen to it). */
function presenceChannel(c, room, key) {
  const ch = c.channel(room, { config: { presence: { key } } });
  ch.on('presence', { event: 'sync' }, () => {});
  return ch;
}

describe('a cluster of three nodes', () => {
  it('delivers a broadcast from one node to the subscribers on the others exactly once', async () => {
    const room = uid('room-');
    const subs = [];
    for (const i of [0, 1, 2]) {
      const ch = client(i).channel(room, { config: { broadcast: { self: false } } });
      const got = collect(ch, 'broadcast', { event: 'ping' });
      await subscribed(ch);
      subs.push({ ch, got });
    }
    // Interest travels over the bus right after each join; give it a moment.
    await sleep(200);
    for (let n = 0; n < 5; n++) {
      const res = await subs[0].ch.send({ type: 'broadcast', event: 'ping', payload: { n } });
      assert.equal(res, 'ok');
    }
    for (const i of [1, 2]) {
      await waitUntil(() => subs[i].got.items.length >= 5, { timeout: 5000, label: `5 pings on node ${i + 1}` });
    }
    await sleep(300);
    for (const i of [1, 2]) {
      assert.deepEqual(
        subs[i].got.items.map((m) => m.payload.n),
        [0, 1, 2, 3, 4],
        `node ${i + 1} got each ping once, in order`,
      );
    }
    assert.equal(subs[0].got.items.length, 0, 'self: false holds across nodes');
  });

  it('converges presence across the nodes', async () => {
    const room = uid('presence-');
    const chans = [];
    for (const i of [0, 1, 2]) {
      const ch = presenceChannel(client(i), room, `user-${i + 1}`);
      await subscribed(ch);
      assert.equal(await ch.track({ node: i + 1 }), 'ok');
      chans.push(ch);
    }
    for (const [i, ch] of chans.entries()) {
      await waitUntil(() => Object.keys(ch.presenceState()).length === 3, {
        timeout: 5000,
        label: `three presences seen on node ${i + 1} (now ${JSON.stringify(ch.presenceState())})`,
      });
      const state = ch.presenceState();
      assert.deepEqual(Object.keys(state).sort(), ['user-1', 'user-2', 'user-3']);
      for (const k of Object.keys(state)) {
        assert.equal(state[k].length, 1, `one meta for ${k}`);
        assert.equal(state[k][0].node, Number(k.slice(5)));
      }
    }
    // A late joiner on any node gets the whole cluster's state in presence_state.
    const late = presenceChannel(client(1), room, 'late');
    await subscribed(late);
    await waitUntil(() => Object.keys(late.presenceState()).length === 3, { timeout: 5000, label: 'late joiner sees three' });
  });

  it('delivers Postgres changes to subscribers on every node, from the one node that streams them', async () => {
    env.pg.sql(`
      do $$ begin
        if not exists (select from pg_publication where pubname = 'supabase_realtime') then
          create publication supabase_realtime;
        end if;
      end $$;
      grant usage on schema public to anon, authenticated;
      create table public.cluster_rows (id bigint generated always as identity primary key, n int not null);
      grant select on public.cluster_rows to anon, authenticated;
      alter publication supabase_realtime add table public.cluster_rows;
    `);
    const subs = [];
    for (const i of [0, 1, 2]) {
      const ch = client(i).channel(uid('pg-'));
      const rows = [];
      ch.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'cluster_rows' }, (p) => rows.push(p.new.n));
      const system = collect(ch, 'system', {});
      await subscribed(ch);
      const notice = await system.waitFor((m) => m.extension === 'postgres_changes', { timeout: 15_000, label: `notice on node ${i + 1}` });
      assert.equal(notice.status, 'ok', `node ${i + 1}: ${JSON.stringify(notice)}`);
      subs.push(rows);
    }
    // Exactly one node streams the tenant; the others get its changes over the bus.
    const streams = await Promise.all([0, 1, 2].map(async (i) => (await env.clusterInfo(i)).streams));
    const owners = streams.filter((s) => s.includes(tenant.externalId));
    assert.equal(owners.length, 1, `one owner: ${JSON.stringify(streams)}`);
    for (let n = 1; n <= 20; n++) env.pg.sql(`insert into public.cluster_rows (n) values (${n})`);
    for (const [i, rows] of subs.entries()) {
      await waitUntil(() => rows.length >= 20, { timeout: 15_000, label: `20 rows on node ${i + 1} (got ${rows})` });
      assert.deepEqual(rows, Array.from({ length: 20 }, (_, k) => k + 1), `node ${i + 1} in commit order, once each`);
    }
  });

  it("removes a killed node's presences everywhere, and the survivors keep receiving", async () => {
    const room = uid('kill-');
    const chans = [];
    for (const i of [0, 1, 2]) {
      const ch = presenceChannel(client(i), room, `user-${i + 1}`);
      await subscribed(ch);
      assert.equal(await ch.track({ node: i + 1 }), 'ok');
      chans.push(ch);
    }
    for (const ch of chans.slice(0, 2)) {
      await waitUntil(() => Object.keys(ch.presenceState()).length === 3, { timeout: 5000, label: 'three presences' });
    }
    const killedAt = Date.now();
    await env.nodes[2].stop({ signal: 'SIGKILL' });
    for (const [i, ch] of chans.slice(0, 2).entries()) {
      await waitUntil(() => !('user-3' in ch.presenceState()), {
        timeout: 10_000,
        label: `node 3's presence gone on node ${i + 1}`,
      });
    }
    const gone = Date.now() - killedAt;
    assert.ok(gone < 10_000, `gone after ${gone} ms`);
    const got = collect(chans[1], 'broadcast', { event: 'after' });
    // The surviving pair still talks (the channel was subscribed before; new handlers apply).
    assert.equal(await chans[0].send({ type: 'broadcast', event: 'after', payload: { ok: true } }), 'ok');
    await got.waitFor((m) => m.payload.ok === true, { timeout: 5000 });
    await waitUntil(env.converged, { timeout: 10_000, label: 'two nodes left in the view' });
  });
});
