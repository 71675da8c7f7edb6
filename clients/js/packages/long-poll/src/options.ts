// Tuning for LongPollSocket. Everything has a default; centrifuge-js constructs the
// socket with (url, protocols) only, so options reach it through
// `LongPollSocket.withOptions(...)`.

/** The part of a fetch Response the socket reads. */
export interface FetchResponseLike {
  readonly status: number;
  text(): Promise<string>;
}

/** The part of the fetch API the socket uses. */
export type FetchLike = (
  url: string,
  init: {
    method: string;
    headers?: Record<string, string>;
    body?: string;
    signal?: AbortSignal;
  },
) => Promise<FetchResponseLike>;

export interface LongPollOptions {
  /** The fetch implementation. Default: the global `fetch`. */
  fetch?: FetchLike;
  /**
   * Where commands are posted. Default: the socket URL with its trailing
   * `/connection/long_poll` replaced by `/emulation` (or `/emulation` on its origin).
   */
  emulationEndpoint?: string;
  /** How many times a failed poll or command is retried before the socket closes with 1006. Default 4. */
  retries?: number;
  /** Delay before the first retry in ms; it doubles on each retry. Default 200. */
  retryDelay?: number;
  /** Upper bound of the retry delay in ms. Default 3000. */
  maxRetryDelay?: number;
  /**
   * How long one poll may take in ms before it is abandoned and retried. It must be
   * longer than the server's `long_poll.hold` (25 s by default). Default 45000.
   */
  pollTimeout?: number;
  /** How long opening the session or posting one command may take in ms. Default 10000. */
  requestTimeout?: number;
  /** Extra headers for every request (for example an Authorization header for a proxy). */
  headers?: Record<string, string>;
}

export interface ResolvedOptions {
  fetch: FetchLike;
  emulationEndpoint: string | undefined;
  retries: number;
  retryDelay: number;
  maxRetryDelay: number;
  pollTimeout: number;
  requestTimeout: number;
  headers: Record<string, string>;
}

export function resolveOptions(options: LongPollOptions = {}): ResolvedOptions {
  const fetchImpl = options.fetch ?? globalFetch();
  return {
    fetch: fetchImpl,
    emulationEndpoint: options.emulationEndpoint,
    retries: nonNegative(options.retries, 4),
    retryDelay: nonNegative(options.retryDelay, 200),
    maxRetryDelay: nonNegative(options.maxRetryDelay, 3_000),
    pollTimeout: nonNegative(options.pollTimeout, 45_000),
    requestTimeout: nonNegative(options.requestTimeout, 10_000),
    headers: { ...options.headers },
  };
}

function nonNegative(value: number | undefined, fallback: number): number {
  return value !== undefined && Number.isFinite(value) && value >= 0 ? value : fallback;
}

function globalFetch(): FetchLike {
  const f: unknown = (globalThis as { fetch?: unknown }).fetch;
  if (typeof f !== 'function') {
    throw new Error('LongPollSocket needs fetch: run on Node 18+ or a browser, or pass { fetch } to LongPollSocket.withOptions()');
  }
  return (f as FetchLike).bind(globalThis);
}
