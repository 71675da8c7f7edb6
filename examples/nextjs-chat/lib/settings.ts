// Server-side settings of the example, from the environment. The defaults match
// tidings.toml so that `npm run dev` works with no setup; they are for development only.
// Only this file's `publicUrl` ever reaches the browser (as a prop): the secret and the API
// key are read by the token route and the server action, on the server.

export const settings = {
  /** Where browsers reach Tidings. */
  publicUrl: process.env.TIDINGS_URL || 'http://127.0.0.1:8000',
  /** Where this server reaches the Tidings server API (often an internal address). */
  apiUrl: process.env.TIDINGS_API_URL || process.env.TIDINGS_URL || 'http://127.0.0.1:8000',
  /** client.token.hmac_secret_key of the Tidings config. */
  tokenSecret: process.env.TIDINGS_TOKEN_SECRET || 'nextjs-chat-example-secret-change-me-0123456789',
  /** http_api.key of the Tidings config. */
  apiKey: process.env.TIDINGS_API_KEY || 'nextjs-chat-example-api-key',
  /** Lifetime of a connection token in seconds; the client asks for a new one when it runs out. */
  tokenTtl: Number(process.env.TIDINGS_TOKEN_TTL || 600),
  /**
   * How browsers sign in to Tidings: `token` (the /api/token route mints a JWT) or
   * `proxy` (no token: Tidings asks /api/tidings/connect with the browser's cookie;
   * run Tidings with tidings.proxy.toml).
   */
  auth: (process.env.TIDINGS_AUTH === 'proxy' ? 'proxy' : 'token') as 'proxy' | 'token',
  /** The header Tidings' connect proxy sends (http.static_headers in tidings.proxy.toml). */
  proxySecret: process.env.TIDINGS_PROXY_SECRET || 'nextjs-chat-example-proxy-secret-change-me',
};

export const ROOMS = ['lobby', 'random', 'engineering'];
export const ROOM_RE = /^[a-z0-9_-]{1,32}$/;
export const NAME_MAX = 32;
export const TEXT_MAX = 2000;
