'use client';

import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react';
import type { Centrifuge, PublicationContext, PublishResult, SubscriptionOptions } from 'centrifuge';

import type { FeedSnapshot, Publication } from './core/feed.js';
import type { ChannelFeed } from './core/feed.js';
import type { PresenceSnapshot, PresenceTracker } from './core/presence.js';
import { OnlineStatuses } from './core/status.js';
import type { OnlineStatusOptions, UserStatus } from './core/status.js';
import type { Store } from './core/store.js';
import { initialConnection } from './core/tidings.js';
import type { ConnectionSnapshot, Tidings } from './core/tidings.js';
import { TypingTracker } from './core/typing.js';
import type { Typist, TypingOptions } from './core/typing.js';
import { useTidingsClient } from './provider.js';

const noSubscribe = () => () => {};

/** Reads a store that may not exist yet (server rendering, first render): `fallback` then. */
function useStore<T>(store: Store<T> | null | undefined, fallback: T): T {
  return useSyncExternalStore(
    store ? store.subscribe : noSubscribe,
    store ? store.get : () => fallback,
    () => fallback,
  );
}

function notConnected(): Promise<never> {
  return Promise.reject(new Error('Tidings: no client yet (outside a TidingsProvider, or during server rendering)'));
}

export interface UseTidingsResult extends ConnectionSnapshot {
  /** The shared core client (null during server rendering and before the provider's first effect). */
  tidings: Tidings | null;
  /** The shared centrifuge-js client, for anything the hooks do not cover (RPC, ...). */
  centrifuge: Centrifuge | null;
}

/** The shared connection: its state and the client. */
export function useTidings(): UseTidingsResult {
  const tidings = useTidingsClient();
  const snapshot = useStore(tidings?.connection, initialConnection);
  return { ...snapshot, tidings, centrifuge: tidings?.centrifuge ?? null };
}

export interface UseSubscriptionOptions {
  /** Prefill the list with this many publications from history (and refill after a failed recovery). Default 0. */
  history?: number;
  /** Publications kept in memory, oldest dropped first. Default 500. */
  maxPublications?: number;
  /** centrifuge-js subscription options (token, getToken, data, delta, ...), used when the subscription is created. */
  subscription?: Partial<SubscriptionOptions>;
  /** Called for every live or recovered publication as it arrives. */
  onPublication?: (pub: Publication) => void;
}

export interface UseSubscriptionResult extends FeedSnapshot {
  /** Publishes `data` to the channel from this connection (needs publish permission on the server). */
  publish: (data: unknown) => Promise<PublishResult>;
}

const EMPTY_FEED: FeedSnapshot = {
  state: 'unsubscribed',
  publications: [],
  recovery: null,
  interrupted: false,
  error: null,
  historyLoaded: false,
};

/**
 * Holds a hold on `channel` for as long as the component is mounted and `channel` is
 * non-empty, and returns what `pick` takes from the lease.
 */
