import type { Subscription } from "./subscriptions.js";

/**
 * What the client needs from a WebSocket: the browser's, Node 22's global
 * one and the `ws` package's all fit.
 */
export interface WebSocketLike {
  /** 0 connecting, 1 open, 2 closing, 3 closed (the WHATWG values). */
  readonly readyState: number;
  /** The subprotocol the server chose. */
  readonly protocol: string;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/**
 * A WebSocket constructor. The third argument is passed only when
 * `headers` are given (the `ws` package reads `{ headers }` from it;
 * browsers cannot send custom headers).
 */
export type WebSocketConstructor = new (
  url: string,
  protocols: string[],
  options?: any,
) => WebSocketLike;

/** A URL, or a function called on every (re)connect that returns one. */
export type UrlSource = string | (() => string);

/** Extra HTTP headers for the handshake, or a function returning them (called on every connect). */
export type HeadersSource = Record<string, string> | (() => Record<string, string>);

export interface ConsumerOptions {
  /**
   * The WebSocket implementation. Defaults to `adapters.WebSocket`, then to
   * the global `WebSocket` (browsers, Node 22+). On Node 20 pass the `ws`
   * package's default export.
   */
  WebSocket?: WebSocketConstructor;
  /**
   * Extra handshake headers, e.g. `{ Cookie: "user=ann", Origin: "https://app.example" }`.
   * Only WebSocket implementations that take an options argument (`ws`) can send
   * them; browsers ignore them.
   */
  headers?: HeadersSource;
  /** Subprotocols to offer after `actioncable-v1-json` (like `addSubProtocol`). */
  protocols?: string[];
  /**
   * `"actioncable-v1-ext-json"`: offer AnyCable's extended protocol first
   * (falling back to `actioncable-v1-json` on servers without it), as
   * `@anycable/web`'s `protocol` option. On it AnyCable keeps a joined
   * presence alive while connected. The default, `"actioncable-v1-json"`,
   * offers exactly what `@rails/actioncable` offers.
   */
  protocol?: "actioncable-v1-json" | "actioncable-v1-ext-json";
}

/** A presence event: someone joined (first session with that id) or left (the last one). */
export type PresenceEvent =
  | { type: "join"; id: string; info?: unknown }
  | { type: "leave"; id: string };

/** Who is present, as the server's `info` reply says. */
export interface PresenceInfo {
  total: number;
  records: { id: string; info?: unknown }[];
}

/** Subscription parameters: the channel class name and any other params. */
export interface ChannelParams {
  channel: string;
  [param: string]: unknown;
}

export interface ConnectedDetails {
  /** True when this subscription had been confirmed before, on an earlier connection. */
  reconnected: boolean;
}

export interface DisconnectedDetails {
  /** False when the client gave up: `consumer.disconnect()`, or the server said `reconnect: false`. */
  willAttemptReconnect: boolean;
}

/** The callbacks a subscription may define; `this` is the subscription. */
export interface SubscriptionCallbacks<TReceived = any> {
  /** Called once, when the subscription is created. */
  initialized?(): void;
  /** The server confirmed the subscription (after every (re)connect). */
  connected?(details: ConnectedDetails): void;
  /** The connection closed. */
  disconnected?(details: DisconnectedDetails): void;
  /** A message for this subscription. */
  received?(data: TReceived): void;
  /** The server rejected the subscription; it has been removed. */
  rejected?(): void;
  /** Someone joined or left the subscription's presence (AnyCable's presence). */
  presenceChanged?(event: PresenceEvent): void;
}

/** Action name to data type. The default accepts any action with any object. */
export type DefaultActions = Record<string, object>;

/** The mixin of `subscriptions.create`: callbacks plus your own members. */
export type Mixin<
  TReceived,
  TActions extends object,
  TExtra extends object,
> = TExtra &
  SubscriptionCallbacks<TReceived> &
  ThisType<Subscription<TReceived, TActions> & TExtra>;

/** Structural AbortSignal (browsers and Node alike). */
export interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason?: unknown;
  addEventListener(type: "abort", listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: "abort", listener: () => void): void;
}

export interface SubscribeOptions {
  /** Aborting removes the subscription and rejects the promise with the signal's reason. */
  signal?: AbortSignalLike;
}
