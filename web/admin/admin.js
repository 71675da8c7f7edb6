// The admin UI: a page of plain modules, no framework, no build step. Every call
// goes to this origin's admin endpoints with the session token in the
// Authorization header (never a cookie), and everything shown is set as text,
// never as HTML, so a channel name or a payload cannot run script here.

const TOKEN_KEY = 'tidings-admin-token';
// Rows the page draws at most, so a channel with a crowd or a node with many
// channels does not stall the browser; a note says how many were left out.
const MAX_CHANNEL_ROWS = 1000;
const MAX_PRESENCE_ROWS = 500;
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  insecure: false,
  tab: 'nodes',
  channel: null,
  tail: null,
  timer: null,
};

class AuthError extends Error {}

async function request(path, { method = 'GET', body } = {}) {
  const headers = {};
  if (state.token) headers.Authorization = `token ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
  });
  if (response.status === 401 && path !== 'admin/auth') {
    const message = await response.text();
    logout(message || 'Please log in again.');
    throw new AuthError(message);
  }
  if (!response.ok) {
    const message = await response.text();
    throw new Error(message || `${response.status} ${response.statusText}`);
  }
  return response.json();
}

async function api(method, params = {}) {
  const answer = await request('admin/api', { method: 'POST', body: { method, params } });
  if (answer.error) throw new Error(`${answer.error.message} (code ${answer.error.code})`);
  return answer.result;
}

let toastTimer = null;
function toast(text, bad = false) {
  const el = $('toast');
  el.textContent = text;
  el.classList.toggle('bad', bad);
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, bad ? 6000 : 3000);
}

function fail(error) {
  if (error instanceof AuthError) return;
  toast(error.message || String(error), true);
}

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

function uptime(seconds) {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${seconds % 60}s`;
  return `${seconds}s`;
}

function short(value) {
  if (value === undefined || value === null) return '';
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

// ---- login -------------------------------------------------------------------

function showApp(authenticated) {
  $('login').hidden = authenticated;
  $('tabs').hidden = !authenticated;
  $('logout').hidden = !authenticated || state.insecure;
  for (const section of document.querySelectorAll('.tab')) section.hidden = true;
  if (authenticated) switchTab(state.tab);
  else { stopTimers(); $('password').focus(); }
}

function logout(message) {
  state.token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  stopTail();
  showApp(false);
  if (message) {
    $('login-error').textContent = message;
    $('login-error').hidden = false;
  }
}

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('login-error').hidden = true;
  try {
    const answer = await request('admin/auth', {
      method: 'POST',
      body: { password: $('password').value },
    });
    state.token = answer.token;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    $('password').value = '';
    showApp(true);
  } catch (error) {
    $('login-error').textContent = error.message;
    $('login-error').hidden = false;
  }
});

$('logout').addEventListener('click', () => logout(''));

// ---- tabs and refresh ------------------------------------------------------------

function stopTimers() {
  clearInterval(state.timer);
  state.timer = null;
}

function switchTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll('#tabs button')) {
    button.classList.toggle('active', button.dataset.tab === tab);
  }
  for (const section of document.querySelectorAll('.tab')) {
    section.hidden = section.id !== `tab-${tab}`;
  }
  stopTimers();
  const refresh = { nodes: loadNodes, channels: refreshChannels, config: loadConfig }[tab];
  if (refresh) {
    refresh().catch(fail);
    if (tab !== 'config') {
      state.timer = setInterval(() => refresh().catch(fail), tab === 'nodes' ? 2000 : 3000);
    }
  }
}

for (const button of document.querySelectorAll('#tabs button')) {
  button.addEventListener('click', () => switchTab(button.dataset.tab));
}

// ---- nodes -------------------------------------------------------------------

async function loadNodes() {
  const { nodes } = await api('info');
  nodes.sort((a, b) => a.name.localeCompare(b.name));
  const body = $('nodes-table').tBodies[0];
  body.replaceChildren();
  const total = { num_clients: 0, num_users: 0, num_subs: 0 };
  for (const node of nodes) {
    const row = document.createElement('tr');
    row.dataset.uid = node.uid;
    const name = cell(row, node.name);
    const uid = document.createElement('div');
    uid.className = 'muted small mono';
    uid.textContent = node.uid;
    name.append(uid);
    cell(row, node.version);
    cell(row, node.num_clients, 'num');
    cell(row, node.num_users, 'num');
    cell(row, node.num_subs, 'num');
    cell(row, node.num_channels, 'num');
    cell(row, uptime(node.uptime), 'num');
    body.append(row);
    for (const key of Object.keys(total)) total[key] += node[key];
  }
  const totals = $('totals');
  totals.replaceChildren();
  for (const [label, value] of [
    ['nodes', nodes.length],
    ['connections', total.num_clients],
    ['users (sum per node)', total.num_users],
    ['subscriptions', total.num_subs],
  ]) {
    const stat = document.createElement('div');
    stat.className = 'stat';
    const b = document.createElement('b');
    b.textContent = value;
    const span = document.createElement('span');
    span.textContent = label;
    stat.append(b, span);
    totals.append(stat);
  }
}

