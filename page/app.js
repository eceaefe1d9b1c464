// pmmap's page: the jobs list (#/) and a job's page (#/job/ID), kept live by
// the server's event streams (GET /events, GET /job/{id}/events). Vanilla
// JS, no library; charts are SVG drawn here. With --api-token the server
// answers 401 until the page sends "Authorization: Bearer TOKEN": the page
// asks once, keeps the token in sessionStorage (this tab only) and sends it
// on every request. EventSource cannot send headers, so the streams are
// read with fetch() and a stream reader.
'use strict';

const TOKEN_KEY = 'pmmap-token';
const LIST_PAGE = 100;  // jobs a page of the list (the server sends at most 200)
const RECONNECT_MS = 2000;

// ---------------------------------------------------------------- helpers

const $ = (sel, root = document) => root.querySelector(sel);
const main = $('#main');

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') node.textContent = v;
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
}

const intFmt = new Intl.NumberFormat('en-US');
function fmtInt(n) { return n === null || n === undefined ? '—' : intFmt.format(n); }
function fmtRate(r) {
  if (!r) return '0/s';
  return (r >= 100 ? intFmt.format(Math.round(r)) : r.toFixed(1)) + '/s';
}
function fmtMs(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1) return ms.toFixed(2) + ' ms';
  if (ms < 1000) return (ms < 10 ? ms.toFixed(1) : Math.round(ms)) + ' ms';
  return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
}
function fmtDuration(s) {
  if (!isFinite(s)) return '—';
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
}
function relTime(iso) {
  if (!iso) return '—';
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 5) return 'just now';
  return fmtDuration(s).replace(/ \d+ (s|min)$/, '') + ' ago';
}
// A time as "3 min ago" with the exact time in its title (shown on hover).
function timeCell(iso) {
  if (!iso) return '<span class="muted">—</span>';
  const exact = new Date(iso).toLocaleString() + ' (' + iso + ')';
  return '<time datetime="' + esc(iso) + '" title="' + esc(exact) + '">' + esc(relTime(iso)) + '</time>';
}
function hostOf(url) {
  try { return new URL(url).host; } catch (e) { return url; }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function setConn(text) { $('#conn').textContent = text; }

// ------------------------------------------------------------- the token

let tokenWaiters = null;
function authHeaders(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? Object.assign({Authorization: 'Bearer ' + token}, extra) : extra;
}
// Shows the token form once, however many requests were refused; resolves
// when a token is given.
function askToken() {
  if (tokenWaiters) return new Promise((r) => tokenWaiters.push(r));
  tokenWaiters = [];
  const form = $('#token-form');
  const input = $('#token-input');
  form.hidden = false;
  setConn('waiting for the API token');
  input.focus();
  return new Promise((resolve) => {
    tokenWaiters.push(resolve);
    form.onsubmit = (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = '';
      form.hidden = true;
      const waiters = tokenWaiters;
      tokenWaiters = null;
      waiters.forEach((w) => w());
    };
  });
}

// fetch with the token; asks for it once on a 401 and tries again.
async function api(method, path, opts = {}) {
  for (;;) {
    const res = await fetch(path, Object.assign({method, headers: authHeaders(), cache: 'no-store'}, opts));
    if (res.status !== 401) return res;
    await askToken();
  }
}

// Reads the Server-Sent Events at path and calls onData with each parsed
// snapshot (null when the thing watched is gone) until ctl is aborted;
// reconnects after a drop.
async function readEvents(path, onData, ctl) {
  while (!ctl.signal.aborted) {
    try {
      const res = await fetch(path, {headers: authHeaders({Accept: 'text/event-stream'}), signal: ctl.signal, cache: 'no-store'});
      if (res.status === 401) { await askToken(); continue; }
      if (res.status === 404) { onData(null); return; }
      if (!res.ok) {
        setConn('live updates refused (HTTP ' + res.status + '), trying again');
        await sleep(5 * RECONNECT_MS);
        continue;
      }
      setConn('live');
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += decoder.decode(value, {stream: true});
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const event = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = event.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
          if (!data) continue;  // a keepalive comment
          const snap = JSON.parse(data);
          if (snap.gone) { onData(null); return; }
          onData(snap);
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    setConn('disconnected, reconnecting…');
    await sleep(RECONNECT_MS);
  }
}

// ------------------------------------------------------------- the router

let current = null;  // the view's AbortController
function route() {
  if (current) current.abort();
  current = new AbortController();
  const m = location.hash.match(/^#\/job\/([^/]+)$/);
  main.replaceChildren();
  if (m) showJob(decodeURIComponent(m[1]), current);
  else showList(current);
}
window.addEventListener('hashchange', () => { route(); main.focus(); });

// ---------------------------------------------------------- the jobs list

function progressHtml(j) {
  const inputs = j.inputs || 0;
  const pct = (n) => (inputs ? (100 * n) / inputs : 0).toFixed(2) + '%';
  const open = inputs - j.outputs;
  return '<div class="bar" role="img" aria-label="' + esc(fmtInt(j.succeeded) + ' succeeded, ' + fmtInt(j.failed) + ' failed, ' + fmtInt(open) + ' open of ' + fmtInt(inputs)) + '">' +
    '<span class="ok" style="width:' + pct(j.succeeded) + '"></span>' +
    '<span class="fail" style="width:' + pct(j.failed) + '"></span>' +
    '<span class="flight" style="width:' + pct(j.in_flight) + '"></span></div>' +
    '<div class="label"><span data-field="outputs">' + fmtInt(j.outputs) + '</span> / <span data-field="inputs">' + fmtInt(inputs) + '</span>' +
    (inputs ? ' (' + Math.floor((100 * j.outputs) / inputs) + '%)' : '') +
    (open > 0 ? ' · ' + fmtInt(open) + ' open' : '') + '</div>';
}

function rateOf(j) { return (j.stats && j.stats.recent_calls_per_sec) || 0; }

function etaOf(j) {
  const left = j.inputs - j.outputs;
  if (j.state === 'done' || j.state === 'cancelled') return '—';
  if (left <= 0) return j.state === 'open' ? 'waiting for inputs' : '—';
  const r = rateOf(j);
  if (!r) return j.paused ? 'paused' : '—';
  return (j.state === 'open' ? '≥ ' : '') + fmtDuration(left / r);
}

function stateHtml(j) {
  let html = '<span class="state state-' + esc(j.state) + '" data-field="state">' + esc(j.state) + '</span>';
  if (j.paused) html += ' <span class="state">paused</span>';
  if (j.circuit && j.circuit !== 'closed') html += ' <span class="state circuit-' + esc(j.circuit) + '">circuit ' + esc(j.circuit.replace('_', '-')) + '</span>';
  return html;
}

function concurrencyText(j) {
  if (j.effective_concurrency !== undefined && j.effective_concurrency !== null) {
    return fmtInt(j.effective_concurrency) + ' of ' + fmtInt(j.concurrency);
  }
  return fmtInt(j.concurrency);
}

const LIST_COLUMNS = [
  ['id', 'Job'], ['host', 'Webhook'], ['state', 'State'], ['progress', 'Progress'],
  ['succeeded', 'Succeeded'], ['failed', 'Failed'], ['rate', 'Calls/s'], ['eta', 'ETA'],
  ['concurrency', 'Concurrency'], ['created', 'Created'], ['done', 'Done'],
];

function rowCells(j) {
  return {
    id: '<a href="#/job/' + encodeURIComponent(j.id) + '">' + esc(j.id) + '</a>',
    host: esc(hostOf(j.url)),
    state: stateHtml(j),
    progress: progressHtml(j),
    succeeded: fmtInt(j.succeeded),
    failed: fmtInt(j.failed),
    rate: fmtRate(rateOf(j)),
    eta: esc(etaOf(j)),
    concurrency: esc(concurrencyText(j)),
    created: timeCell(j.created_at),
    done: timeCell(j.done_at),
  };
}

function showList(ctl) {
  let offset = 0;
  let total = 0;
  let streamCtl = null;
  const rows = new Map();  // id -> <tr>, so that a live update keeps focus on a link
  const summary = el('p', {class: 'summary', id: 'list-summary'}, 'Loading…');
  const tbody = el('tbody', {id: 'jobs-body'});
  const headRow = el('tr');
  for (const [key, label] of LIST_COLUMNS) {
    headRow.append(el('th', {scope: 'col', class: ['succeeded', 'failed', 'rate'].includes(key) ? 'num' : null, text: label}));
  }
  const prev = el('button', {type: 'button', id: 'page-newer', on: {click: () => go(offset - LIST_PAGE)}}, '← Newer');
  const next = el('button', {type: 'button', id: 'page-older', on: {click: () => go(offset + LIST_PAGE)}}, 'Older →');
  const pageInfo = el('span', {class: 'muted'});
  main.append(
    el('h1', {text: 'Jobs'}), summary,
    el('div', {class: 'legend', 'aria-hidden': 'true'},
      el('span', {}, el('i', {class: 'ok'}), 'succeeded'), el('span', {}, el('i', {class: 'fail'}), 'failed'),
      el('span', {}, el('i', {class: 'flight'}), 'in flight'), el('span', {}, el('i', {class: 'open'}), 'waiting')),
    el('table', {class: 'jobs'}, el('thead', {}, headRow), tbody),
    el('div', {class: 'pager'}, prev, pageInfo, next));

  function render(snap) {
    if (!snap) return;
    total = snap.total;
    const jobs = snap.jobs;
    const running = jobs.filter((j) => j.state === 'open' || j.state === 'closing').length;
    summary.textContent = total === 0
      ? 'No jobs yet. Create one with POST /job (see the README).'
      : fmtInt(total) + (total === 1 ? ' job' : ' jobs') + ', newest first; ' + fmtInt(running) + ' running on this page';
    pageInfo.textContent = total ? fmtInt(offset + 1) + '–' + fmtInt(offset + jobs.length) + ' of ' + fmtInt(total) : '';
    prev.disabled = offset === 0;
    next.disabled = offset + jobs.length >= total;
    const seen = new Set();
    let before = tbody.firstChild;
    for (const j of jobs) {
      seen.add(j.id);
      let tr = rows.get(j.id);
      if (!tr) {
        tr = el('tr', {'data-job-id': j.id});
        for (const [key, label] of LIST_COLUMNS) {
          tr.append(el('td', {'data-label': label, 'data-col': key, class: 'col-' + key + (['succeeded', 'failed', 'rate'].includes(key) ? ' num' : '')}));
        }
        rows.set(j.id, tr);
      }
      const cells = rowCells(j);
      for (const td of tr.children) {
        const html = cells[td.dataset.col];
        if (td.dataset.html !== html) { td.innerHTML = html; td.dataset.html = html; }
      }
      if (tr !== before) tbody.insertBefore(tr, before);
      else before = before.nextSibling;
    }
    for (const [id, tr] of rows) if (!seen.has(id)) { tr.remove(); rows.delete(id); }
  }

  function go(to) {
    offset = Math.max(0, to);
    if (streamCtl) streamCtl.abort();
    streamCtl = new AbortController();
    ctl.signal.addEventListener('abort', () => streamCtl.abort());
    readEvents('/events?offset=' + offset + '&limit=' + LIST_PAGE, render, streamCtl);
  }
  go(0);
}

// ------------------------------------------------------------ a job's page

// Stacked bars of the last window_s seconds: succeeded solid, failed hatched.
function throughputSvg(stats) {
  const ok = stats.succeeded;
  const bad = stats.failed;
  const n = ok.length;
  const W = 600;
  const H = 160;
  const top = 14;
  let max = 1;
  for (let i = 0; i < n; i++) max = Math.max(max, ok[i] + bad[i]);
  const y = (v) => H - (v / max) * (H - top);
  let okPath = '';
  let badPath = '';
  for (let i = 0; i < n; i++) {
    if (ok[i]) okPath += 'M' + i + ' ' + y(0) + 'V' + y(ok[i]).toFixed(1);
    if (bad[i]) badPath += 'M' + i + ' ' + y(ok[i]).toFixed(1) + 'V' + y(ok[i] + bad[i]).toFixed(1);
  }
  const label = 'Calls a second over the last ' + Math.round(n / 60) + ' minutes; peak ' + fmtInt(max);
  return '<svg class="chart" viewBox="-40 0 ' + (W + 50) + ' ' + (H + 20) + '" role="img" aria-label="' + esc(label) + '">' +
    '<defs><pattern id="hatch" width="4" height="4" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">' +
    '<rect width="4" height="4" fill="#fff"/><rect width="2" height="4" fill="#a4262c"/></pattern></defs>' +
    '<line x1="0" y1="' + H + '" x2="' + W + '" y2="' + H + '" stroke="#888"/>' +
    '<line x1="0" y1="' + top + '" x2="' + W + '" y2="' + top + '" stroke="#ddd" stroke-dasharray="3 3"/>' +
    '<text x="-4" y="' + (top + 4) + '" text-anchor="end">' + esc(fmtInt(max)) + '/s</text>' +
    '<text x="-4" y="' + H + '" text-anchor="end">0</text>' +
    '<path d="' + okPath + '" stroke="#1f5130" stroke-width="1.05"/>' +
    '<path d="' + badPath + '" stroke="#a4262c" stroke-width="1.05" stroke-dasharray="2 1"/>' +
    '<text x="0" y="' + (H + 14) + '">−' + Math.round(n / 60) + ' min</text>' +
    '<text x="' + W / 2 + '" y="' + (H + 14) + '" text-anchor="middle">−' + Math.round(n / 120) + ' min</text>' +
    '<text x="' + W + '" y="' + (H + 14) + '" text-anchor="end">now</text></svg>';
}

// The latency histogram: buckets merged to at most 30 bars, labelled.
function histogramSvg(latency) {
  let b = latency.buckets;
  if (!b.length) return '<p class="muted">No calls yet.</p>';
  const per = Math.ceil(b.length / 30);
  const merged = [];
  for (let i = 0; i < b.length; i += per) {
    const group = b.slice(i, i + per);
    merged.push([group[0][0], group[group.length - 1][1], group.reduce((s, x) => s + x[2], 0)]);
  }
  b = merged;
  const W = 600;
  const H = 120;
  const bw = W / b.length;
  const max = Math.max(...b.map((x) => x[2]));
  let bars = '';
  b.forEach(([lo, hi, c], i) => {
    const h = (c / max) * (H - 10);
    bars += '<rect x="' + (i * bw + 1).toFixed(1) + '" y="' + (H - h).toFixed(1) + '" width="' + Math.max(1, bw - 2).toFixed(1) + '" height="' + h.toFixed(1) + '" fill="#57606a"><title>' +
      esc(fmtMs(lo) + '–' + fmtMs(hi) + ': ' + fmtInt(c) + ' calls') + '</title></rect>';
  });
  return '<svg class="chart" viewBox="0 0 ' + W + ' ' + (H + 20) + '" role="img" aria-label="Latency histogram from ' + esc(fmtMs(b[0][0])) + ' to ' + esc(fmtMs(b[b.length - 1][1])) + '">' + bars +
    '<line x1="0" y1="' + H + '" x2="' + W + '" y2="' + H + '" stroke="#888"/>' +
    '<text x="0" y="' + (H + 14) + '">' + esc(fmtMs(b[0][0])) + '</text>' +
    '<text x="' + W + '" y="' + (H + 14) + '" text-anchor="end">' + esc(fmtMs(b[b.length - 1][1])) + '</text></svg>';
}

function statBox(label, value, field) {
  return '<div class="stat"><b' + (field ? ' data-field="' + field + '"' : '') + '>' + esc(value) + '</b><span>' + esc(label) + '</span></div>';
}

const SETTINGS = ['url', 'concurrency', 'effective_concurrency', 'maxsize', 'timeout_ms', 'max_attempts', 'backoff_ms', 'max_backoff_ms', 'rate_per_sec', 'max_outage_ms', 'adaptive'];

function settingsHtml(j) {
  let html = '<dl class="settings">';
  for (const k of SETTINGS) {
    if (!(k in j)) continue;
    const v = j[k];
    html += '<dt>' + esc(k) + '</dt><dd>' + esc(v === null ? 'none' : typeof v === 'number' ? fmtInt(v) : String(v)) + '</dd>';
  }
  if (j.callback) html += '<dt>callback</dt><dd>' + esc(j.callback.url + ' (' + j.callback.state + ')') + '</dd>';
  return html + '</dl>';
}

function tableHtml(headers, rows) {
  if (!rows.length) return '<p class="muted">None.</p>';
  return '<table><thead><tr>' + headers.map((h) => '<th>' + esc(h) + '</th>').join('') + '</tr></thead><tbody>' +
    rows.map((r) => '<tr>' + r.join('') + '</tr>').join('') + '</tbody></table>';
}

function renderJob(view, snap) {
  const j = snap.job;
  const s = snap.stats;
  view.title.textContent = 'Job ' + j.id;
  view.summary.innerHTML = stateHtml(j) + ' <span>' + esc(j.url) + '</span> <span>created ' + timeCell(j.created_at) + '</span>' +
    (j.done_at ? ' <span>ended ' + timeCell(j.done_at) + '</span>' : '');
  view.progress.innerHTML = progressHtml(j);
  const lat = s.latency;
  view.numbers.innerHTML =
    statBox('succeeded', fmtInt(j.succeeded), 'succeeded') + statBox('failed', fmtInt(j.failed), 'failed') +
    statBox('pending', fmtInt(j.pending)) + statBox('in flight', fmtInt(j.in_flight)) + statBox('retries', fmtInt(j.retries)) +
    statBox('calls/s (last 5 s)', fmtRate(s.recent_calls_per_sec)) + statBox('ETA', etaOf(Object.assign({stats: s}, j))) +
    statBox('concurrency', concurrencyText(j)) + statBox('circuit', j.circuit || 'n/a');
  view.notes.innerHTML =
    (j.last_error ? '<p class="notice">Last error ' + timeCell(j.last_error.at) + ': ' + esc(j.last_error.message) + '</p>' : '') +
    (j.outage_since ? '<p class="notice">Webhook outage since ' + timeCell(j.outage_since) + '</p>' : '') +
    (j.storage_error ? '<p class="notice">Storage error: ' + esc(j.storage_error) + '</p>' : '');
  view.chart.innerHTML = throughputSvg(s);
  view.latency.innerHTML = '<div class="stats">' + statBox('p50', fmtMs(lat.p50_ms)) + statBox('p95', fmtMs(lat.p95_ms)) +
    statBox('p99', fmtMs(lat.p99_ms)) + statBox('calls', fmtInt(lat.calls)) + '</div>' + histogramSvg(lat);
  view.errors.innerHTML = tableHtml(['Message', 'Count'], s.errors.map((e) => ['<td class="msg">' + esc(e.message) + '</td>', '<td class="num">' + fmtInt(e.count) + '</td>']));
  view.failures.innerHTML = tableHtml(['Key', 'Status', 'Message', 'Attempts', 'When'], s.recent_failures.map((f) => [
    '<td class="msg">' + esc(f.key) + '</td>', '<td class="num">' + (f.status || 'none') + '</td>', '<td class="msg">' + esc(f.message) + '</td>',
    '<td class="num">' + fmtInt(f.attempts) + '</td>', '<td>' + timeCell(f.at) + '</td>']));
  view.settings.innerHTML = settingsHtml(j);
  const ended = j.state === 'done' || j.state === 'cancelled';
  view.cancel.disabled = ended;
  view.pause.hidden = view.pauseGone || !('paused' in j) || ended;
  view.pause.textContent = j.paused ? 'Resume' : 'Pause';
  view.pause.dataset.paused = j.paused ? '1' : '0';
}

function showJob(id, ctl) {
  const path = '/job/' + encodeURIComponent(id);
  const status = el('p', {role: 'status', 'aria-live': 'polite', class: 'muted', id: 'action-status'});
  const say = (text) => { status.textContent = text; };
  const view = {pauseGone: false};
  async function act(what, method, suffix, question) {
    if (question && !window.confirm(question)) return;
    say(what + '…');
    const res = await api(method, path + suffix);
    if (res.ok) {
      say(what + ': done.');
      return true;
    }
    if (what.startsWith('Pause') || what.startsWith('Resume')) {
      if (res.status === 404 || res.status === 405) {
        view.pauseGone = true;
        view.pause.hidden = true;
        say('This server cannot pause jobs.');
        return false;
      }
    }
    let message = 'HTTP ' + res.status;
    try { message = (await res.json()).error || message; } catch (e) { /* not JSON */ }
    say(what + ' failed: ' + message);
    return false;
  }
  async function download(failedOnly) {
    say('Downloading…');
    const res = await api('GET', path + '/output?wait=false&format=ndjson' + (failedOnly ? '&result=failed' : ''));
    if (!res.ok) {
      return say(failedOnly && res.status === 400 ? 'This server cannot filter the output by result.' : 'Download failed: HTTP ' + res.status);
    }
    const url = URL.createObjectURL(await res.blob());
    const a = el('a', {href: url, download: id + (failedOnly ? '-failed' : '') + '.ndjson'});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    say('Downloaded.');
  }
  view.pause = el('button', {type: 'button', id: 'btn-pause', hidden: true, on: {click: () => {
    const resume = view.pause.dataset.paused === '1';
    act(resume ? 'Resume' : 'Pause', 'POST', resume ? '/resume' : '/pause');
  }}}, 'Pause');
  view.cancel = el('button', {type: 'button', id: 'btn-cancel', class: 'danger', on: {click: () =>
    act('Cancel', 'POST', '/cancel', 'Cancel job ' + id + '? Inputs without an outcome end as "cancelled".')}}, 'Cancel');
  const del = el('button', {type: 'button', id: 'btn-delete', class: 'danger', on: {click: async () => {
    if (await act('Delete', 'DELETE', '', 'Delete job ' + id + ' and its output? This cannot be undone.')) location.hash = '#/';
  }}}, 'Delete');
  const dlAll = el('button', {type: 'button', id: 'btn-download', on: {click: () => download(false)}}, 'Download output');
  const dlFailed = el('button', {type: 'button', id: 'btn-download-failed', on: {click: () => download(true)}}, 'Download failed only');
  const section = (title, node) => el('section', {class: 'card'}, el('h2', {text: title}), node);
  Object.assign(view, {
    title: el('h1', {id: 'job-title', text: 'Job ' + id}), summary: el('p', {class: 'summary'}),
    progress: el('div', {class: 'progress', id: 'job-progress'}), numbers: el('div', {class: 'stats', id: 'job-numbers'}),
    notes: el('div'), chart: el('div'), latency: el('div'), errors: el('div'), failures: el('div'), settings: el('div'),
  });
  main.append(el('p', {}, el('a', {href: '#/'}, '← All jobs')), view.title, view.summary,
    el('div', {class: 'actions'}, view.pause, view.cancel, del, dlAll, dlFailed), status, view.notes, view.progress,
    el('div', {class: 'legend', 'aria-hidden': 'true'},
      el('span', {}, el('i', {class: 'ok'}), 'succeeded'), el('span', {}, el('i', {class: 'fail'}), 'failed'),
      el('span', {}, el('i', {class: 'flight'}), 'in flight'), el('span', {}, el('i', {class: 'open'}), 'waiting')),
    el('div', {class: 'grid'},
      section('Numbers', view.numbers),
      section('Throughput, calls a second (solid: succeeded, hatched: failed)', view.chart),
      section('Latency', view.latency), section('Most frequent errors', view.errors),
      section('Latest failed entries', view.failures), section('Settings', view.settings)));
  readEvents(path + '/events', (snap) => {
    if (!snap) {
      say('This job no longer exists.');
      [view.pause, view.cancel, del, dlAll, dlFailed].forEach((b) => { b.disabled = true; });
      return;
    }
    renderJob(view, snap);
  }, ctl);
}

// Relative times age while no snapshot changes them (an ended job's).
setInterval(() => {
  for (const t of document.querySelectorAll('time[datetime]')) t.textContent = relTime(t.getAttribute('datetime'));
}, 10000);

route();
