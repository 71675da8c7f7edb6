// The event objects a LongPollSocket hands to its handlers: the fields of the DOM
// WebSocket events that clients read, as plain objects so they work the same in
// browsers, Node and React Native.

/** `open`: the socket accepts `send()`. */
export interface LongPollOpenEvent {
  readonly type: 'open';
  readonly target: object;
}

/** `message`: every reply and push of one poll response, joined by `\n`. */
export interface LongPollMessageEvent {
  readonly type: 'message';
  readonly target: object;
  readonly data: string;
}

/** `error`: something failed; a `close` event with code 1006 (or 1009) follows. */
export interface LongPollErrorEvent {
  readonly type: 'error';
  readonly target: object;
  readonly message: string;
  /** The underlying failure (a fetch rejection, an HTTP status), when there is one. */
  readonly error?: unknown;
}

/**
 * `close`: the session is over. `code` and `reason` are the server's disconnect
 * (for example 3001 "shutdown"), 1006 when the server could not be reached, or the
 * code given to `close()`.
 */
export interface LongPollCloseEvent {
  readonly type: 'close';
  readonly target: object;
  readonly code: number;
  readonly reason: string;
  readonly wasClean: boolean;
}

export interface LongPollEventMap {
  open: LongPollOpenEvent;
  message: LongPollMessageEvent;
  error: LongPollErrorEvent;
  close: LongPollCloseEvent;
}

export type LongPollEventType = keyof LongPollEventMap;

export type LongPollListener<K extends LongPollEventType> = (event: LongPollEventMap[K]) => void;

/** A listener registry for the four event types, with `once` support. */
export class Listeners {
  private readonly byType = new Map<LongPollEventType, Map<unknown, boolean>>();

  add<K extends LongPollEventType>(type: K, listener: LongPollListener<K>, once: boolean): void {
    let set = this.byType.get(type);
    if (!set) {
      set = new Map();
      this.byType.set(type, set);
    }
    // Adding the same listener twice keeps one registration, as EventTarget does.
    if (!set.has(listener)) set.set(listener, once);
  }

  remove<K extends LongPollEventType>(type: K, listener: LongPollListener<K>): void {
    this.byType.get(type)?.delete(listener);
  }

  /** Calls every listener of `event.type`; one that throws does not stop the others. */
  dispatch<K extends LongPollEventType>(event: LongPollEventMap[K]): void {
    const set = this.byType.get(event.type);
    if (!set || set.size === 0) return;
    for (const [listener, once] of [...set]) {
      if (once) set.delete(listener);
      try {
        (listener as LongPollListener<K>)(event);
      } catch (e) {
        reportLater(e);
      }
    }
  }
}

/** Rethrows outside the current call stack, like an uncaught error in a DOM event handler. */
export function reportLater(error: unknown): void {
  setTimeout(() => {
    throw error;
  }, 0);
}
