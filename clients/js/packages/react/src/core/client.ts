// Builds one centrifuge-js client for a Tidings server, with any of its four transports.

import { Centrifuge } from 'centrifuge';
import type { Options, TransportEndpoint } from 'centrifuge';
import { LongPollSocket } from '@tidings/long-poll';

import { ALL_TRANSPORTS, endpointsFor } from './endpoints.js';
import type { TransportName } from './endpoints.js';

/** Options of {@link createCentrifuge}. */
export interface ClientOptions {
  /** The server's base URL, e.g. `http://localhost:8000` (relative URLs resolve against the page). */
  url: string;
  /**
   * Returns a connection token (JWT). Called before the first connect, and again when the
   * server says the token expired, so tokens are refreshed without a reconnect storm.
   * Return `''` to connect anonymously. Leave out for servers that need no token.
   */
  getToken?: () => Promise<string>;
  /**
   * The transports to use, tried in this order when one is unavailable. Default: all
   * four (`websocket`, `http_stream`, `sse`, `long_poll`). One name forces that transport.
   */
  transports?: readonly TransportName[];
  /** A WebSocket constructor for environments without a global one (Node 20: the `ws` package). */
  websocket?: unknown;
  /** An EventSource constructor for environments without a global one (Node: the `eventsource` package). */
  eventsource?: unknown;
  /** Options for the long-polling socket (see @tidings/long-poll), e.g. a shorter `pollTimeout`. */
  longPoll?: Parameters<typeof LongPollSocket.withOptions>[0];
  /** Any other centrifuge-js option (name, timeouts, reconnect delays, debug, ...). */
  centrifuge?: Partial<Options>;
  /** Told which kind of socket each WebSocket-transport attempt opens (a real one or long polling). */
  onSocket?: (kind: 'websocket' | 'long_poll') => void;
}

type SocketClass = new (url: string, protocols?: string | string[]) => unknown;

/**
 * A WebSocket constructor that hands URLs of the long-poll endpoint to `LongPollSocket`
 * and everything else to the real WebSocket. centrifuge-js takes one `websocket`
 * constructor for all its WebSocket endpoints, so this is how long polling can sit in the
 * same transport list as a real WebSocket.
 */
function routingSocket(
  real: SocketClass | undefined,
  longPoll: SocketClass,
  onSocket: ((kind: 'websocket' | 'long_poll') => void) | undefined,
): SocketClass {
  function TidingsSocket(url: string, protocols?: string | string[]) {
    if (/\/connection\/long_poll(\?|$)/.test(url)) {
      onSocket?.('long_poll');
      return new longPoll(url, protocols);
    }
    if (!real) throw new Error('no WebSocket implementation: pass the `websocket` option');
    onSocket?.('websocket');
    return protocols === undefined ? new real(url) : new real(url, protocols);
  }
  return TidingsSocket as unknown as SocketClass;
}

/** The transport list centrifuge-js takes, for the chosen transports. */
export function transportList(url: string, transports: readonly TransportName[], base?: string): TransportEndpoint[] {
  const endpoints = endpointsFor(url, base);
  return transports.map((name) =>
    name === 'long_poll'
      ? { transport: 'websocket', endpoint: endpoints.long_poll }
      : { transport: name, endpoint: endpoints[name] },
  );
}

/**
 * A centrifuge-js client for `options.url`, not yet connected. Nothing here touches the
 * network or `window`; call `connect()` when ready.
 */
export function createCentrifuge(options: ClientOptions): Centrifuge {
  const base = typeof location === 'undefined' ? undefined : location.href;
  const transports = options.transports && options.transports.length > 0 ? options.transports : ALL_TRANSPORTS;
  for (const t of transports) {
    if (!ALL_TRANSPORTS.includes(t)) throw new Error(`unknown transport "${String(t)}" (use ${ALL_TRANSPORTS.join(', ')})`);
  }
  const endpoints = endpointsFor(options.url, base);
  const globalSocket = (globalThis as { WebSocket?: SocketClass }).WebSocket;
  const real = (options.websocket as SocketClass | undefined) ?? globalSocket;
  const longPoll = (options.longPoll ? LongPollSocket.withOptions(options.longPoll) : LongPollSocket) as unknown as SocketClass;
  const settings: Partial<Options> = {
    ...options.centrifuge,
    emulationEndpoint: endpoints.emulation,
    websocket: routingSocket(real, longPoll, options.onSocket),
  };
  if (options.eventsource !== undefined) settings.eventsource = options.eventsource;
  if (options.getToken) {
    const getToken = options.getToken;
    settings.getToken = () => getToken();
  }
  return new Centrifuge(transportList(options.url, transports, base), settings);
}
