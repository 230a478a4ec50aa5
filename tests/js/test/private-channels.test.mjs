// Private channels authorized by RLS policies on realtime.messages (PROTOCOL.md 8), with the
// newest realtime-js against a real PostgreSQL: read at join, broadcast and presence write at
// first use, presence-only and broadcast-only members in the fan-out, a token refresh that takes
// read permission away, a private_only tenant, and 200 sockets joining at once through a pool of
// two connections.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { startEnv, tenantJwt, subscribed, track, collect, sleep, uid, waitUntil } from '../harness.mjs';

/** Time allowed for something that must NOT arrive. */
const QUIET_MS = 800;
const BACKOFF_MS = 300;

let env;
let tenant;

/** Grants in public.rt_grants: (sub, topic, extension, can = read | write). */
const POLICIES = `
  create table if not exists public.rt_grants (sub text, topic text, extension text, can text);
  grant select on public.rt_grants to anon, authenticated;
  drop policy if exists rt_read on realtime.messages;
  drop policy if exists rt_write on realtime.messages;
  create policy rt_read on realtime.messages for select to authenticated using (
    exists (select 1 from public.rt_grants g
             where g.sub = current_setting('request.jwt.claims', true)::jsonb->>'sub'
               and g.topic = realtime.topic() and g.extension = realtime.messages.extension
               and g.can = 'read'));
  create policy rt_write on realtime.messages for insert to authenticated with check (
    exists (select 1 from public.rt_grants g
             where g.sub = current_setting('request.jwt.claims', true)::jsonb->>'sub'
               and g.topic = realtime.topic() and g.extension = realtime.messages.extension
               and g.can = 'write'));
`;

function grant(topic, rows) {
  const values = rows.map(([sub, extension, can]) => `('${sub}', '${topic}', '${extension}', '${can}')`).join(', ');
  env.pg.sql(`insert into public.rt_grants values ${values};`);
}

const userToken = (sub, t = tenant, opts = {}) => tenantJwt(t.jwtSecret, { role: 'authenticated', sub, ...opts });

/** A client for `sub` whose frames are recorded in `sockets`. */
function clientFor(sub, { t = tenant, sockets = [] } = {}) {
  const c = env.client({ tenant: t.externalId, token: userToken(sub, t), sockets });
  return { c, sockets };
}

function frames(sockets, topic, event) {
  return sockets.flatMap((s) => s.frames).filter((f) => f.topic === `realtime:${topic}` && f.event === event);
}

/** Opens the tenant's pool (a join runs the tenant migrations) and waits for realtime.messages. */
async function migrate(t, sql = (q) => env.pg.sql(q)) {
  const { c } = clientFor('nobody', { t });
  const ch = c.channel(uid('warmup-'), { config: { private: true } });
  track(ch);
  await waitUntil(() => sql(`select to_regclass('realtime.messages') is not null`).trim() === 't', {
    timeout: 15_000,
    label: 'tenant migrations',
  });
  await c.removeChannel(ch);
}

before(async () => {
  env = await startEnv({ serverEnv: { CHANNEL_ERROR_BACKOFF_MS: String(BACKOFF_MS) } });
  tenant = await env.createTenant();
  await migrate(tenant);
  env.pg.sql(POLICIES);
});
after(async () => {
  await env?.stop();
});
afterEach(async () => {
  await env.closeClients();
});

