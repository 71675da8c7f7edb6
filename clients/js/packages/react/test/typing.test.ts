import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { TypingTracker } from '../src/core/typing.js';
import type { TypingSignal } from '../src/core/typing.js';

const me = { client: 'c-me', user: 'me' };
const info = (client: string, user = '') => ({ client, user });

describe('TypingTracker', () => {
  let sent: TypingSignal[];
  let tracker: TypingTracker;

  beforeEach(() => {
    vi.useFakeTimers();
    sent = [];
    tracker = new TypingTracker(
      async (s) => {
        sent.push(s);
      },
      () => me,
      { throttle: 2000, idle: 3000, ttl: 5000, name: 'Me' },
    );
  });
  afterEach(() => {
    tracker.stop();
    vi.useRealTimers();
  });

  it('sends one start signal per throttle window while typing goes on', () => {
    tracker.input();
    for (let i = 0; i < 10; i++) {
      vi.advanceTimersByTime(150);
      tracker.input();
    }
    expect(sent).toEqual([{ typing: true, name: 'Me' }]);
    vi.advanceTimersByTime(600); // 2100 ms after the first signal
    tracker.input();
    expect(sent).toEqual([{ typing: true, name: 'Me' }, { typing: true, name: 'Me' }]);
  });

  it('sends a stop signal after the idle time, and on done() only when typing', () => {
    tracker.input();
    vi.advanceTimersByTime(2999);
    expect(sent.map((s) => s.typing)).toEqual([true]);
    vi.advanceTimersByTime(1);
    expect(sent.map((s) => s.typing)).toEqual([true, false]);
    tracker.done();
    expect(sent.map((s) => s.typing)).toEqual([true, false]);
    tracker.input();
    tracker.done();
    expect(sent.map((s) => s.typing)).toEqual([true, false, true, false]);
  });

  it('shows others typing until their stop signal or the ttl, never ourselves', () => {
    tracker.handle({ data: { typing: true, name: 'Me' }, info: info('c-me', 'me') });
    tracker.handle({ data: { typing: true, name: 'Me in another tab' }, info: info('c-other-tab', 'me') });
    expect(tracker.store.get()).toEqual([]);

    tracker.handle({ data: { typing: true, name: 'Ann' }, info: info('c-ann', 'ann') });
    tracker.handle({ data: { typing: true }, info: info('c-anon') });
    expect(tracker.store.get().map((t) => [t.key, t.name])).toEqual([
      ['ann', 'Ann'],
      ['c-anon', ''],
    ]);
    tracker.handle({ data: { typing: false }, info: info('c-ann', 'ann') });
    expect(tracker.store.get().map((t) => t.key)).toEqual(['c-anon']);

    vi.advanceTimersByTime(4999);
    expect(tracker.store.get().map((t) => t.key)).toEqual(['c-anon']);
    vi.advanceTimersByTime(2);
    expect(tracker.store.get()).toEqual([]);
  });

  it('a new start signal extends the expiry', () => {
    tracker.handle({ data: { typing: true }, info: info('c-bob', 'bob') });
    vi.advanceTimersByTime(4000);
    tracker.handle({ data: { typing: true }, info: info('c-bob', 'bob') });
    vi.advanceTimersByTime(4000);
    expect(tracker.store.get().map((t) => t.key)).toEqual(['bob']);
    vi.advanceTimersByTime(1001);
    expect(tracker.store.get()).toEqual([]);
  });

  it('ignores malformed signals and signals without publisher info', () => {
    tracker.handle({ data: 'typing', info: info('c-x') });
    tracker.handle({ data: { typing: 'yes' }, info: info('c-x') });
    tracker.handle({ data: null, info: info('c-x') });
    tracker.handle({ data: { typing: true } });
    expect(tracker.store.get()).toEqual([]);
  });

  it('tracks at most maxTypists people', () => {
    const small = new TypingTracker(async () => {}, () => me, { maxTypists: 3 });
    for (let i = 0; i < 10; i++) small.handle({ data: { typing: true }, info: info(`c-${i}`) });
    expect(small.store.get()).toHaveLength(3);
    small.stop();
  });

  it('a failing publish does not throw or reject unhandled', async () => {
    const failing = new TypingTracker(() => Promise.reject(new Error('offline')), () => me);
    expect(() => failing.input()).not.toThrow();
    failing.stop();
  });
});
