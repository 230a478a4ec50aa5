// Postgres Changes with realtime-js (newest) against a real PostgreSQL (logical replication,
// pgoutput): actions, every filter operator, RLS per subscriber, column privileges, replica
// identity, the size limit, publication changes, bad subscribers, ordering after
// "Subscribed to PostgreSQL", restarts and a tenant database that goes away.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startEnv, tenantJwt, subscribed, collect, sleep, uid, waitUntil, httpRequest, freePort } from '../harness.mjs';

/** Time allowed for something that must NOT arrive. */
const QUIET_MS = 600;

let env;
let tenant;
let anon;

const q = (s) => `"${s.replace(/"/g, '""')}"`;

before(async () => {
  env = await startEnv();
  env.pg.sql(`
    do $$ begin
      if not exists (select from pg_publication where pubname = 'supabase_realtime') then
        create publication supabase_realtime;
      end if;
    end $$;
    create schema if not exists auth;
    create or replace function auth.uid() returns uuid language sql stable as
      $f$ select nullif(coalesce(current_setting('request.jwt.claim.sub', true),
                                 current_setting('request.jwt.claims', true)::jsonb->>'sub'), '')::uuid $f$;
    grant usage on schema auth to anon, authenticated;
    grant usage on schema public to anon, authenticated;
  `);
  tenant = await env.createTenant();
  anon = tenantJwt(tenant.jwtSecret);
});
after(async () => {
  await env?.stop();
});
afterEach(async () => {
  await env.closeClients();
});

/** Creates a published table readable by anon and authenticated; returns its name. */
function table(columns, { name = uid('t_'), full = false, rls = false } = {}) {
  env.pg.sql(`
    create table public.${q(name)} (${columns});
    ${full ? `alter table public.${q(name)} replica identity full;` : ''}
    ${rls ? `alter table public.${q(name)} enable row level security;` : ''}
    grant select, insert, update, delete on public.${q(name)} to anon, authenticated;
    alter publication supabase_realtime add table public.${q(name)};
  `);
  return name;
}

/**
 * Joins a channel with the given postgres_changes bindings and waits for SUBSCRIBED and the
 * "Subscribed to PostgreSQL" notice. Returns `{ channel, changes: [[payload...] per binding], system }`.
 */
async function listen(bindings, { token = anon, client } = {}) {
  const c = client ?? env.client({ tenant: tenant.externalId, token });
  const channel = c.channel(uid('pg-'));
  const changes = bindings.map(() => []);
  bindings.forEach((b, i) => channel.on('postgres_changes', b, (p) => changes[i].push(p)));
  const system = collect(channel, 'system', {});
  await subscribed(channel);
  await system.waitFor((m) => m.extension === 'postgres_changes', { timeout: 10_000, label: 'postgres_changes notice' });
  const notice = system.items.find((m) => m.extension === 'postgres_changes');
  return { client: c, channel, changes, system, notice };
}

async function expectOk(sub) {
  assert.equal(sub.notice.status, 'ok', `notice: ${JSON.stringify(sub.notice)}`);
  assert.equal(sub.notice.message, 'Subscribed to PostgreSQL');
}

const arrived = (list, n, label = 'changes') =>
  waitUntil(() => list.length >= n, { timeout: 10_000, label: `${n} ${label} (got ${JSON.stringify(list).slice(0, 400)})` });

