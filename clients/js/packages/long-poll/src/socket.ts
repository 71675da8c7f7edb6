// LongPollSocket: the WebSocket surface centrifuge-js uses, carried over Tidings' HTTP
// long polling (docs/transports.md):
//
//   open     POST   /connection/long_poll            body = the first frame sent
//   receive  GET    /connection/long_poll?session=S&node=N&cursor=N   (one at a time, in a loop)
//   send     POST   /emulation  {"session": S, "node": N, "data": FRAME}
//   close    DELETE /connection/long_poll?session=S&node=N
//
// `node` (from the open answer) lets a request that lands on another node of a
// cluster reach the node holding the session: no sticky sessions needed.
//
// centrifuge-js sends its connect command right after `open`, so `open` fires at once
// and the first `send()` opens the session.

import { endpointsFor, withParams, type Endpoints } from './endpoints.js';
import {
  Listeners,
  reportLater,
  type LongPollCloseEvent,
  type LongPollErrorEvent,
  type LongPollEventMap,
  type LongPollEventType,
  type LongPollListener,
  type LongPollMessageEvent,
  type LongPollOpenEvent,
} from './events.js';
import { resolveOptions, type LongPollOptions, type ResolvedOptions } from './options.js';
import { parseOpen, parsePoll, unseen, type OpenResponse } from './wire.js';

export type LongPollReadyState = 0 | 1 | 2 | 3;
export type LongPollBinaryType = 'blob' | 'arraybuffer';
/** What `send()` accepts: text, or UTF-8 bytes of text. */
export type LongPollData = string | ArrayBuffer | ArrayBufferView;

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/** WebSocket close code for "closed without a close frame". */
const ABNORMAL = 1006;
/** WebSocket close code for "message too big"; centrifuge-js does not reconnect on it. */
const TOO_BIG = 1009;
/** WebSocket close code for "closed without a status code". */
const NO_STATUS = 1005;

interface HttpResult {
  status: number;
  text: string;
}

export class LongPollSocket {
  static readonly CONNECTING = CONNECTING;
  static readonly OPEN = OPEN;
  static readonly CLOSING = CLOSING;
  static readonly CLOSED = CLOSED;

  readonly CONNECTING = CONNECTING;
  readonly OPEN = OPEN;
  readonly CLOSING = CLOSING;
  readonly CLOSED = CLOSED;

  /** Options every instance of this class starts from; see `withOptions`. */
  protected static defaults: LongPollOptions = {};

  /**
   * A subclass whose instances use `options`, for places that construct the socket
   * themselves: `new Centrifuge(url, { websocket: LongPollSocket.withOptions({...}) })`.
   */
  static withOptions(options: LongPollOptions): typeof LongPollSocket {
    const merged: LongPollOptions = {
      ...this.defaults,
      ...options,
      headers: { ...this.defaults.headers, ...options.headers },
    };
    return class LongPollSocketWithOptions extends this {
      protected static override defaults = merged;
    };
  }

  /** The URL given to the constructor. */
  readonly url: string;
  /** Always empty: there is no subprotocol negotiation. */
  readonly protocol = '';
  readonly extensions = '';
  /** Kept for compatibility; messages are always delivered as text. */
  binaryType: LongPollBinaryType = 'blob';

  onopen: ((event: LongPollOpenEvent) => void) | null = null;
  onmessage: ((event: LongPollMessageEvent) => void) | null = null;
  onerror: ((event: LongPollErrorEvent) => void) | null = null;
  onclose: ((event: LongPollCloseEvent) => void) | null = null;

