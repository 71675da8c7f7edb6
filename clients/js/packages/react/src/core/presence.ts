// The live member list of a channel: a presence call on every (re)subscribe and then
// periodically, with join and leave pushes applied in between.

import type { ClientInfo, JoinContext, LeaveContext, PresenceResult } from 'centrifuge';

import { Store } from './store.js';

/** The part of a centrifuge-js Subscription the tracker uses. */
export interface PresenceSource {
  on(event: 'join', fn: (ctx: JoinContext) => void): unknown;
  on(event: 'leave', fn: (ctx: LeaveContext) => void): unknown;
  on(event: 'subscribed', fn: () => void): unknown;
  removeListener(event: string, fn: (...args: never[]) => void): unknown;
  presence(): Promise<PresenceResult>;
  readonly state: string;
}

export interface PresenceOptions {
  /** Milliseconds between full presence refreshes. Default 30 000; 0 turns them off. */
  refreshInterval?: number;
  /** At most this many connections are kept (the rest are ignored). Default 1000. */
  maxMembers?: number;
}

/** One connection in the channel. */
export interface Member {
  client: string;
  user: string;
  connInfo?: unknown;
  chanInfo?: unknown;
}

export interface PresenceSnapshot {
  /** Every connection present, in order of arrival (joins after the last refresh last). */
  members: readonly Member[];
  /** Distinct non-empty user ids among `members`, in the same order. */
  users: readonly string[];
  /** Whether at least one presence call has answered. */
  loaded: boolean;
  /** The error of the last presence call, if it failed. */
  error: Error | null;
}

const EMPTY: PresenceSnapshot = { members: [], users: [], loaded: false, error: null };

function toMember(info: ClientInfo): Member {
  const m: Member = { client: info.client, user: info.user ?? '' };
  if (info.connInfo !== undefined) m.connInfo = info.connInfo;
  if (info.chanInfo !== undefined) m.chanInfo = info.chanInfo;
  return m;
}

export class PresenceTracker {
  readonly store = new Store<PresenceSnapshot>(EMPTY);
  private members = new Map<string, Member>();
  private readonly refreshMs: number;
  private readonly max: number;
  private timer: ReturnType<typeof setInterval> | null = null;
  private inflight = 0;
  // Joins and leaves seen while a presence call is in flight: its answer may predate them.
  private pending: Array<['join' | 'leave', Member]> = [];
  private stopped = false;

  constructor(private readonly source: PresenceSource, options: PresenceOptions = {}) {
    this.refreshMs = options.refreshInterval ?? 30_000;
    this.max = options.maxMembers ?? 1000;
    source.on('join', this.onJoin);
    source.on('leave', this.onLeave);
    source.on('subscribed', this.onSubscribed);
    if (this.refreshMs > 0) this.timer = setInterval(() => void this.refresh(), this.refreshMs);
    if (source.state === 'subscribed') void this.refresh();
  }

  /** Asks the server for the full list now. */
  async refresh(): Promise<void> {
    if (this.stopped || this.source.state !== 'subscribed') return;
    this.inflight += 1;
    let result: PresenceResult;
    try {
      result = await this.source.presence();
    } catch (err) {
      this.inflight -= 1;
      if (!this.stopped) this.store.update((s) => ({ ...s, error: err instanceof Error ? err : new Error(String(err)) }));
      return;
    }
    this.inflight -= 1;
    if (this.stopped) return;
    const next = new Map<string, Member>();
    for (const info of Object.values(result.clients ?? {})) {
      if (next.size >= this.max) break;
      next.set(info.client, toMember(info));
    }
    for (const [kind, member] of this.pending) this.apply(next, kind, member);
    if (this.inflight === 0) this.pending = [];
    this.members = next;
    this.publish(true);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.source.removeListener('join', this.onJoin);
    this.source.removeListener('leave', this.onLeave);
    this.source.removeListener('subscribed', this.onSubscribed);
  }

  private apply(map: Map<string, Member>, kind: 'join' | 'leave', member: Member): void {
    if (kind === 'leave') map.delete(member.client);
    else if (map.has(member.client) || map.size < this.max) map.set(member.client, member);
  }

  private event(kind: 'join' | 'leave', info: ClientInfo): void {
    const member = toMember(info);
    if (this.inflight > 0) {
      this.pending.push([kind, member]);
      if (this.pending.length > this.max * 2) this.pending.shift();
    }
    this.apply(this.members, kind, member);
    this.publish(this.store.get().loaded);
  }

  private onJoin = (ctx: JoinContext): void => this.event('join', ctx.info);
  private onLeave = (ctx: LeaveContext): void => this.event('leave', ctx.info);
  private onSubscribed = (): void => void this.refresh();

  private publish(loaded: boolean): void {
    const members = [...this.members.values()];
    const users: string[] = [];
    for (const m of members) if (m.user && !users.includes(m.user)) users.push(m.user);
    this.store.set({ members, users, loaded, error: null });
  }
}