// ---- channels ----------------------------------------------------------------

async function refreshChannels() {
  await loadChannels();
  if (state.channel) await loadPresence(state.channel);
}

async function loadChannels() {
  const pattern = $('channel-pattern').value.trim();
  const { channels } = await api('channels', pattern ? { pattern } : {});
  const names = Object.keys(channels).sort();
  const body = $('channels-table').tBodies[0];
  body.replaceChildren();
  for (const name of names.slice(0, MAX_CHANNEL_ROWS)) {
    const row = document.createElement('tr');
    row.dataset.channel = name;
    row.classList.toggle('selected', name === state.channel);
    cell(row, name, 'mono');
    cell(row, channels[name].num_clients, 'num');
    row.addEventListener('click', () => openChannel(name));
    body.append(row);
  }
  const empty = $('channels-empty');
  if (names.length > MAX_CHANNEL_ROWS) {
    empty.textContent = `Showing ${MAX_CHANNEL_ROWS} of ${names.length} channels: narrow them with a pattern.`;
  } else {
    empty.textContent = 'No channel has subscribers.';
  }
  empty.hidden = names.length > 0 && names.length <= MAX_CHANNEL_ROWS;
}

$('channel-filter').addEventListener('submit', (event) => {
  event.preventDefault();
  loadChannels().catch(fail);
});
$('channel-pattern').addEventListener('input', () => loadChannels().catch(fail));

async function openChannel(name) {
  stopTail();
  state.channel = name;
  $('channel-detail').hidden = false;
  $('detail-name').textContent = name;
  $('tail-log').replaceChildren();
  for (const row of $('channels-table').tBodies[0].rows) {
    row.classList.toggle('selected', row.dataset.channel === name);
  }
  await Promise.all([loadPresence(name), loadHistory(name)]).catch(fail);
  startTail(name);
}

async function loadPresence(name) {
  const body = $('presence-table').tBodies[0];
  const note = $('presence-note');
  let presence;
  try {
    ({ presence } = await api('presence', { channel: name }));
  } catch (error) {
    if (error instanceof AuthError) return;
    body.replaceChildren();
    note.textContent = `No presence: ${error.message}`;
    note.hidden = false;
    $('detail-stats').textContent = '';
    return;
  }
  if (name !== state.channel) return;
  note.hidden = true;
  const clients = Object.values(presence).sort((a, b) => (a.user || '').localeCompare(b.user || ''));
  const users = new Set(clients.map((c) => c.user));
  $('detail-stats').textContent = `${clients.length} client${clients.length === 1 ? '' : 's'}, ${users.size} user${users.size === 1 ? '' : 's'}`;
  body.replaceChildren();
  for (const client of clients.slice(0, MAX_PRESENCE_ROWS)) {
    const row = document.createElement('tr');
    row.dataset.user = client.user;
    row.dataset.client = client.client;
    cell(row, client.user || '(anonymous)');
    cell(row, client.client, 'mono small');
    cell(row, short(client.conn_info ?? client.chan_info), 'mono small');
    const actions = cell(row, '');
    actions.className = 'num';
    const unsubscribe = document.createElement('button');
    unsubscribe.type = 'button';
    unsubscribe.className = 'small ghost';
    unsubscribe.textContent = 'Unsubscribe';
    unsubscribe.addEventListener('click', () => act('unsubscribe', { user: client.user, channel: name, client: client.client }, `Unsubscribed ${client.user} from ${name}`));
    const disconnect = document.createElement('button');
    disconnect.type = 'button';
    disconnect.className = 'small danger';
    disconnect.textContent = 'Disconnect';
    disconnect.addEventListener('click', () => act('disconnect', { user: client.user, client: client.client }, `Disconnected ${client.user}`));
    actions.append(unsubscribe, ' ', disconnect);
    body.append(row);
  }
  if (clients.length === 0) {
    note.textContent = 'Nobody is present.';
    note.hidden = false;
  } else if (clients.length > MAX_PRESENCE_ROWS) {
    note.textContent = `Showing ${MAX_PRESENCE_ROWS} of ${clients.length} clients.`;
    note.hidden = false;
  }
}

