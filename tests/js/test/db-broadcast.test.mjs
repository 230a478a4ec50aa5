// Broadcast from the database (PROTOCOL.md 9) and replay (4.6) with the newest realtime-js
// against a real PostgreSQL: realtime.send public and private, broadcast_changes from a
// trigger, send_binary as kind 4 with id metadata, the v1 JSON shape, the payload size limit,
// replay since a timestamp (limit, oldest first, replayed flag, its errors) and the suppression
// of a replayed message's live copy.
//
// One tenant per file: the messages slot is per database, and every tenant here shares the
// harness's database.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startEnv, tenantJwt, subscribed, track, collect, sleep, uid, waitUntil, dumpFrames } from '../harness.mjs';

/** Time allowed for something that must NOT arrive. */
const QUIET_MS = 800;
const SLOT = 'supabase_realtime_messages_replication_slot_';

let env;
let tenant;

const userToken = (sub = 'user-1') => tenantJwt(tenant.jwtSecret, { role: 'authenticated', sub });

/** Private topics starting with `priv-` may be read by every authenticated user. */
const POLICIES = `
  drop policy if exists rt_read on realtime.messages;
  create policy rt_read on realtime.messages for select to authenticated
    using (realtime.topic() like 'priv-%');
  create table if not exists public.todos (id serial primary key, title text);
  create or replace function public.todos_broadcast() returns trigger language plpgsql as $$
  begin
    perform realtime.broadcast_changes('priv-todos', tg_op, tg_op, tg_table_name, tg_table_schema, new, old);
    return null;
  end $$;
  drop trigger if exists todos_broadcast on public.todos;
  create trigger todos_broadcast after insert or update or delete on public.todos
    for each row execute function public.todos_broadcast();
  create table if not exists public.filler (id int, pad text);
`;

const sql = (q) => env.pg.sql(q);
const quote = (s) => `'${s.replace(/'/g, "''")}'`;

/** The messages stream of the tenant streams from its temporary slot. */
async function streaming() {
  await waitUntil(() => sql(`select count(*) from pg_replication_slots where slot_name = '${SLOT}' and active`).trim() === '1', {
    timeout: 15_000,
    label: 'messages slot active',
  });
}

function clientFor({ vsn, sockets } = {}) {
  return env.client({ tenant: tenant.externalId, token: userToken(), vsn, sockets });
}

async function join(topic, { priv = false, vsn, sockets, replay } = {}) {
  const c = clientFor({ vsn, sockets });
  const ch = c.channel(topic, { config: { private: priv, ...(replay ? { broadcast: { replay } } : {}) } });
  const got = collect(ch);
  await subscribed(ch);
  return { c, ch, got };
}

function send(topic, payload, event = 'note', priv = false) {
  sql(`select realtime.send(${quote(JSON.stringify(payload))}::jsonb, ${quote(event)}, ${quote(topic)}, ${priv})`);
}

before(async () => {
  env = await startEnv({ serverEnv: { REPLICATION_IDLE_TIMEOUT_MS: '60000' } });
  tenant = await env.createTenant({ max_payload_size_in_kb: 2 });
  // The first join opens the tenant's pool (tenant migrations) and starts its stream.
  const c = clientFor();
  track(c.channel(uid('warmup-')));
  await waitUntil(() => sql(`select to_regclass('realtime.messages') is not null`).trim() === 't', { timeout: 15_000, label: 'tenant migrations' });
  sql(POLICIES);
  await streaming();
});
after(async () => {
  await env?.stop();
});
afterEach(async () => {
  await env.closeClients();
});

