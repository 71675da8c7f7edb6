// The JSON bodies of the long-poll endpoint, checked on the way in.

/** `POST /connection/long_poll` answer. */
export interface OpenResponse {
  session: string;
  node: string;
}

/** How the server ended the session. */
export interface CloseInfo {
  code: number;
  reason: string;
  reconnect: boolean;
}

/**
 * `GET /connection/long_poll?session&cursor` answer: messages numbered
 * `first..=cursor`, and `close` once the session has ended.
 */
export interface PollResponse {
  cursor: number;
  first: number | undefined;
  messages: unknown[];
  close: CloseInfo | undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

export function parseOpen(text: string): OpenResponse {
  const v: unknown = JSON.parse(text);
  if (!isObject(v) || typeof v.session !== 'string' || v.session === '') {
    throw new Error(`unexpected open response: ${text.slice(0, 200)}`);
  }
  return { session: v.session, node: typeof v.node === 'string' ? v.node : '' };
}

export function parsePoll(text: string): PollResponse {
  const v: unknown = JSON.parse(text);
  if (!isObject(v) || !isCount(v.cursor) || !Array.isArray(v.messages)) {
    throw new Error(`unexpected poll response: ${text.slice(0, 200)}`);
  }
  let first: number | undefined;
  if (isCount(v.first)) {
    first = v.first;
  } else if (v.messages.length > 0) {
    // Without `first`, the messages are the ones right before `cursor`.
    first = v.cursor - v.messages.length + 1;
  }
  let close: CloseInfo | undefined;
  if (isObject(v.close)) {
    close = {
      code: isCount(v.close.code) ? v.close.code : 1006,
      reason: typeof v.close.reason === 'string' ? v.close.reason : '',
      reconnect: v.close.reconnect !== false,
    };
  }
  return { cursor: v.cursor, first, messages: v.messages, close };
}

/**
 * The messages of `res` the client does not have yet, given that it has everything up
 * to `cursor`: a duplicated or retried poll can answer with some it already delivered.
 */
export function unseen(res: PollResponse, cursor: number): unknown[] {
  if (res.first === undefined) return [];
  const skip = Math.max(0, cursor - res.first + 1);
  return skip === 0 ? res.messages : res.messages.slice(skip);
}
