// Test harness: a throwaway PostgreSQL 15, the realtime server binary, tenants, JWTs and the small
// transport/fetch shims the official clients need to talk to a tenant on 127.0.0.1.
//
// One harness per test file: `const env = await startEnv()` in `before`, `await env.stop()` in
// `after`. Everything it starts is also torn down on process exit, so a crashed test file does not
// leave Postgres or the server running.

import { spawn, spawnSync, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { RealtimeClient } from '@supabase/realtime-js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const PGBIN = process.env.PGBIN || '/usr/lib/postgresql/15/bin';
const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0;

export const API_JWT_SECRET = 'api-jwt-secret-for-tests-at-least-32-chars';
export const DEFAULT_TENANT = 'realtime-dev';

// ---------------------------------------------------------------------------------------------
// Small utilities

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value (returned) or `ms` pass (throws with `label`). */
export async function waitUntil(fn, { timeout = 10_000, interval = 25, label = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${label}${lastErr ? `: ${lastErr.message}` : ''}`);
    }
    await sleep(interval);
  }
}

/** A port nobody listens on right now (the OS picks it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Unique, lowercase, slot-name-safe id. */
export function uid(prefix = 't') {
  return `${prefix}${crypto.randomBytes(5).toString('hex')}`;
}

// ---------------------------------------------------------------------------------------------
// JWTs (node:crypto only)

const b64u = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/**
 * Signs a JWT. `key` is an HS secret string, or a `KeyObject` (RSA → RS256, EC P-256 → ES256).
 * `header` adds fields (e.g. `kid`).
 */
export function signJwt(claims, key, { alg, header = {} } = {}) {
  if (!alg) {
    if (typeof key === 'string' || Buffer.isBuffer(key)) alg = 'HS256';
    else if (key.asymmetricKeyType === 'rsa') alg = 'RS256';
    else if (key.asymmetricKeyType === 'ec') alg = 'ES256';
    else throw new Error('cannot pick alg for key');
  }
  const head = b64u({ alg, typ: 'JWT', ...header });
  const body = b64u(claims);
  const input = `${head}.${body}`;
  let sig;
  if (alg.startsWith('HS')) {
    sig = crypto.createHmac(`sha${alg.slice(2)}`, key).update(input).digest();
  } else if (alg.startsWith('RS')) {
    sig = crypto.sign(`sha${alg.slice(2)}`, Buffer.from(input), key);
  } else if (alg.startsWith('ES')) {
    sig = crypto.sign(`sha${alg.slice(2)}`, Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  } else {
    throw new Error(`unsupported alg ${alg}`);
  }
  return `${input}.${sig.toString('base64url')}`;
}

export const nowSec = () => Math.floor(Date.now() / 1000);

/**
 * A tenant JWT. Defaults: `role: 'anon'`, `exp` one hour ahead. Pass `exp: null` / `role: null` to
 * leave the claim out, `expiresIn` (seconds, may be negative) to move `exp`.
 */
export function tenantJwt(secretOrKey, { role = 'anon', exp, expiresIn = 3600, sub, extra = {}, alg, kid } = {}) {
  const claims = { ...extra };
  if (role !== null) claims.role = role;
  if (exp !== null) claims.exp = exp ?? nowSec() + expiresIn;
  claims.iat = nowSec();
  if (sub) claims.sub = sub;
  return signJwt(claims, secretOrKey, { alg, header: kid ? { kid } : {} });
}

/** Key pairs for JWKS tenants: `{ privateKey, jwk }` where `jwk` is the public JWK with `kid`. */
export function rsaKey(kid = uid('rsa')) {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { privateKey, kid, jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' } };
}
export function ecKey(kid = uid('ec')) {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { privateKey, kid, jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' } };
}

// ---------------------------------------------------------------------------------------------
// Host-header shims.
//
// The server picks the tenant from the first label of the Host header, and Node cannot resolve
// `<tenant>.localhost`. So everything connects to 127.0.0.1 and overrides Host:
//  * WebSocket: `ws` accepts `headers` in its options; realtime-js constructs the transport as
//    `new transport(url, protocols)`, so a subclass that adds `{headers: {host}}` works.
//  * HTTP: undici's `fetch` silently drops a `host` header (checked: the server sees
//    `127.0.0.1:<port>`), so `hostFetch` is a minimal fetch on top of `node:http`, whose `host`
//    header is honoured. realtime-js and supabase-js accept it as their `fetch` option.

/**
 * A `ws` WebSocket subclass that sends `Host: <host>`. Each instance is pushed to `sockets` (if
 * given) so tests can see close codes.
 */
export function hostTransport(host, sockets) {
  return class HostWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { host } });
      if (sockets) {
        const rec = { ws: this, closeCode: null, closeReason: null, openedAt: null, localPort: null, closedAt: null, frames: [], sent: [] };
        sockets.push(rec);
        this._rec = rec;
        this.on('open', () => {
          rec.openedAt = Date.now();
          rec.localPort = this._socket?.localPort ?? null;
        });
        this.on('message', (data, isBinary) => rec.frames.push(parseFrame(isBinary ? Buffer.from(data) : data.toString())));
        this.on('close', (code, reason) => {
          rec.closeCode = code;
          rec.closeReason = reason.toString();
          rec.closedAt = Date.now();
        });
      }
    }
    send(data, ...rest) {
      if (this._rec) this._rec.sent.push(parseFrame(typeof data === 'string' ? data : Buffer.from(data)));
      return super.send(data, ...rest);
    }
  };
}

/**
 * Normalises a frame: text v2 arrays and v1 objects → `{join_ref, ref, topic, event, payload}`;
 * binary kind 3/4 → the same shape with `kind`, `userEvent`, `meta`, `encoding`, `bytes`.
 */
export function parseFrame(raw) {
  if (typeof raw === 'string') {
    let v;
    try {
      v = JSON.parse(raw);
    } catch {
      return { invalid: raw };
    }
    if (Array.isArray(v)) {
      const [join_ref, ref, topic, event, payload] = v;
      return { vsn: 2, join_ref, ref, topic, event, payload };
    }
    return { vsn: 1, ...v };
  }
  const b = Buffer.from(raw);
  const kind = b[0];
  let off;
  const str = (n) => {
    const s = b.subarray(off, off + n).toString();
    off += n;
    return s;
  };
  if (kind === 4) {
    const [t, e, m, enc] = [b[1], b[2], b[3], b[4]];
    off = 5;
    const topic = str(t);
    const userEvent = str(e);
    const meta = m ? JSON.parse(str(m)) : undefined;
    const bytes = b.subarray(off);
    return { kind, topic, event: 'broadcast', userEvent, meta, encoding: enc, bytes, payload: enc === 1 ? JSON.parse(bytes.toString()) : bytes };
  }
  if (kind === 3) {
    const [j, r, t, e, m, enc] = [b[1], b[2], b[3], b[4], b[5], b[6]];
    off = 7;
    const join_ref = str(j);
    const ref = str(r);
    const topic = str(t);
    const userEvent = str(e);
    const meta = m ? JSON.parse(str(m)) : undefined;
    const bytes = b.subarray(off);
    return { kind, join_ref, ref, topic, event: 'broadcast', userEvent, meta, encoding: enc, bytes };
  }
  return { kind, bytes: b };
}

/** Renders recorded frames of `sockets` for assertion messages. */
export function dumpFrames(sockets, max = 1500) {
  return sockets
    .map((s, i) => `socket#${i} close=${s.closeCode}\n  in: ${s.frames.map((f) => JSON.stringify(f.kind ? { ...f, bytes: f.bytes.toString('hex') } : f)).join('\n      ')}`)
    .join('\n')
    .slice(0, max);
}

function bodyToBuffer(body) {
  if (body == null) return null;
  if (typeof body === 'string') return Buffer.from(body);
  if (Buffer.isBuffer(body)) return body;
  if (body instanceof ArrayBuffer) return Buffer.from(body);
  if (ArrayBuffer.isView(body)) return Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  throw new Error(`hostFetch: unsupported body type ${Object.prototype.toString.call(body)}`);
}

/** A `fetch` replacement (enough for realtime-js/supabase-js) that sends `Host: <host>`. */
export function hostFetch(host) {
  return async function fetchWithHost(input, init = {}) {
    let url;
    let method = init.method;
    let headers = new Headers(init.headers ?? {});
    let body = init.body;
    if (input instanceof Request) {
      url = new URL(input.url);
      method ??= input.method;
      if (!init.headers) headers = new Headers(input.headers);
      if (body === undefined && input.body) body = Buffer.from(await input.arrayBuffer());
    } else {
      url = new URL(String(input));
    }
    const data = bodyToBuffer(body);
    const out = {};
    headers.forEach((v, k) => (out[k] = v));
    out.host = host;
    if (data) out['content-length'] = String(data.length);
    return new Promise((resolve, reject) => {
      const req = http.request(
        url,
        { method: method ?? 'GET', headers: out, signal: init.signal },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const h = new Headers();
            for (const [k, v] of Object.entries(res.headers)) {
              for (const one of Array.isArray(v) ? v : [v]) h.append(k, one);
            }
            const nullBody = [101, 204, 205, 304].includes(res.statusCode);
            resolve(
              new Response(nullBody ? null : Buffer.concat(chunks), {
                status: res.statusCode,
                statusText: res.statusMessage,
                headers: h,
              }),
            );
          });
        },
      );
      req.on('error', reject);
      req.end(data ?? undefined);
    });
  };
}

