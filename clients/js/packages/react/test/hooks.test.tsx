// @vitest-environment happy-dom
// The hooks against a real Tidings server (the binary, development profile): connection,
// StrictMode, publications with history prefill, recovery after a dropped connection and
// after a server restart, presence, typing, history and token refresh.

import { StrictMode } from 'react';
import type { ReactNode } from 'react';
import { act, cleanup, render, renderHook } from '@testing-library/react';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';

import { TidingsProvider, useHistory, useOnlineStatus, usePresence, useSubscription, useTidings, useTyping } from '../src/index.js';
import type { Server } from './server.js';
import { connectionToken, startServer, waitFor } from './server.js';

// React's act() environment flag, for updates that come from the network.
(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;

/** A `ws` WebSocket that records what it sends and can be cut like a failed network. */
const sockets: TrackedSocket[] = [];
/** While set, new sockets dial a closed port: the network is down. */
let networkDown = false;
class TrackedSocket extends WebSocket {
  sent: string[] = [];
  constructor(url: string, protocols?: string | string[]) {
    super(networkDown ? 'ws://127.0.0.1:9/connection/websocket' : url, protocols);
    sockets.push(this);
  }
  override send(data: unknown, ...rest: unknown[]) {
    this.sent.push(String(data));
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    (super.send as any)(data, ...rest);
  }
}
const commands = (method: string, channel?: string) =>
  sockets
    .flatMap((s) => s.sent)
    .flatMap((frame) => frame.split('\n'))
    .map((line) => JSON.parse(line) as Record<string, { channel?: string }>)
    .filter((cmd) => method in cmd && (channel === undefined || cmd[method]?.channel === channel));

let server: Server;
let counter = 0;
const channel = (prefix = 'room') => `${prefix}-${Date.now().toString(36)}-${++counter}`;

function wrapper(url: () => string, extra: Record<string, unknown> = {}) {
  return ({ children }: { children: ReactNode }) => (
    <TidingsProvider
      url={url()}
      transports={['websocket']}
      options={{ websocket: TrackedSocket, centrifuge: { minReconnectDelay: 50, maxReconnectDelay: 300 } }}
      {...extra}
    >
      {children}
    </TidingsProvider>
  );
}

beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await server?.stop();
});
afterEach(() => {
  cleanup();
  sockets.length = 0;
});

