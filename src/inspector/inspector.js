// Realtime Inspector: the page's own small Phoenix client (v1 JSON objects, v2 JSON arrays and
// kind-4 binary broadcasts, as docs/PROTOCOL.md sections 2 to 6 describe them), the forms and
// the panels. Plain JavaScript, no dependencies, no build step; served by the node itself.
//
// Security notes: every value received from the server is rendered with `textContent` (never
// as HTML); the token is never stored (only the non-secret fields go to localStorage) and is
// read from the URL fragment, which browsers do not send to the server, and then removed from
// the address bar.

const HEARTBEAT_MS = 25_000;
const PUSH_TIMEOUT_MS = 10_000;
// Join refusals come after the server's back-off (CHANNEL_ERROR_BACKOFF_MS, 5 s by default).
const JOIN_TIMEOUT_MS = 15_000;
const MAX_ITEMS = 500;
const STORAGE_KEY = 'realtime-inspector';
const SAVED_FIELDS = ['url', 'tenant', 'vsn', 'channel', 'private', 'self', 'ack', 'presence-key',
  'pg-enabled', 'pg-event', 'pg-schema', 'pg-table', 'pg-filter', 'bc-event'];

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Rendering

const counts = new Map();

function pretty(value) {
  return JSON.stringify(
    value,
    (_k, v) => {
      if (v instanceof Uint8Array) {
        const hex = [...v.subarray(0, 64)].map((b) => b.toString(16).padStart(2, '0')).join('');
        return `<${v.length} bytes: ${hex}${v.length > 64 ? '…' : ''}>`;
      }
      return v;
    },
    2,
  );
}

function span(cls, text) {
  const el = document.createElement('span');
  el.className = cls;
  el.textContent = text;
  return el;
}

/** Adds an entry at the top of the list `listId`: a tag, a line of text, and data as JSON. */
function addItem(listId, { tag, cls = '', text = '', data, compact = false }) {
  const list = $(listId);
  const li = document.createElement('li');
  li.className = cls;
  li.append(span('time', new Date().toLocaleTimeString()), span('tag', tag));
  if (text) li.append(document.createTextNode(text));
  if (data !== undefined) {
    const pre = document.createElement('pre');
    pre.textContent = compact ? JSON.stringify(data) : pretty(data);
    li.append(pre);
  }
  list.prepend(li);
  while (list.children.length > MAX_ITEMS) list.lastElementChild.remove();
  counts.set(listId, (counts.get(listId) ?? 0) + 1);
  const counter = $(`${listId}-count`);
  if (counter) counter.textContent = String(counts.get(listId));
}

const log = (tag, text, data, cls = '') => addItem('log', { tag, text, data, cls });

function setBadge(id, text, cls) {
  const el = $(id);
  el.textContent = text;
  el.className = `badge ${cls}`;
}

// ---------------------------------------------------------------------------------------------
// Wire format

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A kind-4 user broadcast (PROTOCOL.md 2.3) as the message a JSON broadcast would be. */
function decodeBinary(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 5 || bytes[0] !== 4) throw new Error(`unexpected binary frame (kind ${bytes[0]})`);
  const [topicLen, eventLen, metaLen, encoding] = bytes.subarray(1, 5);
  let at = 5;
  const take = (n) => {
    if (at + n > bytes.length) throw new Error('truncated kind-4 frame');
    const part = bytes.subarray(at, at + n);
    at += n;
    return part;
  };
  const topic = utf8.decode(take(topicLen));
  const event = utf8.decode(take(eventLen));
  const meta = metaLen ? JSON.parse(utf8.decode(take(metaLen))) : undefined;
  const rest = bytes.slice(at);
  const payload = encoding === 1 ? JSON.parse(utf8.decode(rest)) : rest;
  return {
    join_ref: null,
    ref: null,
    topic,
    event: 'broadcast',
    payload: { type: 'broadcast', event, payload, ...(meta ? { meta } : {}) },
    binary: encoding !== 1,
  };
}

function decode(data, vsn) {
  if (typeof data !== 'string') return decodeBinary(data);
  const v = JSON.parse(data);
  if (Array.isArray(v)) {
    const [join_ref, ref, topic, event, payload] = v;
    return { join_ref, ref, topic, event, payload };
  }
  if (vsn === '2.0.0' || v === null || typeof v !== 'object') throw new Error('frame is not a Phoenix message');
  return { join_ref: v.join_ref ?? null, ref: v.ref ?? null, topic: v.topic, event: v.event, payload: v.payload };
}

