// The status page at / on the HTTP port: one HTML page, its script, stylesheet and icon, all served from this port
// (no CDN, no build step, works offline). The script polls the JSON endpoints of the same node (/clusterz, /varz,
// /kvz) and redraws. The Content-Security-Policy allows nothing but this origin: no inline script or
// style, no eval, no frames, no forms, so an injected string (a server name, a bucket name) can never run.
// Values are put into the page with textContent only, for the same reason.
import type { HttpEndpoint } from './index.js';

export const statusPageCsp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>membershipd status</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/status.css">
<script src="/status.js" defer></script>
</head>
<body>
<header>
  <h1>membershipd cluster “<span id="cluster-name"></span>”</h1>
  <p id="summary" role="status">loading…</p>
  <p class="small">via <span id="via"></span> · updated <span id="updated">never</span> · <span id="poll-error"></span></p>
</header>
<main>
<section>
  <h2>Cluster</h2>
  <div class="scroll"><table id="members">
    <thead><tr><th>node</th><th>role</th><th>term</th><th>commit</th><th>applied</th><th>lag</th><th title="reachable over its route">up</th><th>health</th></tr></thead>
    <tbody></tbody>
  </table></div>
</section>
<section>
  <h2>Bus</h2>
  <dl id="bus"></dl>
</section>
<section>
  <h2>KV buckets</h2>
  <div class="scroll"><table id="buckets">
    <thead><tr><th>bucket</th><th>keys</th><th>values</th><th>bytes</th><th>last revision</th><th>history</th></tr></thead>
    <tbody></tbody>
  </table></div>
  <p class="small">Control-plane buckets start with <code>ub_</code>. Service instances are the keys of <code>ub_services</code>.</p>
</section>
<section>
  <h2>Audit</h2>
  <p id="audit"></p>
  <p class="small">Audit records name users and roles, so they are only served to admin principals:
  run <code>membershipd audit list --limit 20</code> on a node. This page shows what the HTTP port serves without
  credentials: the number of records.</p>
