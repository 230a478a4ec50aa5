// The Realtime Inspector (`/inspector`, served by the node itself) in headless Chromium: the page
// is filled in like a person would (tenant, token, channel, a Postgres-changes table), joins, and
// then shows what real realtime-js clients do on the same channel (a broadcast, a tracked
// presence) and a row inserted into the tenant's database; what the page sends (a broadcast, a
// presence) reaches the realtime-js client. A screenshot is saved as a test artifact
// (tests/js/artifacts/inspector.png). Skips only when Chromium is missing and REQUIRE_BROWSER is
// unset (see browser.mjs).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startEnv, tenantJwt, subscribed, collect, uid, waitUntil } from '../harness.mjs';
import { browserSkip, startBrowser, describePage } from '../browser.mjs';

describe('Realtime Inspector in Chromium', { skip: browserSkip() }, () => {
  let env;
  let browser;
  let tenant;
  let token;

  before(async () => {
    env = await startEnv();
    env.pg.sql(`
      do $$ begin
        if not exists (select from pg_publication where pubname = 'supabase_realtime') then
          create publication supabase_realtime;
        end if;
      end $$;
      grant usage on schema public to anon, authenticated;
    `);
    tenant = await env.createTenant();
    token = tenantJwt(tenant.jwtSecret);
    browser = await startBrowser();
  });

  after(async () => {
    await browser?.close();
    await env?.stop();
  });

  /** The first entry of the list `#id` whose text contains `text` (waits for it). */
  async function entry(page, id, text, timeout = 10_000) {
    const item = page.locator(`#${id} li`, { hasText: text }).first();
    await item.waitFor({ timeout }).catch((e) => assert.fail(`no "${text}" in #${id}: ${e.message}\n${describePage(page)}`));
    return item.textContent();
  }

  it('joins from the form, shows broadcasts, presence and Postgres changes, and sends both ways', async () => {
    const room = uid('room-');
    const table = uid('t_');
    env.pg.sql(`
      create table public.${table} (id bigint generated always as identity primary key, body text);
      grant select, insert on public.${table} to anon, authenticated;
      alter publication supabase_realtime add table public.${table};
    `);

    // The page is opened from the node (as `localhost`: Chromium resolves `*.localhost` to the
    // loopback, so the tenant field can turn it into `<tenant>.localhost`).
    const page = await browser.open(`http://localhost:${env.port}/inspector/new`);
    await page.waitForSelector('body[data-ready="true"]');
    assert.equal(await page.inputValue('#url'), `http://localhost:${env.port}`);
    await page.fill('#tenant', tenant.externalId);
    await page.fill('#token', token);
    await page.click('#connect');
    await page
      .waitForSelector('body[data-socket="connected"]', { timeout: 10_000 })
      .catch((e) => assert.fail(`the page did not connect: ${e.message}\n${describePage(page)}`));
    const shown = await page.textContent('#socket-url');
    assert.ok(shown.includes(`ws://${tenant.externalId}.localhost:${env.port}/realtime/v1/websocket?apikey=…&vsn=2.0.0`), shown);
    assert.ok(shown.includes('role anon'), shown);

    await page.fill('#channel', room);
    await page.check('#pg-enabled');
    await page.fill('#pg-table', table);
    await page.click('#join');
    await page
      .waitForSelector('body[data-channel="joined"]', { timeout: 10_000 })
      .catch((e) => assert.fail(`the page did not join: ${e.message}\n${describePage(page)}`));
    await entry(page, 'log', 'Subscribed to PostgreSQL', 15_000);

    // Another client, the real realtime-js, on the same channel with a presence key.
    const other = env.client({ tenant: tenant.externalId, token }).channel(room, { config: { presence: { key: 'alice' } } });
    const atOther = collect(other);
    other.on('presence', { event: 'sync' }, () => {});
    await subscribed(other);

    // realtime-js → page: a broadcast (a binary kind-4 frame on the page's v2 socket).
    assert.equal(await other.send({ type: 'broadcast', event: 'from-js', payload: { n: 1, text: '<b>not html</b>' } }), 'ok');
    const bc = await entry(page, 'broadcasts', 'from-js');
    assert.ok(bc.includes('"n": 1') && bc.includes('<b>not html</b>'), bc);
    assert.equal(await page.locator('#broadcasts b').count(), 0, 'payloads are shown as text, never as HTML');

    // realtime-js tracks a presence: the page's state table and diff list show it.
    assert.equal(await other.track({ user: 'alice', status: 'online' }), 'ok');
    const row = page.locator('#presence-state tr[data-key="alice"]');
    await row.waitFor({ timeout: 10_000 }).catch((e) => assert.fail(`alice not in the presence table: ${e.message}\n${describePage(page)}`));
    assert.ok((await row.textContent()).includes('"status":"online"'));
    await entry(page, 'presence-diffs', '+alice');

    // page → realtime-js: a broadcast and a presence.
    await page.fill('#bc-event', 'from-page');
    await page.fill('#bc-payload', '{"n": 2}');
    await page.click('#bc-send');
    const fromPage = await atOther.waitFor((m) => m.event === 'from-page');
    assert.deepEqual(fromPage.payload, { n: 2 });
    // `receive own broadcasts` is on by default: the page sees its own message too.
    await entry(page, 'broadcasts', 'from-page');

    await page.fill('#presence-payload', '{"user": "inspector"}');
    await page.click('#track');
    await waitUntil(() => Object.values(other.presenceState()).flat().some((p) => p.user === 'inspector'), {
      label: `the page's presence at realtime-js (state: ${JSON.stringify(other.presenceState())})`,
    });
    // The page hears its own track by a presence_diff of its own, which may come after
    // realtime-js has seen it.
    await waitUntil(async () => (await page.locator('#presence-state tbody tr').count()) === 2, {
      label: `both presences in the page's table\n${describePage(page)}`,
    });

    // A row inserted into the tenant's database shows up as a Postgres change.
    env.pg.sql(`insert into public.${table} (body) values ('hello from postgres')`);
    const change = await entry(page, 'changes', 'INSERT', 15_000);
    assert.ok(change.includes(`public.${table}`) && change.includes('hello from postgres'), change);

    const shot = await browser.screenshot(page, 'inspector');
    process.stderr.write(`inspector test: screenshot ${shot}\n`);

    // realtime-js untracks: its presence leaves the page's table.
    assert.equal(await other.untrack(), 'ok');
    await row.waitFor({ state: 'detached', timeout: 10_000 });
    await entry(page, 'presence-diffs', '-alice');

    // The token is not on the page, and the server's log does not contain it.
    assert.ok(!(await page.textContent('body')).includes(token));
    assert.ok(!fs.readFileSync(env.server.logFile, 'utf8').includes(token), 'the token is in the server log');
    assert.deepEqual(page.errors, [], describePage(page));
    await page.close();
  });

  it('takes its settings from the URL fragment and removes the token from the address bar', async () => {
    const room = uid('room-');
    const fragment = new URLSearchParams({ tenant: tenant.externalId, apikey: token, channel: room, vsn: '1.0.0' });
    const page = await browser.open(`http://localhost:${env.port}/inspector/new#${fragment}`);
    await page.waitForSelector('body[data-ready="true"]');
    assert.equal(await page.inputValue('#tenant'), tenant.externalId);
    assert.equal(await page.inputValue('#token'), token);
    assert.equal(await page.inputValue('#channel'), room);
    assert.equal(await page.inputValue('#vsn'), '1.0.0');
    assert.equal(await page.evaluate(() => location.href), `http://localhost:${env.port}/inspector/new`);

    // v1 (JSON objects) works as well: join, and a broadcast from realtime-js shows up.
    await page.click('#connect');
    await page.waitForSelector('body[data-socket="connected"]', { timeout: 10_000 });
    await page.click('#join');
    await page
      .waitForSelector('body[data-channel="joined"]', { timeout: 10_000 })
      .catch((e) => assert.fail(`the page did not join over v1: ${e.message}\n${describePage(page)}`));
    const other = env.client({ tenant: tenant.externalId, token }).channel(room);
    await subscribed(other);
    assert.equal(await other.send({ type: 'broadcast', event: 'over-v1', payload: { v: 1 } }), 'ok');
    assert.ok((await entry(page, 'broadcasts', 'over-v1')).includes('"v": 1'));

    // The private toggle joins `config.private: true`: anon has no read policy on
    // realtime.messages, so the join is refused and the page shows the reason.
    await page.check('#private');
    await page.fill('#channel', `${room}-private`);
    await page.click('#join');
    await page
      .waitForSelector('body[data-channel="refused"]', { timeout: 10_000 })
      .catch((e) => assert.fail(`the private join was not refused: ${e.message}\n${describePage(page)}`));
    await entry(page, 'log', `refused: Unauthorized: You do not have permissions to read from this Channel topic: ${room}-private`);

    // A wrong token: the handshake is refused and the page says so.
    await page.click('#disconnect');
    await page.waitForSelector('body[data-socket^="closed"]');
    await page.fill('#token', tenantJwt('not-the-tenant-secret'));
    await page.click('#connect');
    await page.waitForSelector('body[data-socket="closed 1006"]', { timeout: 10_000 });
    assert.deepEqual(page.errors, [], describePage(page));
    await page.close();
  });
});