  private state: LongPollReadyState = CONNECTING;
  private readonly options: ResolvedOptions;
  private readonly endpoints: Endpoints;
  private readonly listeners = new Listeners();
  /** Set once the session is open. */
  private session: OpenResponse | null = null;
  /** Whether the first `send()` (the one that opens the session) happened. */
  private opening = false;
  /** Everything delivered so far is numbered up to here. */
  private cursor = 0;
  /** Sends run one after another, in call order. */
  private queue: Promise<void> = Promise.resolve();
  private queuedBytes = 0;
  /** Polls and commands in flight, aborted when the socket closes. */
  private readonly inflight = new Set<AbortController>();
  /** Pending retry delays, cut short when the socket closes. */
  private readonly sleepers = new Set<() => void>();

  constructor(url: string | URL, protocols?: string | string[], options?: LongPollOptions) {
    const requested = protocols === undefined ? [] : Array.isArray(protocols) ? protocols : [protocols];
    if (requested.includes('centrifuge-protobuf')) {
      throw new Error('LongPollSocket carries the JSON protocol only; use the default JSON codec of centrifuge-js');
    }
    const defaults = (new.target as typeof LongPollSocket).defaults;
    this.options = resolveOptions({
      ...defaults,
      ...options,
      headers: { ...defaults.headers, ...options?.headers },
    });
    this.url = String(url);
    this.endpoints = endpointsFor(this.url, this.options.emulationEndpoint);

    // Nothing to handshake: the session opens with the first frame sent.
    setTimeout(() => {
      if (this.state !== CONNECTING) return;
      this.state = OPEN;
      this.dispatch({ type: 'open', target: this });
    }, 0);
  }

  get readyState(): LongPollReadyState {
    return this.state;
  }

  /** Length of the text passed to `send()` that has not been handed to the server yet. */
  get bufferedAmount(): number {
    return this.queuedBytes;
  }

  /**
   * Sends one frame. The first one opens the session (centrifuge-js sends its
   * connect command first); later ones are posted in call order.
   */
  send(data: LongPollData): void {
    if (this.state === CONNECTING) {
      throw namedError('InvalidStateError', "LongPollSocket: send() before the 'open' event");
    }
    if (this.state !== OPEN) return;
    const text = toText(data);
    const first = !this.opening;
    this.opening = true;
    this.queuedBytes += text.length;
    this.queue = this.queue
      .then(() => (first ? this.openSession(text) : this.postCommand(text)))
      .catch((e: unknown) => this.fail(ABNORMAL, 'send failed', e))
      .finally(() => {
        this.queuedBytes -= text.length;
      });
  }

  /** Ends the session (DELETE) and fires `close` with `code` (1005 when omitted). */
  close(code?: number, reason?: string): void {
    if (code !== undefined && code !== 1000 && !(code >= 3000 && code <= 4999)) {
      throw namedError('InvalidAccessError', `LongPollSocket: close code ${code} is not 1000 or 3000-4999`);
    }
    if (reason !== undefined && new TextEncoder().encode(reason).length > 123) {
      throw namedError('SyntaxError', 'LongPollSocket: close reason longer than 123 bytes');
    }
    if (this.state === CLOSING || this.state === CLOSED) return;
    const beforeOpen = this.state === CONNECTING;
    this.state = CLOSING;
    this.abortInflight();
    // An open request still in flight deletes its session when it completes.
    if (this.session) this.deleteSession(this.session);
    setTimeout(() => {
      if (beforeOpen) {
        this.finish(ABNORMAL, '', false);
      } else {
        this.finish(code ?? NO_STATUS, reason ?? '', true);
      }
    }, 0);
  }

  addEventListener<K extends LongPollEventType>(
    type: K,
    listener: LongPollListener<K> | null,
    options?: boolean | { once?: boolean },
  ): void {
    if (!listener) return;
    const once = typeof options === 'object' && options !== null && options.once === true;
    this.listeners.add(type, listener, once);
  }

  removeEventListener<K extends LongPollEventType>(type: K, listener: LongPollListener<K> | null): void {
    if (listener) this.listeners.remove(type, listener);
  }

  // --- session -------------------------------------------------------------------

