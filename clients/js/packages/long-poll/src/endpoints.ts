// Where the socket sends what: the long-poll endpoint itself (open, poll, delete) and
// the emulation endpoint (commands).

const LONG_POLL_SUFFIX = '/connection/long_poll';

export interface Endpoints {
  /** The long-poll URL without session parameters. */
  readonly longPoll: URL;
  /** The command URL. */
  readonly emulation: string;
}

/**
 * Maps the URL given to the socket to HTTP: ws becomes http, wss becomes https;
 * http(s) stays as it is. Anything else is a SyntaxError, as for a WebSocket.
 */
export function endpointsFor(url: string, emulationEndpoint: string | undefined): Endpoints {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw syntaxError(`invalid URL: ${url}`);
  }
  switch (parsed.protocol) {
    case 'ws:':
      parsed.protocol = 'http:';
      break;
    case 'wss:':
      parsed.protocol = 'https:';
      break;
    case 'http:':
    case 'https:':
      break;
    default:
      throw syntaxError(`unsupported URL scheme ${parsed.protocol} (use ws, wss, http or https)`);
  }
  parsed.hash = '';

  let emulation = emulationEndpoint;
  if (emulation === undefined) {
    const e = new URL(parsed.toString());
    const path = e.pathname.replace(/\/+$/, '');
    e.pathname = path.endsWith(LONG_POLL_SUFFIX)
      ? `${path.slice(0, -LONG_POLL_SUFFIX.length)}/emulation`
      : '/emulation';
    e.search = '';
    emulation = e.toString();
  }
  return { longPoll: parsed, emulation };
}

/** The long-poll URL with `params` added to its query. */
export function withParams(base: URL, params: Record<string, string>): string {
  const u = new URL(base.toString());
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.toString();
}

function syntaxError(message: string): Error {
  const e = new Error(message);
  e.name = 'SyntaxError';
  return e;
}
