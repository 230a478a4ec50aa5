// Three node processes form one cluster (gossip seeds, a shared secret), and the official
// realtime-js client on each node sees the others' broadcasts and presences as if they were on one
// server: a broadcast reaches every other node's subscribers once; presence state converges; a
// killed node's presences leave everywhere while the survivors keep talking; Postgres changes,
// streamed by the one node the ring names, reach subscribers on all three; a node that gets
// SIGTERM tells its channels and closes with 1012, and realtime-js comes back through the entry
// proxy on another node.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, tenantJwt, subscribed, collect, track, uid, waitUntil, sleep } from '../harness.mjs';

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

/** The node (index) a socket reached through the entry proxy, once its route line is read. */
async function nodeOf(rec) {
  const [i] = await waitUntil(() => {
    const i = env.nodeOf(rec);
    return i === undefined ? null : [i];
  }, { label: 'the route of a socket through the entry proxy' });
  return i;
}

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

  it('a channel on a node that gets SIGTERM is told, closed with 1012, and SUBSCRIBED again through the entry proxy on another node', async () => {
    const room = uid('drain-');
    const sockets = [];
    const moving = await env.entryClient({ tenant: tenant.externalId, token, sockets, heartbeatIntervalMs: 500 });
    const ch = moving.channel(room, { config: { broadcast: { self: false } } });
    const events = [];
    ch.on('system', {}, (p) => events.push({ kind: 'system', payload: p }));
    ch.on('broadcast', { event: 'tick' }, (m) => events.push({ kind: 'tick', from: m.payload.from, n: m.payload.n }));
    const t = track(ch);
    await t.waitFor('SUBSCRIBED');
    const k = await nodeOf(sockets[0]);
    // A sender on each of the other two nodes: wherever the client lands, one of them is remote.
    const senders = [];
    for (const i of [0, 1, 2].filter((i) => i !== k)) {
      const sch = client(i).channel(room, { config: { broadcast: { self: false } } });
      await subscribed(sch);
      senders.push({ i, ch: sch });
    }
    // Two connections through the proxy turn its rotation back to node k: the reconnect must
    // then skip it (refused) and land on the node after it.
    const entry = await env.entry();
    for (const step of [1, 2]) assert.equal(await entry.pass(), env.nodes[(k + step) % 3].port, 'round-robin');
    let n = 0;
    const tick = async () => {
      n += 1;
      for (const s of senders) assert.equal(await s.ch.send({ type: 'broadcast', event: 'tick', payload: { from: s.i, n } }), 'ok');
    };
    const heardFromBoth = (since) => senders.every((s) => events.slice(since).some((e) => e.kind === 'tick' && e.from === s.i));
    await waitUntil(async () => (await tick(), heardFromBoth(0)), { timeout: 10_000, interval: 100, label: 'ticks from both senders' });

    const stoppedAt = Date.now();
    const mark = events.length;
    await env.nodes[k].stop({ signal: 'SIGTERM' });
    assert.deepEqual(await env.nodes[k].exited, { code: 0, signal: null }, `node ${k + 1} exits 0 after SIGTERM`);
    await waitUntil(() => sockets[0].closeCode !== null, { label: 'the first socket closed' });
    assert.equal(sockets[0].closeCode, 1012, 'closed with 1012 (service restart)');
    const system = events.slice(mark).filter((e) => e.kind === 'system');
    assert.deepEqual(
      system.map((e) => e.payload),
      [{ extension: 'system', status: 'ok', message: 'Server requested disconnect' }],
      'one system disconnect message on the channel',
    );
    const systemFrame = sockets[0].frames.findIndex((f) => f.event === 'system' && f.topic === `realtime:${room}`);
    assert.ok(systemFrame >= 0, 'the system frame came on the closed socket, before its close');

    // realtime-js reconnects on its own (its first retry after 1 s) through the proxy, which
    // skips the stopped node, and rejoins the channel.
    const rejoined = () => t.statuses.lastIndexOf('SUBSCRIBED') > 0;
    await waitUntil(rejoined, { timeout: 15_000, label: `SUBSCRIBED again (statuses ${t.statuses})` });
    const away = Date.now() - stoppedAt;
    assert.equal(sockets.length, 2, 'exactly one new socket: the first reconnect succeeded');
    const landed = await nodeOf(sockets[1]);
    assert.equal(landed, (k + 1) % 3, 'the proxy skipped the stopped node for the next one');
    assert.match(entry.log(), new RegExp(`backend 127\\.0\\.0\\.1:${env.nodes[k].port} refused`), 'the stopped node refused the connection');
    const since = events.length;
    await waitUntil(async () => (await tick(), heardFromBoth(since)), { timeout: 10_000, interval: 100, label: 'ticks from both senders after the rejoin' });
    process.stderr.write(`drain: node ${k + 1} stopped; the channel was SUBSCRIBED again on node ${landed + 1} after ${away} ms (statuses ${t.statuses})\n`);

    await env.nodes[k].start();
    await waitUntil(env.converged, { timeout: 30_000, interval: 100, label: 'three nodes again' });
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