function encode(vsn, joinRef, ref, topic, event, payload) {
  if (vsn === '1.0.0') return JSON.stringify({ topic, event, payload, ref, join_ref: joinRef });
  return JSON.stringify([joinRef, ref, topic, event, payload]);
}

/** The WebSocket URL for a node URL, an optional tenant, the token and the protocol version. */
function socketUrl(nodeUrl, tenant, token, vsn) {
  const url = new URL(nodeUrl || location.origin, location.href);
  const schemes = { 'http:': 'ws:', 'https:': 'wss:', 'ws:': 'ws:', 'wss:': 'wss:' };
  if (!schemes[url.protocol]) throw new Error(`the node URL must be http(s) or ws(s), not ${url.protocol}`);
  url.protocol = schemes[url.protocol];
  if (tenant) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(tenant)) throw new Error('a tenant id is letters, digits, "-" and "_"');
    const host = url.hostname;
    if (/^\d+(\.\d+){3}$/.test(host) || host.startsWith('[')) {
      throw new Error(`an IP address cannot name a tenant: use a host name such as ${tenant}.localhost`);
    }
    // The tenant is the Host's first label (PROTOCOL.md 1.3).
    if (!host.toLowerCase().startsWith(`${tenant.toLowerCase()}.`)) url.hostname = `${tenant}.${host}`;
  }
  let path = url.pathname.replace(/\/+$/, '');
  if (!path.endsWith('/websocket')) path = `${path || '/realtime/v1'}/websocket`;
  url.pathname = path;
  url.search = new URLSearchParams({ apikey: token, vsn }).toString();
  url.hash = '';
  return url;
}

/** The URL as shown on the page: without the token. */
const shownUrl = (url) => url.toString().replace(/apikey=[^&]*/, 'apikey=…');

/** Role and expiry of a JWT, read without verifying (for display only). */
function describeToken(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
    const bits = [];
    if (claims.role) bits.push(`role ${claims.role}`);
    if (typeof claims.exp === 'number') {
      const left = Math.round(claims.exp - Date.now() / 1000);
      bits.push(left > 0 ? `expires in ${Math.ceil(left / 60)} min` : `expired ${Math.ceil(-left / 60)} min ago`);
    }
    return bits.join(', ');
  } catch {
    return 'not a JWT';
  }
}

// ---------------------------------------------------------------------------------------------
// Connection and channel

const conn = {
  ws: null,
  vsn: '2.0.0',
  token: '',
  counter: 0,
  /** ref → { resolve, timer } of pushes waiting for their reply. */
  pending: new Map(),
  heartbeat: null,
  heartbeatRef: null,
};

/** The one channel the page holds at a time. */
const chan = {
  topic: null,
  joinRef: null,
  state: 'closed',
  /** Presence key → metas (a Map: keys come from clients). */
  presence: new Map(),
  /** The join_ref whose presence_state was applied, and diffs that came before it. */
  presenceFor: null,
  queuedDiffs: [],
  bindings: [],
};

const nextRef = () => String(++conn.counter);

function send(joinRef, ref, topic, event, payload) {
  conn.ws.send(encode(conn.vsn, joinRef, ref, topic, event, payload));
}

/** Sends a push and resolves with its reply payload, or `{ status: 'timeout' }`. */
function push(topic, event, payload, { joinRef = chan.joinRef, timeout = PUSH_TIMEOUT_MS, ref = nextRef() } = {}) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      conn.pending.delete(ref);
      resolve({ status: 'timeout', response: {} });
    }, timeout);
    conn.pending.set(ref, { resolve, timer });
    send(joinRef, ref, topic, event, payload);
  });
}

function failPending(reason) {
  for (const { resolve, timer } of conn.pending.values()) {
    clearTimeout(timer);
    resolve({ status: reason, response: {} });
  }
  conn.pending.clear();
}

function setSocketState(state, cls) {
  document.body.dataset.socket = state;
  setBadge('socket-status', state, cls);
  refreshButtons();
}

function setChannelState(state, cls = state === 'joined' ? 'on' : state === 'joining' ? 'pending' : 'off') {
  chan.state = state;
  document.body.dataset.channel = state;
  setBadge('channel-status', chan.topic ? `${chan.topic.slice('realtime:'.length)}: ${state}` : 'no channel', cls);
  refreshButtons();
}

function refreshButtons() {
  const open = conn.ws?.readyState === WebSocket.OPEN;
  const connecting = conn.ws?.readyState === WebSocket.CONNECTING;
  const joined = open && chan.state === 'joined';
  $('connect').disabled = open || connecting;
  $('disconnect').disabled = !open && !connecting;
  $('join').disabled = !open || chan.state === 'joining';
  $('leave').disabled = !open || !['joined', 'joining', 'errored'].includes(chan.state);
  for (const id of ['bc-send', 'track', 'untrack']) $(id).disabled = !joined;
}

