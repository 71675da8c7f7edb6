// What a subscription has received: publications (optionally prefilled from history),
// its state, and what the last resubscribe recovered.

import type { PublicationContext, SubscribedContext, Subscription, SubscriptionErrorContext } from 'centrifuge';

import { Store } from './store.js';

/** A publication as the feed keeps it. */
export interface Publication {
  data: unknown;
  /** Position in the channel's stream, when the channel keeps history. */
  offset?: number;
  /** Who published it (absent for server-API publications). */
  info?: PublicationContext['info'];
  tags?: Record<string, string>;
  /** Which stream the offset belongs to: 0 at first, one more each time the stream was reset (see {@link Recovery.lost}). */
  era: number;
}

/** What the last resubscribe after a lost connection brought back. */
export interface Recovery {
  /** The client asked the server to recover from its last position. */
  wasRecovering: boolean;
  /** Nothing was lost: every missed publication came back. */
  recovered: boolean;
  /** How many missed publications came back with the resubscribe. */
  count: number;
  /** The stream was reset (a new epoch, e.g. the server restarted with a memory engine) or its history no longer reached back far enough: missed publications may be gone, the list was refilled from history where enabled. */
  lost: boolean;
  /** When it happened (ms since the epoch). */
  at: number;
}

export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

export interface FeedSnapshot {
  state: SubscriptionState;
  /** Oldest first, at most `maxPublications`. */
  publications: readonly Publication[];
  /** Set after every resubscribe that tried to recover (null before the first one). */
  recovery: Recovery | null;
  /** True while the subscription is being re-established after having been subscribed. */
  interrupted: boolean;
  error: Error | null;
  /** The history prefill is done (or not asked for). */
  historyLoaded: boolean;
}

export interface FeedOptions {
  /** Publications kept (oldest dropped first). Default 500. */
  maxPublications?: number;
  /** Prefill with this many publications from history on the first subscribe, and again if recovery fails. 0 (default) for none. */
  historyLimit?: number;
}

function toPublication(ctx: Pick<PublicationContext, 'data' | 'offset' | 'info' | 'tags'>, era: number): Publication {
  const p: Publication = { data: ctx.data, era };
  if (ctx.offset !== undefined) p.offset = Number(ctx.offset);
  if (ctx.info !== undefined) p.info = ctx.info;
  if (ctx.tags !== undefined) p.tags = ctx.tags;
  return p;
}

/**
 * Merges two lists: publications with offsets ordered by (era, offset) with duplicates
 * dropped; those without an offset (channels without history) keep their place after
 * everything that came before them. Keeps the newest `max`.
 */
export function mergePublications(a: readonly Publication[], b: readonly Publication[], max: number): Publication[] {
  const seen = new Set<string>();
  const out: Publication[] = [];
  for (const p of [...a, ...b]) {
    if (p.offset !== undefined && p.offset > 0) {
      const key = `${p.era}:${p.offset}`;
      if (seen.has(key)) continue;
      seen.add(key);
    }
    out.push(p);
  }
  // A stable sort that moves only the positioned ones: each publication without an
  // offset sorts as if it had the position of the positioned one before it.
  let era = 0;
  let offset = 0;
  const keyed = out.map((p, i) => {
    if (p.offset !== undefined && p.offset > 0) {
      era = p.era;
      offset = p.offset;
    }
    return { p, era, offset, i };
  });
  keyed.sort((x, y) => x.era - y.era || x.offset - y.offset || x.i - y.i);
  const all = keyed.map((k) => k.p);
  return all.length > max ? all.slice(all.length - max) : all;
}

export class ChannelFeed {
  readonly store: Store<FeedSnapshot>;
  private readonly max: number;
  private historyLimit: number;
  private counting: { count: number; ctx: SubscribedContext } | null = null;
  private everSubscribed = false;
  private era = 0;
  private readonly listeners = new Set<(pub: Publication) => void>();
  private stopped = false;

