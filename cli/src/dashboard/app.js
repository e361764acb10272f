// The Courier dashboard: polls /api/overview about once a second and renders it. Every value
// goes into the page through textContent (payloads and errors are never parsed as HTML).
'use strict';

const CSRF = document.querySelector('meta[name="courier-csrf"]').content;
const PRIOS = ['critical', 'high', 'normal', 'low'];
const PAGE = 50;
const POLL_MS = 1000;
const HISTORY = 120; // chart points: two minutes at one a second

const $ = (id) => document.getElementById(id);

let last = null; // the previous overview, for rates
const history = []; // {publ, ack} per poll
// What the dead-letter browser shows: a queue's name, or `topic/group` (names hold no '/').
let shownQueues = [];
let shownGroups = [];
let deadQueue = null;
let deadOffset = 0;
let deadTotal = 0;
let detailId = null;
let ticks = 0;

// --- HTTP ----------------------------------------------------------------------------------------

async function api(path, options) {
  const r = await fetch(path, Object.assign({ credentials: 'same-origin', cache: 'no-store' }, options));
  const text = await r.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch (_) {
    body = { error: text.trim() };
  }
  if (!r.ok) throw new Error(body.error || 'HTTP ' + r.status);
  return body;
}

function post(path, body) {
  return api(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Courier-Csrf': CSRF },
    body: JSON.stringify(body),
  });
}

function statePath(key, verb) {
  const [a, b] = key.split('/');
  if (b === undefined) return '/api/queues/' + encodeURIComponent(a) + '/' + verb;
  return '/api/groups/' + encodeURIComponent(a) + '/' + encodeURIComponent(b) + '/' + verb;
}

// A pause / resume button for a queue or group row (Q14, E8): it says what a click does.
function stateButton(tr, i, key, paused) {
  const td = cellAt(tr, i, 'state');
  if (!td.firstChild) {
    td.appendChild(button('', 'link toggle', async () => {
      const verb = td.firstChild.dataset.verb;
      try {
        await post(statePath(key, verb), {});
        status(verb === 'pause' ? 'paused ' + key : 'resumed ' + key, true);
        await refreshOverview();
      } catch (e) {
        status(verb + ' ' + key + ': ' + e.message, false);
      }
    }));
  }
  const b = td.firstChild;
  b.dataset.verb = paused ? 'resume' : 'pause';
  b.title = paused ? 'paused: nothing is delivered; click to resume' : 'pause deliveries';
  setText(b, paused ? 'resume' : 'pause');
  tr.classList.toggle('paused', paused);
}

function queuePath(key) {
  const [a, b] = key.split('/');
  if (b === undefined) return '/api/queues/' + encodeURIComponent(a) + '/dead';
  return '/api/groups/' + encodeURIComponent(a) + '/' + encodeURIComponent(b) + '/dead';
}

const deadLink = (key) => () => {
  location.hash = '#/dead/' + encodeURIComponent(key);
};

// --- helpers -------------------------------------------------------------------------------------

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

// Rows are updated in place, keyed (data-key), rather than rebuilt on every refresh: a button
// under the pointer stays the same element while the numbers around it change.
function syncRows(tbody, items, keyOf, fill) {
  const old = new Map();
  for (const r of Array.from(tbody.rows)) {
    if (r.dataset.key === undefined) r.remove();
    else old.set(r.dataset.key, r);
  }
  let prev = null;
  for (const item of items) {
    const key = keyOf(item);
    let tr = old.get(key);
    if (tr) {
      old.delete(key);
    } else {
      tr = document.createElement('tr');
      tr.dataset.key = key;
    }
    fill(tr, item);
    const at = prev ? prev.nextSibling : tbody.firstChild;
    if (at !== tr) tbody.insertBefore(tr, at);
    prev = tr;
  }
  for (const r of old.values()) r.remove();
}

// The row's i-th cell (made on first use), with class `cls`.
function cellAt(tr, i, cls) {
  while (tr.cells.length <= i) tr.appendChild(document.createElement('td'));
  const td = tr.cells[i];
  if (cls !== undefined && td.className !== cls) td.className = cls;
  return td;
}

function setText(el, text) {
  const t = String(text);
  if (el.textContent !== t) el.textContent = t;
}

// The row's i-th cell showing `text`.
function put(tr, i, text, cls) {
  const td = cellAt(tr, i, cls);
  setText(td, text);
  return td;
}

function emptyRow(tbody, cols, text) {
  const tr = document.createElement('tr');
  const td = cell(tr, text, 'name note');
  td.colSpan = cols;
  tbody.appendChild(tr);
}