describe('broadcast from the database', () => {
  it('realtime.send public: kind 4 with {"id"} metadata to public subscribers, not to private ones', async () => {
    const topic = uid('priv-pub-');
    const sockets = [];
    const pub = await join(topic, { sockets });
    const priv = await join(topic, { priv: true });
    await streaming();
    send(topic, { t: 'hi' }, 'note', false);
    const msg = await pub.got.waitFor((m) => m.event === 'note');
    assert.equal(msg.type, 'broadcast');
    assert.equal(msg.payload.t, 'hi');
    assert.match(msg.meta.id, /^[0-9a-f-]{36}$/);
    assert.equal(msg.payload.id, msg.meta.id, 'send injects the row id into the payload');
    const frame = sockets.flatMap((s) => s.frames).find((f) => f.kind === 4 && f.topic === `realtime:${topic}`);
    assert.ok(frame, `a kind-4 frame: ${dumpFrames(sockets)}`);
    assert.equal(frame.userEvent, 'note');
    assert.equal(frame.encoding, 1);
    assert.deepEqual(frame.meta, { id: msg.meta.id });
    await sleep(QUIET_MS);
    assert.equal(pub.got.items.length, 1, 'delivered once');
    assert.equal(priv.got.items.length, 0, 'a public row does not reach the private channel');
  });

  it('realtime.send private (the default) reaches private subscribers with read permission only', async () => {
    const topic = uid('priv-');
    const pub = await join(topic);
    const priv = await join(topic, { priv: true });
    sql(`select realtime.send('{"n": 1}'::jsonb, 'secret', ${quote(topic)})`);
    const msg = await priv.got.waitFor((m) => m.event === 'secret');
    assert.equal(msg.payload.n, 1);
    assert.ok(msg.meta.id);
    await sleep(QUIET_MS);
    assert.equal(pub.got.items.length, 0, 'a private row does not reach the public channel');
    assert.equal(priv.got.items.length, 1);
  });

  it('broadcast_changes from a row trigger on a user table', async () => {
    const priv = await join('priv-todos', { priv: true });
    sql(`insert into public.todos (title) values ('x')`);
    const msg = await priv.got.waitFor((m) => m.event === 'INSERT');
    assert.equal(msg.payload.operation, 'INSERT');
    assert.equal(msg.payload.table, 'todos');
    assert.equal(msg.payload.schema, 'public');
    assert.equal(msg.payload.record.title, 'x');
    assert.equal(msg.payload.old_record, null);
    assert.equal(msg.payload.id, msg.meta.id);
    sql(`update public.todos set title = 'y'`);
    const upd = await priv.got.waitFor((m) => m.event === 'UPDATE');
    assert.equal(upd.payload.old_record.title, 'x');
    assert.equal(upd.payload.record.title, 'y');
  });

  it('send_binary: kind 4 with encoding 0 and id metadata; v1 gets the JSON rows only', async () => {
    const topic = uid('priv-bin-');
    const sockets = [];
    const v2 = await join(topic, { sockets });
    const v1sockets = [];
    const v1 = await join(topic, { vsn: '1.0.0', sockets: v1sockets });
    sql(`select realtime.send_binary('\\x00ff10'::bytea, 'blob', ${quote(topic)}, false)`);
    const msg = await v2.got.waitFor((m) => m.event === 'blob');
    assert.ok(msg.payload instanceof ArrayBuffer, `binary payload, got ${typeof msg.payload}`);
    assert.deepEqual([...new Uint8Array(msg.payload)], [0x00, 0xff, 0x10]);
    assert.match(msg.meta.id, /^[0-9a-f-]{36}$/);
    const frame = sockets.flatMap((s) => s.frames).find((f) => f.kind === 4 && f.userEvent === 'blob');
    assert.equal(frame.encoding, 0);
    assert.deepEqual(frame.meta, { id: msg.meta.id });
    // A JSON row after it: the v1 socket gets that one, in the documented shape, and never the binary one.
    send(topic, { after: true }, 'json', false);
    await v1.got.waitFor((m) => m.event === 'json');
    const v1frames = v1sockets.flatMap((s) => s.frames).filter((f) => f.topic === `realtime:${topic}` && f.event === 'broadcast');
    assert.equal(v1frames.length, 1, dumpFrames(v1sockets));
    const f = v1frames[0];
    assert.equal(f.vsn, 1);
    assert.equal(f.ref, null);
    assert.equal(f.payload.type, 'broadcast');
    assert.equal(f.payload.event, 'json');
    assert.equal(f.payload.payload.after, true);
    assert.equal(f.payload.meta.id, f.payload.payload.id);
  });

  it('a payload over the tenant limit is dropped; the stream goes on', async () => {
    const topic = uid('priv-big-');
    const pub = await join(topic);
    send(topic, { big: 'x'.repeat(3000) }, 'big', false);
    send(topic, { small: true }, 'small', false);
    await pub.got.waitFor((m) => m.event === 'small');
    await sleep(200);
    assert.deepEqual(pub.got.items.map((m) => m.event), ['small']);
  });
});