function publicationItem(pub, label) {
  const li = document.createElement('li');
  const meta = document.createElement('span');
  meta.className = 'meta';
  const when = new Date().toLocaleTimeString();
  meta.textContent = [label || when, pub.offset ? `#${pub.offset}` : '', pub.info?.user ? `by ${pub.info.user}` : '']
    .filter(Boolean).join(' ');
  const data = document.createElement('span');
  data.className = 'data';
  data.textContent = pub.data !== undefined ? JSON.stringify(pub.data) : `(bytes) ${pub.b64data || ''}`;
  li.append(meta, data);
  return li;
}

async function loadHistory(name) {
  const log = $('history-log');
  const note = $('history-note');
  try {
    const { publications } = await api('history', { channel: name, limit: 20, reverse: true });
    if (name !== state.channel) return;
    log.replaceChildren(...publications.map((p) => publicationItem(p, 'stored')));
    note.hidden = true;
  } catch (error) {
    if (error instanceof AuthError) return;
    log.replaceChildren();
    note.textContent = `No history: ${error.message}`;
    note.hidden = false;
  }
}

$('history-reload').addEventListener('click', () => state.channel && loadHistory(state.channel).catch(fail));

// ---- live tail ----------------------------------------------------------------

function setTailState(text, live) {
  $('tail-state').textContent = text;
  $('tail-state').classList.toggle('live', live);
  $('tail-toggle').textContent = live ? 'Stop' : 'Start';
}

function stopTail() {
  if (state.tail) state.tail.abort();
  state.tail = null;
  setTailState('closed', false);
}

async function startTail(name) {
  stopTail();
  const controller = new AbortController();
  state.tail = controller;
  setTailState('connecting', false);
  try {
    const headers = state.token ? { Authorization: `token ${state.token}` } : {};
    const response = await fetch(`admin/tail?channel=${encodeURIComponent(name)}`, {
      headers, signal: controller.signal, cache: 'no-store', credentials: 'omit',
    });
    if (response.status === 401) { logout(await response.text()); return; }
    if (!response.ok) throw new Error(await response.text());
    setTailState('live', true);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        handleEvent(block);
      }
    }
    if (state.tail === controller) setTailState('ended', false);
  } catch (error) {
    if (controller.signal.aborted) return;
    setTailState('failed', false);
    fail(error);
  }
}

function handleEvent(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if (data.length === 0) return;
  const payload = JSON.parse(data.join('\n'));
  if (event === 'end') {
    toast(`The tail ended: ${payload.reason || 'closed'}`, true);
    return;
  }
  const pub = payload.push?.pub;
  if (!pub) return;
  const log = $('tail-log');
  log.append(publicationItem(pub));
  while (log.children.length > 200) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

$('tail-toggle').addEventListener('click', () => {
  if (state.tail) stopTail();
  else if (state.channel) startTail(state.channel);
});

// ---- actions -----------------------------------------------------------------

async function act(method, params, done) {
  try {
    await api(method, params);
    toast(done);
    if (state.channel) await loadPresence(state.channel);
  } catch (error) {
    fail(error);
  }
}

function parseData(text) {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`Data must be JSON: ${error.message}`);
  }
}

async function publish(channel, text) {
  try {
    const data = parseData(text);
    const result = await api('publish', { channel, data });
    toast(`Published to ${channel}${result.offset ? ` at offset ${result.offset}` : ''}`);
  } catch (error) {
    fail(error);
  }
}

$('detail-publish').addEventListener('submit', (event) => {
  event.preventDefault();
  if (state.channel) publish(state.channel, $('detail-data').value);
});

$('publish-form').addEventListener('submit', (event) => {
  event.preventDefault();
  publish($('publish-channel').value.trim(), $('publish-data').value);
});

$('disconnect-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const user = $('disconnect-user').value.trim();
  const client = $('disconnect-client').value.trim();
  act('disconnect', client ? { user, client } : { user }, `Disconnected ${user}`);
});

$('unsubscribe-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const user = $('unsubscribe-user').value.trim();
  const channel = $('unsubscribe-channel').value.trim();
  act('unsubscribe', { user, channel }, `Unsubscribed ${user} from ${channel}`);
});

// ---- configuration -------------------------------------------------------------

async function loadConfig() {
  const config = await request('admin/config');
  $('config-json').textContent = JSON.stringify(config, null, 2);
}

// ---- start ---------------------------------------------------------------------

async function start() {
  try {
    const init = await request('admin/init');
    state.insecure = init.insecure;
    $('served-by').textContent = `served by ${init.node}`;
    if (!init.authenticated && state.token) {
      state.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
    }
    showApp(init.authenticated);
  } catch (error) {
    showApp(false);
    fail(error);
  }
}

start();
