// Users' online status (the server's `online_status`, docs/online-status.md): each
// user's status channel (`status:<user>`) carries `{user, online, at}` whenever the user
// comes online anywhere in the cluster or leaves it; its history keeps the latest one,
// which is read on every (re)subscribe.

import type { HistoryOptions, HistoryResult, PublicationContext } from 'centrifuge';

import { Store } from './store.js';
import type { Lease } from './tidings.js';

/** What the hooks tell about one user. */
export interface UserStatus {
  user: string;
  /** The user has a connection somewhere. */
  online: boolean;
  /** Unix milliseconds: since when online, or when last seen; null when never seen (within the server's history_ttl). */
  at: number | null;
  /** Whether the server has answered at least once. */
  loaded: boolean;
}

/** The part of a centrifuge-js Subscription a status tracker uses. */
export interface StatusSource {
  on(event: 'publication', fn: (ctx: PublicationContext) => void): unknown;
  on(event: 'subscribed', fn: () => void): unknown;
  removeListener(event: string, fn: (...args: never[]) => void): unknown;
  history(options: HistoryOptions): Promise<HistoryResult>;
  readonly state: string;
}

export interface OnlineStatusOptions {
  /** The namespace of the status channels (`online_status.namespace` on the server). Default `status`. */
  namespace?: string;
  /** The namespace boundary (`channel.namespace_boundary`). Default `:`. */
  boundary?: string;
}

/** Reads a status channel's publication; null when it is not one. */
function parse(user: string, data: unknown): Pick<UserStatus, 'online' | 'at'> | null {
  const d = data as { user?: unknown; online?: unknown; at?: unknown } | null;
  if (!d || d.user !== user || typeof d.online !== 'boolean') return null;
  return { online: d.online, at: typeof d.at === 'number' ? d.at : null };
}

/** One user's status, kept from their status channel. */
export class StatusTracker {
  readonly store: Store<UserStatus>;
  // Bumped by every publication: a history answer older than a live publication loses.
  private version = 0;
  private stopped = false;

  constructor(readonly user: string, private readonly source: StatusSource) {
    this.store = new Store<UserStatus>({ user, online: false, at: null, loaded: false });
    source.on('publication', this.onPublication);
    source.on('subscribed', this.onSubscribed);
    if (source.state === 'subscribed') void this.read();
  }

  stop(): void {
    this.stopped = true;
    this.source.removeListener('publication', this.onPublication);
    this.source.removeListener('subscribed', this.onSubscribed);
  }

  /** The latest status from the channel's history. */
  private async read(): Promise<void> {
    const version = this.version;
    let result: HistoryResult;
    try {
      result = await this.source.history({ limit: 1, reverse: true });
    } catch {
      // The publications still arrive; the next subscribe reads again.
      return;
    }
    if (this.stopped || version !== this.version) return;
    const latest = result.publications[0];
    const status = latest ? parse(this.user, latest.data) : null;
    this.store.set({ user: this.user, online: status?.online ?? false, at: status?.at ?? null, loaded: true });
  }

  private onPublication = (ctx: PublicationContext): void => {
    const status = parse(this.user, ctx.data);
    if (!status) return;
    this.version += 1;
    this.store.set({ user: this.user, ...status, loaded: true });
  };

  private onSubscribed = (): void => void this.read();
}

/** Holds what acquires the status channels: the core client's `acquire`. */
export type Acquire = (channel: string) => Lease;

/** The statuses of several users, as one store keyed by user id. */
export class OnlineStatuses {
  readonly store = new Store<Readonly<Record<string, UserStatus>>>({});
  private readonly held: Array<{ lease: Lease; tracker: StatusTracker; unsubscribe: () => void }> = [];

  constructor(acquire: Acquire, users: readonly string[], options: OnlineStatusOptions = {}) {
    const namespace = options.namespace ?? 'status';
    const boundary = options.boundary ?? ':';
    for (const user of new Set(users)) {
      if (!user) continue;
      const lease = acquire(`${namespace}${boundary}${user}`);
      const tracker = new StatusTracker(user, lease.subscription);
      const unsubscribe = tracker.store.subscribe(() => {
        this.store.update((all) => ({ ...all, [user]: tracker.store.get() }));
      });
      this.held.push({ lease, tracker, unsubscribe });
    }
    const all: Record<string, UserStatus> = {};
    for (const { tracker } of this.held) all[tracker.user] = tracker.store.get();
    this.store.set(all);
  }

  stop(): void {
    for (const { lease, tracker, unsubscribe } of this.held.splice(0)) {
      unsubscribe();
      tracker.stop();
      lease.release();
    }
  }
}