function connect() {
  const token = $('token').value.trim();
  const vsn = $('vsn').value;
  let url;
  try {
    if (!token) throw new Error('a token is required (the tenant checks it at the handshake)');
    url = socketUrl($('url').value.trim(), $('tenant').value.trim(), token, vsn);
  } catch (e) {
    log('error', e.message, undefined, 'error');
    $('socket-url').textContent = e.message;
    return;
  }
  saveFields();
  $('socket-url').textContent = `${shownUrl(url)} (${describeToken(token)})`;
  conn.vsn = vsn;
  conn.token = token;
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  conn.ws = ws;
  setSocketState('connecting', 'pending');
  log('socket', `connecting to ${shownUrl(url)}`);
  ws.onopen = () => {
    if (conn.ws !== ws) return;
    setSocketState('connected', 'on');
    log('socket', 'connected', undefined, 'ok');
    startHeartbeat();
  };
  ws.onmessage = (e) => {
    if (conn.ws === ws) receive(e.data);
  };
  ws.onerror = () => {
    // Browsers give no detail here; a refused handshake (bad token, unknown tenant) ends as
    // close code 1006 right after.
    if (conn.ws === ws) log('socket', 'WebSocket error (a refused handshake shows up as code 1006)', undefined, 'error');
  };
  ws.onclose = (e) => {
    if (conn.ws !== ws) return;
    conn.ws = null;
    stopHeartbeat();
    failPending('socket closed');
    const what = `closed: code ${e.code}${e.reason ? ` (${e.reason})` : ''}`;
    setSocketState(`closed ${e.code}`, e.code === 1000 ? 'off' : 'bad');
    log('socket', what, undefined, e.code === 1000 ? '' : 'error');
    if (chan.topic) setChannelState('closed');
  };
  refreshButtons();
}

function disconnect() {
  if (!conn.ws) return;
  conn.ws.close(1000, 'inspector disconnect');
}

function startHeartbeat() {
  stopHeartbeat();
  conn.heartbeat = setInterval(() => {
    if (conn.heartbeatRef) {
      log('socket', 'heartbeat timeout: closing', undefined, 'error');
      conn.ws?.close(1000, 'heartbeat timeout');
      return;
    }
    const ref = nextRef();
    conn.heartbeatRef = ref;
    push('phoenix', 'heartbeat', {}, { joinRef: null, ref, timeout: HEARTBEAT_MS }).then((reply) => {
      if (conn.heartbeatRef === ref && reply.status === 'ok') conn.heartbeatRef = null;
    });
  }, HEARTBEAT_MS);
}

function stopHeartbeat() {
  clearInterval(conn.heartbeat);
  conn.heartbeat = null;
  conn.heartbeatRef = null;
}

function joinConfig() {
  const bindings = [];
  if ($('pg-enabled').checked) {
    const binding = { event: $('pg-event').value, schema: $('pg-schema').value.trim() || 'public' };
    const table = $('pg-table').value.trim();
    const filter = $('pg-filter').value.trim();
    if (table) binding.table = table;
    if (filter) binding.filter = filter;
    bindings.push(binding);
  }
  return {
    broadcast: { self: $('self').checked, ack: $('ack').checked },
    presence: { key: $('presence-key').value.trim(), enabled: true },
    postgres_changes: bindings,
    private: $('private').checked,
  };
}

async function join() {
  const name = $('channel').value.trim();
  if (!name) {
    log('error', 'a channel name is required', undefined, 'error');
    return;
  }
  saveFields();
  if (chan.topic && chan.state !== 'closed') leave();
  const config = joinConfig();
  chan.topic = `realtime:${name}`;
  chan.joinRef = nextRef();
  chan.bindings = config.postgres_changes;
  chan.presence = new Map();
  chan.presenceFor = null;
  chan.queuedDiffs = [];
  renderPresence();
  setChannelState('joining');
  const joinRef = chan.joinRef;
  const payload = { config, access_token: conn.token };
  log('join', `${chan.topic}${config.private ? ' (private)' : ''}`, { config }, 'out');
  const reply = await push(chan.topic, 'phx_join', payload, { joinRef, ref: joinRef, timeout: JOIN_TIMEOUT_MS });
  if (chan.joinRef !== joinRef) return;
  if (reply.status === 'ok') {
    setChannelState('joined');
    const echo = reply.response?.postgres_changes ?? [];
    log('join', `joined ${chan.topic}`, echo.length ? { postgres_changes: echo } : undefined, 'ok');
  } else if (reply.status === 'error') {
    setChannelState('refused', 'bad');
    log('join', `refused: ${reply.response?.reason ?? JSON.stringify(reply.response)}`, undefined, 'error');
  } else {
    setChannelState(reply.status, 'bad');
    log('join', `no reply: ${reply.status}`, undefined, 'error');
  }
}

