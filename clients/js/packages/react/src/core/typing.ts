// "… is typing": throttled start/stop signals going out, an expiring set coming in.
//
// Signals are publications on a typing channel (one that keeps no history, so they are
// never replayed): `{ typing: true, name }` while someone types, at most once per
// `throttle` ms, and `{ typing: false }` when they stop (sent, cleared the box, or went
// idle for `idle` ms). Whoever misses the stop signal still forgets the typist `ttl` ms
// after their last start signal.

import type { PublicationContext } from 'centrifuge';

import { Store } from './store.js';

export interface TypingOptions {
  /** Minimum milliseconds between two start signals while typing goes on. Default 2000. */
  throttle?: number;
  /** Milliseconds without input after which a stop signal goes out. Default 3000. */
  idle?: number;
  /** Milliseconds after a start signal that a typist is forgotten without a new one. Default 5000 (keep it above `throttle`). */
  ttl?: number;
  /** Sent with start signals so others can show a name (optional). */
  name?: string;
  /** At most this many typists are tracked. Default 50. */
  maxTypists?: number;
}

/** Who we are, so our own signals are not shown to us. */
export interface Self {
  client: string | null;
  user: string | null;
}

export interface Typist {
  /** The user id when the connection has one, else the client id. */
  key: string;
  user: string;
  client: string;
  /** The name sent with the signal, or the user id, or ''. */
  name: string;
  /** When this entry expires (ms since the epoch). */
  expiresAt: number;
}

/** What a typing signal carries. */
export interface TypingSignal {
  typing: boolean;
  name?: string;
}

export class TypingTracker {
  readonly store = new Store<readonly Typist[]>([]);
  private readonly typists = new Map<string, Typist>();
  private readonly throttle: number;
  private readonly idle: number;
  private readonly ttl: number;
  private readonly max: number;
  private name: string | undefined;
  private lastStart = -Infinity;
  private typing = false;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;
  private expiryTimer: ReturnType<typeof setTimeout> | null = null;
  private stopped = false;

  constructor(
    private readonly send: (signal: TypingSignal) => Promise<unknown>,
    private readonly self: () => Self,
    options: TypingOptions = {},
  ) {
    this.throttle = options.throttle ?? 2000;
    this.idle = options.idle ?? 3000;
    this.ttl = options.ttl ?? 5000;
    this.max = options.maxTypists ?? 50;
    this.name = options.name;
  }

  setName(name: string | undefined): void {
    this.name = name;
  }

  /** Call on every keystroke (or change of the input). Sends a start signal when due. */
  input(): void {
    if (this.stopped) return;
    const now = Date.now();
    if (!this.typing || now - this.lastStart >= this.throttle) {
      this.typing = true;
      this.lastStart = now;
      const signal: TypingSignal = { typing: true };
      if (this.name) signal.name = this.name;
      this.emit(signal);
    }
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.done(), this.idle);
  }

  /** Call when the user sent their message or cleared the input: sends a stop signal if one is due. */
  done(): void {
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (!this.typing || this.stopped) return;
    this.typing = false;
    this.lastStart = -Infinity;
    this.emit({ typing: false });
  }

  /** Feed every publication of the typing channel here. */
  handle(pub: Pick<PublicationContext, 'data' | 'info'>): void {
    if (this.stopped) return;
    const data = pub.data as Partial<TypingSignal> | null | undefined;
    const info = pub.info;
    if (!info || !data || typeof data !== 'object' || typeof data.typing !== 'boolean') return;
    const me = this.self();
    if (me.client && info.client === me.client) return;
    if (me.user && info.user === me.user) return;
    const key = info.user || info.client;
    if (!data.typing) {
      if (this.typists.delete(key)) this.publish();
      return;
    }
    if (!this.typists.has(key) && this.typists.size >= this.max) return;
    const name = typeof data.name === 'string' ? data.name.slice(0, 100) : info.user || '';
    this.typists.set(key, { key, user: info.user || '', client: info.client, name, expiresAt: Date.now() + this.ttl });
    this.publish();
  }

  /** Forgets someone now (e.g. when their message arrives, or they leave). */
  forget(key: string): void {
    if (this.typists.delete(key)) this.publish();
  }

  /** Stops timers; sends a last stop signal if we were typing. */
  stop(): void {
    this.done();
    this.stopped = true;
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer);
    this.expiryTimer = null;
  }

  private emit(signal: TypingSignal): void {
    // A lost typing signal is harmless (the ttl covers it); never let it reject unhandled.
    this.send(signal).catch(() => {});
  }

  private publish(): void {
    const now = Date.now();
    for (const [key, t] of this.typists) if (t.expiresAt <= now) this.typists.delete(key);
    this.store.set([...this.typists.values()]);
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer);
    this.expiryTimer = null;
    if (this.typists.size > 0 && !this.stopped) {
      const next = Math.min(...[...this.typists.values()].map((t) => t.expiresAt));
      this.expiryTimer = setTimeout(() => this.publish(), Math.max(0, next - now) + 1);
    }
  }
}