describe('postgres changes', () => {
  it('INSERT, UPDATE, DELETE and * arrive with typed records', async () => {
    const t = table('id bigint primary key, title text, done bool default false, tags text[], meta jsonb, n numeric, at timestamptz');
    const sub = await listen([
      { event: 'INSERT', schema: 'public', table: t },
      { event: 'UPDATE', schema: 'public', table: t },
      { event: 'DELETE', schema: 'public', table: t },
      { event: '*', schema: 'public', table: t },
    ]);
    await expectOk(sub);
    env.pg.sql(`insert into public.${q(t)} values (1, 'buy milk', false, '{a,b}', '{"k":[1,2]}', 1.50, '2026-08-21 10:15:30.123+00');
                update public.${q(t)} set done = true where id = 1;
                delete from public.${q(t)} where id = 1;`);
    await arrived(sub.changes[3], 3);
    const [ins, upd, del] = sub.changes[3];
    assert.deepEqual(sub.changes[0].map((p) => p.eventType), ['INSERT']);
    assert.deepEqual(sub.changes[1].map((p) => p.eventType), ['UPDATE']);
    assert.deepEqual(sub.changes[2].map((p) => p.eventType), ['DELETE']);
    assert.equal(ins.schema, 'public');
    assert.equal(ins.table, t);
    assert.match(ins.commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.deepEqual(ins.new, { id: 1, title: 'buy milk', done: false, tags: ['a', 'b'], meta: { k: [1, 2] }, n: 1.5, at: '2026-08-21T10:15:30.123+00:00' });
    assert.deepEqual(ins.old, {});
    assert.equal(ins.errors, null);
    assert.equal(upd.new.done, true);
    assert.deepEqual(upd.old, { id: 1 });
    assert.deepEqual(del.old, { id: 1 });
    assert.deepEqual(del.new, {});
  });

  it('every filter operator, not., AND, in lists and quoted values select the right rows', async () => {
    const t = table('id int primary key, name text, score numeric, flag bool, note text');
    const cases = [
      ['id=eq.2', [2]],
      ['id=neq.2', [1, 3, 4, 5]],
      ['id=lt.2', [1]],
      ['id=lte.2', [1, 2]],
      ['id=gt.4', [5]],
      ['id=gte.4', [4, 5]],
      ['id=in.(1,3,5)', [1, 3, 5]],
      ['name=in.("a,b",plain)', [2, 3]],
      ['name=like.al%', [4]],
      ['name=ilike.AL%', [4, 5]],
      ['name=match.^a.*e$', [4]],
      ['name=imatch.^AL', [4, 5]],
      ['note=is.null', [1]],
      ['flag=is.true', [2, 4]],
      ['note=isdistinct.x', [1, 2, 4, 5]],
      ['score=gt.1.5', [3, 5]],
      ['id=not.in.(1,2)', [3, 4, 5]],
      ['id=gt.1,id=lt.4', [2, 3]],
      ['name=eq."a,b"', [2]],
    ];
    const sub = await listen(cases.map(([filter]) => ({ event: 'INSERT', schema: 'public', table: t, filter })));
    await expectOk(sub);
    env.pg.sql(`insert into public.${q(t)} values
      (1, 'zed', 1.0, false, null), (2, 'a,b', 1.5, true, 'y'), (3, 'plain', 2.0, false, 'x'),
      (4, 'alice', 1.0, true, 'z'), (5, 'ALbert', 9.75, false, 'w');`);
    await arrived(sub.changes[1], 4, 'neq deliveries');
    await sleep(QUIET_MS);
    cases.forEach(([filter, ids], i) => {
      assert.deepEqual(sub.changes[i].map((p) => p.new.id).sort((a, b) => a - b), ids, `filter ${filter}`);
    });
  });

  it('odd table and column names work', async () => {
    const name = `Odd "T" ${uid('')} ü`;
    table(`"Weird ""Id""" int primary key, "naïve col" text`, { name });
    const sub = await listen([{ event: '*', schema: 'public', table: name, filter: 'naïve col=eq.x y' }]);
    await expectOk(sub);
    env.pg.sql(`insert into public.${q(name)} values (1, 'x y'), (2, 'z');`);
    await arrived(sub.changes[0], 1);
    await sleep(QUIET_MS);
    assert.deepEqual(sub.changes[0].map((p) => p.new), [{ 'Weird "Id"': 1, 'naïve col': 'x y' }]);
  });

  it('two users each see only their own rows through auth.uid()', async () => {
    const t = table('id int primary key, owner uuid not null, body text', { rls: true });
    env.pg.sql(`create policy own on public.${q(t)} for select to authenticated using (owner = auth.uid());`);
    const alice = crypto.randomUUID();
    const bob = crypto.randomUUID();
    const as = (sub) => tenantJwt(tenant.jwtSecret, { role: 'authenticated', sub });
    const a = await listen([{ event: '*', schema: 'public', table: t }], { token: as(alice) });
    const b = await listen([{ event: '*', schema: 'public', table: t }], { token: as(bob) });
    await expectOk(a);
    await expectOk(b);
    env.pg.sql(`insert into public.${q(t)} values (1, '${alice}', 'a1'), (2, '${bob}', 'b1'), (3, '${alice}', 'a2');`);
    await arrived(a.changes[0], 2);
    await arrived(b.changes[0], 1);
    await sleep(QUIET_MS);
    assert.deepEqual(a.changes[0].map((p) => p.new.body), ['a1', 'a2']);
    assert.deepEqual(b.changes[0].map((p) => p.new.body), ['b1']);
  });

  it('columns the role cannot read are left out', async () => {
    const t = table('id int primary key, public_note text, secret text');
    env.pg.sql(`revoke select on public.${q(t)} from anon; grant select (id, public_note) on public.${q(t)} to anon;`);
    const sub = await listen([{ event: 'INSERT', schema: 'public', table: t }]);
    await expectOk(sub);
    env.pg.sql(`insert into public.${q(t)} values (1, 'hello', 'hidden');`);
    await arrived(sub.changes[0], 1);
    assert.deepEqual(sub.changes[0][0].new, { id: 1, public_note: 'hello' });
  });

  it('a filter on a column the role cannot read is refused', async () => {
    const t = table('id int primary key, secret text');
    env.pg.sql(`revoke select on public.${q(t)} from anon; grant select (id) on public.${q(t)} to anon;`);
    const sub = await listen([{ event: 'INSERT', schema: 'public', table: t, filter: 'secret=eq.x' }]);
    assert.equal(sub.notice.status, 'error');
  });

  it('DELETE: default replica identity sends the key, FULL the whole old row, and filters apply to it', async () => {
    const d = table('id int primary key, body text');
    const f = table('id int primary key, body text', { full: true });
    const sub = await listen([
      { event: 'DELETE', schema: 'public', table: d },
      { event: 'DELETE', schema: 'public', table: f },
      { event: 'DELETE', schema: 'public', table: f, filter: 'body=eq.keep' },
    ]);
    await expectOk(sub);
    env.pg.sql(`insert into public.${q(d)} values (1, 'x'); insert into public.${q(f)} values (1, 'keep'), (2, 'drop');
                delete from public.${q(d)}; delete from public.${q(f)};`);
    await arrived(sub.changes[1], 2);
    await arrived(sub.changes[0], 1);
    await sleep(QUIET_MS);
    assert.deepEqual(sub.changes[0][0].old, { id: 1 });
    assert.deepEqual(sub.changes[1].map((p) => p.old).sort((x, y) => x.id - y.id), [{ id: 1, body: 'keep' }, { id: 2, body: 'drop' }]);
    assert.deepEqual(sub.changes[2].map((p) => p.old), [{ id: 1, body: 'keep' }]);
  });

  it('a row over the record size limit comes with the 413 error and its small fields', async () => {
    const t = table('id int primary key, big text');
    const sub = await listen([{ event: 'INSERT', schema: 'public', table: t }]);
    await expectOk(sub);
    env.pg.sql(`insert into public.${q(t)} values (1, repeat('x', 2000000));`);
    await arrived(sub.changes[0], 1);
    const p = sub.changes[0][0];
    assert.deepEqual(p.errors, ['Error 413: Payload Too Large']);
    assert.deepEqual(p.new, { id: 1 });
  });

  it('a table added to the publication later can be subscribed and streams', async () => {
    const name = uid('late_');
    env.pg.sql(`create table public.${q(name)} (id int primary key); grant select on public.${q(name)} to anon;`);
    const before = await listen([{ event: '*', schema: 'public', table: name }]);
    assert.equal(before.notice.status, 'error');
    assert.match(before.notice.message, /Unable to subscribe to changes with given parameters/);
    env.pg.sql(`alter publication supabase_realtime add table public.${q(name)};`);
    const sub = await listen([{ event: '*', schema: 'public', table: name }]);
    await expectOk(sub);
    env.pg.sql(`insert into public.${q(name)} values (7);`);
    await arrived(sub.changes[0], 1);
    assert.equal(sub.changes[0][0].new.id, 7);
  });

  it('a subscriber whose check fails gets errors; another keeps receiving', async () => {
    const t = table('id int primary key, body text', { rls: true });
    env.pg.sql(`
      create or replace function public.${q(t + '_boom')}() returns bool language plpgsql as $f$ begin raise exception 'policy exploded'; end $f$;
      create policy p on public.${q(t)} for select to authenticated
        using (current_setting('request.jwt.claims', true)::jsonb->>'sub' <> '00000000-0000-0000-0000-0000000000bb' or public.${q(t + '_boom')}());`);
    const badToken = tenantJwt(tenant.jwtSecret, { role: 'authenticated', sub: '00000000-0000-0000-0000-0000000000bb' });
    const goodToken = tenantJwt(tenant.jwtSecret, { role: 'authenticated', sub: crypto.randomUUID() });
    const bad = await listen([{ event: 'INSERT', schema: 'public', table: t }], { token: badToken });
    const good = await listen([{ event: 'INSERT', schema: 'public', table: t }], { token: goodToken });
    env.pg.sql(`insert into public.${q(t)} values (1, 'a'), (2, 'b');`);
    await arrived(good.changes[0], 2);
    await arrived(bad.changes[0], 2, 'error payloads');
    assert.deepEqual(good.changes[0].map((p) => p.new.body), ['a', 'b']);
    for (const p of bad.changes[0]) {
      assert.ok(Array.isArray(p.errors) && p.errors.length > 0, `errors: ${JSON.stringify(p)}`);
      assert.deepEqual(p.new, {});
    }
  });

  it('1,000 rows written right after "Subscribed to PostgreSQL" all arrive, in order', async () => {
    const t = table('id int primary key');
    const sub = await listen([{ event: 'INSERT', schema: 'public', table: t }]);
    await expectOk(sub);
    env.pg.sql(`do $$ begin for i in 1..1000 loop insert into public.${q(t)} values (i); commit; end loop; end $$;`);
    await waitUntil(() => sub.changes[0].length >= 1000, { timeout: 30_000, label: `1000 rows (got ${sub.changes[0].length})` });
    assert.deepEqual(sub.changes[0].map((p) => p.new.id), Array.from({ length: 1000 }, (_, i) => i + 1));
  });

  it('bad filters and unknown tables or columns get a clear system error and the socket stays healthy', async () => {
    const t = table('id int primary key, name text');
    const bad = [
      { event: '*', schema: 'public', table: t, filter: 'id=eq.1;select 1' },
      { event: '*', schema: 'public', table: t, filter: `id=in.(${Array.from({ length: 10_000 }, (_, i) => i).join(',')})` },
      { event: '*', schema: 'public', table: t, filter: 'nope=eq.1' },
      { event: '*', schema: 'public', table: t, filter: 'id=foo.1' },
      { event: '*', schema: 'public', table: 'no_such_table' },
      { event: '*', schema: 'public', table: t, filter: 'id=eq.1,,id=eq.2' },
    ];
    const c = env.client({ tenant: tenant.externalId, token: anon });
    for (const b of bad) {
      const sub = await listen([b], { client: c });
      assert.equal(sub.notice.status, 'error', `filter ${JSON.stringify(b).slice(0, 200)}`);
      assert.equal(typeof sub.notice.message, 'string');
    }
    // SQL in a text value is just text: it subscribes, matches that exact text, and runs nothing.
    const hostile = "x'); drop table public.victim; --";
    env.pg.sql(`create table public.victim (id int);`);
    const good = await listen(
      [
        { event: 'INSERT', schema: 'public', table: t },
        { event: 'INSERT', schema: 'public', table: t, filter: `name=eq.${hostile}` },
      ],
      { client: c },
    );
    await expectOk(good);
    env.pg.sql(`insert into public.${q(t)} values (1, 'x'), (2, $h$${hostile}$h$);`);
    await arrived(good.changes[0], 2);
    await arrived(good.changes[1], 1);
    assert.deepEqual(good.changes[1].map((p) => p.new.id), [2]);
    assert.equal(env.pg.sql(`select to_regclass('public.victim') is not null`).trim(), 't');
  });

  it('rows committed while the server was down arrive after realtime-js rejoins', async () => {
    const t = table('id int primary key');
    const sub = await listen([{ event: 'INSERT', schema: 'public', table: t }]);
    await expectOk(sub);
    env.pg.sql(`insert into public.${q(t)} values (1);`);
    await arrived(sub.changes[0], 1);
    await env.server.stop({ signal: 'SIGKILL' });
    env.pg.sql(`insert into public.${q(t)} values (2), (3);`);
    await env.server.start();
    const ids = () => sub.changes[0].map((p) => p.new.id);
    await waitUntil(() => ids().includes(3), { timeout: 30_000, label: `rows after the restart (got ${ids()})` });
    env.pg.sql(`insert into public.${q(t)} values (4);`);
    await waitUntil(() => ids().includes(4), { label: `row 4 (got ${ids()})` });
    // At least once across a crash: a change delivered but not yet confirmed to the slot when
    // the node died comes again; none is lost and the order holds.
    assert.deepEqual([...new Set(ids())], [1, 2, 3, 4]);
    assert.deepEqual(ids().slice(-3), [2, 3, 4]);
  });

  it('the tenant database going down mid-stream and coming back: changes resume, none lost', async () => {
    const t = table('id int primary key, body text', { rls: true });
    env.pg.sql(`create policy all_rows on public.${q(t)} for select to anon using (true);`);
    const sub = await listen([{ event: 'INSERT', schema: 'public', table: t }]);
    await expectOk(sub);
    env.pg.sql(`insert into public.${q(t)} values (1, 'before');`);
    await arrived(sub.changes[0], 1);
    env.pg.restart({ downMs: 1500 });
    env.pg.sql(`insert into public.${q(t)} values (2, 'after');`);
    await waitUntil(() => sub.changes[0].length >= 2, { timeout: 30_000, label: `rows after the database restart (got ${JSON.stringify(sub.changes[0])})` });
    assert.deepEqual(sub.changes[0].map((p) => p.new.body), ['before', 'after']);
  });

  it('a tenant whose database is down gets a clear system error fast; the socket stays healthy', async () => {
    const closedPort = await freePort();
    const down = await env.createTenant({
      extensions: [{ type: 'postgres_cdc_rls', settings: {
        region: 'us-east-1', db_host: '127.0.0.1', db_port: String(closedPort), db_name: 'postgres',
        db_user: 'postgres', db_password: 'postgres', ssl_enforced: false } }],
    });
    const c = env.client({ tenant: down.externalId, token: tenantJwt(down.jwtSecret) });
    const started = Date.now();
    const sub = await listen([{ event: '*', schema: 'public', table: 'anything' }], { client: c });
    assert.equal(sub.notice.status, 'error');
    assert.match(sub.notice.message, /Unable to connect to the project database/);
    assert.ok(Date.now() - started < 8000, 'answered within the connect timeout');
    // Broadcast still works on the same socket.
    const room = c.channel(uid('room-'), { config: { broadcast: { self: true } } });
    const got = collect(room);
    await subscribed(room);
    await room.send({ type: 'broadcast', event: 'e', payload: { ok: 1 } });
    await got.waitFor((m) => m.event === 'e');
  });

  it('deleting a tenant stops its stream and drops its slot', async () => {
    const gone = await env.createTenant();
    const slot = gone.record?.extensions?.[0]?.settings?.slot_name ?? `rt_slot_${gone.externalId.replace(/[^a-z0-9]/gi, '_').toLowerCase()}`;
    const t = table('id int primary key');
    const sub = await listen([{ event: '*', schema: 'public', table: t }], { token: tenantJwt(gone.jwtSecret), client: env.client({ tenant: gone.externalId, token: tenantJwt(gone.jwtSecret) }) });
    await expectOk(sub);
    const slots = () => env.pg.sql(`select count(*) from pg_replication_slots where slot_name = '${slot}'`).trim();
    assert.equal(slots(), '1', 'the tenant has a permanent slot while streaming');
    const r = await httpRequest(env.port, { method: 'DELETE', path: `/api/tenants/${gone.externalId}`, headers: { authorization: `Bearer ${env.apiToken()}` } });
    assert.ok(r.status === 204 || r.status === 200, `DELETE → ${r.status}`);
    await waitUntil(() => slots() === '0', { timeout: 15_000, label: `slot ${slot} dropped` });
  });

  it('changes never trip the broadcast events-per-second limit (PROTOCOL.md 12.2)', async () => {
    const strict = await env.createTenant({ max_events_per_second: 1 });
    const c = env.client({ tenant: strict.externalId, token: tenantJwt(strict.jwtSecret) });
    const t = table('id int primary key');
    const sub = await listen([{ event: 'INSERT', schema: 'public', table: t }], { client: c });
    await expectOk(sub);
    env.pg.sql(`insert into public.${q(t)} select generate_series(1, 200);`);
    await waitUntil(() => sub.changes[0].length >= 200, { label: `200 changes (got ${sub.changes[0].length})` });
    await sleep(QUIET_MS);
    assert.equal(sub.system.items.filter((m) => m.status === 'error').length, 0, JSON.stringify(sub.system.items));
    assert.equal(sub.channel.state, 'joined');
  });
});
