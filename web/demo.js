/* =====================================================================
 * The demo chat (served at /demo.js for the page at /), on the same client code as the React hooks of
 * @tidings/react: centrifuge-js plus the package's framework-agnostic
 * core (shared connection and subscriptions, the message feed with
 * history and recovery, the presence and typing trackers), bundled into
 * /tidings-core.js, which this server serves next to this page.
 *
 * Each room uses two channels:
 *   "<room>"       chat messages: history, recovery and presence
 *                  (the development profile's channels without namespace).
 *   "live:<room>"  ephemeral signals: typing ({typing, name}) and hello
 *                  ({type:"hello", name}), in the development profile's
 *                  "live" namespace, which keeps no history, so signals
 *                  are never stored or replayed.
 * Connections are anonymous, so names travel in publication data. Every
 * client announces {type:"hello", name} on joining and asks the others
 * to announce themselves back; we keep a clientId -> name map from those
 * (and from chat messages) and fall back to a short client id.
 *
 * ?transport=websocket|sse|http_stream|long_poll forces one transport;
 * without it the client tries them in that order. The transports are
 * served at /connection/websocket, /connection/sse,
 * /connection/http_stream and /connection/long_poll (+ POST /emulation).
 * ===================================================================== */

import { ALL_TRANSPORTS, Tidings, TypingTracker, isTransportName } from '/tidings-core.js';

const DEFAULT_ROOMS = ['lobby', 'random', 'engineering'];
const ROOM_RE = /^[a-z0-9_-]{1,32}$/;
const HISTORY_LIMIT = 50;
const MAX_MESSAGES = 500;
const LABELS = { websocket: 'WebSocket', sse: 'SSE', http_stream: 'HTTP streaming', long_poll: 'long polling' };

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function chosenTransports() {
  const name = params.get('transport');
  if (!name) return [...ALL_TRANSPORTS];
  if (isTransportName(name)) return [name];
  console.warn(`unknown transport "${name}", trying all (choose one of ${ALL_TRANSPORTS.join(', ')})`);
  return [...ALL_TRANSPORTS];
}

function randomId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

function store(key, value) {
  try {
    if (value === undefined) return localStorage.getItem(key);
    localStorage.setItem(key, value);
  } catch { /* storage may be disabled */ }
  return value;
}

function cleanName(name) {
  return String(name || '').replace(/\s+/g, ' ').trim().slice(0, 24);
}