  constructor(private readonly sub: Subscription, options: FeedOptions = {}) {
    this.max = options.maxPublications ?? 500;
    this.historyLimit = options.historyLimit ?? 0;
    this.store = new Store<FeedSnapshot>({
      state: sub.state as SubscriptionState,
      publications: [],
      recovery: null,
      interrupted: false,
      error: null,
      historyLoaded: this.historyLimit === 0,
    });
    sub.on('subscribing', this.onSubscribing);
    sub.on('subscribed', this.onSubscribed);
    sub.on('unsubscribed', this.onUnsubscribed);
    sub.on('publication', this.onPublication);
    sub.on('error', this.onError);
    if (sub.state === 'subscribed' && this.historyLimit > 0) void this.loadHistory();
  }

  /** Asks for a history prefill of at least `limit` publications (once subscribed). */
  wantHistory(limit: number): void {
    if (limit <= this.historyLimit) return;
    this.historyLimit = limit;
    this.store.update((s) => ({ ...s, historyLoaded: false }));
    if (this.sub.state === 'subscribed') void this.loadHistory();
  }

  /** Calls `listener` with every live or recovered publication as it arrives (not history). Returns the function that stops it. */
  listen(listener: (pub: Publication) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  stop(): void {
    this.stopped = true;
    this.listeners.clear();
    this.sub.removeListener('subscribing', this.onSubscribing);
    this.sub.removeListener('subscribed', this.onSubscribed);
    this.sub.removeListener('unsubscribed', this.onUnsubscribed);
    this.sub.removeListener('publication', this.onPublication);
    this.sub.removeListener('error', this.onError);
  }

  private async loadHistory(): Promise<void> {
    const limit = this.historyLimit;
    if (limit <= 0) return;
    const era = this.era;
    try {
      const result = await this.sub.history({ limit, reverse: true });
      if (this.stopped || era !== this.era) return;
      const pubs = result.publications.map((p) => toPublication(p, era)).reverse();
      this.store.update((s) => ({ ...s, publications: mergePublications(s.publications, pubs, this.max), historyLoaded: true }));
    } catch (err) {
      if (this.stopped) return;
      this.store.update((s) => ({ ...s, historyLoaded: true, error: err instanceof Error ? err : new Error(describe(err)) }));
    }
  }

  private onSubscribing = (): void => {
    this.store.update((s) => ({ ...s, state: 'subscribing', interrupted: this.everSubscribed }));
  };

  private onSubscribed = (ctx: SubscribedContext): void => {
    const first = !this.everSubscribed;
    this.everSubscribed = true;
    this.store.update((s) => ({ ...s, state: 'subscribed', interrupted: false, error: null }));
    if (ctx.wasRecovering) {
      // What a reset stream holds is not what the old one held under the same offsets:
      // keep what we have and put the new stream's publications after it.
      if (!ctx.recovered) this.era += 1;
      // centrifuge-js hands over the recovered publications right after this event, in
      // the same task: count them, then report.
      this.counting = { count: 0, ctx };
      queueMicrotask(() => this.finishRecovery());
    } else if (first && this.historyLimit > 0) {
      void this.loadHistory();
    }
  };

  private finishRecovery(): void {
    const counting = this.counting;
    this.counting = null;
    if (!counting || this.stopped) return;
    const { ctx, count } = counting;
    const lost = !ctx.recovered;
    this.store.update((s) => ({
      ...s,
      recovery: { wasRecovering: true, recovered: ctx.recovered, count, lost, at: Date.now() },
    }));
    if (lost && this.historyLimit > 0) void this.loadHistory();
  }

  private onUnsubscribed = (): void => {
    this.store.update((s) => ({ ...s, state: 'unsubscribed', interrupted: false }));
  };

  private onPublication = (ctx: PublicationContext): void => {
    if (this.counting) this.counting.count += 1;
    const pub = toPublication(ctx, this.era);
    this.store.update((s) => ({ ...s, publications: mergePublications(s.publications, [pub], this.max) }));
    for (const listener of [...this.listeners]) {
      try {
        listener(pub);
      } catch (err) {
        // One failing listener must not stop the others or the feed.
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  };

  private onError = (ctx: SubscriptionErrorContext): void => {
    this.store.update((s) => ({ ...s, error: new Error(`${ctx.type}: ${describe(ctx.error)}`) }));
  };
}

function describe(err: unknown): string {
  if (err && typeof err === 'object' && 'message' in err) {
    const e = err as { code?: unknown; message?: unknown };
    return e.code !== undefined ? `${String(e.message)} (code ${String(e.code)})` : String(e.message);
  }
  return String(err);
}
