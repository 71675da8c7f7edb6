// The framework-agnostic core of @tidings/react: what the hooks are made of, usable from
// plain JavaScript (the demo page the server ships uses it).

export { ALL_TRANSPORTS, endpointsFor, isTransportName } from './endpoints.js';
export type { Endpoints, TransportName } from './endpoints.js';
export { createCentrifuge, transportList } from './client.js';
export type { ClientOptions } from './client.js';
export { Store } from './store.js';
export type { Listener } from './store.js';
export { ChannelFeed, mergePublications } from './feed.js';
export type { FeedOptions, FeedSnapshot, Publication, Recovery, SubscriptionState } from './feed.js';
export { PresenceTracker } from './presence.js';
export type { Member, PresenceOptions, PresenceSnapshot, PresenceSource } from './presence.js';
export { OnlineStatuses, StatusTracker } from './status.js';
export type { OnlineStatusOptions, StatusSource, UserStatus } from './status.js';
export { TypingTracker } from './typing.js';
export type { Self, Typist, TypingOptions, TypingSignal } from './typing.js';
export { Tidings, initialConnection } from './tidings.js';
export type { ConnectionSnapshot, ConnectionState, Lease, TidingsOptions } from './tidings.js';
