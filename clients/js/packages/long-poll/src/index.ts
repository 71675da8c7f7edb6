export { LongPollSocket } from './socket.js';
export type { LongPollBinaryType, LongPollData, LongPollReadyState } from './socket.js';
export type {
  LongPollCloseEvent,
  LongPollErrorEvent,
  LongPollEventMap,
  LongPollEventType,
  LongPollListener,
  LongPollMessageEvent,
  LongPollOpenEvent,
} from './events.js';
export type { FetchLike, FetchResponseLike, LongPollOptions } from './options.js';