function note(id, text) {
  $(id).textContent = text || '';
  $(id).hidden = !text;
}

function when(ms) {
  if (!ms) return '';
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z';
}

function status(text, ok) {
  $('status').textContent = text;
  $('status').className = 'status ' + (ok ? 'ok' : 'err');
}

function button(text, cls, onclick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.className = cls;
  b.addEventListener('click', onclick);
  return b;
}

// An in-page confirmation (a modal with Confirm and Cancel).
function ask(text) {
  return new Promise((resolve) => {
    $('confirm-text').textContent = text;
    $('confirm').hidden = false;
    const done = (answer) => {
      $('confirm').hidden = true;
      $('confirm-yes').onclick = null;
      $('confirm-no').onclick = null;
      resolve(answer);
    };
    $('confirm-yes').onclick = () => done(true);
    $('confirm-no').onclick = () => done(false);
    $('confirm-yes').focus();
  });
}

// --- overview ------------------------------------------------------------------------------------

function renderQueues(ov) {
  const prev = last ? new Map(last.queues.map((q) => [q.queue, q])) : new Map();
  const secs = last ? Math.max((ov.at_ms - last.at_ms) / 1000, 0.001) : 0;
  const tbody = $('queues').tBodies[0];
  let publ = 0;
  let ack = 0;
  let rated = false;
  const depth = (q) => PRIOS.reduce((s, p) => s + q.ready[p], 0);
  const max = Math.max(1, ...ov.queues.map(depth));
  syncRows(tbody, ov.queues, (q) => q.queue, (tr, q) => {
    tr.dataset.queue = q.queue;
    put(tr, 0, q.queue, 'name');
    PRIOS.forEach((p, i) => put(tr, 1 + i, q.ready[p], 'ready-' + p));
    put(tr, 5, q.delayed, 'delayed');
    put(tr, 6, q.in_flight, 'in-flight');
    const dead = cellAt(tr, 7, 'dead' + (q.dead > 0 ? ' some' : ''));
    if (!dead.firstChild) {
      dead.appendChild(button('', 'link', deadLink(q.queue)));
      dead.firstChild.title = 'browse the dead letters';
    }
    setText(dead.firstChild, q.dead);
    const o = prev.get(q.queue);
    let pr = '–';
    let ar = '–';
    if (o && secs) {
      const p1 = Math.max(0, q.published - o.published) / secs;
      const a1 = Math.max(0, q.acked - o.acked) / secs;
      publ += p1;
      ack += a1;
      rated = true;
      pr = p1.toFixed(1);
      ar = a1.toFixed(1);
    }
    put(tr, 8, pr, 'publ-rate');
    put(tr, 9, ar, 'ack-rate');
    const bar = cellAt(tr, 10, 'bar');
    if (!bar.firstChild) {
      const stack = document.createElement('div');
      stack.className = 'stack';
      for (const p of PRIOS) {
        const span = document.createElement('span');
        span.className = p;
        stack.appendChild(span);
      }
      bar.appendChild(stack);
    }
    const stack = bar.firstChild;
    stack.title = PRIOS.map((p) => p + ' ' + q.ready[p]).join(', ');
    PRIOS.forEach((p, i) => {
      stack.children[i].style.width = (q.ready[p] / max) * 100 + '%';
    });
    stateButton(tr, 11, q.queue, !!q.paused);
  });
  if (!ov.queues.length) emptyRow(tbody, 12, 'no queues to show');
  if (rated) {
    history.push({ publ, ack });
    while (history.length > HISTORY) history.shift();
  }
  drawChart();
  note('queues-note', ov.queues_note);
}

function renderGroups(ov) {
  const tbody = $('groups').tBodies[0];
  syncRows(tbody, ov.groups, (g) => g.topic + '/' + g.group, (tr, g) => {
    tr.dataset.group = g.topic + '/' + g.group;
    put(tr, 0, g.topic, 'name');
    put(tr, 1, g.group, 'name');
    put(tr, 2, g.lag, 'lag');
    put(tr, 3, g.ready + g.delayed, 'pending');
    put(tr, 4, g.in_flight, 'in-flight');
    const dead = cellAt(tr, 5, 'dead' + (g.dead > 0 ? ' some' : ''));
    if (!dead.firstChild) {
      dead.appendChild(button('', 'link', deadLink(g.topic + '/' + g.group)));
      dead.firstChild.title = 'browse the dead letters';
    }
    setText(dead.firstChild, g.dead);
    put(tr, 6, g.acked, 'acked');
    put(tr, 7, g.retained, 'retained');
    stateButton(tr, 8, g.topic + '/' + g.group, !!g.paused);
  });
  if (!ov.groups.length) emptyRow(tbody, 9, 'no event groups to show');
  note('groups-note', ov.groups_note);
}

