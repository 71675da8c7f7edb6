'use client';

import { createContext, useContext, useEffect, useRef, useState } from 'react';
import type { ReactNode } from 'react';

import { Tidings } from './core/tidings.js';
import type { TidingsOptions } from './core/tidings.js';
import type { TransportName } from './core/endpoints.js';

/** What the provider shares with the hooks: the client, once there is one (never during server rendering). */
export const TidingsContext = createContext<Tidings | null>(null);

export interface TidingsProviderProps {
  /** The Tidings server's base URL, e.g. `http://localhost:8000`. */
  url: string;
  /** Returns a connection token; called on connect and whenever the token expired. */
  getToken?: () => Promise<string>;
  /** Transports to use, in order of preference. Default: websocket, http_stream, sse, long_poll. */
  transports?: readonly TransportName[];
  /** Anything else the core client takes (a `websocket` class for Node, centrifuge-js options, ...). */
  options?: Omit<TidingsOptions, 'url' | 'getToken' | 'transports'>;
  children?: ReactNode;
}

/**
 * One connection for every hook below it. Connects when mounted in the browser and
 * disconnects when unmounted; renders nothing different on the server.
 */
export function TidingsProvider({ url, getToken, transports, options, children }: TidingsProviderProps) {
  // The latest getToken, so a new function on every render neither reconnects nor goes stale.
  const tokenRef = useRef(getToken);
  tokenRef.current = getToken;
  const hasToken = getToken !== undefined;
  const key = `${url}|${(transports ?? []).join(',')}|${hasToken}`;
  const made = useRef<{ key: string; tidings: Tidings } | null>(null);
  const [client, setClient] = useState<{ key: string; tidings: Tidings } | null>(null);

  useEffect(() => {
    // Made here, not during render: rendering stays free of side effects and the same on
    // the server and in the browser. StrictMode's second mount finds it in the ref and
    // takes it again before the first mount's release takes effect: one connection.
    let current = made.current;
    if (!current || current.key !== key) {
      const settings: TidingsOptions = { ...options, url };
      if (transports) settings.transports = transports;
      if (hasToken) settings.getToken = () => (tokenRef.current ? tokenRef.current() : Promise.resolve(''));
      current = { key, tidings: new Tidings(settings) };
      made.current = current;
    }
    setClient(current);
    return current.tidings.hold();
    // `options` is read when the client is made; change `url` or `transports` for a new one.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key]);

  return <TidingsContext.Provider value={client?.key === key ? client.tidings : null}>{children}</TidingsContext.Provider>;
}

/** The shared client, or null during server rendering and before the first effect. */
export function useTidingsClient(): Tidings | null {
  return useContext(TidingsContext);
}
