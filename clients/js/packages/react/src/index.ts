'use client';

export { TidingsProvider, TidingsContext, useTidingsClient } from './provider.js';
export type { TidingsProviderProps } from './provider.js';
export { useTidings, useSubscription, usePresence, useTyping, useHistory } from './hooks.js';
export type {
  UseTidingsResult,
  UseSubscriptionOptions,
  UseSubscriptionResult,
  UsePresenceOptions,
  UseTypingOptions,
  UseTypingResult,
  UseHistoryOptions,
  UseHistoryResult,
} from './hooks.js';
export * from './core/index.js';