  private async openSession(frame: string): Promise<void> {
    let res: HttpResult;
    try {
      // text/plain keeps this a CORS "simple request": no preflight round trip.
      res = await this.request(
        this.endpoints.longPoll.toString(),
        { method: 'POST', headers: this.headers({ 'Content-Type': 'text/plain;charset=UTF-8' }), body: frame },
        this.options.requestTimeout,
        false,
      );
    } catch (e) {
      this.fail(ABNORMAL, 'could not open the long-poll session', e);
      return;
    }
    if (res.status !== 200) {
      this.fail(ABNORMAL, `opening the long-poll session answered HTTP ${res.status}: ${res.text.slice(0, 200)}`);
      return;
    }
    const session = parseOpen(res.text);
    if (this.state !== OPEN) {
      // close() was called while the session was being opened.
      this.deleteSession(session);
      return;
    }
    this.session = session;
    this.pollLoop(session).catch((e: unknown) => this.fail(ABNORMAL, 'polling failed', e));
  }

  private async postCommand(frame: string): Promise<void> {
    const session = this.session;
    if (!session || this.state !== OPEN) return;
    const body = JSON.stringify({ session: session.session, node: session.node, data: frame });
    for (let attempt = 1; ; attempt++) {
      let res: HttpResult;
      try {
        res = await this.request(
          this.endpoints.emulation,
          { method: 'POST', headers: this.headers({ 'Content-Type': 'text/plain;charset=UTF-8' }), body },
          this.options.requestTimeout,
          true,
        );
      } catch (e) {
        // Not retried: the server may have taken the command, and a retry could run
        // it twice. Closing lets centrifuge-js reconnect and recover instead.
        if (this.state === OPEN) this.fail(ABNORMAL, 'sending a command failed', e);
        return;
      }
      if (this.state !== OPEN) return;
      if (res.status === 204 || res.status === 200) return;
      if (res.status === 429 && attempt <= this.options.retries) {
        // The session's inbox is full; the command was not taken.
        await this.sleep(this.backoff(attempt));
        if (this.state !== OPEN) return;
        continue;
      }
      if (res.status === 404) {
        // The session has ended; the poll loop delivers how.
        return;
      }
      if (res.status === 413) {
        this.fail(TOO_BIG, 'message too big');
        return;
      }
      this.fail(ABNORMAL, `sending a command answered HTTP ${res.status}: ${res.text.slice(0, 200)}`);
      return;
    }
  }

  private async pollLoop(session: OpenResponse): Promise<void> {
    let failures = 0;
    while (this.state === OPEN) {
      let res: HttpResult;
      try {
        res = await this.request(
          withParams(this.endpoints.longPoll, {
            session: session.session,
            node: session.node,
            cursor: String(this.cursor),
          }),
          { method: 'GET', headers: this.headers({}) },
          this.options.pollTimeout,
          true,
        );
      } catch (e) {
        if (this.state !== OPEN) return;
        failures += 1;
        if (failures > this.options.retries) {
          this.fail(ABNORMAL, 'polling failed', e);
          return;
        }
        await this.sleep(this.backoff(failures));
        continue;
      }
      if (this.state !== OPEN) return;

      if (res.status === 200) {
        failures = 0;
        const poll = parsePoll(res.text);
        const fresh = unseen(poll, this.cursor);
        if (poll.cursor > this.cursor) this.cursor = poll.cursor;
        if (fresh.length > 0) {
          this.dispatch({ type: 'message', target: this, data: fresh.map((m) => JSON.stringify(m)).join('\n') });
        }
        if (poll.close) {
          this.session = null;
          this.finish(poll.close.code, poll.close.reason, true);
          return;
        }
        continue;
      }
      if (res.status === 404) {
        this.session = null;
        this.fail(ABNORMAL, 'the long-poll session is gone');
        return;
      }
      // 409: an abandoned poll of ours is still held by the server; 429 and 5xx are
      // passing troubles. All are retried.
      if (res.status === 409 || res.status === 429 || res.status >= 500) {
        failures += 1;
        if (failures > this.options.retries) {
          this.fail(ABNORMAL, `polling answered HTTP ${res.status}: ${res.text.slice(0, 200)}`);
          return;
        }
        await this.sleep(this.backoff(failures));
        continue;
      }
      this.fail(ABNORMAL, `polling answered HTTP ${res.status}: ${res.text.slice(0, 200)}`);
      return;
    }
  }