</section>
</main>
</body>
</html>
`;

const css = `
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --muted: #6e7781; }
body { font: 15px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; padding: 0.75rem; max-width: 72rem; }
h1 { font-size: 1.3rem; margin: 0.2rem 0; } h2 { font-size: 1.1rem; margin: 1.2rem 0 0.4rem; }
.small { font-size: 0.85rem; color: var(--muted); margin: 0.2rem 0; }
#summary { font-weight: 600; margin: 0.3rem 0; }
.ok { color: var(--ok); } .bad { color: var(--bad); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid #d0d7de; white-space: nowrap; }
td.health { white-space: normal; min-width: 6rem; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.leader td:first-child::after { content: " ★"; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; margin: 0; }
dt { color: var(--muted); } dd { margin: 0; font-variant-numeric: tabular-nums; }
code { font-size: 0.9em; }
@media (max-width: 40rem) { body { font-size: 14px; padding: 0.4rem; } th, td { padding: 0.25rem 0.2rem; } table { font-size: 13px; } }
`;

// Plain ES2020 run by the browser as is. Every number shown comes from one poll; rates are the difference of two
// polls divided by the time between them (the page's own clock: the node's counters carry no timestamps).
const js = `'use strict';
(function () {
  const pollMs = 2000;
  let last;
  const $ = (id) => document.getElementById(id);
  const text = (el, v) => { el.textContent = v === null || v === undefined ? '–' : String(v); return el; };
  const cell = (row, v, cls) => { const td = document.createElement('td'); if (cls) td.className = cls; text(td, v); row.appendChild(td); return td; };
  const rate = (now, before, dt) => (before === undefined || dt <= 0 ? null : Math.max(0, (now - before) / dt).toFixed(1) + '/s');
  async function get(path) {
    const r = await fetch(path, { cache: 'no-store' });
    return r.json();
  }
  function drawMembers(c) {
    text($('cluster-name'), c.cluster);
    text($('via'), c.via);
    const body = $('members').tBodies[0];
    body.replaceChildren();
    const members = [...c.members].sort((a, b) => ((a.name || '') < (b.name || '') ? -1 : 1));
    for (const m of members) {
      const tr = document.createElement('tr');
      tr.dataset.node = m.name || ('slot ' + m.id);
      tr.dataset.role = m.role;
      if (m.role === 'leader') tr.className = 'leader';
      cell(tr, m.name || ('slot ' + m.id));
      cell(tr, m.role);
      cell(tr, m.term, 'num'); cell(tr, m.commit, 'num'); cell(tr, m.applied, 'num'); cell(tr, m.lag, 'num');
      cell(tr, m.reachable ? 'yes' : 'no', m.reachable ? 'ok' : 'bad');
      cell(tr, m.health, 'health ' + (m.health === 'ok' ? 'ok' : 'bad'));
      body.appendChild(tr);
    }
  }
  function drawBus(v, dt) {
    const prev = last ? last.varz : undefined;
    const rows = [
      ['connections', v.connections], ['connections since start', v.total_connections], ['subscriptions', v.subscriptions],
      ['messages in', v.in_msgs + (prev ? '  (' + rate(v.in_msgs, prev.in_msgs, dt) + ')' : '')],
      ['messages out', v.out_msgs + (prev ? '  (' + rate(v.out_msgs, prev.out_msgs, dt) + ')' : '')],
      ['bytes in', v.in_bytes + (prev ? '  (' + rate(v.in_bytes, prev.in_bytes, dt) + ')' : '')],
      ['bytes out', v.out_bytes + (prev ? '  (' + rate(v.out_bytes, prev.out_bytes, dt) + ')' : '')],
      ['slow consumers', v.slow_consumers], ['version', v.version], ['uptime', v.uptime_seconds + ' s'],
    ];
    const dl = $('bus');
    dl.replaceChildren();
    for (const [k, val] of rows) {
      dl.appendChild(text(document.createElement('dt'), k));
      dl.appendChild(text(document.createElement('dd'), val));
    }
  }
  function drawBuckets(k) {
    const body = $('buckets').tBodies[0];
    body.replaceChildren();
    for (const b of k.buckets) {
      const tr = document.createElement('tr');
      tr.dataset.bucket = b.name;
      cell(tr, b.name); cell(tr, b.keys, 'num'); cell(tr, b.values, 'num'); cell(tr, b.bytes, 'num'); cell(tr, b.seq, 'num'); cell(tr, b.history, 'num');
      body.appendChild(tr);
    }
    const audit = k.buckets.find((b) => b.name === 'ub_audit');
    text($('audit'), audit ? audit.keys + ' audit records' : 'no audit bucket yet');
  }
  async function poll() {
    const t = performance.now();
    try {
      const [c, v, k] = await Promise.all([get('/clusterz'), get('/varz'), get('/kvz')]);
      const dt = last ? (t - last.t) / 1000 : 0;
      drawMembers(c);
      drawBus(v, dt);
      drawBuckets(k);
      const s = $('summary');
      const up = c.members.filter((m) => m.reachable).length;
      const self = c.members.find((m) => m.name === c.via);
      const ok = self !== undefined && self.health === 'ok';
      text(s, (ok ? 'healthy' : 'unavailable: ' + (self ? self.health : 'this node has no slot yet')) + ' · leader ' + (c.leader || 'none') + ' · term ' + c.term + ' · ' + up + ' of ' + c.members.length + ' nodes reachable');
      s.className = ok ? 'ok' : 'bad';
      document.body.dataset.leader = c.leader || '';
      document.body.dataset.term = String(c.term);
      text($('updated'), new Date().toLocaleTimeString());
      text($('poll-error'), '');
      last = { t, varz: v };
    } catch (e) {
      text($('poll-error'), 'cannot reach the node: ' + (e && e.message ? e.message : e));
    }
    setTimeout(poll, pollMs);
  }
  poll();
})();
`;

// Without an icon link a browser asks for /favicon.ico and logs the 404 as an error.
const icon = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" fill="#1a7f37"/></svg>';

const asset = (body: string, contentType: string): HttpEndpoint => () => ({
  status: 200, body, contentType, headers: { 'content-security-policy': statusPageCsp, 'x-content-type-options': 'nosniff' },
});

/** `/`, `/status.js`, `/status.css` and `/favicon.svg`: the page polls /clusterz, /varz and /kvz of the same port. */
export function statusPageEndpoints(): Record<string, HttpEndpoint> {
  return {
    '/': asset(html, 'text/html; charset=utf-8'),
    '/status.js': asset(js, 'text/javascript; charset=utf-8'),
    '/status.css': asset(css, 'text/css; charset=utf-8'),
    '/favicon.svg': asset(icon, 'image/svg+xml'),
  };
}