/** Plain HTTP request with any Host. Resolves `{ status, headers, text, json }`. */
export function httpRequest(port, { method = 'GET', path: p = '/', host, headers = {}, body } = {}) {
  const data = body === undefined ? null : bodyToBuffer(typeof body === 'object' && !ArrayBuffer.isView(body) && !(body instanceof ArrayBuffer) && !Buffer.isBuffer(body) ? JSON.stringify(body) : body);
  const h = { ...headers };
  if (host) h.host = host;
  if (data) {
    h['content-length'] = String(data.length);
    if (!Object.keys(h).some((k) => k.toLowerCase() === 'content-type') && typeof body === 'object') {
      h['content-type'] = 'application/json';
    }
  }
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: p, headers: h }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let json;
        try {
          json = text ? JSON.parse(text) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(data ?? undefined);
  });
}

/**
 * Opens a raw `ws` WebSocket. Resolves `{ status: 101, ws, messages, closed }` on upgrade, or
 * `{ status, headers, body, json }` when the server refuses the upgrade.
 */
export function rawSocket(url, { host, headers = {}, timeout = 10_000 } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers: { ...(host ? { host } : {}), ...headers } });
    ws.binaryType = 'nodebuffer';
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`raw socket to ${url}: no answer in ${timeout} ms`));
    }, timeout);
    ws.on('unexpected-response', (_req, res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        const body = Buffer.concat(chunks).toString();
        let json;
        try {
          json = JSON.parse(body);
        } catch {
          json = undefined;
        }
        ws.terminate();
        resolve({ status: res.statusCode, headers: res.headers, body, json });
      });
    });
    ws.on('open', () => {
      clearTimeout(timer);
      const messages = [];
      const closed = new Promise((res) => ws.on('close', (code, reason) => res({ code, reason: reason.toString() })));
      ws.on('message', (data, isBinary) => messages.push(isBinary ? data : data.toString()));
      resolve({ status: 101, ws, messages, closed });
    });
    ws.on('error', (e) => {
      // After 'unexpected-response' ws may still emit an error when terminated; ignore it then.
      if (ws.readyState === WebSocket.CLOSED || ws.readyState === WebSocket.CLOSING) return;
      clearTimeout(timer);
      reject(e);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Process cleanup on exit (also when a test file crashes).

const exitHooks = new Set();
let exitHandlersInstalled = false;
function onExit(fn) {
  exitHooks.add(fn);
  if (!exitHandlersInstalled) {
    exitHandlersInstalled = true;
    process.on('exit', () => {
      for (const f of exitHooks) {
        try {
          f();
        } catch {
          /* best effort */
        }
      }
    });
    for (const sig of ['SIGINT', 'SIGTERM']) {
      process.once(sig, () => process.exit(130));
    }
  }
  return () => exitHooks.delete(fn);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

function asPg(cmd, args, opts = {}) {
  return IS_ROOT ? ['runuser', ['-u', 'postgres', '--', cmd, ...args], opts] : [cmd, args, opts];
}

export async function startPostgres() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-js-pg-'));
  if (IS_ROOT) {
    const pw = execFileSync('id', ['-u', 'postgres']).toString().trim();
    const gid = execFileSync('id', ['-g', 'postgres']).toString().trim();
    fs.chownSync(root, Number(pw), Number(gid));
  }
  const port = await freePort();
  const data = path.join(root, 'data');
  const pwfile = path.join(root, 'pw');
  fs.writeFileSync(pwfile, 'postgres\n');
  if (IS_ROOT) fs.chownSync(pwfile, ...['uid', 'gid'].map((k) => fs.statSync(root)[k]));
  const run = (cmd, args) => {
    const [c, a] = asPg(cmd, args);
    const r = spawnSync(c, a, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} failed (${r.status}): ${r.stderr || r.stdout}`);
  };
  const stop = () => {
    if (fs.existsSync(path.join(data, 'postmaster.pid'))) {
      const [c, a] = asPg(path.join(PGBIN, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']);
      spawnSync(c, a, { stdio: 'ignore' });
    }
    if (!process.env.KEEP_TMP) fs.rmSync(root, { recursive: true, force: true });
  };
  const unhook = onExit(stop);
  try {
    run(path.join(PGBIN, 'initdb'), [
      '-D', data, '-U', 'postgres', '-E', 'UTF8', '--auth-local=trust', '--auth-host=scram-sha-256',
      `--pwfile=${pwfile}`, '--no-sync',
    ]);
    run(path.join(PGBIN, 'pg_ctl'), [
      '-D', data, '-l', path.join(root, 'pg.log'), '-w', '-o',
      `-p ${port} -k ${root} -c listen_addresses=127.0.0.1 -c wal_level=logical ` +
        '-c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off -c max_connections=200',
      'start',
    ]);
  } catch (e) {
    stop();
    unhook();
    throw e;
  }
  return {
    port,
    root,
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    /** Runs SQL through psql (TCP, password auth); returns stdout. */
    sql(query) {
      return execFileSync('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-At', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-c', query], {
        env: { ...process.env, PGPASSWORD: 'postgres' },
        encoding: 'utf8',
      });
    },
    /** Stops the cluster (fast shutdown: sessions and walsenders are cut) and starts it again. */
    restart({ downMs = 0 } = {}) {
      const ctl = (args) => {
        const [c, a] = asPg(path.join(PGBIN, 'pg_ctl'), ['-D', data, ...args]);
        const r = spawnSync(c, a, { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`pg_ctl ${args[0]} failed: ${r.stderr || r.stdout}`);
      };
      ctl(['-m', 'fast', '-w', 'stop']);
      if (downMs > 0) spawnSync('sleep', [String(downMs / 1000)]);
      ctl(['-l', path.join(root, 'pg.log'), '-w', '-o',
        `-p ${port} -k ${root} -c listen_addresses=127.0.0.1 -c wal_level=logical ` +
          '-c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off -c max_connections=200',
        'start']);
    },
    stop() {
      stop();
      unhook();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The realtime server

export function serverBinary() {
  if (process.env.REALTIME_BIN) return process.env.REALTIME_BIN;
  const candidates = [
    process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, 'debug', 'realtime'),
    path.join(REPO, 'target', 'debug', 'realtime'),
  ].filter(Boolean);
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) {
    throw new Error(`realtime binary not found (tried ${candidates.join(', ')}); build it or set REALTIME_BIN`);
  }
  return found;
}

/**
 * The `entry_proxy` binary of `cluster-tests` (`ENTRY_PROXY_BIN`, else next to the server
 * binary, else `$CARGO_TARGET_DIR/debug` or `<repo>/target/debug`).
 */
export function entryProxyBinary() {
  if (process.env.ENTRY_PROXY_BIN) return process.env.ENTRY_PROXY_BIN;
  const candidates = [
    path.join(path.dirname(serverBinary()), 'entry_proxy'),
    process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, 'debug', 'entry_proxy'),
    path.join(REPO, 'target', 'debug', 'entry_proxy'),
  ].filter(Boolean);
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) {
    throw new Error(`entry_proxy binary not found (tried ${candidates.join(', ')}); build it or set ENTRY_PROXY_BIN`);
  }
  return found;
}

/**
 * Starts the entry proxy (round-robin TCP, a refused backend skipped) on a free port in front of
 * `backendPorts` on 127.0.0.1. Returns `{ port, backendOf(localPort), log(), pass(), stop() }`:
 * `backendOf` reads the proxy's route lines (client port → backend port), `log` is its stderr.
 */
export async function startEntryProxy(backendPorts) {
  const args = ['--listen', '127.0.0.1:0', ...backendPorts.flatMap((p) => ['--backend', `127.0.0.1:${p}`])];
  const child = spawn(entryProxyBinary(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const unhook = onExit(() => child.exitCode === null && child.kill('SIGKILL'));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const routes = new Map();
  let log = '';
  child.stderr.on('data', (d) => (log = (log + d).slice(-20_000)));
  let pending = '';
  let listening;
  const port = new Promise((resolve) => (listening = resolve));
  child.stdout.on('data', (d) => {
    pending += d;
    const lines = pending.split('\n');
    pending = lines.pop();
    for (const line of lines) {
      const l = line.match(/^entry_proxy: listening on .*:(\d+)$/);
      if (l) listening(Number(l[1]));
      const r = line.match(/^entry_proxy: route .*:(\d+) -> .*:(\d+)$/);
      if (r) routes.set(Number(r[1]), Number(r[2]));
    }
  });
  const bound = await Promise.race([port, exited.then((code) => Promise.reject(new Error(`entry_proxy exited (${code}): ${log}`)))]);
  const entry = {
    port: bound,
    backendOf: (localPort) => routes.get(localPort),
    log: () => log,
    /** One connection that carries nothing: moves the rotation one turn; resolves with the backend port it got. */
    async pass() {
      const s = net.connect(bound, '127.0.0.1');
      await new Promise((resolve, reject) => {
        s.once('connect', resolve);
        s.once('error', reject);
      });
      try {
        // Held open until the proxy has routed it.
        return await waitUntil(() => routes.get(s.localPort), { label: 'the route of a pass-through connection' });
      } finally {
        s.destroy();
      }
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
      unhook();
    },
  };
  return entry;
}

export class Server {
  constructor({ pg, env, logFile }) {
    this.pg = pg;
    this.extraEnv = env;
    this.logFile = logFile;
    this.child = null;
    this.port = null;
  }

  async start() {
    this.port ??= await freePort();
    const [gossip, bus] = [await freePort(), await freePort()];
    const env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      PORT: String(this.port),
      BIND_ADDR: '127.0.0.1',
      DB_HOST: '127.0.0.1',
      DB_PORT: String(this.pg.port),
      DB_USER: 'postgres',
      DB_PASSWORD: 'postgres',
      DB_NAME: 'postgres',
      DB_ENC_KEY: 'supabaserealtime',
      API_JWT_SECRET,
      SEED_SELF_HOST: 'true',
      CHANNEL_ERROR_BACKOFF_MS: '100',
      CONNECT_ERROR_BACKOFF_MS: '100',
      GOSSIP_PORT: String(gossip),
      BUS_PORT: String(bus),
      RUST_LOG: process.env.RUST_LOG ?? 'info',
      RUST_BACKTRACE: '1',
      ...this.extraEnv,
    };
    const out = fs.openSync(this.logFile, 'a');
    fs.writeSync(out, `\n===== start ${new Date().toISOString()} port ${this.port} =====\n`);
    this.child = spawn(serverBinary(), [], { env, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const child = this.child;
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    let exitInfo = null;
    this.exited.then((e) => (exitInfo = e));
    this.unhook = onExit(() => child.exitCode === null && child.kill('SIGKILL'));
    await waitUntil(
      async () => {
        if (exitInfo) throw new Error(`server exited early (${JSON.stringify(exitInfo)}); log tail:\n${this.logTail()}`);
        const r = await httpRequest(this.port, { path: '/healthcheck' });
        return r.status === 200 && r.text.trim() === 'ok';
      },
      { timeout: 60_000, interval: 50, label: `GET /healthcheck on :${this.port}` },
    ).catch((e) => {
      if (exitInfo) throw new Error(`server exited early (${JSON.stringify(exitInfo)}); log tail:\n${this.logTail()}`);
      throw new Error(`${e.message}\nserver log tail:\n${this.logTail()}`);
    });
  }

  /** Stops the server: SIGTERM (graceful) or SIGKILL (a crash), waiting for the exit. */
  async stop({ signal = 'SIGTERM', timeout = 10_000 } = {}) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const t = setTimeout(() => child.kill('SIGKILL'), timeout);
    await this.exited;
    clearTimeout(t);
    this.unhook?.();
    this.child = null;
  }

  async restart(opts) {
    await this.stop(opts);
    await this.start();
  }

  logTail(lines = 60) {
    try {
      return fs.readFileSync(this.logFile, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The environment a test file uses

/** Leaves every channel of every client in `clients` and disconnects them; empties the set. */
async function closeAll(clients) {
  await Promise.all(
    [...clients].map(async (c) => {
      try {
        await c.removeAllChannels();
      } catch {
        /* ignore */
      }
      try {
        await Promise.race([c.disconnect(), sleep(1000)]);
      } catch {
        /* ignore */
      }
    }),
  );
  clients.clear();
}

/**
 * Starts Postgres and the server. `serverEnv` adds/overrides server environment variables.
 * Returns an object with helpers; call `stop()` in `after`.
 */
export async function startEnv({ serverEnv = {} } = {}) {
  const pg = await startPostgres();
  // The roles every Supabase database has; RLS checks for private channels switch to them.
  pg.sql(`do $$ begin
    if not exists (select from pg_roles where rolname = 'anon') then create role anon nologin noinherit; end if;
    if not exists (select from pg_roles where rolname = 'authenticated') then create role authenticated nologin noinherit; end if;
    if not exists (select from pg_roles where rolname = 'service_role') then create role service_role nologin noinherit bypassrls; end if;
  end $$;`);
  const logFile = path.join(pg.root, 'server.log');
  const server = new Server({ pg, env: serverEnv, logFile });
  try {
    await server.start();
  } catch (e) {
    await server.stop({ signal: 'SIGKILL' }).catch(() => {});
    pg.stop();
    throw e;
  }
  const clients = new Set();
  const env = {
    pg,
    server,
    get port() {
      return server.port;
    },
    /** Host header value for a tenant. */
    host: (tenant = DEFAULT_TENANT) => `${tenant}.localhost:${server.port}`,
    /** ws:// endpoint realtime-js dials (it appends `/websocket`). */
    wsEndpoint: (prefix = '/realtime/v1') => `ws://127.0.0.1:${server.port}${prefix}`,
    /** HS256 JWT for the management API. */
    apiToken: () => signJwt({ role: 'service_role', exp: nowSec() + 3600 }, API_JWT_SECRET),

    /** POST /api/tenants. `overrides` merges into the tenant object. Returns the tenant record. */
    createTenant(overrides = {}) {
      return env.createTenantVia(env, overrides);
    },

    /** POST /api/tenants on `via.server` (its port and host). */
    async createTenantVia(via, overrides = {}) {
      const server = via.server;
      const externalId = overrides.external_id ?? uid('tenant-');
      const jwtSecret = overrides.jwt_secret === undefined ? `secret-${crypto.randomBytes(16).toString('hex')}` : overrides.jwt_secret;
      const tenant = {
        external_id: externalId,
        name: externalId,
        ...(jwtSecret !== null ? { jwt_secret: jwtSecret } : {}),
        extensions: [
          {
            type: 'postgres_cdc_rls',
            settings: {
              region: 'us-east-1',
              db_host: '127.0.0.1',
              db_port: String(pg.port),
              db_name: 'postgres',
              db_user: 'postgres',
              db_password: 'postgres',
              ssl_enforced: false,
              publication: 'supabase_realtime',
              slot_name: `rt_slot_${externalId.replace(/[^a-z0-9]/gi, '_').toLowerCase()}`,
              poll_interval_ms: 100,
              poll_max_changes: 100,
              poll_max_record_bytes: 1048576,
            },
          },
        ],
        ...overrides,
      };
      if (overrides.jwt_secret === null) delete tenant.jwt_secret;
      const r = await httpRequest(server.port, {
        method: 'POST',
        path: '/api/tenants',
        headers: { authorization: `Bearer ${env.apiToken()}` },
        body: { tenant },
      });
      if (r.status !== 201 && r.status !== 200) {
        throw new Error(`POST /api/tenants → ${r.status} ${r.text}`);
      }
      return { externalId, jwtSecret, record: r.json?.data, host: via.host(externalId) };
    },

    /** A realtime-js client for `tenant` with `token` as apikey (and every other option passed through). */
    client({ tenant = DEFAULT_TENANT, host, token, vsn, sockets, endpoint, params = {}, ...opts } = {}) {
      const h = host ?? env.host(tenant);
      const c = new RealtimeClient(endpoint ?? env.wsEndpoint(), {
        transport: hostTransport(h, sockets),
        fetch: hostFetch(h),
        params: { apikey: token, ...params },
        ...(vsn ? { vsn } : {}),
        ...opts,
      });
      clients.add(c);
      return c;
    },

    async closeClients() {
      await closeAll(clients);
    },

    async stop() {
      await env.closeClients();
      await server.stop({ signal: 'SIGKILL' });
      if (process.env.REALTIME_TEST_LOG) process.stderr.write(server.logTail(400) + '\n');
      pg.stop();
    },
  };
  return env;
}

// ---------------------------------------------------------------------------------------------
// Channel helpers

/**
 * Subscribes and records every status. Returns `{ statuses, errors, waitFor(status, ms) }`.
 * `statuses` is the list of statuses seen so far (with errors in `errors`, same index).
 */
export function track(channel) {
  const statuses = [];
  const errors = [];
  channel.subscribe((status, err) => {
    statuses.push(status);
    errors.push(err ?? null);
  });
  return {
    statuses,
    errors,
    async waitFor(status, ms = 10_000) {
      await waitUntil(() => statuses.includes(status), {
        timeout: ms,
        label: `channel ${channel.topic} status ${status} (seen: ${statuses.join(', ') || 'none'}; errors: ${errors.filter(Boolean).map((e) => e.message).join(' | ')})`,
      });
      return errors[statuses.indexOf(status)];
    },
    /** The first status seen (waits for one). */
    async first(ms = 10_000) {
      await waitUntil(() => statuses.length > 0, { timeout: ms, label: `any status on ${channel.topic}` });
      return { status: statuses[0], error: errors[0] };
    },
  };
}

/** Subscribes and waits for SUBSCRIBED; fails fast with the error if CHANNEL_ERROR comes first. */
export async function subscribed(channel, ms = 10_000) {
  const t = track(channel);
  const { status, error } = await t.first(ms);
  if (status !== 'SUBSCRIBED') {
    throw new Error(`expected SUBSCRIBED on ${channel.topic}, got ${status}${error ? `: ${error.message}` : ''}`);
  }
  return t;
}

/** Collects events of `type` (e.g. 'broadcast', 'system') on a channel. Register before subscribing. */
export function collect(channel, type = 'broadcast', filter = { event: '*' }) {
  const items = [];
  channel.on(type, filter, (payload) => items.push(payload));
  return {
    items,
    async waitFor(pred = () => true, { timeout = 5000, label = `${type} on ${channel.topic}` } = {}) {
      return waitUntil(() => items.find(pred), { timeout, label: `${label} (got ${JSON.stringify(items).slice(0, 500)})` });
    },
  };
}

/** Sends v2 text frame arrays / v1 objects over a raw socket and awaits a frame matching `pred`. */
export async function awaitFrame(sock, pred, { timeout = 5000, label = 'frame' } = {}) {
  return waitUntil(
    () => {
      for (const m of sock.messages) {
        if (typeof m !== 'string') {
          if (pred(m)) return m;
          continue;
        }
        let f;
        try {
          f = JSON.parse(m);
        } catch {
          continue;
        }
        if (pred(f)) return f;
      }
      return null;
    },
    { timeout, label: `${label} (frames so far: ${sock.messages.map((m) => (typeof m === 'string' ? m : `<binary ${m.toString('hex')}>`)).join(' ').slice(0, 800)})` },
  );
}

// ---------------------------------------------------------------------------------------------
// A cluster of node processes

/**
 * Starts Postgres and `n` node processes that form one cluster (gossip seeds, a shared secret,
 * a cluster id of their own), and waits until every node lists all others as members and bus
 * links in `GET /api/cluster`. `serverEnv` adds variables to every node.
 */
export async function startCluster(n, { serverEnv = {} } = {}) {
  const base = await startEnv({ serverEnv: { NODE_NAME: 'node-1' } });
  // The first node was started alone; restart it clustered with the others below.
  await base.server.stop({ signal: 'SIGKILL' });
  const ports = [];
  for (let i = 0; i < n; i++) ports.push({ http: await freePort(), gossip: await freePort(), bus: await freePort() });
  const seeds = ports.map((p) => `127.0.0.1:${p.gossip}`).join(',');
  const cluster = {
    CLUSTER_SEEDS: seeds,
    CLUSTER_SECRET: crypto.randomBytes(24).toString('hex'),
    CLUSTER_ID: uid('cluster-'),
    ADVERTISE_ADDR: '127.0.0.1',
  };
  const nodes = ports.map((p, i) => {
    const logFile = path.join(base.pg.root, `node-${i + 1}.log`);
    const server = new Server({
      pg: base.pg,
      env: { ...cluster, NODE_NAME: `node-${i + 1}`, GOSSIP_PORT: String(p.gossip), BUS_PORT: String(p.bus), ...serverEnv },
      logFile,
    });
    server.port = p.http;
    return server;
  });
  await Promise.all(nodes.map((s) => s.start()));
  const apiToken = () => signJwt({ role: 'service_role', exp: nowSec() + 3600 }, API_JWT_SECRET);
  const clusterInfo = async (i) => {
    const r = await httpRequest(nodes[i].port, { path: '/api/cluster', headers: { authorization: `Bearer ${apiToken()}` } });
    if (r.status !== 200) throw new Error(`GET /api/cluster on node ${i + 1} → ${r.status} ${r.text}`);
    return r.json;
  };
  const converged = async () => {
    for (let i = 0; i < nodes.length; i++) {
      if (!nodes[i].child) continue;
      const live = nodes.filter((s) => s.child).length;
      const info = await clusterInfo(i);
      if (info.members.length !== live || info.linked.length !== live - 1) return false;
    }
    return true;
  };
  await waitUntil(converged, { timeout: 30_000, interval: 100, label: `${n} nodes converged` });
  const clients = new Set();
  let entry = null;
  const env = {
    pg: base.pg,
    nodes,
    clusterInfo,
    converged,
    apiToken,
    host: (tenant, i) => `${tenant}.localhost:${nodes[i].port}`,
    /** POST /api/tenants on node `on` (default the first); the others learn it over the bus. */
    createTenant: (overrides = {}, on = 0) => {
      const view = { ...base, server: nodes[on], host: (t) => env.host(t, on) };
      return base.createTenantVia(view, overrides);
    },
    /** A realtime-js client connected to node `i` (its sockets pushed to `sockets`, if given). */
    client(i, { tenant, token, sockets, ...opts } = {}) {
      const h = env.host(tenant, i);
      const c = new RealtimeClient(`ws://127.0.0.1:${nodes[i].port}/realtime/v1`, {
        transport: hostTransport(h, sockets),
        fetch: hostFetch(h),
        params: { apikey: token },
        ...opts,
      });
      clients.add(c);
      return c;
    },
    /** The entry proxy in front of every node (started on first use, stopped by `stop`). */
    async entry() {
      entry ??= await startEntryProxy(nodes.map((s) => s.port));
      return entry;
    },
    /** The node index a socket recorded by `hostTransport` reached through the entry proxy. */
    nodeOf(rec) {
      const backend = entry?.backendOf(rec.localPort);
      const i = nodes.findIndex((s) => s.port === backend);
      return i < 0 ? undefined : i;
    },
    /** A realtime-js client that connects (and reconnects) through the entry proxy. */
    async entryClient({ tenant, token, sockets, ...opts } = {}) {
      const { port } = await env.entry();
      const h = `${tenant}.localhost:${port}`;
      const c = new RealtimeClient(`ws://127.0.0.1:${port}/realtime/v1`, {
        transport: hostTransport(h, sockets),
        fetch: hostFetch(h),
        params: { apikey: token },
        ...opts,
      });
      clients.add(c);
      return c;
    },
    async closeClients() {
      await closeAll(clients);
    },
    logTails: () => nodes.map((s, i) => `--- node-${i + 1}\n${s.logTail(80)}`).join('\n'),
    async stop() {
      await env.closeClients();
      await entry?.stop();
      await Promise.all(nodes.map((s) => s.stop({ signal: 'SIGKILL' })));
      if (process.env.REALTIME_TEST_LOG) process.stderr.write(env.logTails() + '\n');
      base.pg.stop();
    },
  };
  return env;
}
