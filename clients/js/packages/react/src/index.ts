'use client';

export { TidingsProvider, TidingsContext, useTidingsClient } from './provider.js';
export type { TidingsProviderProps } from './provider.js';
export { useTidings, useSubscription, usePresence, useTyping, useHistory, useOnlineStatus } from './hooks.js';
export type {
  UseTidingsResult,
  UseSubscriptionOptions,
  UseSubscriptionResult,
  UsePresenceOptions,
  UseOnlineStatusOptions,
  UseTypingOptions,
  UseTypingResult,
  UseHistoryOptions,
  UseHistoryResult,
} from './hooks.js';
export * from './core/index.js';
