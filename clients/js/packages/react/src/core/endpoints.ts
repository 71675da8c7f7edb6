// Where a Tidings server's client transports live, derived from one base URL.

/** The transports a client can use, in the names Tidings and Centrifugo give them. */
export type TransportName = 'websocket' | 'http_stream' | 'sse' | 'long_poll';

/** Every transport Tidings offers, in the order a client should try them. */
export const ALL_TRANSPORTS: readonly TransportName[] = ['websocket', 'http_stream', 'sse', 'long_poll'];

/** Absolute URLs of a server's client endpoints. */
export interface Endpoints {
  websocket: string;
  http_stream: string;
  sse: string;
  long_poll: string;
  /** Where the HTTP transports post their commands. */
  emulation: string;
}

/**
 * Endpoints of the server at `url`. `url` is the server's base URL (`http://host:8000`,
 * `https://host`, also `ws(s)://`), optionally with a trailing `/connection/...` path,
 * which is dropped. A relative URL (`/`) is resolved against `base` (in a browser,
 * `location.href`).
 */
export function endpointsFor(url: string, base?: string): Endpoints {
  const parsed = new URL(url, base);
  let path = parsed.pathname.replace(/\/connection(\/.*)?$/, '').replace(/\/+$/, '');
  const secure = parsed.protocol === 'https:' || parsed.protocol === 'wss:';
  const http = `${secure ? 'https' : 'http'}://${parsed.host}${path}`;
  const ws = `${secure ? 'wss' : 'ws'}://${parsed.host}${path}`;
  return {
    websocket: `${ws}/connection/websocket`,
    http_stream: `${http}/connection/http_stream`,
    sse: `${http}/connection/sse`,
    long_poll: `${http}/connection/long_poll`,
    emulation: `${http}/emulation`,
  };
}

/** Whether `name` is a transport name this package knows. */
export function isTransportName(name: unknown): name is TransportName {
  return typeof name === 'string' && (ALL_TRANSPORTS as readonly string[]).includes(name);
}