describe('replay', () => {
  it('since a timestamp: the newest `limit` rows, oldest first, flagged replayed; then live rows', async () => {
    const topic = uid('priv-replay-');
    sql(`select realtime.send('{"n": 0}'::jsonb, 'old', ${quote(topic)})`);
    await sleep(20);
    const since = Date.now();
    await sleep(20);
    for (const n of [1, 2, 3]) {
      sql(`select realtime.send('{"n": ${n}}'::jsonb, 'stored', ${quote(topic)})`);
    }
    // Public rows and rows of other topics are never replayed.
    send(topic, { n: 99 }, 'stored', false);
    sql(`select realtime.send('{"n": 98}'::jsonb, 'stored', ${quote(topic + '-other')})`);
    const sockets = [];
    const { got } = await join(topic, { priv: true, sockets, replay: { since, limit: 2 } });
    await waitUntil(() => got.items.length >= 2, { label: 'replayed rows' });
    assert.deepEqual(got.items.map((m) => m.payload.n), [2, 3], 'the 2 newest since `since`, oldest first');
    for (const m of got.items) {
      assert.equal(m.meta.replayed, true);
      assert.equal(m.meta.id, m.payload.id);
    }
    // The replayed frames follow the join reply and carry the channel's join_ref.
    const frames = sockets.flatMap((s) => s.frames).filter((f) => f.topic === `realtime:${topic}`);
    const reply = frames.findIndex((f) => f.event === 'phx_reply');
    const replayed = frames.filter((f) => f.event === 'broadcast');
    assert.ok(reply >= 0 && frames.indexOf(replayed[0]) > reply);
    assert.equal(replayed[0].join_ref, frames[reply].join_ref);
    sql(`select realtime.send('{"n": 4}'::jsonb, 'live', ${quote(topic)})`);
    const live = await got.waitFor((m) => m.event === 'live');
    assert.equal(live.meta.replayed, undefined);
    await sleep(QUIET_MS);
    assert.equal(got.items.length, 3);
  });

  it('binary rows replay as kind 4 with {"replayed":true,"id"} metadata; limit defaults to 25', async () => {
    const topic = uid('priv-replay-bin-');
    const since = Date.now() - 1000;
    sql(`select realtime.send_binary('\\x0102'::bytea, 'b', ${quote(topic)})`);
    for (let n = 0; n < 30; n++) sql(`select realtime.send('{"n": ${n}}'::jsonb, 'j', ${quote(topic)})`);
    const sockets = [];
    const { got } = await join(topic, { priv: true, sockets, replay: { since } });
    await waitUntil(() => got.items.length >= 25, { label: '25 replayed rows' });
    await sleep(300);
    assert.equal(got.items.length, 25, 'at most 25');
    assert.deepEqual(got.items.map((m) => m.payload.n), [...Array(25).keys()].map((i) => i + 5));
    // The binary row is older than the 25 newest: ask for it alone.
    const sockets2 = [];
    const only = await join(topic, { priv: true, sockets: sockets2, replay: { since, limit: 0 } });
    await waitUntil(() => only.got.items.length >= 1, { label: 'limit clamped to 1' });
    await sleep(300);
    assert.equal(only.got.items.length, 1);
    assert.equal(only.got.items[0].payload.n, 29);
    sql(`delete from realtime.messages where topic = ${quote(topic)} and event = 'j'`);
    const sockets3 = [];
    const bin = await join(topic, { priv: true, sockets: sockets3, replay: { since } });
    const m = await bin.got.waitFor((x) => x.event === 'b');
    assert.deepEqual([...new Uint8Array(m.payload)], [1, 2]);
    const frame = sockets3.flatMap((s) => s.frames).find((f) => f.kind === 4 && f.userEvent === 'b');
    assert.equal(frame.encoding, 0);
    assert.equal(frame.meta.replayed, true);
    assert.match(frame.meta.id, /^[0-9a-f-]{36}$/);
  });

  it('a replayed row whose live copy arrives after the join is not delivered twice', async () => {
    const topic = uid('priv-dup-');
    const since = Date.now() - 1000;
    // A large unrelated transaction ahead of the row in the WAL holds its live copy back while
    // the stream decodes it, so the join (and its replay) happens before the live copy.
    sql(`insert into public.filler select g, repeat('x', 200) from generate_series(1, 400000) g;
         select realtime.send('{"dup": true}'::jsonb, 'dup', ${quote(topic)});`);
    const replayer = await join(topic, { priv: true, replay: { since } });
    await replayer.got.waitFor((m) => m.event === 'dup');
    // A witness that joined after the replayer, without replay: it gets the live copy, so the
    // live copy reached the room while the replayer was in it.
    const witness = await join(topic, { priv: true });
    const live = await witness.got.waitFor((m) => m.event === 'dup', { timeout: 15_000 });
    assert.equal(live.meta.replayed, undefined);
    assert.equal(live.meta.id, replayer.got.items[0].meta.id);
    await sleep(QUIET_MS);
    assert.equal(replayer.got.items.length, 1, `replayed once, live copy suppressed: ${JSON.stringify(replayer.got.items)}`);
    assert.equal(replayer.got.items[0].meta.replayed, true);
    sql(`truncate public.filler`);
  });

  it('a failing replay query is refused with UnableToReplayMessages', async () => {
    const c = clientFor();
    // 9e18 ms is beyond timestamptz's range: the query fails in Postgres.
    const ch = c.channel(uid('priv-fail-'), { config: { private: true, broadcast: { replay: { since: 9e18 } } } });
    const t = track(ch);
    const err = await t.waitFor('CHANNEL_ERROR');
    assert.match(err?.message ?? '', /UnableToReplayMessages: Realtime was unable to replay messages/);
  });

  it('replay needs broadcast read permission', async () => {
    const c = clientFor();
    const ch = c.channel(uid('nopolicy-'), { config: { private: true, broadcast: { replay: { since: 0 } } } });
    const t = track(ch);
    const err = await t.waitFor('CHANNEL_ERROR');
    assert.match(err?.message ?? '', /Unauthorized/);
  });
});
