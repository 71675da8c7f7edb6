'use client';

import Link from 'next/link';
import { useCallback, useEffect, useRef, useState, useTransition } from 'react';
import type { FormEvent } from 'react';
import { TidingsProvider, useOnlineStatus, usePresence, useSubscription, useTidings, useTyping } from '@tidings/react';
import type { Publication, TransportName } from '@tidings/react';

import { sendMessage } from './actions';

interface Me {
  id: string;
  name: string;
}

interface Message {
  id: string;
  text: string;
  user: string;
  name: string;
}

interface ChatProps {
  url: string;
  room: string;
  rooms: string[];
  me: Me;
  transports: TransportName[];
  /** `token`: connect with a JWT from /api/token; `proxy`: connect with the cookie alone. */
  auth: 'token' | 'proxy';
}

/** Asks this app's own route handler for a connection token (the secret stays on the server). */
async function fetchToken(): Promise<string> {
  const res = await fetch('/api/token', { cache: 'no-store' });
  if (!res.ok) throw new Error(`token: HTTP ${res.status}`);
  const { token } = (await res.json()) as { token: string };
  return token;
}

export function Chat(props: ChatProps) {
  const getToken = useCallback(fetchToken, []);
  return (
    <TidingsProvider
      url={props.url}
      getToken={props.auth === 'token' ? getToken : undefined}
      transports={props.transports}
    >
      <Room {...props} />
    </TidingsProvider>
  );
}

function asMessage(p: Publication): Message | null {
  const d = p.data as Partial<Message> | null;
  if (!d || typeof d.text !== 'string') return null;
  return { id: String(d.id ?? `${p.era}:${p.offset}`), text: d.text, user: String(d.user ?? ''), name: String(d.name ?? '?') };
}

function names(list: string[]): string {
  if (list.length <= 1) return list.join('');
  return `${list.slice(0, -1).join(', ')} and ${list[list.length - 1]}`;
}

/** "just now", "5 min ago", "2 h ago", or the date. */
function ago(at: number, now: number): string {
  const s = Math.max(0, Math.round((now - at) / 1000));
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(at).toLocaleDateString();
}

/** The current time, moved on every `ms` (for "last seen … ago"). */
function useNow(ms: number): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(timer);
  }, [ms]);
  return now;
}

function Room({ room, rooms, me }: ChatProps) {
  const conn = useTidings();
  const chat = useSubscription(`chat:${room}`, { history: 50 });
  const presence = usePresence(`chat:${room}`);
  const typing = useTyping(`typing:${room}`, { name: me.name, user: me.id });
  const [text, setText] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [pending, startTransition] = useTransition();
  const listRef = useRef<HTMLOListElement>(null);

  const messages = chat.publications.map(asMessage).filter((m): m is Message => m !== null);
  useEffect(() => {
    listRef.current?.lastElementChild?.scrollIntoView({ block: 'end' });
  }, [messages.length]);

  // One entry per user (a user may be here from several tabs), named from the token's info.
  const online = new Map<string, string>();
  for (const m of presence.members) {
    const name = (m.connInfo as { name?: string } | undefined)?.name ?? m.user;
    if (!online.has(m.user)) online.set(m.user, name);
  }

  let badge: 'connecting' | 'connected' | 'reconnecting' | 'disconnected';
  if (conn.state === 'connected' && chat.state === 'subscribed') badge = 'connected';
  else if (conn.reconnecting || chat.interrupted) badge = 'reconnecting';
  else if (conn.state === 'disconnected' && conn.connects > 0) badge = 'disconnected';
  else badge = 'connecting';
  const recovery = chat.recovery;
  let note = '';
  if (recovery && recovery.lost) note = 'server stream reset: reloaded from history';
  else if (recovery) note = `recovered ${recovery.count} message${recovery.count === 1 ? '' : 's'}`;

  const send = (event: FormEvent) => {
    event.preventDefault();
    const body = text.trim();
    if (!body || pending) return;
    startTransition(async () => {
      const result = await sendMessage(room, body);
      if (result.ok) {
        setText('');
        setError(null);
        typing.done();
      } else {
        setError(result.error);
      }
    });
  };

  const typists = typing.typists.map((t) => t.name || 'someone');

  // Who wrote here but is not in the room now: online elsewhere, or when last seen.
  const authors = new Map<string, string>();
  for (const m of messages) if (m.user && !online.has(m.user)) authors.set(m.user, m.name);
  const statuses = useOnlineStatus([...authors.keys()]);
  const now = useNow(30_000);

  return (
    <div className="chat">
      <aside>
        <h2>Rooms</h2>
        <ul className="rooms">
          {rooms.map((r) => (
            <li key={r} className={r === room ? 'current' : ''}>
              <Link href={`/rooms/${r}`}>#{r}</Link>
            </li>
          ))}
        </ul>
        <h2>Online</h2>
        <ul className="online" data-testid="online">
          {[...online].map(([user, name]) => (
            <li key={user} data-testid="online-user" data-user={user} data-name={name}>
              {name}
              {user === me.id ? ' (you)' : ''}
            </li>
          ))}
        </ul>
        {authors.size > 0 && (
          <>
            <h2>Recently here</h2>
            <ul className="recent" data-testid="recent">
              {[...authors].map(([user, name]) => {
                const status = statuses[user];
                let label = '';
                if (status?.online) label = 'online';
                else if (status?.at) label = `last seen ${ago(status.at, now)}`;
                else if (status?.loaded) label = 'offline';
                return (
                  <li
                    key={user}
                    data-testid="recent-user"
                    data-user={user}
                    data-name={name}
                    data-status={status?.loaded ? (status.online ? 'online' : 'offline') : ''}
                  >
                    <span className={`dot ${status?.online ? 'on' : ''}`} />
                    {name}
                    <small> {label}</small>
                  </li>
                );
              })}
            </ul>
          </>
        )}
      </aside>
      <main>
        <header>
          <h1>#{room}</h1>
          <span
            className={`badge ${badge}`}
            data-testid="badge"
            data-state={badge}
            data-recovered={recovery && !recovery.lost ? recovery.count : ''}
            data-lost={recovery?.lost ? 'true' : 'false'}
            data-transport={conn.transport ?? ''}
            title={conn.lastError ? `last disconnect: ${conn.lastError.reason} (${conn.lastError.code})` : ''}
          >
            {badge}
            {note && badge === 'connected' ? ` · ${note}` : ''}
          </span>
          <span className="transport" data-testid="transport">
            {conn.transport ?? ''}
          </span>
        </header>
        <ol className="messages" ref={listRef} data-testid="messages">
          {messages.map((m) => (
            <li key={m.id} data-testid="message" className={m.user === me.id ? 'mine' : ''}>
              <b data-testid="message-author">{m.user === me.id ? 'You' : m.name}</b>
              <span data-testid="message-text">{m.text}</span>
            </li>
          ))}
        </ol>
        <p className="typing" data-testid="typing">
          {typists.length > 0 ? `${names(typists)} ${typists.length === 1 ? 'is' : 'are'} typing…` : ''}
        </p>
        <form onSubmit={send} className="composer">
          <input
            value={text}
            onChange={(e) => {
              setText(e.target.value);
              if (e.target.value) typing.input();
              else typing.done();
            }}
            placeholder={`Message #${room}`}
            maxLength={2000}
            data-testid="message-input"
          />
          <button type="submit" disabled={pending || !text.trim()} data-testid="send">
            Send
          </button>
        </form>
        {error && (
          <p className="error" data-testid="send-error">
            {error}
          </p>
        )}
      </main>
    </div>
  );
}