describe('private channels', () => {
  it('read: a granted user joins, another is refused with Unauthorized', async () => {
    const topic = uid('room-');
    grant(topic, [['alice', 'broadcast', 'read']]);
    const alice = clientFor('alice').c.channel(topic, { config: { private: true } });
    await subscribed(alice);
    const bob = clientFor('bob').c.channel(topic, { config: { private: true } });
    const first = await track(bob).first(8000);
    assert.equal(first.status, 'CHANNEL_ERROR');
    assert.equal(first.error.message, `Unauthorized: You do not have permissions to read from this Channel topic: ${topic}`);
    // The public room of the same name is another room, open to anyone.
    await subscribed(clientFor('bob').c.channel(topic));
  });

  it('write: broadcasts of a user without write permission are dropped, without a reply', async () => {
    const topic = uid('room-');
    grant(topic, [
      ['alice', 'broadcast', 'read'],
      ['alice', 'broadcast', 'write'],
      ['carol', 'broadcast', 'read'],
    ]);
    const listener = clientFor('alice').c.channel(topic, { config: { private: true } });
    const got = collect(listener, 'broadcast', { event: '*' });
    await subscribed(listener);
    const writer = clientFor('alice').c.channel(topic, { config: { private: true, broadcast: { ack: true } } });
    await subscribed(writer);
    const reader = clientFor('carol').c.channel(topic, { config: { private: true, broadcast: { ack: true } } });
    await subscribed(reader);

    assert.equal(await writer.send({ type: 'broadcast', event: 'note', payload: { n: 1 } }), 'ok');
    assert.equal(await reader.send({ type: 'broadcast', event: 'note', payload: { n: 2 } }, { timeout: 1500 }), 'timed out');
    // The cached refusal: no reply again, and the allowed writer keeps going.
    assert.equal(await reader.send({ type: 'broadcast', event: 'note', payload: { n: 3 } }, { timeout: 1000 }), 'timed out');
    assert.equal(await writer.send({ type: 'broadcast', event: 'note', payload: { n: 4 } }), 'ok');
    await got.waitFor((m) => m.payload.n === 4);
    await sleep(QUIET_MS);
    assert.deepEqual(got.items.map((m) => m.payload.n), [1, 4]);
  });

  it('presence: write needs its own permission; presence-only and broadcast-only members get only their part', async () => {
    const topic = uid('room-');
    grant(topic, [
      ['alice', 'broadcast', 'read'],
      ['alice', 'broadcast', 'write'],
      ['alice', 'presence', 'read'],
      ['alice', 'presence', 'write'],
      ['dave', 'presence', 'read'],
      ['eve', 'broadcast', 'read'],
    ]);
    const config = { private: true, presence: { enabled: true } };
    const { c: daveClient, sockets: daveSockets } = clientFor('dave');
    const dave = daveClient.channel(topic, { config });
    let daveSyncs = 0;
    dave.on('presence', { event: 'sync' }, () => daveSyncs++);
    const daveBroadcasts = collect(dave, 'broadcast', { event: '*' });
    await subscribed(dave);
    const { c: eveClient, sockets: eveSockets } = clientFor('eve');
    const eve = eveClient.channel(topic, { config });
    const eveBroadcasts = collect(eve, 'broadcast', { event: '*' });
    await subscribed(eve);
    const alice = clientFor('alice').c.channel(topic, { config });
    await subscribed(alice);

    assert.equal(await dave.track({ who: 'dave' }), 'error', 'no presence write');
    assert.equal(await alice.track({ who: 'alice' }), 'ok');
    await waitUntil(() => Object.values(dave.presenceState()).flat().some((p) => p.who === 'alice'), {
      label: 'dave sees alice',
    });
    assert.ok(daveSyncs > 0);
    assert.equal(await alice.send({ type: 'broadcast', event: 'hello', payload: { n: 1 } }), 'ok');
    await eveBroadcasts.waitFor((m) => m.payload.n === 1);
    await sleep(QUIET_MS);
    assert.equal(daveBroadcasts.items.length, 0, 'no broadcast read: no broadcasts');
    assert.equal(frames(daveSockets, topic, 'broadcast').length, 0);
    assert.equal(frames(eveSockets, topic, 'presence_state').length, 0, 'no presence read: no state');
    assert.equal(frames(eveSockets, topic, 'presence_diff').length, 0, 'no presence read: no diffs');
    assert.ok(frames(daveSockets, topic, 'presence_diff').length > 0);
    assert.deepEqual(Object.keys(eve.presenceState()), []);
  });

  it('HTTP broadcasts to a private topic run the write check on every request', async () => {
    const topic = uid('room-');
    grant(topic, [
      ['alice', 'broadcast', 'read'],
      ['alice', 'broadcast', 'write'],
      ['carol', 'broadcast', 'read'],
    ]);
    const listener = clientFor('alice').c.channel(topic, { config: { private: true } });
    const got = collect(listener, 'broadcast', { event: '*' });
    await subscribed(listener);
    // httpSend() posts to /api/broadcast/:topic/events/:event?private=true with the user's JWT.
    const alice = clientFor('alice').c.channel(topic, { config: { private: true } });
    assert.deepEqual(await alice.httpSend('over-http', { n: 1 }), { success: true });
    const carol = clientFor('carol').c.channel(topic, { config: { private: true } });
    await assert.rejects(carol.httpSend('over-http', { n: 2 }), /Unauthorized/);
    await got.waitFor((m) => m.payload.n === 1);
    await sleep(QUIET_MS);
    assert.deepEqual(got.items.map((m) => m.payload.n), [1]);
  });

  it('a token refresh that removes read permission closes the channel; one that keeps it does not', async () => {
    const topic = uid('room-');
    grant(topic, [
      ['alice', 'broadcast', 'read'],
      ['alice', 'broadcast', 'write'],
    ]);
    const { c } = clientFor('alice');
    const ch = c.channel(topic, { config: { private: true, broadcast: { self: true, ack: true } } });
    const system = collect(ch, 'system', {});
    const got = collect(ch, 'broadcast', { event: '*' });
    const status = await subscribed(ch);
    // Another token of the same user: still allowed, broadcasts flow (writes are checked again).
    await c.setAuth(userToken('alice', tenant, { expiresIn: 1800 }));
    await sleep(300);
    assert.equal(await ch.send({ type: 'broadcast', event: 'e', payload: { n: 1 } }), 'ok');
    await got.waitFor((m) => m.payload.n === 1);
    // Bob's token: read is gone.
    await c.setAuth(userToken('bob'));
    const notice = await system.waitFor((m) => m.status === 'error', { timeout: 8000 });
    assert.equal(notice.message, `You no longer have permission to read from this Channel topic: ${topic}`);
    await status.waitFor('CLOSED', 5000);
  });

  it('a private_only tenant refuses public joins and admits authorized private ones', async () => {
    const strict = await env.createTenant({ private_only: true });
    const topic = uid('room-');
    grant(topic, [['alice', 'broadcast', 'read']]);
    const pub = clientFor('alice', { t: strict }).c.channel(topic);
    const first = await track(pub).first(8000);
    assert.equal(first.status, 'CHANNEL_ERROR');
    assert.equal(first.error.message, 'PrivateOnly: This project only allows private channels');
    await subscribed(clientFor('alice', { t: strict }).c.channel(topic, { config: { private: true } }));
    const denied = clientFor('bob', { t: strict }).c.channel(topic, { config: { private: true } });
    assert.match((await track(denied).first(8000)).error.message, /^Unauthorized: /);
  });

  it('a missing partition of realtime.messages is MissingPartition', async () => {
    const topic = uid('room-');
    grant(topic, [['alice', 'broadcast', 'read']]);
    const part = `realtime.messages_${new Date().toISOString().slice(0, 10).replaceAll('-', '_')}`;
    env.pg.sql(`drop table ${part}`);
    try {
      const ch = clientFor('alice').c.channel(topic, { config: { private: true } });
      const first = await track(ch).first(8000);
      assert.equal(first.status, 'CHANNEL_ERROR');
      assert.equal(first.error.message, 'MissingPartition: Realtime was unable to find the expected messages partition');
    } finally {
      env.pg.sql(`select realtime.rs_ensure_messages_partitions((now() at time zone 'utc')::date, (now() at time zone 'utc')::date)`);
    }
    await subscribed(clientFor('alice').c.channel(topic, { config: { private: true } }));
  });

  it('200 sockets joining private channels at once through a pool of 2 are all answered, correctly', async () => {
    const dbname = uid('pool2_');
    env.pg.sql(`create database ${dbname}`);
    const sql = (q) =>
      execFileSync('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-At', '-h', '127.0.0.1', '-p', String(env.pg.port), '-U', 'postgres', '-d', dbname, '-c', q], {
        env: { ...process.env, PGPASSWORD: 'postgres' },
        encoding: 'utf8',
      });
    const small = await env.createTenant({
      max_concurrent_users: 10_000,
      max_joins_per_second: 10_000,
      extensions: [
        {
          type: 'postgres_cdc_rls',
          settings: {
            region: 'us-east-1', db_host: '127.0.0.1', db_port: String(env.pg.port), db_name: dbname,
            db_user: 'postgres', db_password: 'postgres', ssl_enforced: false, db_pool: 2,
            publication: 'supabase_realtime', slot_name: `rt_slot_${dbname}`,
          },
        },
      ],
    });
    await migrate(small, sql);
    sql(`create policy storm_read on realtime.messages for select to authenticated using (
           current_setting('request.jwt.claims', true)::jsonb->>'sub' = 'alice')`);

    let most = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const n = Number(env.pg.sql(`select count(*) from pg_stat_activity where datname = '${dbname}' and application_name = 'realtime_rs'`).trim());
        most = Math.max(most, n);
        await sleep(20);
      }
    })();
    const joins = [];
    for (let i = 0; i < 200; i++) {
      const sub = i % 2 === 0 ? 'alice' : 'bob';
      const ch = clientFor(sub, { t: small }).c.channel(`storm-${i}`, { config: { private: true } });
      joins.push({ sub, first: track(ch).first(15_000) });
    }
    const answers = await Promise.all(joins.map((j) => j.first));
    sampling = false;
    await sampler;
    const wrong = answers
      .map((a, i) => ({ i, sub: joins[i].sub, status: a.status, error: a.error?.message }))
      .filter((a) =>
        a.sub === 'alice'
          ? a.status !== 'SUBSCRIBED'
          : a.status !== 'CHANNEL_ERROR' || !a.error.startsWith('Unauthorized: You do not have permissions to read from this Channel topic: storm-'));
    assert.deepEqual(wrong, [], 'every join answered, allowed ones joined, refused ones Unauthorized');
    assert.ok(most <= 2, `the tenant's pool of 2 was never exceeded (saw ${most} connections)`);
  });
});
