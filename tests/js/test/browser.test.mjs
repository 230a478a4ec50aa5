// The real realtime-js in a real browser (headless Chromium via playwright-core), from a page on a
// second origin: it subscribes over WebSocket, receives a broadcast sent from Node, and publishes
// with `httpSend()` and the REST fallback of `send()`, both carrying `Authorization` cross-origin.
// Skips only when Chromium is missing and REQUIRE_BROWSER is unset (see browser.mjs).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { API_JWT_SECRET, startEnv, tenantJwt, subscribed, collect, uid, waitUntil } from '../harness.mjs';
import { browserSkip, startSite, startBrowser, realtimePage, describePage } from '../browser.mjs';

describe('realtime-js in Chromium, cross-origin', { skip: browserSkip() }, () => {
  let env;
  let site;
  let browser;
  let page;
  let token;
  /** Every request the page sent to the realtime server, as promises of `{ method, url, headers, status }`. */
  const calls = [];
  /** The first finished call matching `pred` (waits for it). */
  const call = (pred, label) =>
    waitUntil(async () => (await Promise.all(calls)).find(pred), { timeout: 5000, label }).catch(async (e) =>
      assert.fail(`${e.message}; seen: ${JSON.stringify((await Promise.all(calls)).map((c) => `${c.method} ${c.url} ${c.status}`))}`),
    );

  before(async () => {
    env = await startEnv();
    // The seeded tenant (its JWT secret is API_JWT_SECRET), reached as plain `localhost`.
    token = tenantJwt(API_JWT_SECRET);
    site = await startSite({ pages: { '/': realtimePage({ title: 'realtime-js cross-origin broadcast' }) } });
    browser = await startBrowser();
    page = await browser.open(`${site.url}/`);
    page.on('response', (res) => {
      const req = res.request();
      if (!req.url().startsWith(`http://localhost:${env.port}/`)) return;
      calls.push((async () => ({ method: req.method(), url: req.url(), headers: await req.allHeaders(), status: res.status() }))());
    });
    await page.evaluate(() => window.realtimeReady);
  });

  after(async () => {
    await browser?.close();
    await site?.close();
    await env?.stop();
  });

  it('subscribes over WebSocket, receives a broadcast from Node, and httpSend() with a token reaches Node', async () => {
    const room = uid('room-');
    const endpoint = `ws://localhost:${env.port}/realtime/v1`;

    // Node's side: a realtime-js client on the same room.
    const node = env.client({ host: `localhost:${env.port}`, token }).channel(room);
    const atNode = collect(node);
    await subscribed(node);

    // The page's side: the real realtime-js, WebSocket from origin http://127.0.0.1:<site>.
    const status = await page.evaluate(
      async ({ endpoint, token, room }) => {
        const client = new window.realtime.RealtimeClient(endpoint, { params: { apikey: token } });
        await client.setAuth(token); // httpSend() sends `Authorization: Bearer <token>` from now on
        window.client = client;
        window.received = [];
        window.channel = client.channel(room);
        window.channel.on('broadcast', { event: '*' }, (m) => {
          window.received.push(m);
          window.logLine(`received ${m.event} ${JSON.stringify(m.payload)} over WebSocket`);
        });
        const status = await new Promise((resolve) => {
          window.channel.subscribe((s, err) => {
            if (s !== 'SUBSCRIBED' && s !== 'CHANNEL_ERROR' && s !== 'TIMED_OUT') return;
            window.logLine(`subscribe: ${s}${err ? ` ${err.message}` : ''}`, s === 'SUBSCRIBED');
            resolve(s);
          });
        });
        return status;
      },
      { endpoint, token, room },
    );
    assert.equal(status, 'SUBSCRIBED', describePage(page));

    // Node → page over WebSocket.
    assert.equal(await node.send({ type: 'broadcast', event: 'from-node', payload: { n: 1 } }), 'ok');
    const got = await page
      .waitForFunction(() => window.received.find((m) => m.event === 'from-node'), null, { timeout: 10_000 })
      .then((h) => h.jsonValue())
      .catch((e) => assert.fail(`no broadcast reached the page: ${e.message}\n${describePage(page)}`));
    assert.deepEqual(got.payload, { n: 1 });

    // Page → Node with httpSend(): a cross-origin POST carrying Authorization.
    const sent = await page.evaluate(async () => {
      try {
        const r = await window.channel.httpSend('from-page', { n: 2 });
        window.logLine(`httpSend: ${JSON.stringify(r)}`, r.success === true);
        return r;
      } catch (e) {
        window.logLine(`httpSend failed: ${e.message}`, false);
        return { error: e.message };
      }
    });
    assert.deepEqual(sent, { success: true }, describePage(page));
    const fromPage = await atNode.waitFor((m) => m.event === 'from-page');
    assert.deepEqual(fromPage.payload, { n: 2 });

    const post = await call((c) => c.method === 'POST' && new URL(c.url).pathname === `/realtime/v1/api/broadcast/${room}/events/from-page`, "the page's httpSend POST");
    assert.equal(post.status, 202);
    assert.equal(post.headers.authorization, `Bearer ${token}`);
    assert.equal(post.headers.origin, site.url);

    // The REST fallback of send() (a channel that is not joined: the page leaves the room first)
    // posts the batch endpoint, also with Authorization.
    const fallback = await page.evaluate(async (room) => {
      await window.client.removeChannel(window.channel);
      const idle = window.client.channel(room);
      const r = await idle.send({ type: 'broadcast', event: 'from-page-rest', payload: { n: 3 } });
      window.logLine(`send() REST fallback: ${r}`, r === 'ok');
      return r;
    }, room);
    assert.equal(fallback, 'ok', describePage(page));
    const fromRest = await atNode.waitFor((m) => m.event === 'from-page-rest');
    assert.deepEqual(fromRest.payload, { n: 3 });
    const batch = await call((c) => c.method === 'POST' && new URL(c.url).pathname === '/realtime/v1/api/broadcast', "the page's REST fallback POST");
    assert.equal(batch.status, 202);
    assert.equal(batch.headers.authorization, `Bearer ${token}`);

    const shot = await browser.screenshot(page, 'browser-broadcast');
    process.stderr.write(`browser test: screenshot ${shot}\n`);
    assert.deepEqual(page.errors, [], describePage(page));
  });
});
