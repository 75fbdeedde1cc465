// @cable-rs/client: an ActionCable client with the @rails/actioncable API,
// for browsers and Node, typed, without dependencies.

export { adapters, logger } from "./adapters.js";
export { Connection } from "./connection.js";
export { ConnectionMonitor } from "./monitor.js";
export { Consumer, createConsumer } from "./consumer.js";
export { ConnectionClosedError, SubscriptionRejectedError } from "./errors.js";
export { EXT_PROTOCOL, INTERNAL } from "./internal.js";
export { Subscription, SubscriptionGuarantor, SubscriptionPresence, Subscriptions } from "./subscriptions.js";
export { createWebSocketURL, getConfig } from "./url.js";
export type {
  AbortSignalLike,
  ChannelParams,
  ConnectedDetails,
  ConsumerOptions,
  DefaultActions,
  DisconnectedDetails,
  HeadersSource,
  Mixin,
  PresenceEvent,
  PresenceInfo,
  SubscribeOptions,
  SubscriptionCallbacks,
  UrlSource,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
