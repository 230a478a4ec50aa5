// JWTs: handshake refusals (raw ws), join refusals and token refresh/expiry (realtime-js),
// asymmetric keys (JWKS tenants).

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startEnv, tenantJwt, subscribed, collect, track, uid, rawSocket, nowSec, rsaKey, ecKey, waitUntil, dumpFrames, sleep,
} from '../harness.mjs';

let env;
let tenant;
let other;
let token;

before(async () => {
  // Strict Host routing, so unknown tenants are refused as PROTOCOL.md documents (the server's
  // FALLBACK_TENANT would otherwise route them to the seeded tenant).
  env = await startEnv({ serverEnv: { FALLBACK_TENANT: 'none' } });
  tenant = await env.createTenant();
  other = await env.createTenant();
  token = tenantJwt(tenant.jwtSecret);
});
after(async () => {
  await env?.stop();
});
afterEach(async () => {
  await env.closeClients();
});

const bad = () => ({
  expired: tenantJwt(tenant.jwtSecret, { expiresIn: -120 }),
  badSignature: tenantJwt('this-is-not-the-tenant-secret-0123456789'),
  wrongTenant: tenantJwt(other.jwtSecret),
  roleless: tenantJwt(tenant.jwtSecret, { role: null }),
  expless: tenantJwt(tenant.jwtSecret, { exp: null }),
  notJwt: 'definitely-not-a-jwt',
});

const wsUrl = (apikey, { vsn = '2.0.0', path = '/realtime/v1/websocket' } = {}) => {
  const q = new URLSearchParams();
  if (apikey !== undefined) q.set('apikey', apikey);
  if (vsn !== undefined) q.set('vsn', vsn);
  return `ws://127.0.0.1:${env.port}${path}?${q}`;
};

describe('WebSocket handshake', () => {
  it('accepts a valid token (101)', async () => {
    const s = await rawSocket(wsUrl(token), { host: tenant.host });
    assert.equal(s.status, 101);
    s.ws.close();
  });

  const cases = [
    ['expired token', (b) => b.expired, 401, 'Token has expired'],
    ['badly signed token', (b) => b.badSignature, 401, 'Failed to validate JWT signature'],
    ["another tenant's token", (b) => b.wrongTenant, 401, 'Failed to validate JWT signature'],
    ['token without role', (b) => b.roleless, 401, 'Fields `role` and `exp` are required in JWT'],
    ['token without exp', (b) => b.expless, 401, 'Fields `role` and `exp` are required in JWT'],
    ['value that is not a JWT', (b) => b.notJwt, 401, 'The token provided is not a valid JWT'],
    ['missing apikey', () => undefined, 401, 'API key is missing'],
  ];
  for (const [name, pick, status, error] of cases) {
    it(`refuses a ${name} with ${status} {"error":"${error}"}`, async () => {
      const r = await rawSocket(wsUrl(pick(bad())), { host: tenant.host });
      assert.equal(r.status, status, `body: ${r.body}`);
      assert.match(String(r.headers['content-type']), /application\/json/);
      assert.deepEqual(r.json, { error });
    });
  }

  it('refuses an unknown tenant with 404 {"error":"Tenant not found"}', async () => {
    const r = await rawSocket(wsUrl(token), { host: env.host('no-such-tenant') });
    assert.equal(r.status, 404, r.body);
    assert.deepEqual(r.json, { error: 'Tenant not found' });
  });

  it('refuses an unsupported vsn with 403 and an empty body', async () => {
    const r = await rawSocket(wsUrl(token, { vsn: '3.0.0' }), { host: tenant.host });
    assert.equal(r.status, 403);
    assert.equal(r.body, '');
  });

  it('the x-api-key header wins over the apikey query parameter', async () => {
    const ok = await rawSocket(wsUrl(bad().expired), { host: tenant.host, headers: { 'x-api-key': token } });
    assert.equal(ok.status, 101);
    ok.ws.close();
    const refused = await rawSocket(wsUrl(token), { host: tenant.host, headers: { 'x-api-key': bad().expired } });
    assert.equal(refused.status, 401);
    assert.deepEqual(refused.json, { error: 'Token has expired' });
  });
});