function leave() {
  if (!chan.topic || !conn.ws) return;
  send(chan.joinRef, nextRef(), chan.topic, 'phx_leave', {});
  log('leave', chan.topic, undefined, 'out');
  setChannelState('closed');
}

async function sendBroadcast() {
  const event = $('bc-event').value.trim();
  let payload;
  try {
    payload = JSON.parse($('bc-payload').value || '{}');
  } catch (e) {
    log('error', `payload is not JSON: ${e.message}`, undefined, 'error');
    return;
  }
  if (!event) {
    log('error', 'a broadcast needs an event name', undefined, 'error');
    return;
  }
  saveFields();
  const message = { type: 'broadcast', event, payload };
  if ($('ack').checked) {
    const reply = await push(chan.topic, 'broadcast', message);
    log('sent', `broadcast ${event}: ${reply.status}`, payload, reply.status === 'ok' ? 'ok' : 'error');
  } else {
    send(chan.joinRef, nextRef(), chan.topic, 'broadcast', message);
    log('sent', `broadcast ${event}`, payload, 'out');
  }
}

async function track() {
  let state;
  try {
    state = JSON.parse($('presence-payload').value || '{}');
  } catch (e) {
    log('error', `presence state is not JSON: ${e.message}`, undefined, 'error');
    return;
  }
  const reply = await push(chan.topic, 'presence', { type: 'presence', event: 'track', payload: state });
  log('track', reply.status === 'ok' ? 'ok' : `${reply.status} ${JSON.stringify(reply.response)}`, state, reply.status === 'ok' ? 'ok' : 'error');
}

async function untrack() {
  const reply = await push(chan.topic, 'presence', { type: 'presence', event: 'untrack' });
  log('untrack', reply.status, undefined, reply.status === 'ok' ? 'ok' : 'error');
}

// ---------------------------------------------------------------------------------------------
// Incoming frames

function receive(data) {
  let msg;
  try {
    msg = decode(data, conn.vsn);
  } catch (e) {
    log('frame', `undecodable frame: ${e.message}`, undefined, 'error');
    return;
  }
  if (msg.event === 'phx_reply' && msg.ref != null && conn.pending.has(msg.ref)) {
    const { resolve, timer } = conn.pending.get(msg.ref);
    conn.pending.delete(msg.ref);
    clearTimeout(timer);
    resolve(msg.payload ?? {});
    return;
  }
  if (msg.topic !== chan.topic) return;
  // A frame of an older join of this topic (PROTOCOL.md 2.2).
  if (msg.join_ref != null && msg.join_ref !== chan.joinRef) return;
  // v1 frames carry no join_ref; a close of an older join still names that join in `ref`.
  if ((msg.event === 'phx_close' || msg.event === 'phx_error') && msg.ref != null && msg.ref !== chan.joinRef) return;
  const payload = msg.payload ?? {};
  switch (msg.event) {
    case 'broadcast':
      addItem('broadcasts', {
        tag: payload.event ?? '(no event)',
        text: msg.binary ? 'binary payload' : '',
        data: payload.meta ? { payload: payload.payload, meta: payload.meta } : payload.payload,
      });
      break;
    case 'presence_state':
      chan.presence = new Map();
      for (const [key, value] of Object.entries(payload)) chan.presence.set(key, value?.metas ?? []);
      chan.presenceFor = chan.joinRef;
      log('presence', `state: ${chan.presence.size} key(s)`);
      for (const diff of chan.queuedDiffs.splice(0)) applyDiff(diff);
      renderPresence();
      break;
    case 'presence_diff':
      if (chan.presenceFor !== chan.joinRef) chan.queuedDiffs.push(payload);
      else applyDiff(payload);
      renderPresence();
      break;
    case 'postgres_changes': {
      const change = payload.data ?? {};
      addItem('changes', {
        tag: change.type ?? '?',
        text: `${change.schema}.${change.table}${change.commit_timestamp ? ` @ ${change.commit_timestamp}` : ''}`,
        data: { record: change.record, old_record: change.old_record, errors: change.errors, ids: payload.ids },
        cls: change.errors ? 'error' : '',
      });
      break;
    }
    case 'system':
      log(`system ${payload.extension ?? ''}`.trim(), payload.message ?? '', undefined, payload.status === 'ok' ? 'ok' : 'error');
      break;
    case 'phx_close':
      log('channel', `${chan.topic} closed by the server`, undefined, 'error');
      setChannelState('closed');
      break;
    case 'phx_error':
      log('channel', `${chan.topic} crashed`, payload, 'error');
      setChannelState('errored', 'bad');
      break;
    default:
      log(msg.event, '', payload);
  }
}