function useLease<T>(channel: string | null | undefined, make: (tidings: Tidings, lease: ReturnType<Tidings['acquire']>) => T, cleanup?: (value: T) => void, subscription?: Partial<SubscriptionOptions>): T | null {
  const tidings = useTidingsClient();
  const [held, setHeld] = useState<{ tidings: Tidings; channel: string; value: T } | null>(null);
  useEffect(() => {
    if (!tidings || !channel) {
      setHeld(null);
      return undefined;
    }
    const lease = tidings.acquire(channel, subscription);
    const value = make(tidings, lease);
    setHeld({ tidings, channel, value });
    return () => {
      cleanup?.(value);
      lease.release();
    };
    // The callbacks and options are read when the channel is taken.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [tidings, channel]);
  return held && held.tidings === tidings && held.channel === channel ? held.value : null;
}

/**
 * Subscribes to `channel` (shared with every other hook on the same channel) and returns
 * its publications, state, the outcome of the last recovery, the last error, and `publish`.
 */
export function useSubscription(channel: string | null | undefined, options: UseSubscriptionOptions = {}): UseSubscriptionResult {
  const tidings = useTidingsClient();
  const { history = 0, maxPublications, onPublication } = options;
  const feed = useLease<ChannelFeed>(channel, (_t, lease) => {
    const feedOptions: { historyLimit: number; maxPublications?: number } = { historyLimit: history };
    if (maxPublications !== undefined) feedOptions.maxPublications = maxPublications;
    return lease.feed(feedOptions);
  }, undefined, options.subscription);
  const snapshot = useStore(feed?.store, EMPTY_FEED);

  // The callback is called from the feed as publications arrive, not from renders; the
  // latest one is used without resubscribing.
  const callback = useRef(onPublication);
  callback.current = onPublication;
  useEffect(() => {
    if (!feed) return undefined;
    return feed.listen((pub) => callback.current?.(pub));
  }, [feed]);

  const publish = useCallback(
    (data: unknown) => (tidings && channel ? tidings.centrifuge.publish(channel, data) : notConnected()),
    [tidings, channel],
  );
  return useMemo(() => ({ ...snapshot, publish }), [snapshot, publish]);
}

export interface UsePresenceOptions {
  /** Milliseconds between full refreshes from the server. Default 30 000. */
  refreshInterval?: number;
}

const EMPTY_PRESENCE: PresenceSnapshot = { members: [], users: [], loaded: false, error: null };

/**
 * The live member list of `channel`: a presence call on subscribe and then every
 * `refreshInterval`, with join and leave pushes applied in between. The channel needs
 * presence on the server, and join/leave pushes (`force_push_join_leave`) to be live.
 */
export function usePresence(channel: string | null | undefined, options: UsePresenceOptions = {}): PresenceSnapshot {
  const tracker = useLease<PresenceTracker>(channel, (_t, lease) => {
    const presenceOptions: { refreshInterval?: number } = {};
    if (options.refreshInterval !== undefined) presenceOptions.refreshInterval = options.refreshInterval;
    return lease.presence(presenceOptions);
  });
  return useStore(tracker?.store, EMPTY_PRESENCE);
}

export type UseOnlineStatusOptions = OnlineStatusOptions;

const NO_STATUSES: Readonly<Record<string, UserStatus>> = {};

/**
 * The online status of each of `userIds` (the server needs `online_status` on, and the
 * status namespace must let this client subscribe and read history): whether the user
 * has a connection anywhere, and since when, or when they were last seen. Keyed by user
 * id; a user not answered yet is missing or has `loaded: false`. One subscription per
 * user, shared with every other hook that follows them.
 */
export function useOnlineStatus(
  userIds: readonly string[],
  options: UseOnlineStatusOptions = {},
): Readonly<Record<string, UserStatus>> {
  const tidings = useTidingsClient();
  // The set of users, as a stable key: a new array with the same ids changes nothing.
  const key = [...new Set(userIds.filter(Boolean))].sort().join('\n');
  const { namespace, boundary } = options;
  const [held, setHeld] = useState<OnlineStatuses | null>(null);
  useEffect(() => {
    if (!tidings || !key) {
      setHeld(null);
      return undefined;
    }
    const statusOptions: OnlineStatusOptions = {};
    if (namespace !== undefined) statusOptions.namespace = namespace;
    if (boundary !== undefined) statusOptions.boundary = boundary;
    const statuses = new OnlineStatuses((channel) => tidings.acquire(channel), key.split('\n'), statusOptions);
    setHeld(statuses);
    return () => statuses.stop();
  }, [tidings, key, namespace, boundary]);
  return useStore(held?.store, NO_STATUSES);
}

export interface UseTypingOptions extends TypingOptions {
  /** Our user id, so that our other tabs are not shown as typing either. */
  user?: string;
}

export interface UseTypingResult {
  /** Who is typing now, ourselves excluded. */
  typists: readonly Typist[];
  /** Call on every change of the input: sends a (throttled) start signal. */
  input: () => void;
  /** Call when the message went out or the input was cleared: sends a stop signal. */
  done: () => void;
}

const NO_TYPISTS: readonly Typist[] = [];

/**
 * Typing indicators over `channel` (a channel of its own that allows client publishing
 * and keeps no history, e.g. `typing:room`).
 */
export function useTyping(channel: string | null | undefined, options: UseTypingOptions = {}): UseTypingResult {
  const { name, user } = options;
  const held = useLease<{ tracker: TypingTracker; detach: () => void }>(
    channel,
    (tidings, lease) => {
      const sub = lease.subscription;
      const tracker = new TypingTracker(
        (signal) => (sub.state === 'subscribed' ? sub.publish(signal) : Promise.resolve()),
        () => ({ client: tidings.clientId, user: user ?? null }),
        options,
      );
      const onPublication = (ctx: PublicationContext) => tracker.handle(ctx);
      sub.on('publication', onPublication);
      return { tracker, detach: () => sub.removeListener('publication', onPublication) };
    },
    ({ tracker, detach }) => {
      tracker.stop();
      detach();
    },
  );
  const tracker = held?.tracker ?? null;
  useEffect(() => {
    tracker?.setName(name);
  }, [tracker, name]);
  const typists = useStore(tracker?.store, NO_TYPISTS);
  const input = useCallback(() => tracker?.input(), [tracker]);
  const done = useCallback(() => tracker?.done(), [tracker]);
  return { typists, input, done };
}

export interface UseHistoryOptions {
  /** How many of the newest publications to read. Default 50. */
  limit?: number;
}

export interface UseHistoryResult {
  /** Oldest first. */
  publications: readonly Publication[];
  loading: boolean;
  error: Error | null;
  /** Reads the history again. */
  reload: () => void;
}

/** Reads `channel`'s history once subscribed (the channel needs history and the permission to read it). */
export function useHistory(channel: string | null | undefined, options: UseHistoryOptions = {}): UseHistoryResult {
  const limit = options.limit ?? 50;
  const [state, setState] = useState<{ key: string; publications: readonly Publication[]; loading: boolean; error: Error | null }>({
    key: '',
    publications: [],
    loading: true,
    error: null,
  });
  const [generation, setGeneration] = useState(0);
  const lease = useLease(channel, (_t, l) => l);
  const key = `${channel ?? ''}|${limit}|${generation}`;
  useEffect(() => {
    if (!lease) return undefined;
    let cancelled = false;
    setState((s) => ({ ...s, key, loading: true }));
    lease.subscription.history({ limit, reverse: true }).then(
      (result) => {
        if (cancelled) return;
        const publications = result.publications
          .map((p) => {
            const pub: Publication = { data: p.data, era: 0 };
            if (p.offset !== undefined) pub.offset = Number(p.offset);
            if (p.info !== undefined) pub.info = p.info;
            if (p.tags !== undefined) pub.tags = p.tags;
            return pub;
          })
          .reverse();
        setState({ key, publications, loading: false, error: null });
      },
      (err: unknown) => {
        if (cancelled) return;
        const error = err instanceof Error ? err : new Error(String((err as { message?: unknown })?.message ?? err));
        setState({ key, publications: [], loading: false, error });
      },
    );
    return () => {
      cancelled = true;
    };
  }, [lease, key, limit]);
  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  const current = state.key === key ? state : { publications: [], loading: true, error: null };
  return { publications: current.publications, loading: current.loading, error: current.error, reload };
}