describe('join with a bad channel token (realtime-js setAuth)', () => {
  const cases = [
    ['expired', (b) => b.expired, /^InvalidJWTToken: Token has expired \d+ seconds ago$/],
    ['badly signed', (b) => b.badSignature, /^JwtSignatureError: Failed to validate JWT signature$/],
    ["another tenant's", (b) => b.wrongTenant, /^JwtSignatureError: Failed to validate JWT signature$/],
    ['role-less', (b) => b.roleless, /^InvalidJWTToken: Fields `role` and `exp` are required in JWT$/],
    ['exp-less', (b) => b.expless, /^InvalidJWTToken: Fields `role` and `exp` are required in JWT$/],
    ['malformed', (b) => b.notJwt, /^MalformedJWT: The token provided is not a valid JWT$/],
  ];
  for (const vsn of ['2.0.0', '1.0.0']) {
    for (const [name, pick, reason] of cases) {
      it(`vsn ${vsn}: ${name} token → CHANNEL_ERROR "${reason.source}"`, async () => {
        const c = env.client({ tenant: tenant.externalId, token, vsn });
        await c.setAuth(pick(bad()));
        const ch = c.channel(uid('room-'));
        const first = await track(ch).first(8000);
        assert.equal(first.status, 'CHANNEL_ERROR');
        assert.match(first.error.message, reason);
        await c.removeChannel(ch);
      });
    }
  }

  it('a join without access_token uses the connection token', async () => {
    const sockets = [];
    const c = env.client({ tenant: tenant.externalId, token, sockets });
    const ch = c.channel(uid('room-'));
    await subscribed(ch);
    const join = sockets[0].sent.find((f) => f.event === 'phx_join');
    assert.equal(join.payload.access_token, undefined, 'realtime-js sent no access_token (precondition)');
  });
});

describe('token refresh and expiry', () => {
  it('setAuth(newToken) while joined: access_token is pushed without reply, the channel stays joined and broadcasts flow', async () => {
    const room = uid('room-');
    const sockets = [];
    const c = env.client({ tenant: tenant.externalId, token, sockets });
    await c.setAuth(tenantJwt(tenant.jwtSecret, { role: 'authenticated', sub: 'user-1', expiresIn: 600 }));
    const ch = c.channel(room, { config: { broadcast: { self: true } } });
    const sys = collect(ch, 'system', {});
    const got = collect(ch);
    const t = await subscribed(ch);
    const fresh = tenantJwt(tenant.jwtSecret, { role: 'authenticated', sub: 'user-1', expiresIn: 3600 });
    await c.setAuth(fresh);
    const pushed = await waitUntil(() => sockets[0].sent.find((f) => f.event === 'access_token'), { label: 'access_token push' });
    assert.equal(pushed.payload.access_token, fresh);
    await ch.send({ type: 'broadcast', event: 'after-refresh', payload: { ok: 1 } });
    await got.waitFor();
    // a second client still receives, i.e. the channel is really alive on the server
    const rx = env.client({ tenant: tenant.externalId, token }).channel(room);
    const got2 = collect(rx);
    await subscribed(rx);
    await ch.send({ type: 'broadcast', event: 'again', payload: { ok: 2 } });
    await got2.waitFor();
    assert.deepEqual(t.statuses, ['SUBSCRIBED']);
    assert.deepEqual(sys.items.filter((m) => m.status === 'error'), []);
    assert.ok(!sockets[0].frames.some((f) => f.event === 'phx_reply' && f.ref === pushed.ref), 'access_token gets no reply');
  });

  it('setAuth(expiredToken) while joined shuts the channel down: system error then CLOSED', async () => {
    const c = env.client({ tenant: tenant.externalId, token });
    const ch = c.channel(uid('room-'));
    const sys = collect(ch, 'system', {});
    const t = await subscribed(ch);
    await c.setAuth(bad().expired);
    const m = await sys.waitFor((x) => x.status === 'error', { timeout: 5000 });
    assert.match(m.message, /^Token has expired \d+ seconds ago$/);
    assert.equal(m.extension, 'system');
    await t.waitFor('CLOSED', 5000);
  });

  it('a token that expires while joined: system "Token has expired ..." then the channel closes', async () => {
    const sockets = [];
    const c = env.client({ tenant: tenant.externalId, token, sockets });
    await c.setAuth(tenantJwt(tenant.jwtSecret, { exp: nowSec() + 2 }));
    const ch = c.channel(uid('room-'));
    const sys = collect(ch, 'system', {});
    const t = await subscribed(ch);
    const m = await sys.waitFor((x) => x.status === 'error', { timeout: 8000, label: 'expiry system message' });
    assert.match(m.message, /^Token has expired \d+ seconds ago$/);
    assert.equal(m.channel, ch.subTopic);
    await t.waitFor('CLOSED', 5000);
    const close = sockets[0].frames.find((f) => f.event === 'phx_close' && f.topic === ch.topic);
    assert.ok(close, `phx_close expected:\n${dumpFrames(sockets)}`);
    const sysFrame = sockets[0].frames.find((f) => f.event === 'system' && f.topic === ch.topic);
    assert.equal(close.join_ref, sysFrame.join_ref, 'system and phx_close carry the channel join_ref');
    assert.equal(close.ref, close.join_ref, 'phx_close ref = join_ref (PROTOCOL.md 2.2)');
    assert.equal(sysFrame.ref, null);
    assert.ok(sockets[0].frames.indexOf(sysFrame) < sockets[0].frames.indexOf(close), 'system comes before phx_close');
    assert.equal(c.isConnected(), true, 'the socket stays open');
    await sleep(200);
    assert.ok(!t.statuses.slice(t.statuses.indexOf('CLOSED')).includes('SUBSCRIBED'), 'realtime-js does not rejoin');
  });
});

