// Raw frames for the details realtime-js depends on (PROTOCOL.md 2, 3, 13.1): checked with a plain
// `ws` socket so the exact bytes and refs are visible.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startEnv, tenantJwt, rawSocket, awaitFrame, parseFrame, sleep, waitUntil } from '../harness.mjs';

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

async function open(vsn = '2.0.0', path = '/realtime/v1/websocket') {
  const s = await rawSocket(`ws://127.0.0.1:${env.port}${path}?apikey=${token}&vsn=${vsn}`, { host: tenant.host });
  assert.equal(s.status, 101, s.body);
  return s;
}
const v2 = (s, ...frame) => s.ws.send(JSON.stringify(frame));
const isArr = (pred) => (f) => Array.isArray(f) && pred(f);

/** A kind-3 user broadcast push, as realtime-js encodes it. */
function kind3(joinRef, ref, topic, event, payload, encoding = 1) {
  const parts = [joinRef, ref, topic, event].map((x) => Buffer.from(x));
  const body = encoding === 1 ? Buffer.from(JSON.stringify(payload)) : Buffer.from(payload);
  return Buffer.concat([Buffer.from([3, ...parts.map((p) => p.length), 0, encoding]), ...parts, body]);
}

describe('v2 framing', () => {
  it('heartbeat is answered on topic phoenix with join_ref null and the heartbeat ref', async () => {
    const s = await open();
    v2(s, null, '77', 'phoenix', 'heartbeat', {});
    const r = await awaitFrame(s, isArr((f) => f[1] === '77'));
    assert.deepEqual(r, [null, '77', 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);
    s.ws.close();
  });

  it('join reply carries the join_ref and ref of the join; postgres_changes is always present', async () => {
    const s = await open();
    v2(s, '5', '6', 'realtime:wire-a', 'phx_join', { config: {} });
    const r = await awaitFrame(s, isArr((f) => f[1] === '6'));
    assert.deepEqual(r, ['5', '6', 'realtime:wire-a', 'phx_reply', { status: 'ok', response: { postgres_changes: [] } }]);
    s.ws.close();
  });

  it('a kind-3 push is fanned out as kind 4 (topic rewritten to the subscriber, no metadata) and acked as JSON', async () => {
    const tx = await open();
    const rx = await open();
    v2(tx, '1', '1', 'realtime:wire-b', 'phx_join', { config: { broadcast: { ack: true } } });
    v2(rx, '9', '9', 'realtime:wire-b', 'phx_join', { config: {} });
    await awaitFrame(tx, isArr((f) => f[1] === '1'));
    await awaitFrame(rx, isArr((f) => f[1] === '9'));
    tx.ws.send(kind3('1', '2', 'realtime:wire-b', 'cursor', { x: 1 }));
    const ack = await awaitFrame(tx, isArr((f) => f[1] === '2'));
    assert.deepEqual(ack, ['1', '2', 'realtime:wire-b', 'phx_reply', { status: 'ok', response: {} }]);
    const bin = await awaitFrame(rx, (f) => Buffer.isBuffer(f));
    const topic = 'realtime:wire-b';
    const expected = Buffer.concat([Buffer.from([4, topic.length, 'cursor'.length, 0, 1]), Buffer.from(`${topic}cursor{"x":1}`)]);
    assert.equal(bin.toString('hex'), expected.toString('hex'));
    // raw binary payload (encoding 0)
    tx.ws.send(kind3('1', '3', 'realtime:wire-b', 'raw', Buffer.from([0, 255, 1]), 0));
    await waitBinaries(rx, 2);
    const f = parseFrame(rx.messages.filter((m) => Buffer.isBuffer(m))[1]);
    assert.equal(f.kind, 4);
    assert.equal(f.encoding, 0);
    assert.equal(f.userEvent, 'raw');
    assert.deepEqual([...f.bytes], [0, 255, 1]);
    tx.ws.close();
    rx.ws.close();
  });

  it('phx_leave: ok reply to the leave ref, then phx_close with ref = join_ref', async () => {
    const s = await open();
    v2(s, '3', '3', 'realtime:wire-c', 'phx_join', { config: {} });
    await awaitFrame(s, isArr((f) => f[1] === '3'));
    v2(s, '3', '4', 'realtime:wire-c', 'phx_leave', {});
    const reply = await awaitFrame(s, isArr((f) => f[1] === '4'));
    assert.deepEqual(reply, ['3', '4', 'realtime:wire-c', 'phx_reply', { status: 'ok', response: {} }]);
    const close = await awaitFrame(s, isArr((f) => f[3] === 'phx_close'));
    assert.deepEqual(close, ['3', '3', 'realtime:wire-c', 'phx_close', {}]);
    s.ws.close();
  });

  it('a push to a topic that is not joined gets "unmatched topic"; malformed frames are dropped and the socket stays up', async () => {
    const s = await open();
    v2(s, null, '8', 'realtime:nobody', 'broadcast', { type: 'broadcast', event: 'e', payload: {} });
    const r = await awaitFrame(s, isArr((f) => f[1] === '8'));
    assert.deepEqual(r, [null, '8', 'realtime:nobody', 'phx_reply', { status: 'error', response: { reason: 'unmatched topic' } }]);
    s.ws.send('this is not json');
    s.ws.send(JSON.stringify(['too', 'short']));
    s.ws.send(JSON.stringify({ an: 'object' }));
    v2(s, null, '10', 'phoenix', 'heartbeat', {});
    await awaitFrame(s, isArr((f) => f[1] === '10'));
    s.ws.close();
  });

  it('a topic other than realtime:* is answered with "unmatched topic" at join', async () => {
    const s = await open();
    v2(s, '1', '1', 'other:x', 'phx_join', { config: {} });
    const r = await awaitFrame(s, isArr((f) => f[1] === '1'));
    assert.deepEqual(r, [null, '1', 'other:x', 'phx_reply', { status: 'error', response: { reason: 'unmatched topic' } }]);
    s.ws.close();
  });
});

describe('v1 framing', () => {
  it('v1 frames are objects without join_ref; heartbeat and join replies', async () => {
    const s = await open('1.0.0');
    s.ws.send(JSON.stringify({ topic: 'phoenix', event: 'heartbeat', payload: {}, ref: '1' }));
    const hb = await awaitFrame(s, (f) => f.ref === '1');
    assert.deepEqual(hb, { topic: 'phoenix', event: 'phx_reply', payload: { status: 'ok', response: {} }, ref: '1' });
    s.ws.send(JSON.stringify({ topic: 'realtime:wire-d', event: 'phx_join', payload: { config: {} }, ref: '2', join_ref: '2' }));
    const join = await awaitFrame(s, (f) => f.ref === '2');
    assert.deepEqual(join, { topic: 'realtime:wire-d', event: 'phx_reply', payload: { status: 'ok', response: { postgres_changes: [] } }, ref: '2' });
    s.ws.close();
  });

  it('a vsn-less connection speaks v1', async () => {
    const s = await rawSocket(`ws://127.0.0.1:${env.port}/socket/websocket?apikey=${token}`, { host: tenant.host });
    assert.equal(s.status, 101);
    s.ws.send(JSON.stringify({ topic: 'phoenix', event: 'heartbeat', payload: {}, ref: '1' }));
    const hb = await awaitFrame(s, (f) => f.ref === '1');
    assert.equal(hb.event, 'phx_reply');
    assert.equal(Array.isArray(hb), false);
    s.ws.close();
    await sleep(10);
  });
});

async function waitBinaries(s, n) {
  await waitUntil(() => s.messages.filter((m) => Buffer.isBuffer(m)).length >= n, { timeout: 5000, label: `${n} binary frames` });
}
