import { adapters } from "./adapters.js";
import { Connection } from "./connection.js";
import { ConnectionClosedError, SubscriptionRejectedError } from "./errors.js";
import { EXT_PROTOCOL, INTERNAL } from "./internal.js";
import { Subscription, Subscriptions } from "./subscriptions.js";
import type {
  ChannelParams,
  ConnectedDetails,
  ConsumerOptions,
  DefaultActions,
  DisconnectedDetails,
  SubscribeOptions,
  SubscriptionCallbacks,
  UrlSource,
  WebSocketLike,
} from "./types.js";
import { createWebSocketURL, getConfig } from "./url.js";

/**
 * A connection to one cable server and its subscriptions. It connects on the
 * first subscription (or `connect()`), keeps the connection alive, and
 * subscribes everything again after each reconnect.
 */
export class Consumer {
  readonly subscriptions: Subscriptions;
  readonly connection: Connection;
  /** Subprotocols offered after `actioncable-v1-json` and `actioncable-unsupported`. */
  subprotocols: string[];
  private readonly _url: UrlSource | undefined;
  private readonly options: ConsumerOptions;

  constructor(url?: UrlSource, options: ConsumerOptions = {}) {
    this._url = url;
    this.options = options;
    this.subprotocols = [...(options.protocols ?? [])];
    this.subscriptions = new Subscriptions(this);
    this.connection = new Connection(this);
  }

  /** Whether AnyCable's extended protocol is offered (`{ protocol: "actioncable-v1-ext-json" }`). */
  get extended(): boolean {
    return this.options.protocol === EXT_PROTOCOL;
  }

  /** The URL to connect to, resolved again on every connect. */
  get url(): string {
    return createWebSocketURL(this._url);
  }

  send(data: object): boolean {
    return this.connection.send(data);
  }

  connect(): boolean {
    return this.connection.open();
  }

  /** Closes the connection and stops reconnecting (until `connect()`). */
  disconnect(): void {
    this.connection.close({ allowReconnect: false });
  }

  ensureActiveConnection(): boolean | undefined {
    if (!this.connection.isActive()) return this.connection.open();
    return undefined;
  }

  /** Offers one more subprotocol from the next connect on. */
  addSubProtocol(subprotocol: string): void {
    this.subprotocols = [...this.subprotocols, subprotocol];
  }

  /**
   * Subscribes and waits for the server's answer: resolves with the
   * subscription once confirmed; rejects with `SubscriptionRejectedError` if
   * the server rejects it, or with `ConnectionClosedError` if the connection
   * closes for good first (both remove the subscription). `callbacks` are
   * those of `subscriptions.create` and keep being called afterwards.
   */
  subscribe<TReceived = any, TActions extends object = DefaultActions>(
    channel: string | ChannelParams,
    callbacks: SubscriptionCallbacks<TReceived> & ThisType<Subscription<TReceived, TActions>> = {},
    { signal }: SubscribeOptions = {},
  ): Promise<Subscription<TReceived, TActions>> {
    return new Promise((resolve, reject) => {
      let settled = false;
      let subscription: Subscription<TReceived, TActions> | undefined;
      const settle = (error?: unknown) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener("abort", onAbort);
        if (error === undefined) return resolve(subscription!);
        // A rejected subscription is gone already; the server must not hear an unsubscribe for it.
        if (subscription && this.subscriptions.subscriptions.includes(subscription)) {
          this.subscriptions.remove(subscription);
        }
        reject(error);
      };
      const onAbort = () => settle(signal!.reason ?? new Error("aborted"));
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      const { connection } = this;
      subscription = this.subscriptions.create<TReceived, TActions>(channel, {
        ...callbacks,
        connected(this: Subscription<TReceived, TActions>, details: ConnectedDetails) {
          settle();
          callbacks.connected?.call(this, details);
        },
        rejected(this: Subscription<TReceived, TActions>) {
          settle(new SubscriptionRejectedError(this.identifier));
          callbacks.rejected?.call(this);
        },
        disconnected(this: Subscription<TReceived, TActions>, details: DisconnectedDetails) {
          callbacks.disconnected?.call(this, details);
          if (!details.willAttemptReconnect) {
            settle(new ConnectionClosedError(this.identifier, connection.disconnectReason));
          }
        },
      });
    });
  }

  /** Opens a socket to `url` with the configured implementation and headers. @internal */
  createWebSocket(protocols: string[]): WebSocketLike {
    const { options } = this;
    const Impl = options.WebSocket ?? adapters.WebSocket ?? (globalThis as any).WebSocket;
    if (!Impl) {
      throw new Error("cable: no WebSocket: pass createConsumer(url, { WebSocket })");
    }
    const headers = typeof options.headers === "function" ? options.headers() : options.headers;
    return headers ? new Impl(this.url, protocols, { headers }) : new Impl(this.url, protocols);
  }
}

/**
 * Creates a consumer for `url`: by default the page's
 * `<meta name="action-cable-url">`, else `/cable`. `http(s)` URLs become
 * `ws(s)`; relative ones are resolved against the page. The consumer connects
 * on its first subscription.
 */
export function createConsumer(
  url: UrlSource = getConfig("url") || INTERNAL.default_mount_path,
  options?: ConsumerOptions,
): Consumer {
  return new Consumer(url, options);
}