describe('JWKS tenant (asymmetric keys)', () => {
  let jwks;
  let rsa;
  let ec;
  before(async () => {
    rsa = rsaKey();
    ec = ecKey();
    jwks = await env.createTenant({ jwt_jwks: { keys: [rsa.jwk, ec.jwk] } });
  });

  for (const [alg, key] of [['RS256', () => rsa], ['ES256', () => ec]]) {
    it(`${alg} token with a known kid: handshake 101 and join SUBSCRIBED`, async () => {
      const k = key();
      const tok = tenantJwt(k.privateKey, { kid: k.kid, role: 'authenticated' });
      const s = await rawSocket(wsUrl(tok), { host: jwks.host });
      assert.equal(s.status, 101, s.body);
      s.ws.close();
      const c = env.client({ tenant: jwks.externalId, token: tok });
      await c.setAuth(tok);
      await subscribed(c.channel(uid('room-')));
    });
  }

  it('RS256 token signed by another key with a known kid → JwtSignatureError at join', async () => {
    const impostor = rsaKey(rsa.kid);
    const c = env.client({ tenant: jwks.externalId, token: tenantJwt(rsa.privateKey, { kid: rsa.kid }) });
    await c.setAuth(tenantJwt(impostor.privateKey, { kid: rsa.kid }));
    const ch = c.channel(uid('room-'));
    const first = await track(ch).first(8000);
    assert.equal(first.status, 'CHANNEL_ERROR');
    assert.match(first.error.message, /^JwtSignatureError: Failed to validate JWT signature$/);
    await c.removeChannel(ch);
  });

  it('ES256 token with an unknown kid → JwtSignerError at join', async () => {
    const stranger = ecKey('unknown-kid');
    const c = env.client({ tenant: jwks.externalId, token: tenantJwt(ec.privateKey, { kid: ec.kid }) });
    await c.setAuth(tenantJwt(stranger.privateKey, { kid: 'unknown-kid' }));
    const ch = c.channel(uid('room-'));
    const first = await track(ch).first(8000);
    assert.equal(first.status, 'CHANNEL_ERROR');
    assert.match(first.error.message, /^JwtSignerError: /);
    await c.removeChannel(ch);
  });
});