/** Applies a `presence_diff` the way the Phoenix presence helper does (PROTOCOL.md 5.3). */
function applyDiff({ joins = {}, leaves = {} }) {
  const summary = [];
  for (const [key, value] of Object.entries(joins)) {
    const metas = value?.metas ?? [];
    const refs = new Set(metas.map((m) => m.phx_ref));
    const kept = (chan.presence.get(key) ?? []).filter((m) => !refs.has(m.phx_ref));
    chan.presence.set(key, [...kept, ...metas]);
    summary.push(`+${key}`);
  }
  for (const [key, value] of Object.entries(leaves)) {
    const known = chan.presence.get(key);
    summary.push(`-${key}`);
    if (!known) continue;
    const refs = new Set((value?.metas ?? []).map((m) => m.phx_ref));
    const left = known.filter((m) => !refs.has(m.phx_ref));
    if (left.length) chan.presence.set(key, left);
    else chan.presence.delete(key);
  }
  addItem('presence-diffs', { tag: 'diff', text: summary.join(' '), data: { joins, leaves }, compact: true });
}

function renderPresence() {
  const body = $('presence-state').tBodies[0];
  const rows = [...chan.presence].map(([key, metas]) => {
    const tr = document.createElement('tr');
    tr.dataset.key = key;
    const k = document.createElement('td');
    k.textContent = key;
    const m = document.createElement('td');
    const pre = document.createElement('pre');
    pre.textContent = metas.map((meta) => JSON.stringify(meta)).join('\n');
    m.append(pre);
    tr.append(k, m);
    return tr;
  });
  body.replaceChildren(...rows);
  $('presence-count').textContent = String(chan.presence.size);
}

// ---------------------------------------------------------------------------------------------
// Settings: URL fragment (`#tenant=..&apikey=..&channel=..`), then saved non-secret fields.

function fieldValue(id) {
  const el = $(id);
  return el.type === 'checkbox' ? el.checked : el.value;
}

function setField(id, value) {
  const el = $(id);
  if (el.type === 'checkbox') el.checked = value === true || value === 'true' || value === '1';
  else el.value = String(value);
}

function saveFields() {
  const saved = Object.fromEntries(SAVED_FIELDS.map((id) => [id, fieldValue(id)]));
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
  } catch {
    /* storage may be disabled */
  }
}

function loadFields() {
  const fresh = location.pathname.endsWith('/new');
  if (!fresh) {
    try {
      const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? '{}');
      for (const id of SAVED_FIELDS) if (id in saved) setField(id, saved[id]);
    } catch {
      /* nothing saved */
    }
  }
  if (!$('url').value) $('url').value = location.origin;
  const fragment = new URLSearchParams(location.hash.slice(1));
  const aliases = { apikey: 'token', token: 'token', url: 'url', tenant: 'tenant', channel: 'channel', vsn: 'vsn',
    private: 'private', event: 'pg-event', schema: 'pg-schema', table: 'pg-table', filter: 'pg-filter' };
  for (const [name, value] of fragment) if (aliases[name]) setField(aliases[name], value);
  if (fragment.has('table') || fragment.has('schema')) $('pg-enabled').checked = true;
  // Keep the token out of the address bar, the history and bookmarks.
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
}

// ---------------------------------------------------------------------------------------------

function onSubmit(id, fn) {
  $(id).addEventListener('submit', (e) => {
    e.preventDefault();
    fn();
  });
}

function start() {
  loadFields();
  onSubmit('connect-form', connect);
  onSubmit('join-form', join);
  onSubmit('broadcast-form', sendBroadcast);
  onSubmit('presence-form', track);
  $('disconnect').addEventListener('click', disconnect);
  $('leave').addEventListener('click', leave);
  $('untrack').addEventListener('click', untrack);
  for (const button of document.querySelectorAll('button[data-clear]')) {
    button.addEventListener('click', () => {
      const id = button.dataset.clear;
      $(id).replaceChildren();
      counts.set(id, 0);
      const counter = $(`${id}-count`);
      if (counter) counter.textContent = '0';
    });
  }
  setSocketState('disconnected', 'off');
  setChannelState('closed');
  document.body.dataset.ready = 'true';
}

start();
