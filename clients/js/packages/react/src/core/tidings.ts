// One shared centrifuge-js client: its connection state as a store, and a registry of
// channel subscriptions shared by reference count, so that several users of one channel
// (or a component mounted twice in a row, as React's StrictMode does) make one
// subscription on the server.

import type { Centrifuge, Subscription, SubscriptionOptions } from 'centrifuge';

import { createCentrifuge } from './client.js';
import type { ClientOptions } from './client.js';
import type { TransportName } from './endpoints.js';
import { ChannelFeed } from './feed.js';
import type { FeedOptions } from './feed.js';
import { PresenceTracker } from './presence.js';
import type { PresenceOptions } from './presence.js';
import { Store } from './store.js';

export type ConnectionState = 'disconnected' | 'connecting' | 'connected';

export interface ConnectionSnapshot {
  state: ConnectionState;
  /** Connecting again after having been connected (the badge's "reconnecting"). */
  reconnecting: boolean;
  /** The server's id for this connection, while connected. */
  client: string | null;
  /** The transport of the current (or last) connection, including `long_poll`. */
  transport: TransportName | null;
  /** Why the last connection ended or failed, if it did. */
  lastError: { code: number; reason: string } | null;
  /** How many times a connection was established. */
  connects: number;
}

const INITIAL: ConnectionSnapshot = {
  state: 'disconnected',
  reconnecting: false,
  client: null,
  transport: null,
  lastError: null,
  connects: 0,
};

/** The connection snapshot before anything happened (also what server rendering sees). */
export const initialConnection: ConnectionSnapshot = INITIAL;

interface Entry {
  sub: Subscription;
  refs: number;
  feed: ChannelFeed | null;
  presence: PresenceTracker | null;
  releaseTimer: ReturnType<typeof setTimeout> | null;
}

/** A counted hold on one channel's subscription. Call `release()` exactly once. */
export interface Lease {
  readonly channel: string;
  readonly subscription: Subscription;
  /** The channel's feed (shared by every lease of the channel). */
  feed(options?: FeedOptions): ChannelFeed;
  /** The channel's presence tracker (shared by every lease of the channel). */
  presence(options?: PresenceOptions): PresenceTracker;
  release(): void;
}

export interface TidingsOptions extends ClientOptions {
  /** Milliseconds a channel nobody holds stays subscribed, in case someone takes it again. Default 0 (until the next task). */
  lingerMs?: number;
}

export class Tidings {
  readonly centrifuge: Centrifuge;
  readonly connection = new Store<ConnectionSnapshot>(INITIAL);
  private readonly entries = new Map<string, Entry>();
  private readonly linger: number;
  private holds = 0;
  private disconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private lastTransport: TransportName | null = null;

  constructor(options: TidingsOptions) {
    this.linger = options.lingerMs ?? 0;
    this.centrifuge = createCentrifuge({ ...options, onSocket: (kind) => (this.lastTransport = kind) });
    const c = this.centrifuge;
    c.on('connecting', (ctx) => {
      this.connection.update((s) => ({
        ...s,
        state: 'connecting',
        reconnecting: s.connects > 0,
        client: null,
        lastError: ctx.code >= 3000 || s.state === 'connected' ? { code: ctx.code, reason: ctx.reason } : s.lastError,
      }));
    });
    c.on('connected', (ctx) => {
      const transport = ctx.transport === 'websocket' && this.lastTransport === 'long_poll' ? 'long_poll' : (ctx.transport as TransportName);
      this.connection.update((s) => ({
        ...s,
        state: 'connected',
        reconnecting: false,
        client: ctx.client,
        transport,
        connects: s.connects + 1,
      }));
    });
    c.on('disconnected', (ctx) => {
      this.connection.update((s) => ({
        ...s,
        state: 'disconnected',
        reconnecting: false,
        client: null,
        lastError: { code: ctx.code, reason: ctx.reason },
      }));
    });
  }

  /** The id of our connection, while connected. */
  get clientId(): string | null {
    return this.connection.get().client;
  }

  /**
   * Connects, and returns a function that lets go of the connection again. The client
   * disconnects once every holder let go, after the current task, so that an unmount
   * followed at once by a mount (StrictMode) never drops the connection.
   */
  hold(): () => void {
    this.holds += 1;
    if (this.disconnectTimer !== null) {
      clearTimeout(this.disconnectTimer);
      this.disconnectTimer = null;
    }
    if (this.centrifuge.state === 'disconnected') this.centrifuge.connect();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.holds -= 1;
      if (this.holds > 0) return;
      this.disconnectTimer = setTimeout(() => {
        this.disconnectTimer = null;
        if (this.holds === 0) this.centrifuge.disconnect();
      }, this.linger);
    };
  }

  /**
   * Takes a hold on `channel`'s subscription, creating and subscribing it if nobody holds
   * it. `options` apply only when the subscription is created.
   */
  acquire(channel: string, options?: Partial<SubscriptionOptions>): Lease {
    let entry = this.entries.get(channel);
    if (!entry) {
      const existing = this.centrifuge.getSubscription(channel);
      const sub = existing ?? this.centrifuge.newSubscription(channel, options);
      entry = { sub, refs: 0, feed: null, presence: null, releaseTimer: null };
      this.entries.set(channel, entry);
    }
    if (entry.releaseTimer !== null) {
      clearTimeout(entry.releaseTimer);
      entry.releaseTimer = null;
    }
    entry.refs += 1;
    if (entry.sub.state === 'unsubscribed') entry.sub.subscribe();
    const held = entry;
    let released = false;
    return {
      channel,
      subscription: held.sub,
      feed: (feedOptions) => {
        if (!held.feed) held.feed = new ChannelFeed(held.sub, feedOptions);
        else if (feedOptions?.historyLimit) held.feed.wantHistory(feedOptions.historyLimit);
        return held.feed;
      },
      presence: (presenceOptions) => {
        if (!held.presence) held.presence = new PresenceTracker(held.sub, presenceOptions);
        return held.presence;
      },
      release: () => {
        if (released) return;
        released = true;
        this.release(channel, held);
      },
    };
  }

  /** How many holds `channel` has (for tests and debugging). */
  refCount(channel: string): number {
    return this.entries.get(channel)?.refs ?? 0;
  }

  private release(channel: string, entry: Entry): void {
    entry.refs -= 1;
    if (entry.refs > 0) return;
    entry.releaseTimer = setTimeout(() => {
      entry.releaseTimer = null;
      if (entry.refs > 0 || this.entries.get(channel) !== entry) return;
      this.entries.delete(channel);
      entry.feed?.stop();
      entry.presence?.stop();
      entry.sub.unsubscribe();
      this.centrifuge.removeSubscription(entry.sub);
    }, this.linger);
  }
}
