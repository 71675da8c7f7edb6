import { EventEmitter } from 'node:events';

import { afterEach, describe, expect, it, vi } from 'vitest';

import { PresenceTracker } from '../src/core/presence.js';
import type { PresenceSource } from '../src/core/presence.js';

type Clients = Record<string, { client: string; user: string }>;

/** A subscription-shaped emitter whose presence() answers are released by the test. */
class FakeSub extends EventEmitter {
  state = 'subscribed';
  calls: Array<(clients: Clients) => void> = [];
  presence() {
    return new Promise<{ clients: Clients }>((resolve) => this.calls.push((clients) => resolve({ clients })));
  }
  answer(clients: Clients) {
    const next = this.calls.shift();
    if (!next) throw new Error('no presence call pending');
    next(clients);
  }
}

const c = (client: string, user = '') => ({ client, user });
const flush = () => new Promise((r) => setTimeout(r, 0));

describe('PresenceTracker', () => {
  afterEach(() => vi.useRealTimers());

  it('loads members, then applies joins and leaves', async () => {
    const sub = new FakeSub();
    const t = new PresenceTracker(sub as unknown as PresenceSource, { refreshInterval: 0 });
    expect(t.store.get().loaded).toBe(false);
    sub.answer({ a: c('a', 'ann'), b: c('b', 'bob') });
    await flush();
    expect(t.store.get().members.map((m) => m.client)).toEqual(['a', 'b']);
    expect(t.store.get().users).toEqual(['ann', 'bob']);
    sub.emit('join', { channel: 'x', info: c('c', 'ann') });
    expect(t.store.get().members.map((m) => m.client)).toEqual(['a', 'b', 'c']);
    expect(t.store.get().users).toEqual(['ann', 'bob']);
    sub.emit('leave', { channel: 'x', info: c('a', 'ann') });
    expect(t.store.get().members.map((m) => m.client)).toEqual(['b', 'c']);
    t.stop();
    sub.emit('join', { channel: 'x', info: c('d') });
    expect(t.store.get().members.map((m) => m.client)).toEqual(['b', 'c']);
  });

  it('a leave that arrives while a refresh is in flight is not undone by its answer', async () => {
    const sub = new FakeSub();
    const t = new PresenceTracker(sub as unknown as PresenceSource, { refreshInterval: 0 });
    sub.emit('leave', { channel: 'x', info: c('a') });
    sub.emit('join', { channel: 'x', info: c('z') });
    sub.answer({ a: c('a'), b: c('b') }); // taken before the leave of a and the join of z
    await flush();
    expect(t.store.get().members.map((m) => m.client).sort()).toEqual(['b', 'z']);
    t.stop();
  });

  it('refreshes on every resubscribe and periodically', async () => {
    vi.useFakeTimers();
    const sub = new FakeSub();
    const t = new PresenceTracker(sub as unknown as PresenceSource, { refreshInterval: 1000 });
    expect(sub.calls).toHaveLength(1);
    sub.answer({ a: c('a') });
    await vi.advanceTimersByTimeAsync(1000);
    expect(sub.calls).toHaveLength(1);
    sub.answer({ b: c('b') }); // a left without us seeing the leave push
    await vi.advanceTimersByTimeAsync(0);
    expect(t.store.get().members.map((m) => m.client)).toEqual(['b']);
    sub.emit('subscribed', {});
    expect(sub.calls).toHaveLength(1);
    sub.answer({});
    await vi.advanceTimersByTimeAsync(0);
    expect(t.store.get().members).toEqual([]);
    t.stop();
    await vi.advanceTimersByTimeAsync(5000);
    expect(sub.calls).toHaveLength(0);
  });

  it('keeps at most maxMembers and reports a failed call', async () => {
    const sub = new FakeSub();
    const t = new PresenceTracker(sub as unknown as PresenceSource, { refreshInterval: 0, maxMembers: 2 });
    sub.answer({ a: c('a'), b: c('b'), c: c('c') });
    await flush();
    sub.emit('join', { channel: 'x', info: c('d') });
    expect(t.store.get().members).toHaveLength(2);
    (sub as unknown as { presence: () => Promise<never> }).presence = () => Promise.reject(new Error('permission denied'));
    await t.refresh();
    expect(t.store.get().error?.message).toBe('permission denied');
    t.stop();
  });
});