function colorFor(text) {
  let h = 0;
  for (const ch of String(text)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return `hsl(${h} 55% 46%)`;
}

function initials(name) {
  const parts = String(name).trim().split(/[\s_.-]+/).filter(Boolean);
  if (!parts.length) return '?';
  return parts.slice(0, 2).map((p) => [...p][0]).join('');
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'style') node.style.cssText = value;
    else if (key.startsWith('data-') || key.startsWith('aria-') || key === 'role') node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function avatar(name) {
  return el('span', { class: 'avatar', text: initials(name), style: `background:${colorFor(name)}`, 'aria-hidden': 'true' });
}

const timeFormat = new Intl.DateTimeFormat([], { hour: '2-digit', minute: '2-digit' });

/* ---------------------------------------------------------------------
 * A network switch for tests and for trying recovery by hand:
 * window.tidings.drop(ms) takes the network away for `ms`. The client is
 * told the device went offline (as a browser tells it), and until the
 * network is back every connection attempt fails, whatever transport.
 * ------------------------------------------------------------------- */

const network = new EventTarget();
let networkDown = false;
window.addEventListener('offline', () => network.dispatchEvent(new Event('offline')));
window.addEventListener('online', () => { if (!networkDown) network.dispatchEvent(new Event('online')); });
// While the network is down, connections go to a path of this server that serves
// nothing (404), so they fail as they would offline without leaving the page's origin,
// the only one its Content-Security-Policy lets it connect to.
const NOWHERE = new URL('/network-is-down', location.href).href;
function GatedWebSocket(url, protocols) { return new WebSocket(networkDown ? NOWHERE.replace(/^http/, 'ws') : url, protocols); }
function GatedEventSource(url, init) { return new EventSource(networkDown ? NOWHERE : url, init); }
// The long-poll socket's DELETE goes through even so: it is sent as the connection is
// dropped, as a WebSocket's close frame is, so the server ends that session at once in
// both cases. keepalive lets it outlive the page when the page goes away.
const gatedFetch = (input, init) => {
  if (init && init.method === 'DELETE') return fetch(input, { ...init, keepalive: true });
  return networkDown ? Promise.reject(new TypeError('network is down')) : fetch(input, init);
};

function drop(holdMs = 0) {
  networkDown = true;
  network.dispatchEvent(new Event('offline'));
  setTimeout(() => { networkDown = false; network.dispatchEvent(new Event('online')); }, holdMs);
}

/* ---------------------------------------------------------------------
 * State.
 * ------------------------------------------------------------------- */

const tidings = new Tidings({
  url: location.origin,
  transports: chosenTransports(),
  websocket: GatedWebSocket,
  eventsource: GatedEventSource,
  longPoll: { fetch: gatedFetch },
  centrifuge: { name: 'tidings-demo', fetch: gatedFetch, networkEventTarget: network },
});

const app = {
  me: { uid: store('tidings.uid') || store('tidings.uid', randomId()), name: cleanName(store('tidings.name')) },
  room: null,
  chat: null,          // Lease on "<room>": feed + presence
  live: null,          // Lease on "live:<room>": typing + hello
  typing: null,        // TypingTracker of the room
  unwatch: [],         // store subscriptions of the current room
  names: new Map(),    // clientId -> nickname
  asked: false,        // did our hello on the current live subscription ask others to answer?
  recoveryAt: 0,       // the last recovery shown
};

function nameOf(clientId) {
  if (clientId && clientId === tidings.clientId && app.me.name) return app.me.name;
  return app.names.get(clientId) || `guest-${String(clientId).slice(0, 4)}`;
}

// ---- connection badge ----

function renderConnection() {
  const c = tidings.connection.get();
  const badge = $('conn-state');
  const state = c.state === 'connected' ? 'connected' : c.reconnecting ? 'reconnecting' : c.state;
  badge.dataset.state = state;
  badge.dataset.transport = c.transport || chosenTransports()[0];
  $('conn-via').textContent = LABELS[c.transport || chosenTransports()[0]];
  const label = $('conn-label');
  if (state === 'connected') {
    label.textContent = 'Connected';
    badge.title = `client ${c.client}`;
  } else if (state === 'reconnecting') {
    label.textContent = 'Reconnecting… (retrying)';
    badge.title = c.lastError ? `reason: ${c.lastError.reason} (${c.lastError.code})` : '';
    $('recovery-note').hidden = true;
  } else if (state === 'connecting') {
    label.textContent = 'Connecting…';
    badge.title = '';
  } else {
    label.textContent = 'Disconnected';
    badge.title = c.lastError ? `reason: ${c.lastError.reason} (${c.lastError.code})` : '';
    $('recovery-note').hidden = true;
  }
  updateComposer();
  renderOnline();
}

function showRecoveryNote(text) {
  const note = $('recovery-note');
  note.textContent = text;
  note.hidden = false;
}

// ---- rooms ----

function renderRooms() {
  const rooms = [...new Set([...DEFAULT_ROOMS, app.room])];
  $('room-list').replaceChildren(...rooms.map((room) => el('li', {},
    el('button', {
      type: 'button',
      'data-room': room,
      'data-testid': `room-${room}`,
      'aria-current': String(room === app.room),
      onclick: () => { location.hash = room; },
    }, el('span', { class: 'hash', text: '#', 'aria-hidden': 'true' }), room))));
}

function roomFromHash() {
  const room = decodeURIComponent(location.hash.slice(1)).toLowerCase();
  return ROOM_RE.test(room) ? room : (params.get('room') && ROOM_RE.test(params.get('room')) ? params.get('room') : 'lobby');
}

function leaveRoom() {
  for (const off of app.unwatch) off();
  app.unwatch = [];
  if (app.typing) app.typing.stop();
  if (app.chat) app.chat.release();
  if (app.live) app.live.release();
  app.chat = app.live = app.typing = null;
}

function joinRoom(room) {
  if (room === app.room) return;
  leaveRoom();
  app.room = room;
  app.asked = false;
  app.recoveryAt = 0;
  messageNodes.clear();
  document.title = `#${room} · Tidings`;
  $('room-title').textContent = `# ${room}`;
  $('message-input').placeholder = `Message #${room}`;
  $('recovery-note').hidden = true;
  renderRooms();

  const chat = tidings.acquire(room);
  const live = tidings.acquire(`live:${room}`);
  app.chat = chat;
  app.live = live;
  const feed = chat.feed({ historyLimit: HISTORY_LIMIT, maxPublications: MAX_MESSAGES });
  const presence = chat.presence();
  app.typing = new TypingTracker(
    (signal) => (live.subscription.state === 'subscribed' ? live.subscription.publish(signal) : Promise.resolve()),
    () => ({ client: tidings.clientId, user: null }),
    { name: app.me.name },
  );
  const typing = app.typing;

  const onLive = (ctx) => { typing.handle(ctx); onLivePublication(ctx); };
  live.subscription.on('publication', onLive);
  const onLiveSubscribed = () => { app.asked = false; sayHello(true); };
  live.subscription.on('subscribed', onLiveSubscribed);
  if (live.subscription.state === 'subscribed') onLiveSubscribed();
  const onChatError = (ctx) => showComposerError(`Cannot join #${room}: ${ctx.error?.message ?? ctx.type}`);
  chat.subscription.on('error', onChatError);

  app.unwatch.push(
    feed.store.subscribe(() => renderFeed(feed.store.get())),
    presence.store.subscribe(renderOnline),
    typing.store.subscribe(renderTyping),
    () => live.subscription.removeListener('publication', onLive),
    () => live.subscription.removeListener('subscribed', onLiveSubscribed),
    () => chat.subscription.removeListener('error', onChatError),
  );
  renderFeed(feed.store.get());
  renderOnline();
  renderTyping();
}

// ---- publications ----

function onLivePublication(pub) {
  const data = pub.data || {};
  const from = pub.info && pub.info.client;
  if (!from) return;
  const name = cleanName(data.name);
  if (name && app.names.get(from) !== name) {
    app.names.set(from, name);
    renderOnline();
    renderFeed(app.chat.feed().store.get());
  }
  const mine = data.uid === app.me.uid || from === tidings.clientId;
  // A newcomer asks who is here: answer, with a little jitter so replies spread out.
  if (data.type === 'hello' && data.ask && !mine && presenceCount() < 50) setTimeout(() => sayHello(false), 50 + Math.random() * 400);
}

function sayHello(ask) {
  const live = app.live;
  if (!app.me.name || !live || live.subscription.state !== 'subscribed') return;
  // The first hello after (re)joining also asks everyone else to introduce themselves.
  ask = ask || !app.asked;
  app.asked = true;
  live.subscription.publish({ type: 'hello', name: app.me.name, uid: app.me.uid, ask }).catch(() => {});
}

function presenceCount() {
  return app.chat ? app.chat.presence().store.get().members.length : 0;
}

// ---- rendering ----

function isNearBottom() {
  const box = $('messages');
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

// Message nodes are built once per message and then only moved or re-classed, so the
// live region announces new messages instead of re-reading the whole list.
const messageNodes = new Map();   // message key -> <li>
let placeholderNode = null;

function toMessage(pub) {
  const data = pub.data && typeof pub.data === 'object' ? pub.data : { text: String(pub.data) };
  if (data.type && data.type !== 'msg') return null;
  const from = pub.info && pub.info.client;
  return {
    key: pub.offset ? `${pub.era}:${pub.offset}` : `l${randomId()}`,
    uid: data.uid || from || 'server',
    name: cleanName(data.name) || (from ? nameOf(from) : 'server'),
    text: String(data.text ?? ''),
    ts: Number(data.ts) || Date.now(),
    from,
  };
}

function buildMessageNode(m) {
  const mine = m.uid === app.me.uid;
  return el('li', { 'data-testid': 'message', 'data-key': m.key, 'data-author': m.name },
    avatar(m.name),
    el('div', { class: 'body' },
      el('div', { class: 'meta' },
        el('span', { class: 'author', 'data-testid': 'message-author', text: mine ? 'You' : m.name }),
        el('time', { dateTime: new Date(m.ts).toISOString(), text: timeFormat.format(m.ts) })),
      el('div', { class: 'bubble', 'data-testid': 'message-text', text: m.text })));
}

let lastCount = 0;
function renderFeed(snapshot) {
  // A finished recovery: say what came back, once.
  const r = snapshot.recovery;
  if (r && r.at !== app.recoveryAt) {
    app.recoveryAt = r.at;
    if (r.lost) showRecoveryNote('History reloaded');
    else showRecoveryNote(`Recovered ${r.count} message${r.count === 1 ? '' : 's'}`);
  }
  const items = snapshot.publications.map(toMessage).filter(Boolean);
  // Someone whose message arrived has stopped typing.
  for (const m of items.slice(lastCount)) if (m.from && app.typing) app.typing.forget(m.from);
  const grew = items.length > lastCount;
  lastCount = items.length;
  const stick = isNearBottom() || (grew && items[items.length - 1].uid === app.me.uid);

  const list = $('messages');
  let nodes;
  if (!items.length) {
    placeholderNode = placeholderNode || el('li', { class: 'placeholder', 'data-testid': 'empty' });
    placeholderNode.textContent = snapshot.historyLoaded ? `No messages in #${app.room} yet. Say hello!` : 'Loading…';
    nodes = [placeholderNode];
  } else {
    const sameGroup = (a, b) => a && b && a.uid === b.uid && Math.abs(b.ts - a.ts) < 5 * 60 * 1000;
    nodes = items.map((m, i) => {
      let node = messageNodes.get(m.key);
      if (!node) { node = buildMessageNode(m); messageNodes.set(m.key, node); }
      const first = !sameGroup(items[i - 1], m);
      const last = !sameGroup(m, items[i + 1]);
      node.className = ['msg', first && 'first', last && 'last', m.uid === app.me.uid && 'mine'].filter(Boolean).join(' ');
      return node;
    });
    if (messageNodes.size > items.length) {
      const keep = new Set(items.map((m) => m.key));
      for (const key of messageNodes.keys()) if (!keep.has(key)) messageNodes.delete(key);
    }
  }
  nodes.forEach((node, i) => {
    if (list.children[i] !== node) list.insertBefore(node, list.children[i] || null);
  });
  while (list.children.length > nodes.length) list.lastElementChild.remove();
  if (stick) list.scrollTop = list.scrollHeight;
}

function renderOnline() {
  const list = $('online-list');
  const myId = tidings.clientId;
  const connected = tidings.connection.get().state === 'connected';
  const members = connected && app.chat ? app.chat.presence().store.get().members : [];
  const people = members.map((m) => ({ id: m.client, name: nameOf(m.client), me: m.client === myId }));
  people.sort((a, b) => (b.me - a.me) || a.name.localeCompare(b.name));
  $('online-count').textContent = String(people.length);
  $('room-sub').textContent = people.length ? `${people.length} online` : '';
  if (!people.length) {
    list.replaceChildren(el('li', { class: 'empty', text: connected ? 'Nobody here yet' : 'Offline' }));
    return;
  }
  list.replaceChildren(...people.map((p) => el('li', { 'data-testid': 'online-user', 'data-client': p.id, 'data-name': p.name },
    el('span', { class: 'presence-dot' }, avatar(p.name)),
    el('span', { class: 'who', text: p.name }),
    p.me ? el('span', { class: 'you', text: '(you)' }) : null)));
}

function renderTyping() {
  const typists = app.typing ? app.typing.store.get() : [];
  const names = [...new Set(typists.map((t) => cleanName(t.name) || nameOf(t.client)))];
  const box = $('typing');
  if (!names.length) { box.replaceChildren(); return; }
  const who = names.length === 1 ? `${names[0]} is typing…`
    : names.length === 2 ? `${names[0]} and ${names[1]} are typing…`
    : 'Several people are typing…';
  box.replaceChildren(el('span', { class: 'dots', 'aria-hidden': 'true' }, el('span'), el('span'), el('span')),
    el('span', { 'data-testid': 'typing-text', text: who }));
}

function renderMe() {
  $('me-name').textContent = app.me.name || 'Pick a name';
  const a = $('me-avatar');
  a.textContent = initials(app.me.name || '?');
  a.style.background = colorFor(app.me.name || '?');
}

function updateComposer() {
  const connected = tidings.connection.get().state === 'connected';
  $('send-button').disabled = !connected;
  $('send-button').title = connected ? '' : 'Waiting for the connection';
}

function showComposerError(text) {
  const box = $('composer-error');
  box.textContent = text;
  box.hidden = false;
}

// ---- UI wiring ----

function openNameDialog() {
  const dialog = $('name-dialog');
  const input = $('nickname-input');
  input.value = app.me.name || '';
  $('nickname-cancel').hidden = !app.me.name;
  if (!dialog.open) dialog.showModal();
  input.focus();
  input.select();
}

$('name-dialog').addEventListener('cancel', (event) => { if (!app.me.name) event.preventDefault(); });
$('nickname-cancel').addEventListener('click', () => $('name-dialog').close());
$('name-form').addEventListener('submit', (event) => {
  const name = cleanName($('nickname-input').value);
  if (!name) { event.preventDefault(); return; }
  app.me.name = store('tidings.name', name);
  if (app.typing) app.typing.setName(name);
  renderMe();
  renderOnline();
  sayHello(false);
  setTimeout(() => $('message-input').focus(), 0);
});
$('me').addEventListener('click', openNameDialog);

$('room-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const room = $('room-input').value.trim().toLowerCase();
  if (!ROOM_RE.test(room)) { $('room-input').setCustomValidity('Use a-z, 0-9, - and _'); $('room-input').reportValidity(); return; }
  $('room-input').value = '';
  location.hash = room;
});
$('room-input').addEventListener('input', () => $('room-input').setCustomValidity(''));
window.addEventListener('hashchange', () => joinRoom(roomFromHash()));

const input = $('message-input');
function autoGrow() {
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight + 2, 160)}px`;
}
input.addEventListener('input', () => {
  autoGrow();
  if (!app.typing || !app.me.name) return;
  if (input.value.trim()) app.typing.input();
  else app.typing.done();
});
input.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $('composer').requestSubmit();
  }
});

$('composer').addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  if (!app.me.name) { openNameDialog(); return; }
  const errorBox = $('composer-error');
  const button = $('send-button');
  button.disabled = true;
  try {
    await tidings.centrifuge.publish(app.room, { type: 'msg', text, name: app.me.name, uid: app.me.uid, ts: Date.now() });
    input.value = '';
    autoGrow();
    errorBox.hidden = true;
    if (app.typing) app.typing.done();
  } catch (err) {
    showComposerError(tidings.connection.get().state !== 'connected'
      ? 'Not sent: you are offline. Your text is kept; try again once connected.'
      : `Not sent: ${err.message}`);
  } finally {
    updateComposer();
    input.focus();
  }
});

// ---- start ----

tidings.connection.subscribe(renderConnection);
tidings.connection.subscribe(() => {
  if (tidings.connection.get().state === 'connected') $('composer-error').hidden = true;
});
// Leaving the page ends the session at once (long polling would otherwise linger until
// the server's session timeout). centrifuge-js itself handles the back/forward cache.
window.addEventListener('pagehide', (event) => { if (!event.persisted) tidings.centrifuge.disconnect(); });

renderMe();
renderConnection();
joinRoom(roomFromHash());
tidings.hold();
if (!app.me.name) openNameDialog();

// Handle for tests and for poking around in the console.
window.tidings = {
  core: tidings,
  client: tidings.centrifuge,
  get transport() { return tidings.connection.get().transport; },
  get state() { return tidings.connection.get().state; },
  get stats() { const c = tidings.connection.get(); return { connects: c.connects, clientId: c.client }; },
  drop,
};
