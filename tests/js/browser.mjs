// Browser harness: a headless Chromium (Debian's `chromium` package) driven by `playwright-core`,
// and a small static server that gives pages a second origin and the real npm clients.
//
//   const skip = browserSkip();                        // a reason to skip, or false
//   const site = await startSite({ pages: { '/': html } });   // http://127.0.0.1:<port>
//   const browser = await startBrowser();
//   const page = await browser.open(`${site.url}/`);   // console and page errors are recorded
//   await page.evaluate(...); await browser.screenshot(page, 'name');
//   await browser.close(); await site.close();
//
// The site serves `tests/js/node_modules` under `/node_modules/` as ES modules, resolving the
// extensionless relative imports of the packages' `dist/module` builds with a redirect to the
// `.js` file (the redirect keeps each module's base URL right). `realtimePage()` is a page whose
// import map points `@supabase/realtime-js` at that copy and exposes it as `window.realtime`.
//
// Pages are served from 127.0.0.1 and the server is reached as `localhost`: different origins, so
// every HTTP call from the page is a real cross-origin request with a CORS preflight.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const NODE_MODULES = path.join(HERE, 'node_modules');

/** The Chromium binary (`CHROMIUM_BIN`, default Debian's `/usr/bin/chromium`). */
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
/** Where screenshots and other browser artifacts go (gitignored). */
export const ARTIFACTS = process.env.BROWSER_ARTIFACTS || path.join(HERE, 'artifacts');

/**
 * Why browser tests must be skipped (a message for `{ skip }`), or `false` when they run.
 * Without Chromium they skip, unless `REQUIRE_BROWSER` is set (CI): then they run and fail.
 */
export function browserSkip() {
  if (fs.existsSync(CHROMIUM) || process.env.REQUIRE_BROWSER) return false;
  return `${CHROMIUM} is missing (apt-get install -y chromium); set REQUIRE_BROWSER=1 to fail instead of skipping`;
}

const CONTENT_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
  '.json': 'application/json',
};

const isFile = (p) => fs.statSync(p, { throwIfNoEntry: false })?.isFile() ?? false;

/**
 * A static server on 127.0.0.1 (a free port): `pages` maps a path to HTML (or `{ body, type }`),
 * and `/node_modules/...` serves the test's installed packages. Resolves `{ url, port, requests,
 * close() }`; `requests` lists `"METHOD /path"` of every request served.
 */
export async function startSite({ pages = {} } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://site');
    requests.push(`${req.method} ${url.pathname}`);
    const send = (status, body, type = 'text/plain; charset=utf-8', extra = {}) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...extra });
      res.end(body);
    };
    const page = pages[url.pathname];
    if (page !== undefined) {
      return typeof page === 'string' ? send(200, page, CONTENT_TYPES['.html']) : send(200, page.body, page.type);
    }
    if (!url.pathname.startsWith('/node_modules/')) return send(404, 'not found');
    const rel = decodeURIComponent(url.pathname.slice('/node_modules/'.length));
    const file = path.resolve(NODE_MODULES, rel);
    if (!file.startsWith(NODE_MODULES + path.sep)) return send(403, 'outside node_modules');
    if (isFile(file)) {
      return send(200, fs.readFileSync(file), CONTENT_TYPES[path.extname(file)] ?? 'application/octet-stream');
    }
    // `import './RealtimeClient'` and `import './lib'` as a bundler would resolve them.
    for (const suffix of ['.js', '/index.js']) {
      if (isFile(file + suffix)) return send(302, '', undefined, { location: url.pathname + suffix });
    }
    return send(404, 'not found');
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

/**
 * A page that loads the installed realtime-js as an ES module and exposes the module as
 * `window.realtime`; `window.realtimeReady` resolves once it is there. `body` is extra HTML.
 */
export function realtimePage({ title = 'realtime browser test', body = '' } = {}) {
  const imports = {
    '@supabase/realtime-js': '/node_modules/@supabase/realtime-js/dist/module/index.js',
    '@supabase/phoenix': '/node_modules/@supabase/phoenix/priv/static/phoenix.mjs',
  };
  return `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>${title}</title>
<script type="importmap">${JSON.stringify({ imports })}</script>
<script>
  window.realtimeReady = new Promise((resolve, reject) => {
    window.addEventListener('realtime-loaded', () => resolve(true));
    window.addEventListener('error', (e) => reject(new Error(e.message)));
  });
</script>
<script type="module">
  import * as realtime from '@supabase/realtime-js';
  window.realtime = realtime;
  window.dispatchEvent(new Event('realtime-loaded'));
</script>
<style>body { font: 14px monospace; margin: 1em; } li.ok { color: #070; } li.bad { color: #b00; }</style>
</head>
<body>
<h1>${title}</h1>
<ol id="log"></ol>
${body}
<script>
  /** Appends a line to the page (visible in screenshots). */
  window.logLine = (text, ok = true) => {
    const li = document.createElement('li');
    li.className = ok ? 'ok' : 'bad';
    li.textContent = text;
    document.getElementById('log').append(li);
  };
</script>
</body>
</html>
`;
}

/** Flags that keep a headless Chromium quiet on a machine without network. */
export const CHROMIUM_ARGS = [
  '--no-sandbox', // root in CI: the sandbox refuses to start
  '--headless',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/**
 * Launches Chromium. Resolves `{ browser, open(url), screenshot(page, name), close() }`. Pages
 * opened with `open` record `page.consoleLines` and `page.errors` (uncaught page errors), which
 * `describe(page)` renders for assertion messages.
 */
export async function startBrowser({ executablePath = CHROMIUM, args = [] } = {}) {
  if (!fs.existsSync(executablePath)) {
    throw new Error(`${executablePath} is missing: apt-get install -y chromium (REQUIRE_BROWSER is set)`);
  }
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath, args: [...CHROMIUM_ARGS, ...args] });
  const context = await browser.newContext({ viewport: { width: 900, height: 600 } });
  return {
    browser,
    context,
    async open(url) {
      const page = await context.newPage();
      page.consoleLines = [];
      page.errors = [];
      page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => page.errors.push(e.message));
      await page.goto(url);
      return page;
    },
    /** Saves a full-page PNG as `<ARTIFACTS>/<name>.png` and returns its path. */
    async screenshot(page, name) {
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      const file = path.join(ARTIFACTS, `${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      return file;
    },
    async close() {
      await browser.close();
    },
  };
}

/** A page's console lines and errors, for assertion messages. */
export function describePage(page) {
  return `page errors: ${JSON.stringify(page.errors)}\nconsole:\n  ${page.consoleLines.join('\n  ')}`;
}
