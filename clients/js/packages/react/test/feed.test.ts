import { describe, expect, it } from 'vitest';

import { mergePublications } from '../src/core/feed.js';
import type { Publication } from '../src/core/feed.js';
import { endpointsFor } from '../src/core/endpoints.js';
import { transportList } from '../src/core/client.js';

const p = (offset: number | undefined, data: string, era = 0): Publication =>
  offset === undefined ? { data, era } : { data, offset, era };

describe('mergePublications', () => {
  it('orders by offset and drops duplicates (history overlapping live publications)', () => {
    const live = [p(4, 'd'), p(5, 'e')];
    const history = [p(2, 'b'), p(3, 'c'), p(4, 'd')];
    expect(mergePublications(live, history, 100).map((x) => x.data)).toEqual(['b', 'c', 'd', 'e']);
  });

  it('puts a reset stream (next era) after the old one even though its offsets start again', () => {
    const before = [p(7, 'old7'), p(8, 'old8')];
    const after = [p(1, 'new1'), p(2, 'new2')].map((x) => ({ ...x, era: 1 }));
    expect(mergePublications(before, after, 100).map((x) => x.data)).toEqual(['old7', 'old8', 'new1', 'new2']);
  });

  it('keeps publications without offsets in arrival order after what came before them', () => {
    expect(mergePublications([p(1, 'a'), p(undefined, 'x'), p(2, 'b')], [p(undefined, 'y')], 100).map((x) => x.data)).toEqual([
      'a',
      'x',
      'b',
      'y',
    ]);
  });

  it('keeps the newest max', () => {
    const many = Array.from({ length: 10 }, (_, i) => p(i + 1, String(i + 1)));
    expect(mergePublications(many, [], 3).map((x) => x.data)).toEqual(['8', '9', '10']);
  });
});

describe('endpoints', () => {
  it('derives every transport from a base URL', () => {
    expect(endpointsFor('http://localhost:8000')).toEqual({
      websocket: 'ws://localhost:8000/connection/websocket',
      http_stream: 'http://localhost:8000/connection/http_stream',
      sse: 'http://localhost:8000/connection/sse',
      long_poll: 'http://localhost:8000/connection/long_poll',
      emulation: 'http://localhost:8000/emulation',
    });
    expect(endpointsFor('wss://chat.example.com/rt/connection/websocket').sse).toBe('https://chat.example.com/rt/connection/sse');
    expect(endpointsFor('/', 'https://example.org/app/page').websocket).toBe('wss://example.org/connection/websocket');
  });

  it('puts long polling behind the websocket transport of centrifuge-js', () => {
    expect(transportList('http://h:1', ['sse', 'long_poll'])).toEqual([
      { transport: 'sse', endpoint: 'http://h:1/connection/sse' },
      { transport: 'websocket', endpoint: 'http://h:1/connection/long_poll' },
    ]);
  });
});