describe('hooks against a real server', () => {
  it('useTidings reports the connection', async () => {
    const { result } = renderHook(() => useTidings(), { wrapper: wrapper(() => server.url) });
    expect(result.current.state).not.toBe('connected');
    await waitFor(() => result.current.state === 'connected', 'connected');
    expect(result.current.client).toMatch(/.+/);
    expect(result.current.transport).toBe('websocket');
    expect(result.current.centrifuge).not.toBeNull();
  });

  it('StrictMode and two hooks on one channel make one connection and one subscription', async () => {
    const ch = channel();
    function Both() {
      const sub = useSubscription(ch);
      const presence = usePresence(ch);
      return (
        <p>
          {sub.state}/{presence.members.length}
        </p>
      );
    }
    let centrifuge: ReturnType<typeof useTidings>['centrifuge'] = null;
    function Status() {
      const conn = useTidings();
      centrifuge = conn.centrifuge;
      return <i>{conn.state}</i>;
    }
    const Wrapper = wrapper(() => server.url);
    const tree = (show: boolean) => (
      <StrictMode>
        <Wrapper>
          <Status />
          {show && <Both />}
        </Wrapper>
      </StrictMode>
    );
    // The provider mounts twice: still one socket, one connect.
    const view = render(tree(false));
    await waitFor(() => view.container.textContent === 'connected', 'connected');
    expect(sockets).toHaveLength(1);
    expect(commands('connect')).toHaveLength(1);
    // A component with two hooks on the channel, mounted twice (StrictMode) on a live
    // connection: one Subscription
    // object, one subscribe command, no unsubscribe.
    const made: string[] = [];
    const original = centrifuge!.newSubscription.bind(centrifuge!);
    centrifuge!.newSubscription = (name, opts) => {
      made.push(name);
      return original(name, opts);
    };
    view.rerender(tree(true));
    await waitFor(() => view.container.textContent === 'connectedsubscribed/1', 'subscribed with one member');
    expect(made).toEqual([ch]);
    expect(commands('subscribe', ch)).toHaveLength(1);
    expect(commands('unsubscribe', ch)).toHaveLength(0);
    // Unmounting the users of the channel lets it go (one task later).
    view.rerender(tree(false));
    await waitFor(() => commands('unsubscribe', ch).length === 1, 'unsubscribe after the last user left');
    expect(sockets).toHaveLength(1);
  });

  it('useSubscription prefills from history, receives live publications and publishes', async () => {
    const ch = channel();
    for (const text of ['one', 'two', 'three']) await server.publish(ch, { text });
    const live: unknown[] = [];
    const { result } = renderHook(() => useSubscription(ch, { history: 2, onPublication: (p) => live.push(p.data) }), {
      wrapper: wrapper(() => server.url),
    });
    await waitFor(() => result.current.historyLoaded && result.current.state === 'subscribed', 'history');
    expect(result.current.publications.map((p) => (p.data as { text: string }).text)).toEqual(['two', 'three']);
    await server.publish(ch, { text: 'four' });
    await act(() => result.current.publish({ text: 'five' }));
    await waitFor(() => result.current.publications.length === 4, 'four publications');
    expect(result.current.publications.map((p) => (p.data as { text: string }).text)).toEqual(['two', 'three', 'four', 'five']);
    expect(result.current.publications.map((p) => p.offset)).toEqual([2, 3, 4, 5]);
    expect(result.current.publications[3]?.info?.client).toMatch(/.+/);
    // The callback sees what arrives live, not the history prefill.
    expect(live).toEqual([{ text: 'four' }, { text: 'five' }]);
  });

  it('after a dropped connection the subscription recovers what it missed, counted, none twice', async () => {
    const ch = channel();
    const { result } = renderHook(() => ({ sub: useSubscription(ch, { history: 10 }), conn: useTidings() }), {
      wrapper: wrapper(() => server.url),
    });
    await waitFor(() => result.current.sub.state === 'subscribed', 'subscribed');
    await server.publish(ch, { n: 1 });
    await waitFor(() => result.current.sub.publications.length === 1, 'first publication');

    // Cut the network under the client; publish while it is away.
    const open = sockets.filter((s) => s.readyState === WebSocket.OPEN);
    expect(open).toHaveLength(1);
    networkDown = true;
    try {
      open[0]!.terminate();
      await waitFor(() => result.current.conn.reconnecting && result.current.sub.interrupted, 'reconnecting');
      await server.publish(ch, { n: 2 });
      await server.publish(ch, { n: 3 });
      expect(result.current.sub.recovery).toBeNull();
    } finally {
      networkDown = false;
    }
    await waitFor(() => result.current.sub.recovery !== null, 'recovery report');
    expect(result.current.sub.recovery).toMatchObject({ wasRecovering: true, recovered: true, lost: false, count: 2 });
    expect(result.current.sub.interrupted).toBe(false);
    await waitFor(() => result.current.sub.publications.length === 3, 'three publications');
    expect(result.current.sub.publications.map((p) => (p.data as { n: number }).n)).toEqual([1, 2, 3]);
    expect(result.current.conn.connects).toBe(2);
    expect(result.current.conn.lastError).not.toBeNull();
  });

  it('after a server restart the stream is reset: the feed says so and refills from history', async () => {
    const own = await startServer();
    let url = own.url;
    const ch = channel();
    const { result } = renderHook(() => ({ sub: useSubscription(ch, { history: 10 }), conn: useTidings() }), {
      wrapper: wrapper(() => url),
    });
    try {
      await waitFor(() => result.current.sub.state === 'subscribed', 'subscribed');
      await own.publish(ch, { n: 1 });
      await waitFor(() => result.current.sub.publications.length === 1, 'first publication');
      const port = own.port;
      await own.stop();
      await waitFor(() => result.current.conn.reconnecting, 'reconnecting');
      const again = await startServer({ port });
      url = again.url;
      try {
        // Published on the new server before or while the client comes back.
        await again.publish(ch, { n: 2 });
        await waitFor(() => result.current.sub.recovery !== null, 'recovery report');
        expect(result.current.sub.recovery).toMatchObject({ wasRecovering: true, recovered: false, lost: true });
        await waitFor(() => result.current.sub.publications.length === 2, 'old and new publications');
        expect(result.current.sub.publications.map((p) => (p.data as { n: number }).n)).toEqual([1, 2]);
        expect(result.current.sub.publications.map((p) => p.era)).toEqual([0, 1]);
      } finally {
        cleanup();
        await again.stop();
      }
    } finally {
      await own.stop();
    }
  });

  it('usePresence sees other connections come and go', async () => {
    const ch = channel();
    const a = renderHook(() => ({ presence: usePresence(ch), conn: useTidings() }), { wrapper: wrapper(() => server.url) });
    await waitFor(() => a.result.current.presence.members.length === 1, 'own membership');
    const b = renderHook(() => ({ presence: usePresence(ch), conn: useTidings() }), { wrapper: wrapper(() => server.url) });
    await waitFor(() => a.result.current.presence.members.length === 2, 'A to see B');
    await waitFor(() => b.result.current.presence.members.length === 2, 'B to see A');
    const bClient = b.result.current.conn.client;
    expect(a.result.current.presence.members.map((m) => m.client)).toContain(bClient);
    b.unmount();
    await waitFor(() => a.result.current.presence.members.length === 1, 'A to see B leave');
    expect(a.result.current.presence.members[0]?.client).toBe(a.result.current.conn.client);
  });

  it('useTyping shows others typing, never ourselves, and clears on done', async () => {
    const ch = channel('live:typing');
    const a = renderHook(() => useTyping(ch, { name: 'Ann' }), { wrapper: wrapper(() => server.url) });
    const b = renderHook(() => ({ typing: useTyping(ch, { name: 'Bob' }), sub: useSubscription(ch) }), {
      wrapper: wrapper(() => server.url),
    });
    await waitFor(() => b.result.current.sub.state === 'subscribed', 'B subscribed');
    // A may not be subscribed yet: keep typing until B sees it (each input is throttled).
    await waitFor(() => {
      a.result.current.input();
      return b.result.current.typing.typists.length === 1;
    }, 'B to see Ann typing');
    expect(b.result.current.typing.typists[0]?.name).toBe('Ann');
    expect(a.result.current.typists).toEqual([]);
    act(() => a.result.current.done());
    await waitFor(() => b.result.current.typing.typists.length === 0, 'Ann to stop typing');
  });

  it('useHistory reads the newest publications, oldest first', async () => {
    const ch = channel();
    for (let n = 1; n <= 5; n++) await server.publish(ch, { n });
    const { result } = renderHook(() => useHistory(ch, { limit: 3 }), { wrapper: wrapper(() => server.url) });
    await waitFor(() => !result.current.loading, 'history');
    expect(result.current.error).toBeNull();
    expect(result.current.publications.map((p) => (p.data as { n: number }).n)).toEqual([3, 4, 5]);
    await server.publish(ch, { n: 6 });
    act(() => result.current.reload());
    await waitFor(() => !result.current.loading && result.current.publications.length === 3 && (result.current.publications[2]?.data as { n: number }).n === 6, 'reloaded history');
  });

  it('getToken is called again when the connection token expires, without losing the connection', async () => {
    let calls = 0;
    const getToken = async () => {
      calls += 1;
      return connectionToken('token-user', 2);
    };
    const { result } = renderHook(() => useTidings(), { wrapper: wrapper(() => server.url, { getToken }) });
    await waitFor(() => result.current.state === 'connected', 'connected');
    expect(calls).toBe(1);
    await waitFor(() => calls >= 2, 'a token refresh', 15_000);
    expect(result.current.state).toBe('connected');
    expect(result.current.connects).toBe(1);
    expect(commands('refresh').length).toBeGreaterThanOrEqual(1);
  });

  it('useOnlineStatus follows a user online and offline, with since and last seen', async () => {
    const ann = `ann-${Date.now().toString(36)}`;
    const watcher = renderHook(() => useOnlineStatus([ann, 'never-seen-user']), {
      wrapper: wrapper(() => server.url, { getToken: async () => connectionToken('watcher', 600) }),
    });
    // Never seen: loaded, offline, no time.
    await waitFor(() => watcher.result.current[ann]?.loaded === true, 'first status');
    expect(watcher.result.current[ann]).toEqual({ user: ann, online: false, at: null, loaded: true });
    expect(watcher.result.current['never-seen-user']?.online).toBe(false);

    const before = Date.now();
    const annHook = renderHook(() => useTidings(), {
      wrapper: wrapper(() => server.url, { getToken: async () => connectionToken(ann, 600) }),
    });
    await waitFor(() => annHook.result.current.state === 'connected', 'ann connected');
    await waitFor(() => watcher.result.current[ann]?.online === true, 'ann online');
    const since = watcher.result.current[ann]!.at!;
    expect(since).toBeGreaterThanOrEqual(before - 1000);

    annHook.unmount();
    await waitFor(() => watcher.result.current[ann]?.online === false, 'ann offline');
    expect(watcher.result.current[ann]!.at!).toBeGreaterThanOrEqual(since);

    // A new follower reads the last status from history: offline, last seen.
    const late = renderHook(() => useOnlineStatus([ann]), {
      wrapper: wrapper(() => server.url, { getToken: async () => connectionToken('late', 600) }),
    });
    await waitFor(() => late.result.current[ann]?.loaded === true, 'late follower loaded');
    expect(late.result.current[ann]).toEqual(watcher.result.current[ann]);
    late.unmount();
    watcher.unmount();
  });
});