  private deleteSession(session: OpenResponse): void {
    const url = withParams(this.endpoints.longPoll, { session: session.session, node: session.node });
    this.request(url, { method: 'DELETE', headers: this.headers({}) }, this.options.requestTimeout, false).catch(
      () => {
        // Best effort: the server closes an unpolled session by itself.
      },
    );
  }

  // --- closing -------------------------------------------------------------------

  /** Ends abnormally: `error`, then `close` with `code`. */
  private fail(code: number, message: string, error?: unknown): void {
    if (this.state === CLOSED) return;
    const session = this.session;
    this.session = null;
    if (session) this.deleteSession(session);
    const event: LongPollErrorEvent =
      error === undefined ? { type: 'error', target: this, message } : { type: 'error', target: this, message, error };
    this.state = CLOSED;
    this.stopWork();
    this.dispatch(event);
    this.dispatch({
      type: 'close',
      target: this,
      code,
      reason: code === TOO_BIG ? message : '',
      wasClean: false,
    });
  }

  private finish(code: number, reason: string, wasClean: boolean): void {
    if (this.state === CLOSED) return;
    this.state = CLOSED;
    this.stopWork();
    this.dispatch({ type: 'close', target: this, code, reason, wasClean });
  }

  private stopWork(): void {
    this.abortInflight();
    for (const wake of [...this.sleepers]) wake();
  }

  private abortInflight(): void {
    for (const c of this.inflight) c.abort();
    this.inflight.clear();
  }

  // --- plumbing ------------------------------------------------------------------

  private dispatch<K extends LongPollEventType>(event: LongPollEventMap[K]): void {
    const handler = this.handlerFor(event.type) as ((e: LongPollEventMap[K]) => void) | null;
    if (handler) {
      try {
        handler.call(this, event);
      } catch (e) {
        reportLater(e);
      }
    }
    this.listeners.dispatch(event);
  }

  private handlerFor(type: LongPollEventType): unknown {
    switch (type) {
      case 'open':
        return this.onopen;
      case 'message':
        return this.onmessage;
      case 'error':
        return this.onerror;
      case 'close':
        return this.onclose;
    }
  }

  private headers(extra: Record<string, string>): Record<string, string> {
    return { ...this.options.headers, ...extra };
  }

  /** One HTTP exchange with a deadline; `tracked` ones are aborted by close. */
  private async request(
    url: string,
    init: { method: string; headers: Record<string, string>; body?: string },
    timeout: number,
    tracked: boolean,
  ): Promise<HttpResult> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeout);
    if (tracked) this.inflight.add(controller);
    try {
      const res = await this.options.fetch(url, { ...init, signal: controller.signal });
      return { status: res.status, text: await res.text() };
    } finally {
      clearTimeout(timer);
      this.inflight.delete(controller);
    }
  }

  private backoff(attempt: number): number {
    const base = Math.min(this.options.maxRetryDelay, this.options.retryDelay * 2 ** Math.max(0, attempt - 1));
    // ±20% so that many clients cut at once do not retry in lockstep.
    return Math.round(base * (0.8 + Math.random() * 0.4));
  }

  /** Waits `ms`, or less if the socket closes meanwhile. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        this.sleepers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.sleepers.add(wake);
    });
  }
}

function toText(data: LongPollData): string {
  if (typeof data === 'string') return data;
  const bytes =
    data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return new TextDecoder().decode(bytes);
}

function namedError(name: string, message: string): Error {
  const e = new Error(message);
  e.name = name;
  return e;
}