function drawChart() {
  const c = $('rates');
  const g = c.getContext('2d');
  const w = c.width;
  const h = c.height;
  const pad = { l: 40, r: 8, t: 8, b: 16 };
  g.clearRect(0, 0, w, h);
  g.font = '11px system-ui, sans-serif';
  g.fillStyle = '#6b7280';
  g.strokeStyle = '#e3e6eb';
  g.lineWidth = 1;
  const max = Math.max(1, ...history.map((p) => Math.max(p.publ, p.ack)));
  const top = niceCeil(max);
  for (let i = 0; i <= 2; i++) {
    const y = pad.t + ((h - pad.t - pad.b) * i) / 2;
    g.beginPath();
    g.moveTo(pad.l, y + 0.5);
    g.lineTo(w - pad.r, y + 0.5);
    g.stroke();
    g.fillText(fmtRate((top * (2 - i)) / 2), 2, y + 4);
  }
  // The x axis spans what was gathered, at least 30 polls and at most HISTORY.
  const span = Math.min(HISTORY, Math.max(30, history.length));
  g.fillText('now', w - pad.r - 20, h - 3);
  g.fillText('−' + Math.round((span * POLL_MS) / 1000) + ' s', pad.l, h - 3);
  if (history.length < 2) {
    g.fillText('measuring…', w / 2 - 30, h / 2);
    return;
  }
  const x = (i) => pad.l + ((w - pad.l - pad.r) * (i + span - history.length)) / (span - 1);
  const y = (v) => h - pad.b - ((h - pad.t - pad.b) * v) / top;
  for (const [key, color] of [
    ['publ', '#2e86de'],
    ['ack', '#27ae60'],
  ]) {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    history.forEach((p, i) => (i ? g.lineTo(x(i), y(p[key])) : g.moveTo(x(i), y(p[key]))));
    g.stroke();
  }
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmtRate(v) {
  return v >= 1000 ? (v / 1000).toFixed(1) + 'k' : v >= 10 ? v.toFixed(0) : v.toFixed(1);
}

async function refreshOverview() {
  const ov = await api('/api/overview');
  $('backend').textContent = ov.backend + (ov.url ? ' · ' + ov.url : '');
  renderQueues(ov);
  renderGroups(ov);
  shownQueues = ov.queues.map((q) => q.queue);
  shownGroups = ov.groups.map((g) => g.topic + '/' + g.group);
  fillSelect();
  last = ov;
}

// --- dead letters --------------------------------------------------------------------------------

function fillSelect() {
  const sel = $('dead-queue');
  const names = shownQueues.concat(shownGroups);
  if (deadQueue && !names.includes(deadQueue)) names.unshift(deadQueue);
  const have = Array.from(sel.options).map((o) => o.value);
  if (have.join('\n') === names.join('\n')) {
    if (deadQueue) sel.value = deadQueue;
    return;
  }
  sel.replaceChildren(
    ...names.map((n) => {
      const o = document.createElement('option');
      o.value = n;
      o.textContent = n.includes('/') ? n.replace('/', ' / ') + ' (event group)' : n;
      return o;
    }),
  );
  if (deadQueue) sel.value = deadQueue;
}

async function loadDead() {
  if (!deadQueue) {
    $('dead-count').textContent = '';
    return;
  }
  const q = deadQueue;
  const page = await api(queuePath(q) + '?offset=' + deadOffset + '&limit=' + PAGE);
  if (q !== deadQueue) return;
  deadTotal = page.dead;
  $('dead-count').textContent = page.dead + ' dead';
  $('dead-count').dataset.count = String(page.dead);
  $('requeue-all').disabled = page.dead === 0;
  $('purge-all').disabled = page.dead === 0;
  const tbody = $('dead-list').tBodies[0];
  syncRows(tbody, page.items, (d) => d.id, (tr, d) => {
    tr.dataset.id = d.id;
    put(tr, 0, d.id, 'name id');
    put(tr, 1, d.kind, 'name');
    put(tr, 2, d.priority, 'priority');
    put(tr, 3, d.attempts, 'attempts');
    put(tr, 4, when(d.failed_at_ms), 'name');
    put(tr, 5, (d.error || '').split('\n')[0], 'error').title = d.error || '';
    const act = cellAt(tr, 6, 'act');
    if (!act.firstChild) {
      act.appendChild(button('view', 'link view', () => showDetail(d.id)));
      act.appendChild(button('requeue', 'link requeue', () => requeue([d.id])));
      act.appendChild(button('purge', 'link purge', () => purge([d.id])));
    }
  });
  if (!page.items.length) emptyRow(tbody, 7, deadOffset ? 'no more dead letters' : 'no dead letters');
  const to = deadOffset + page.items.length;
  $('dead-range').textContent = page.items.length ? deadOffset + 1 + '–' + to + ' of ' + page.dead : '';
  $('dead-prev').disabled = deadOffset === 0;
  $('dead-next').disabled = to >= page.dead;
}

async function showDetail(id) {
  const d = await api(queuePath(deadQueue) + '/' + encodeURIComponent(id));
  detailId = id;
  $('detail-id').textContent = d.id;
  $('detail-kind').textContent = d.kind;
  $('detail-priority').textContent = d.priority;
  $('detail-attempts').textContent = String(d.attempts);
  $('detail-created').textContent = when(d.created_at_ms);
  $('detail-failed').textContent = when(d.failed_at_ms);
  $('detail-error').textContent = d.error;
  $('detail-headers').textContent = JSON.stringify(d.headers, null, 2);
  let payload = d.payload;
  try {
    payload = JSON.stringify(JSON.parse(d.payload), null, 2);
  } catch (_) {
    // not JSON: shown as it is (text, or hex for binary)
  }
  $('detail-payload').textContent = payload;
  $('dead-detail').hidden = false;
}

async function act(verb, ids) {
  const q = deadQueue;
  const what = ids ? (ids.length === 1 ? 'dead letter ' + ids[0] : ids.length + ' dead letters') : 'all ' + deadTotal + ' dead letters';
  const sure = await ask(verb[0].toUpperCase() + verb.slice(1) + ' ' + what + ' of ' + q + '?' + (verb === 'purge' ? ' They are deleted for good.' : ''));
  if (!sure) return;
  try {
    const r = await post(queuePath(q) + '/' + verb, ids ? { ids } : { all: true });
    const n = verb === 'purge' ? r.purged : r.requeued;
    $('dead-result').textContent = (verb === 'purge' ? 'purged ' : 'requeued ') + n;
    if (ids && ids.includes(detailId)) $('dead-detail').hidden = true;
    if (!ids) $('dead-detail').hidden = true;
  } catch (e) {
    $('dead-result').textContent = verb + ' failed: ' + e.message;
  }
  await Promise.allSettled([loadDead(), refreshOverview()]);
}

const requeue = (ids) => act('requeue', ids);
const purge = (ids) => act('purge', ids);

// --- routing and polling -------------------------------------------------------------------------

function route() {
  const h = location.hash || '#/';
  const dead = h.startsWith('#/dead');
  $('view-overview').hidden = dead;
  $('view-dead').hidden = !dead;
  $('nav-overview').classList.toggle('active', !dead);
  $('nav-dead').classList.toggle('active', dead);
  if (!dead) return;
  const named = decodeURIComponent(h.slice('#/dead/'.length));
  const q = named || deadQueue || shownQueues[0] || null;
  if (q !== deadQueue) {
    deadQueue = q;
    deadOffset = 0;
    $('dead-detail').hidden = true;
    $('dead-result').textContent = '';
  }
  fillSelect();
  loadDead().catch((e) => status(e.message, false));
}

async function tick() {
  try {
    await refreshOverview();
    if (!$('view-dead').hidden) {
      if (!deadQueue && shownQueues.length) route();
      else if (ticks % 2 === 0) await loadDead();
    }
    status('live · ' + new Date().toLocaleTimeString(), true);
  } catch (e) {
    status(e.message, false);
  }
  ticks += 1;
  setTimeout(tick, POLL_MS);
}

$('dead-queue').addEventListener('change', (e) => {
  location.hash = '#/dead/' + encodeURIComponent(e.target.value);
});
$('requeue-all').addEventListener('click', () => requeue(null));
$('purge-all').addEventListener('click', () => purge(null));
$('detail-requeue').addEventListener('click', () => detailId && requeue([detailId]));
$('detail-purge').addEventListener('click', () => detailId && purge([detailId]));
$('dead-prev').addEventListener('click', () => {
  deadOffset = Math.max(0, deadOffset - PAGE);
  loadDead().catch((e) => status(e.message, false));
});
$('dead-next').addEventListener('click', () => {
  deadOffset += PAGE;
  loadDead().catch((e) => status(e.message, false));
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && !$('confirm').hidden) $('confirm-no').click();
});
window.addEventListener('hashchange', route);
route();
tick();
